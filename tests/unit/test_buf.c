/* test_buf.c - Check suite for the bounded reader/writer (buf.c), the error family (error.c) and the allocator (alloc.c). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "check_run.h"

static kms_err err;

static void setup(void)
{
	kms_err_clear(&err);
	kms_alloc_fail_reset();
}

static void teardown(void)
{
	kms_alloc_fail_reset();
}

/* --- reader --- */

START_TEST(test_reader_u8_u32_big_endian)
{
	static const uint8_t data[] = {0xab, 0x01, 0x02, 0x03, 0x04, 0xff};
	kms_reader r;
	uint8_t b;
	uint32_t v;

	kms_reader_init(&r, data, sizeof(data));
	ck_assert_uint_eq(kms_reader_remaining(&r), 6);
	ck_assert_int_eq(kms_reader_u8(&r, &b), KMS_OK);
	ck_assert_uint_eq(b, 0xab);
	ck_assert_int_eq(kms_reader_u32(&r, &v), KMS_OK);
	/* Big-endian: the first byte is the most significant. */
	ck_assert_uint_eq(v, 0x01020304u);
	ck_assert_uint_eq(kms_reader_remaining(&r), 1);
	ck_assert_int_eq(kms_reader_u8(&r, &b), KMS_OK);
	ck_assert_uint_eq(b, 0xff);
	ck_assert_uint_eq(kms_reader_remaining(&r), 0);
}
END_TEST

START_TEST(test_reader_u32_high_bit)
{
	static const uint8_t data[] = {0xff, 0xff, 0xff, 0xfe};
	kms_reader r;
	uint32_t v;

	kms_reader_init(&r, data, sizeof(data));
	ck_assert_int_eq(kms_reader_u32(&r, &v), KMS_OK);
	ck_assert_uint_eq(v, 0xfffffffeu);
}
END_TEST

