/* test_rotation.c - automatic rotation and the encryption bound on three real kmsd processes: a rotation policy that fires, the bound held across nodes through kill -9, failing closed without a quorum, and destruction at the end of a deletion window. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
/*
 * Test-only settings (docs/OPERATIONS.md): a "day" of a deletion window is
 * a second, rotation periods may be 1 s, and the leader looks for keys due
 * four times a second.
 */
#define NODE_ARGS                                                                                 \
	"--election-timeout 1000 --heartbeat-timeout 100 "                                        \
	"--keys-option deletion_day_seconds=1 --keys-option min_rotation_period=1 "               \
	"--keys-option upkeep_interval_ms=250"
/* How long a change may take to reach every node. */
#define SPREAD_MS 10000
/* The bound of the encryption test: blocks of 15, 66 of them, so each node
 * reserves several per version. */
#define BOUND 1000
#define MAX_VERSIONS 256

enum {
	S_OK = 0,
	S_INVALID = 3,
	S_NOT_FOUND = 5,
	S_EXISTS = 6,
	S_DENIED = 7,
	S_PRECOND = 9,
	S_UNAVAILABLE = 14,
};

static kms_test_env env;
static kms_test_node nodes[N];

#define ASSERT_STATUS KMS_TEST_ASSERT_STATUS
#define sleep_ms kms_test_sleep_ms
#define now_ms kms_test_now_ms

static void cluster_up(void)
{
	kms_test_cluster_up(&env, nodes, N, NODE_ARGS);
}

