/* test_staleness.c - the staleness bound: a node cut off from its cluster by the network (a follower, then the leader) refuses crypto calls once it has not heard from a leader for max_staleness, the rest keep serving, and it serves again once healed; bad max_staleness values stop start-up. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "net_mesh.h"
#include "node_fixture.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define MAX_STALENESS_S 2
#define STR_(x) #x
#define STR(x) STR_(x)
/* The test's timeouts are as test_cluster.c's; max_staleness must be
 * longer than the election timeout. */
#define RAFT_ARGS                                                                                \
	"--election-timeout 1000 --heartbeat-timeout 100 --max-staleness " STR(MAX_STALENESS_S)
/* Deadlines of the polls: generous, for a loaded two-core machine. The
 * refusal comes max_staleness after the last contact whatever the load
 * (the clock of the call decides it); the slack covers the calls. */
#define REFUSAL_DEADLINE_MS ((MAX_STALENESS_S + 10) * 1000)
#define RECOVERY_DEADLINE_MS 30000
/* How long the cut node is watched to stay refusing. */
#define STAYS_REFUSING_MS 3000
#define UNAVAILABLE 14

static kms_test_env env;
static kms_test_node nodes[N];
static kms_test_mesh *mesh;
static int mesh_ok;
static char mesh_why[200];

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&t, NULL);
}

/* Every node in a namespace of its own: node 1 bootstraps, the others join. */
static void cluster_up(void)
{
	char extra[256];

	kms_test_env_init(&env);
	mesh = kms_test_mesh_new();
	kms_test_node_init_args(&env, &nodes[0], 1, RAFT_ARGS);
	kms_test_mesh_add(mesh, &nodes[0]);
	kms_test_node_start(&nodes[0]);
	for (int i = 1; i < N; i++) {
		KMS_TEST_PATH(extra, "%s --join %s", RAFT_ARGS, nodes[0].endpoint);
		kms_test_node_init_args(&env, &nodes[i], (unsigned)i + 1, extra);
		kms_test_mesh_add(mesh, &nodes[i]);
		kms_test_node_spawn(&nodes[i]);
		kms_test_join_admit(nodes, i, nodes[i].raft_port);
	}
}

static void cluster_down(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_mesh_free(mesh);
	kms_test_env_destroy(&env);
}

/*
 * CreateKey through n, retried while n answers UNAVAILABLE for up to
 * RECOVERY_DEADLINE_MS: a leader just elected takes writes only once it has
 * committed an entry of its term, which takes seconds on a loaded machine.
 * ALREADY_EXISTS after such a retry means an earlier try was applied.
 */
static int create_key(kms_test_node *n, const char *id, kms_rpc_status *st)
{
	long until = kms_test_now_ms() + RECOVERY_DEADLINE_MS;
	int code, tries = 0;

	for (;;) {
		kms_client *c = kms_test_client(n, "admin");

		code = kms_test_create_key(c, id, KMS_TEST_APP, st);
		kms_client_close(c);
		if (code == 6 && tries > 0)
			return 0;
		if (code != 14 || kms_test_now_ms() >= until)
			return code;
		tries++;
		sleep_ms(200);
	}
}

/* GenerateDataKey of key id through c; the answer (NULL with *st). */
static Kms__V1__GenerateDataKeyResponse *gen_key(kms_client *c, const char *id,
						 kms_rpc_status *st)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	req.key_id = (char *)id;
	kms_client_call(c, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, st);
	return (Kms__V1__GenerateDataKeyResponse *)resp;
}

/* Decrypt of g's blob through c: its gRPC code (0: the right plaintext). */
static int decrypt(kms_client *c, const Kms__V1__GenerateDataKeyResponse *g, kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	int code;

	req.ciphertext_blob = g->ciphertext_blob;
	code = kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor,
			       &resp, st);
	if (resp != NULL) {
		const Kms__V1__DecryptResponse *d = (const Kms__V1__DecryptResponse *)resp;

		ck_assert(d->plaintext.len == g->plaintext.len &&
			  memcmp(d->plaintext.data, g->plaintext.data, g->plaintext.len) == 0);
		FREE(resp);
	}
	return code;
}

/* A GenerateDataKey of id on n, answered: its code (0: it worked). */
static int gen_code(kms_test_node *n, const char *id, kms_rpc_status *st)
{
	kms_client *c = kms_test_client(n, "app");
	Kms__V1__GenerateDataKeyResponse *g = gen_key(c, id, st);

	kms_client_close(c);
	if (g != NULL)
		FREE(g);
	return st->code;
}

