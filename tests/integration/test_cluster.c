/* test_cluster.c - three real kmsd processes joined into one Raft cluster, through failures: forwarding (concurrent, to a paused or killed leader), leader loss, paused and lost nodes, restarts, a foreign token, removal. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "test_pki.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define OP "/kms.v1.Operator/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
/* Short Raft timeouts keep failover tests quick; snapshots every 64
 * entries make a paused node catch up through a snapshot install. */
#define RAFT_ARGS "--election-timeout 1000 --heartbeat-timeout 100 --snapshot-threshold 64 " \
		  "--snapshot-trailing 16"

static kms_test_env env;
static kms_test_node nodes[N + 2]; /* [3]: the foreign-token node; [4]: a late joiner */

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&t, NULL);
}

/* CreateKey through node n as the administrator, granting the app. */
static int create_key(kms_test_node *n, const char *id, kms_rpc_status *st)
{
	kms_client *c = kms_test_client(n, "admin");
	int code = kms_test_create_key(c, id, KMS_TEST_APP, st);

	kms_client_close(c);
	return code;
}

static int key_exists(kms_test_node *n, const char *id)
{
	kms_client *c = kms_test_client(n, "admin");
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;

	req.key_id = (char *)id;
	kms_client_call(c, KM "DescribeKey", &req.base, &kms__v1__describe_key_response__descriptor,
			&resp, &st);
	kms_client_close(c);
	if (resp != NULL)
		FREE(resp);
	return st.code == 0;
}

/* Replication to followers takes a round trip or two: poll briefly. */
static int key_appears(kms_test_node *n, const char *id, int timeout_ms)
{
	for (int t = 0; t < timeout_ms; t += 100) {
		if (key_exists(n, id))
			return 1;
		sleep_ms(100);
	}
	return 0;
}

static Kms__V1__GenerateDataKeyResponse *gen_key(kms_test_node *n, const char *id,
						 kms_rpc_status *st)
{
	kms_client *c = kms_test_client(n, "app");
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	req.key_id = (char *)id;
	kms_client_call(c, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, st);
	kms_client_close(c);
	return (Kms__V1__GenerateDataKeyResponse *)resp;
}

static int decrypts_to(kms_test_node *n, const Kms__V1__GenerateDataKeyResponse *g,
		       kms_rpc_status *st)
{
	kms_client *c = kms_test_client(n, "app");
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	int ok;

	req.ciphertext_blob = g->ciphertext_blob;
	kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor, &resp,
			st);
	kms_client_close(c);
	ok = resp != NULL &&
	     ((Kms__V1__DecryptResponse *)resp)->plaintext.len == g->plaintext.len &&
	     memcmp(((Kms__V1__DecryptResponse *)resp)->plaintext.data, g->plaintext.data,
		    g->plaintext.len) == 0;
	if (resp != NULL)
		FREE(resp);
	return ok;
}

static void cluster_up(void)
{
	kms_test_cluster_up(&env, nodes, N, RAFT_ARGS);
}

static void cluster_down(void)
{
	for (int i = 0; i <= N + 1; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

/* --- the tests, in order: each leaves a healthy three-node cluster --- */

START_TEST(cluster_forms_with_three_voters)
{
	for (int i = 0; i < N; i++) {
		kms_rpc_status st;
		Kms__V1__ClusterStatusResponse *s = kms_test_cluster_status(&nodes[i], "admin", &st);
		int leaders = 0;

		ck_assert_msg(s != NULL, "ClusterStatus on node %d: %s", i + 1, st.details);
		ck_assert_uint_eq(s->n_members, N);
		ck_assert_uint_ne(s->leader_id, 0);
		for (size_t j = 0; j < s->n_members; j++) {
			ck_assert_str_eq(s->members[j]->raft_role, "voter");
			ck_assert_msg(strcmp(s->members[j]->role, "unreachable") != 0, "%s",
				      s->members[j]->error);
			leaders += strcmp(s->members[j]->role, "leader") == 0;
		}
		ck_assert_int_eq(leaders, 1);
		FREE(s);
	}
}
END_TEST

START_TEST(write_on_a_follower_is_forwarded_and_readable_there)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N;
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;

	ck_assert_int_ge(l, 0);
	ck_assert_msg(create_key(&nodes[f], "via-follower", &st) == 0, "%s", st.details);
	/* The follower that acknowledged it serves it at once. */
	g = gen_key(&nodes[f], "via-follower", &st);
	ck_assert_msg(g != NULL, "GenerateDataKey on the acknowledging follower: %s", st.details);
	for (int i = 0; i < N; i++) {
		ck_assert_msg(key_appears(&nodes[i], "via-follower", 3000), "node %d lacks the key",
			      i + 1);
		ck_assert_msg(decrypts_to(&nodes[i], g, &st), "node %d: %s", i + 1, st.details);
	}
	FREE(g);
}
END_TEST

/* --- writes through a follower: forwarded with no worker waiting --- */

/* One CreateKey (a policy granting nobody) as the administrator, started
 * with others. */
struct racer {
	kms_test_node *node;
	pthread_barrier_t *ready, *start;
	int timeout_ms;
	char id[32];
	int code;
	char details[512];
	char answered_id[64]; /* the key id the response's metadata names */
};

static void *race_create(void *arg)
{
	struct racer *r = arg;
	kms_client *c = kms_test_client_with(r->node, "admin", NULL, r->timeout_ms);
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__CreateKeyResponse *resp = NULL;
	kms_rpc_status st;

	req.key_id = r->id;
	req.policy = &policy;
	/* Connected (TLS handshake done) before the start, so that every
	 * call reaches its handler at once, even on a slow machine. */
	kms_client_call(c, KM "DescribeKey", &req.base, &kms__v1__describe_key_response__descriptor,
			(ProtobufCMessage **)&resp, &st);
	if (resp != NULL)
		FREE(resp);
	resp = NULL;
	pthread_barrier_wait(r->ready);
	pthread_barrier_wait(r->start);
	kms_client_call(c, KM "CreateKey", &req.base, &kms__v1__create_key_response__descriptor,
			(ProtobufCMessage **)&resp, &st);
	r->code = st.code;
	snprintf(r->details, sizeof(r->details), "%s", st.details);
	if (resp != NULL && resp->key != NULL)
		snprintf(r->answered_id, sizeof(r->answered_id), "%s", resp->key->key_id);
	if (resp != NULL)
		FREE(resp);
	kms_client_close(c);
	return NULL;
}

/* Runs n racers at once on node, each with timeout_ms; racer i writes the
 * key "<prefix>-<i / per_id>". go (if set) runs once all are connected,
 * just before they start. */
static void race(struct racer *r, int n, kms_test_node *node, int timeout_ms, const char *prefix,
		 int per_id, void (*go)(void))
{
	pthread_barrier_t ready, start;
	pthread_t t[128];

	ck_assert_int_le(n, 128);
	pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
	pthread_barrier_init(&start, NULL, (unsigned)n + 1);
	for (int i = 0; i < n; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].node = node;
		r[i].ready = &ready;
		r[i].start = &start;
		r[i].timeout_ms = timeout_ms;
		snprintf(r[i].id, sizeof(r[i].id), "%s-%d", prefix, i / per_id);
		ck_assert_int_eq(pthread_create(&t[i], NULL, race_create, &r[i]), 0);
	}
	pthread_barrier_wait(&ready);
	if (go != NULL)
		go();
	pthread_barrier_wait(&start);
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&ready);
	pthread_barrier_destroy(&start);
}

