/* backup_file.c - the backup file: Shamir shares (libgfshare) sealed to custodians (X25519, HKDF, AES-256-GCM), the HMAC over the file, unsealed share files. */
#include <stdio.h>
#include <string.h>

#include <libgfshare.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/quorum.h"

#define MAGIC_LEN 8
#define MAC_LEN 32
#define SUM_LEN 32
#define NONCE_LEN 12
#define TAG_LEN 16
#define SHARE_TAG "kmsd backup share v1"
#define SEAL_INFO "kmsd backup share seal v1"
#define MAC_INFO "kmsd backup mac v1"

/*
 * libgfshare draws its polynomial coefficients from this hook, which it
 * leaves NULL. A failure of the CSPRNG cannot be returned through it: it
 * is remembered and the split is refused.
 */
static _Thread_local int gf_rand_failed;

static void gf_rand(unsigned char *buf, unsigned int n)
{
	if (RAND_bytes(buf, (int)n) != 1)
		gf_rand_failed = 1;
}

void kms_backup_id_hex(const uint8_t id[KMS_BACKUP_ID_LEN], char out[2 * KMS_BACKUP_ID_LEN + 1])
{
	for (size_t i = 0; i < KMS_BACKUP_ID_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", id[i]);
}

int kms_backup_custodians_check(const kms_backup_custodian *c, size_t n, uint32_t threshold,
				kms_err *err)
{
	KMS_ENSURE(n >= 1 && c != NULL, err, KMS_ERR_INVALID, "a backup needs at least one custodian");
	KMS_ENSURE(n <= KMS_BACKUP_CUSTODIANS_MAX, err, KMS_ERR_INVALID,
		   "%zu custodians, more than %d", n, KMS_BACKUP_CUSTODIANS_MAX);
	KMS_ENSURE(threshold >= 1 && threshold <= n, err, KMS_ERR_INVALID,
		   "%u shares to restore cannot be reached by %zu custodian(s): it must be 1..%zu",
		   threshold, n, n);
	for (size_t i = 0; i < n; i++) {
		if (kms_operator_name_check(c[i].name, err) != KMS_OK)
			return kms_err_prefix(err, "custodian");
		for (size_t j = 0; j < i; j++) {
			KMS_ENSURE(strcmp(c[i].name, c[j].name) != 0, err, KMS_ERR_INVALID,
				   "custodian '%s' is listed twice", c[i].name);
			/* One key holding two shares would let one person count as two. */
			KMS_ENSURE(memcmp(c[i].public_key, c[j].public_key, KMS_X25519_LEN) != 0,
				   err, KMS_ERR_INVALID, "custodians '%s' and '%s' have the same key",
				   c[j].name, c[i].name);
		}
	}
	return KMS_OK;
}

/* HKDF-SHA256 (RFC 5869) of 32 bytes. */
static int hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
		const uint8_t *info, size_t info_len, uint8_t out[32])
{
	EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t n = 32;
	int ok;

	if (k == NULL)
		return 0;
	ok = EVP_PKEY_derive_init(k) == 1 && EVP_PKEY_CTX_set_hkdf_md(k, EVP_sha256()) == 1 &&
	     EVP_PKEY_CTX_set1_hkdf_salt(k, salt, (int)salt_len) == 1 &&
	     EVP_PKEY_CTX_set1_hkdf_key(k, ikm, (int)ikm_len) == 1 &&
	     EVP_PKEY_CTX_add1_hkdf_info(k, info, (int)info_len) == 1 &&
	     EVP_PKEY_derive(k, out, &n) == 1 && n == 32;
	EVP_PKEY_CTX_free(k);
	return ok;
}

