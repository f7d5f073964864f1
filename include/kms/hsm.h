/* hsm.h - the PKCS#11 edge: token, sessions, domain key, master-key wrap/unwrap, AES-GCM, random. */
#ifndef KMS_HSM_H
#define KMS_HSM_H

#include <stddef.h>
#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"

/*
 * One kms_hsm per process and token: the loaded module, the slot found by
 * token label, the login, and a long-lived "holder" session that owns the
 * master keys unwrapped as session objects (a session object lives as long as
 * the session that made it and is visible to every session of the process).
 *
 * Crypto operations run on a kms_hsm_session, one per thread, never shared.
 * An operation that fails because the session broke (CKR_SESSION_*,
 * CKR_DEVICE_*, CKR_TOKEN_NOT_PRESENT) reopens it once and retries; if that
 * fails too, KMS_ERR_UNAVAILABLE.
 *
 * Errors from the HSM are KMS_ERR_HSM with "C_Xxx: CKR_NAME (0x..)" in the
 * message; no key material or PIN ever reaches a message.
 */
typedef struct kms_hsm kms_hsm;
typedef struct kms_hsm_session kms_hsm_session;

/* A PKCS#11 object handle (CK_OBJECT_HANDLE). 0 is never a valid key. */
typedef unsigned long kms_hsm_key;

/*
 * Loads module_path (dlopen + C_GetFunctionList), C_Initialize with
 * CKF_OS_LOCKING_OK (CKR_CRYPTOKI_ALREADY_INITIALIZED is success: libp11's
 * engine may have initialized it first), finds the slot whose token label is
 * token_label, opens the holder session and logs in as CKU_USER
 * (CKR_USER_ALREADY_LOGGED_IN is success). Distinct messages, KMS_ERR_CONFIG:
 * "cannot load PKCS#11 module <path>: ...", "no token labelled '<label>'",
 * "wrong PIN for token '<label>'" (CKR_PIN_INCORRECT). The PIN is not kept.
 * *out is freed with kms_hsm_close, which never calls C_Finalize (the TLS
 * engine may share the module).
 */
int kms_hsm_open(const char *module_path, const char *token_label,
		 const char *pin, kms_hsm **out, kms_err *err);
void kms_hsm_close(kms_hsm *hsm);

/* Opens a session for the calling thread. Close it on the same thread. */
int kms_hsm_session_open(kms_hsm *hsm, kms_hsm_session **out, kms_err *err);
void kms_hsm_session_close(kms_hsm_session *s);

/* n bytes from C_GenerateRandom into out. */
int kms_hsm_random(kms_hsm_session *s, uint8_t *out, size_t n, kms_err *err);

/*
 * Finds the domain key: an AES-256 token object with CKA_LABEL label. If none
 * exists and create is true, generates one (CKA_TOKEN, CKA_PRIVATE,
 * CKA_SENSITIVE, CKA_WRAP and CKA_UNWRAP only, CKA_MODIFIABLE=FALSE, and a
 * CKA_UNWRAP_TEMPLATE that makes every key it unwraps CKA_SENSITIVE and
 * not CKA_EXTRACTABLE, CKA_WRAP, CKA_UNWRAP or CKA_DERIVE). It is
 * CKA_EXTRACTABLE so that a member can wrap it to a joining node's
 * transport key (kms_hsm_domain_key_wrap_for); CKA_SENSITIVE keeps it from
 * ever leaving the HSM in plaintext. A key found without those
 * protections (made by an older kmsd) is used as it is, with a warning.
 * Absent with create false: KMS_ERR_NOT_FOUND. Two keys with that label:
 * KMS_ERR_CONFIG.
 */
int kms_hsm_domain_key(kms_hsm *hsm, const char *label, int create,
		       kms_hsm_key *out, kms_err *err);

/*
 * Makes a new master key: generates an AES-256 session key inside the HSM
 * (sensitive; extractable only so that it can leave wrapped), wraps it under
 * dk with CKM_AES_KEY_WRAP_PAD (RFC 5649) and destroys it. wrapped->data is
 * kms_malloc'd and owned by the caller (kms_buf_free: it is not secret).
 */