/*
 * 64 CreateKey calls at once through one follower, two for each of 32 new
 * ids: the follower forwards them in batches, and each answer must reach
 * its own caller. Per id, exactly one call creates the key (and its answer
 * names it) and the other is told it exists; every key is on the leader
 * and readable at once on the follower that answered.
 */
START_TEST(concurrent_writes_through_a_follower_are_committed_once)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N;
	static struct racer r[64];

	ck_assert_int_ge(l, 0);
	race(r, 64, &nodes[f], 20000, "race", 2, NULL);
	for (int i = 0; i < 64; i += 2) {
		struct racer *ok = r[i].code == 0 ? &r[i] : &r[i + 1];
		struct racer *dup = ok == &r[i] ? &r[i + 1] : &r[i];
		char want[96];

		ck_assert_msg(ok->code == 0, "%s: neither call created it: %d %s / %d %s", r[i].id,
			      r[i].code, r[i].details, r[i + 1].code, r[i + 1].details);
		ck_assert_str_eq(ok->answered_id, ok->id);
		ck_assert_msg(dup->code == 6, "%s: the second call got %d: %s", dup->id, dup->code,
			      dup->details);
		snprintf(want, sizeof(want), "key '%s' already exists", dup->id);
		ck_assert_msg(strstr(dup->details, want) != NULL, "%s", dup->details);
		ck_assert_msg(key_exists(&nodes[f], ok->id), "%s not readable on the follower",
			      ok->id);
		ck_assert_msg(key_appears(&nodes[l], ok->id, 3000), "%s not on the leader", ok->id);
	}
}
END_TEST

static struct {
	struct racer *r;
	kms_test_node *node;
	pid_t leader;
	atomic_int paused;
} paused_race;

static void pause_leader(void)
{
	kill(paused_race.leader, SIGSTOP);
	atomic_store(&paused_race.paused, 1);
}

static void *race_paused(void *arg)
{
	(void)arg;
	race(paused_race.r, 16, paused_race.node, 2000, "paused", 1, pause_leader);
	return NULL;
}

/*
 * While the leader is paused, writes through a follower wait for it
 * without holding the follower's workers (4): a read on the follower is
 * served at once, and each write ends at its caller's deadline, which the
 * follower answers (DEADLINE_EXCEEDED) and logs.
 */
START_TEST(writes_to_a_paused_leader_hold_no_worker_and_end_at_their_deadline)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N, expired = 0;
	static struct racer r[16];
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;
	pthread_t t;
	kms_client *c;
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	ck_assert_int_ge(l, 0);
	g = gen_key(&nodes[f], "via-follower", &st);
	ck_assert_msg(g != NULL, "%s", st.details);
	c = kms_test_client_with(&nodes[f], "app", NULL, 1500);
	/* 16 writes (four times the workers) with a 2 s deadline, at once,
	 * just after the leader is paused. */
	paused_race.r = r;
	paused_race.node = &nodes[f];
	paused_race.leader = nodes[l].pid;
	atomic_store(&paused_race.paused, 0);
	ck_assert_int_eq(pthread_create(&t, NULL, race_paused, &paused_race), 0);
	while (!atomic_load(&paused_race.paused))
		sleep_ms(10);
	sleep_ms(400);
	/* The workers are free: a Decrypt on the follower is served in time. */
	req.ciphertext_blob = g->ciphertext_blob;
	kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor, &resp,
			&st);
	ck_assert_msg(st.code == 0, "Decrypt on the follower while writes wait: %d %s", st.code,
		      st.details);
	FREE(resp);
	pthread_join(t, NULL);
	kill(nodes[l].pid, SIGCONT);
	for (int i = 0; i < 16; i++) {
		/* A write whose handler ran once the follower gave up on the
		 * paused leader (a slow machine, a sanitizer build) meets the
		 * election (UNAVAILABLE, no leader known) or the new leader. */
		ck_assert_msg(r[i].code == 4 || r[i].code == 0 ||
				      (r[i].code == 14 && strstr(r[i].details, "leader") != NULL),
			      "%s: %d %s", r[i].id, r[i].code, r[i].details);
		expired += r[i].code == 4;
	}
	ck_assert_int_gt(expired, 0);
	ck_assert_msg(kms_test_wait_log(&nodes[f], "answered DEADLINE_EXCEEDED", 5),
		      "the follower did not answer at the deadline; see %s", nodes[f].log);
	kms_client_close(c);
	FREE(g);
	ck_assert_int_ge(kms_test_wait_leader(nodes, N, 10000), 0);
	for (int i = 0; i < N; i++)
		ck_assert_msg(kms_test_node_wait_healthy(&nodes[i], 30), "node %d; see %s", i + 1,
			      nodes[i].log);
}
END_TEST

/* A CreateKey command for the administrator, with stand-in key material. */
static void create_cmd(const char *id, const char *principal, kms_buf *cmd)
{
	static const uint8_t wrapped[40] = {1};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_create_key(id, "", NULL, principal, 1, wrapped,
						    sizeof(wrapped), cmd, &err),
			 KMS_OK);
}

/* Forward or ForwardBatch through n as "who", with n_cmds commands for
 * principal; the response (NULL with *st on a refused call). */