static void cluster_down(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

static int leader(void)
{
	int l = kms_test_wait_leader(nodes, N, 10000);

	ck_assert_int_ge(l, 0);
	return l;
}

/* One call to node n as who; *resp (or NULL) is the caller's. */
static int call(int n, const char *who, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp,
		kms_rpc_status *st)
{
	return kms_test_call(&nodes[n], who, method, req, desc, resp, st);
}

/* An administrator's call to node n that must succeed; its answer is dropped. */
static void admin_ok(int n, const char *method, const ProtobufCMessage *req,
		     const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *resp;
	kms_rpc_status st;

	ck_assert_msg(call(n, "admin", method, req, desc, &resp, &st) == 0, "%s: %s", method,
		      st.details);
	FREE(resp);
}

static Kms__V1__KeyMetadata *describe_on(int n, const char *id, kms_rpc_status *st)
{
	return kms_test_describe(&nodes[n], "admin", id, st);
}

/* CreateKey on the leader granting the app everything; known on every
 * node when this returns. */
static void create_key(const char *id)
{
	kms_client *c = kms_test_client(&nodes[leader()], "admin");
	kms_rpc_status st;

	ck_assert_msg(kms_test_create_key(c, id, KMS_TEST_APP, &st) == 0, "CreateKey %s: %s", id,
		      st.details);
	kms_client_close(c);
	for (int n = 0; n < N; n++) {
		Kms__V1__KeyMetadata *md = NULL;

		for (long t = now_ms() + SPREAD_MS; md == NULL && now_ms() < t; sleep_ms(100))
			md = describe_on(n, id, &st);
		ck_assert_msg(md != NULL, "node %d does not know '%s': %s", n + 1, id, st.details);
		FREE(md);
	}
}

static Kms__V1__KeyMetadata *set_policy(int n, const char *who, const char *id, uint64_t period,
					uint64_t max, kms_rpc_status *st)
{
	Kms__V1__SetRotationPolicyRequest req = KMS__V1__SET_ROTATION_POLICY_REQUEST__INIT;
	Kms__V1__SetRotationPolicyResponse *r;
	Kms__V1__KeyMetadata *md;

	req.key_id = (char *)id;
	req.rotation_period_seconds = period;
	req.max_encryptions_per_version = max;
	if (call(n, who, KM "SetRotationPolicy", &req.base,
		 &kms__v1__set_rotation_policy_response__descriptor, (ProtobufCMessage **)&r,
		 st) != 0)
		return NULL;
	md = r->key;
	r->key = NULL;
	FREE(r);
	return md;
}

static void set_policy_ok(const char *id, uint64_t period, uint64_t max)
{
	kms_rpc_status st;
	Kms__V1__KeyMetadata *md = set_policy(leader(), "admin", id, period, max, &st);

	ck_assert_msg(md != NULL, "SetRotationPolicy %s: %s", id, st.details);
	FREE(md);
}

static uint8_t plain[] = "ledger entry 42";

static Kms__V1__EncryptResponse *encrypt_with(kms_client *c, const char *id, kms_rpc_status *st)
{
	Kms__V1__EncryptRequest req = KMS__V1__ENCRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	req.key_id = (char *)id;
	req.plaintext.data = plain;
	req.plaintext.len = sizeof(plain) - 1;
	kms_client_call(c, KM "Encrypt", &req.base, &kms__v1__encrypt_response__descriptor, &resp,
			st);
	return (Kms__V1__EncryptResponse *)resp;
}

static Kms__V1__EncryptResponse *encrypt_on(int n, const char *id, kms_rpc_status *st)
{
	kms_client *c = kms_test_client(&nodes[n], "app");
	Kms__V1__EncryptResponse *r = encrypt_with(c, id, st);

	kms_client_close(c);
	return r;
}

/* Decrypts blob on node n: 1 when it gives the plaintext back. */
static int decrypts(int n, const ProtobufCBinaryData *blob, kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptResponse *r;
	int ok;

	req.ciphertext_blob = *blob;
	if (call(n, "app", KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor,
		 (ProtobufCMessage **)&r, st) != 0)
		return 0;
	ok = r->plaintext.len == sizeof(plain) - 1 &&
	     memcmp(r->plaintext.data, plain, sizeof(plain) - 1) == 0;
	FREE(r);
	return ok;
}

/* The version a blob names in its own header. */
static uint32_t blob_version(const ProtobufCBinaryData *blob, const char *want_id)
{
	kms_blob_header h;
	const uint8_t *ct;
	size_t ct_len;
	kms_err err = {0};

	ck_assert_msg(kms_blob_decode(blob->data, blob->len, &h, &ct, &ct_len, &err) == KMS_OK,
		      "%s", err.msg);
	ck_assert_str_eq(h.key_id, want_id);
	return h.key_version;
}

/* Polls node n until DescribeKey shows id in state (or a primary of at
 * least version, when state is NULL); the metadata then, the caller's. */
static Kms__V1__KeyMetadata *wait_key(int n, const char *id, const char *state, uint32_t version,
				      long timeout_ms)
{
	kms_rpc_status st = {0};

	for (long until = now_ms() + timeout_ms; now_ms() < until; sleep_ms(100)) {
		Kms__V1__KeyMetadata *md = describe_on(n, id, &st);

		if (md != NULL && (state != NULL ? strcmp(md->key_state, state) == 0
						 : md->primary_version >= version))
			return md;
		if (md != NULL)
			FREE(md);
	}
	ck_abort_msg("node %d: key '%s' never reached %s %u (%s)", n + 1, id,
		     state != NULL ? state : "primary version", state != NULL ? 0 : version,
		     st.details);
	return NULL;
}

/* The secret keys node n's HSM holds for it, as ClusterStatus reports. */
static uint64_t hsm_keys(int n)
{
	kms_rpc_status st;
	Kms__V1__ClusterStatusResponse *s = kms_test_cluster_status(&nodes[leader()], "admin", &st);
	uint64_t keys = 0;
	int found = 0;

	ck_assert_msg(s != NULL, "ClusterStatus: %s", st.details);
	for (size_t i = 0; i < s->n_members; i++) {
		if (s->members[i]->id != nodes[n].id)
			continue;
		ck_assert_msg(s->members[i]->error[0] == '\0', "node %d: %s", n + 1,
			      s->members[i]->error);
		keys = s->members[i]->hsm_secret_keys;
		found = 1;
	}
	FREE(s);
	ck_assert_msg(found && keys > 0, "node %d reports no HSM secret keys", n + 1);
	return keys;
}

static int any_log_contains(const char *text)
{
	for (int n = 0; n < N; n++)
		if (kms_test_file_contains(nodes[n].log, text))
			return 1;
	return 0;
}

/* --- the rotation policy --- */

/*
 * A period of 1 s: within a few seconds every node shows a newer primary
 * the leader made, new blobs use it, and the old blobs decrypt on every
 * node.
 */
START_TEST(rotation_policy_fires)
{
	Kms__V1__EncryptResponse *old[N];
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;

	create_key("tick");
	for (int n = 0; n < N; n++) {
		old[n] = encrypt_on(n, "tick", &st);
		ck_assert_msg(old[n] != NULL, "node %d: %s", n + 1, st.details);
		ck_assert_uint_eq(old[n]->key_version, 1);
	}
	set_policy_ok("tick", 1, 0);
	for (int n = 0; n < N; n++) {
		md = wait_key(n, "tick", NULL, 2, SPREAD_MS);
		ck_assert_uint_eq(md->rotation_period_seconds, 1);
		FREE(md);
	}
	/* Rotation by age stops with the period. */
	set_policy_ok("tick", 0, 0);
	for (int n = 0; n < N; n++) {
		Kms__V1__EncryptResponse *e = encrypt_on(n, "tick", &st);

		ck_assert_msg(e != NULL, "node %d: %s", n + 1, st.details);
		ck_assert_uint_ge(e->key_version, 2);
		ck_assert_uint_eq(blob_version(&e->ciphertext_blob, "tick"), e->key_version);
		FREE(e);
		for (int b = 0; b < N; b++)
			ck_assert_msg(decrypts(n, &old[b]->ciphertext_blob, &st),
				      "node %d cannot decrypt the version-1 blob of node %d: %s",
				      n + 1, b + 1, st.details);
	}
	ck_assert_msg(any_log_contains("key 'tick' rotated to version 2 (its rotation period of "
				       "1 s has elapsed"),
		      "no node logged the rotation and its reason");
	for (int n = 0; n < N; n++)
		FREE(old[n]);
}
END_TEST

/* Bad input: refused with a clear status, and the key is unchanged. */
START_TEST(rotation_policy_bad_input)
{
	static const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0x01};
	Kms__V1__KeyMetadata *md, *after;
	kms_client *c;
	kms_buf raw = {0};
	kms_rpc_status st;
	int l;

	create_key("steady");
	l = leader();
	md = set_policy(l, "admin", "steady", 0, (UINT64_C(1) << 32) + 1, &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_INVALID, "above 2^32");
	/* A negative number sent as a varint is 2^64 - 1. */
	md = set_policy(l, "admin", "steady", 0, UINT64_MAX, &st);
	ASSERT_STATUS(st, S_INVALID, "max_encryptions_per_version");
	md = set_policy(l, "admin", "steady", UINT64_MAX, 0, &st);
	ck_assert_ptr_null(md);
	ck_assert_int_eq(st.code, S_INVALID);
	md = set_policy(l, "admin", "no-such-key", 60, 1000, &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "key 'no-such-key' not found");
	md = set_policy((l + 1) % N, "app", "steady", 60, 1000, &st);
	ASSERT_STATUS(st, S_DENIED, "is not an administrator");
	md = set_policy((l + 1) % N, "other", "steady", 60, 1000, &st);
	ASSERT_STATUS(st, S_DENIED, "is not an administrator");
	c = kms_test_client(&nodes[l], "admin");
	kms_client_call_raw(c, KM "SetRotationPolicy", garbage, sizeof(garbage), &raw, &st);
	kms_client_close(c);
	ASSERT_STATUS(st, S_INVALID, "malformed SetRotationPolicyRequest");
	for (int n = 0; n < N; n++) {
		after = describe_on(n, "steady", &st);
		ck_assert_msg(after != NULL, "%s", st.details);
		ck_assert_uint_eq(after->rotation_period_seconds, 0);
		ck_assert_uint_eq(after->max_encryptions_per_version, UINT64_C(1) << 30);
		ck_assert_uint_eq(after->primary_version, 1);
		FREE(after);
	}
}
END_TEST