int kms_hsm_master_key_create(kms_hsm_session *s, kms_hsm_key dk,
			      kms_buf *wrapped, kms_err *err);

/*
 * Unwraps a master key under dk into the holder session as a session object
 * (CKA_TOKEN=FALSE, CKA_SENSITIVE, CKA_EXTRACTABLE=FALSE, CKA_ENCRYPT and
 * CKA_DECRYPT only). A blob that does not unwrap under dk (wrong domain key,
 * tampered) gives KMS_ERR_HSM "cannot unwrap master key: ...".
 * Thread-safe. Release with kms_hsm_key_destroy.
 */
int kms_hsm_master_key_unwrap(kms_hsm *hsm, kms_hsm_key dk,
			      const uint8_t *wrapped, size_t len,
			      kms_hsm_key *out, kms_err *err);

/* Destroys a session object made by kms_hsm_master_key_unwrap. */
void kms_hsm_key_destroy(kms_hsm *hsm, kms_hsm_key key);

/*
 * AES-256-GCM (CKM_AES_GCM, 96-bit iv, 128-bit tag, NIST SP 800-38D).
 * encrypt writes pt_len + KMS_GCM_TAG_LEN bytes (ciphertext || tag) to out.
 * decrypt takes ciphertext || tag (ct_len >= 16) and writes ct_len - 16
 * bytes to out. A failed authentication (SoftHSM answers CKR_GENERAL_ERROR;
 * others CKR_ENCRYPTED_DATA_INVALID / CKR_ENCRYPTED_DATA_LEN_RANGE) gives
 * KMS_ERR_AUTH_FAILED, and out is cleansed.
 */
int kms_hsm_gcm_encrypt(kms_hsm_session *s, kms_hsm_key key,
			const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
			const uint8_t *pt, size_t pt_len, uint8_t *out,
			kms_err *err);
int kms_hsm_gcm_decrypt(kms_hsm_session *s, kms_hsm_key key,
			const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
			const uint8_t *ct, size_t ct_len, uint8_t *out,
			kms_err *err);

/*
 * Audits every secret key this process can see (token objects and this
 * process's session objects): each must be CKA_SENSITIVE with CKA_VALUE
 * unreadable. *n_keys is the number checked. A readable one gives
 * KMS_ERR_INTERNAL naming its label.
 */
int kms_hsm_audit_secret_keys(kms_hsm *hsm, size_t *n_keys, kms_err *err);

/* --- moving the domain key to a joining node (issue #3) --- */

/*
 * The joining side: generates an RSA-3072 key pair in the holder session
 * (session objects; the private key CKA_SENSITIVE, CKA_EXTRACTABLE=FALSE,
 * CKA_UNWRAP only; the public key CKA_WRAP). Returns the private key handle
 * and the public modulus and exponent (big-endian, kms_malloc'd, the
 * caller's: kms_buf_free). Destroy both keys with kms_hsm_key_destroy
 * (*pub_out too) once the domain key is installed.
 */
int kms_hsm_transport_keypair(kms_hsm *hsm, kms_hsm_key *priv_out,
			      kms_hsm_key *pub_out, kms_buf *modulus,
			      kms_buf *exponent, kms_err *err);

/*
 * The member side: imports the joiner's public key as a session object
 * (CKA_WRAP, CKA_TOKEN=FALSE), wraps dk under it with CKM_RSA_PKCS_OAEP
 * (SHA-1, MGF1-SHA-1, no label: the only OAEP parameters SoftHSM 2.6.1
 * accepts; OAEP does not rely on the hash's collision resistance) and
 * destroys the imported key. A modulus that is even or outside 2048..8192
 * bits, or an exponent that is even, below 65537 or over 8 bytes, is
 * KMS_ERR_INVALID (e = 1 would "wrap" the key in the clear). wrapped->data is kms_malloc'd, the caller's.
 */