static ProtobufCMessage *forward_raw(kms_test_node *n, const char *who, int batch,
				     kms_buf *cmds, size_t n_cmds, const char *principal,
				     kms_rpc_status *st)
{
	Kms__V1__ForwardRequest w[70], *wp[70];
	Kms__V1__ForwardBatchRequest breq = KMS__V1__FORWARD_BATCH_REQUEST__INIT;
	kms_client *c = kms_test_client(n, who);
	ProtobufCMessage *resp = NULL;

	ck_assert_uint_le(n_cmds, 70);
	for (size_t i = 0; i < n_cmds; i++) {
		kms__v1__forward_request__init(&w[i]);
		w[i].command.data = cmds[i].data;
		w[i].command.len = cmds[i].len;
		w[i].principal = (char *)principal;
		wp[i] = &w[i];
	}
	breq.writes = wp;
	breq.n_writes = n_cmds;
	if (batch)
		kms_client_call(c, "/kms.v1.Internal/ForwardBatch", &breq.base,
				&kms__v1__forward_batch_response__descriptor, &resp, st);
	else
		kms_client_call(c, "/kms.v1.Internal/Forward", &w[0].base,
				&kms__v1__forward_response__descriptor, &resp, st);
	kms_client_close(c);
	return resp;
}

/*
 * What makes a follower's retry safe: a member that does not lead submits
 * nothing it is forwarded and says so, naming the leader. On the leader a
 * batch decides each write on its own, in order; malformed batches are
 * refused whole.
 */
START_TEST(forwards_are_submitted_only_by_the_leader_and_answered_one_by_one)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N;
	char who[32], uri[128], ca[PATH_MAX], ca_key[PATH_MAX], pem[PATH_MAX], key[PATH_MAX];
	kms_test_san san = {KMS_TEST_SAN_URI, uri, 0};
	Kms__V1__ForwardResponse *one;
	Kms__V1__ForwardBatchResponse *many;
	kms_buf cmds[65];
	kms_rpc_status st;

	ck_assert_int_ge(l, 0);
	/* A certificate of the node CA for a member's id: a member's call. */
	snprintf(who, sizeof(who), "node%u-copy", nodes[f].id);
	snprintf(uri, sizeof(uri), KMS_TEST_TD "/kmsd/node/%u", nodes[f].id);
	KMS_TEST_PATH(ca, "%s/node-ca.pem", env.pki);
	KMS_TEST_PATH(ca_key, "%s/node-ca.key", env.pki);
	KMS_TEST_PATH(pem, "%s/%s.pem", env.pki, who);
	KMS_TEST_PATH(key, "%s/%s.key", env.pki, who);
	kms_test_issue_cert(ca, ca_key, pem, key, &san, 1, 1);
	memset(cmds, 0, sizeof(cmds));
	create_cmd("fwd-not-leader-0", KMS_TEST_ADMIN, &cmds[0]);
	create_cmd("fwd-not-leader-1", KMS_TEST_ADMIN, &cmds[1]);

	one = (Kms__V1__ForwardResponse *)forward_raw(&nodes[f], who, 0, cmds, 1, KMS_TEST_ADMIN,
						     &st);
	ck_assert_msg(one != NULL, "%s", st.details);
	ck_assert_int_eq(one->status, KMS_ERR_UNAVAILABLE);
	ck_assert(one->not_leader);
	ck_assert_uint_eq(one->leader_id, nodes[l].id);
	ck_assert_msg(strstr(one->message, "no longer the Raft leader") != NULL, "%s",
		      one->message);
	FREE(one);
	many = (Kms__V1__ForwardBatchResponse *)forward_raw(&nodes[f], who, 1, cmds, 2,
							    KMS_TEST_ADMIN, &st);
	ck_assert_msg(many != NULL, "%s", st.details);
	ck_assert_uint_eq(many->n_results, 2);
	for (size_t i = 0; i < 2; i++) {
		ck_assert(many->results[i]->not_leader);
		ck_assert_uint_eq(many->results[i]->leader_id, nodes[l].id);
	}
	FREE(many);
	sleep_ms(300);
	ck_assert(!key_exists(&nodes[l], "fwd-not-leader-0"));
	ck_assert(!key_exists(&nodes[l], "fwd-not-leader-1"));

	/* On the leader: one write passes, the next (made for someone else
	 * than the principal named) is refused, the third passes. */
	kms_buf_free(&cmds[1]);
	create_cmd("fwd-batch-other", KMS_TEST_APP, &cmds[1]);
	create_cmd("fwd-batch-2", KMS_TEST_ADMIN, &cmds[2]);
	many = (Kms__V1__ForwardBatchResponse *)forward_raw(&nodes[l], who, 1, cmds, 3,
							    KMS_TEST_ADMIN, &st);
	ck_assert_msg(many != NULL, "%s", st.details);
	ck_assert_uint_eq(many->n_results, 3);
	ck_assert_msg(many->results[0]->status == KMS_OK, "%s", many->results[0]->message);
	ck_assert_int_eq(many->results[1]->status, KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(many->results[1]->message, "was not made for") != NULL, "%s",
		      many->results[1]->message);
	ck_assert_msg(many->results[2]->status == KMS_OK, "%s", many->results[2]->message);
	ck_assert_uint_gt(many->results[2]->index, many->results[0]->index);
	ck_assert(!many->results[0]->not_leader);
	FREE(many);
	ck_assert(key_exists(&nodes[l], "fwd-not-leader-0"));
	ck_assert(!key_exists(&nodes[l], "fwd-batch-other"));
	ck_assert(key_exists(&nodes[l], "fwd-batch-2"));

	/* Malformed batches: none, or more than 64 writes. */
	ck_assert_ptr_null(forward_raw(&nodes[l], who, 1, cmds, 0, KMS_TEST_ADMIN, &st));
	ck_assert_int_eq(st.code, 3);
	ck_assert_msg(strstr(st.details, "1 to 64 writes") != NULL, "%s", st.details);
	for (int i = 3; i < 65; i++)
		create_cmd("fwd-too-many", KMS_TEST_ADMIN, &cmds[i]);
	ck_assert_ptr_null(forward_raw(&nodes[l], who, 1, cmds, 65, KMS_TEST_ADMIN, &st));
	ck_assert_int_eq(st.code, 3);
	ck_assert_msg(strstr(st.details, "not 65") != NULL, "%s", st.details);
	ck_assert(!key_exists(&nodes[l], "fwd-too-many"));
	/* A service is no member, whatever it sends. */
	ck_assert_ptr_null(forward_raw(&nodes[l], "admin", 1, cmds, 1, KMS_TEST_ADMIN, &st));
	ck_assert_int_eq(st.code, 7);
	ck_assert_msg(strstr(st.details, "is not a kmsd node") != NULL, "%s", st.details);
	for (int i = 0; i < 65; i++)
		kms_buf_free(&cmds[i]);
}
END_TEST

