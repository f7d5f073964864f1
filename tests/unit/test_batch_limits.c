/* test_batch_limits.c - the size limits of kms/batch.h hold the largest valid items and answers, as protobuf-c packs them. */
#include <check.h>
#include <limits.h>
#include <string.h>

#include "kms/batch.h"
#include "kms/error.h"
#include "kms/v1/kms.pb-c.h"
#include "largest_items.h"
#include "rpc/rpc_server.h"
#include "check_run.h"

/* size fits the bound, and the bound is no more than 3% above it. */
static void assert_tight(size_t size, size_t bound, const char *what)
{
	ck_assert_msg(size <= bound, "%s: %zu bytes, over the bound %zu", what, size, bound);
	ck_assert_msg(bound - size <= bound / 33, "%s: %zu bytes, far below the bound %zu", what,
		      size, bound);
}

START_TEST(largest_items_fit)
{
	Kms__V1__DecryptRequest dec;
	Kms__V1__GenerateDataKeyRequest gdk;
	Kms__V1__ReEncryptRequest re;

	kms_test_largest_decrypt(&dec);
	assert_tight(protobuf_c_message_get_packed_size(&dec.base), KMS_DECRYPT_REQUEST_MAX,
		     "DecryptRequest");
	kms_test_largest_generate_data_key(&gdk);
	assert_tight(protobuf_c_message_get_packed_size(&gdk.base),
		     KMS_GENERATE_DATA_KEY_REQUEST_MAX, "GenerateDataKeyRequest");
	kms_test_largest_reencrypt(&re);
	assert_tight(protobuf_c_message_get_packed_size(&re.base), KMS_REENCRYPT_REQUEST_MAX,
		     "ReEncryptRequest");
	/* Each fits a single call's limit: only the batches need more. */
	ck_assert_uint_le(KMS_REENCRYPT_REQUEST_MAX, KMS_RPC_MAX_REQUEST_DEFAULT);
	ck_assert_uint_le(KMS_DECRYPT_REQUEST_MAX, KMS_RPC_MAX_REQUEST_DEFAULT);
}
END_TEST

START_TEST(full_batches_fit)
{
	static void *items[KMS_BATCH_MAX_ITEMS];
	Kms__V1__ReEncryptRequest re;
	Kms__V1__DecryptRequest dec;
	Kms__V1__GenerateDataKeyRequest gdk;
	Kms__V1__BatchReEncryptRequest rb = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchDecryptRequest db = KMS__V1__BATCH_DECRYPT_REQUEST__INIT;
	Kms__V1__BatchGenerateDataKeyRequest gb = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;

	kms_test_largest_reencrypt(&re);
	kms_test_largest_decrypt(&dec);
	kms_test_largest_generate_data_key(&gdk);
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		items[i] = &re;
	rb.requests = (Kms__V1__ReEncryptRequest **)items;
	rb.n_requests = KMS_BATCH_MAX_ITEMS;
	assert_tight(protobuf_c_message_get_packed_size(&rb.base),
		     KMS_BATCH_REENCRYPT_REQUEST_MAX, "BatchReEncryptRequest");
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		items[i] = &dec;
	db.requests = (Kms__V1__DecryptRequest **)items;
	db.n_requests = KMS_BATCH_MAX_ITEMS;
	assert_tight(protobuf_c_message_get_packed_size(&db.base),
		     KMS_BATCH_DECRYPT_REQUEST_MAX, "BatchDecryptRequest");
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		items[i] = &gdk;
	gb.requests = (Kms__V1__GenerateDataKeyRequest **)items;
	gb.n_requests = KMS_BATCH_MAX_ITEMS;
	assert_tight(protobuf_c_message_get_packed_size(&gb.base),
		     KMS_BATCH_GENERATE_DATA_KEY_REQUEST_MAX, "BatchGenerateDataKeyRequest");
	/* gRPC takes the limit as an int. */
	ck_assert_uint_lt(KMS_BATCH_REENCRYPT_REQUEST_MAX, INT_MAX);
}
END_TEST