/* --- the prefetch of a new primary --- */

/* RotateKey on node n as an administrator: the new primary, or 0 with *st. */
static uint32_t rotate_key(int n, const char *id, kms_rpc_status *st)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	Kms__V1__RotateKeyResponse *r;
	uint32_t v;

	req.key_id = (char *)id;
	if (call(n, "admin", KM "RotateKey", &req.base, &kms__v1__rotate_key_response__descriptor,
		 (ProtobufCMessage **)&r, st) != 0)
		return 0;
	v = r->key->primary_version;
	FREE(r);
	return v;
}

/* The encryptions DescribeKey on node n counts for version v of id. */
static uint64_t counted(int n, const char *id, uint32_t v)
{
	kms_rpc_status st;
	Kms__V1__KeyMetadata *md = describe_on(n, id, &st);
	uint64_t c = 0;

	ck_assert_msg(md != NULL, "node %d: %s", n + 1, st.details);
	for (size_t i = 0; i < md->n_version_details; i++)
		if (md->version_details[i]->version == v)
			c = md->version_details[i]->encryptions;
	FREE(md);
	return c;
}

/* Polls until node n counts want encryptions for version v of id. */
static void wait_counted(int n, const char *id, uint32_t v, uint64_t want)
{
	uint64_t c = 0;

	for (long until = now_ms() + SPREAD_MS; now_ms() < until; sleep_ms(100))
		if ((c = counted(n, id, v)) == want)
			return;
	ck_abort_msg("node %d counts %llu encryptions for '%s' version %u, not %llu", n + 1,
		     (unsigned long long)c, id, v, (unsigned long long)want);
}

/* Polls node n's HSM until it holds want secret keys. */
static void wait_hsm_keys(int n, uint64_t want)
{
	uint64_t k = 0;

	for (long until = now_ms() + SPREAD_MS; now_ms() < until; sleep_ms(100))
		if ((k = hsm_keys(n)) == want)
			return;
	ck_abort_msg("node %d holds %llu HSM secret keys, not %llu", n + 1, (unsigned long long)k,
		     (unsigned long long)want);
}

#define PREFETCHED(id, v) "prefetch: key '" id "' version " v ": a block of encryptions being " \
			  "reserved, unwrapped into the HSM"

/*
 * After a RotateKey, before any Encrypt, every node has reserved a block
 * of the new version (DescribeKey counts three blocks) and unwrapped it
 * into its HSM (one more secret key each); the first Encrypt on each node
 * then reserves and unwraps nothing more.
 */
