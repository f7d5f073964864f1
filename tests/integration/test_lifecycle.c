/* test_lifecycle.c - the key lifecycle on three real kmsd processes: rotation, disable and enable, deletion windows, aliases, key policies, and who may do any of it. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
/* A "day" of a deletion window is a second here, and rotation periods may
 * be as short as 2 s: test-only settings (docs/OPERATIONS.md). */
#define NODE_ARGS "--election-timeout 1000 --heartbeat-timeout 100 " \
		  "--keys-option deletion_day_seconds=1 --keys-option min_rotation_period=2"
/* How long a change may take to reach every node (a round trip or two). */
#define SPREAD_MS 5000

enum { S_OK = 0, S_INVALID = 3, S_NOT_FOUND = 5, S_EXISTS = 6, S_DENIED = 7, S_PRECOND = 9 };

static kms_test_env env;
static kms_test_node nodes[N];

#define ASSERT_STATUS(st, want, text)                                                             \
	do {                                                                                      \
		ck_assert_msg((st).code == (want), "want status %d, got %d: %s", (int)(want),     \
			      (st).code, (st).details);                                           \
		ck_assert_msg(strstr((st).details, (text)) != NULL,                               \
			      "status details '%s' do not mention '%s'", (st).details, (text));   \
	} while (0)

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&t, NULL);
}

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

/* One call to node n as who; *resp (or NULL) is the caller's. */
static int call(int n, const char *who, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp,
		kms_rpc_status *st)
{
	kms_client *c = kms_test_client(&nodes[n], who);
	int code;

	*resp = NULL;
	code = kms_client_call(c, method, req, desc, resp, st);
	kms_client_close(c);
	return code;
}

/* A follower, and the leader. */
static int follower(void)
{
	int l = kms_test_wait_leader(nodes, N, 5000);

	ck_assert_int_ge(l, 0);
	return (l + 1) % N;
}

static int leader(void)
{
	int l = kms_test_wait_leader(nodes, N, 5000);

	ck_assert_int_ge(l, 0);
	return l;
}

static Kms__V1__KeyMetadata *describe_on(int n, const char *name, kms_rpc_status *st);

/* Polls until every node describes name (a key id or an alias). */
static void wait_known(const char *name)
{
	for (int n = 0; n < N; n++) {
		kms_rpc_status st;
		Kms__V1__KeyMetadata *md = NULL;

		for (int t = 0; md == NULL && t < SPREAD_MS; t += 100) {
			md = describe_on(n, name, &st);
			if (md == NULL)
				sleep_ms(100);
		}
		ck_assert_msg(md != NULL, "node %d does not know '%s': %s", n + 1, name, st.details);
		FREE(md);
	}
}

/* CreateKey on the leader, granting the app everything; known everywhere
 * when this returns. */
static void create_key(const char *id)
{
	kms_client *c = kms_test_client(&nodes[leader()], "admin");
	kms_rpc_status st;

	ck_assert_msg(kms_test_create_key(c, id, KMS_TEST_APP, &st) == 0, "CreateKey %s: %s", id,
		      st.details);
	kms_client_close(c);
	wait_known(id);
}

static Kms__V1__KeyMetadata *describe_on(int n, const char *name, kms_rpc_status *st)
{
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	Kms__V1__DescribeKeyResponse *r;
	Kms__V1__KeyMetadata *md;

	req.key_id = (char *)name;
	if (call(n, "admin", KM "DescribeKey", &req.base, &kms__v1__describe_key_response__descriptor,
		 (ProtobufCMessage **)&r, st) != 0)
		return NULL;
	md = r->key;
	r->key = NULL;
	FREE(r);
	return md;
}

static Kms__V1__GenerateDataKeyResponse *gen_key(int n, const char *id, kms_rpc_status *st)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp;

	req.key_id = (char *)id;
	call(n, "app", KM "GenerateDataKey", &req.base,
	     &kms__v1__generate_data_key_response__descriptor, &resp, st);
	return (Kms__V1__GenerateDataKeyResponse *)resp;
}

static Kms__V1__EncryptResponse *encrypt_on(int n, const char *id, kms_rpc_status *st)
{
	static uint8_t pt[] = "ledger entry 42";
	Kms__V1__EncryptRequest req = KMS__V1__ENCRYPT_REQUEST__INIT;
	ProtobufCMessage *resp;

	req.key_id = (char *)id;
	req.plaintext.data = pt;
	req.plaintext.len = sizeof(pt) - 1;
	call(n, "app", KM "Encrypt", &req.base, &kms__v1__encrypt_response__descriptor, &resp, st);
	return (Kms__V1__EncryptResponse *)resp;
}