/* Bad-input twin: a read past the end fails and leaves the cursor alone. */
START_TEST(test_reader_past_end_leaves_cursor)
{
	static const uint8_t data[] = {1, 2, 3};
	kms_reader r;
	uint32_t v = 0x55555555u;
	uint8_t b;
	const uint8_t *p = NULL;

	kms_reader_init(&r, data, sizeof(data));
	ck_assert_int_eq(kms_reader_u32(&r, &v), KMS_ERR_INVALID);
	ck_assert_uint_eq(v, 0x55555555u);
	ck_assert_uint_eq(r.pos, 0);
	ck_assert_int_eq(kms_reader_bytes(&r, 4, &p), KMS_ERR_INVALID);
	ck_assert_ptr_null(p);
	ck_assert_uint_eq(r.pos, 0);
	ck_assert_int_eq(kms_reader_bytes(&r, 2, &p), KMS_OK);
	ck_assert_ptr_eq(p, data);
	ck_assert_int_eq(kms_reader_u32(&r, &v), KMS_ERR_INVALID);
	ck_assert_uint_eq(r.pos, 2);
	ck_assert_int_eq(kms_reader_u8(&r, &b), KMS_OK);
	ck_assert_int_eq(kms_reader_u8(&r, &b), KMS_ERR_INVALID);
	ck_assert_uint_eq(r.pos, 3);
	/* SIZE_MAX must not wrap the bounds check. */
	ck_assert_int_eq(kms_reader_bytes(&r, SIZE_MAX, &p), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_reader_bytes_borrows)
{
	static const uint8_t data[] = "abcdef";
	kms_reader r;
	const uint8_t *p;

	kms_reader_init(&r, data, 6);
	ck_assert_int_eq(kms_reader_bytes(&r, 0, &p), KMS_OK);
	ck_assert_int_eq(kms_reader_bytes(&r, 2, &p), KMS_OK);
	ck_assert_ptr_eq(p, data);
	ck_assert_int_eq(kms_reader_bytes(&r, 4, &p), KMS_OK);
	ck_assert_ptr_eq(p, data + 2);
	ck_assert_uint_eq(kms_reader_remaining(&r), 0);
}
END_TEST

START_TEST(test_reader_null_data)
{
	kms_reader r;
	uint8_t b;

	kms_reader_init(&r, NULL, 100);
	ck_assert_uint_eq(kms_reader_remaining(&r), 0);
	ck_assert_int_eq(kms_reader_u8(&r, &b), KMS_ERR_INVALID);
}
END_TEST

/* --- writer --- */

START_TEST(test_writer_big_endian)
{
	uint8_t out[9];
	kms_writer w;

	kms_writer_init(&w, out, sizeof(out));
	ck_assert_int_eq(kms_writer_u8(&w, 0x7f), KMS_OK);
	ck_assert_int_eq(kms_writer_u32(&w, 0xa1b2c3d4u), KMS_OK);
	ck_assert_int_eq(kms_writer_bytes(&w, "xyz", 3), KMS_OK);
	ck_assert_int_eq(kms_writer_bytes(&w, NULL, 0), KMS_OK);
	ck_assert_uint_eq(w.len, 8);
	ck_assert_mem_eq(out, "\x7f\xa1\xb2\xc3\xd4xyz", 8);
	/* Exactly filling the buffer is allowed. */
	ck_assert_int_eq(kms_writer_u8(&w, 1), KMS_OK);
	ck_assert_uint_eq(w.len, 9);
}
END_TEST

/* Bad-input twin: an overflowing write fails, writes nothing, keeps len. */
START_TEST(test_writer_overflow_unchanged)
{
	uint8_t out[6];
	kms_writer w;

	memset(out, 0xee, sizeof(out));
	kms_writer_init(&w, out, 5);
	ck_assert_int_eq(kms_writer_u8(&w, 0x11), KMS_OK);
	ck_assert_int_eq(kms_writer_u8(&w, 0x22), KMS_OK);
	ck_assert_int_eq(kms_writer_u32(&w, 0x33333333u), KMS_ERR_INVALID);
	ck_assert_uint_eq(w.len, 2);
	ck_assert_int_eq(kms_writer_bytes(&w, "abcd", 4), KMS_ERR_INVALID);
	ck_assert_uint_eq(w.len, 2);
	ck_assert_int_eq(kms_writer_bytes(&w, "abc", SIZE_MAX),
			 KMS_ERR_INVALID);
	ck_assert_uint_eq(w.len, 2);
	ck_assert_mem_eq(out, "\x11\x22\xee\xee\xee\xee", 6);
	ck_assert_int_eq(kms_writer_bytes(&w, "abc", 3), KMS_OK);
	ck_assert_int_eq(kms_writer_u8(&w, 0), KMS_ERR_INVALID);
	ck_assert_uint_eq(w.len, 5);
	/* The byte past cap was never touched. */
	ck_assert_uint_eq(out[5], 0xee);
}
END_TEST

START_TEST(test_writer_null_data)
{
	kms_writer w;

	kms_writer_init(&w, NULL, 64);
	ck_assert_uint_eq(w.cap, 0);
	ck_assert_int_eq(kms_writer_u8(&w, 1), KMS_ERR_INVALID);
	ck_assert_uint_eq(w.len, 0);
}
END_TEST

START_TEST(test_buf_free_zeroes)
{
	kms_buf b = {kms_malloc(16), 16};
	kms_buf s = {kms_malloc(32), 32};

	ck_assert_ptr_nonnull(b.data);
	ck_assert_ptr_nonnull(s.data);
	memset(s.data, 0x42, s.len);
	kms_buf_free(&b);
	ck_assert_ptr_null(b.data);
	ck_assert_uint_eq(b.len, 0);
	kms_buf_free_secret(&s);
	ck_assert_ptr_null(s.data);
	ck_assert_uint_eq(s.len, 0);
	/* Freeing twice or NULL is harmless. */
	kms_buf_free(&b);
	kms_buf_free(NULL);
	kms_buf_free_secret(NULL);
}
END_TEST

/* --- error family --- */

START_TEST(test_errf_records)
{
	ck_assert_int_eq(
	    kms_errf(&err, KMS_ERR_NOT_FOUND, "key '%s' v%u", "k1", 3u),
	    KMS_ERR_NOT_FOUND);
	ck_assert_int_eq(err.code, KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "key 'k1' v3");
	/* A NULL err still returns the code, so `return kms_errf(...)` works.
	 */
	ck_assert_int_eq(kms_errf(NULL, KMS_ERR_IO, "x"), KMS_ERR_IO);
	kms_err_clear(&err);
	ck_assert_int_eq(err.code, KMS_OK);
	ck_assert_str_eq(err.msg, "");
	kms_err_clear(NULL);
}
END_TEST

START_TEST(test_errf_truncates)
{
	char big[1000];

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(kms_errf(&err, KMS_ERR_INVALID, "%s", big),
			 KMS_ERR_INVALID);
	ck_assert_uint_eq(strlen(err.msg), KMS_ERRMSG_SIZE - 1);
	ck_assert_int_eq(err.msg[0], 'a');
}
END_TEST

START_TEST(test_err_prefix)
{
	kms_errf(&err, KMS_ERR_INVALID, "unknown operation 'X'");
	ck_assert_int_eq(kms_err_prefix(&err, "grant 2"), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "grant 2: unknown operation 'X'");
	ck_assert_int_eq(err.code, KMS_ERR_INVALID);
	ck_assert_int_eq(kms_err_prefix(NULL, "p"), KMS_ERR_INTERNAL);
}
END_TEST

START_TEST(test_err_prefix_truncates)
{
	char big[400];

	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	kms_errf(&err, KMS_ERR_CONFIG, "tail-that-is-cut-%s", big);
	ck_assert_int_eq(kms_err_prefix(&err, big), KMS_ERR_CONFIG);
	ck_assert_uint_eq(strlen(err.msg), KMS_ERRMSG_SIZE - 1);
	/* The prefix comes first even when it fills the whole buffer. */
	ck_assert_int_eq(strncmp(err.msg, big, KMS_ERRMSG_SIZE - 1), 0);
	ck_assert_int_eq(err.code, KMS_ERR_CONFIG);
}
END_TEST

START_TEST(test_strerror_names)
{
	for (int c = 0; c < KMS_STATUS_COUNT; c++) {
		ck_assert_ptr_nonnull(kms_strerror(c));
		ck_assert_str_ne(kms_strerror(c), "unknown status");
	}
	ck_assert_str_eq(kms_strerror(KMS_OK), "ok");
	ck_assert_str_eq(kms_strerror(KMS_ERR_NOT_FOUND), "not found");
	ck_assert_str_eq(kms_strerror(-1), "unknown status");
	ck_assert_str_eq(kms_strerror(KMS_STATUS_COUNT), "unknown status");
}
END_TEST

static int fails_with(int code)
{
	return kms_errf(&err, code, "failed with %d", code);
}

static int use_try(int code, int *reached)
{
	KMS_TRY(fails_with(code));
	*reached = 1;
	return KMS_OK;
}

static int use_try_goto(int code, int *cleaned)
{
	int rc;

	KMS_TRY_GOTO(rc, fails_with(code), out);
	rc = KMS_OK;
out:
	*cleaned = 1;
	return rc;
}

static int use_ensure(int v)
{
	KMS_ENSURE(v > 0, &err, KMS_ERR_INVALID, "v must be positive, not %d",
		   v);
	return KMS_OK;
}

START_TEST(test_guard_macros)
{
	int reached = 0, cleaned = 0;

	ck_assert_int_eq(use_try(KMS_OK, &reached), KMS_OK);
	ck_assert_int_eq(reached, 1);
	reached = 0;
	ck_assert_int_eq(use_try(KMS_ERR_HSM, &reached), KMS_ERR_HSM);
	ck_assert_int_eq(reached, 0);
	ck_assert_int_eq(use_try_goto(KMS_ERR_IO, &cleaned), KMS_ERR_IO);
	ck_assert_int_eq(cleaned, 1);
	cleaned = 0;
	ck_assert_int_eq(use_try_goto(KMS_OK, &cleaned), KMS_OK);
	ck_assert_int_eq(cleaned, 1);
	kms_err_clear(&err);
	ck_assert_int_eq(use_ensure(1), KMS_OK);
	ck_assert_int_eq(err.code, KMS_OK);
	ck_assert_int_eq(use_ensure(-3), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "v must be positive, not -3");
}
END_TEST

/* --- allocator --- */

START_TEST(test_alloc_basic)
{
	char *s = kms_strdup("hello");
	char *t = kms_strndup("hello", 3);
	char *u = kms_strndup("hi", 10);
	uint8_t *z = kms_calloc(4, 4);
	void *m = kms_malloc(0);

	ck_assert_str_eq(s, "hello");
	ck_assert_str_eq(t, "hel");
	ck_assert_str_eq(u, "hi");
	ck_assert_ptr_nonnull(z);
	for (int i = 0; i < 16; i++)
		ck_assert_uint_eq(z[i], 0);
	/* malloc(0) gives a pointer that can be freed, never a NULL "failure".
	 */
	ck_assert_ptr_nonnull(m);
	z = kms_realloc(z, 64);
	ck_assert_ptr_nonnull(z);
	kms_free(s);
	kms_free(t);
	kms_free(u);
	kms_free(z);
	kms_free(m);
	kms_free(NULL);
}
END_TEST

START_TEST(test_alloc_cleanse)
{
	uint8_t secret[32];
	uint8_t *heap = kms_malloc(32);

	memset(secret, 0x5a, sizeof(secret));
	kms_cleanse(secret, sizeof(secret));
	for (size_t i = 0; i < sizeof(secret); i++)
		ck_assert_uint_eq(secret[i], 0);
	kms_cleanse(NULL, 10);
	ck_assert_ptr_nonnull(heap);
	memset(heap, 0x5a, 32);
	kms_free_secret(heap, 32);
	kms_free_secret(NULL, 0);
}
END_TEST

START_TEST(test_alloc_fail_now)
{
	void *p;

	kms_alloc_fail_after(0);
	ck_assert_ptr_null(kms_malloc(8));
	ck_assert_ptr_null(kms_calloc(1, 8));
	ck_assert_ptr_null(kms_strdup("x"));
	ck_assert_ptr_null(kms_strndup("xy", 1));
	p = malloc(4);
	ck_assert_ptr_nonnull(p);
	/* A failed realloc leaves the old block alive, as realloc does. */
	ck_assert_ptr_null(kms_realloc(p, 64));
	free(p);
	kms_alloc_fail_reset();
	p = kms_malloc(8);
	ck_assert_ptr_nonnull(p);
	kms_free(p);
}
END_TEST

START_TEST(test_alloc_fail_after_n)
{
	void *a, *b, *c;

	kms_alloc_fail_after(2);
	a = kms_malloc(1);
	b = kms_calloc(1, 1);
	c = kms_malloc(1);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_ptr_null(c);
	/* It keeps failing until reset. */
	ck_assert_ptr_null(kms_malloc(1));
	kms_alloc_fail_reset();
	c = kms_malloc(1);
	ck_assert_ptr_nonnull(c);
	kms_free(a);
	kms_free(b);
	kms_free(c);
}
END_TEST

static Suite *buf_suite(void)
{
	Suite *s = suite_create("buf");
	TCase *tc;

	tc = tcase_create("reader");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_reader_u8_u32_big_endian);
	tcase_add_test(tc, test_reader_u32_high_bit);
	tcase_add_test(tc, test_reader_past_end_leaves_cursor);
	tcase_add_test(tc, test_reader_bytes_borrows);
	tcase_add_test(tc, test_reader_null_data);
	suite_add_tcase(s, tc);

	tc = tcase_create("writer");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_writer_big_endian);
	tcase_add_test(tc, test_writer_overflow_unchanged);
	tcase_add_test(tc, test_writer_null_data);
	tcase_add_test(tc, test_buf_free_zeroes);
	suite_add_tcase(s, tc);

	tc = tcase_create("error");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_errf_records);
	tcase_add_test(tc, test_errf_truncates);
	tcase_add_test(tc, test_err_prefix);
	tcase_add_test(tc, test_err_prefix_truncates);
	tcase_add_test(tc, test_strerror_names);
	tcase_add_test(tc, test_guard_macros);
	suite_add_tcase(s, tc);

	tc = tcase_create("alloc");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_alloc_basic);
	tcase_add_test(tc, test_alloc_cleanse);
	tcase_add_test(tc, test_alloc_fail_now);
	tcase_add_test(tc, test_alloc_fail_after_n);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(buf_suite());

	return kms_check_run(sr);
}