/* X25519 (RFC 7748) of our raw private key and their raw public key. */
static int x25519(const uint8_t priv[KMS_X25519_LEN], const uint8_t pub[KMS_X25519_LEN],
		  uint8_t out[32])
{
	EVP_PKEY *a = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, KMS_X25519_LEN);
	EVP_PKEY *b = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pub, KMS_X25519_LEN);
	EVP_PKEY_CTX *c = a != NULL ? EVP_PKEY_CTX_new(a, NULL) : NULL;
	size_t n = 32;
	int ok;

	/* OpenSSL refuses an all-zero shared secret (a small-order point). */
	ok = c != NULL && b != NULL && EVP_PKEY_derive_init(c) == 1 &&
	     EVP_PKEY_derive_set_peer(c, b) == 1 && EVP_PKEY_derive(c, out, &n) == 1 && n == 32;
	EVP_PKEY_CTX_free(c);
	EVP_PKEY_free(a);
	EVP_PKEY_free(b);
	return ok;
}

/* The sealing key of one share: HKDF over the ECDH secret, bound to both public keys. */
static int seal_key(const uint8_t shared[32], const uint8_t *backup_id,
		    const uint8_t eph_pub[KMS_X25519_LEN], const uint8_t cust_pub[KMS_X25519_LEN],
		    uint8_t out[32])
{
	uint8_t info[sizeof(SEAL_INFO) - 1 + 2 * KMS_X25519_LEN];

	memcpy(info, SEAL_INFO, sizeof(SEAL_INFO) - 1);
	memcpy(info + sizeof(SEAL_INFO) - 1, eph_pub, KMS_X25519_LEN);
	memcpy(info + sizeof(SEAL_INFO) - 1 + KMS_X25519_LEN, cust_pub, KMS_X25519_LEN);
	return hkdf(shared, 32, backup_id, KMS_BACKUP_ID_LEN, info, sizeof(info), out);
}

/* The additional data of a sealed share: which backup, which index, whose. */
static size_t share_aad(uint8_t *out, size_t cap, const uint8_t *backup_id, uint8_t index,
			const char *name)
{
	size_t tl = sizeof(SHARE_TAG) - 1, nl = strlen(name);

	if (tl + KMS_BACKUP_ID_LEN + 1 + nl > cap)
		return 0;
	memcpy(out, SHARE_TAG, tl);
	memcpy(out + tl, backup_id, KMS_BACKUP_ID_LEN);
	out[tl + KMS_BACKUP_ID_LEN] = index;
	memcpy(out + tl + KMS_BACKUP_ID_LEN + 1, name, nl);
	return tl + KMS_BACKUP_ID_LEN + 1 + nl;
}

static void share_sha256(const uint8_t *backup_id, uint8_t index,
			 const uint8_t share[KMS_BACKUP_KEY_LEN], uint8_t out[32])
{
	uint8_t m[sizeof(SHARE_TAG) - 1 + KMS_BACKUP_ID_LEN + 1 + KMS_BACKUP_KEY_LEN];
	size_t tl = sizeof(SHARE_TAG) - 1;

	memcpy(m, SHARE_TAG, tl);
	memcpy(m + tl, backup_id, KMS_BACKUP_ID_LEN);
	m[tl + KMS_BACKUP_ID_LEN] = index;
	memcpy(m + tl + KMS_BACKUP_ID_LEN + 1, share, KMS_BACKUP_KEY_LEN);
	SHA256(m, sizeof(m), out);
	OPENSSL_cleanse(m, sizeof(m));
}

/* AES-256-GCM (NIST SP 800-38D) of exactly one share: 32 bytes in, 32 + 16 out. */
static int gcm(int enc, const uint8_t key[32], const uint8_t nonce[NONCE_LEN], const uint8_t *aad,
	       size_t aad_len, const uint8_t *in, uint8_t *out, uint8_t tag[TAG_LEN])
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n = 0, fin = 0, ok;

	if (c == NULL)
		return 0;
	ok = EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, enc) == 1 &&
	     EVP_CipherUpdate(c, NULL, &n, aad, (int)aad_len) == 1 &&
	     EVP_CipherUpdate(c, out, &n, in, KMS_BACKUP_KEY_LEN) == 1 && n == KMS_BACKUP_KEY_LEN;
	if (ok && !enc)
		ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
	ok = ok && EVP_CipherFinal_ex(c, out + n, &fin) == 1 && fin == 0;
	if (ok && enc)
		ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
	EVP_CIPHER_CTX_free(c);
	return ok;
}