/* Polls until GenerateDataKey of id works on n; 1 if it did in time. */
static int gen_works_within(kms_test_node *n, const char *id, long deadline_ms)
{
	kms_rpc_status st;

	for (long until = kms_test_now_ms() + deadline_ms; kms_test_now_ms() < until; sleep_ms(100))
		if (gen_code(n, id, &st) == 0)
			return 1;
	return 0;
}

/* The refusal the staleness bound gives, as the caller sees it. */
static int is_stale_refusal(const kms_rpc_status *st, unsigned node_id)
{
	char want[96];

	snprintf(want, sizeof(want), "node %u has not heard from a Raft leader for ", node_id);
	return st->code == UNAVAILABLE && strstr(st->details, want) != NULL &&
	       strstr(st->details, "(max_staleness " STR(MAX_STALENESS_S) " s): refusing crypto "
				   "calls") != NULL;
}

/*
 * Calls Decrypt of g on n back to back from the moment of the cut until the
 * first refusal; returns how long after cut_ms it came (fails the test if
 * not within REFUSAL_DEADLINE_MS, or if anything else went wrong).
 */
static long first_refusal_ms(kms_test_node *n, const Kms__V1__GenerateDataKeyResponse *g,
			     long cut_ms)
{
	kms_client *c = kms_test_client_with(n, "app", NULL, 2000);
	kms_rpc_status st;
	long t;

	for (;;) {
		int code = decrypt(c, g, &st);

		t = kms_test_now_ms();
		if (is_stale_refusal(&st, n->id))
			break;
		ck_assert_msg(code == 0, "node %u: want its plaintext or the staleness refusal, got "
			      "%d: %s", n->id, code, st.details);
		ck_assert_msg(t - cut_ms < REFUSAL_DEADLINE_MS,
			      "node %u still serves %ld ms after it was cut off; see %s", n->id,
			      t - cut_ms, n->log);
	}
	kms_client_close(c);
	return t - cut_ms;
}

/* For STAYS_REFUSING_MS, every crypto call on n is refused by the bound;
 * GenerateDataKey of a key n has never seen too (not PERMISSION_DENIED). */
static void stays_refusing(kms_test_node *n, const Kms__V1__GenerateDataKeyResponse *g,
			   const char *unseen_key)
{
	kms_client *c = kms_test_client_with(n, "app", NULL, 2000);
	kms_rpc_status st;
	int calls = 0;

	for (long until = kms_test_now_ms() + STAYS_REFUSING_MS; kms_test_now_ms() < until; sleep_ms(100)) {
		Kms__V1__GenerateDataKeyResponse *fresh;

		decrypt(c, g, &st);
		ck_assert_msg(is_stale_refusal(&st, n->id), "Decrypt on the cut node %u: %d %s",
			      n->id, st.code, st.details);
		fresh = gen_key(c, unseen_key, &st);
		ck_assert_ptr_null(fresh);
		ck_assert_msg(is_stale_refusal(&st, n->id), "GenerateDataKey on the cut node %u: "
			      "%d %s", n->id, st.code, st.details);
		calls++;
	}
	ck_assert_int_gt(calls, 0);
	kms_client_close(c);
}

/* Health/Check of n: 1 for SERVING, 0 for NOT_SERVING; fails on an error. */
static int health_serving(kms_test_node *n)
{
	kms_client *c = kms_test_client_with(n, "app", NULL, 2000);
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	int serving;

	ck_assert_msg(kms_client_call(c, "/grpc.health.v1.Health/Check", &req.base,
				      &grpc__health__v1__health_check_response__descriptor, &resp,
				      &st) == 0,
		      "Health/Check on node %u: %s", n->id, st.details);
	serving = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
		  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
	FREE(resp);
	kms_client_close(c);
	return serving;
}

/* What n says, in its own ClusterStatus, of why it does not serve ("": it
 * serves); into out. */
static void own_reason(kms_test_node *n, char *out, size_t cap)
{
	kms_rpc_status st;
	Kms__V1__ClusterStatusResponse *s = kms_test_cluster_status(n, "admin", &st);

	ck_assert_msg(s != NULL, "ClusterStatus on node %u: %s", n->id, st.details);
	out[0] = '\0';
	for (size_t i = 0; i < s->n_members; i++)
		if (s->members[i]->id == n->id)
			snprintf(out, cap, "%s", s->members[i]->not_serving_reason);
	FREE(s);
}

/* The leader the nodes other than skip agree on (its index), or -1. */
static int leader_among_others(int skip, long deadline_ms)
{
	for (long until = kms_test_now_ms() + deadline_ms; kms_test_now_ms() < until; sleep_ms(200)) {
		for (int i = 0; i < N; i++) {
			kms_rpc_status st;
			Kms__V1__ClusterStatusResponse *s;
			int found = -1;

			if (i == skip)
				continue;
			s = kms_test_cluster_status(&nodes[i], "admin", &st);
			if (s == NULL)
				continue;
			for (int j = 0; j < N; j++)
				if (j != skip && s->leader_id == nodes[j].id)
					found = j;
			FREE(s);
			if (found >= 0)
				return found;
		}
	}
	return -1;
}

