/* batch.h - the limits of the batch calls (BatchDecrypt, BatchGenerateDataKey, BatchReEncrypt), shared by the server and its clients. */
#ifndef KMS_BATCH_H
#define KMS_BATCH_H

#include "kms/blob.h"

/* Items per batch call; more is refused whole with RESOURCE_EXHAUSTED. */
#define KMS_BATCH_MAX_ITEMS 1024

/*
 * The longest key reference a request may carry: a key id
 * (KMS_KEY_ID_MAX) or an alias, "alias/" and up to 250 characters
 * (kms.proto, AliasEntry).
 */
#define KMS_KEY_REF_MAX 256

/*
 * The largest valid request item, as protobuf encodes it (a field: one tag
 * byte, its length as a varint, its bytes), so that a batch of
 * KMS_BATCH_MAX_ITEMS of them always fits the request limit. Upper bounds:
 * an encryption context is at most KMS_CONTEXT_MAX_BYTES of keys and
 * values in KMS_CONTEXT_MAX_PAIRS map entries, each entry at most 9 bytes
 * of framing (three tags, three 2-byte lengths). tests/unit/test_batch_limits
 * builds the largest items and checks they fit.
 */
#define KMS_PB_VARINT_LEN(n) ((n) < 128u ? 1u : (n) < 16384u ? 2u : (n) < 2097152u ? 3u : 4u)
#define KMS_PB_FIELD_MAX(n) (1u + KMS_PB_VARINT_LEN(n) + (n))
#define KMS_PB_CONTEXT_MAX (KMS_CONTEXT_MAX_BYTES + KMS_CONTEXT_MAX_PAIRS * 9u)

/* DecryptRequest: blob, context, key_id. */
#define KMS_DECRYPT_REQUEST_MAX                                                                  \
	(KMS_PB_FIELD_MAX(KMS_BLOB_MAX) + KMS_PB_CONTEXT_MAX + KMS_PB_FIELD_MAX(KMS_KEY_REF_MAX))
/* GenerateDataKeyRequest: key_id, number_of_bytes (<= 64), context, without_plaintext. */
#define KMS_GENERATE_DATA_KEY_REQUEST_MAX                                                        \
	(KMS_PB_FIELD_MAX(KMS_KEY_REF_MAX) + 2u + KMS_PB_CONTEXT_MAX + 2u)
/* ReEncryptRequest: blob, two contexts, two key references. */
#define KMS_REENCRYPT_REQUEST_MAX                                                                \
	(KMS_PB_FIELD_MAX(KMS_BLOB_MAX) + 2u * KMS_PB_CONTEXT_MAX +                              \
	 2u * KMS_PB_FIELD_MAX(KMS_KEY_REF_MAX))

/* A batch request of the largest items: each is a repeated field of the batch. */
#define KMS_BATCH_REQUEST_MAX(item_max) (KMS_BATCH_MAX_ITEMS * KMS_PB_FIELD_MAX(item_max))
#define KMS_BATCH_DECRYPT_REQUEST_MAX KMS_BATCH_REQUEST_MAX(KMS_DECRYPT_REQUEST_MAX)
#define KMS_BATCH_GENERATE_DATA_KEY_REQUEST_MAX                                                  \
	KMS_BATCH_REQUEST_MAX(KMS_GENERATE_DATA_KEY_REQUEST_MAX)
#define KMS_BATCH_REENCRYPT_REQUEST_MAX KMS_BATCH_REQUEST_MAX(KMS_REENCRYPT_REQUEST_MAX)

/*
 * What a client must be ready to receive: a batch answer is at most
 * KMS_BATCH_MAX_ITEMS results of a response or an error of a few hundred
 * bytes; the largest is BatchReEncrypt's (a blob and two key ids, about
 * 4.6 KB each, 4.7 MB in all). Twice that leaves room for the fields
 * later versions add.
 */
#define KMS_RESPONSE_MAX (10u * 1024u * 1024u)

#endif
