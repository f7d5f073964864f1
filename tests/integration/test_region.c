/* test_region.c - two regions of real kmsd nodes, each with its own PKI, SoftHSM token and domain key, linked by quorum: multi-region keys reach the secondary, blobs cross both ways, the secondary refuses writes naming its primary, and the region calls refuse everyone else. */
#include <check.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "check_run.h"
#include "kms/alloc.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "kms/v1/state.pb-c.h"
#include "node_fixture.h"
#include "test_pki.h"

#define KM "/kms.v1.KeyManagement/"
/* How long a change may take to reach the secondary: pulls run every
 * 200 ms; this only bounds a failing test. */
#define REACH_MS 20000

#define N_NODES 3
static kms_test_env env_a, env_b, env_c;
/* region-a (primary, 3 nodes), region-b (its async secondary, 3 nodes),
 * region-c (its sync secondary, 1 node); a and b are their first nodes. */
static kms_test_node na[N_NODES], nb[N_NODES], c;
#define a (na[0])
#define b (nb[0])

/* self's half of the link to the n_peer nodes of peer's region. */
static void link_half(kms_test_node *self, kms_test_node *peer, int n_peer, const char *peer_name,
		      Kms__V1__RegionRole role, Kms__V1__RegionMode mode)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__LinkRegionOperation lr = KMS__V1__LINK_REGION_OPERATION__INIT;
	char *eps[N_NODES], path[PATH_MAX];
	Kms__V1__Proposal *p;
	kms_rpc_status st;
	size_t len;
	char *ca;

	KMS_TEST_PATH(path, "%s/node-ca.pem", peer->env->pki);
	ca = kms_test_read_file(path, &len);
	lr.peer_region = (char *)peer_name;
	lr.role = role;
	lr.mode = mode;
	for (int i = 0; i < n_peer; i++)
		eps[i] = peer[i].endpoint;
	lr.peer_endpoints = eps;
	lr.n_peer_endpoints = (size_t)n_peer;
	lr.peer_trust_domain = KMS_TEST_TD;
	lr.peer_node_ca_pem.data = (uint8_t *)ca;
	lr.peer_node_ca_pem.len = len;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_LINK_REGION;
	op.link_region = &lr;
	p = kms_test_quorum_run(self, &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_msg(strcmp(p->state, "executed") == 0, "link-region %s: %s", p->state, p->result);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	kms_free(ca);
}

static void regions_up(void)
{
	kms_test_cluster_up(&env_a, na, N_NODES, "--region region-a");
	kms_test_cluster_up(&env_b, nb, N_NODES, "--region region-b");
	kms_test_cluster_up(&env_c, &c, 1, "--region region-c");
	link_half(&a, nb, N_NODES, "region-b", KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY,
		  KMS__V1__REGION_MODE__REGION_MODE_ASYNC);
	link_half(&b, na, N_NODES, "region-a", KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY,
		  KMS__V1__REGION_MODE__REGION_MODE_ASYNC);
	link_half(&a, &c, 1, "region-c", KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY,
		  KMS__V1__REGION_MODE__REGION_MODE_SYNC);
	link_half(&c, na, N_NODES, "region-a", KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY,
		  KMS__V1__REGION_MODE__REGION_MODE_SYNC);
}

static void regions_down(void)
{
	for (int i = 0; i < N_NODES; i++) {
		if (na[i].pid > 0)
			kms_test_node_signal(&na[i], SIGTERM);
		if (nb[i].pid > 0)
			kms_test_node_signal(&nb[i], SIGTERM);
	}
	if (c.pid > 0)
		kms_test_node_signal(&c, SIGTERM);
	kms_test_env_destroy(&env_a);
	kms_test_env_destroy(&env_b);
	kms_test_env_destroy(&env_c);
}

static void create(kms_test_node *n, const char *id, int multi_region)
{
	kms_client *admin = kms_test_client(n, "admin");
	kms_rpc_status st;

	ck_assert_msg(kms_test_create_key_scope(admin, id, KMS_TEST_APP, multi_region, &st) == 0,
		      "%s", st.details);
	kms_client_close(admin);
}