/* CreateKey through a follower in a loop, each result kept. */
struct kill_writer {
	kms_test_node *node;
	int no;
	atomic_int *stop;
	int n, ok;
	char ids[200][32];
	int codes[200];
	char details[200][160];
};

static void *kill_write(void *arg)
{
	struct kill_writer *w = arg;
	kms_client *c = kms_test_client(w->node, "admin");
	kms_rpc_status st;

	while (!atomic_load(w->stop) && w->n < 200) {
		int i = w->n++;

		snprintf(w->ids[i], sizeof(w->ids[i]), "kill-%d-%d", w->no, i);
		w->codes[i] = kms_test_create_key(c, w->ids[i], NULL, &st);
		snprintf(w->details[i], sizeof(w->details[i]), "%.150s", st.details);
		w->ok += w->codes[i] == 0;
		if (w->codes[i] != 0)
			sleep_ms(20);
	}
	kms_client_close(c);
	return NULL;
}

/*
 * The leader killed while 16 writers keep writes in flight through one
 * follower: every call ends, either created (and on the new leader) or
 * UNAVAILABLE with a message about the leader, never anything else.
 */
START_TEST(leader_killed_under_concurrent_forwards_answers_every_write)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N, nl, acked = 0;
	static struct kill_writer w[16];
	pthread_t t[16];
	atomic_int stop;

	ck_assert_int_ge(l, 0);
	atomic_init(&stop, 0);
	for (int i = 0; i < 16; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].node = &nodes[f];
		w[i].no = i;
		w[i].stop = &stop;
		ck_assert_int_eq(pthread_create(&t[i], NULL, kill_write, &w[i]), 0);
	}
	for (int waited = 0; waited < 20000; waited += 20) {
		acked = 0;
		for (int i = 0; i < 16; i++)
			acked += w[i].ok;
		if (acked >= 48)
			break;
		sleep_ms(20);
	}
	kms_test_node_signal(&nodes[l], SIGKILL);
	/* Writes resume under a new leader. */
	for (int waited = 0; waited < 20000; waited += 100) {
		int now = 0;

		for (int i = 0; i < 16; i++)
			now += w[i].ok;
		if (now >= acked + 32)
			break;
		sleep_ms(100);
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 16; i++)
		pthread_join(t[i], NULL);
	nl = kms_test_wait_leader(nodes, N, 5000);
	ck_assert_msg(nl >= 0 && nl != l, "no new leader");
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < w[i].n; j++) {
			if (w[i].codes[j] == 0) {
				ck_assert_msg(key_appears(&nodes[nl], w[i].ids[j], 3000),
					      "%s acknowledged but lost", w[i].ids[j]);
				continue;
			}
			ck_assert_msg(w[i].codes[j] == 14, "%s: %d %s", w[i].ids[j], w[i].codes[j],
				      w[i].details[j]);
			ck_assert_msg(strstr(w[i].details[j], "leader") != NULL,
				      "%s: the message does not say why: %s", w[i].ids[j],
				      w[i].details[j]);
		}
	kms_test_node_start(&nodes[l]);
	for (int i = 0; i < N; i++)
		ck_assert_msg(kms_test_node_wait_healthy(&nodes[i], 30), "node %d; see %s", i + 1,
			      nodes[i].log);
}
END_TEST

/*
 * A new node CA (a new key: certificates of the old one no longer verify)
 * and new node certificates, loaded by SIGHUP with no restart. Then node 3
 * restarts: its Raft links to nodes 1 and 2 are new, and come up only if
 * those two reloaded their Raft TLS context (new CA, new certificate).
 */
START_TEST(node_ca_rotated_under_a_running_cluster)
{
	kms_rpc_status st;
	int f;

	kms_test_sh("rm -rf '%s/node-ca.pem' '%s/node-ca.key' '%s/node-ca.db' && cd '%s' && "
		    "ops/pki node-ca '%s' >/dev/null",
		    env.pki, env.pki, env.pki, kms_test_srcdir(), env.pki);
	for (int i = 0; i < N; i++) {
		kms_test_sh("cd '%s' && ops/pki node '%s' node%d '" KMS_TEST_TD "/kmsd/node/%d' "
			    "--token-dir '%s/token' --label %s >/dev/null",
			    kms_test_srcdir(), env.pki, i + 1, i + 1, nodes[i].dir,
			    nodes[i].token_label);
		kms_test_sh(": > '%s'", nodes[i].log);
	}
	for (int i = 0; i < N; i++)
		kill(nodes[i].pid, SIGHUP);
	for (int i = 0; i < N; i++)
		ck_assert_msg(kms_test_wait_log(&nodes[i], "tls: reloaded (SIGHUP)", 10),
			      "node %d did not reload; see %s", i + 1, nodes[i].log);
	kms_test_node_signal(&nodes[2], SIGTERM);
	kms_test_node_start(&nodes[2]);
	ck_assert_int_ge(kms_test_wait_leader(nodes, N, 10000), 0);
	/* A write through a follower (new node-to-node channels) reaches all three. */
	f = (kms_test_wait_leader(nodes, N, 5000) + 1) % N;
	ck_assert_msg(create_key(&nodes[f], "after-ca-rotation", &st) == 0, "%s", st.details);
	for (int i = 0; i < N; i++)
		ck_assert_msg(key_appears(&nodes[i], "after-ca-rotation", 10000),
			      "node %d lacks the key written after the rotation", i + 1);
}
END_TEST

