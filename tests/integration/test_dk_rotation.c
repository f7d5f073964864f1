/* test_dk_rotation.c - domain-key rotation (issue #6) on three real kmsd processes: under Decrypt and GenerateDataKey load, with kill -9 of a node at several steps, and its refusals. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/buf.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define OP "/kms.v1.Operator/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define NODE_ARGS "--election-timeout 1000 --heartbeat-timeout 100"
#define NKEYS 3
#define NBLOBS 12
/* A rotation hands a new key to two members (an RSA-3072 key pair each). */
#define ROTATION_MS 60000

enum {
	S_OK = 0,
	S_DENIED = 7,
	S_PRECOND = 9,
};

static kms_test_env env;
static kms_test_node nodes[N];

static kms_test_blob blobs[NBLOBS];
static int n_blobs;

#define sleep_ms kms_test_sleep_ms
#define now_ms kms_test_now_ms

static int call(int n, const char *who, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp,
		kms_rpc_status *st)
{
	return kms_test_call(&nodes[n], who, method, req, desc, resp, st);
}

static int leader(void)
{
	int l = kms_test_wait_leader(nodes, N, 10000);

	ck_assert_int_ge(l, 0);
	return l;
}

static Kms__V1__DomainKeyStatusResponse *dk_status(int n)
{
	Kms__V1__DomainKeyStatusRequest req = KMS__V1__DOMAIN_KEY_STATUS_REQUEST__INIT;
	Kms__V1__DomainKeyStatusResponse *r = NULL;
	kms_rpc_status st;

	if (call(n, "admin", OP "DomainKeyStatus", &req.base,
		 &kms__v1__domain_key_status_response__descriptor, (ProtobufCMessage **)&r,
		 &st) != 0)
		return NULL;
	return r;
}

/* Operator/RotateDomainKey straight, as who: its gRPC code. */
static int rotate_call(int n, const char *who, int abort_it, uint32_t *gen, kms_rpc_status *st)
{
	Kms__V1__RotateDomainKeyRequest req = KMS__V1__ROTATE_DOMAIN_KEY_REQUEST__INIT;
	Kms__V1__RotateDomainKeyResponse *r = NULL;
	int code;

	req.abort = abort_it;
	code = call(n, who, OP "RotateDomainKey", &req.base,
		    &kms__v1__rotate_domain_key_response__descriptor, (ProtobufCMessage **)&r, st);
	if (code == 0) {
		*gen = r->generation;
		FREE(r);
	}
	return code;
}

/*
 * Starts a rotation as who through node n: a rotate-domain-key proposal
 * that operator1..KMS_TEST_THRESHOLD approve, then waits until the leader
 * ran it. 0 with *gen the new generation; else the gRPC code of the refused
 * call, or FAILED_PRECONDITION with the proposal's result when it failed.
 * With abort_it, the direct call (an administrator's, no proposal).
 */
static int rotate(int n, const char *who, int abort_it, uint32_t *gen, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__RotateDomainKeyOperation rot = KMS__V1__ROTATE_DOMAIN_KEY_OPERATION__INIT;
	Kms__V1__DomainKeyStatusResponse *ds;
	Kms__V1__Proposal *p;
	char id[64];
	int code = -1;

	if (abort_it)
		return rotate_call(n, who, 1, gen, st);
	memset(st, 0, sizeof(*st));
	op.op_case = KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY;
	op.rotate_domain_key = &rot;
	if (strcmp(who, "admin") != 0) {
		p = kms_test_propose(&nodes[n], who, &op, 0, st);
		if (p != NULL) {
			FREE(p);
			return 0;
		}
		return st->code;
	}
	p = kms_test_quorum_run(&nodes[n], &op, st);
	if (p == NULL)
		return st->code;
	snprintf(id, sizeof(id), "%s", p->id);
	for (long until = now_ms() + ROTATION_MS; code < 0 && now_ms() < until;) {
		if (strcmp(p->state, "executed") == 0) {
			code = 0;
		} else if (strcmp(p->state, "failed") == 0) {
			code = S_PRECOND;
			snprintf(st->details, sizeof(st->details), "proposal %s failed: %s", id,
				 p->result);
		} else {
			FREE(p);
			sleep_ms(100);
			while ((p = kms_test_get_operation(&nodes[n], id, st)) == NULL &&
			       now_ms() < until)
				sleep_ms(200);
			if (p == NULL)
				return st->code != 0 ? st->code : -1;
		}
	}
	if (p != NULL && code < 0)
		snprintf(st->details, sizeof(st->details), "proposal %s still %s", id, p->state);
	FREE(p);
	if (code != 0)
		return code < 0 ? -1 : (st->code = code);
	ds = dk_status(n);
	if (ds == NULL)
		return -1;
	*gen = ds->highest_generation;
	FREE(ds);
	return 0;
}