/* The HMAC key: the backup key itself never keys anything but the DK wrap. */
static int mac_of(const uint8_t key[KMS_BACKUP_KEY_LEN], const uint8_t *backup_id,
		  const uint8_t *data, size_t len, uint8_t out[MAC_LEN])
{
	uint8_t mk[32];
	unsigned int n = MAC_LEN;
	int ok;

	ok = hkdf(key, KMS_BACKUP_KEY_LEN, backup_id, KMS_BACKUP_ID_LEN,
		  (const uint8_t *)MAC_INFO, sizeof(MAC_INFO) - 1, mk) &&
	     HMAC(EVP_sha256(), mk, sizeof(mk), data, len, out, &n) != NULL && n == MAC_LEN;
	OPENSSL_cleanse(mk, sizeof(mk));
	return ok;
}

/* Seals share (the x coordinate index) to one custodian into sh (its buffers in store). */
struct sealed {
	uint8_t eph_pub[KMS_X25519_LEN];
	uint8_t nonce[NONCE_LEN];
	uint8_t ct[KMS_BACKUP_KEY_LEN + TAG_LEN];
	uint8_t sum[32];
};

static int seal_one(const kms_backup_content *c, size_t i, uint8_t index,
		    const uint8_t share[KMS_BACKUP_KEY_LEN], struct sealed *out, kms_err *err)
{
	EVP_PKEY *eph = NULL;
	EVP_PKEY_CTX *g = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);
	uint8_t priv[KMS_X25519_LEN], shared[32], key[32], aad[128];
	size_t pl = sizeof(priv), ul = KMS_X25519_LEN, al;
	int rc = KMS_OK;

	if (g == NULL || EVP_PKEY_keygen_init(g) != 1 || EVP_PKEY_keygen(g, &eph) != 1 ||
	    EVP_PKEY_get_raw_private_key(eph, priv, &pl) != 1 ||
	    EVP_PKEY_get_raw_public_key(eph, out->eph_pub, &ul) != 1 ||
	    RAND_bytes(out->nonce, NONCE_LEN) != 1) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot make an ephemeral X25519 key");
		goto out;
	}
	if (!x25519(priv, c->custodians[i].public_key, shared)) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "custodian '%s': the public key is not a usable X25519 key",
			      c->custodians[i].name);
		goto out;
	}
	al = share_aad(aad, sizeof(aad), c->backup_id, index, c->custodians[i].name);
	if (al == 0 || !seal_key(shared, c->backup_id, out->eph_pub, c->custodians[i].public_key, key) ||
	    !gcm(1, key, out->nonce, aad, al, share, out->ct, out->ct + KMS_BACKUP_KEY_LEN)) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot seal the share of custodian '%s'",
			      c->custodians[i].name);
		goto out;
	}
	share_sha256(c->backup_id, index, share, out->sum);
out:
	OPENSSL_cleanse(priv, sizeof(priv));
	OPENSSL_cleanse(shared, sizeof(shared));
	OPENSSL_cleanse(key, sizeof(key));
	EVP_PKEY_free(eph);
	EVP_PKEY_CTX_free(g);
	return rc;
}

/* The N shares of key, M needed; shares[i] has x coordinate i + 1. */
static int split(const uint8_t key[KMS_BACKUP_KEY_LEN], size_t n, uint32_t m,
		 uint8_t (*shares)[KMS_BACKUP_KEY_LEN], kms_err *err)
{
	unsigned char xs[KMS_BACKUP_CUSTODIANS_MAX], secret[KMS_BACKUP_KEY_LEN];
	gfshare_ctx *g;

	for (size_t i = 0; i < n; i++)
		xs[i] = (unsigned char)(i + 1);
	gfshare_fill_rand = gf_rand;
	gf_rand_failed = 0;
	g = gfshare_ctx_init_enc(xs, (unsigned int)n, (unsigned char)m, KMS_BACKUP_KEY_LEN);
	if (g == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "cannot split the backup key (libgfshare)");
	memcpy(secret, key, sizeof(secret));
	gfshare_ctx_enc_setsecret(g, secret); /* draws the coefficients */
	OPENSSL_cleanse(secret, sizeof(secret));
	for (size_t i = 0; i < n; i++)
		gfshare_ctx_enc_getshare(g, (unsigned char)i, shares[i]);
	gfshare_ctx_free(g); /* overwrites its buffers with random bytes */
	if (gf_rand_failed)
		return kms_errf(err, KMS_ERR_INTERNAL, "no random bytes to split the backup key");
	return KMS_OK;
}