START_TEST(rotation_prefetches_on_every_node)
{
	uint64_t before[N];
	kms_rpc_status st;
	int l;

	create_key("pre");
	set_policy_ok("pre", 0, 6400); /* blocks of 100 */
	for (int n = 0; n < N; n++)
		before[n] = hsm_keys(n);
	l = leader();
	ck_assert_msg(rotate_key(l, "pre", &st) == 2, "RotateKey: %s", st.details);
	for (int n = 0; n < N; n++) {
		ck_assert_msg(kms_test_wait_log(&nodes[n], PREFETCHED("pre", "2"), SPREAD_MS / 1000),
			      "node %d did not prefetch 'pre' version 2; see %s", n + 1,
			      nodes[n].log);
		wait_hsm_keys(n, before[n] + 1);
	}
	wait_counted(l, "pre", 2, 300);
	for (int n = 0; n < N; n++) {
		Kms__V1__EncryptResponse *e = encrypt_on(n, "pre", &st);

		ck_assert_msg(e != NULL, "node %d: %s", n + 1, st.details);
		ck_assert_uint_eq(e->key_version, 2);
		FREE(e);
		ck_assert_uint_eq(hsm_keys(n), before[n] + 1);
	}
	for (int n = 0; n < N; n++)
		ck_assert_uint_eq(counted(n, "pre", 2), 300);
	/* The old version is left alone: nothing reserved for it. */
	ck_assert_uint_eq(counted(l, "pre", 1), 0);
}
END_TEST

/*
 * Bad input twins. A disabled key's rotation is refused: nothing is
 * prefetched, counted or unwrapped. A key scheduled for deletion right
 * after its rotation, while one follower was down: the follower applies
 * both when it comes back, and its prefetch neither reserves for the key
 * nor makes it usable; what the others reserved before the deletion stays
 * as it was, and every node refuses the key.
 */
START_TEST(prefetch_leaves_disabled_and_deleted_keys_alone)
{
	Kms__V1__DisableKeyRequest dis = KMS__V1__DISABLE_KEY_REQUEST__INIT;
	Kms__V1__ScheduleKeyDeletionRequest sch = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;
	Kms__V1__CancelKeyDeletionRequest can = KMS__V1__CANCEL_KEY_DELETION_REQUEST__INIT;
	uint64_t before[N], kept;
	kms_rpc_status st;
	int l, f;

	create_key("off");
	set_policy_ok("off", 0, 6400);
	l = leader();
	dis.key_id = (char *)"off";
	admin_ok(l, KM "DisableKey", &dis.base, &kms__v1__disable_key_response__descriptor);
	for (int n = 0; n < N; n++)
		before[n] = hsm_keys(n);
	ck_assert_uint_eq(rotate_key(l, "off", &st), 0);
	ASSERT_STATUS(st, S_PRECOND, "key 'off' is disabled");
	sleep_ms(1000);
	for (int n = 0; n < N; n++) {
		Kms__V1__KeyMetadata *md = describe_on(n, "off", &st);

		ck_assert_msg(md != NULL, "%s", st.details);
		ck_assert_uint_eq(md->n_version_details, 1);
		ck_assert_uint_eq(md->version_details[0]->encryptions, 0);
		ck_assert_str_eq(md->key_state, "Disabled");
		FREE(md);
		ck_assert_uint_eq(hsm_keys(n), before[n]);
		ck_assert(!kms_test_file_contains(nodes[n].log, "prefetch: key 'off'"));
	}

	create_key("brief");
	set_policy_ok("brief", 0, 6400);
	l = leader();
	f = (l + 1) % N;
	kms_test_node_signal(&nodes[f], SIGKILL);
	ck_assert_msg(rotate_key(l, "brief", &st) == 2, "RotateKey: %s", st.details);
	sch.key_id = (char *)"brief";
	sch.pending_window_days = 7;
	admin_ok(l, KM "ScheduleKeyDeletion", &sch.base,
		 &kms__v1__schedule_key_deletion_response__descriptor);
	/* The others may have reserved before the deletion was applied: 0 to
	 * two blocks, and never more from now on. */
	sleep_ms(500);
	kept = counted(l, "brief", 2);
	ck_assert_uint_le(kept, 200);
	kms_test_node_start(&nodes[f]);
	FREE(wait_key(f, "brief", "PendingDeletion", 0, SPREAD_MS));
	kms_test_wait_log(&nodes[f], "prefetch: key 'brief' version 2", 3);
	fprintf(stderr, "node %d back after the deletion: %s\n", f + 1,
		kms_test_file_contains(nodes[f].log,
				       "prefetch: key 'brief' version 2 skipped: key 'brief' is "
				       "pending deletion")
			? "its prefetch saw the deletion and skipped"
			: "no prefetch of 'brief' logged");
	ck_assert(!kms_test_file_contains(nodes[f].log, PREFETCHED("brief", "2")));
	sleep_ms(1000);
	for (int n = 0; n < N; n++) {
		Kms__V1__KeyMetadata *md = wait_key(n, "brief", "PendingDeletion", 0, SPREAD_MS);

		FREE(md);
		ck_assert_uint_eq(counted(n, "brief", 2), kept);
		ck_assert_ptr_null(encrypt_on(n, "brief", &st));
		ASSERT_STATUS(st, S_PRECOND, "is pending deletion");
	}
	/* Out of the way of the deletion test's reminders. */
	can.key_id = (char *)"brief";
	admin_ok(leader(), KM "CancelKeyDeletion", &can.base,
		 &kms__v1__cancel_key_deletion_response__descriptor);
}
END_TEST

