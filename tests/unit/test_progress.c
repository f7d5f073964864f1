/* test_progress.c - Check suite for the progress bar and progress lines (tools/progress.c). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tools/progress.h"
#include "check_run.h"

START_TEST(counts_and_durations)
{
	char b[32];

	progress_count(b, sizeof(b), 0);
	ck_assert_str_eq(b, "0");
	progress_count(b, sizeof(b), 999);
	ck_assert_str_eq(b, "999");
	progress_count(b, sizeof(b), 1000);
	ck_assert_str_eq(b, "1,000");
	progress_count(b, sizeof(b), 1234567);
	ck_assert_str_eq(b, "1,234,567");
	progress_count(b, sizeof(b), UINT64_MAX);
	ck_assert_str_eq(b, "18,446,744,073,709,551,615");
	progress_count(b, 4, 1234567); /* cut, still a string */
	ck_assert_str_eq(b, "1,2");
	progress_duration(b, sizeof(b), 0);
	ck_assert_str_eq(b, "0:00");
	progress_duration(b, sizeof(b), 59.6);
	ck_assert_str_eq(b, "1:00");
	progress_duration(b, sizeof(b), 3723);
	ck_assert_str_eq(b, "1:02:03");
	progress_duration(b, sizeof(b), -5);
	ck_assert_str_eq(b, "0:00");
}
END_TEST

START_TEST(rate_and_eta)
{
	struct progress_sample s = {.done = 30000, .total = 100000, .done_run = 20000,
				    .elapsed = 2.0};

	/* This run's items over this run's time: resumed lines do not count. */
	ck_assert_double_eq_tol(progress_rate(&s), 10000.0, 1e-9);
	ck_assert_double_eq_tol(progress_eta(&s), 7.0, 1e-9);
	s.total = 0;
	ck_assert_double_eq(progress_eta(&s), -1);
	s.total = 100000;
	s.elapsed = 0;
	ck_assert_double_eq(progress_rate(&s), 0);
	ck_assert_double_eq(progress_eta(&s), -1);
	s.elapsed = 1;
	s.done = 100000;
	ck_assert_double_eq(progress_eta(&s), 0);
}
END_TEST

START_TEST(bar)
{
	struct progress_sample s = {.done = 45200, .total = 100000, .failed = 3,
				    .done_run = 45200, .elapsed = 4.0};
	char b[512];
	size_t n;

	n = progress_bar(b, sizeof(b), &s, 80);
	ck_assert_uint_eq(n, strlen(b));
	ck_assert_uint_eq(n, 80);
	ck_assert_ptr_nonnull(strstr(b, "]  45.2%  45,200/100,000  11,300/s  ETA 0:05  3 failed"));
	ck_assert_int_eq(b[0], '[');
	ck_assert_ptr_nonnull(strstr(b, "=>"));
	ck_assert_ptr_null(strchr(b, '\n'));
	/* Narrow terminals get 40 columns at least; wide ones a longer bar. */
	n = progress_bar(b, sizeof(b), &s, 10);
	ck_assert_uint_ge(n, 40);
	n = progress_bar(b, sizeof(b), &s, 200);
	ck_assert_uint_eq(n, 200);
	/* Done: a full bar, 100%. */
	s.done = s.total;
	progress_bar(b, sizeof(b), &s, 80);
	ck_assert_ptr_nonnull(strstr(b, "=] 100.0%"));
	ck_assert_ptr_nonnull(strstr(b, "ETA 0:00"));
	/* Nothing done yet: no rate, no ETA. */
	s.done = s.done_run = 0;
	progress_bar(b, sizeof(b), &s, 80);
	ck_assert_ptr_nonnull(strstr(b, "[>"));
	ck_assert_ptr_nonnull(strstr(b, "0/s  ETA --:--"));
	/* A small buffer cuts, and stays a string. */
	n = progress_bar(b, 16, &s, 80);
	ck_assert_uint_eq(n, 15);
}
END_TEST

START_TEST(bar_without_total)
{
	struct progress_sample s = {.done = 1234567, .done_run = 1234567, .elapsed = 61};
	char b[256];

	progress_bar(b, sizeof(b), &s, 80);
	ck_assert_str_eq(b, "1,234,567 done  20,239/s  1:01");
}
END_TEST

START_TEST(json_line)
{
	struct progress_sample s = {.done = 500, .total = 1000, .failed = 2, .done_run = 400,
				    .elapsed = 2.0};
	char b[256];
	size_t n;

	n = progress_json(b, sizeof(b), &s);
	ck_assert_str_eq(b, "{\"progress\":{\"done\":500,\"total\":1000,\"failed\":2,"
			    "\"rate_per_second\":200.0,\"eta_seconds\":2.5,"
			    "\"elapsed_seconds\":2.0}}\n");
	ck_assert_uint_eq(n, strlen(b));
	s.total = 0;
	progress_json(b, sizeof(b), &s);
	ck_assert_ptr_nonnull(strstr(b, "\"total\":null"));
	ck_assert_ptr_nonnull(strstr(b, "\"eta_seconds\":null"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("progress");
	TCase *tc = tcase_create("progress");

	tcase_add_test(tc, counts_and_durations);
	tcase_add_test(tc, rate_and_eta);
	tcase_add_test(tc, bar);
	tcase_add_test(tc, bar_without_total);
	tcase_add_test(tc, json_line);
	suite_add_tcase(s, tc);
	return kms_check_run(srunner_create(s));
}