/* magic | u32 len | body | HMAC | SHA-256 of all that precedes. */
static int frame(const Kms__V1__BackupBody *body, const uint8_t key[KMS_BACKUP_KEY_LEN],
		 kms_buf *out, kms_err *err)
{
	size_t blen = kms__v1__backup_body__get_packed_size(body);
	size_t total = MAGIC_LEN + 4 + blen + MAC_LEN + SUM_LEN;
	uint8_t *p;

	KMS_ENSURE(total <= KMS_BACKUP_FILE_MAX, err, KMS_ERR_LIMIT,
		   "a backup of %zu bytes is over the %u-byte limit", total, KMS_BACKUP_FILE_MAX);
	p = kms_malloc(total);
	if (p == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a %zu-byte backup", total);
	memcpy(p, KMS_BACKUP_MAGIC, MAGIC_LEN);
	p[8] = (uint8_t)(blen >> 24);
	p[9] = (uint8_t)(blen >> 16);
	p[10] = (uint8_t)(blen >> 8);
	p[11] = (uint8_t)blen;
	if (kms__v1__backup_body__pack(body, p + MAGIC_LEN + 4) != blen ||
	    !mac_of(key, body->backup_id.data, p, MAGIC_LEN + 4 + blen, p + MAGIC_LEN + 4 + blen)) {
		kms_free(p);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot pack or authenticate the backup");
	}
	SHA256(p, MAGIC_LEN + 4 + blen + MAC_LEN, p + MAGIC_LEN + 4 + blen + MAC_LEN);
	out->data = p;
	out->len = total;
	return KMS_OK;
}

int kms_backup_build(const kms_backup_content *c, const uint8_t key[KMS_BACKUP_KEY_LEN],
		     kms_buf *out, kms_err *err)
{
	Kms__V1__BackupBody body = KMS__V1__BACKUP_BODY__INIT;
	Kms__V1__BackupShare sh[KMS_BACKUP_CUSTODIANS_MAX], *shp[KMS_BACKUP_CUSTODIANS_MAX];
	struct sealed sealed[KMS_BACKUP_CUSTODIANS_MAX];
	uint8_t shares[KMS_BACKUP_CUSTODIANS_MAX][KMS_BACKUP_KEY_LEN];
	uint8_t pubs[KMS_BACKUP_CUSTODIANS_MAX][KMS_X25519_LEN];
	int rc;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_backup_custodians_check(c->custodians, c->n_custodians, c->threshold, err));
	KMS_TRY_GOTO(rc, split(key, c->n_custodians, c->threshold, shares, err), out);
	for (size_t i = 0; i < c->n_custodians; i++) {
		KMS_TRY_GOTO(rc, seal_one(c, i, (uint8_t)(i + 1), shares[i], &sealed[i], err), out);
		memcpy(pubs[i], c->custodians[i].public_key, KMS_X25519_LEN);
		kms__v1__backup_share__init(&sh[i]);
		sh[i].custodian = (char *)c->custodians[i].name;
		sh[i].custodian_public_key.data = pubs[i];
		sh[i].custodian_public_key.len = KMS_X25519_LEN;
		sh[i].index = (uint32_t)(i + 1);
		sh[i].ephemeral_public_key.data = sealed[i].eph_pub;
		sh[i].ephemeral_public_key.len = KMS_X25519_LEN;
		sh[i].nonce.data = sealed[i].nonce;
		sh[i].nonce.len = NONCE_LEN;
		sh[i].sealed_share.data = sealed[i].ct;
		sh[i].sealed_share.len = sizeof(sealed[i].ct);
		sh[i].share_sha256.data = sealed[i].sum;
		sh[i].share_sha256.len = 32;
		shp[i] = &sh[i];
	}
	body.format = KMS_BACKUP_FORMAT;
	body.backup_id.data = (uint8_t *)c->backup_id;
	body.backup_id.len = KMS_BACKUP_ID_LEN;
	body.cluster_id.data = (uint8_t *)c->cluster_id;
	body.cluster_id.len = c->cluster_id_len;
	body.proposal_id = (char *)(c->proposal_id != NULL ? c->proposal_id : "");
	body.created_at_unix = c->created_at_unix;
	body.threshold = c->threshold;
	body.shares = shp;
	body.n_shares = c->n_custodians;
	body.domain_key_generation = c->domain_key_generation;
	body.wrapped_domain_key.data = (uint8_t *)c->wrapped_domain_key;
	body.wrapped_domain_key.len = c->wrapped_domain_key_len;
	body.key_ring.data = (uint8_t *)c->key_ring;
	body.key_ring.len = c->key_ring_len;
	rc = frame(&body, key, out, err);
out:
	OPENSSL_cleanse(shares, sizeof(shares));
	return rc;
}