START_TEST(leader_commit_consistency_reads_every_acknowledged_write)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N;
	kms_client *strong = kms_test_client_with(&nodes[f], "app", KMS_CONSISTENCY_LEADER_COMMIT, 0);
	kms_client *bad = kms_test_client_with(&nodes[f], "app", "eventually", 0);
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	char id[32];

	ck_assert_int_ge(l, 0);
	/* Acknowledged by the leader, used at once on a follower. */
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "strong-%d", i);
		ck_assert_msg(create_key(&nodes[l], id, &st) == 0, "%s", st.details);
		req.key_id = id;
		ck_assert_msg(kms_client_call(strong, KM "GenerateDataKey", &req.base,
					      &kms__v1__generate_data_key_response__descriptor,
					      &resp, &st) == 0,
			      "read %d on the follower: %s", i, st.details);
		FREE(resp);
	}
	kms_client_call(bad, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, &st);
	ck_assert_int_eq(st.code, 3);
	ck_assert_msg(strstr(st.details, "kms-consistency") != NULL, "%s", st.details);
	ck_assert_ptr_null(resp);
	kms_client_close(strong);
	kms_client_close(bad);
}
END_TEST

struct lc_call {
	kms_test_node *n;
	int code;
	long ms;
};

static long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* One leader-commit GenerateDataKey as the app with a 1 s deadline. */
static void *lc_call(void *arg)
{
	struct lc_call *c = arg;
	kms_client *cl = kms_test_client_with(c->n, "app", KMS_CONSISTENCY_LEADER_COMMIT, 1000);
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	long t0 = now_ms();

	req.key_id = (char *)"strong-0";
	c->code = kms_client_call(cl, KM "GenerateDataKey", &req.base,
				  &kms__v1__generate_data_key_response__descriptor, &resp, &st);
	c->ms = now_ms() - t0;
	if (resp != NULL)
		FREE(resp);
	kms_client_close(cl);
	return NULL;
}

/*
 * The metadata is read after the local decision, the leader authorizes
 * before anyone waits, and no wait outlives the call's deadline: callers
 * stuck on an unreachable leader do not hold the node's workers.
 */
START_TEST(leader_commit_waits_only_for_authorized_calls_within_their_deadline)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N;
	kms_client *other = kms_test_client_with(&nodes[f], "other", KMS_CONSISTENCY_LEADER_COMMIT, 0);
	kms_client *other_bad = kms_test_client_with(&nodes[f], "other", "eventually", 0);
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	struct lc_call calls[6];
	pthread_t th[6];
	kms_rpc_status st;
	kms_client *plain;

	ck_assert_int_ge(l, 0);
	/* A caller without a grant: refused, and the bad value is not even read. */
	req.key_id = (char *)"strong-0";
	kms_client_call(other, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, &st);
	ck_assert_msg(st.code == 7, "want PERMISSION_DENIED, got %d: %s", st.code, st.details);
	req.key_id = (char *)"no-such-key";
	kms_client_call(other, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, &st);
	ck_assert_msg(st.code == 7, "want PERMISSION_DENIED, got %d: %s", st.code, st.details);
	kms_client_call(other_bad, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, &st);
	ck_assert_msg(st.code == 7, "want PERMISSION_DENIED, got %d: %s", st.code, st.details);
	kms_client_close(other);
	kms_client_close(other_bad);

	/* The leader stops answering: more leader-commit calls than workers. */
	kill(nodes[l].pid, SIGSTOP);
	for (int i = 0; i < 6; i++) {
		calls[i].n = &nodes[f];
		ck_assert_int_eq(pthread_create(&th[i], NULL, lc_call, &calls[i]), 0);
	}
	for (int i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	/* Each ended by its 1 s deadline (failing), or succeeded once another
	 * node took over; none waited the old 10 s for the leader. */
	for (int i = 0; i < 6; i++)
		ck_assert_msg(calls[i].ms < 4000, "call %d took %ld ms (status %d)", i, calls[i].ms,
			      calls[i].code);
	/* The workers are free again: a plain call is served at once. */
	plain = kms_test_client_with(&nodes[f], "app", NULL, 3000);
	req.key_id = (char *)"strong-0";
	ck_assert_msg(kms_client_call(plain, KM "GenerateDataKey", &req.base,
				      &kms__v1__generate_data_key_response__descriptor, &resp,
				      &st) == 0,
		      "%s", st.details);
	FREE(resp);
	kms_client_close(plain);
	kill(nodes[l].pid, SIGCONT);
	ck_assert_int_ge(kms_test_wait_leader(nodes, N, 10000), 0);
}
END_TEST

START_TEST(operator_and_internal_refuse_other_principals)
{
	kms_client *app = kms_test_client(&nodes[0], "app");
	kms_client *admin = kms_test_client(&nodes[0], "admin");
	Kms__V1__ForwardRequest fwd = KMS__V1__FORWARD_REQUEST__INIT;
	Kms__V1__FetchDomainKeyRequest fetch = KMS__V1__FETCH_DOMAIN_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;

	ck_assert_ptr_null(kms_test_cluster_status(&nodes[0], "app", &st));
	ck_assert_int_eq(st.code, 7);
	ck_assert_msg(strstr(st.details, "not an administrator") != NULL, "%s", st.details);
	kms_client_call(app, "/kms.v1.Internal/Forward", &fwd.base,
			&kms__v1__forward_response__descriptor, &resp, &st);
	ck_assert_int_eq(st.code, 7);
	ck_assert_msg(strstr(st.details, "is not a kmsd node") != NULL, "%s", st.details);
	/* Even an administrator is not a node: no domain key for it. */
	fetch.node_id = 2;
	kms_client_call(admin, "/kms.v1.Internal/FetchDomainKey", &fetch.base,
			&kms__v1__fetch_domain_key_response__descriptor, &resp, &st);
	ck_assert_int_eq(st.code, 7);
	ck_assert_msg(strstr(st.details, "is not a kmsd node") != NULL, "%s", st.details);
	ck_assert_ptr_null(resp);
	kms_client_close(app);
	kms_client_close(admin);
}
END_TEST

static size_t admins_on(kms_test_node *n, kms_rpc_status *st)
{
	Kms__V1__ListAdministratorsRequest req = KMS__V1__LIST_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__ListAdministratorsResponse *resp = NULL;
	kms_client *c = kms_test_client(n, "admin");
	size_t count = 0;

	kms_client_call(c, OP "ListAdministrators", &req.base,
			&kms__v1__list_administrators_response__descriptor,
			(ProtobufCMessage **)&resp, st);
	if (resp != NULL) {
		count = resp->n_administrators;
		FREE(resp);
	}
	kms_client_close(c);
	return count;
}

/* A set-administrators proposal through n, approved by the quorum: 0 once
 * it executed. */