/* Decrypts blob on node n (key_id: optional); 1 if it gave pt back. */
static int decrypts(int n, const ProtobufCBinaryData *blob, const char *key_id,
		    const ProtobufCBinaryData *pt, kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptResponse *r;
	int ok;

	req.ciphertext_blob = *blob;
	req.key_id = (char *)(key_id != NULL ? key_id : "");
	if (call(n, "app", KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor,
		 (ProtobufCMessage **)&r, st) != 0)
		return 0;
	ok = pt == NULL || (r->plaintext.len == pt->len &&
			    memcmp(r->plaintext.data, pt->data, pt->len) == 0);
	FREE(r);
	return ok;
}

/* An administrator's key call whose answer is {KeyMetadata key = 1}, as
 * who on node n; the key, or NULL with st. */
static Kms__V1__KeyMetadata *admin_call(int n, const char *who, const char *method,
					const ProtobufCMessage *req,
					const ProtobufCMessageDescriptor *desc, kms_rpc_status *st)
{
	ProtobufCMessage *resp;
	const ProtobufCFieldDescriptor *f;
	Kms__V1__KeyMetadata *md, **slot;

	if (call(n, who, method, req, desc, &resp, st) != 0)
		return NULL;
	f = protobuf_c_message_descriptor_get_field_by_name(desc, "key");
	ck_assert_ptr_nonnull(f);
	slot = (Kms__V1__KeyMetadata **)(void *)((char *)resp + f->offset);
	md = *slot;
	*slot = NULL;
	protobuf_c_message_free_unpacked(resp, NULL);
	return md;
}

static Kms__V1__KeyMetadata *rotate(int n, const char *who, const char *id, kms_rpc_status *st)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;

	req.key_id = (char *)id;
	return admin_call(n, who, KM "RotateKey", &req.base, &kms__v1__rotate_key_response__descriptor,
			  st);
}

static Kms__V1__KeyMetadata *set_enabled(int n, const char *who, const char *id, int on,
					 kms_rpc_status *st)
{
	Kms__V1__EnableKeyRequest en = KMS__V1__ENABLE_KEY_REQUEST__INIT;
	Kms__V1__DisableKeyRequest dis = KMS__V1__DISABLE_KEY_REQUEST__INIT;

	en.key_id = dis.key_id = (char *)id;
	if (on)
		return admin_call(n, who, KM "EnableKey", &en.base,
				  &kms__v1__enable_key_response__descriptor, st);
	return admin_call(n, who, KM "DisableKey", &dis.base,
			  &kms__v1__disable_key_response__descriptor, st);
}

static Kms__V1__KeyMetadata *schedule(int n, const char *id, uint32_t days, kms_rpc_status *st)
{
	Kms__V1__ScheduleKeyDeletionRequest req = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;

	req.key_id = (char *)id;
	req.pending_window_days = days;
	return admin_call(n, "admin", KM "ScheduleKeyDeletion", &req.base,
			  &kms__v1__schedule_key_deletion_response__descriptor, st);
}

static Kms__V1__KeyMetadata *cancel(int n, const char *id, kms_rpc_status *st)
{
	Kms__V1__CancelKeyDeletionRequest req = KMS__V1__CANCEL_KEY_DELETION_REQUEST__INIT;

	req.key_id = (char *)id;
	return admin_call(n, "admin", KM "CancelKeyDeletion", &req.base,
			  &kms__v1__cancel_key_deletion_response__descriptor, st);
}

/* An alias call ({alias_name, key_id}); the AliasEntry, or NULL with st. */
static Kms__V1__AliasEntry *alias_call(int n, const char *method, const char *name,
				       const char *key_id, kms_rpc_status *st)
{
	Kms__V1__CreateAliasRequest cr = KMS__V1__CREATE_ALIAS_REQUEST__INIT;
	Kms__V1__UpdateAliasRequest ur = KMS__V1__UPDATE_ALIAS_REQUEST__INIT;
	int update = strstr(method, "Update") != NULL;
	ProtobufCMessage *resp;
	Kms__V1__AliasEntry *e;

	cr.alias_name = ur.alias_name = (char *)name;
	cr.key_id = ur.key_id = (char *)key_id;
	if (call(n, "admin", method, update ? &ur.base : &cr.base,
		 update ? &kms__v1__update_alias_response__descriptor
			: &kms__v1__create_alias_response__descriptor,
		 &resp, st) != 0)
		return NULL;
	if (update) {
		e = ((Kms__V1__UpdateAliasResponse *)resp)->alias;
		((Kms__V1__UpdateAliasResponse *)resp)->alias = NULL;
	} else {
		e = ((Kms__V1__CreateAliasResponse *)resp)->alias;
		((Kms__V1__CreateAliasResponse *)resp)->alias = NULL;
	}
	FREE(resp);
	return e;
}