/*
 * A node stopped (SIGTERM: a clean exit, checked, under the sanitizers in
 * their run) or killed (SIGKILL) right after a rotation, while its
 * prefetch may be under way: it comes back, serves the newest version, and
 * the version's count stays within what the nodes reserved.
 */
START_TEST(prefetch_survives_stop_and_kill)
{
	Kms__V1__EncryptResponse *e = NULL;
	kms_rpc_status st;
	int l, f, g;

	create_key("cut");
	set_policy_ok("cut", 0, 6400);
	l = leader();
	f = (l + 1) % N;
	g = (l + 2) % N;
	ck_assert_msg(rotate_key(l, "cut", &st) == 2, "RotateKey: %s", st.details);
	kms_test_node_signal(&nodes[g], SIGTERM);
	kms_test_node_start(&nodes[g]);
	l = leader();
	ck_assert_msg(rotate_key(l, "cut", &st) == 3, "RotateKey: %s", st.details);
	kms_test_node_signal(&nodes[f], SIGKILL);
	kms_test_node_start(&nodes[f]);
	for (int n = 0; n < N; n++) {
		long until = now_ms() + 2 * SPREAD_MS;

		while ((e = encrypt_on(n, "cut", &st)) == NULL && now_ms() < until)
			sleep_ms(200);
		ck_assert_msg(e != NULL, "node %d does not encrypt after the restarts: %s", n + 1,
			      st.details);
		ck_assert_uint_eq(e->key_version, 3);
		for (int m = 0; m < N; m++)
			ck_assert_msg(decrypts(m, &e->ciphertext_blob, &st), "node %d: %s", m + 1,
				      st.details);
		FREE(e);
	}
	/* Three nodes, a block each, and one more for a restarted node's new
	 * life at most (a killed node's block is lost, never reused). */
	ck_assert_uint_le(counted(leader(), "cut", 3), 500);
	ck_assert_uint_ge(counted(leader(), "cut", 3), 100);
}
END_TEST

/* --- the encryption bound --- */

/* One client per node encrypting without pause, counting blobs per version. */
struct loader {
	int n;
	const char *id;
	atomic_int *stop;
	_Atomic long restarted_at; /* when node n was started again (ms), or 0 */
	unsigned per_version[MAX_VERSIONS + 1];
	unsigned ok, unavailable, other, catching_up;
	char other_msg[600];
	char sample[600];
};

/* The refusals a client may meet while versions run out and a node dies. */
static int expected_refusal(const kms_rpc_status *st)
{
	return st->code == S_UNAVAILABLE;
}

/*
 * A node started again serves for a moment on the state it replayed from
 * its own disk, before the leader's commit index reaches it (the key made
 * since its last snapshot may be missing): a refusal then is not about
 * counting. Seen here, counted apart and reported; see docs/CONSISTENCY.md.
 */
static int catching_up(const struct loader *L, const kms_rpc_status *st)
{
	long at = atomic_load(&L->restarted_at);

	return st->code == S_DENIED && at != 0 && now_ms() - at < 10000;
}

static void *load(void *arg)
{
	struct loader *L = arg;
	kms_client *c = kms_test_client(&nodes[L->n], "app");

	while (!atomic_load(L->stop)) {
		kms_rpc_status st = {0};
		Kms__V1__EncryptResponse *e = encrypt_with(c, L->id, &st);
		uint32_t v;

		if (e == NULL) {
			if (expected_refusal(&st)) {
				L->unavailable++;
				if (strstr(st.details, "no reserved") != NULL ||
				    strstr(st.details, "maximum") != NULL)
					snprintf(L->sample, sizeof(L->sample), "%s", st.details);
			} else if (catching_up(L, &st)) {
				L->catching_up++;
			} else if (L->other++ == 0) {
				snprintf(L->other_msg, sizeof(L->other_msg), "%d %s", st.code,
					 st.details);
			}
			/* A node killed and started again: a new channel finds it. */
			kms_client_close(c);
			sleep_ms(20);
			c = kms_test_client(&nodes[L->n], "app");
			continue;
		}
		v = blob_version(&e->ciphertext_blob, L->id);
		if (v != e->key_version || v == 0 || v > MAX_VERSIONS) {
			snprintf(L->other_msg, sizeof(L->other_msg),
				 "a blob names version %u, its answer %u", v, e->key_version);
			L->other++;
		} else {
			L->per_version[v]++;
			L->ok++;
		}
		FREE(e);
	}
	kms_client_close(c);
	return NULL;
}