static int set_admins_via(kms_test_node *n, char **list, size_t count, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__SetAdministratorsOperation sa = KMS__V1__SET_ADMINISTRATORS_OPERATION__INIT;
	Kms__V1__Proposal *p;
	int executed;

	sa.administrators = list;
	sa.n_administrators = count;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
	op.set_administrators = &sa;
	p = kms_test_quorum_run(n, &op, st);
	if (p == NULL)
		return st->code;
	executed = strcmp(p->state, "executed") == 0;
	if (!executed)
		snprintf(st->details, sizeof(st->details), "proposal %s is %s: %s", p->id, p->state,
			 p->result);
	FREE(p);
	return executed ? 0 : -1;
}

/* The list is replicated state: set through a follower (relayed to the
 * leader), every node then decides alike, a forwarded write included. */
START_TEST(administrators_are_replicated_and_changed_through_a_follower)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 1) % N, g = (l + 2) % N;
	char *both[] = {(char *)KMS_TEST_ADMIN, (char *)KMS_TEST_APP};
	char *admin_only[] = {(char *)KMS_TEST_ADMIN};
	kms_rpc_status st;
	kms_client *app;
	int seen;

	ck_assert_int_ge(l, 0);
	ck_assert_msg(set_admins_via(&nodes[f], both, 2, &st) == 0, "%s", st.details);
	for (int i = 0; i < N; i++) {
		seen = 0;
		for (int t = 0; t < 30 && !seen; t++) {
			seen = admins_on(&nodes[i], &st) == 2;
			if (!seen)
				sleep_ms(100);
		}
		ck_assert_msg(seen, "node %d does not list both administrators", i + 1);
	}
	/* The app creates a key through the other follower: forwarded with its
	 * principal, which the leader now counts as an administrator. */
	app = kms_test_client(&nodes[g], "app");
	ck_assert_msg(kms_test_create_key(app, "by-app-admin", NULL, &st) == 0, "%s", st.details);
	ck_assert_msg(set_admins_via(&nodes[g], admin_only, 1, &st) == 0, "%s", st.details);
	kms_test_create_key(app, "by-app-not-admin", NULL, &st);
	ck_assert_msg(st.code == 7, "want PERMISSION_DENIED, got %d: %s", st.code, st.details);
	kms_client_close(app);
	ck_assert(!key_exists(&nodes[l], "by-app-not-admin"));
}
END_TEST

START_TEST(raft_port_refuses_plaintext_and_service_certificates)
{
	kms_test_node *n = &nodes[0];

	/* Plain TCP bytes: refused at the TLS handshake. */
	kms_test_sh("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d; printf \"KMSR hello raft\" >&3; "
		    "timeout 8 cat <&3 >/dev/null' 2>/dev/null || true",
		    n->raft_port);
	/* A service's client certificate, with a well-formed preamble claiming
	 * to be node 2: refused at the handshake, since Raft links trust only
	 * the node CA. */
	kms_test_sh("printf 'KMSR\\0\\0\\0\\0\\0\\0\\0\\2\\0\\01110.0.0.9:1' | "
		    "timeout 8 openssl s_client -quiet -connect 127.0.0.1:%d -cert '%s/app.pem' "
		    "-key '%s/app.key' -CAfile '%s/node-ca.pem' >/dev/null 2>&1 || true",
		    n->raft_port, env.pki, env.pki, env.pki);
	sleep_ms(500);
	ck_assert_msg(kms_test_file_contains(n->log, "raft-tls: refused") &&
			      kms_test_file_contains(n->log, "TLS handshake failed"),
		      "no refusal of the plaintext client in %s", n->log);
	ck_assert_msg(kms_test_file_contains(n->log, "certificate verify failed"),
		      "no refusal of the service certificate in %s", n->log);
	/* Raft itself carried on. */
	ck_assert_int_ge(kms_test_wait_leader(nodes, N, 5000), 0);
}
END_TEST

START_TEST(paused_minority_catches_up_through_a_snapshot)
{
	int l = kms_test_wait_leader(nodes, N, 5000), f = (l + 2) % N, via = (l + 1) % N;
	kms_rpc_status st;
	char id[32];

	ck_assert_int_ge(l, 0);
	kill(nodes[f].pid, SIGSTOP);
	/* Over twice the snapshot threshold: the log it misses is compacted. */
	for (int i = 0; i < 150; i++) {
		snprintf(id, sizeof(id), "while-paused-%d", i);
		ck_assert_msg(create_key(&nodes[via], id, &st) == 0, "%s: %s", id, st.details);
	}
	kill(nodes[f].pid, SIGCONT);
	ck_assert_msg(key_appears(&nodes[f], "while-paused-149", 20000),
		      "the resumed node did not catch up; see %s", nodes[f].log);
	ck_assert(key_exists(&nodes[f], "while-paused-0"));
	ck_assert(key_exists(&nodes[f], "via-follower"));
}
END_TEST

struct stream {
	kms_test_node *target;
	atomic_int stop;
	int acked;
	char acked_ids[400][32];
};

static void *create_stream(void *arg)
{
	struct stream *s = arg;
	kms_rpc_status st;
	char id[32];

	for (int i = 0; !atomic_load(&s->stop) && i < 400; i++) {
		snprintf(id, sizeof(id), "stream-%d", i);
		if (create_key(s->target, id, &st) == 0)
			snprintf(s->acked_ids[s->acked++], sizeof(s->acked_ids[0]), "%s", id);
		else
			sleep_ms(50);
	}
	return NULL;
}