/* Polls until every node answers GenerateDataKey on id with want (and a
 * message holding text, for a refusal). */
static void wait_everywhere(const char *id, int want, const char *text)
{
	for (int n = 0; n < N; n++) {
		kms_rpc_status st = {0};
		int t;

		for (t = 0; t < SPREAD_MS; t += 100) {
			Kms__V1__GenerateDataKeyResponse *g = gen_key(n, id, &st);

			if (g != NULL)
				FREE(g);
			if (st.code == want && (text == NULL || strstr(st.details, text) != NULL))
				break;
			sleep_ms(100);
		}
		ck_assert_msg(t < SPREAD_MS, "node %d: GenerateDataKey on '%s' gave %d '%s', not %d",
			      n + 1, id, st.code, st.details, want);
	}
}

/* Polls until node n describes id with this primary version. */
static void wait_primary(int n, const char *id, uint32_t v)
{
	for (int t = 0; t < SPREAD_MS; t += 100) {
		kms_rpc_status st;
		Kms__V1__KeyMetadata *md = describe_on(n, id, &st);
		int ok = md != NULL && md->primary_version == v;

		if (md != NULL)
			FREE(md);
		if (ok)
			return;
		sleep_ms(100);
	}
	ck_abort_msg("node %d never saw version %u of '%s' as the primary", n + 1, v, id);
}

/* --- rotation --- */

START_TEST(rotate_then_old_blobs_decrypt_on_every_node)
{
	Kms__V1__GenerateDataKeyResponse *v1, *v2;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	int f = follower();

	create_key("rot");
	v1 = gen_key(leader(), "rot", &st);
	ck_assert_msg(v1 != NULL, "%s", st.details);
	ck_assert_uint_eq(v1->key_version, 1);

	/* Through a follower: forwarded, answered once applied there. */
	md = rotate(f, "admin", "rot", &st);
	ck_assert_msg(md != NULL, "RotateKey: %s", st.details);
	ck_assert_str_eq(md->key_id, "rot");
	ck_assert_uint_eq(md->primary_version, 2);
	ck_assert_uint_eq(md->n_versions, 2);
	ck_assert_uint_eq(md->n_version_details, 2);
	ck_assert_str_eq(md->version_details[1]->state, "Enabled");
	ck_assert_int_gt(md->version_details[1]->created_at_unix, 0);
	FREE(md);
	md = rotate(leader(), "admin", "rot", &st);
	ck_assert_msg(md != NULL, "RotateKey: %s", st.details);
	ck_assert_uint_eq(md->primary_version, 3);
	FREE(md);

	for (int n = 0; n < N; n++) {
		wait_primary(n, "rot", 3);
		/* The old blob still decrypts; new ones use the new version. */
		ck_assert_msg(decrypts(n, &v1->ciphertext_blob, NULL, &v1->plaintext, &st),
			      "node %d: the version-1 blob: %s", n + 1, st.details);
		v2 = gen_key(n, "rot", &st);
		ck_assert_msg(v2 != NULL, "%s", st.details);
		ck_assert_uint_eq(v2->key_version, 3);
		for (int m = 0; m < N; m++)
			ck_assert_msg(decrypts(m, &v2->ciphertext_blob, "rot", &v2->plaintext, &st),
				      "node %d's blob on node %d: %s", n + 1, m + 1, st.details);
		FREE(v2);
	}
	FREE(v1);

	md = rotate(f, "admin", "nope", &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_NOT_FOUND, "key 'nope' not found");
	md = rotate(f, "admin", "bad id!", &st);
	ASSERT_STATUS(st, S_INVALID, "neither a key id nor an alias");
}
END_TEST

/* --- disable, enable --- */

