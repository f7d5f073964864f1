/* largest_items.c - the largest valid requests of each crypto call, for the tests of the size limits. */
#include <string.h>

#include "kms/batch.h"
#include "largest_items.h"

#define PAIRS KMS_CONTEXT_MAX_PAIRS
/* Keys and values that fill KMS_CONTEXT_MAX_BYTES exactly. */
#define HALF (KMS_CONTEXT_MAX_BYTES / PAIRS / 2)

static char keys[PAIRS][HALF + 1], value[HALF + 1], key_ref[KMS_KEY_REF_MAX + 1];
static uint8_t blob[KMS_BLOB_MAX];
static int made;

/* One context per entry type, all on the same strings. */
static Kms__V1__DecryptRequest__EncryptionContextEntry dec_e[PAIRS], *dec_p[PAIRS];
static Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry gdk_e[PAIRS], *gdk_p[PAIRS];
static Kms__V1__ReEncryptRequest__SourceEncryptionContextEntry src_e[PAIRS], *src_p[PAIRS];
static Kms__V1__ReEncryptRequest__DestinationEncryptionContextEntry dst_e[PAIRS], *dst_p[PAIRS];

static void make(void)
{
	if (made)
		return;
	made = 1;
	memset(value, 'v', HALF);
	memcpy(key_ref, "alias/", 6);
	memset(key_ref + 6, 'a', KMS_KEY_REF_MAX - 6);
	memset(blob, 0xab, sizeof(blob));
	for (size_t i = 0; i < PAIRS; i++) {
		/* Distinct keys: a context never repeats one. */
		memset(keys[i], 'k', HALF);
		keys[i][0] = (char)('A' + i / 26);
		keys[i][1] = (char)('a' + i % 26);
		kms__v1__decrypt_request__encryption_context_entry__init(&dec_e[i]);
		kms__v1__generate_data_key_request__encryption_context_entry__init(&gdk_e[i]);
		kms__v1__re_encrypt_request__source_encryption_context_entry__init(&src_e[i]);
		kms__v1__re_encrypt_request__destination_encryption_context_entry__init(&dst_e[i]);
		dec_e[i].key = gdk_e[i].key = src_e[i].key = dst_e[i].key = keys[i];
		dec_e[i].value = gdk_e[i].value = src_e[i].value = dst_e[i].value = value;
		dec_p[i] = &dec_e[i];
		gdk_p[i] = &gdk_e[i];
		src_p[i] = &src_e[i];
		dst_p[i] = &dst_e[i];
	}
}

void kms_test_largest_decrypt(Kms__V1__DecryptRequest *r)
{
	make();
	kms__v1__decrypt_request__init(r);
	r->ciphertext_blob.data = blob;
	r->ciphertext_blob.len = sizeof(blob);
	r->encryption_context = dec_p;
	r->n_encryption_context = PAIRS;
	r->key_id = key_ref;
}

void kms_test_largest_generate_data_key(Kms__V1__GenerateDataKeyRequest *r)
{
	make();
	kms__v1__generate_data_key_request__init(r);
	r->key_id = key_ref;
	r->number_of_bytes = 64;
	r->without_plaintext = 1;
	r->encryption_context = gdk_p;
	r->n_encryption_context = PAIRS;
}

void kms_test_largest_reencrypt(Kms__V1__ReEncryptRequest *r)
{
	make();
	kms__v1__re_encrypt_request__init(r);
	r->ciphertext_blob.data = blob;
	r->ciphertext_blob.len = sizeof(blob);
	r->source_encryption_context = src_p;
	r->n_source_encryption_context = PAIRS;
	r->destination_encryption_context = dst_p;
	r->n_destination_encryption_context = PAIRS;
	r->source_key_id = key_ref;
	r->destination_key_id = key_ref;
}