/* Until node n's state says gen is current, no rotation runs, and its
 * token holds that generation alone. */
static int settled_on(int n, uint32_t gen)
{
	Kms__V1__DomainKeyStatusResponse *r = dk_status(n);
	int ok;

	if (r == NULL)
		return 0;
	ok = r->generation == gen && !r->rotating && r->n_token_generations == 1 &&
	     r->token_generations[0] == gen;
	FREE(r);
	return ok;
}

static void wait_settled(uint32_t gen)
{
	for (int n = 0; n < N; n++) {
		long until = now_ms() + ROTATION_MS;

		while (!settled_on(n, gen) && now_ms() < until)
			sleep_ms(200);
		ck_assert_msg(settled_on(n, gen), "node %d did not settle on generation %u", n + 1,
			      gen);
	}
}

/* A predicate on the leader's view of the rotation in progress. */
static int rotation_at(int (*pred)(const Kms__V1__DomainKeyStatusResponse *), long timeout_ms)
{
	long until = now_ms() + timeout_ms;

	while (now_ms() < until) {
		Kms__V1__DomainKeyStatusResponse *r = dk_status(leader());
		int ok = r != NULL && pred(r);

		if (r != NULL)
			FREE(r);
		if (ok)
			return 1;
		sleep_ms(50);
	}
	return 0;
}

static int is_begun(const Kms__V1__DomainKeyStatusResponse *r)
{
	return r->rotating && !r->switched;
}

static int two_installed(const Kms__V1__DomainKeyStatusResponse *r)
{
	return r->rotating && (r->switched || r->n_installed >= 2);
}

static int is_switched(const Kms__V1__DomainKeyStatusResponse *r)
{
	return r->rotating && r->switched;
}

static void cluster_up(void)
{
	kms_client *c;
	kms_rpc_status st;

	kms_test_cluster_up(&env, nodes, N, NODE_ARGS);
	c = kms_test_client(&nodes[leader()], "admin");
	for (int k = 0; k < NKEYS; k++) {
		char id[16];

		snprintf(id, sizeof(id), "dk-key-%d", k);
		ck_assert_msg(kms_test_create_key(c, id, KMS_TEST_APP, &st) == 0, "CreateKey: %s",
			      st.details);
	}
	kms_client_close(c);
}

static void cluster_down(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

static void rotate_key(const char *id)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	kms_rpc_status st;

	req.key_id = (char *)id;
	ck_assert_msg(call(leader(), "admin", KM "RotateKey", &req.base,
			   &kms__v1__rotate_key_response__descriptor, &r, &st) == 0,
		      "RotateKey: %s", st.details);
	FREE(r);
}

/* Blobs under every key, some under older versions. */
static void make_blobs(int n)
{
	for (int i = 0; i < n && n_blobs < NBLOBS; i++) {
		char id[16];
		kms_rpc_status st;
		long until = now_ms() + 10000;
		int code;

		snprintf(id, sizeof(id), "dk-key-%d", n_blobs % NKEYS);
		while ((code = kms_test_make_blob(&nodes[n_blobs % N], "app", id, &blobs[n_blobs],
						  &st)) != 0 &&
		       now_ms() < until)
			sleep_ms(100);
		ck_assert_msg(code == 0, "GenerateDataKey: %s", st.details);
		n_blobs++;
	}
}

static int decrypt_one(kms_client *c, const kms_test_blob *b, kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptResponse *r = NULL;
	int ok;

	req.ciphertext_blob.data = (uint8_t *)b->ct;
	req.ciphertext_blob.len = b->ct_len;
	if (kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor,
			    (ProtobufCMessage **)&r, st) != 0)
		return 0;
	ok = r->plaintext.len == 32 && memcmp(r->plaintext.data, b->pt, 32) == 0;
	if (!ok)
		snprintf(st->details, sizeof(st->details), "wrong plaintext");
	FREE(r);
	return ok;
}

/* Every blob made so far decrypts to its plaintext on every node. */
static void every_blob_everywhere(void)
{
	for (int n = 0; n < N; n++) {
		kms_client *c = kms_test_client(&nodes[n], "app");

		for (int i = 0; i < n_blobs; i++) {
			kms_rpc_status st;
			long until = now_ms() + 10000;
			int ok;

			while (!(ok = decrypt_one(c, &blobs[i], &st)) && now_ms() < until)
				sleep_ms(100);
			ck_assert_msg(ok, "node %d: blob %d does not decrypt: %s", n + 1, i,
				      st.details);
		}
		kms_client_close(c);
	}
}

