/* backup_file.h - the backup file: Shamir shares of the backup key sealed to custodians, the HMAC over the file, unsealed share files; no HSM, no network. */
#ifndef KMS_BACKUP_FILE_H
#define KMS_BACKUP_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"
#include "kms/v1/backup.pb-c.h"

#define KMS_BACKUP_ID_LEN 16
#define KMS_BACKUP_KEY_LEN 32 /* AES-256 */
#define KMS_X25519_LEN 32
#define KMS_BACKUP_CUSTODIANS_MAX 16
#define KMS_BACKUP_FORMAT 1
/* The framing of docs/FORMAT.md "Backup files". */
#define KMS_BACKUP_MAGIC "KMSDBAK1"
#define KMS_BACKUP_SHARE_MAGIC "KMSDSHR1"
/*
 * A backup file larger than this is refused unread: about 5,600,000 keys
 * at 190 bytes a key. The file stays out of the replicated state (its
 * maker keeps it on disk), so this bounds only what kmsctl and a restore
 * read into memory.
 */
#define KMS_BACKUP_FILE_MAX (1024u * 1024 * 1024)

/* Where a backup's file is: its maker's data directory, checked by size and SHA-256. */
typedef struct kms_backup_ref {
	uint8_t backup_id[KMS_BACKUP_ID_LEN];
	uint64_t size;
	uint8_t sha256[32];
	uint64_t holder_node_id;
} kms_backup_ref;

/* A custodian: a name (the operator-name rules) and an X25519 public key. */
typedef struct kms_backup_custodian {
	const char *name;
	uint8_t public_key[KMS_X25519_LEN];
} kms_backup_custodian;

/* What the leader puts in a backup, besides the shares (borrowed). */
typedef struct kms_backup_content {
	uint8_t backup_id[KMS_BACKUP_ID_LEN];
	const uint8_t *cluster_id;
	size_t cluster_id_len;
	const char *proposal_id;
	int64_t created_at_unix;
	uint32_t threshold; /* M */
	const kms_backup_custodian *custodians;
	size_t n_custodians; /* N */
	uint32_t domain_key_generation;
	const uint8_t *wrapped_domain_key;
	size_t wrapped_domain_key_len;
	const uint8_t *key_ring;
	size_t key_ring_len;
} kms_backup_content;

/* A custodian list's rules: 1..16 distinct names and keys, 1 <= M <= N. */
int kms_backup_custodians_check(const kms_backup_custodian *c, size_t n, uint32_t threshold,
				kms_err *err);

/*
 * Builds the file: splits key (Shamir over GF(2^8), libgfshare) into one
 * share per custodian, M needed, seals each to its custodian, and frames
 * the body with its HMAC and checksum. out->data is kms_malloc'd, the
 * caller's. The shares live only in cleansed memory.
 */
int kms_backup_build(const kms_backup_content *c, const uint8_t key[KMS_BACKUP_KEY_LEN],
		     kms_buf *out, kms_err *err);

/* A parsed file: the body (protobuf-c, owned) and the framing it came in. */
typedef struct kms_backup {
	Kms__V1__BackupBody *body;
	kms_buf signed_part; /* owned copy: magic .. body, what the HMAC covers */
	uint8_t mac[32];
} kms_backup;

/*
 * Parses a file: the magic, the length, the checksum (a file changed by
 * accident or on purpose, but not re-checksummed, is refused here: "the
 * backup file is damaged or changed"), then the body's shape. The body is
 * not authenticated yet: kms_backup_open does that. KMS_ERR_INVALID naming
 * the problem. Free with kms_backup_free.
 */
int kms_backup_parse(const uint8_t *file, size_t len, kms_backup *out, kms_err *err);
void kms_backup_free(kms_backup *b);

/* A share unsealed by its custodian. */
typedef struct kms_backup_share {
	uint8_t backup_id[KMS_BACKUP_ID_LEN];
	uint8_t index;
	char custodian[65];
	uint8_t share[KMS_BACKUP_KEY_LEN];
} kms_backup_share;

/*
 * The custodian's step: unseals the share of custodian with the X25519
 * private key priv (raw 32 bytes). KMS_ERR_NOT_FOUND when the file has no
 * share for that name, KMS_ERR_AUTH_FAILED when the key is not the one it
 * was sealed to (or the share was changed). Cleanse *out after use.
 */
int kms_backup_unseal_share(const kms_backup *b, const char *custodian,
			    const uint8_t priv[KMS_X25519_LEN], kms_backup_share *out,
			    kms_err *err);

/* An unsealed share as a file (docs/FORMAT.md), and back. out is the caller's, cleansed. */
int kms_backup_share_encode(const kms_backup_share *s, kms_buf *out, kms_err *err);
int kms_backup_share_decode(const uint8_t *data, size_t len, kms_backup_share *out,
			    kms_err *err);

/*
 * The restore's step: checks that n shares are enough (M), distinct, of
 * this backup, each the one the file recorded for its index, rebuilds the
 * backup key and checks the file's HMAC with it. Each refusal names its
 * cause: too few shares (KMS_ERR_PRECONDITION), a share of another backup
 * or a wrong share (KMS_ERR_INVALID), a changed file (KMS_ERR_AUTH_FAILED).
 * key_out is cleansed on failure; the caller cleanses it after use.
 */
int kms_backup_open(const kms_backup *b, const kms_backup_share *shares, size_t n,
		    uint8_t key_out[KMS_BACKUP_KEY_LEN], kms_err *err);

/* X25519 keys in PEM files (ops/pki custodian): raw 32 bytes out. */
int kms_x25519_public_from_file(const char *path, uint8_t pub[KMS_X25519_LEN], kms_err *err);
int kms_x25519_private_from_file(const char *path, uint8_t priv[KMS_X25519_LEN], kms_err *err);

/* Lowercase hex of a backup id (33 bytes with the terminator). */
void kms_backup_id_hex(const uint8_t id[KMS_BACKUP_ID_LEN], char out[2 * KMS_BACKUP_ID_LEN + 1]);

#endif
