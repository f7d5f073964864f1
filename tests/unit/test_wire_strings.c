/* test_wire_strings.c - Check suite for the NUL check of request strings on the protobuf wire (wire_strings.c). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/v1/kms.pb-c.h"
#include "rpc/wire_strings.h"
#include "check_run.h"

#define ASSERT_MSG(err, needle)                                                                   \
	ck_assert_msg(strstr((err).msg, needle) != NULL, "message '%s' lacks '%s'", (err).msg,    \
		      needle)

/* Appends a length-delimited field (len < 128). */
static size_t put(uint8_t *p, unsigned field, const void *data, size_t len)
{
	p[0] = (uint8_t)(field << 3 | 2);
	p[1] = (uint8_t)len;
	memcpy(p + 2, data, len);
	return len + 2;
}

START_TEST(test_clean_request)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry e =
		KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *es[] = {&e};
	uint8_t buf[256];
	size_t n;
	kms_err err = {0};

	req.key_id = (char *)"orders";
	req.number_of_bytes = 32;
	e.key = (char *)"tenant";
	e.value = (char *)"acme";
	req.encryption_context = es;
	req.n_encryption_context = 1;
	n = kms__v1__generate_data_key_request__pack(&req, buf);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__generate_data_key_request__descriptor,
						 buf, n, &err),
			 KMS_OK);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__generate_data_key_request__descriptor,
						 buf, 0, &err),
			 KMS_OK);
}
END_TEST

START_TEST(test_nul_in_map_value_key_and_nested)
{
	uint8_t buf[256], entry[64], grant[64], policy[96];
	size_t n, e, g, p;
	kms_err err = {0};

	e = put(entry, 1, "tenant", 6);
	e += put(entry + e, 2, "acme\0evil", 9);
	n = put(buf, 1, "orders", 6);
	n += put(buf + n, 3, entry, e);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__generate_data_key_request__descriptor,
						 buf, n, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "field 'encryption_context.value' holds a NUL byte at position 5");

	e = put(entry, 1, "ten\0ant", 7);
	n = put(buf, 2, entry, e); /* DecryptRequest.encryption_context = 2 */
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__decrypt_request__descriptor, buf, n,
						 &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "'encryption_context.key'");

	n = put(buf, 1, "ord\0ers", 7);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__create_key_request__descriptor, buf, n,
						 &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "'key_id'");

	/* CreateKeyRequest.policy(3).grants(1).principal(1). */
	g = put(grant, 1, "spiffe://td/a\0b", 15);
	p = put(policy, 1, grant, g);
	n = put(buf, 1, "k", 1);
	n += put(buf + n, 3, policy, p);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__create_key_request__descriptor, buf, n,
						 &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "'policy.grants.principal'");
}
END_TEST

START_TEST(test_bytes_and_unknown_fields_may_hold_nul)
{
	uint8_t buf[128];
	size_t n;
	kms_err err = {0};

	/* EncryptRequest.plaintext (2) is bytes: NULs are data. */
	n = put(buf, 1, "k", 1);
	n += put(buf + n, 2, "a\0b", 3);
	/* Field 15 is unknown: skipped. */
	n += put(buf + n, 15, "x\0y", 3);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__encrypt_request__descriptor, buf, n,
						 &err),
			 KMS_OK);
}
END_TEST

START_TEST(test_malformed_is_left_to_the_unpacker)
{
	static const uint8_t cut[] = {0x0a, 0x10, 'a'};       /* length past the end */
	static const uint8_t group[] = {0x0b};                /* start group */
	static const uint8_t varint[] = {0x08, 0xff, 0xff};   /* cut varint */
	static const uint8_t fixed[] = {0x09, 1, 2, 3};       /* cut fixed64 */
	kms_err err = {0};

	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__encrypt_request__descriptor, cut,
						 sizeof(cut), &err),
			 KMS_OK);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__encrypt_request__descriptor, group,
						 sizeof(group), &err),
			 KMS_OK);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__encrypt_request__descriptor, varint,
						 sizeof(varint), &err),
			 KMS_OK);
	ck_assert_int_eq(kms_wire_check_strings(&kms__v1__encrypt_request__descriptor, fixed,
						 sizeof(fixed), &err),
			 KMS_OK);
	ck_assert_int_eq(kms_wire_check_strings(NULL, fixed, sizeof(fixed), &err), KMS_OK);
}
END_TEST