/* Decrypt of g on n, with a client of its own: its gRPC code. */
static int decrypt_on(kms_test_node *n, const Kms__V1__GenerateDataKeyResponse *g)
{
	kms_client *c = kms_test_client(n, "app");
	kms_rpc_status st;
	int code = decrypt(c, g, &st);

	kms_client_close(c);
	return code;
}

/* A data key of key id made on n. */
static Kms__V1__GenerateDataKeyResponse *data_key_on(kms_test_node *n, const char *id)
{
	kms_client *c = kms_test_client(n, "app");
	kms_rpc_status st;
	Kms__V1__GenerateDataKeyResponse *g = gen_key(c, id, &st);

	kms_client_close(c);
	ck_assert_msg(g != NULL, "GenerateDataKey of %s on node %u: %s", id, n->id, st.details);
	return g;
}

/*
 * Cuts nodes[cut] off, and returns once it refuses crypto calls (the time
 * it took is printed: docs/CONSISTENCY.md), says so in its log and is
 * NOT_SERVING. g is a data key it served before.
 */
static void cut_until_refused(int cut, const char *role, const Kms__V1__GenerateDataKeyResponse *g)
{
	kms_test_node *n = &nodes[cut];
	char reason[512];
	long took;

	kms_test_mesh_cut(mesh, n->id);
	took = first_refusal_ms(n, g, kms_test_now_ms());
	printf("staleness: %s node %u refused crypto calls %ld ms after it was cut off "
	       "(max_staleness %d s)\n", role, n->id, took, MAX_STALENESS_S);
	fflush(stdout);
	ck_assert(kms_test_wait_log(n, "has not heard from a Raft leader for", 10));
	ck_assert_msg(!health_serving(n), "node %u refuses crypto calls but says SERVING", n->id);
	/* The health protocol has no reason; ClusterStatus has: no leader
	 * known by now (a candidate, or a leader that stepped down), or none
	 * heard from within max_staleness. */
	own_reason(n, reason, sizeof(reason));
	ck_assert_msg(strstr(reason, "no Raft leader known") != NULL ||
			      strstr(reason, "has not heard from a Raft leader for") != NULL,
		      "node %u's own status gives no staleness reason: '%s'", n->id, reason);
}

/* Every node but nodes[cut] serves key id (made after the cut) and g. */
static void others_serve(int cut, const char *id, const Kms__V1__GenerateDataKeyResponse *g)
{
	for (int i = 0; i < N; i++) {
		if (i == cut)
			continue;
		ck_assert_msg(gen_works_within(&nodes[i], id, RECOVERY_DEADLINE_MS),
			      "node %u never served %s", nodes[i].id, id);
		ck_assert_int_eq(decrypt_on(&nodes[i], g), 0);
	}
}

/* Heals nodes[cut]: it catches up and serves key id and g again. */
static void heal_until_served(int cut, const char *id, const Kms__V1__GenerateDataKeyResponse *g)
{
	kms_test_node *n = &nodes[cut];
	char reason[512];

	kms_test_mesh_heal(mesh, n->id);
	ck_assert_msg(gen_works_within(n, id, RECOVERY_DEADLINE_MS),
		      "healed node %u never served %s, made while it was cut off; see %s", n->id,
		      id, n->log);
	ck_assert_int_eq(decrypt_on(n, g), 0);
	ck_assert(kms_test_wait_log(n, "in touch with a Raft leader", 10));
	ck_assert(health_serving(n));
	own_reason(n, reason, sizeof(reason));
	ck_assert_msg(reason[0] == '\0', "node %u serves but says: %s", n->id, reason);
}

START_TEST(cut_follower_refuses_crypto_calls_after_max_staleness)
{
	int l = kms_test_wait_leader(nodes, N, 10000), f;
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;

	ck_assert_int_ge(l, 0);
	f = (l + 1) % N;
	ck_assert_msg(create_key(&nodes[l], "before-cut", &st) == 0, "%s", st.details);
	for (int i = 0; i < N; i++)
		ck_assert_msg(gen_works_within(&nodes[i], "before-cut", RECOVERY_DEADLINE_MS),
			      "node %d never served the new key", i + 1);
	g = data_key_on(&nodes[f], "before-cut");

	cut_until_refused(f, "follower", g);
	/* The majority keeps serving, and keeps writing. */
	ck_assert_msg(create_key(&nodes[l], "after-cut", &st) == 0, "%s", st.details);
	others_serve(f, "after-cut", g);
	stays_refusing(&nodes[f], g, "after-cut");
	heal_until_served(f, "after-cut", g);
	FREE(g);
}
END_TEST

