/* test_raft_contact.c - Check suite for raft_contact.c: follower contact, the leader's majority of answers, the sole voter, and the staleness check and its message. */
#include <check.h>
#include <string.h>

#include "raft/raft_contact.h"
#include "check_run.h"

static kms_contact c;
static kms_err err;

static void setup(void)
{
	kms_contact_init(&c);
	memset(&err, 0, sizeof(err));
}

START_TEST(never_heard_is_refused_since_start)
{
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), KMS_CONTACT_NEVER);
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 1000, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_int_eq(err.code, KMS_ERR_UNAVAILABLE);
	ck_assert_str_eq(err.msg, "node 2 has not heard from a Raft leader since it started "
				  "(max_staleness 5 s): refusing crypto calls until it joins its "
				  "cluster");
}
END_TEST

START_TEST(follower_within_the_bound_and_past_it)
{
	kms_contact_heard(&c, 10000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 12500), 2500);
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 12500, &err), KMS_OK);
	/* The bound itself still serves; a millisecond past it does not. */
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 15000, &err), KMS_OK);
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 15001, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 17300, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_str_eq(err.msg, "node 2 has not heard from a Raft leader for 7.3 s "
				  "(max_staleness 5 s): refusing crypto calls until it rejoins its "
				  "cluster");
	/* Word from the leader again: served again. */
	kms_contact_heard(&c, 17350);
	ck_assert_int_eq(kms_contact_check(&c, 2, 5, 17400, &err), KMS_OK);
}
END_TEST

START_TEST(contact_never_goes_back)
{
	kms_contact_heard(&c, 5000);
	kms_contact_heard(&c, 4000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 6000), 1000);
	/* A reader whose clock was read just before the publication. */
	ck_assert_uint_eq(kms_contact_age_ms(&c, 4990), 0);
}
END_TEST

START_TEST(leader_needs_a_majority_of_three)
{
	uint64_t voters[] = {1, 2, 3};

	/* Leader 1, no answer yet in term 7: nothing to publish. */
	kms_contact_majority(&c, 1, voters, 3, 1000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), KMS_CONTACT_NEVER);
	/* One answer makes two of three, self included. */
	kms_contact_ack(&c, 7, 2, 1100);
	kms_contact_majority(&c, 1, voters, 3, 1200);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1200), 100);
	/* Node 2 goes quiet, node 3 answers: the majority is 1 and 3. */
	kms_contact_ack(&c, 7, 3, 3000);
	kms_contact_majority(&c, 1, voters, 3, 3000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 3000), 0);
	/* Both quiet: the leader ages from its last majority, 3000. */
	kms_contact_majority(&c, 1, voters, 3, 9000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 9000), 6000);
	ck_assert_int_eq(kms_contact_check(&c, 1, 5, 9000, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_ptr_nonnull(strstr(err.msg, "node 1 has not heard from a Raft leader for 6.0 s"));
}
END_TEST

START_TEST(leader_of_five_counts_the_third_newest)
{
	uint64_t voters[] = {1, 2, 3, 4, 5};

	kms_contact_ack(&c, 3, 2, 100);
	kms_contact_ack(&c, 3, 3, 500);
	kms_contact_majority(&c, 1, voters, 5, 1000);
	/* Self (1000), node 3 (500), node 2 (100): three of five by 100. */
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), 900);
	/* Then node 5 (900): self, 5 and 3 make three by 500. */
	kms_contact_ack(&c, 3, 5, 900);
	kms_contact_majority(&c, 1, voters, 5, 1000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), 500);
	/* Answers of servers that do not vote count for nothing. */
	kms_contact_init(&c);
	kms_contact_ack(&c, 3, 9, 900);
	kms_contact_ack(&c, 3, 8, 900);
	kms_contact_majority(&c, 1, voters, 5, 1000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), KMS_CONTACT_NEVER);
}
END_TEST

START_TEST(answers_of_an_earlier_term_are_forgotten)
{
	uint64_t voters[] = {1, 2, 3, 4, 5};

	kms_contact_ack(&c, 4, 2, 1000);
	kms_contact_ack(&c, 4, 3, 1000);
	/* Leading again in term 6: those answers were to another leadership. */
	kms_contact_ack(&c, 6, 4, 2000);
	kms_contact_ack(&c, 6, 4, 2100);
	ck_assert_uint_eq(c.n_acks, 1);
	kms_contact_majority(&c, 1, voters, 5, 2500);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 2500), KMS_CONTACT_NEVER);
	kms_contact_ack(&c, 6, 5, 2200);
	kms_contact_majority(&c, 1, voters, 5, 2500);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 2500), 400);
}
END_TEST

START_TEST(sole_voter_is_never_stale)
{
	uint64_t voters[] = {1};

	kms_contact_set_sole_voter(&c, 1);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000000), 0);
	ck_assert_int_eq(kms_contact_check(&c, 1, 1, 1000000, &err), KMS_OK);
	/* A one-voter majority is the leader itself. */
	kms_contact_majority(&c, 1, voters, 1, 1000);
	kms_contact_set_sole_voter(&c, 0);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1500), 500);
}
END_TEST

START_TEST(more_voters_than_tracked_publish_nothing)
{
	uint64_t voters[KMS_CONTACT_MAX_SERVERS + 1];

	for (size_t i = 0; i < KMS_CONTACT_MAX_SERVERS + 1; i++) {
		voters[i] = i + 1;
		kms_contact_ack(&c, 1, i + 1, 500);
	}
	/* The table is full at 16: the 17th answer has no room. */
	ck_assert_uint_eq(c.n_acks, KMS_CONTACT_MAX_SERVERS);
	kms_contact_majority(&c, 1, voters, KMS_CONTACT_MAX_SERVERS + 1, 1000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), KMS_CONTACT_NEVER);
	kms_contact_majority(&c, 1, voters, 0, 1000);
	ck_assert_uint_eq(kms_contact_age_ms(&c, 1000), KMS_CONTACT_NEVER);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("raft_contact");
	TCase *tc = tcase_create("contact");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, never_heard_is_refused_since_start);
	tcase_add_test(tc, follower_within_the_bound_and_past_it);
	tcase_add_test(tc, contact_never_goes_back);
	tcase_add_test(tc, leader_needs_a_majority_of_three);
	tcase_add_test(tc, leader_of_five_counts_the_third_newest);
	tcase_add_test(tc, answers_of_an_earlier_term_are_forgotten);
	tcase_add_test(tc, sole_voter_is_never_stale);
	tcase_add_test(tc, more_voters_than_tracked_publish_nothing);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