/* A key the app may re-encrypt from and to, besides the usual calls. */
static void create_rewrappable(kms_test_node *n, const char *id, int multi_region)
{
	static char *ops[] = {"Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey",
			      "ReEncryptFrom", "ReEncryptTo"};
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *grants[1] = {&grant};
	ProtobufCMessage *r = NULL;
	kms_rpc_status st;

	grant.principal = KMS_TEST_APP;
	grant.operations = ops;
	grant.n_operations = 6;
	policy.grants = grants;
	policy.n_grants = 1;
	req.key_id = (char *)id;
	req.policy = &policy;
	req.multi_region = multi_region;
	ck_assert_msg(kms_test_call(n, "admin", KM "CreateKey", &req.base,
				    &kms__v1__create_key_response__descriptor, &r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(r, NULL);
}

/* Waits until n describes id at `versions` versions; its metadata. */
static Kms__V1__KeyMetadata *wait_key(kms_test_node *n, const char *id, uint32_t versions)
{
	Kms__V1__KeyMetadata *md = NULL;
	kms_rpc_status st = {0};
	long until = kms_test_now_ms() + REACH_MS;

	for (;;) {
		md = kms_test_describe(n, "admin", id, &st);
		if (md != NULL && md->n_versions >= versions)
			return md;
		if (md != NULL)
			protobuf_c_message_free_unpacked(&md->base, NULL);
		ck_assert_msg(kms_test_now_ms() < until,
			      "key '%s' (%u versions) did not reach the region in %d ms: %s; see %s",
			      id, versions, REACH_MS, md != NULL ? "fewer versions" : st.details,
			      n->log);
		kms_test_sleep_ms(100);
	}
}

static Kms__V1__RegionStatusResponse *region_status(kms_test_node *n, const char *who,
						    kms_rpc_status *st)
{
	Kms__V1__RegionStatusRequest req = KMS__V1__REGION_STATUS_REQUEST__INIT;
	Kms__V1__RegionStatusResponse *r = NULL;

	if (kms_test_call(n, who, "/kms.v1.Operator/RegionStatus", &req.base,
			  &kms__v1__region_status_response__descriptor, (ProtobufCMessage **)&r,
			  st) != 0)
		return NULL;
	return r;
}

START_TEST(a_multi_region_key_reaches_the_secondary_and_blobs_cross)
{
	Kms__V1__KeyMetadata *md;
	kms_test_blob in_a, in_b;
	kms_rpc_status st;

	create(&a, "orders", 1);
	ck_assert_int_eq(kms_test_make_blob(&a, "app", "orders", &in_a, &st), 0);
	md = wait_key(&b, "orders", 1);
	ck_assert(md->multi_region);
	ck_assert_str_eq(md->home_region, "region-a");
	protobuf_c_message_free_unpacked(&md->base, NULL);
	/* Each region's own HSM and domain key: the same master key. */
	ck_assert_msg(kms_test_blob_decrypts(&b, "app", &in_a, &st), "a blob of region-a in "
		      "region-b: %s", st.details);
	ck_assert_msg(kms_test_make_blob(&b, "app", "orders", &in_b, &st) == 0, "%s", st.details);
	ck_assert_msg(kms_test_blob_decrypts(&a, "app", &in_b, &st), "a blob of region-b in "
		      "region-a: %s", st.details);
}
END_TEST

START_TEST(a_rotation_reaches_the_secondary)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	Kms__V1__RotateKeyResponse *r = NULL;
	Kms__V1__KeyMetadata *md;
	kms_test_blob v2;
	kms_rpc_status st;

	create(&a, "payments", 1);
	req.key_id = "payments";
	ck_assert_msg(kms_test_call(&a, "admin", KM "RotateKey", &req.base,
				    &kms__v1__rotate_key_response__descriptor,
				    (ProtobufCMessage **)&r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	ck_assert_int_eq(kms_test_make_blob(&a, "app", "payments", &v2, &st), 0);
	ck_assert_uint_eq(v2.version, 2);
	md = wait_key(&b, "payments", 2);
	ck_assert_uint_eq(md->primary_version, 2);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	ck_assert_msg(kms_test_blob_decrypts(&b, "app", &v2, &st), "%s", st.details);
}
END_TEST

/* Its twin: what the secondary may not do, and what stays in region-a. */
START_TEST(the_secondary_refuses_writes_naming_its_primary)
{
	Kms__V1__RotateKeyRequest rot = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	Kms__V1__DisableKeyRequest dis = KMS__V1__DISABLE_KEY_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	Kms__V1__KeyMetadata *md;
	kms_test_blob blob;
	kms_rpc_status st;

	create(&a, "ledger", 1);
	create(&a, "local-a", 0);
	md = wait_key(&b, "ledger", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	rot.key_id = "ledger";
	ck_assert_int_ne(kms_test_call(&b, "admin", KM "RotateKey", &rot.base,
				       &kms__v1__rotate_key_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 9, "primary region 'region-a'");
	dis.key_id = "ledger";
	ck_assert_int_ne(kms_test_call(&b, "admin", KM "DisableKey", &dis.base,
				       &kms__v1__disable_key_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 9, "change it in region 'region-a'");
	/* Nothing changed there, and crypto goes on. */
	md = kms_test_describe(&b, "admin", "ledger", &st);
	ck_assert_ptr_nonnull(md);
	ck_assert_uint_eq(md->n_versions, 1);
	ck_assert_str_eq(md->key_state, "Enabled");
	protobuf_c_message_free_unpacked(&md->base, NULL);
	ck_assert_msg(kms_test_make_blob(&b, "app", "ledger", &blob, &st) == 0, "%s", st.details);
	/* A regional key stays in its region; the secondary makes its own. */
	create(&b, "local-b", 0);
	kms_test_sleep_ms(1000);
	ck_assert_ptr_null(kms_test_describe(&b, "admin", "local-a", &st));
	KMS_TEST_ASSERT_STATUS(st, 5, "not found");
	ck_assert_ptr_null(kms_test_describe(&a, "admin", "local-b", &st));
	KMS_TEST_ASSERT_STATUS(st, 5, "not found");
}
END_TEST

/* Aliases of a multi-region key travel with it; the secondary uses them. */
START_TEST(an_alias_reaches_the_secondary_with_its_key)
{
	Kms__V1__CreateAliasRequest req = KMS__V1__CREATE_ALIAS_REQUEST__INIT;
	Kms__V1__UpdateAliasRequest upd = KMS__V1__UPDATE_ALIAS_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	kms_test_blob blob;
	kms_rpc_status st;
	long until;

	create(&a, "aliased", 1);
	req.alias_name = "alias/billing";
	req.key_id = "aliased";
	ck_assert_msg(kms_test_call(&a, "admin", KM "CreateAlias", &req.base,
				    &kms__v1__create_alias_response__descriptor, &r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(r, NULL);
	for (until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(100)) {
		if (kms_test_make_blob(&b, "app", "alias/billing", &blob, &st) == 0)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "alias/billing not usable in region-b: %s",
			      st.details);
	}
	ck_assert_msg(kms_test_blob_decrypts(&a, "app", &blob, &st), "%s", st.details);
	/* Twin: the secondary may not move it. */
	upd.alias_name = "alias/billing";
	upd.key_id = "local-b";
	ck_assert_int_ne(kms_test_call(&b, "admin", KM "UpdateAlias", &upd.base,
				       &kms__v1__update_alias_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 9, "primary region 'region-a'");
}
END_TEST

/* A region's data leaves a key another region also holds (issue #7). */
START_TEST(reencrypt_moves_blobs_to_a_regional_key_of_the_secondary)
{
	Kms__V1__ReEncryptRequest req = KMS__V1__RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__ReEncryptResponse *r = NULL;
	Kms__V1__KeyMetadata *md;
	kms_test_blob blob, moved;
	kms_rpc_status st;

	create_rewrappable(&a, "shared", 1);
	create_rewrappable(&b, "eu-only", 0);
	ck_assert_int_eq(kms_test_make_blob(&a, "app", "shared", &blob, &st), 0);
	md = wait_key(&b, "shared", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	req.ciphertext_blob.data = blob.ct;
	req.ciphertext_blob.len = blob.ct_len;
	req.destination_key_id = "eu-only";
	ck_assert_msg(kms_test_call(&b, "app", KM "ReEncrypt", &req.base,
				    &kms__v1__re_encrypt_response__descriptor,
				    (ProtobufCMessage **)&r, &st) == 0,
		      "%s", st.details);
	ck_assert_str_eq(r->key_id, "eu-only");
	ck_assert_str_eq(r->source_key_id, "shared");
	memcpy(&moved, &blob, sizeof(moved));
	memcpy(moved.ct, r->ciphertext_blob.data, r->ciphertext_blob.len);
	moved.ct_len = r->ciphertext_blob.len;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	ck_assert_msg(kms_test_blob_decrypts(&b, "app", &moved, &st), "%s", st.details);
	/* Under a key region-a does not have: it stays in region-b (a key the
	 * caller may not use and one that does not exist answer alike). */
	ck_assert(!kms_test_blob_decrypts(&a, "app", &moved, &st));
	KMS_TEST_ASSERT_STATUS(st, 7, "key 'eu-only'");
	/* The same in bulk: kmsctl rewrap in region-b. */
	{
		char in[PATH_MAX], outp[PATH_MAX], ct64[1024], pt64[64], out[1024], *p, *e;
		char cmd_base[2 * PATH_MAX];
		FILE *f;

		ck_assert_int_gt(EVP_EncodeBlock((unsigned char *)ct64, blob.ct, (int)blob.ct_len),
				 0);
		ck_assert_int_gt(EVP_EncodeBlock((unsigned char *)pt64, blob.pt, 32), 0);
		KMS_TEST_PATH(in, "%s/rewrap.in", env_b.root);
		KMS_TEST_PATH(outp, "%s/rewrap.out", env_b.root);
		f = fopen(in, "w");
		ck_assert_ptr_nonnull(f);
		fprintf(f, "{\"blob\": \"%s\"}\n", ct64);
		fclose(f);
		KMS_TEST_PATH(cmd_base,
			      "'%s/kmsctl' --endpoint %s --ca '%s/node-ca.pem' --cert '%s/app.pem' "
			      "--key '%s/app.key'",
			      kms_test_builddir(), b.endpoint, env_b.pki, env_b.pki, env_b.pki);
		ck_assert_msg(kms_test_sh_output(out, sizeof(out),
						 "%s rewrap --in '%s' --out '%s' --to eu-only",
						 cmd_base, in, outp) == 0,
			      "%s", out);
		ck_assert_int_eq(kms_test_sh_output(out, sizeof(out), "cat '%s'", outp), 0);
		p = strstr(out, "\"blob\": \"");
		if (p == NULL)
			p = strstr(out, "\"blob\":\"");
		ck_assert_msg(p != NULL, "%s", out);
		p = strchr(p + 6, '"') + 1;
		e = strchr(p, '"');
		ck_assert_ptr_nonnull(e);
		*e = '\0';
		ck_assert_msg(strcmp(p, ct64) != 0, "rewrap left the blob as it was");
		memmove(ct64, p, strlen(p) + 1);
		ck_assert_msg(kms_test_sh_output(out, sizeof(out), "%s --json decrypt --blob '%s'",
						 cmd_base, ct64) == 0,
			      "%s", out);
		ck_assert_msg(strstr(out, pt64) != NULL && strstr(out, "eu-only") != NULL, "%s",
			      out);
	}
}
END_TEST

START_TEST(a_disabled_key_is_disabled_in_the_secondary_too)
{
	Kms__V1__DisableKeyRequest dis = KMS__V1__DISABLE_KEY_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	Kms__V1__KeyMetadata *md;
	kms_test_blob blob;
	kms_rpc_status st;
	long until;

	create(&a, "retired", 1);
	md = wait_key(&b, "retired", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	dis.key_id = "retired";
	ck_assert_msg(kms_test_call(&a, "admin", KM "DisableKey", &dis.base,
				    &kms__v1__disable_key_response__descriptor, &r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(r, NULL);
	for (until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(100)) {
		if (kms_test_make_blob(&b, "app", "retired", &blob, &st) == 9)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "still encrypts in region-b: %s",
			      st.details);
	}
	KMS_TEST_ASSERT_STATUS(st, 9, "disabled");
}
END_TEST

START_TEST(region_status_shows_the_link_and_no_lag)
{
	Kms__V1__RegionStatusResponse *r;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	long until;

	create(&a, "status-probe", 1);
	md = wait_key(&b, "status-probe", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	r = region_status(&a, "admin", &st);
	ck_assert_msg(r != NULL, "%s", st.details);
	ck_assert_str_eq(r->region, "region-a");
	ck_assert_uint_ge(r->region_rev, 1);
	ck_assert_uint_eq(r->n_links, 2);
	ck_assert_str_eq(r->links[0]->peer_region, "region-b");
	ck_assert_str_eq(r->links[0]->role, "primary");
	ck_assert_str_eq(r->links[0]->mode, "async");
	ck_assert_str_eq(r->links[1]->peer_region, "region-c");
	ck_assert_str_eq(r->links[1]->mode, "sync");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	for (until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(100)) {
		r = region_status(&b, "admin", &st);
		ck_assert_msg(r != NULL, "%s", st.details);
		ck_assert_uint_eq(r->n_links, 1);
		if (r->links[0]->lag_entries == 0 && r->links[0]->peer_head > 0)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "region-b still lags %llu entries: %s",
			      (unsigned long long)r->links[0]->lag_entries, r->links[0]->last_error);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	ck_assert_str_eq(r->region, "region-b");
	ck_assert_str_eq(r->links[0]->role, "secondary");
	ck_assert_str_eq(r->links[0]->last_error, "");
	ck_assert_int_eq(r->links[0]->lag_seconds, 0);
	ck_assert_uint_eq(r->links[0]->cursor, r->links[0]->peer_head);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* kmsctl health shows the lag to an administrator, not to the app. */
	{
		char out[1024];

		ck_assert_int_eq(kms_test_sh_output(out, sizeof(out),
						    "'%s/kmsctl' --endpoint %s --ca '%s/node-ca.pem' "
						    "--cert '%s/admin.pem' --key '%s/admin.key' health",
						    kms_test_builddir(), b.endpoint, env_b.pki, env_b.pki,
						    env_b.pki),
				 0);
		ck_assert_msg(strstr(out, "status: SERVING") != NULL &&
				  strstr(out, "region-a 0 0") != NULL,
			      "%s", out);
		ck_assert_int_eq(kms_test_sh_output(out, sizeof(out),
						    "'%s/kmsctl' --endpoint %s --ca '%s/node-ca.pem' "
						    "--cert '%s/app.pem' --key '%s/app.key' health",
						    kms_test_builddir(), b.endpoint, env_b.pki, env_b.pki,
						    env_b.pki),
				 0);
		ck_assert_msg(strstr(out, "region-a") == NULL, "%s", out);
	}
}
END_TEST

/* Sync mode: CreateKey and RotateKey in region-a answer once region-c has them. */
START_TEST(a_sync_write_is_in_the_sync_secondary_when_it_is_answered)
{
	Kms__V1__RotateKeyRequest rot = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	char id[32];

	for (int i = 0; i < 5; i++) {
		snprintf(id, sizeof(id), "sync-%d", i);
		create(&a, id, 1);
		md = kms_test_describe(&c, "admin", id, &st);
		ck_assert_msg(md != NULL, "region-c lacks %s when CreateKey answered: %s", id,
			      st.details);
		protobuf_c_message_free_unpacked(&md->base, NULL);
	}
	rot.key_id = "sync-0";
	ck_assert_msg(kms_test_call(&a, "admin", KM "RotateKey", &rot.base,
				    &kms__v1__rotate_key_response__descriptor, &r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(r, NULL);
	md = kms_test_describe(&c, "admin", "sync-0", &st);
	ck_assert_ptr_nonnull(md);
	ck_assert_uint_eq(md->n_versions, 2);
	protobuf_c_message_free_unpacked(&md->base, NULL);
}
END_TEST

/* Its twin: the sync secondary is stopped; the write is committed in
 * region-a but answered UNAVAILABLE naming region-c, and region-c has it
 * once it runs again. */
START_TEST(a_sync_write_without_its_secondary_says_so)
{
	kms_client *admin = kms_test_client_with(&a, "admin", NULL, 15000);
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	long t0;

	ck_assert_int_eq(kill(c.pid, SIGSTOP), 0);
	t0 = kms_test_now_ms();
	ck_assert_int_ne(kms_test_create_key_scope(admin, "sync-unconfirmed", KMS_TEST_APP, 1, &st),
			 0);
	ck_assert_int_eq(kill(c.pid, SIGCONT), 0);
	kms_client_close(admin);
	KMS_TEST_ASSERT_STATUS(st, 14, "sync secondary 'region-c' has not confirmed it");
	ck_assert_int_ge(kms_test_now_ms() - t0, 4000);
	md = kms_test_describe(&a, "admin", "sync-unconfirmed", &st);
	ck_assert_msg(md != NULL, "committed in region-a: %s", st.details);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	md = wait_key(&c, "sync-unconfirmed", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	/* And sync writes are answered at once again. */
	create(&a, "sync-after", 1);
	md = kms_test_describe(&c, "admin", "sync-after", &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	protobuf_c_message_free_unpacked(&md->base, NULL);
}
END_TEST

/* Waits until n describes id with key_state state (and period, when not 0). */
static void wait_state(kms_test_node *n, const char *id, const char *state, uint64_t period)
{
	long until = kms_test_now_ms() + REACH_MS;
	kms_rpc_status st = {0};

	for (;; kms_test_sleep_ms(100)) {
		Kms__V1__KeyMetadata *md = kms_test_describe(n, "admin", id, &st);
		int done = md != NULL && strcmp(md->key_state, state) == 0 &&
			   (period == 0 || md->rotation_period_seconds == period);

		ck_assert_msg(done || kms_test_now_ms() < until, "key '%s' is %s, not %s, in %s; %s",
			      id, md != NULL ? md->key_state : "missing", state, n->endpoint,
			      st.details);
		if (md != NULL)
			protobuf_c_message_free_unpacked(&md->base, NULL);
		if (done)
			return;
	}
}

/* An administrator's key call on n that must succeed. */
static void admin_ok(kms_test_node *n, const char *method, const ProtobufCMessage *req,
		     const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *r = NULL;
	kms_rpc_status st;

	ck_assert_msg(kms_test_call(n, "admin", method, req, desc, &r, &st) == 0, "%s: %s", method,
		      st.details);
	protobuf_c_message_free_unpacked(r, NULL);
}

/* Every kind of key change in region-a reaches region-b, on any of its nodes. */
START_TEST(every_kind_of_key_change_reaches_the_secondary)
{
	Kms__V1__SetRotationPolicyRequest pol = KMS__V1__SET_ROTATION_POLICY_REQUEST__INIT;
	Kms__V1__ScheduleKeyDeletionRequest del = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;
	Kms__V1__CancelKeyDeletionRequest can = KMS__V1__CANCEL_KEY_DELETION_REQUEST__INIT;
	Kms__V1__EnableKeyRequest en = KMS__V1__ENABLE_KEY_REQUEST__INIT;
	Kms__V1__PutKeyPolicyRequest pp = KMS__V1__PUT_KEY_POLICY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *grants[1] = {&grant};
	static char *ops[] = {"DescribeKey"};
	kms_test_blob blob;
	kms_rpc_status st;
	long until;

	create(&a, "changes", 1);
	wait_state(&nb[1], "changes", "Enabled", 0);
	pol.key_id = "changes";
	pol.rotation_period_seconds = 86400;
	admin_ok(&na[1], KM "SetRotationPolicy", &pol.base,
		 &kms__v1__set_rotation_policy_response__descriptor);
	wait_state(&nb[2], "changes", "Enabled", 86400);
	del.key_id = "changes";
	del.pending_window_days = 7;
	admin_ok(&a, KM "ScheduleKeyDeletion", &del.base,
		 &kms__v1__schedule_key_deletion_response__descriptor);
	wait_state(&nb[0], "changes", "PendingDeletion", 0);
	can.key_id = "changes";
	admin_ok(&a, KM "CancelKeyDeletion", &can.base,
		 &kms__v1__cancel_key_deletion_response__descriptor);
	wait_state(&nb[1], "changes", "Disabled", 0);
	en.key_id = "changes";
	admin_ok(&a, KM "EnableKey", &en.base, &kms__v1__enable_key_response__descriptor);
	wait_state(&nb[2], "changes", "Enabled", 0);
	/* A narrower policy: the app may only describe it, there as here. */
	grant.principal = KMS_TEST_APP;
	grant.operations = ops;
	grant.n_operations = 1;
	policy.grants = grants;
	policy.n_grants = 1;
	pp.key_id = "changes";
	pp.policy = &policy;
	admin_ok(&a, KM "PutKeyPolicy", &pp.base, &kms__v1__put_key_policy_response__descriptor);
	for (until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(100)) {
		if (kms_test_make_blob(&nb[1], "app", "changes", &blob, &st) == 7)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "region-b still lets the app encrypt: %s",
			      st.details);
	}
}
END_TEST

/* A multi-region key of region-a, pending deletion everywhere. */
static void pending_deletion(const char *id)
{
	Kms__V1__ScheduleKeyDeletionRequest del = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;

	create(&a, id, 1);
	del.key_id = (char *)id;
	del.pending_window_days = 7;
	admin_ok(&a, KM "ScheduleKeyDeletion", &del.base,
		 &kms__v1__schedule_key_deletion_response__descriptor);
	wait_state(&c, id, "PendingDeletion", 0);
}

/* The quorum's destroy-key of a key homed in region-a. */
static Kms__V1__Proposal *destroy(const char *id, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__DestroyKeyOperation dk = KMS__V1__DESTROY_KEY_OPERATION__INIT;

	dk.key_id = (char *)id;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY;
	op.destroy_key = &dk;
	return kms_test_quorum_run(&a, &op, st);
}

/*
 * A destroyed key must not outlive its destruction in a region that could
 * be promoted: the approval that executes a destroy-key answers once the
 * sync secondary has destroyed the key too (the async one follows). Its
 * twin: the sync secondary stopped, the approval answers UNAVAILABLE
 * naming it, the key is destroyed in region-a and reaches region-c once it
 * runs again.
 */
START_TEST(a_destroy_key_is_in_the_sync_secondary_when_it_is_answered)
{
	Kms__V1__KeyMetadata *md;
	Kms__V1__Proposal *p;
	kms_rpc_status st;

	pending_deletion("shred-1");
	pending_deletion("shred-2");
	p = destroy("shred-1", &st);
	ck_assert_msg(p != NULL, "destroy-key: %s", st.details);
	ck_assert_msg(strcmp(p->state, "executed") == 0, "destroy-key %s: %s", p->state, p->result);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	md = kms_test_describe(&c, "admin", "shred-1", &st);
	ck_assert_msg(md != NULL, "%s", st.details);
	ck_assert_msg(strcmp(md->key_state, "Destroyed") == 0,
		      "region-c shows shred-1 %s when its destroy-key was answered", md->key_state);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	wait_state(&nb[1], "shred-1", "Destroyed", 0);

	ck_assert_int_eq(kill(c.pid, SIGSTOP), 0);
	p = destroy("shred-2", &st);
	ck_assert_int_eq(kill(c.pid, SIGCONT), 0);
	ck_assert_msg(p == NULL, "the destroy-key was answered %s without region-c",
		      p != NULL ? p->state : "");
	KMS_TEST_ASSERT_STATUS(st, 14, "sync secondary 'region-c' has not confirmed it");
	wait_state(&a, "shred-2", "Destroyed", 0);
	wait_state(&c, "shred-2", "Destroyed", 0);
}
END_TEST

/* A secondary that hangs (SIGSTOP, every node) holds no one else's writes:
 * sync writes to region-c are still confirmed. */
START_TEST(a_stopped_async_secondary_does_not_hold_sync_writes)
{
	/* Through the leader: its region thread is the one that asks region-b. */
	int leader = kms_test_leader_index(na, N_NODES);
	kms_client *admin = kms_test_client_with(&na[leader >= 0 ? leader : 0], "admin", NULL,
						 15000);
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	char id[32];

	for (int i = 0; i < N_NODES; i++)
		ck_assert_int_eq(kill(nb[i].pid, SIGSTOP), 0);
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "b-stopped-%d", i);
		ck_assert_msg(kms_test_create_key_scope(admin, id, KMS_TEST_APP, 1, &st) == 0,
			      "%s: %s", id, st.details);
		md = kms_test_describe(&c, "admin", id, &st);
		ck_assert_msg(md != NULL, "%s", st.details);
		protobuf_c_message_free_unpacked(&md->base, NULL);
	}
	for (int i = 0; i < N_NODES; i++)
		ck_assert_int_eq(kill(nb[i].pid, SIGCONT), 0);
	kms_client_close(admin);
	md = wait_key(&b, "b-stopped-2", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
}
END_TEST

/* Its twins of failure: the secondary down, the primary's leader killed. */
START_TEST(a_secondary_killed_and_brought_back_catches_up)
{
	Kms__V1__KeyMetadata *md;
	char id[32];

	for (int i = 0; i < N_NODES; i++)
		kms_test_node_signal(&nb[i], SIGKILL);
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "while-b-down-%d", i);
		create(&a, id, 1);
	}
	for (int i = 0; i < N_NODES; i++)
		kms_test_node_spawn(&nb[i]);
	for (int i = 0; i < N_NODES; i++)
		ck_assert_msg(kms_test_node_wait_healthy(&nb[i], 60), "see %s", nb[i].log);
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "while-b-down-%d", i);
		md = wait_key(&nb[i % N_NODES], id, 1);
		protobuf_c_message_free_unpacked(&md->base, NULL);
	}
}
END_TEST

START_TEST(the_primary_leader_killed_mid_stream)
{
	Kms__V1__KeyMetadata *md;
	kms_rpc_status st;
	kms_client *admin;
	int leader = kms_test_leader_index(na, N_NODES), other = (leader + 1) % N_NODES, made = 0;
	char id[32];

	ck_assert_int_ge(leader, 0);
	admin = kms_test_client_with(&na[other], "admin", NULL, 15000);
	for (int i = 0; i < 40; i++) {
		snprintf(id, sizeof(id), "mid-stream-%d", i);
		if (i == 10)
			kms_test_node_signal(&na[leader], SIGKILL);
		/* Acknowledged or not while a new leader is elected: what was
		 * acknowledged must reach region-b. */
		if (kms_test_create_key_scope(admin, id, KMS_TEST_APP, 1, &st) == 0)
			made |= 1 << (i % 31);
		else
			kms_test_sleep_ms(200);
	}
	kms_client_close(admin);
	kms_test_node_start(&na[leader]);
	for (int i = 0; i < 40; i++) {
		snprintf(id, sizeof(id), "mid-stream-%d", i);
		md = kms_test_describe(&na[other], "admin", id, &st);
		if (md == NULL)
			continue; /* never acknowledged, nor committed */
		protobuf_c_message_free_unpacked(&md->base, NULL);
		md = wait_key(&nb[i % N_NODES], id, 1);
		protobuf_c_message_free_unpacked(&md->base, NULL);
	}
	ck_assert_int_ne(made, 0);
}
END_TEST

/* Waits until n's link to peer says role at epoch. */
static void wait_link(kms_test_node *n, const char *peer, const char *role, uint64_t epoch)
{
	Kms__V1__RegionStatusResponse *r;
	kms_rpc_status st;
	long until = kms_test_now_ms() + REACH_MS;

	for (;; kms_test_sleep_ms(100)) {
		const Kms__V1__RegionLinkStatus *l = NULL;

		r = region_status(n, "admin", &st);
		ck_assert_msg(r != NULL, "%s", st.details);
		for (size_t i = 0; i < r->n_links; i++)
			if (strcmp(r->links[i]->peer_region, peer) == 0)
				l = r->links[i];
		ck_assert_ptr_nonnull(l);
		if (strcmp(l->role, role) == 0 && l->epoch == epoch)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "%s's link to %s is %s at epoch %llu, not "
			      "%s at %llu; see %s", r->region, peer, l->role,
			      (unsigned long long)l->epoch, role, (unsigned long long)epoch, n->log);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	protobuf_c_message_free_unpacked(&r->base, NULL);
}

/*
 * Last but one: region-b takes over region-a's keys, and region-a, which
 * is still running, learns it and turns itself into region-b's secondary.
 */
START_TEST(promotion_needs_the_quorum_and_fences_the_old_primary)
{
	Kms__V1__PromoteRegionRequest direct = KMS__V1__PROMOTE_REGION_REQUEST__INIT;
	Kms__V1__RotateKeyRequest rot = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__PromoteRegionOperation pr = KMS__V1__PROMOTE_REGION_OPERATION__INIT;
	ProtobufCMessage *r = NULL;
	Kms__V1__Proposal *p;
	Kms__V1__KeyMetadata *md;
	kms_test_blob in_b, local;
	kms_rpc_status st;

	create(&a, "taken-over", 1);
	md = wait_key(&b, "taken-over", 1);
	protobuf_c_message_free_unpacked(&md->base, NULL);
	/* Twin: not without the quorum. */
	direct.peer_region = "region-a";
	ck_assert_int_ne(kms_test_call(&b, "admin", "/kms.v1.Operator/PromoteRegion", &direct.base,
				       &kms__v1__promote_region_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 9, "kmsctl region promote");
	wait_link(&b, "region-a", "secondary", 1);
	pr.peer_region = "region-a";
	op.op_case = KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION;
	op.promote_region = &pr;
	p = kms_test_quorum_run(&b, &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_msg(strcmp(p->state, "executed") == 0, "promote-region %s: %s", p->state,
		      p->result);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	wait_link(&b, "region-a", "primary", 2);
	/* region-b changes the key now. */
	rot.key_id = "taken-over";
	ck_assert_msg(kms_test_call(&b, "admin", KM "RotateKey", &rot.base,
				    &kms__v1__rotate_key_response__descriptor, &r, &st) == 0,
		      "%s", st.details);
	protobuf_c_message_free_unpacked(r, NULL);
	ck_assert_int_eq(kms_test_make_blob(&b, "app", "taken-over", &in_b, &st), 0);
	ck_assert_uint_eq(in_b.version, 2);
	/* region-a learns the epoch, fences itself and follows region-b. */
	wait_link(&a, "region-b", "secondary", 2);
	ck_assert_int_ne(kms_test_call(&a, "admin", KM "RotateKey", &rot.base,
				       &kms__v1__rotate_key_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 9, "primary region 'region-b'");
	md = wait_key(&a, "taken-over", 2);
	ck_assert_str_eq(md->home_region, "region-b");
	protobuf_c_message_free_unpacked(&md->base, NULL);
	ck_assert_msg(kms_test_blob_decrypts(&a, "app", &in_b, &st), "%s", st.details);
	/* region-a's regional keys are its own still. */
	ck_assert_msg(kms_test_make_blob(&a, "app", "local-a", &local, &st) == 0, "%s", st.details);
	/* region-b sees region-a follow at epoch 2 (sync writes would wait for it again). */
	for (long until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(100)) {
		Kms__V1__RegionStatusResponse *rs = region_status(&b, "admin", &st);
		int waiting;

		ck_assert_msg(rs != NULL && rs->n_links == 1, "%s", st.details);
		waiting = rs->links[0]->awaiting_follow;
		protobuf_c_message_free_unpacked(&rs->base, NULL);
		if (!waiting)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "region-b never saw region-a follow");
	}
	/* Twin: promoted already. */
	p = kms_test_quorum_run(&b, &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_str_eq(p->state, "failed");
	ck_assert_msg(strstr(p->result, "not linked as a secondary of region 'region-a'") != NULL,
		      "%s", p->result);
	protobuf_c_message_free_unpacked(&p->base, NULL);
}
END_TEST

/* region-a unlinks region-c: region-c's pulls are refused from then on,
 * and region-a's sync writes wait for no one. */
START_TEST(an_unlinked_region_is_refused)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__UnlinkRegionOperation ur = KMS__V1__UNLINK_REGION_OPERATION__INIT;
	Kms__V1__RegionStatusResponse *r;
	Kms__V1__Proposal *p;
	kms_rpc_status st;
	long until;

	ur.peer_region = "region-c";
	op.op_case = KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION;
	op.unlink_region = &ur;
	p = kms_test_quorum_run(&a, &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_msg(strcmp(p->state, "executed") == 0, "unlink-region %s: %s", p->state,
		      p->result);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	r = region_status(&a, "admin", &st);
	ck_assert_ptr_nonnull(r);
	for (size_t i = 0; i < r->n_links; i++)
		ck_assert_str_ne(r->links[i]->peer_region, "region-c");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* With region-c stopped, a write in region-a is answered at once. */
	ck_assert_int_eq(kill(c.pid, SIGSTOP), 0);
	create(&a, "after-unlink", 1);
	ck_assert_int_eq(kill(c.pid, SIGCONT), 0);
	/* region-c still pulls, and is refused. */
	for (until = kms_test_now_ms() + REACH_MS;; kms_test_sleep_ms(200)) {
		int refused;

		r = region_status(&c, "admin", &st);
		ck_assert_ptr_nonnull(r);
		refused = r->n_links == 1 && r->links[0]->last_error[0] != '\0';
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (refused)
			break;
		ck_assert_msg(kms_test_now_ms() < until, "region-c's pulls are not refused");
	}
}
END_TEST

/* The twins of the calls themselves. */
START_TEST(region_calls_refuse_everyone_else)
{
	Kms__V1__RegionPullRequest pull = KMS__V1__REGION_PULL_REQUEST__INIT;
	ProtobufCMessage *r = NULL;
	kms_rpc_status st;

	/* A service (even an administrator) may not pull. */
	pull.region = "region-b";
	pull.epoch = 1;
	ck_assert_int_ne(kms_test_call(&a, "admin", "/kms.v1.Internal/RegionPull", &pull.base,
				       &kms__v1__region_pull_response__descriptor, &r, &st),
			 0);
	KMS_TEST_ASSERT_STATUS(st, 7, "linked regions");
	/* Region status is for administrators. */
	ck_assert_ptr_null(region_status(&a, "app", &st));
	KMS_TEST_ASSERT_STATUS(st, 7, "not an administrator");
	/* region-a's client CA does not vouch for region-b's administrator. */
	ck_assert_ptr_null(region_status(&b, "other", &st));
	ck_assert_int_eq(st.code, 7);
}
END_TEST

START_TEST(malformed_link_region_is_refused_at_proposal)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__LinkRegionOperation lr = KMS__V1__LINK_REGION_OPERATION__INIT;
	char *eps[1] = {"127.0.0.1:1"};
	kms_rpc_status st;

	lr.peer_region = "Region C";
	lr.role = KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY;
	lr.peer_endpoints = eps;
	lr.n_peer_endpoints = 1;
	lr.peer_trust_domain = KMS_TEST_TD;
	lr.peer_node_ca_pem.data = (uint8_t *)"x";
	lr.peer_node_ca_pem.len = 1;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_LINK_REGION;
	op.link_region = &lr;
	ck_assert_ptr_null(kms_test_propose(&a, "admin", &op, 0, &st));
	KMS_TEST_ASSERT_STATUS(st, 3, "region name 'Region C'");
	lr.peer_region = "region-d";
	ck_assert_ptr_null(kms_test_propose(&a, "admin", &op, 0, &st));
	KMS_TEST_ASSERT_STATUS(st, 3, "no PEM certificate");
	/* A peer named by this region's own node CA: its nodes could pass for ours. */
	{
		char path[PATH_MAX], *ca;
		size_t len;

		KMS_TEST_PATH(path, "%s/node-ca.pem", env_a.pki);
		ca = kms_test_read_file(path, &len);
		lr.peer_node_ca_pem.data = (uint8_t *)ca;
		lr.peer_node_ca_pem.len = len;
		ck_assert_ptr_null(kms_test_propose(&a, "admin", &op, 0, &st));
		KMS_TEST_ASSERT_STATUS(st, 3, "this region's own node CA");
		kms_free(ca);
	}
}
END_TEST

static Suite *region_suite(void)
{
	Suite *s = suite_create("region");
	TCase *tc = tcase_create("two linked regions");

	tcase_add_unchecked_fixture(tc, regions_up, regions_down);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, a_multi_region_key_reaches_the_secondary_and_blobs_cross);
	tcase_add_test(tc, a_rotation_reaches_the_secondary);
	tcase_add_test(tc, the_secondary_refuses_writes_naming_its_primary);
	tcase_add_test(tc, an_alias_reaches_the_secondary_with_its_key);
	tcase_add_test(tc, reencrypt_moves_blobs_to_a_regional_key_of_the_secondary);
	tcase_add_test(tc, a_disabled_key_is_disabled_in_the_secondary_too);
	tcase_add_test(tc, region_status_shows_the_link_and_no_lag);
	tcase_add_test(tc, a_sync_write_is_in_the_sync_secondary_when_it_is_answered);
	tcase_add_test(tc, a_sync_write_without_its_secondary_says_so);
	tcase_add_test(tc, every_kind_of_key_change_reaches_the_secondary);
	tcase_add_test(tc, a_destroy_key_is_in_the_sync_secondary_when_it_is_answered);
	tcase_add_test(tc, a_stopped_async_secondary_does_not_hold_sync_writes);
	tcase_add_test(tc, a_secondary_killed_and_brought_back_catches_up);
	tcase_add_test(tc, the_primary_leader_killed_mid_stream);
	tcase_add_test(tc, an_unlinked_region_is_refused);
	tcase_add_test(tc, region_calls_refuse_everyone_else);
	tcase_add_test(tc, promotion_needs_the_quorum_and_fences_the_old_primary);
	tcase_add_test(tc, malformed_link_region_is_refused_at_proposal);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(region_suite());

	/* The nodes serve the whole test case; gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