/* --- load: Decrypt and GenerateDataKey against one node, counting failures --- */

struct load {
	int node;
	atomic_int stop;
	atomic_long ok, failed;
	char last_error[600];
	pthread_t thread[2];
};

static void *load_main(void *p)
{
	struct load *l = p;
	kms_client *c = kms_test_client(&nodes[l->node], "app");
	int i = 0;

	while (!atomic_load(&l->stop)) {
		kms_rpc_status st;
		int ok;

		if (i % 2 == 0) {
			ok = decrypt_one(c, &blobs[(i / 2) % n_blobs], &st);
		} else {
			Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
			Kms__V1__GenerateDataKeyResponse *r = NULL;

			req.key_id = (char *)"dk-key-1";
			req.number_of_bytes = 32;
			ok = kms_client_call(c, KM "GenerateDataKey", &req.base,
					     &kms__v1__generate_data_key_response__descriptor,
					     (ProtobufCMessage **)&r, &st) == 0;
			if (ok)
				FREE(r);
		}
		if (ok) {
			atomic_fetch_add(&l->ok, 1);
		} else {
			atomic_fetch_add(&l->failed, 1);
			snprintf(l->last_error, sizeof(l->last_error), "%s", st.details);
		}
		i++;
	}
	kms_client_close(c);
	return NULL;
}

static void load_start(struct load *l, int node)
{
	memset(l, 0, sizeof(*l));
	l->node = node;
	for (int t = 0; t < 2; t++)
		ck_assert_int_eq(pthread_create(&l->thread[t], NULL, load_main, l), 0);
}

static void load_stop(struct load *l)
{
	atomic_store(&l->stop, 1);
	for (int t = 0; t < 2; t++)
		pthread_join(l->thread[t], NULL);
}

/* --- tests --- */

/*
 * A full rotation through a follower (relayed to the leader) while two
 * other nodes serve Decrypt and GenerateDataKey: no call fails, every
 * blob decrypts on every node afterwards, and the old key is gone from
 * every token. A second rotation after it works the same.
 */
