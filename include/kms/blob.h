/* blob.h - the versioned ciphertext blob and its AAD (header + canonical encryption context); see docs/FORMAT.md. */
#ifndef KMS_BLOB_H
#define KMS_BLOB_H

#include <stddef.h>
#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"

#define KMS_BLOB_VERSION 1
#define KMS_KEY_ID_MAX 128
#define KMS_GCM_IV_LEN 12  /* 96-bit IV, NIST SP 800-38D 8.2.2 (random construction) */
#define KMS_GCM_TAG_LEN 16 /* 128-bit tag */
#define KMS_PLAINTEXT_MAX 4096
#define KMS_CONTEXT_MAX_PAIRS 64
#define KMS_CONTEXT_MAX_BYTES 8192 /* sum of key and value lengths */
/* Largest blob: header with the longest key id plus the largest plaintext. */
#define KMS_BLOB_MAX (1 + 1 + KMS_KEY_ID_MAX + 4 + KMS_GCM_IV_LEN + KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN)

/* One encryption-context pair, borrowed from the request. */
typedef struct kms_ctx_pair {
	const char *key;
	const char *value;
} kms_ctx_pair;

typedef struct kms_blob_header {
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t key_version;
	uint8_t iv[KMS_GCM_IV_LEN];
} kms_blob_header;

/*
 * Key ids are 1-128 characters of [A-Za-z0-9._/-] starting with a letter or
 * a digit. KMS_OK or KMS_ERR_INVALID with a message naming the rule.
 */
int kms_key_id_check(const char *key_id, kms_err *err);

/*
 * Checks the context limits (pair count, total size, empty or duplicate
 * keys). KMS_OK or KMS_ERR_INVALID.
 */
int kms_context_check(const kms_ctx_pair *pairs, size_t n, kms_err *err);

/*
 * Builds the AAD that GCM authenticates: the blob header (version, key id,
 * key version) followed by the canonical context encoding (pairs sorted by
 * key bytes, each length-prefixed), so the order the caller sent them in does
 * not matter. Allocates aad->data (kms_malloc); the caller frees it with
 * kms_buf_free. Does not reorder the caller's array.
 */
int kms_blob_aad(const kms_blob_header *h, const kms_ctx_pair *pairs, size_t n,
		 kms_buf *aad, kms_err *err);

/* Size of the encoded blob for a ciphertext (tag included) of ct_len bytes. */
size_t kms_blob_encoded_size(const kms_blob_header *h, size_t ct_len);

/*
 * Encodes header || ct (ciphertext with its 16-byte tag appended) into out,
 * which holds at least kms_blob_encoded_size() bytes; *written is set.
 */
int kms_blob_encode(const kms_blob_header *h, const uint8_t *ct, size_t ct_len,
		    uint8_t *out, size_t out_cap, size_t *written, kms_err *err);

/*
 * Parses a blob. On success h is filled and *ct / *ct_len borrow the
 * ciphertext-with-tag from blob. A wrong version, a bad key id, a blob
 * shorter than a tag or longer than KMS_BLOB_MAX give KMS_ERR_INVALID.
 */
int kms_blob_decode(const uint8_t *blob, size_t len, kms_blob_header *h,
		    const uint8_t **ct, size_t *ct_len, kms_err *err);

#endif