struct bad_items {
	size_t n;
	size_t index[4];
	char msg[4][KMS_ERRMSG_SIZE];
};

static void record_bad(void *arg, size_t index, const kms_err *err)
{
	struct bad_items *b = arg;

	ck_assert_uint_lt(b->n, 4);
	b->index[b->n] = index;
	snprintf(b->msg[b->n], sizeof(b->msg[0]), "%s", err->msg);
	b->n++;
}

/* A batch: each item is checked alone and named by its place among the items. */
START_TEST(test_items_one_by_one)
{
	uint8_t buf[256], item[64];
	size_t n = 0, i;
	struct bad_items b;

	memset(&b, 0, sizeof(b));
	i = put(item, 1, "good", 4); /* GenerateDataKeyRequest.key_id */
	n += put(buf + n, 1, item, i);
	i = put(item, 1, "ba\0d", 5);
	n += put(buf + n, 1, item, i);
	/* An unknown field and a varint in between count as no item. */
	n += put(buf + n, 9, "x\0", 2);
	buf[n++] = 2 << 3; /* field 2, varint 1 */
	buf[n++] = 1;
	i = put(item, 1, "fine", 4);
	n += put(buf + n, 1, item, i);
	i = put(item, 1, "\0", 1);
	n += put(buf + n, 1, item, i);
	ck_assert_uint_eq(kms_wire_check_items(&kms__v1__generate_data_key_request__descriptor, 1,
					       buf, n, record_bad, &b),
			  4);
	ck_assert_uint_eq(b.n, 2);
	ck_assert_uint_eq(b.index[0], 1);
	ck_assert_uint_eq(b.index[1], 3);
	ck_assert_str_eq(b.msg[0], "field 'key_id' holds a NUL byte at position 3: strings must "
				   "not contain NUL");
	/* The whole batch as one message would have been refused whole. */
	{
		kms_err err = {0};

		ck_assert_int_eq(kms_wire_check_strings(
					 &kms__v1__batch_generate_data_key_request__descriptor, buf,
					 n, &err),
				 KMS_ERR_INVALID);
	}
	/* Counting only: no string is looked at. */
	ck_assert_uint_eq(kms_wire_check_items(&kms__v1__generate_data_key_request__descriptor, 1,
					       buf, n, NULL, NULL),
			  4);
	/* Cut bytes end the walk: what came before is reported. */
	memset(&b, 0, sizeof(b));
	buf[n++] = 0x0a;
	buf[n++] = 0x7f;
	ck_assert_uint_eq(kms_wire_check_items(&kms__v1__generate_data_key_request__descriptor, 1,
					       buf, n, record_bad, &b),
			  4);
	ck_assert_uint_eq(b.n, 2);
	memset(&b, 0, sizeof(b));
	kms_wire_check_items(NULL, 1, buf, n, record_bad, &b);
	kms_wire_check_items(&kms__v1__generate_data_key_request__descriptor, 1, NULL, 0,
			     record_bad, &b);
	ck_assert_uint_eq(b.n, 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("wire_strings");
	TCase *tc = tcase_create("check");
	SRunner *sr;

	tcase_add_test(tc, test_clean_request);
	tcase_add_test(tc, test_nul_in_map_value_key_and_nested);
	tcase_add_test(tc, test_bytes_and_unknown_fields_may_hold_nul);
	tcase_add_test(tc, test_malformed_is_left_to_the_unpacker);
	tcase_add_test(tc, test_items_one_by_one);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
