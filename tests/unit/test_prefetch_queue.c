/* test_prefetch_queue.c - Check suite for the prefetch queue: order, one entry per key with the newest version, the bound, and ids too long to queue. */
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "node/prefetch_queue.h"
#include "check_run.h"

static kms_prefetch_queue q;

static void setup(void)
{
	kms_prefetch_queue_init(&q);
}

START_TEST(test_fifo)
{
	kms_prefetch_item it;

	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 0);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "a", 2, 100 + 2), KMS_PREFETCH_QUEUED);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "b", 7, 100 + 7), KMS_PREFETCH_QUEUED);
	ck_assert_uint_eq(kms_prefetch_queue_len(&q), 2);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "a");
	ck_assert_uint_eq(it.version, 2);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "b");
	ck_assert_uint_eq(it.version, 7);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 0);
	ck_assert_uint_eq(kms_prefetch_queue_len(&q), 0);
}
END_TEST

/* A key rotated again while queued keeps its place with the newer version;
 * an older version never replaces a newer one. */
START_TEST(test_coalesces_per_key)
{
	kms_prefetch_item it;

	ck_assert_int_eq(kms_prefetch_queue_push(&q, "a", 2, 100 + 2), KMS_PREFETCH_QUEUED);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "b", 5, 100 + 5), KMS_PREFETCH_QUEUED);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "a", 3, 100 + 3), KMS_PREFETCH_COALESCED);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "a", 1, 100 + 1), KMS_PREFETCH_COALESCED);
	/* A prefix of a queued id is another key. */
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "ab", 1, 100 + 1), KMS_PREFETCH_QUEUED);
	ck_assert_uint_eq(kms_prefetch_queue_len(&q), 3);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "a");
	ck_assert_uint_eq(it.version, 3);
	ck_assert_int_eq(it.rotated_at_unix, 103);
	/* Once taken, the key queues again. */
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "a", 4, 100 + 4), KMS_PREFETCH_QUEUED);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "b");
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "ab");
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "a");
	ck_assert_uint_eq(it.version, 4);
}
END_TEST

/* Full: new keys are dropped, queued ones still coalesce, and the ring
 * wraps around once room is made. */
START_TEST(test_bounded)
{
	kms_prefetch_item it;
	char id[32];

	for (int i = 0; i < KMS_PREFETCH_QUEUE_MAX; i++) {
		snprintf(id, sizeof(id), "k%d", i);
		ck_assert_int_eq(kms_prefetch_queue_push(&q, id, 2, 100 + 2), KMS_PREFETCH_QUEUED);
	}
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "late", 2, 100 + 2), KMS_PREFETCH_DROPPED);
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "k5", 3, 100 + 3), KMS_PREFETCH_COALESCED);
	ck_assert_uint_eq(kms_prefetch_queue_len(&q), KMS_PREFETCH_QUEUE_MAX);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "k0");
	ck_assert_int_eq(kms_prefetch_queue_push(&q, "late", 2, 100 + 2), KMS_PREFETCH_QUEUED);
	for (int i = 1; i < KMS_PREFETCH_QUEUE_MAX; i++) {
		snprintf(id, sizeof(id), "k%d", i);
		ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
		ck_assert_str_eq(it.key_id, id);
		ck_assert_uint_eq(it.version, i == 5 ? 3 : 2);
	}
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, "late");
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 0);
}
END_TEST

/* An id longer than any key id is never queued, nor cut short into
 * another key's. */
START_TEST(test_long_id_dropped)
{
	char id[KMS_KEY_ID_MAX + 2];
	kms_prefetch_item it;

	memset(id, 'x', sizeof(id) - 1);
	id[sizeof(id) - 1] = '\0';
	ck_assert_int_eq(kms_prefetch_queue_push(&q, id, 2, 100 + 2), KMS_PREFETCH_DROPPED);
	ck_assert_uint_eq(kms_prefetch_queue_len(&q), 0);
	id[KMS_KEY_ID_MAX] = '\0';
	ck_assert_int_eq(kms_prefetch_queue_push(&q, id, 2, 100 + 2), KMS_PREFETCH_QUEUED);
	ck_assert_int_eq(kms_prefetch_queue_pop(&q, &it), 1);
	ck_assert_str_eq(it.key_id, id);
}
END_TEST

static Suite *queue_suite(void)
{
	Suite *s = suite_create("prefetch queue");
	TCase *tc = tcase_create("queue");

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_fifo);
	tcase_add_test(tc, test_coalesces_per_key);
	tcase_add_test(tc, test_bounded);
	tcase_add_test(tc, test_long_id_dropped);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(queue_suite()));
}