static unsigned total_ok(struct loader *L)
{
	unsigned sum = 0;

	for (int i = 0; i < N; i++)
		sum += __atomic_load_n(&L[i].ok, __ATOMIC_RELAXED);
	return sum;
}

/*
 * max_encryptions_per_version 1000, Encrypt through all three nodes at
 * once, the leader killed with SIGKILL and started again in between: the
 * leader (the old one, then the new one) rotates the key as versions run
 * out, no version ever made more blobs than the bound, and each made no
 * more than the encryptions DescribeKey counts for it (reserved before
 * use), which are within the bound.
 */
START_TEST(encryption_bound_holds_through_kill_9)
{
	static struct loader L[N];
	pthread_t th[N];
	atomic_int stop = 0;
	Kms__V1__KeyMetadata *md;
	unsigned sum[MAX_VERSIONS + 1] = {0}, versions_used = 0;
	long until;
	int victim;

	create_key("bound");
	set_policy_ok("bound", 0, BOUND);
	for (int n = 0; n < N; n++) {
		memset(&L[n], 0, sizeof(L[n]));
		L[n].n = n;
		L[n].id = "bound";
		L[n].stop = &stop;
		ck_assert_int_eq(pthread_create(&th[n], NULL, load, &L[n]), 0);
	}
	for (until = now_ms() + 60000; total_ok(L) < 2 * BOUND && now_ms() < until;)
		sleep_ms(50);
	ck_assert_msg(total_ok(L) >= 2 * BOUND, "only %u blobs in 60 s", total_ok(L));
	victim = leader();
	kms_test_node_signal(&nodes[victim], SIGKILL);
	sleep_ms(1500);
	atomic_store(&L[victim].restarted_at, now_ms());
	kms_test_node_start(&nodes[victim]);
	for (until = now_ms() + 90000; total_ok(L) < 5 * BOUND && now_ms() < until;)
		sleep_ms(50);
	atomic_store(&stop, 1);
	for (int n = 0; n < N; n++)
		pthread_join(th[n], NULL);
	for (int n = 0; n < N; n++) {
		ck_assert_msg(L[n].other == 0, "node %d: %u unexpected answers, first: %s", n + 1,
			      L[n].other, L[n].other_msg);
		fprintf(stderr, "node %d: %u blobs, %u UNAVAILABLE (last counting one: %s), %u "
				"refused while catching up after its restart\n",
			n + 1, L[n].ok, L[n].unavailable, L[n].sample, L[n].catching_up);
		for (int v = 1; v <= MAX_VERSIONS; v++)
			sum[v] += L[n].per_version[v];
	}
	ck_assert_msg(total_ok(L) >= 5 * BOUND, "only %u blobs in 90 s", total_ok(L));
	md = wait_key(leader(), "bound", "Enabled", 0, SPREAD_MS);
	for (int v = 1; v <= MAX_VERSIONS; v++) {
		uint64_t counted = 0;

		if (sum[v] == 0)
			continue;
		versions_used++;
		for (size_t i = 0; i < md->n_version_details; i++)
			if (md->version_details[i]->version == (uint32_t)v)
				counted = md->version_details[i]->encryptions;
		ck_assert_msg(sum[v] <= BOUND, "version %d made %u blobs, over the bound of %d", v,
			      sum[v], BOUND);
		ck_assert_msg(sum[v] <= counted,
			      "version %d made %u blobs but only %llu encryptions were reserved", v,
			      sum[v], (unsigned long long)counted);
	}
	for (size_t i = 0; i < md->n_version_details; i++)
		ck_assert_msg(md->version_details[i]->encryptions <= BOUND,
			      "version %u counts %llu encryptions", md->version_details[i]->version,
			      (unsigned long long)md->version_details[i]->encryptions);
	/* 5,000 blobs under a bound of 1,000: at least five versions. */
	ck_assert_uint_ge(versions_used, 5);
	ck_assert_uint_ge(md->primary_version, 5);
	FREE(md);
	ck_assert_msg(any_log_contains("key 'bound' rotated to version 2 (version 1 has "),
		      "no leader logged a rotation by count");
}
END_TEST

/* --- deletion --- */

/* A destroy-key root operation for key_id. */
static void destroy_op(Kms__V1__RootOperation *op, Kms__V1__DestroyKeyOperation *d,
		       const char *key_id)
{
	kms__v1__root_operation__init(op);
	kms__v1__destroy_key_operation__init(d);
	d->key_id = (char *)key_id;
	op->op_case = KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY;
	op->destroy_key = d;
}