void kms_backup_free(kms_backup *b)
{
	if (b == NULL)
		return;
	if (b->body != NULL)
		kms__v1__backup_body__free_unpacked(b->body, NULL);
	kms_buf_free(&b->signed_part);
	memset(b, 0, sizeof(*b));
}

/* The body's shape: every field a restore relies on, in range. */
static int body_check(const Kms__V1__BackupBody *b, kms_err *err)
{
	KMS_ENSURE(b->format == KMS_BACKUP_FORMAT, err, KMS_ERR_INVALID,
		   "backup format %u is not supported (this kmsd reads %d)", b->format,
		   KMS_BACKUP_FORMAT);
	KMS_ENSURE(b->backup_id.len == KMS_BACKUP_ID_LEN, err, KMS_ERR_INVALID,
		   "the backup id is %zu bytes, not %d", b->backup_id.len, KMS_BACKUP_ID_LEN);
	KMS_ENSURE(b->n_shares >= 1 && b->n_shares <= KMS_BACKUP_CUSTODIANS_MAX && b->threshold >= 1 &&
			   b->threshold <= b->n_shares,
		   err, KMS_ERR_INVALID, "the backup holds %zu shares with %u needed", b->n_shares,
		   b->threshold);
	KMS_ENSURE(b->wrapped_domain_key.len > 0 && b->key_ring.len > 0, err, KMS_ERR_INVALID,
		   "the backup holds no domain key or no key ring");
	for (size_t i = 0; i < b->n_shares; i++) {
		const Kms__V1__BackupShare *s = b->shares[i];

		KMS_ENSURE(s->index == i + 1 && s->custodian_public_key.len == KMS_X25519_LEN &&
				   s->ephemeral_public_key.len == KMS_X25519_LEN &&
				   s->nonce.len == NONCE_LEN &&
				   s->sealed_share.len == KMS_BACKUP_KEY_LEN + TAG_LEN &&
				   s->share_sha256.len == 32 &&
				   kms_operator_name_check(s->custodian, err) == KMS_OK,
			   err, KMS_ERR_INVALID, "share %zu of the backup is malformed", i + 1);
	}
	return KMS_OK;
}