START_TEST(cut_leader_stops_serving_and_the_others_take_over)
{
	int l = kms_test_wait_leader(nodes, N, 10000), nl;
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;

	ck_assert_int_ge(l, 0);
	g = data_key_on(&nodes[l], "before-cut");

	cut_until_refused(l, "leader", g);
	/* The other two elect a leader among themselves, write and serve. */
	nl = leader_among_others(l, RECOVERY_DEADLINE_MS);
	ck_assert_msg(nl >= 0, "no new leader among the nodes left");
	ck_assert_msg(create_key(&nodes[nl], "after-leader-cut", &st) == 0, "%s", st.details);
	others_serve(l, "after-leader-cut", g);
	stays_refusing(&nodes[l], g, "after-leader-cut");
	heal_until_served(l, "after-leader-cut", g);
	FREE(g);
}
END_TEST

/* --- the bad-input twin: max_staleness values kmsd refuses to start with --- */

static kms_test_env cfg_env;
static kms_test_node cfg_node;

static void cfg_up(void)
{
	kms_test_env_init(&cfg_env);
	kms_test_node_init(&cfg_env, &cfg_node, 1);
}

static void cfg_down(void)
{
	kms_test_env_destroy(&cfg_env);
}

/* kmsd with node-config's file, [raft] max_staleness set to value (and the
 * election timeout to election_ms), exits 1 and logs message. */
static void refused_at_start(const char *value, unsigned election_ms, const char *message)
{
	char conf[PATH_MAX];

	KMS_TEST_PATH(conf, "%s/bad.conf", cfg_node.dir);
	kms_test_sh("sed -e 's/^\\[raft\\]$/[raft]\\nmax_staleness = %s\\nelection_timeout_ms = %u/' "
		    "'%s' > '%s' && chmod 644 '%s'",
		    value, election_ms, cfg_node.conf, conf, conf);
	kms_test_sh(": > '%s'", cfg_node.log);
	ck_assert_int_eq(kms_test_node_run_expect_exit(&cfg_node, conf), 1);
	ck_assert_msg(kms_test_file_contains(cfg_node.log, message), "log lacks \"%s\"; see %s",
		      message, cfg_node.log);
}

START_TEST(bad_max_staleness_stops_start_up)
{
	refused_at_start("0", 500, "'max_staleness' in [raft] must be a whole number from 1 to "
				   "3600, not '0'");
	refused_at_start("-5", 500, "'max_staleness' in [raft] must be a whole number from 1 to "
				    "3600, not '-5'");
	refused_at_start("3601", 500, "'max_staleness' in [raft] must be a whole number from 1 "
				      "to 3600, not '3601'");
	refused_at_start("five", 500, "'max_staleness' in [raft] must be a whole number from 1 "
				      "to 3600, not 'five'");
	refused_at_start("2", 2000, "'max_staleness' (2 s) must be longer than "
				    "'election_timeout_ms' (2000 ms) in [raft]");
	/* The same file with a good value starts (and is stopped at once). */
	KMS_TEST_PATH(cfg_node.conf, "%s/bad.conf", cfg_node.dir);
	kms_test_sh("sed -i -e 's/^max_staleness = 2$/max_staleness = 3/' '%s'", cfg_node.conf);
	kms_test_node_start(&cfg_node);
	kms_test_node_signal(&cfg_node, SIGTERM);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kmsd staleness bound");
	TCase *cfg = tcase_create("configuration");
	SRunner *sr;
	int rc;

	tcase_add_checked_fixture(cfg, cfg_up, cfg_down);
	tcase_set_timeout(cfg, 120);
	tcase_add_test(cfg, bad_max_staleness_stops_start_up);
	suite_add_tcase(s, cfg);
	mesh_ok = kms_test_mesh_supported(mesh_why, sizeof(mesh_why));
	if (mesh_ok) {
		TCase *cut = tcase_create("cut off by the network");

		tcase_add_unchecked_fixture(cut, cluster_up, cluster_down);
		tcase_set_timeout(cut, 600);
		tcase_add_test(cut, cut_follower_refuses_crypto_calls_after_max_staleness);
		tcase_add_test(cut, cut_leader_stops_serving_and_the_others_take_over);
		suite_add_tcase(s, cut);
	}
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	rc = kms_check_run(sr);
	/* automake's SKIP: the cut cases need network namespaces. */
	if (rc == EXIT_SUCCESS && !mesh_ok) {
		fprintf(stderr, "test_staleness: SKIP the network-cut cases: %s\n", mesh_why);
		return 77;
	}
	return rc;
}