int kms_hsm_domain_key_wrap_for(kms_hsm *hsm, kms_hsm_key dk,
				const uint8_t *modulus, size_t modulus_len,
				const uint8_t *exponent, size_t exponent_len,
				kms_buf *wrapped, kms_err *err);

/*
 * The joining side: unwraps the domain key with priv (CKM_RSA_PKCS_OAEP,
 * SHA-1 as above) into the token as a persistent object labelled label, with
 * the same attributes kms_hsm_domain_key gives a new domain key
 * (CKA_MODIFIABLE=FALSE and the unwrap template included; a module that refuses
 * either fails the install with KMS_ERR_HSM). A label that already names a key:
 * KMS_ERR_EXISTS (nothing written). A blob that does not unwrap: KMS_ERR_HSM.
 */
int kms_hsm_domain_key_install(kms_hsm *hsm, kms_hsm_key priv,
			       const char *label, const uint8_t *wrapped,
			       size_t len, kms_hsm_key *dk_out, kms_err *err);

/* --- domain-key rotation (issue #6) --- */

/*
 * Rewraps master keys from old_dk to new_dk inside the HSM, one blob at a
 * time; every new blob unwraps under new_dk to the same key.
 *
 * The DK's unwrap template makes every key it unwraps non-extractable, so a
 * master key unwrapped under old_dk can never be wrapped again. Instead,
 * kms_hsm_rewrap_open takes a second, transient handle on old_dk's value:
 * it wraps old_dk (CKA_EXTRACTABLE, as every DK must be for joins) under a
 * one-time AES key made for this, and unwraps it back as a session object
 * that may only unwrap, is itself non-extractable, and whose unwrap
 * template makes master keys sensitive and extractable but good for
 * nothing else; the one-time key is destroyed at once. kms_hsm_rewrap then
 * unwraps each blob under that copy and wraps it under new_dk (RFC 5649).
 * Every object made lives in the holder session of this process only and
 * is destroyed before the call returns. A DK that is not extractable (an
 * old token) is used directly instead, which works only if it has no
 * unwrap template. Nothing here needs more than what joins already need
 * (docs/SECURITY.md section 3).
 *
 * kms_hsm_rewrap_open: *out is the caller's, released by kms_hsm_rewrap_close
 * (any thread, once). kms_hsm_rewrap: out->data is kms_malloc'd, the
 * caller's. A blob that does not unwrap under old_dk: KMS_ERR_HSM.
 */
typedef struct kms_hsm_rewrapper kms_hsm_rewrapper;
int kms_hsm_rewrap_open(kms_hsm *hsm, kms_hsm_key old_dk, kms_hsm_rewrapper **out, kms_err *err);
int kms_hsm_rewrap(kms_hsm_rewrapper *rw, kms_hsm_key new_dk, const uint8_t *wrapped, size_t len,
		   kms_buf *out, kms_err *err);
void kms_hsm_rewrap_close(kms_hsm_rewrapper *rw);

/* --- carrying master keys to another region (issue #7) --- */