int kms_backup_parse(const uint8_t *file, size_t len, kms_backup *out, kms_err *err)
{
	uint8_t sum[SUM_LEN];
	size_t blen;

	memset(out, 0, sizeof(*out));
	KMS_ENSURE(file != NULL && len >= MAGIC_LEN + 4 + MAC_LEN + SUM_LEN &&
			   memcmp(file, KMS_BACKUP_MAGIC, MAGIC_LEN) == 0,
		   err, KMS_ERR_INVALID, "this is not a kmsd backup file (no %s header)",
		   KMS_BACKUP_MAGIC);
	KMS_ENSURE(len <= KMS_BACKUP_FILE_MAX, err, KMS_ERR_LIMIT,
		   "the backup file is %zu bytes, over the %u-byte limit", len, KMS_BACKUP_FILE_MAX);
	SHA256(file, len - SUM_LEN, sum);
	if (CRYPTO_memcmp(sum, file + len - SUM_LEN, SUM_LEN) != 0)
		return kms_errf(err, KMS_ERR_AUTH_FAILED,
				"the backup file is damaged or was changed: its checksum does not "
				"match its content");
	blen = ((size_t)file[8] << 24) | ((size_t)file[9] << 16) | ((size_t)file[10] << 8) | file[11];
	KMS_ENSURE(blen == len - MAGIC_LEN - 4 - MAC_LEN - SUM_LEN, err, KMS_ERR_INVALID,
		   "the backup file's length field (%zu) does not match its size", blen);
	out->body = kms__v1__backup_body__unpack(NULL, blen, file + MAGIC_LEN + 4);
	if (out->body == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "the backup file's body does not parse");
	if (body_check(out->body, err) != KMS_OK) {
		kms_backup_free(out);
		return KMS_ERR_INVALID;
	}
	out->signed_part.data = kms_malloc(MAGIC_LEN + 4 + blen);
	if (out->signed_part.data == NULL) {
		kms_backup_free(out);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the backup");
	}
	memcpy(out->signed_part.data, file, MAGIC_LEN + 4 + blen);
	out->signed_part.len = MAGIC_LEN + 4 + blen;
	memcpy(out->mac, file + MAGIC_LEN + 4 + blen, MAC_LEN);
	return KMS_OK;
}

int kms_backup_unseal_share(const kms_backup *b, const char *custodian,
			    const uint8_t priv[KMS_X25519_LEN], kms_backup_share *out,
			    kms_err *err)
{
	const Kms__V1__BackupBody *body = b->body;
	const Kms__V1__BackupShare *s = NULL;
	uint8_t shared[32], key[32], aad[128], sum[32];
	size_t al;
	int rc = KMS_OK;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < body->n_shares && s == NULL; i++)
		if (strcmp(body->shares[i]->custodian, custodian) == 0)
			s = body->shares[i];
	KMS_ENSURE(s != NULL, err, KMS_ERR_NOT_FOUND,
		   "the backup holds no share for custodian '%s'", custodian);
	al = share_aad(aad, sizeof(aad), body->backup_id.data, (uint8_t)s->index, s->custodian);
	if (!x25519(priv, s->ephemeral_public_key.data, shared) || al == 0 ||
	    !seal_key(shared, body->backup_id.data, s->ephemeral_public_key.data,
		      s->custodian_public_key.data, key) ||
	    !gcm(0, key, s->nonce.data, aad, al, s->sealed_share.data, out->share,
		 s->sealed_share.data + KMS_BACKUP_KEY_LEN)) {
		rc = kms_errf(err, KMS_ERR_AUTH_FAILED,
			      "the share of custodian '%s' does not open with this private key (not "
			      "the custodian's key, or the share was changed)",
			      custodian);
		goto out;
	}
	share_sha256(body->backup_id.data, (uint8_t)s->index, out->share, sum);
	if (CRYPTO_memcmp(sum, s->share_sha256.data, 32) != 0) {
		rc = kms_errf(err, KMS_ERR_AUTH_FAILED,
			      "the share of custodian '%s' does not match the backup's record of it",
			      custodian);
		goto out;
	}
	memcpy(out->backup_id, body->backup_id.data, KMS_BACKUP_ID_LEN);
	out->index = (uint8_t)s->index;
	snprintf(out->custodian, sizeof(out->custodian), "%s", s->custodian);
out:
	if (rc != KMS_OK)
		OPENSSL_cleanse(out, sizeof(*out));
	OPENSSL_cleanse(shared, sizeof(shared));
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