/* What a client must take in: the largest answers stay under KMS_RESPONSE_MAX. */
START_TEST(largest_answers_fit_the_client)
{
	static void *results[KMS_BATCH_MAX_ITEMS];
	static uint8_t blob[KMS_BLOB_MAX], plaintext[KMS_PLAINTEXT_MAX];
	static char key_id[KMS_KEY_ID_MAX + 1], message[KMS_ERRMSG_SIZE];
	Kms__V1__ReEncryptResponse re = KMS__V1__RE_ENCRYPT_RESPONSE__INIT;
	Kms__V1__DecryptResponse dec = KMS__V1__DECRYPT_RESPONSE__INIT;
	Kms__V1__ItemError e = KMS__V1__ITEM_ERROR__INIT;
	Kms__V1__BatchReEncryptResult rr = KMS__V1__BATCH_RE_ENCRYPT_RESULT__INIT;
	Kms__V1__BatchReEncryptResult rerr = KMS__V1__BATCH_RE_ENCRYPT_RESULT__INIT;
	Kms__V1__BatchDecryptResult dr = KMS__V1__BATCH_DECRYPT_RESULT__INIT;
	Kms__V1__BatchReEncryptResponse ra = KMS__V1__BATCH_RE_ENCRYPT_RESPONSE__INIT;
	Kms__V1__BatchDecryptResponse da = KMS__V1__BATCH_DECRYPT_RESPONSE__INIT;
	size_t re_size, dec_size;

	memset(key_id, 'k', KMS_KEY_ID_MAX);
	memset(message, 'm', sizeof(message) - 1);
	re.ciphertext_blob.data = blob;
	re.ciphertext_blob.len = sizeof(blob);
	re.key_id = re.source_key_id = key_id;
	re.key_version = re.source_key_version = UINT32_MAX;
	rr.result_case = KMS__V1__BATCH_RE_ENCRYPT_RESULT__RESULT_RESPONSE;
	rr.response = &re;
	e.code = 16;
	e.message = message;
	rerr.result_case = KMS__V1__BATCH_RE_ENCRYPT_RESULT__RESULT_ERROR;
	rerr.error = &e;
	/* An error is smaller than a response: all responses is the largest answer. */
	ck_assert_uint_lt(protobuf_c_message_get_packed_size(&rerr.base),
			  protobuf_c_message_get_packed_size(&rr.base));
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		results[i] = &rr;
	ra.results = (Kms__V1__BatchReEncryptResult **)results;
	ra.n_results = KMS_BATCH_MAX_ITEMS;
	re_size = protobuf_c_message_get_packed_size(&ra.base);

	dec.key_id = key_id;
	dec.key_version = UINT32_MAX;
	dec.plaintext.data = plaintext;
	dec.plaintext.len = sizeof(plaintext);
	dr.result_case = KMS__V1__BATCH_DECRYPT_RESULT__RESULT_RESPONSE;
	dr.response = &dec;
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		results[i] = &dr;
	da.results = (Kms__V1__BatchDecryptResult **)results;
	da.n_results = KMS_BATCH_MAX_ITEMS;
	dec_size = protobuf_c_message_get_packed_size(&da.base);
	ck_assert_msg(re_size <= KMS_RESPONSE_MAX / 2 && dec_size <= KMS_RESPONSE_MAX / 2,
		      "answers of %zu and %zu bytes leave too little room under %u", re_size,
		      dec_size, KMS_RESPONSE_MAX);
	/* ... and above gRPC's default, which is why the client raises it. */
	ck_assert_uint_gt(re_size, 4u * 1024 * 1024);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("batch_limits");
	TCase *tc = tcase_create("limits");

	tcase_add_test(tc, largest_items_fit);
	tcase_add_test(tc, full_batches_fit);
	tcase_add_test(tc, largest_answers_fit_the_client);
	suite_add_tcase(s, tc);
	return kms_check_run(srunner_create(s));
}
