/* test_b64.c - Check suite for kmsctl's strict base64 (tools/b64.c): RFC 4648 test vectors and every malformed shape. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "../tools/b64.h"
#include "check_run.h"
#include "kms/alloc.h"

/* RFC 4648, section 10. */
static const struct {
	const char *plain, *enc;
} vectors[] = {{"", ""},	     {"f", "Zg=="},	    {"fo", "Zm8="},
	       {"foo", "Zm9v"},	     {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
	       {"foobar", "Zm9vYmFy"}};

START_TEST(rfc4648_vectors)
{
	size_t cap = 0;
	char *e = b64_encode((const uint8_t *)vectors[_i].plain, strlen(vectors[_i].plain), &cap);
	kms_buf d;

	ck_assert_ptr_nonnull(e);
	ck_assert_str_eq(e, vectors[_i].enc);
	ck_assert_uint_eq(cap, strlen(e) + 1);
	kms_free(e);
	ck_assert_int_eq(b64_decode(vectors[_i].enc, strlen(vectors[_i].enc), 100, &d), B64_OK);
	ck_assert_uint_eq(d.len, strlen(vectors[_i].plain));
	if (d.len > 0)
		ck_assert_mem_eq(d.data, vectors[_i].plain, d.len);
	kms_buf_free(&d);
}
END_TEST

static const struct {
	const char *in;
	enum b64_status st;
} bad[] = {
    {"Zg=", B64_LENGTH},     {"Zm9vY", B64_LENGTH},   {"Zm9v\n", B64_LENGTH},
    {"Zm 9", B64_ALPHABET},  {"Zm9-", B64_ALPHABET},  {"Zm9_", B64_ALPHABET},
    {"Z===", B64_ALPHABET},  {"=Zg=", B64_ALPHABET},  {"Zg=a", B64_ALPHABET},
    {"Zm\x01v", B64_ALPHABET}, {"Zm9v\n\n\n\n", B64_ALPHABET},
};

START_TEST(refuses_malformed)
{
	kms_buf d = {(uint8_t *)1, 1};

	ck_assert_int_eq(b64_decode(bad[_i].in, strlen(bad[_i].in), 100, &d), bad[_i].st);
	ck_assert_ptr_null(d.data);
	ck_assert_uint_eq(d.len, 0);
	ck_assert_ptr_nonnull(b64_status_text(bad[_i].st));
}
END_TEST

START_TEST(length_bound_and_embedded_nul)
{
	static const char with_nul[] = "Zm9v\0Zm9v";
	kms_buf d;

	ck_assert_int_eq(b64_decode("Zm9vYmFy", 8, 7, &d), B64_TOO_LONG);
	ck_assert_int_eq(b64_decode("Zm9vYmFy", 8, 8, &d), B64_OK);
	kms_buf_free(&d);
	/* The length given counts, not a NUL. */
	ck_assert_int_eq(b64_decode(with_nul, sizeof(with_nul) - 1, 100, &d), B64_LENGTH);
	ck_assert_int_eq(b64_decode("Zm9vYmFyXX", 8, 100, &d), B64_OK);
	ck_assert_uint_eq(d.len, 6);
	kms_buf_free(&d);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("b64");
	TCase *tc = tcase_create("b64");

	tcase_add_loop_test(tc, rfc4648_vectors, 0, (int)(sizeof(vectors) / sizeof(vectors[0])));
	tcase_add_loop_test(tc, refuses_malformed, 0, (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, length_bound_and_embedded_nul);
	suite_add_tcase(s, tc);
	return kms_check_run(srunner_create(s));
}