/* magic | backup id | u8 index | u8 name length | name | share | SHA-256 of all that precedes */
int kms_backup_share_encode(const kms_backup_share *s, kms_buf *out, kms_err *err)
{
	size_t nl = strlen(s->custodian);
	size_t len = MAGIC_LEN + KMS_BACKUP_ID_LEN + 2 + nl + KMS_BACKUP_KEY_LEN + SUM_LEN;
	uint8_t *p = kms_malloc(len);
	size_t o = 0;

	if (p == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	memcpy(p, KMS_BACKUP_SHARE_MAGIC, MAGIC_LEN);
	o = MAGIC_LEN;
	memcpy(p + o, s->backup_id, KMS_BACKUP_ID_LEN);
	o += KMS_BACKUP_ID_LEN;
	p[o++] = s->index;
	p[o++] = (uint8_t)nl;
	memcpy(p + o, s->custodian, nl);
	o += nl;
	memcpy(p + o, s->share, KMS_BACKUP_KEY_LEN);
	o += KMS_BACKUP_KEY_LEN;
	SHA256(p, o, p + o);
	out->data = p;
	out->len = len;
	return KMS_OK;
}

int kms_backup_share_decode(const uint8_t *data, size_t len, kms_backup_share *out,
			    kms_err *err)
{
	uint8_t sum[SUM_LEN];
	size_t nl, o = MAGIC_LEN;

	memset(out, 0, sizeof(*out));
	KMS_ENSURE(data != NULL && len > MAGIC_LEN + KMS_BACKUP_ID_LEN + 2 &&
			   memcmp(data, KMS_BACKUP_SHARE_MAGIC, MAGIC_LEN) == 0,
		   err, KMS_ERR_INVALID, "this is not an unsealed backup share (no %s header)",
		   KMS_BACKUP_SHARE_MAGIC);
	nl = data[MAGIC_LEN + KMS_BACKUP_ID_LEN + 1];
	KMS_ENSURE(nl >= 1 && nl <= 64 &&
			   len == MAGIC_LEN + KMS_BACKUP_ID_LEN + 2 + nl + KMS_BACKUP_KEY_LEN +
					  SUM_LEN,
		   err, KMS_ERR_INVALID, "the share file is %zu bytes: truncated or malformed", len);
	SHA256(data, len - SUM_LEN, sum);
	KMS_ENSURE(CRYPTO_memcmp(sum, data + len - SUM_LEN, SUM_LEN) == 0, err, KMS_ERR_INVALID,
		   "the share file is damaged or was changed: its checksum does not match");
	memcpy(out->backup_id, data + o, KMS_BACKUP_ID_LEN);
	o += KMS_BACKUP_ID_LEN;
	out->index = data[o];
	o += 2;
	memcpy(out->custodian, data + o, nl);
	out->custodian[nl] = '\0';
	o += nl;
	memcpy(out->share, data + o, KMS_BACKUP_KEY_LEN);
	KMS_ENSURE(out->index >= 1 && kms_operator_name_check(out->custodian, err) == KMS_OK, err,
		   KMS_ERR_INVALID, "the share file names no valid share");
	return KMS_OK;
}

int kms_backup_open(const kms_backup *b, const kms_backup_share *shares, size_t n,
		    uint8_t key_out[KMS_BACKUP_KEY_LEN], kms_err *err)
{
	const Kms__V1__BackupBody *body = b->body;
	unsigned char xs[KMS_BACKUP_CUSTODIANS_MAX];
	uint8_t sum[32], mac[MAC_LEN];
	char want[2 * KMS_BACKUP_ID_LEN + 1], got[2 * KMS_BACKUP_ID_LEN + 1];
	gfshare_ctx *g;
	int rc = KMS_OK;

	memset(key_out, 0, KMS_BACKUP_KEY_LEN);
	kms_backup_id_hex(body->backup_id.data, want);
	for (size_t i = 0; i < n; i++) {
		const kms_backup_share *s = &shares[i];

		if (memcmp(s->backup_id, body->backup_id.data, KMS_BACKUP_ID_LEN) != 0) {
			kms_backup_id_hex(s->backup_id, got);
			return kms_errf(err, KMS_ERR_INVALID,
					"the share of custodian '%s' belongs to backup %s, not to "
					"this backup (%s)",
					s->custodian, got, want);
		}
		for (size_t j = 0; j < i; j++)
			KMS_ENSURE(shares[j].index != s->index, err, KMS_ERR_INVALID,
				   "the share of custodian '%s' is given twice", s->custodian);
	}
	KMS_ENSURE(n >= body->threshold, err, KMS_ERR_PRECONDITION,
		   "backup %s needs %u shares to restore, %zu given", want, body->threshold, n);
	KMS_ENSURE(n <= KMS_BACKUP_CUSTODIANS_MAX, err, KMS_ERR_INVALID,
		   "%zu shares given, more than %d", n, KMS_BACKUP_CUSTODIANS_MAX);
	for (size_t i = 0; i < n; i++) {
		const kms_backup_share *s = &shares[i];

		KMS_ENSURE(s->index >= 1 && s->index <= body->n_shares, err, KMS_ERR_INVALID,
			   "the share of custodian '%s' has index %u; this backup has %zu shares",
			   s->custodian, s->index, body->n_shares);
		share_sha256(body->backup_id.data, s->index, s->share, sum);
		if (CRYPTO_memcmp(sum, body->shares[s->index - 1]->share_sha256.data, 32) != 0)
			return kms_errf(err, KMS_ERR_INVALID,
					"the share given as custodian '%s''s (index %u) is wrong: it "
					"is not the share this backup made for that index",
					s->custodian, s->index);
		xs[i] = s->index;
	}
	g = gfshare_ctx_init_dec(xs, (unsigned int)n, KMS_BACKUP_KEY_LEN);
	if (g == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "cannot combine the shares (libgfshare)");
	for (size_t i = 0; i < n; i++) {
		unsigned char s[KMS_BACKUP_KEY_LEN];

		memcpy(s, shares[i].share, sizeof(s));
		gfshare_ctx_dec_giveshare(g, (unsigned char)i, s);
		OPENSSL_cleanse(s, sizeof(s));
	}
	gfshare_ctx_dec_extract(g, key_out);
	gfshare_fill_rand = gf_rand; /* gfshare_ctx_free scrubs with it */
	gfshare_ctx_free(g);
	if (!mac_of(key_out, body->backup_id.data, b->signed_part.data, b->signed_part.len, mac)) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot compute the backup's HMAC");
		goto out;
	}
	if (CRYPTO_memcmp(mac, b->mac, MAC_LEN) != 0)
		rc = kms_errf(err, KMS_ERR_AUTH_FAILED,
			      "backup %s was changed: its HMAC does not verify under the key the "
			      "shares rebuild",
			      want);
out:
	if (rc != KMS_OK)
		OPENSSL_cleanse(key_out, KMS_BACKUP_KEY_LEN);
	return rc;
}