/*
 * Each region has its own domain key, so a multi-region master key cannot
 * travel as it is stored. It travels under a carrier: a one-time AES-256
 * key that the sending HSM makes and wraps to the receiving node's
 * transport key (kms_hsm_transport_keypair), and that the receiving HSM
 * unwraps. Material moves from one DK to the carrier and from the carrier
 * to the other DK with the rewrapper above, so it is never in the clear
 * outside an HSM and neither region's DK leaves its own tokens.
 *
 * The sending side: kms_hsm_carrier_create generates the carrier in the
 * holder session (CKA_TOKEN=FALSE, CKA_SENSITIVE, CKA_WRAP only,
 * CKA_MODIFIABLE=FALSE; CKA_EXTRACTABLE only so that it can be wrapped to
 * the peer) and wraps it at once to the peer's RSA public key
 * (CKM_RSA_PKCS_OAEP, SHA-1 as for kms_hsm_domain_key_wrap_for, with the
 * same checks of modulus and exponent: KMS_ERR_INVALID, nothing made).
 * Then, with rw = kms_hsm_rewrap_open(hsm, local_dk),
 * kms_hsm_rewrap(rw, *carrier, material) gives each master key under the
 * carrier. *carrier is the caller's: destroy it with kms_hsm_key_destroy
 * once the pull is answered, so that no carrier outlives it.
 * wrapped_carrier->data is kms_malloc'd, the caller's (kms_buf_free).
 *
 * The receiving side: kms_hsm_carrier_install unwraps the carrier with
 * transport_priv into the holder session as a key that only unwraps, is
 * not extractable, and lets what it unwraps out only as sensitive keys
 * good for nothing but C_WrapKey (the rewrapper's own rules), and returns
 * it as a rewrapper: kms_hsm_rewrap(*out, local_dk, carried) gives the
 * master key under the local DK, which kms_hsm_master_key_unwrap takes.
 * *out is released by kms_hsm_rewrap_close, which destroys the carrier.
 * A blob wrapped to another transport key, or changed: KMS_ERR_HSM
 * "cannot install carrier key: ..."; an empty one or one longer than an
 * RSA-8192 modulus: KMS_ERR_INVALID. Nothing is left in the HSM on error.
 */
int kms_hsm_carrier_create(kms_hsm *hsm, const uint8_t *modulus, size_t modulus_len,
			   const uint8_t *exponent, size_t exponent_len, kms_hsm_key *carrier,
			   kms_buf *wrapped_carrier, kms_err *err);
int kms_hsm_carrier_install(kms_hsm *hsm, kms_hsm_key transport_priv, const uint8_t *wrapped,
			    size_t len, kms_hsm_rewrapper **out, kms_err *err);

/*
 * The label of the domain key of generation gen: base itself for the first
 * (so tokens made before rotation existed keep theirs), "base.gN" after.
 * out must hold KMS_HSM_DK_LABEL_MAX bytes; a base too long: KMS_ERR_CONFIG.
 */
#define KMS_HSM_DK_LABEL_MAX 128
int kms_hsm_dk_label(const char *base, uint32_t gen, char out[KMS_HSM_DK_LABEL_MAX], kms_err *err);

/*
 * The generations of the domain keys labelled after base on the token
 * (kms_hsm_dk_label), ascending, at most max of them; *n is how many.
 */
int kms_hsm_dk_generations(kms_hsm *hsm, const char *base, uint32_t *gens, size_t max, size_t *n,
			   kms_err *err);

/* --- backups (issue #7) --- */

/*
 * The leader's part of a backup: a new AES-256 backup key generated in the
 * HSM (a session object of the holder session, CKA_WRAP only, readable: its
 * value must be split into the custodians' shares), dk wrapped under it
 * (CKM_AES_KEY_WRAP_PAD, RFC 5649) into wrapped (kms_malloc'd, the
 * caller's), its value copied to key_out (the caller cleanses it), and the
 * key destroyed in the HSM before the call returns.
 */
int kms_hsm_backup_wrap_dk(kms_hsm *hsm, kms_hsm_key dk, uint8_t key_out[32], kms_buf *wrapped,
			   kms_err *err);

/*
 * The restore's part: the backup key (32 bytes, rebuilt from the shares)
 * becomes a session object that only unwraps, the domain key is unwrapped
 * under it into the token as label with a new domain key's attributes, and
 * the backup key is destroyed. KMS_ERR_EXISTS if label is on the token
 * already; KMS_ERR_HSM if the blob does not unwrap (RFC 5649 integrity).
 */
int kms_hsm_domain_key_restore(kms_hsm *hsm, const char *label, const uint8_t key[32],
			       const uint8_t *wrapped, size_t len, kms_hsm_key *dk_out,
			       kms_err *err);

/* Destroys a domain key (a token object) for good. */
int kms_hsm_domain_key_destroy(kms_hsm *hsm, kms_hsm_key dk, kms_err *err);

/* "CKR_PIN_INCORRECT" etc.; "CKR_0x..." for unknown values. Never NULL. */
const char *kms_hsm_rv_name(unsigned long rv);

#endif