START_TEST(leader_killed_during_writes_loses_no_acknowledged_key)
{
	int l = kms_test_wait_leader(nodes, N, 5000), via = (l + 1) % N, other = (l + 2) % N, nl;
	static struct stream s;
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;
	pthread_t t;
	int before;

	ck_assert_int_ge(l, 0);
	g = gen_key(&nodes[via], "via-follower", &st);
	ck_assert_ptr_nonnull(g);
	memset(&s, 0, sizeof(s));
	s.target = &nodes[via];
	ck_assert_int_eq(pthread_create(&t, NULL, create_stream, &s), 0);
	while (s.acked < 20)
		sleep_ms(20);
	kms_test_node_signal(&nodes[l], SIGKILL);
	before = s.acked;
	/* Writes resume under a new leader. */
	for (int waited = 0; s.acked < before + 10 && waited < 20000; waited += 100)
		sleep_ms(100);
	atomic_store(&s.stop, 1);
	pthread_join(t, NULL);
	ck_assert_msg(s.acked >= before + 10, "writes did not resume after the leader died");
	nl = kms_test_wait_leader(nodes, N, 5000);
	ck_assert_msg(nl >= 0 && nl != l, "no new leader");
	for (int i = 0; i < s.acked; i++) {
		ck_assert_msg(key_appears(&nodes[via], s.acked_ids[i], 3000), "%s lost on node %d",
			      s.acked_ids[i], via + 1);
		ck_assert_msg(key_appears(&nodes[other], s.acked_ids[i], 3000),
			      "%s lost on node %d", s.acked_ids[i], other + 1);
	}
	ck_assert(decrypts_to(&nodes[via], g, &st));
	ck_assert(decrypts_to(&nodes[other], g, &st));
	FREE(g);
	/* The old leader comes back as a follower and catches up. */
	kms_test_node_start(&nodes[l]);
	ck_assert(key_appears(&nodes[l], s.acked_ids[s.acked - 1], 10000));
}
END_TEST

START_TEST(majority_lost_refuses_writes_then_crypto_calls)
{
	int survivor = 0, refused = 0;
	kms_rpc_status st;
	Kms__V1__GenerateDataKeyResponse *g = gen_key(&nodes[survivor], "via-follower", &st);

	ck_assert_ptr_nonnull(g);
	kms_test_node_signal(&nodes[1], SIGKILL);
	kms_test_node_signal(&nodes[2], SIGKILL);
	/* Once the leader notices (an election timeout), writes fail. */
	sleep_ms(2500);
	ck_assert_int_ne(create_key(&nodes[survivor], "no-quorum", &st), 0);
	ck_assert_msg(st.code == 14, "want UNAVAILABLE, got %d: %s", st.code, st.details);
	ck_assert_msg(strstr(st.details, "quorum") != NULL, "message does not say why: %s",
		      st.details);
	/* Crypto calls go on from the local key ring until max_staleness (5 s)
	 * has passed without a majority, then stop (docs/CONSISTENCY.md). */
	for (int t = 0; t < 15000 && !refused; t += 200) {
		if (!decrypts_to(&nodes[survivor], g, &st)) {
			ck_assert_msg(st.code == 14 &&
				      strstr(st.details, "has not heard from a Raft leader for") !=
					      NULL,
				      "want the staleness refusal, got %d: %s", st.code, st.details);
			refused = 1;
		}
		sleep_ms(200);
	}
	ck_assert_msg(refused, "the survivor still unwraps 17 s after it lost its majority");
	FREE(g);
	kms_test_node_spawn(&nodes[1]);
	kms_test_node_spawn(&nodes[2]);
	for (int i = 0; i < N; i++)
		ck_assert_msg(kms_test_node_wait_healthy(&nodes[i], 30), "node %d; see %s", i + 1,
			      nodes[i].log);
	ck_assert(!key_exists(&nodes[0], "no-quorum"));
}
END_TEST

START_TEST(all_nodes_restarted_keep_every_key)
{
	for (int i = 0; i < N; i++)
		kms_test_node_signal(&nodes[i], SIGTERM);
	for (int i = 0; i < N; i++)
		kms_test_node_spawn(&nodes[i]);
	for (int i = 0; i < N; i++)
		ck_assert_msg(kms_test_node_wait_healthy(&nodes[i], 30), "node %d; see %s", i + 1,
			      nodes[i].log);
	for (int i = 0; i < N; i++) {
		ck_assert(key_appears(&nodes[i], "via-follower", 3000));
		ck_assert(key_appears(&nodes[i], "while-paused-149", 3000));
		ck_assert(key_appears(&nodes[i], "stream-0", 3000));
	}
}
END_TEST

/* Opens node n's token in this process (the node must not run). */
static kms_hsm *open_token(kms_test_node *n)
{
	char pin[128] = {0}, path[PATH_MAX];
	const char *module = getenv("KMS_PKCS11_MODULE");
	kms_hsm *hsm = NULL;
	kms_err err = {0};
	FILE *f;

	KMS_TEST_PATH(path, "%s/token/pin", n->dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(pin, sizeof(pin), f));
	fclose(f);
	/* SoftHSM reads SOFTHSM2_CONF at its first C_Initialize in this process:
	 * this is the only token the test process opens. */
	setenv("SOFTHSM2_CONF", n->softhsm_conf, 1);
	ck_assert_msg(kms_hsm_open(module != NULL ? module : "/usr/lib/softhsm/libsofthsm2.so",
				   n->token_label, pin, &hsm, &err) == KMS_OK,
		      "%s", err.msg);
	return hsm;
}

/* Puts a domain key of another cluster into n's token (destroying the
 * cluster's one, if any). */
static void plant_foreign_domain_key(kms_test_node *n)
{
	kms_hsm *hsm = open_token(n);
	kms_hsm_key dk;
	kms_err err = {0};

	if (kms_hsm_domain_key(hsm, "kmsd-domain-key", 0, &dk, &err) == KMS_OK)
		kms_hsm_key_destroy(hsm, dk);
	ck_assert_int_eq(kms_hsm_domain_key(hsm, "kmsd-domain-key", 1, &dk, &err), KMS_OK);
	kms_hsm_close(hsm);
}

