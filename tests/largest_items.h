/* largest_items.h - the largest valid requests of each crypto call (full contexts, the longest blob and key references), for the tests of the size limits. */
#ifndef KMS_TESTS_LARGEST_ITEMS_H
#define KMS_TESTS_LARGEST_ITEMS_H

#include "kms/v1/kms.pb-c.h"

/*
 * Fill a request with the largest valid content: a KMS_BLOB_MAX blob (of
 * filler: no server opens it), KMS_CONTEXT_MAX_PAIRS distinct context pairs
 * that add up to KMS_CONTEXT_MAX_BYTES, and key references of
 * KMS_KEY_REF_MAX characters (an alias). Everything they point at is
 * static storage of largest_items.c, shared by every request filled.
 */
void kms_test_largest_decrypt(Kms__V1__DecryptRequest *r);
void kms_test_largest_generate_data_key(Kms__V1__GenerateDataKeyRequest *r);
void kms_test_largest_reencrypt(Kms__V1__ReEncryptRequest *r);

#endif
