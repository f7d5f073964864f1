/* test_rewrap_state.c - Check suite for a rewrap job's state file (tools/rewrap_state.c): round trip, atomic replacement, and every kind of file that is not a state. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../tools/rewrap_state.h"
#include "check_run.h"
#include "kms/alloc.h"

static char dir[] = "/tmp/kms-rwstate.XXXXXX";
static char path[256];

static void setup(void)
{
	strcpy(dir, "/tmp/kms-rwstate.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/state", dir);
}

static void teardown(void)
{
	char tmp[300];

	unlink(path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);
	rmdir(dir);
}

static void put(const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

static struct rewrap_state sample(void)
{
	struct rewrap_state st;
	size_t i;

	memset(&st, 0, sizeof(st));
	st.to = kms_strdup("alias/orders");
	st.lines = 12345;
	st.input_bytes = 4000000001ULL;
	for (i = 0; i < REWRAP_SHA256_LEN; i++)
		st.input_sha256[i] = (uint8_t)(i * 7 + 1);
	st.output_bytes = 5000000002ULL;
	st.errors_bytes = 77;
	st.rewrapped = 12340;
	st.failed = 5;
	return st;
}

START_TEST(round_trip)
{
	struct rewrap_state st = sample(), got;
	kms_err err = {0};
	struct stat sb;
	char tmp[300];
	int found = 0;

	ck_assert_int_eq(rewrap_state_save(path, &st, &err), KMS_OK);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0600);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	ck_assert_int_ne(access(tmp, F_OK), 0); /* renamed, not copied */
	ck_assert_int_eq(rewrap_state_load(path, &got, &found, &err), KMS_OK);
	ck_assert_int_eq(found, 1);
	ck_assert_str_eq(got.to, "alias/orders");
	ck_assert_uint_eq(got.lines, st.lines);
	ck_assert_uint_eq(got.input_bytes, st.input_bytes);
	ck_assert_mem_eq(got.input_sha256, st.input_sha256, REWRAP_SHA256_LEN);
	ck_assert_uint_eq(got.output_bytes, st.output_bytes);
	ck_assert_uint_eq(got.errors_bytes, st.errors_bytes);
	ck_assert_uint_eq(got.rewrapped, st.rewrapped);
	ck_assert_uint_eq(got.failed, st.failed);
	ck_assert_int_eq(got.complete, 0);
	rewrap_state_free(&got);
	/* A second save replaces the first. */
	st.lines++;
	st.rewrapped++;
	st.complete = 1;
	ck_assert_int_eq(rewrap_state_save(path, &st, &err), KMS_OK);
	ck_assert_int_eq(rewrap_state_load(path, &got, &found, &err), KMS_OK);
	ck_assert_uint_eq(got.lines, 12346);
	ck_assert_int_eq(got.complete, 1);
	rewrap_state_free(&got);
	rewrap_state_free(&st);
}
END_TEST

START_TEST(missing_is_not_found)
{
	struct rewrap_state got;
	kms_err err = {0};
	int found = 1;

	ck_assert_int_eq(rewrap_state_load(path, &got, &found, &err), KMS_OK);
	ck_assert_int_eq(found, 0);
	ck_assert_ptr_null(got.to);
	ck_assert_uint_eq(got.lines, 0);
}
END_TEST

/* Each a file that must be refused, with a word of the message. */
static const struct {
	const char *text;
	const char *says;
} refused[] = {
    {"", "is not a rewrap state file"},
    {"garbage", "is not a rewrap state file"},
    {"[1]", "not a JSON object"},
    {"{\"version\":2}", "version 2"},
    {"{\"version\":1}", "\"lines\""},
    {"{\"version\":1,\"to\":\"k\",\"lines\":-1,\"input_bytes\":0,\"output_bytes\":0,"
     "\"errors_bytes\":0,\"rewrapped\":0,\"failed\":0,\"complete\":0}",
     "\"lines\""},
    {"{\"version\":1,\"to\":\"k\",\"lines\":1,\"input_bytes\":0,\"output_bytes\":0,"
     "\"errors_bytes\":0,\"rewrapped\":1,\"failed\":0,\"complete\":0,\"input_sha256\":\"00\"}",
     "input_sha256"},
    {"{\"version\":1,\"to\":\"\",\"lines\":0,\"input_bytes\":0,\"output_bytes\":0,"
     "\"errors_bytes\":0,\"rewrapped\":0,\"failed\":0,\"complete\":0,\"input_sha256\":"
     "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"}",
     "\"to\""},
    {"{\"version\":1,\"to\":\"k\",\"lines\":3,\"input_bytes\":0,\"output_bytes\":0,"
     "\"errors_bytes\":0,\"rewrapped\":1,\"failed\":1,\"complete\":0,\"input_sha256\":"
     "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"}",
     "do not add up"},
    {"{\"version\":1,\"version\":1}", "is not a rewrap state file"},
};

START_TEST(refuses_what_is_not_a_state)
{
	struct rewrap_state got;
	kms_err err = {0};
	int found = 0;

	put(refused[_i].text);
	ck_assert_int_eq(rewrap_state_load(path, &got, &found, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(found, 1);
	ck_assert_msg(strstr(err.msg, refused[_i].says) != NULL, "'%s' for '%s'", err.msg,
		      refused[_i].text);
	ck_assert_ptr_null(got.to);
}
END_TEST

START_TEST(accepts_a_written_shape)
{
	struct rewrap_state got;
	kms_err err = {0};
	int found = 0;

	put("{\"version\":1,\"to\":\"k\",\"lines\":2,\"input_bytes\":10,\"output_bytes\":12,"
	    "\"errors_bytes\":0,\"rewrapped\":2,\"failed\":0,\"complete\":0,\"input_sha256\":"
	    "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"}\n");
	ck_assert_int_eq(rewrap_state_load(path, &got, &found, &err), KMS_OK);
	ck_assert_uint_eq(got.input_sha256[0], 0xe3);
	ck_assert_uint_eq(got.input_sha256[31], 0x55);
	rewrap_state_free(&got);
}
END_TEST

START_TEST(save_fails_in_a_missing_directory)
{
	struct rewrap_state st = sample();
	kms_err err = {0};
	char bad[300];

	snprintf(bad, sizeof(bad), "%s/no/such/dir/state", dir);
	ck_assert_int_eq(rewrap_state_save(bad, &st, &err), KMS_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "cannot write the state file"));
	rewrap_state_free(&st);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rewrap_state");
	TCase *tc = tcase_create("state");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, round_trip);
	tcase_add_test(tc, missing_is_not_found);
	tcase_add_loop_test(tc, refuses_what_is_not_a_state, 0,
			    (int)(sizeof(refused) / sizeof(refused[0])));
	tcase_add_test(tc, accepts_a_written_shape);
	tcase_add_test(tc, save_fails_in_a_missing_directory);
	suite_add_tcase(s, tc);
	return kms_check_run(srunner_create(s));
}