static int read_pem(const char *path, int priv, EVP_PKEY **out, kms_err *err)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *pk;

	*out = NULL;
	if (f == NULL)
		return kms_errf(err, KMS_ERR_IO, "cannot open %s: %m", path);
	pk = priv ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (pk == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s holds no PEM %s key", path,
				priv ? "private" : "public");
	if (EVP_PKEY_get_id(pk) != EVP_PKEY_X25519) {
		EVP_PKEY_free(pk);
		return kms_errf(err, KMS_ERR_INVALID, "%s is not an X25519 key (ops/pki custodian)",
				path);
	}
	*out = pk;
	return KMS_OK;
}

int kms_x25519_public_from_file(const char *path, uint8_t pub[KMS_X25519_LEN], kms_err *err)
{
	EVP_PKEY *pk;
	size_t n = KMS_X25519_LEN;
	int ok;

	KMS_TRY(read_pem(path, 0, &pk, err));
	ok = EVP_PKEY_get_raw_public_key(pk, pub, &n) == 1 && n == KMS_X25519_LEN;
	EVP_PKEY_free(pk);
	return ok ? KMS_OK : kms_errf(err, KMS_ERR_INVALID, "cannot read the key in %s", path);
}

int kms_x25519_private_from_file(const char *path, uint8_t priv[KMS_X25519_LEN], kms_err *err)
{
	EVP_PKEY *pk;
	size_t n = KMS_X25519_LEN;
	int ok;

	KMS_TRY(read_pem(path, 1, &pk, err));
	ok = EVP_PKEY_get_raw_private_key(pk, priv, &n) == 1 && n == KMS_X25519_LEN;
	EVP_PKEY_free(pk); /* OpenSSL cleanses the private key */
	if (!ok)
		OPENSSL_cleanse(priv, KMS_X25519_LEN);
	return ok ? KMS_OK : kms_errf(err, KMS_ERR_INVALID, "cannot read the key in %s", path);
}