START_TEST(disabled_key_refuses_crypto_on_every_node)
{
	Kms__V1__GenerateDataKeyResponse *g;
	Kms__V1__EncryptResponse *e;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	int f = follower();

	create_key("dis");
	g = gen_key(leader(), "dis", &st);
	ck_assert_msg(g != NULL, "%s", st.details);
	md = set_enabled(f, "admin", "dis", 0, &st);
	ck_assert_msg(md != NULL, "DisableKey: %s", st.details);
	ck_assert_str_eq(md->key_state, "Disabled");
	ck_assert(!md->enabled);
	FREE(md);
	wait_everywhere("dis", S_PRECOND, "key 'dis' is disabled");
	for (int n = 0; n < N; n++) {
		e = encrypt_on(n, "dis", &st);
		ck_assert_ptr_null(e);
		ASSERT_STATUS(st, S_PRECOND, "key 'dis' is disabled");
		ck_assert(!decrypts(n, &g->ciphertext_blob, NULL, NULL, &st));
		ASSERT_STATUS(st, S_PRECOND, "key 'dis' is disabled");
		/* It keeps its material and its description. */
		md = describe_on(n, "dis", &st);
		ck_assert_msg(md != NULL, "%s", st.details);
		ck_assert_str_eq(md->key_state, "Disabled");
		FREE(md);
	}
	/* Disabling again is no error. */
	md = set_enabled(leader(), "admin", "dis", 0, &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	FREE(md);
	md = set_enabled(f, "admin", "dis", 1, &st);
	ck_assert_msg(md != NULL, "EnableKey: %s", st.details);
	ck_assert_str_eq(md->key_state, "Enabled");
	FREE(md);
	wait_everywhere("dis", S_OK, NULL);
	for (int n = 0; n < N; n++)
		ck_assert_msg(decrypts(n, &g->ciphertext_blob, NULL, &g->plaintext, &st),
			      "node %d: %s", n + 1, st.details);
	FREE(g);
}
END_TEST

/* --- deletion --- */

START_TEST(deletion_window_refuses_and_cancel_leaves_disabled)
{
	Kms__V1__GenerateDataKeyResponse *g;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	time_t before;
	int f = follower();

	create_key("del");
	g = gen_key(leader(), "del", &st);
	ck_assert_msg(g != NULL, "%s", st.details);
	/* 7 to 30 days; a day is 1 s in this cluster. */
	md = schedule(f, "del", 6, &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_INVALID, "pending_window_days must be 7 to 30 (0 means 30), not 6");
	md = schedule(f, "del", 31, &st);
	ASSERT_STATUS(st, S_INVALID, "not 31");
	before = time(NULL);
	md = schedule(f, "del", 0, &st);
	ck_assert_msg(md != NULL, "ScheduleKeyDeletion: %s", st.details);
	ck_assert_str_eq(md->key_state, "PendingDeletion");
	ck_assert_int_ge(md->deletion_date_unix, before + 30);
	ck_assert_int_le(md->deletion_date_unix, time(NULL) + 30);
	FREE(md);
	wait_everywhere("del", S_PRECOND, "key 'del' is pending deletion (on ");
	for (int n = 0; n < N; n++) {
		ck_assert(!decrypts(n, &g->ciphertext_blob, NULL, NULL, &st));
		ASSERT_STATUS(st, S_PRECOND, "pending deletion");
	}
	md = schedule(leader(), "del", 7, &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_PRECOND, "cancel it first");
	md = set_enabled(f, "admin", "del", 1, &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_PRECOND, "cancel the deletion first");

	md = cancel(f, "del", &st);
	ck_assert_msg(md != NULL, "CancelKeyDeletion: %s", st.details);
	ck_assert_str_eq(md->key_state, "Disabled");
	ck_assert_int_eq(md->deletion_date_unix, 0);
	FREE(md);
	wait_everywhere("del", S_PRECOND, "key 'del' is disabled");
	md = cancel(f, "del", &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_PRECOND, "is not pending deletion (it is Disabled)");
	md = set_enabled(f, "admin", "del", 1, &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	FREE(md);
	wait_everywhere("del", S_OK, NULL);
	ck_assert_msg(decrypts(f, &g->ciphertext_blob, NULL, &g->plaintext, &st), "%s", st.details);
	FREE(g);
	/*
	 * Destruction is a root operation (a destroy-key proposal):
	 * tests/integration/test_rotation.c; its apply rules are covered by
	 * tests/unit/test_keyring_lifecycle.c.
	 */
}
END_TEST

/* --- aliases --- */

START_TEST(aliases_name_keys_everywhere)
{
	Kms__V1__ListAliasesRequest la = KMS__V1__LIST_ALIASES_REQUEST__INIT;
	Kms__V1__ListAliasesResponse *lr;
	Kms__V1__DeleteAliasRequest da = KMS__V1__DELETE_ALIAS_REQUEST__INIT;
	Kms__V1__EncryptResponse *e, *e2;
	Kms__V1__AliasEntry *a;
	Kms__V1__KeyMetadata *md;
	ProtobufCMessage *resp;
	kms_rpc_status st;
	int f = follower();

	create_key("ka");
	create_key("kb");
	a = alias_call(f, KM "CreateAlias", "alias/app", "ka", &st);
	ck_assert_msg(a != NULL, "CreateAlias: %s", st.details);
	ck_assert_str_eq(a->alias_name, "alias/app");
	ck_assert_str_eq(a->key_id, "ka");
	ck_assert_int_gt(a->created_at_unix, 0);
	FREE(a);
	a = alias_call(leader(), KM "CreateAlias", "alias/other", "kb", &st);
	ck_assert_msg(a != NULL, "CreateAlias: %s", st.details);
	FREE(a);

	/* Every call takes the alias and answers with the real key id. */
	wait_everywhere("alias/app", S_OK, NULL);
	e = encrypt_on(f, "alias/app", &st);
	ck_assert_msg(e != NULL, "%s", st.details);
	ck_assert_str_eq(e->key_id, "ka");
	for (int n = 0; n < N; n++) {
		ck_assert_msg(decrypts(n, &e->ciphertext_blob, "alias/app", NULL, &st), "node %d: %s",
			      n + 1, st.details);
		ck_assert(!decrypts(n, &e->ciphertext_blob, "alias/other", NULL, &st));
		ASSERT_STATUS(st, S_INVALID, "does not match the key of the ciphertext blob");
		md = describe_on(n, "alias/app", &st);
		ck_assert_msg(md != NULL, "%s", st.details);
		ck_assert_str_eq(md->key_id, "ka");
		ck_assert_uint_eq(md->n_aliases, 1);
		ck_assert_str_eq(md->aliases[0], "alias/app");
		FREE(md);
	}

	/* Moved to another key: new blobs there, old ones still decrypt. */
	a = alias_call(f, KM "UpdateAlias", "alias/app", "kb", &st);
	ck_assert_msg(a != NULL, "UpdateAlias: %s", st.details);
	ck_assert_str_eq(a->key_id, "kb");
	FREE(a);
	e2 = encrypt_on(f, "alias/app", &st);
	ck_assert_msg(e2 != NULL, "%s", st.details);
	ck_assert_str_eq(e2->key_id, "kb");
	ck_assert_msg(decrypts(f, &e->ciphertext_blob, NULL, NULL, &st), "%s", st.details);
	FREE(e2);

	/* Listing, all and by key, in pages. */
	la.page_size = 1;
	ck_assert_msg(call(f, "admin", KM "ListAliases", &la.base,
			   &kms__v1__list_aliases_response__descriptor, &resp, &st) == 0,
		      "%s", st.details);
	lr = (Kms__V1__ListAliasesResponse *)resp;
	ck_assert_uint_eq(lr->n_aliases, 1);
	ck_assert_str_eq(lr->aliases[0]->alias_name, "alias/app");
	ck_assert_str_eq(lr->next_page_token, "alias/app");
	la.page_token = lr->next_page_token;
	ck_assert_msg(call(f, "admin", KM "ListAliases", &la.base,
			   &kms__v1__list_aliases_response__descriptor, &resp, &st) == 0,
		      "%s", st.details);
	ck_assert_uint_eq(((Kms__V1__ListAliasesResponse *)resp)->n_aliases, 1);
	ck_assert_str_eq(((Kms__V1__ListAliasesResponse *)resp)->aliases[0]->alias_name,
			 "alias/other");
	FREE(resp);
	FREE(lr);
	la.page_token = (char *)"";
	la.page_size = 0;
	la.key_id = (char *)"kb";
	ck_assert_msg(call(f, "admin", KM "ListAliases", &la.base,
			   &kms__v1__list_aliases_response__descriptor, &resp, &st) == 0,
		      "%s", st.details);
	ck_assert_uint_eq(((Kms__V1__ListAliasesResponse *)resp)->n_aliases, 2);
	FREE(resp);
	la.key_id = (char *)"nope";
	call(f, "admin", KM "ListAliases", &la.base, &kms__v1__list_aliases_response__descriptor,
	     &resp, &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "key 'nope' not found");
	la.key_id = (char *)"";
	la.page_token = (char *)"not a token";
	call(f, "admin", KM "ListAliases", &la.base, &kms__v1__list_aliases_response__descriptor,
	     &resp, &st);
	ASSERT_STATUS(st, S_INVALID, "page_token");
	la.page_token = (char *)"";
	la.page_size = 1001;
	call(f, "admin", KM "ListAliases", &la.base, &kms__v1__list_aliases_response__descriptor,
	     &resp, &st);
	ASSERT_STATUS(st, S_INVALID, "page_size 1001");

	/* Bad names, aliases of aliases, unknown keys and aliases. */
	a = alias_call(f, KM "CreateAlias", "app", "ka", &st);
	ck_assert_ptr_null(a);
	ASSERT_STATUS(st, S_INVALID, "starts with \"alias/\"");
	alias_call(f, KM "CreateAlias", "alias/", "ka", &st);
	ASSERT_STATUS(st, S_INVALID, "nothing after");
	alias_call(f, KM "CreateAlias", "alias/a b", "ka", &st);
	ASSERT_STATUS(st, S_INVALID, "outside [A-Za-z0-9._/-]");
	alias_call(f, KM "CreateAlias", "alias/x", "alias/app", &st);
	ASSERT_STATUS(st, S_INVALID, "not at another alias");
	alias_call(f, KM "CreateAlias", "alias/x", "nope", &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "key 'nope' not found");
	alias_call(f, KM "CreateAlias", "alias/app", "ka", &st);
	ASSERT_STATUS(st, S_EXISTS, "alias 'alias/app' already exists");
	alias_call(f, KM "UpdateAlias", "alias/none", "ka", &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "alias 'alias/none' not found");
	alias_call(f, KM "UpdateAlias", "alias/app", "nope", &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "key 'nope' not found");
	{
		kms_client *c = kms_test_client(&nodes[f], "admin");

		kms_test_create_key(c, "alias/sneaky", KMS_TEST_APP, &st);
		kms_client_close(c);
		ASSERT_STATUS(st, S_INVALID, "prefix names aliases");
	}

	/* Deleted: the name is gone everywhere. */
	da.alias_name = (char *)"alias/app";
	ck_assert_msg(call(f, "admin", KM "DeleteAlias", &da.base,
			   &kms__v1__delete_alias_response__descriptor, &resp, &st) == 0,
		      "%s", st.details);
	FREE(resp);
	call(f, "admin", KM "DeleteAlias", &da.base, &kms__v1__delete_alias_response__descriptor,
	     &resp, &st);
	ASSERT_STATUS(st, S_NOT_FOUND, "alias 'alias/app' not found");
	/* To a service it reads like a key it may not use. */
	wait_everywhere("alias/app", S_DENIED, "may not GenerateDataKey with key 'alias/app'");
	md = describe_on(f, "alias/app", &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_NOT_FOUND, "alias 'alias/app' not found");
	FREE(e);
}
END_TEST

/* --- policies --- */

START_TEST(put_key_policy_narrows_access_everywhere)
{
	static char *decrypt_only[] = {"Decrypt", "DescribeKey"};
	Kms__V1__PutKeyPolicyRequest req = KMS__V1__PUT_KEY_POLICY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *grants[] = {&grant};
	Kms__V1__GenerateDataKeyResponse *g;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	int f = follower();

	create_key("pol");
	g = gen_key(leader(), "pol", &st);
	ck_assert_msg(g != NULL, "%s", st.details);
	grant.principal = (char *)KMS_TEST_APP;
	grant.operations = decrypt_only;
	grant.n_operations = 2;
	policy.grants = grants;
	policy.n_grants = 1;
	req.key_id = (char *)"pol";
	req.policy = &policy;
	md = admin_call(f, "admin", KM "PutKeyPolicy", &req.base,
			&kms__v1__put_key_policy_response__descriptor, &st);
	ck_assert_msg(md != NULL, "PutKeyPolicy: %s", st.details);
	ck_assert_uint_eq(md->policy->n_grants, 1);
	ck_assert_uint_eq(md->policy->grants[0]->n_operations, 2);
	FREE(md);
	wait_everywhere("pol", S_DENIED, "may not GenerateDataKey with key 'pol'");
	for (int n = 0; n < N; n++)
		ck_assert_msg(decrypts(n, &g->ciphertext_blob, NULL, &g->plaintext, &st),
			      "node %d: %s", n + 1, st.details);
	FREE(g);

	/* A policy by the rules of a new one: no foreign trust domain. */
	grant.principal = (char *)"spiffe://elsewhere.example/ns/x/sa/y";
	md = admin_call(f, "admin", KM "PutKeyPolicy", &req.base,
			&kms__v1__put_key_policy_response__descriptor, &st);
	ck_assert_ptr_null(md);
	ASSERT_STATUS(st, S_INVALID, "trust domain");
	req.policy = NULL;
	admin_call(f, "admin", KM "PutKeyPolicy", &req.base,
		   &kms__v1__put_key_policy_response__descriptor, &st);
	ASSERT_STATUS(st, S_INVALID, "policy is missing");
}
END_TEST

START_TEST(rotation_policy_is_set_and_bounded)
{
	Kms__V1__SetRotationPolicyRequest req = KMS__V1__SET_ROTATION_POLICY_REQUEST__INIT;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	time_t before = time(NULL);
	int f = follower();

	create_key("pace");
	req.key_id = (char *)"pace";
	req.rotation_period_seconds = 3600;
	req.max_encryptions_per_version = 1000000;
	md = admin_call(f, "admin", KM "SetRotationPolicy", &req.base,
			&kms__v1__set_rotation_policy_response__descriptor, &st);
	ck_assert_msg(md != NULL, "SetRotationPolicy: %s", st.details);
	ck_assert_uint_eq(md->rotation_period_seconds, 3600);
	ck_assert_uint_eq(md->max_encryptions_per_version, 1000000);
	ck_assert_int_ge(md->next_rotation_unix, before + 3600 - 5);
	FREE(md);
	req.rotation_period_seconds = 0;
	req.max_encryptions_per_version = 0;
	md = admin_call(f, "admin", KM "SetRotationPolicy", &req.base,
			&kms__v1__set_rotation_policy_response__descriptor, &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	ck_assert_uint_eq(md->max_encryptions_per_version, UINT64_C(1) << 30);
	ck_assert_int_eq(md->next_rotation_unix, 0);
	FREE(md);
	req.max_encryptions_per_version = (UINT64_C(1) << 32) + 1;
	admin_call(f, "admin", KM "SetRotationPolicy", &req.base,
		   &kms__v1__set_rotation_policy_response__descriptor, &st);
	ASSERT_STATUS(st, S_INVALID, "above 2^32");
	req.max_encryptions_per_version = 0;
	req.rotation_period_seconds = 1;
	admin_call(f, "admin", KM "SetRotationPolicy", &req.base,
		   &kms__v1__set_rotation_policy_response__descriptor, &st);
	ASSERT_STATUS(st, S_INVALID, "shorter than the minimum of 2 s");
}
END_TEST

/* --- who may --- */

/* Every key administration call, with a well-formed request on key "guard". */
static const struct {
	const char *method;
	const ProtobufCMessageDescriptor *req, *resp;
} admin_methods[] = {
	{KM "RotateKey", &kms__v1__rotate_key_request__descriptor,
	 &kms__v1__rotate_key_response__descriptor},
	{KM "SetRotationPolicy", &kms__v1__set_rotation_policy_request__descriptor,
	 &kms__v1__set_rotation_policy_response__descriptor},
	{KM "EnableKey", &kms__v1__enable_key_request__descriptor,
	 &kms__v1__enable_key_response__descriptor},
	{KM "DisableKey", &kms__v1__disable_key_request__descriptor,
	 &kms__v1__disable_key_response__descriptor},
	{KM "ScheduleKeyDeletion", &kms__v1__schedule_key_deletion_request__descriptor,
	 &kms__v1__schedule_key_deletion_response__descriptor},
	{KM "CancelKeyDeletion", &kms__v1__cancel_key_deletion_request__descriptor,
	 &kms__v1__cancel_key_deletion_response__descriptor},
	{KM "PutKeyPolicy", &kms__v1__put_key_policy_request__descriptor,
	 &kms__v1__put_key_policy_response__descriptor},
	{KM "CreateAlias", &kms__v1__create_alias_request__descriptor,
	 &kms__v1__create_alias_response__descriptor},
	{KM "UpdateAlias", &kms__v1__update_alias_request__descriptor,
	 &kms__v1__update_alias_response__descriptor},
	{KM "DeleteAlias", &kms__v1__delete_alias_request__descriptor,
	 &kms__v1__delete_alias_response__descriptor},
	{KM "ListAliases", &kms__v1__list_aliases_request__descriptor,
	 &kms__v1__list_aliases_response__descriptor},
};
#define N_ADMIN_METHODS (sizeof(admin_methods) / sizeof(admin_methods[0]))

/* Sets the string field name of m, if it has one. */
static void set_string(ProtobufCMessage *m, const char *name, const char *value)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);

	if (f != NULL)
		*(const char **)(void *)((char *)m + f->offset) = value;
}

/* The key as the administrator sees it, packed, to compare before/after. */
static size_t key_bytes(int n, const char *id, uint8_t *out, size_t cap)
{
	kms_rpc_status st;
	Kms__V1__KeyMetadata *md = describe_on(n, id, &st);
	size_t len;

	ck_assert_msg(md != NULL, "%s", st.details);
	len = kms__v1__key_metadata__get_packed_size(md);
	ck_assert_uint_le(len, cap);
	kms__v1__key_metadata__pack(md, out);
	FREE(md);
	return len;
}

START_TEST(non_administrators_are_refused_and_nothing_changes)
{
	static const char *const whos[] = {"app", "other"};
	static const char *const names[] = {KMS_TEST_APP, KMS_TEST_OTHER};
	uint8_t before[4096], after[4096];
	size_t blen, alen;
	kms_rpc_status st;
	int f = follower();

	create_key("guard");
	{
		Kms__V1__AliasEntry *a = alias_call(leader(), KM "CreateAlias", "alias/guard",
						    "guard", &st);

		ck_assert_msg(a != NULL, "%s", st.details);
		FREE(a);
	}
	wait_known("alias/guard");
	blen = key_bytes(f, "guard", before, sizeof(before));
	for (size_t w = 0; w < 2; w++) {
		for (size_t i = 0; i < N_ADMIN_METHODS; i++) {
			uint8_t buf[2048];
			ProtobufCMessage *req = (ProtobufCMessage *)buf, *resp;

			ck_assert_uint_le(admin_methods[i].req->sizeof_message, sizeof(buf));
			protobuf_c_message_init(admin_methods[i].req, buf);
			set_string(req, "key_id", "guard");
			set_string(req, "alias_name", "alias/guard");
			call(f, whos[w], admin_methods[i].method, req, admin_methods[i].resp, &resp,
			     &st);
			ck_assert_ptr_null(resp);
			ck_assert_msg(st.code == S_DENIED, "%s as %s: %d %s",
				      admin_methods[i].method, whos[w], st.code, st.details);
			ck_assert_msg(strstr(st.details, names[w]) != NULL &&
					      strstr(st.details, "not an administrator") != NULL,
				      "%s: '%s'", admin_methods[i].method, st.details);
		}
	}
	/* Nothing changed, on any node. */
	for (int n = 0; n < N; n++) {
		alen = key_bytes(n, "guard", after, sizeof(after));
		ck_assert_uint_eq(alen, blen);
		ck_assert_mem_eq(after, before, blen);
	}
}
END_TEST

START_TEST(malformed_requests_are_invalid)
{
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	kms_client *c = kms_test_client(&nodes[follower()], "admin");

	for (size_t i = 0; i < N_ADMIN_METHODS; i++) {
		kms_buf resp = {0};
		kms_rpc_status st;

		kms_client_call_raw(c, admin_methods[i].method, garbage, sizeof(garbage), &resp, &st);
		ck_assert_msg(st.code == S_INVALID && strstr(st.details, "malformed") != NULL,
			      "%s: %d %s", admin_methods[i].method, st.code, st.details);
		ck_assert_ptr_null(resp.data);
	}
	kms_client_close(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kmsd key lifecycle");
	TCase *tc = tcase_create("three nodes");
	SRunner *sr;

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, rotate_then_old_blobs_decrypt_on_every_node);
	tcase_add_test(tc, disabled_key_refuses_crypto_on_every_node);
	tcase_add_test(tc, deletion_window_refuses_and_cancel_leaves_disabled);
	tcase_add_test(tc, aliases_name_keys_everywhere);
	tcase_add_test(tc, put_key_policy_narrows_access_everywhere);
	tcase_add_test(tc, rotation_policy_is_set_and_bounded);
	tcase_add_test(tc, non_administrators_are_refused_and_nothing_changes);
	tcase_add_test(tc, malformed_requests_are_invalid);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