START_TEST(foreign_domain_key_refuses_to_join)
{
	char extra[256], role[32];
	kms_test_node *n = &nodes[N];
	kms_rpc_status st;
	kms_hsm *hsm;
	kms_hsm_key dk;
	kms_err err = {0};
	int code;

	snprintf(extra, sizeof(extra), RAFT_ARGS " --join %s", nodes[0].endpoint);
	kms_test_node_init_args(&env, n, N + 1, extra);
	/* A joining node whose token already holds a domain key: refused at
	 * once, before it could mix two clusters' keys. */
	plant_foreign_domain_key(n);
	kms_test_node_spawn(n);
	code = kms_test_node_wait_exit(n, 30);
	ck_assert_msg(code == 1, "the node should stop with status 1, got %d; see %s", code, n->log);
	ck_assert(kms_test_file_contains(n->log, "already holds a domain key"));
	/* With that key gone it joins as usual... */
	hsm = open_token(n);
	ck_assert_int_eq(kms_hsm_domain_key(hsm, "kmsd-domain-key", 0, &dk, &err), KMS_OK);
	kms_hsm_key_destroy(hsm, dk);
	kms_hsm_close(hsm);
	kms_test_node_spawn(n);
	ck_assert_msg(kms_test_add_member(&nodes[0], n, NULL, &st, role, sizeof(role)) == 0, "%s",
		      st.details);
	ck_assert_msg(kms_test_node_wait_healthy(n, 30), "node %u never became healthy; see %s",
		      n->id, n->log);
	/* ...and a member whose token is swapped for another cluster's stops
	 * at the domain-key check. */
	kms_test_node_signal(n, SIGTERM);
	plant_foreign_domain_key(n);
	kms_test_node_spawn(n);
	code = kms_test_node_wait_exit(n, 30);
	ck_assert_msg(code == 1, "the foreign node should stop with status 1, got %d; see %s", code,
		      n->log);
	ck_assert(kms_test_file_contains(n->log, "is not this cluster's domain key"));
	/* Take it out again; the cluster keeps serving. */
	ck_assert_msg(kms_test_remove_member(&nodes[kms_test_wait_leader(nodes, N, 5000)], N + 1,
					     &st) == 0,
		      "%s", st.details);
	ck_assert_msg(create_key(&nodes[1], "after-foreign", &st) == 0, "%s", st.details);
}
END_TEST

START_TEST(remove_member_keeps_serving)
{
	int l = kms_test_wait_leader(nodes, N, 5000), r = (l + 1) % N, other = (l + 2) % N;
	/* Removals wait for the configuration change: more than the default
	 * 10 s deadline may pass on a loaded machine. */
	kms_client *c = kms_test_client_with(&nodes[other], "admin", NULL, 30000);
	Kms__V1__RemoveMemberRequest req = KMS__V1__REMOVE_MEMBER_REQUEST__INIT;
	Kms__V1__ClusterStatusResponse *s;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;

	ck_assert_int_ge(l, 0);
	/* Called directly, a root operation names the quorum command. */
	req.id = nodes[r].id;
	kms_client_call(c, OP "RemoveMember", &req.base, &kms__v1__remove_member_response__descriptor,
			&resp, &st);
	ck_assert_int_eq(st.code, 9);
	ck_assert_msg(strstr(st.details, "kmsctl quorum propose remove-member") != NULL, "%s",
		      st.details);
	ck_assert_int_eq(kms_test_remove_member(&nodes[other], 99, &st), 5);
	ck_assert_msg(strstr(st.details, "not a member") != NULL, "%s", st.details);
	/* A follower goes out; the cluster keeps serving. */
	ck_assert_msg(kms_test_remove_member(&nodes[other], nodes[r].id, &st) == 0, "%s",
		      st.details);
	kms_test_node_signal(&nodes[r], SIGTERM);
	ck_assert_msg(create_key(&nodes[other], "after-remove", &st) == 0, "%s", st.details);
	/* The leader is refused: the operator stops it first, another node leads. */
	ck_assert_int_eq(kms_test_remove_member(&nodes[other], nodes[l].id, &st), 9);
	ck_assert_msg(strstr(st.details, "is the leader") != NULL, "%s", st.details);
	s = kms_test_cluster_status(&nodes[other], "admin", &st);
	ck_assert_ptr_nonnull(s);
	ck_assert_uint_eq(s->n_members, N - 1);
	FREE(s);
	kms_client_close(c);
}
END_TEST

START_TEST(late_joiner_starts_from_a_snapshot)
{
	kms_test_node *n = &nodes[N + 1];
	char extra[256], role[32] = "";
	kms_rpc_status st;
	int l = kms_test_wait_leader(nodes, N, 5000);

	ck_assert_int_ge(l, 0);
	/* Hundreds of entries in, the log it would need is compacted away. */
	snprintf(extra, sizeof(extra), RAFT_ARGS " --join %s", nodes[l].endpoint);
	kms_test_node_init_args(&env, n, N + 2, extra);
	kms_test_node_spawn(n);
	ck_assert_msg(kms_test_add_member(&nodes[l], n, NULL, &st, role, sizeof(role)) == 0, "%s", st.details);
	ck_assert_msg(kms_test_node_wait_healthy(n, 30), "the late joiner never became healthy; see %s",
		      n->log);
	/* Healthy is as soon as it holds the domain key; caught up is later. */
	ck_assert_msg(kms_test_wait_voter(&nodes[l], n->id, 30),
		      "the late joiner never became a voter; see %s", n->log);
	ck_assert(kms_test_file_contains(n->log, "installed a snapshot"));
	ck_assert(key_exists(n, "while-paused-0"));
	ck_assert(key_exists(n, "after-remove"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kmsd cluster");
	TCase *tc = tcase_create("three nodes");
	SRunner *sr;

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, cluster_forms_with_three_voters);
	tcase_add_test(tc, write_on_a_follower_is_forwarded_and_readable_there);
	tcase_add_test(tc, concurrent_writes_through_a_follower_are_committed_once);
	tcase_add_test(tc, forwards_are_submitted_only_by_the_leader_and_answered_one_by_one);
	tcase_add_test(tc, writes_to_a_paused_leader_hold_no_worker_and_end_at_their_deadline);
	tcase_add_test(tc, leader_killed_under_concurrent_forwards_answers_every_write);
	tcase_add_test(tc, node_ca_rotated_under_a_running_cluster);
	tcase_add_test(tc, leader_commit_consistency_reads_every_acknowledged_write);
	tcase_add_test(tc, leader_commit_waits_only_for_authorized_calls_within_their_deadline);
	tcase_add_test(tc, operator_and_internal_refuse_other_principals);
	tcase_add_test(tc, administrators_are_replicated_and_changed_through_a_follower);
	tcase_add_test(tc, raft_port_refuses_plaintext_and_service_certificates);
	tcase_add_test(tc, paused_minority_catches_up_through_a_snapshot);
	tcase_add_test(tc, leader_killed_during_writes_loses_no_acknowledged_key);
	tcase_add_test(tc, majority_lost_refuses_writes_then_crypto_calls);
	tcase_add_test(tc, all_nodes_restarted_keep_every_key);
	tcase_add_test(tc, foreign_domain_key_refuses_to_join);
	tcase_add_test(tc, remove_member_keeps_serving);
	tcase_add_test(tc, late_joiner_starts_from_a_snapshot);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