/*
 * A deletion window of 7 "days" (7 s here): crypto calls are refused
 * during it. Its end destroys nothing (destruction is a root operation):
 * the key stays pending deletion everywhere, whole, and the leader names
 * it as waiting for the operators. One operator's approval of destroy-key
 * changes nothing; the second destroys it: every node shows it Destroyed,
 * refuses its blobs saying so, and holds one HSM key fewer (the version
 * it had unwrapped). A deletion cancelled in time destroys nothing, and a
 * destroy-key proposal for it fails saying why.
 */
START_TEST(deletion_destroys_material_on_every_node)
{
	Kms__V1__ScheduleKeyDeletionRequest sch = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;
	Kms__V1__CancelKeyDeletionRequest can = KMS__V1__CANCEL_KEY_DELETION_REQUEST__INIT;
	Kms__V1__EnableKeyRequest en = KMS__V1__ENABLE_KEY_REQUEST__INIT;
	Kms__V1__EncryptResponse *doomed, *spared;
	Kms__V1__RootOperation op;
	Kms__V1__DestroyKeyOperation dop;
	Kms__V1__Proposal *p, *after = NULL;
	Kms__V1__KeyMetadata *md;
	uint64_t before[N];
	kms_rpc_status st;
	int l;

	create_key("doomed");
	create_key("spared");
	l = leader();
	doomed = encrypt_on(l, "doomed", &st);
	ck_assert_msg(doomed != NULL, "%s", st.details);
	spared = encrypt_on(l, "spared", &st);
	ck_assert_msg(spared != NULL, "%s", st.details);
	/* Every node unwraps both keys' version 1 into its HSM. */
	for (int n = 0; n < N; n++) {
		ck_assert_msg(decrypts(n, &doomed->ciphertext_blob, &st), "%s", st.details);
		ck_assert_msg(decrypts(n, &spared->ciphertext_blob, &st), "%s", st.details);
		before[n] = hsm_keys(n);
	}
	sch.key_id = (char *)"doomed";
	sch.pending_window_days = 7;
	admin_ok(l, KM "ScheduleKeyDeletion", &sch.base,
		 &kms__v1__schedule_key_deletion_response__descriptor);
	sch.key_id = (char *)"spared";
	admin_ok(l, KM "ScheduleKeyDeletion", &sch.base,
		 &kms__v1__schedule_key_deletion_response__descriptor);
	can.key_id = (char *)"spared";
	admin_ok(l, KM "CancelKeyDeletion", &can.base,
		 &kms__v1__cancel_key_deletion_response__descriptor);
	/* During the window: refused like a disabled key. */
	ck_assert(!decrypts(l, &doomed->ciphertext_blob, &st));
	ASSERT_STATUS(st, S_PRECOND, "is pending deletion");
	/* Past its end: still pending deletion, and nothing destroyed. */
	for (long until = now_ms() + 7000 + SPREAD_MS;
	     !any_log_contains("await destruction by the operators (kmsctl quorum propose "
			       "destroy-key KEY_ID): 'doomed'");
	     sleep_ms(100))
		ck_assert_msg(now_ms() < until, "no leader named 'doomed' as awaiting destruction");
	for (int n = 0; n < N; n++) {
		md = describe_on(n, "doomed", &st);
		ck_assert_msg(md != NULL, "%s", st.details);
		ck_assert_str_eq(md->key_state, "PendingDeletion");
		ck_assert_int_le(md->deletion_date_unix, time(NULL));
		ck_assert_str_eq(md->version_details[0]->state, "Enabled");
		FREE(md);
		ck_assert_uint_eq(hsm_keys(n), before[n]);
	}
	ck_assert(!any_log_contains("key 'doomed' destroyed"));
	/* One operator of two: nothing yet. */
	destroy_op(&op, &dop, "doomed");
	p = kms_test_propose(&nodes[l], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator1", NULL, &st),
			 S_OK);
	md = describe_on(l, "doomed", &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	ck_assert_str_eq(md->key_state, "PendingDeletion");
	FREE(md);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator2", &after, &st),
			 S_OK);
	ck_assert_str_eq(after->state, "executed");
	FREE(after);
	FREE(p);
	for (int n = 0; n < N; n++) {
		md = wait_key(n, "doomed", "Destroyed", 0, SPREAD_MS);
		for (size_t i = 0; i < md->n_version_details; i++)
			ck_assert_str_eq(md->version_details[i]->state, "Destroyed");
		FREE(md);
	}
	for (int n = 0; n < N; n++) {
		Kms__V1__EncryptResponse *e;
		long until = now_ms() + SPREAD_MS;

		ck_assert(!decrypts(n, &doomed->ciphertext_blob, &st));
		ASSERT_STATUS(st, S_PRECOND, "key 'doomed' was destroyed");
		e = encrypt_on(n, "doomed", &st);
		ck_assert_ptr_null(e);
		ASSERT_STATUS(st, S_PRECOND, "key 'doomed' was destroyed");
		/* Its version's HSM object went when the node applied the destruction. */
		while (hsm_keys(n) != before[n] - 1 && now_ms() < until)
			sleep_ms(100);
		ck_assert_msg(hsm_keys(n) == before[n] - 1,
			      "node %d holds %llu HSM secret keys, %llu before the destruction",
			      n + 1, (unsigned long long)hsm_keys(n),
			      (unsigned long long)before[n]);
	}
	/* The cancelled one: past its date, disabled, whole; the operators
	 * cannot destroy it before an administrator schedules it again. */
	destroy_op(&op, &dop, "spared");
	p = kms_test_quorum_run(&nodes[l], &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_str_eq(p->state, "failed");
	ck_assert_msg(strstr(p->result, "key 'spared' is Disabled, not pending deletion") != NULL,
		      "%s", p->result);
	FREE(p);
	for (int n = 0; n < N; n++) {
		md = describe_on(n, "spared", &st);
		ck_assert_msg(md != NULL, "%s", st.details);
		ck_assert_str_eq(md->key_state, "Disabled");
		ck_assert_str_eq(md->version_details[0]->state, "Enabled");
		FREE(md);
	}
	en.key_id = (char *)"spared";
	admin_ok(l, KM "EnableKey", &en.base, &kms__v1__enable_key_response__descriptor);
	for (int n = 0; n < N; n++) {
		long until = now_ms() + SPREAD_MS;

		while (!decrypts(n, &spared->ciphertext_blob, &st) && now_ms() < until)
			sleep_ms(100);
		ck_assert_msg(decrypts(n, &spared->ciphertext_blob, &st), "node %d: %s", n + 1,
			      st.details);
		ck_assert_uint_eq(hsm_keys(n), before[n] - 1);
	}
	FREE(doomed);
	FREE(spared);
}
END_TEST

/* --- no quorum --- */

/*
 * Two nodes stopped: the third spends what it reserved, then Encrypt fails
 * closed with UNAVAILABLE saying why, and no blob exists beyond what was
 * reserved. With the nodes back, it encrypts again.
 */
START_TEST(no_quorum_fails_closed)
{
	Kms__V1__EncryptResponse *e;
	Kms__V1__KeyMetadata *md;
	kms_client *c;
	kms_rpc_status st = {0};
	unsigned made = 0;
	int l = leader(), a = (l + 1) % N;

	create_key("closed");
	set_policy_ok("closed", 0, 6400); /* blocks of 100 */
	c = kms_test_client(&nodes[a], "app");
	while ((e = encrypt_with(c, "closed", &st)) == NULL && st.code == S_UNAVAILABLE)
		sleep_ms(100); /* the policy may reach node a a moment later */
	ck_assert_msg(e != NULL, "%s", st.details);
	FREE(e);
	made++;
	/*
	 * SIGKILL: the quorum is gone at once. A graceful stop takes seconds on
	 * a loaded machine, long enough for node a to reserve more blocks.
	 */
	for (int n = 0; n < N; n++)
		if (n != a)
			kms_test_node_signal(&nodes[n], SIGKILL);
	for (;;) {
		e = encrypt_with(c, "closed", &st);
		if (e == NULL)
			break;
		ck_assert_uint_eq(e->key_version, 1);
		FREE(e);
		ck_assert_uint_le(++made, 2 * 100 + 1);
	}
	kms_client_close(c);
	ASSERT_STATUS(st, S_UNAVAILABLE,
		      "no reserved encryptions left for key 'closed' version 1 and none could be "
		      "reserved");
	ASSERT_STATUS(st, S_UNAVAILABLE, "(no Raft quorum?)");
	for (int n = 0; n < N; n++)
		if (n != a)
			kms_test_node_start(&nodes[n]);
	md = wait_key(leader(), "closed", "Enabled", 0, SPREAD_MS);
	ck_assert_msg(made <= md->version_details[0]->encryptions,
		      "%u blobs made, %llu encryptions reserved", made,
		      (unsigned long long)md->version_details[0]->encryptions);
	FREE(md);
	{
		long until = now_ms() + 2 * SPREAD_MS;

		while ((e = encrypt_on(a, "closed", &st)) == NULL && now_ms() < until)
			sleep_ms(200);
		ck_assert_msg(e != NULL, "node %d does not encrypt again: %s", a + 1, st.details);
		FREE(e);
	}
}
END_TEST

static Suite *rotation_suite(void)
{
	Suite *s = suite_create("rotation");
	TCase *tc = tcase_create("three nodes");

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, rotation_policy_fires);
	tcase_add_test(tc, rotation_policy_bad_input);
	tcase_add_test(tc, rotation_prefetches_on_every_node);
	tcase_add_test(tc, prefetch_leaves_disabled_and_deleted_keys_alone);
	tcase_add_test(tc, prefetch_survives_stop_and_kill);
	tcase_add_test(tc, deletion_destroys_material_on_every_node);
	tcase_add_test(tc, encryption_bound_holds_through_kill_9);
	tcase_add_test(tc, no_quorum_fails_closed);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(rotation_suite());

	/* The nodes serve the whole test case: tests kill and start them, and
	 * gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
