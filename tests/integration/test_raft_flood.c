/* test_raft_flood.c - the Raft listener under a flood of idle TCP connections: a follower restarted during the flood rejoins within a few election timeouts, the leader keeps committing, and the term barely moves. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "node_fixture.h"
#include "test_net.h"
#include "check_run.h"

#define N 3
/* The measurement in the issue: 120 idle connections, 40 per Raft port. */
#define FLOOD_PER_PORT 40
#define FLOOD_FDS (N * FLOOD_PER_PORT)
/* kmsd's default Raft timeouts, as on the dev cluster the issue measured. */
#define ELECTION_MS 500
#define RAFT_ARGS "--election-timeout 500 --heartbeat-timeout 50"
/*
 * The rejoin bound: 10 election timeouts (5 s). A restart takes start-up
 * (HSM token, key ring replay, gRPC) plus one heartbeat from the leader:
 * about 1 s on a 2-core test machine, flood or not, once the listener
 * bounds pending connections. The bound leaves room for a restarted
 * follower that has to wait out a few randomized election timeouts (or a
 * raft connect retry, 1 s) on a loaded machine, and is still far from
 * what the flood cost before: about 70 s in the issue, and no rejoin
 * within 120 s when this test first ran against the old listener.
 */
#define REJOIN_BOUND_MS (10 * ELECTION_MS)
/* How long the test waits at most, to measure a rejoin that misses it. */
#define REJOIN_WAIT_MS 120000
/* With pre-vote a restarted follower raises no term; allow one election,
 * or two if the votes split, for a leader lost to load. */
#define MAX_TERM_RISE 2

static kms_test_env env;
static kms_test_node nodes[N];

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&t, NULL);
}

/* ---- writes through the leader for the whole flood ---- */

struct writer {
	kms_test_node *leader;
	atomic_int stop;
	int ok, failed;
	int64_t longest_gap_ms;
	char first_error[640];
	pthread_t th;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	int64_t last = now_ms();

	for (int i = 0; !atomic_load(&w->stop); i++) {
		kms_client *c = kms_test_client(w->leader, "admin");
		kms_rpc_status st;
		char id[48];
		int64_t t;

		snprintf(id, sizeof(id), "flood-%d", i);
		if (kms_test_create_key(c, id, NULL, &st) == 0) {
			t = now_ms();
			w->ok++;
			if (t - last > w->longest_gap_ms)
				w->longest_gap_ms = t - last;
			last = t;
		} else {
			if (w->failed++ == 0)
				snprintf(w->first_error, sizeof(w->first_error), "%s: %d %s", id,
					 st.code, st.details);
			sleep_ms(50);
		}
		kms_client_close(c);
		sleep_ms(20);
	}
	return NULL;
}

/* The highest term that any running node reports for any member. */
static uint64_t cluster_term(void)
{
	uint64_t term = 0;

	for (int n = 0; n < N; n++) {
		kms_rpc_status st;
		Kms__V1__ClusterStatusResponse *s;

		if (nodes[n].pid <= 0)
			continue;
		s = kms_test_cluster_status(&nodes[n], "admin", &st);
		if (s == NULL)
			continue;
		for (size_t i = 0; i < s->n_members; i++)
			if (s->members[i]->term > term)
				term = s->members[i]->term;
		protobuf_c_message_free_unpacked(&s->base, NULL);
	}
	ck_assert_uint_gt(term, 0);
	return term;
}

static void cluster_up(void)
{
	kms_test_cluster_up(&env, nodes, N, RAFT_ARGS);
}

static void cluster_down(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

START_TEST(follower_restarted_during_an_idle_flood_rejoins_quickly)
{
	static struct writer w;
	kms_test_flood *flood;
	kms_test_flood_stats fs;
	int ports[N];
	int l = kms_test_wait_leader(nodes, N, 10000), fo;
	uint64_t term_before, term_after;
	int64_t t0, rejoin_ms = -1;

	ck_assert_int_ge(l, 0);
	fo = (l + 1) % N;
	term_before = cluster_term();
	memset(&w, 0, sizeof(w));
	for (int i = 0; i < N; i++)
		ports[i] = nodes[i].raft_port;
	flood = kms_test_flood_start(ports, N, FLOOD_PER_PORT);
	ck_assert_msg(kms_test_flood_established(flood, 10000),
		      "the flood never opened its %d connections", FLOOD_FDS);
	w.leader = &nodes[l];
	ck_assert_int_eq(pthread_create(&w.th, NULL, writer_main, &w), 0);
	sleep_ms(1000);

	/* A follower restarts while every Raft port is flooded. */
	kms_test_node_signal(&nodes[fo], SIGTERM);
	t0 = now_ms();
	kms_test_node_spawn(&nodes[fo]);
	while (now_ms() - t0 < REJOIN_WAIT_MS) {
		if (kms_test_node_wait_healthy(&nodes[fo], 1)) {
			rejoin_ms = now_ms() - t0;
			break;
		}
	}
	/* A little more flood with the follower back, then stop. */
	sleep_ms(1000);
	atomic_store(&w.stop, 1);
	pthread_join(w.th, NULL);
	term_after = cluster_term();
	kms_test_flood_stop(flood, &fs);

	printf("raft flood: node %u restarted under %d idle connections: rejoined in %lld ms "
	       "(bound %d ms); term %llu -> %llu (+%llu); writes through the leader: %d ok, %d "
	       "failed, longest gap %lld ms; flood: %lu opened, %lu closed by the servers, "
	       "%lu refused\n",
	       nodes[fo].id, FLOOD_FDS, (long long)rejoin_ms, REJOIN_BOUND_MS,
	       (unsigned long long)term_before, (unsigned long long)term_after,
	       (unsigned long long)(term_after - term_before), w.ok, w.failed,
	       (long long)w.longest_gap_ms, fs.opened, fs.closed_by_server, fs.refused);
	fflush(stdout);
	ck_assert_msg(rejoin_ms >= 0, "node %u never became healthy again within %d s; see %s",
		      nodes[fo].id, REJOIN_WAIT_MS / 1000, nodes[fo].log);
	ck_assert_msg(rejoin_ms <= REJOIN_BOUND_MS, "node %u took %lld ms to rejoin (bound %d ms)",
		      nodes[fo].id, (long long)rejoin_ms, REJOIN_BOUND_MS);
	ck_assert_msg(w.failed == 0, "%d writes through the leader failed; first: %s", w.failed,
		      w.first_error);
	ck_assert_msg(w.ok >= 10, "only %d writes committed during the flood", w.ok);
	ck_assert_msg(term_after - term_before <= MAX_TERM_RISE, "the term rose from %llu to %llu",
		      (unsigned long long)term_before, (unsigned long long)term_after);
	/* The flood really was held against the servers. */
	ck_assert_uint_ge(fs.opened, FLOOD_FDS);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kmsd raft flood");
	TCase *tc = tcase_create("three nodes under an idle-connection flood");
	SRunner *sr;

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, follower_restarted_during_an_idle_flood_rejoins_quickly);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