START_TEST(rotation_under_load)
{
	struct load a, b;
	kms_rpc_status st;
	uint32_t gen = 0, want;
	Kms__V1__DomainKeyStatusResponse *r;
	int l = leader(), f = (l + 1) % N;

	rotate_key("dk-key-0");
	make_blobs(6);
	r = dk_status(l);
	ck_assert_ptr_nonnull(r);
	want = r->generation + 1;
	FREE(r);
	load_start(&a, f);
	load_start(&b, (l + 2) % N);
	sleep_ms(300);
	ck_assert_msg(rotate(f, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert_uint_eq(gen, want);
	wait_settled(gen);
	sleep_ms(300);
	load_stop(&a);
	load_stop(&b);
	ck_assert_msg(atomic_load(&a.failed) == 0 && atomic_load(&b.failed) == 0,
		      "%ld and %ld calls failed during the rotation: %s %s", atomic_load(&a.failed),
		      atomic_load(&b.failed), a.last_error, b.last_error);
	ck_assert_int_gt(atomic_load(&a.ok), 0);
	ck_assert_int_gt(atomic_load(&b.ok), 0);
	every_blob_everywhere();
	/* Keys made after it, and a second rotation. */
	make_blobs(3);
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "second RotateDomainKey: %s",
		      st.details);
	ck_assert_uint_eq(gen, want + 1);
	wait_settled(gen);
	every_blob_everywhere();
}
END_TEST

/* Who may not, and not twice at once: a clear status and no state change. */
START_TEST(rotation_refusals)
{
	Kms__V1__DomainKeyStatusResponse *before, *after;
	kms_rpc_status st;
	uint32_t gen = 0, gen2 = 0;
	int l = leader();

	before = dk_status(l);
	ck_assert_ptr_nonnull(before);
	ck_assert_int_eq(rotate(l, "app", 0, &gen, &st), S_DENIED);
	ck_assert_ptr_nonnull(strstr(st.details, "not an administrator"));
	ck_assert_int_eq(rotate((l + 1) % N, "app", 0, &gen, &st), S_DENIED);
	ck_assert_int_eq(rotate(l, "admin", 1, &gen, &st), S_PRECOND);
	ck_assert_ptr_nonnull(strstr(st.details, "no domain-key rotation is in progress"));
	/* Started straight, without a proposal: refused, naming the command. */
	ck_assert_int_eq(rotate_call(l, "admin", 0, &gen, &st), S_PRECOND);
	ck_assert_msg(strstr(st.details, "kmsctl quorum propose rotate-domain-key") != NULL, "%s",
		      st.details);
	ck_assert_int_eq(rotate_call((l + 1) % N, "admin", 0, &gen, &st), S_PRECOND);
	ck_assert_int_eq(rotate_call(l, "app", 0, &gen, &st), S_DENIED);
	{
		Kms__V1__DomainKeyStatusRequest req = KMS__V1__DOMAIN_KEY_STATUS_REQUEST__INIT;
		ProtobufCMessage *r = NULL;

		ck_assert_int_eq(call(l, "app", OP "DomainKeyStatus", &req.base,
				      &kms__v1__domain_key_status_response__descriptor, &r, &st),
				 S_DENIED);
	}
	after = dk_status(l);
	ck_assert_uint_eq(after->generation, before->generation);
	ck_assert_uint_eq(after->highest_generation, before->highest_generation);
	ck_assert(!after->rotating);
	FREE(after);
	/* A second rotation while the first runs. */
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert_int_eq(rotate((l + 1) % N, "admin", 0, &gen2, &st), S_PRECOND);
	ck_assert_msg(strstr(st.details, "already in progress") != NULL, "%s", st.details);
	after = dk_status(l);
	ck_assert_uint_eq(after->highest_generation, gen);
	FREE(after);
	wait_settled(gen);
	FREE(before);
	every_blob_everywhere();
}
END_TEST

/*
 * Abort before the switch: the cluster stays on its key, the new one is
 * destroyed wherever it arrived, and its generation is never used again.
 */
START_TEST(abort_before_switch)
{
	Kms__V1__DomainKeyStatusResponse *r;
	kms_rpc_status st;
	uint32_t cur, gen = 0, aborted = 0;
	int l = leader();

	r = dk_status(l);
	ck_assert_ptr_nonnull(r);
	cur = r->generation;
	FREE(r);
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert_int_eq(rotate((l + 1) % N, "app", 1, &aborted, &st), S_DENIED);
	ck_assert_msg(rotate((l + 1) % N, "admin", 1, &aborted, &st) == 0, "abort: %s", st.details);
	ck_assert_uint_eq(aborted, gen);
	wait_settled(cur);
	every_blob_everywhere();
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert_uint_eq(gen, aborted + 1);
	wait_settled(gen);
	every_blob_everywhere();
}
END_TEST

/* kill -9 of node n, then start it again (it rejoins by its log). */
static void kill_and_restart(int n)
{
	kms_test_node_signal(&nodes[n], SIGKILL);
	sleep_ms(500);
	kms_test_node_start(&nodes[n]);
}

/*
 * kill -9 at several steps: a follower just after the rotation began
 * (before it received the key), the leader once two members hold the new
 * key (around the switch), a follower just after the switch (before it
 * destroyed the old key). Each time the rotation completes and every key
 * serves on every node.
 */
START_TEST(kill_9_at_each_step)
{
	kms_rpc_status st;
	uint32_t gen = 0;
	int l;

	if (n_blobs == 0)
		make_blobs(3);
	/* A follower, right after Begin. */
	l = leader();
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert(rotation_at(is_begun, 5000));
	kill_and_restart((l + 1) % N);
	wait_settled(gen);
	every_blob_everywhere();
	/* The leader, once two hold the new key. */
	l = leader();
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert(rotation_at(two_installed, ROTATION_MS));
	kill_and_restart(l);
	wait_settled(gen);
	every_blob_everywhere();
	/* A follower, right after the switch. */
	l = leader();
	ck_assert_msg(rotate(l, "admin", 0, &gen, &st) == 0, "RotateDomainKey: %s", st.details);
	ck_assert(rotation_at(is_switched, ROTATION_MS));
	kill_and_restart((l + 2) % N);
	wait_settled(gen);
	every_blob_everywhere();
	make_blobs(3);
	every_blob_everywhere();
}
END_TEST

static Suite *dk_rotation_suite(void)
{
	Suite *s = suite_create("dk_rotation");
	TCase *tc = tcase_create("three nodes");

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, rotation_refusals);
	tcase_add_test(tc, rotation_under_load);
	tcase_add_test(tc, abort_before_switch);
	tcase_add_test(tc, kill_9_at_each_step);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(dk_rotation_suite());

	/* The nodes serve the whole test case; gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
