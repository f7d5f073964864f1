/* test_node.c - one real kmsd process on a SoftHSM token, called through the C client over mutual TLS. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kms/blob.h"
#include "kms/hsm.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define KM "/kms.v1.KeyManagement/"

static kms_test_env env;
static kms_test_node node;

static void node_up(void)
{
	kms_test_env_init(&env);
	kms_test_node_init(&env, &node, 1);
	kms_test_node_start(&node);
}

static void node_down(void)
{
	kms_test_node_signal(&node, SIGTERM);
	kms_test_env_destroy(&env);
}

/* --- small call helpers --- */

typedef struct ctx_kv {
	const char *k, *v;
} ctx_kv;

/* Builds map entries; the arrays live in the caller's storage. */
#define CTX_ENTRIES(type, init, name, kvs, n)                                                     \
	type name##_e[8];                                                                         \
	type *name[8];                                                                            \
	for (size_t i_ = 0; i_ < (n); i_++) {                                                     \
		type tmp_ = init;                                                                 \
		name##_e[i_] = tmp_;                                                              \
		name##_e[i_].key = (char *)(kvs)[i_].k;                                           \
		name##_e[i_].value = (char *)(kvs)[i_].v;                                         \
		name[i_] = &name##_e[i_];                                                         \
	}

static Kms__V1__GenerateDataKeyResponse *gen_key(kms_client *c, const char *id, uint32_t nbytes,
						 const ctx_kv *kv, size_t n, kms_rpc_status *st)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	CTX_ENTRIES(Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry,
		    KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT, ents, kv, n);
	req.key_id = (char *)id;
	req.number_of_bytes = nbytes;
	req.encryption_context = ents;
	req.n_encryption_context = n;
	kms_client_call(c, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, st);
	return (Kms__V1__GenerateDataKeyResponse *)resp;
}

static Kms__V1__EncryptResponse *encrypt(kms_client *c, const char *id, const uint8_t *pt,
					 size_t len, const ctx_kv *kv, size_t n, kms_rpc_status *st)
{
	Kms__V1__EncryptRequest req = KMS__V1__ENCRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	CTX_ENTRIES(Kms__V1__EncryptRequest__EncryptionContextEntry,
		    KMS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT, ents, kv, n);
	req.key_id = (char *)id;
	req.plaintext.data = (uint8_t *)pt;
	req.plaintext.len = len;
	req.encryption_context = ents;
	req.n_encryption_context = n;
	kms_client_call(c, KM "Encrypt", &req.base, &kms__v1__encrypt_response__descriptor, &resp,
			st);
	return (Kms__V1__EncryptResponse *)resp;
}

static Kms__V1__DecryptResponse *decrypt(kms_client *c, const uint8_t *blob, size_t len,
					 const ctx_kv *kv, size_t n, const char *key_id,
					 kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	CTX_ENTRIES(Kms__V1__DecryptRequest__EncryptionContextEntry,
		    KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT, ents, kv, n);
	req.ciphertext_blob.data = (uint8_t *)blob;
	req.ciphertext_blob.len = len;
	req.encryption_context = ents;
	req.n_encryption_context = n;
	req.key_id = (char *)(key_id != NULL ? key_id : "");
	kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor, &resp,
			st);
	return (Kms__V1__DecryptResponse *)resp;
}

static Kms__V1__DescribeKeyResponse *describe(kms_client *c, const char *id, kms_rpc_status *st)
{
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	req.key_id = (char *)id;
	kms_client_call(c, KM "DescribeKey", &req.base, &kms__v1__describe_key_response__descriptor,
			&resp, st);
	return (Kms__V1__DescribeKeyResponse *)resp;
}

static size_t count_keys(kms_client *c, const char *who_note)
{
	Kms__V1__ListKeysRequest req = KMS__V1__LIST_KEYS_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	size_t n;

	req.page_size = 1000;
	ck_assert_msg(kms_client_call(c, KM "ListKeys", &req.base,
				      &kms__v1__list_keys_response__descriptor, &resp, &st) == 0,
		      "ListKeys (%s): %s", who_note, st.details);
	n = ((Kms__V1__ListKeysResponse *)resp)->n_keys;
	protobuf_c_message_free_unpacked(resp, NULL);
	return n;
}

#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define ASSERT_STATUS KMS_TEST_ASSERT_STATUS

static const ctx_kv ctx1[] = {{"tenant", "t1"}, {"purpose", "orders"}};
static const ctx_kv ctx1_reordered[] = {{"purpose", "orders"}, {"tenant", "t1"}};
static const ctx_kv ctx_wrong[] = {{"tenant", "t2"}, {"purpose", "orders"}};

/* --- key management --- */

START_TEST(create_describe_list_roundtrip)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	kms_client *other;
	kms_rpc_status st;
	Kms__V1__DescribeKeyResponse *d;

	ck_assert_int_eq(kms_test_create_key(admin, "orders", KMS_TEST_APP, &st), 0);
	d = describe(app, "orders", &st);
	ck_assert_msg(d != NULL, "DescribeKey: %s", st.details);
	ck_assert_str_eq(d->key->key_id, "orders");
	ck_assert_uint_eq(d->key->primary_version, 1);
	ck_assert_str_eq(d->key->created_by, KMS_TEST_ADMIN);
	ck_assert(d->key->enabled);
	ck_assert_uint_eq(d->key->policy->n_grants, 1);
	FREE(d);
	ck_assert_uint_ge(count_keys(app, "app"), 1);
	other = kms_test_client(&node, "other");
	ck_assert_uint_eq(count_keys(other, "other"), 0);
	kms_client_close(other);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(create_key_refusals_change_nothing)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT;
	Kms__V1__Grant *grants[] = {&grant};
	char *bad_ops[] = {"Destroy"};
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	size_t before;

	ck_assert_int_eq(kms_test_create_key(admin, "refusals", KMS_TEST_APP, &st), 0);
	before = count_keys(admin, "admin");
	/* A duplicate, a non-administrator, a bad id, a bad policy: each refused. */
	kms_test_create_key(admin, "refusals", KMS_TEST_APP, &st);
	ASSERT_STATUS(st, 6 /* ALREADY_EXISTS */, "already exists");
	kms_test_create_key(app, "by-app", KMS_TEST_APP, &st);
	ASSERT_STATUS(st, 7 /* PERMISSION_DENIED */, "not an administrator");
	kms_test_create_key(admin, "bad id!", KMS_TEST_APP, &st);
	ASSERT_STATUS(st, 3 /* INVALID_ARGUMENT */, "key");
	kms_test_create_key(admin, "", KMS_TEST_APP, &st);
	ASSERT_STATUS(st, 3, "key");
	grant.principal = (char *)KMS_TEST_APP;
	grant.operations = bad_ops;
	grant.n_operations = 1;
	policy.grants = grants;
	policy.n_grants = 1;
	req.key_id = (char *)"bad-policy";
	req.policy = &policy;
	kms_client_call(admin, KM "CreateKey", &req.base, &kms__v1__create_key_response__descriptor,
			&resp, &st);
	ASSERT_STATUS(st, 3, "Destroy");
	ck_assert_ptr_null(resp);
	ck_assert_uint_eq(count_keys(admin, "admin"), before);
	ck_assert_ptr_null(describe(admin, "by-app", &st));
	ASSERT_STATUS(st, 5 /* NOT_FOUND */, "by-app");
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(describe_unknown_and_unauthorized)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *other = kms_test_client(&node, "other");
	kms_rpc_status st;

	ck_assert_int_eq(kms_test_create_key(admin, "private", KMS_TEST_APP, &st), 0);
	ck_assert_ptr_null(describe(admin, "no-such-key", &st));
	ASSERT_STATUS(st, 5, "no-such-key");
	ck_assert_ptr_null(describe(other, "private", &st));
	ASSERT_STATUS(st, 7, KMS_TEST_OTHER);
	kms_client_close(admin);
	kms_client_close(other);
}
END_TEST

/* --- data keys --- */

START_TEST(generate_and_decrypt_roundtrip)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static const uint32_t sizes[] = {0, 16, 24, 32, 64};
	kms_rpc_status st;

	ck_assert_int_eq(kms_test_create_key(admin, "datakeys", KMS_TEST_APP, &st), 0);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		Kms__V1__GenerateDataKeyResponse *g = gen_key(app, "datakeys", sizes[i], ctx1, 2, &st);
		Kms__V1__DecryptResponse *d;

		ck_assert_msg(g != NULL, "GenerateDataKey(%u): %s", sizes[i], st.details);
		ck_assert_uint_eq(g->plaintext.len, sizes[i] == 0 ? 32 : sizes[i]);
		ck_assert_uint_eq(g->key_version, 1);
		/* The context is a map: the order pairs arrive in does not matter. */
		d = decrypt(app, g->ciphertext_blob.data, g->ciphertext_blob.len, ctx1_reordered, 2,
			    "datakeys", &st);
		ck_assert_msg(d != NULL, "Decrypt: %s", st.details);
		ck_assert_uint_eq(d->plaintext.len, g->plaintext.len);
		ck_assert(memcmp(d->plaintext.data, g->plaintext.data, d->plaintext.len) == 0);
		ck_assert_str_eq(d->key_id, "datakeys");
		FREE(d);
		FREE(g);
	}
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(generate_bad_sizes_and_without_plaintext)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyResponse *g;
	ProtobufCMessage *resp = NULL;
	Kms__V1__DecryptResponse *d;
	kms_rpc_status st;

	ck_assert_int_eq(kms_test_create_key(admin, "sizes", KMS_TEST_APP, &st), 0);
	ck_assert_ptr_null(gen_key(app, "sizes", 15, NULL, 0, &st));
	ASSERT_STATUS(st, 3, "number_of_bytes");
	ck_assert_ptr_null(gen_key(app, "sizes", 65, NULL, 0, &st));
	ASSERT_STATUS(st, 3, "number_of_bytes");
	req.key_id = (char *)"sizes";
	req.without_plaintext = 1;
	ck_assert_int_eq(kms_client_call(app, KM "GenerateDataKey", &req.base,
					 &kms__v1__generate_data_key_response__descriptor, &resp,
					 &st),
			 0);
	g = (Kms__V1__GenerateDataKeyResponse *)resp;
	ck_assert_uint_eq(g->plaintext.len, 0);
	d = decrypt(app, g->ciphertext_blob.data, g->ciphertext_blob.len, NULL, 0, NULL, &st);
	ck_assert_msg(d != NULL, "Decrypt: %s", st.details);
	ck_assert_uint_eq(d->plaintext.len, 32);
	FREE(d);
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(encrypt_limits)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static uint8_t big[KMS_PLAINTEXT_MAX + 1];
	Kms__V1__EncryptResponse *e;
	Kms__V1__DecryptResponse *d;
	kms_rpc_status st;

	memset(big, 0xa5, sizeof(big));
	ck_assert_int_eq(kms_test_create_key(admin, "limits", KMS_TEST_APP, &st), 0);
	e = encrypt(app, "limits", big, KMS_PLAINTEXT_MAX, ctx1, 2, &st);
	ck_assert_msg(e != NULL, "Encrypt 4096: %s", st.details);
	d = decrypt(app, e->ciphertext_blob.data, e->ciphertext_blob.len, ctx1, 2, NULL, &st);
	ck_assert_msg(d != NULL, "Decrypt: %s", st.details);
	ck_assert_uint_eq(d->plaintext.len, KMS_PLAINTEXT_MAX);
	ck_assert(memcmp(d->plaintext.data, big, KMS_PLAINTEXT_MAX) == 0);
	FREE(d);
	FREE(e);
	ck_assert_ptr_null(encrypt(app, "limits", big, sizeof(big), NULL, 0, &st));
	ASSERT_STATUS(st, 3, "plaintext");
	ck_assert_ptr_null(encrypt(app, "limits", big, 0, NULL, 0, &st));
	ASSERT_STATUS(st, 3, "plaintext");
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(tampered_blob_and_wrong_context_fail_alike)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyResponse *g;
	Kms__V1__DecryptResponse *d;
	kms_rpc_status st_ctx, st_tag, st_ct;
	uint8_t *copy;
	size_t len;

	ck_assert_int_eq(kms_test_create_key(admin, "tamper", KMS_TEST_APP, &st_ctx), 0);
	g = gen_key(app, "tamper", 32, ctx1, 2, &st_ctx);
	ck_assert_ptr_nonnull(g);
	len = g->ciphertext_blob.len;
	copy = malloc(len);
	ck_assert_ptr_null(decrypt(app, g->ciphertext_blob.data, len, ctx_wrong, 2, NULL, &st_ctx));
	ck_assert_ptr_null(decrypt(app, g->ciphertext_blob.data, len, ctx1, 1, NULL, &st_ctx));
	memcpy(copy, g->ciphertext_blob.data, len);
	copy[len - 1] ^= 0x01; /* the tag */
	ck_assert_ptr_null(decrypt(app, copy, len, ctx1, 2, NULL, &st_tag));
	memcpy(copy, g->ciphertext_blob.data, len);
	copy[len - 20] ^= 0x80; /* the ciphertext */
	ck_assert_ptr_null(decrypt(app, copy, len, ctx1, 2, NULL, &st_ct));
	ASSERT_STATUS(st_ctx, 3, "failed authentication");
	ck_assert_int_eq(st_tag.code, st_ctx.code);
	ck_assert_str_eq(st_tag.details, st_ctx.details);
	ck_assert_str_eq(st_ct.details, st_ctx.details);
	/* Nothing was lost: the untouched blob still opens. */
	d = decrypt(app, g->ciphertext_blob.data, len, ctx1, 2, NULL, &st_ct);
	ck_assert_ptr_nonnull(d);
	FREE(d);
	free(copy);
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(unknown_key_and_version)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyResponse *g;
	kms_blob_header h;
	const uint8_t *ct;
	size_t ct_len, written;
	uint8_t forged[KMS_BLOB_MAX];
	kms_rpc_status st;

	/* For anyone but an administrator an unknown key reads like a key
	 * without a grant: key ids cannot be probed. */
	ck_assert_ptr_null(gen_key(app, "no-such-key", 32, NULL, 0, &st));
	ASSERT_STATUS(st, 7, "may not GenerateDataKey with key 'no-such-key'");
	ck_assert_ptr_null(encrypt(app, "no-such-key", (const uint8_t *)"x", 1, NULL, 0, &st));
	ASSERT_STATUS(st, 7, "may not Encrypt with key 'no-such-key'");
	ck_assert_ptr_null(describe(app, "no-such-key", &st));
	ASSERT_STATUS(st, 7, "may not DescribeKey with key 'no-such-key'");
	ck_assert_ptr_null(describe(admin, "no-such-key", &st));
	ASSERT_STATUS(st, 5, "key 'no-such-key' not found");
	ck_assert_int_eq(kms_test_create_key(admin, "known", KMS_TEST_APP, &st), 0);
	g = gen_key(app, "known", 32, NULL, 0, &st);
	ck_assert_ptr_nonnull(g);
	ck_assert_int_eq(kms_blob_decode(g->ciphertext_blob.data, g->ciphertext_blob.len, &h, &ct,
					 &ct_len, NULL), KMS_OK);
	/* The same ciphertext relabelled to a key or version that does not exist. */
	snprintf(h.key_id, sizeof(h.key_id), "%s", "no-such-key");
	ck_assert_int_eq(kms_blob_encode(&h, ct, ct_len, forged, sizeof(forged), &written, NULL),
			 KMS_OK);
	ck_assert_ptr_null(decrypt(app, forged, written, NULL, 0, NULL, &st));
	ASSERT_STATUS(st, 7, "may not Decrypt with key 'no-such-key'");
	ck_assert_int_eq(kms_blob_decode(g->ciphertext_blob.data, g->ciphertext_blob.len, &h, &ct,
					 &ct_len, NULL), KMS_OK);
	h.key_version = 7;
	ck_assert_int_eq(kms_blob_encode(&h, ct, ct_len, forged, sizeof(forged), &written, NULL),
			 KMS_OK);
	ck_assert_ptr_null(decrypt(app, forged, written, NULL, 0, NULL, &st));
	ASSERT_STATUS(st, 5, "version");
	/* key_id given and not the blob's key. */
	ck_assert_ptr_null(decrypt(app, g->ciphertext_blob.data, g->ciphertext_blob.len, NULL, 0,
				   "orders", &st));
	ASSERT_STATUS(st, 3, "does not match");
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(policy_refuses_other_principals)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	kms_client *other = kms_test_client(&node, "other");
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;

	ck_assert_int_eq(kms_test_create_key(admin, "guarded", KMS_TEST_APP, &st), 0);
	ck_assert_ptr_null(gen_key(other, "guarded", 32, NULL, 0, &st));
	ASSERT_STATUS(st, 7, "GenerateDataKey");
	ck_assert_ptr_null(encrypt(other, "guarded", (const uint8_t *)"x", 1, NULL, 0, &st));
	ASSERT_STATUS(st, 7, "Encrypt");
	/* An administrator is not a key user unless a grant says so. */
	ck_assert_ptr_null(gen_key(admin, "guarded", 32, NULL, 0, &st));
	ASSERT_STATUS(st, 7, KMS_TEST_ADMIN);
	g = gen_key(app, "guarded", 32, NULL, 0, &st);
	ck_assert_ptr_nonnull(g);
	ck_assert_ptr_null(decrypt(other, g->ciphertext_blob.data, g->ciphertext_blob.len, NULL, 0,
				   NULL, &st));
	ASSERT_STATUS(st, 7, "Decrypt");
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
	kms_client_close(other);
}
END_TEST

START_TEST(malformed_empty_and_oversized_requests)
{
	kms_client *app = kms_test_client(&node, "app");
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	static uint8_t huge[100 * 1024];
	kms_buf out = {0};
	kms_rpc_status st;

	kms_client_call_raw(app, KM "Decrypt", garbage, sizeof(garbage), &out, &st);
	ASSERT_STATUS(st, 3, "malformed DecryptRequest");
	kms_client_call_raw(app, KM "GenerateDataKey", garbage, sizeof(garbage), &out, &st);
	ASSERT_STATUS(st, 3, "malformed GenerateDataKeyRequest");
	kms_client_call_raw(app, KM "Decrypt", NULL, 0, &out, &st);
	ASSERT_STATUS(st, 3, "ciphertext");
	kms_client_call_raw(app, KM "GenerateDataKey", NULL, 0, &out, &st);
	ASSERT_STATUS(st, 3, "key");
	kms_client_call_raw(app, KM "Encrypt", huge, sizeof(huge), &out, &st);
	ck_assert_int_eq(st.code, 8 /* RESOURCE_EXHAUSTED */);
	kms_client_call_raw(app, KM "Destroy", NULL, 0, &out, &st);
	ASSERT_STATUS(st, 12 /* UNIMPLEMENTED */, "Destroy");
	kms_client_close(app);
}
END_TEST

START_TEST(handshake_refuses_bad_identities)
{
	static const char *who[] = {"none", "other-client", "expired"};

	for (size_t i = 0; i < 3; i++) {
		kms_client *c = kms_test_client(&node, who[i]);
		kms_rpc_status st;

		ck_assert_ptr_null(describe(c, "orders", &st));
		ck_assert_msg(st.code == 14 /* UNAVAILABLE */, "%s: status %d (%s)", who[i], st.code,
			      st.details);
		kms_client_close(c);
	}
}
END_TEST

struct worker_arg {
	kms_client *c;
	int ok;
	char err[1024];
};

static void *concurrent_worker(void *p)
{
	struct worker_arg *a = p;
	kms_rpc_status st;
	Kms__V1__GenerateDataKeyResponse *g = gen_key(a->c, "busy", 32, ctx1, 2, &st);
	Kms__V1__DecryptResponse *d;

	if (g == NULL) {
		snprintf(a->err, sizeof(a->err), "GenerateDataKey: %s", st.details);
		return NULL;
	}
	d = decrypt(a->c, g->ciphertext_blob.data, g->ciphertext_blob.len, ctx1, 2, NULL, &st);
	a->ok = d != NULL && d->plaintext.len == 32 &&
		memcmp(d->plaintext.data, g->plaintext.data, 32) == 0;
	if (!a->ok)
		snprintf(a->err, sizeof(a->err), "Decrypt: %s", st.details);
	if (d != NULL)
		FREE(d);
	FREE(g);
	return NULL;
}

START_TEST(hundred_concurrent_calls)
{
	enum { N = 100 };
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static struct worker_arg args[N];
	pthread_t t[N];
	kms_rpc_status st;

	ck_assert_int_eq(kms_test_create_key(admin, "busy", KMS_TEST_APP, &st), 0);
	for (int i = 0; i < N; i++) {
		args[i].c = app;
		args[i].ok = 0;
		ck_assert_int_eq(pthread_create(&t[i], NULL, concurrent_worker, &args[i]), 0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < N; i++)
		ck_assert_msg(args[i].ok, "call %d: %s", i, args[i].err);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

/* The node's user PIN, as ops/softhsm-token wrote it (no newline). */
static void read_token_pin(char pin[128])
{
	char path[PATH_MAX];
	FILE *f;

	memset(pin, 0, 128);
	KMS_TEST_PATH(path, "%s/token/pin", node.dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(pin, 128, f));
	fclose(f);
}

START_TEST(token_holds_no_readable_secret)
{
	char pin[128];
	kms_hsm *hsm = NULL;
	kms_err err = {0};
	size_t n = 0;

	read_token_pin(pin);
	setenv("SOFTHSM2_CONF", node.softhsm_conf, 1);
	ck_assert_msg(kms_hsm_open(getenv("KMS_PKCS11_MODULE") ? getenv("KMS_PKCS11_MODULE")
							       : "/usr/lib/softhsm/libsofthsm2.so",
				   node.token_label, pin, &hsm, &err) == KMS_OK,
		      "%s", err.msg);
	ck_assert_msg(kms_hsm_audit_secret_keys(hsm, &n, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_ge(n, 1); /* at least the domain key, as a token object */
	kms_hsm_close(hsm);
}
END_TEST

/* --- restart --- */

START_TEST(kill9_restart_keeps_every_key)
{
	enum { N = 5 };
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyResponse *g[N];
	kms_rpc_status st;
	char id[32];

	for (int i = 0; i < N; i++) {
		KMS_TEST_PATH(id, "durable-%d", i);
		ck_assert_int_eq(kms_test_create_key(admin, id, KMS_TEST_APP, &st), 0);
		g[i] = gen_key(app, id, 32, ctx1, 2, &st);
		ck_assert_ptr_nonnull(g[i]);
	}
	kms_client_close(admin);
	kms_client_close(app);
	kms_test_node_signal(&node, SIGKILL);
	kms_test_node_start(&node);
	admin = kms_test_client(&node, "admin");
	app = kms_test_client(&node, "app");
	ck_assert_uint_eq(count_keys(admin, "admin"), N);
	for (int i = 0; i < N; i++) {
		Kms__V1__DecryptResponse *d = decrypt(app, g[i]->ciphertext_blob.data,
						      g[i]->ciphertext_blob.len, ctx1, 2, NULL, &st);

		ck_assert_msg(d != NULL, "blob %d after restart: %s", i, st.details);
		ck_assert(memcmp(d->plaintext.data, g[i]->plaintext.data, 32) == 0);
		FREE(d);
		FREE(g[i]);
	}
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

/* --- start-up refusals --- */

static void expect_refusal(const char *sed, const char *message)
{
	char conf[PATH_MAX];
	int code;

	KMS_TEST_PATH(conf, "%s/bad.conf", node.dir);
	kms_test_sh("sed %s '%s' > '%s' && chmod 644 '%s'", sed, node.conf, conf, conf);
	kms_test_sh(": > '%s'", node.log);
	code = kms_test_node_run_expect_exit(&node, conf);
	ck_assert_int_eq(code, 1);
	ck_assert_msg(kms_test_file_contains(node.log, message), "log lacks '%s'", message);
}

START_TEST(startup_names_what_is_wrong)
{
	char wrong_pin[PATH_MAX];

	KMS_TEST_PATH(wrong_pin, "%s/wrong-pin", node.dir);
	kms_test_sh("printf 0000 > '%s' && chmod 600 '%s'", wrong_pin, wrong_pin);
	expect_refusal("-e 's#^pin_file.*#pin_file = wrong-pin#'", "wrong PIN");
	expect_refusal("-e 's#^token_label.*#token_label = no-such-token#'",
		       "no token labelled 'no-such-token'");
	expect_refusal("-e 's#^module.*#module = /nonexistent/libpkcs11.so#'",
		       "cannot load PKCS#11 module");
}
END_TEST

/* --- the process: core dumps, /proc, the environment --- */

/* The sed script that turns core dumps on in a node's configuration. */
#define SED_ALLOW_CORE_DUMPS "-e 's/^\\[node\\]$/[node]\\nallow_core_dumps = true/'"

static void node_env_up(void)
{
	kms_test_env_init(&env);
	kms_test_node_init(&env, &node, 1);
}

/* (Re)starts the node, as a process without capabilities, with the
 * configuration ops/node-config writes edited by sed (NULL: as written). */
static void start_unprivileged(const char *sed)
{
	kms_test_node_signal(&node, SIGTERM);
	kms_test_node_reconfigure(&node, NULL);
	if (sed != NULL)
		kms_test_sh("sed -i %s '%s'", sed, node.conf);
	node.drop_caps = 1;
	kms_test_node_start(&node);
}

/* The "Max core file size" soft and hard limits of pid, as /proc/PID/limits
 * spells them ("0", "unlimited"). */
static void core_limits(pid_t pid, char soft[32], char hard[32])
{
	static const char field[] = "Max core file size";
	char path[64], line[256];
	FILE *f;
	int found = 0;

	KMS_TEST_PATH(path, "/proc/%d/limits", (int)pid);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	while (!found && fgets(line, sizeof(line), f) != NULL)
		found = strncmp(line, field, sizeof(field) - 1) == 0 &&
			sscanf(line + sizeof(field) - 1, "%31s %31s", soft, hard) == 2;
	fclose(f);
	ck_assert_msg(found, "%s has no '%s' line", path, field);
}

/*
 * Reads /proc/PID/name from a child with the test's user and no
 * capabilities: what any other process of kmsd's user could read. Returns
 * 0 with the content in buf (*len bytes, at most cap), or the errno of the
 * open.
 */
static int read_proc_unprivileged(pid_t pid, const char *name, char *buf, size_t cap, size_t *len)
{
	char path[64];
	int fds[2], status;
	pid_t child;
	ssize_t got;

	KMS_TEST_PATH(path, "/proc/%d/%s", (int)pid, name);
	ck_assert_int_eq(pipe(fds), 0);
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		char chunk[4096];
		ssize_t n;
		int fd;

		close(fds[0]);
		if (kms_test_drop_caps() != 0)
			_exit(255);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			_exit(errno > 0 && errno < 255 ? errno : 254);
		while ((n = read(fd, chunk, sizeof(chunk))) > 0)
			if (write(fds[1], chunk, (size_t)n) != n)
				_exit(253);
		_exit(n == 0 ? 0 : 252);
	}
	close(fds[1]);
	*len = 0;
	/* Past cap the rest is read and dropped: a child left writing to a
	 * closed pipe would die of SIGPIPE (a long environment, as under the
	 * sanitizers' options). */
	for (;;) {
		char sink[4096];

		got = *len < cap ? read(fds[0], buf + *len, cap - *len)
				 : read(fds[0], sink, sizeof(sink));
		if (got <= 0)
			break;
		if (*len < cap)
			*len += (size_t)got;
	}
	close(fds[0]);
	ck_assert_int_eq(waitpid(child, &status, 0), child);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) < 252,
		      "reading %s without capabilities: status 0x%x", path, status);
	return WEXITSTATUS(status);
}

START_TEST(core_dumps_off_by_default)
{
	char soft[32], hard[32], buf[64];
	size_t n;

	start_unprivileged(NULL);
	core_limits(node.pid, soft, hard);
	ck_assert_str_eq(soft, "0");
	ck_assert_str_eq(hard, "0");
	/* Not dumpable: another process of the same user cannot read its
	 * memory or its environment. */
	ck_assert_int_eq(read_proc_unprivileged(node.pid, "environ", buf, sizeof(buf), &n), EACCES);
	ck_assert_int_eq(read_proc_unprivileged(node.pid, "mem", buf, sizeof(buf), &n), EACCES);
}
END_TEST

START_TEST(core_dumps_allowed_by_the_configuration)
{
	const char *asan = getenv("ASAN_OPTIONS");
	char soft[32], hard[32], want_soft[32], want_hard[32], *saved_asan = NULL;
	char opts[1024], buf[64];
	struct rlimit saved, mine;
	size_t n;

	/* A soft limit of our own that kmsd inherits and must keep. */
	ck_assert_int_eq(getrlimit(RLIMIT_CORE, &saved), 0);
	mine = saved;
	mine.rlim_cur = saved.rlim_max < (64u << 20) ? saved.rlim_max : (64u << 20);
	ck_assert_msg(mine.rlim_cur > 0, "the test's hard RLIMIT_CORE is 0: nothing to keep");
	ck_assert_int_eq(setrlimit(RLIMIT_CORE, &mine), 0);
	snprintf(want_soft, sizeof(want_soft), "%llu", (unsigned long long)mine.rlim_cur);
	if (mine.rlim_max == RLIM_INFINITY)
		snprintf(want_hard, sizeof(want_hard), "unlimited");
	else
		snprintf(want_hard, sizeof(want_hard), "%llu", (unsigned long long)mine.rlim_max);
	/* ASan sets the soft limit to 0 in every process it starts unless told
	 * not to; kmsd's own choice is what this test looks at. */
	if (asan != NULL)
		saved_asan = strdup(asan);
	snprintf(opts, sizeof(opts), "%s%sdisable_coredump=0", asan != NULL ? asan : "",
		 asan != NULL ? ":" : "");
	ck_assert_int_eq(setenv("ASAN_OPTIONS", opts, 1), 0);

	start_unprivileged(SED_ALLOW_CORE_DUMPS);

	if (saved_asan != NULL)
		ck_assert_int_eq(setenv("ASAN_OPTIONS", saved_asan, 1), 0);
	else
		ck_assert_int_eq(unsetenv("ASAN_OPTIONS"), 0);
	free(saved_asan);
	ck_assert_int_eq(setrlimit(RLIMIT_CORE, &saved), 0);
	core_limits(node.pid, soft, hard);
	ck_assert_str_eq(soft, want_soft);
	ck_assert_str_eq(hard, want_hard);
	/* Dumpable: the same user may read it. */
	ck_assert_int_eq(read_proc_unprivileged(node.pid, "environ", buf, sizeof(buf), &n), 0);
}
END_TEST

START_TEST(pin_env_leaves_no_trace_in_environ)
{
	static char environ_bytes[65536];
	char pin[128];
	size_t n;

	read_token_pin(pin);
	/* kmsd inherits the variable; core dumps allowed, so that a process of
	 * the same user may read its environment: that is what is looked at. */
	ck_assert_int_eq(setenv("KMSD_IT_PIN", pin, 1), 0);
	start_unprivileged("-e 's#^pin_file.*#pin_env = KMSD_IT_PIN#' " SED_ALLOW_CORE_DUMPS);
	ck_assert_int_eq(unsetenv("KMSD_IT_PIN"), 0);
	ck_assert_int_eq(read_proc_unprivileged(node.pid, "environ", environ_bytes,
						sizeof(environ_bytes), &n), 0);
	/* The block was read whole (the variable the fixture sets is there)... */
	ck_assert_ptr_nonnull(memmem(environ_bytes, n, "SOFTHSM2_CONF=", 14));
	/* ...and the PIN that logged in to the token is not in it. */
	ck_assert_msg(memmem(environ_bytes, n, pin, strlen(pin)) == NULL,
		      "kmsd's /proc/PID/environ still holds the PIN");
}
END_TEST

/* --- the bound on unwrapped versions ([hsm] max_unwrapped_versions) --- */

#define SMALL_CACHE 16
#define MANY_KEYS (3 * SMALL_CACHE)
#define SED_SMALL_CACHE "-e 's/^\\[hsm\\]$/[hsm]\\nmax_unwrapped_versions = 16/'"

static void small_cache_up(void)
{
	kms_test_env_init(&env);
	kms_test_node_init(&env, &node, 1);
	kms_test_sh("sed -i %s '%s'", SED_SMALL_CACHE, node.conf);
	kms_test_node_start(&node);
}

struct many_arg {
	kms_client *c;
	Kms__V1__GenerateDataKeyResponse **g;
	int start, ok;
	char err[1024];
};

/* Decrypts every key's blob once, from key start on, round the ring. */
static void *decrypt_all(void *p)
{
	struct many_arg *a = p;
	kms_rpc_status st;

	for (int j = 0; j < MANY_KEYS; j++) {
		const Kms__V1__GenerateDataKeyResponse *g = a->g[(a->start + j) % MANY_KEYS];
		Kms__V1__DecryptResponse *d =
		    decrypt(a->c, g->ciphertext_blob.data, g->ciphertext_blob.len, ctx1, 2, NULL, &st);

		if (d == NULL || d->plaintext.len != g->plaintext.len ||
		    memcmp(d->plaintext.data, g->plaintext.data, g->plaintext.len) != 0) {
			snprintf(a->err, sizeof(a->err), "key %d: %s", (a->start + j) % MANY_KEYS,
				 d == NULL ? st.details : "another plaintext");
			if (d != NULL)
				FREE(d);
			return NULL;
		}
		FREE(d);
		a->ok++;
	}
	return NULL;
}

/*
 * Three times more keys than the node keeps unwrapped, used round-robin by
 * four concurrent clients: every call succeeds while versions are evicted
 * and unwrapped again under calls in flight.
 */
START_TEST(more_keys_than_unwrapped_versions)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static Kms__V1__GenerateDataKeyResponse *g[MANY_KEYS];
	static struct many_arg args[4];
	pthread_t t[4];
	kms_rpc_status st;
	char id[32];

	ck_assert_msg(kms_test_wait_log(&node, "at most 16 master-key versions stay unwrapped", 5),
		      "the node does not say it applies max_unwrapped_versions = 16");
	for (int i = 0; i < MANY_KEYS; i++) {
		snprintf(id, sizeof(id), "many-%d", i);
		ck_assert_int_eq(kms_test_create_key(admin, id, KMS_TEST_APP, &st), 0);
		g[i] = gen_key(app, id, 32, ctx1, 2, &st);
		ck_assert_msg(g[i] != NULL, "GenerateDataKey %s: %s", id, st.details);
	}
	for (int i = 0; i < 4; i++) {
		args[i].c = app;
		args[i].g = g;
		args[i].start = i * MANY_KEYS / 4;
		args[i].ok = 0;
		ck_assert_int_eq(pthread_create(&t[i], NULL, decrypt_all, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(args[i].ok == MANY_KEYS, "client %d: %s", i, args[i].err);
	for (int i = 0; i < MANY_KEYS; i++)
		FREE(g[i]);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(startup_refuses_a_bad_unwrapped_bound)
{
	expect_refusal("-e 's/^\\[hsm\\]$/[hsm]\\nmax_unwrapped_versions = 15/'",
		       "'max_unwrapped_versions' in [hsm] must be a whole number from 16 to 1000000, "
		       "not '15'");
	expect_refusal("-e 's/^\\[hsm\\]$/[hsm]\\nmax_unwrapped_versions = lots/'",
		       "'max_unwrapped_versions' in [hsm] must be a whole number from 16 to 1000000, "
		       "not 'lots'");
}
END_TEST

static Suite *node_suite(void)
{
	Suite *s = suite_create("kmsd node");
	TCase *api = tcase_create("api");
	TCase *restart = tcase_create("restart");
	TCase *startup = tcase_create("startup");
	TCase *process = tcase_create("process");
	TCase *many;

	tcase_add_unchecked_fixture(api, node_up, node_down);
	tcase_set_timeout(api, 120);
	tcase_add_test(api, create_describe_list_roundtrip);
	tcase_add_test(api, create_key_refusals_change_nothing);
	tcase_add_test(api, describe_unknown_and_unauthorized);
	tcase_add_test(api, generate_and_decrypt_roundtrip);
	tcase_add_test(api, generate_bad_sizes_and_without_plaintext);
	tcase_add_test(api, encrypt_limits);
	tcase_add_test(api, tampered_blob_and_wrong_context_fail_alike);
	tcase_add_test(api, unknown_key_and_version);
	tcase_add_test(api, policy_refuses_other_principals);
	tcase_add_test(api, malformed_empty_and_oversized_requests);
	tcase_add_test(api, handshake_refuses_bad_identities);
	tcase_add_test(api, hundred_concurrent_calls);
	tcase_add_test(api, token_holds_no_readable_secret);
	suite_add_tcase(s, api);

	tcase_add_unchecked_fixture(restart, node_up, node_down);
	tcase_set_timeout(restart, 120);
	tcase_add_test(restart, kill9_restart_keeps_every_key);
	suite_add_tcase(s, restart);

	tcase_add_unchecked_fixture(startup, node_up, node_down);
	tcase_set_timeout(startup, 120);
	tcase_add_test(startup, startup_names_what_is_wrong);
	suite_add_tcase(s, startup);

	many = tcase_create("many keys");
	tcase_add_unchecked_fixture(many, small_cache_up, node_down);
	tcase_set_timeout(many, 120);
	tcase_add_test(many, more_keys_than_unwrapped_versions);
	tcase_add_test(many, startup_refuses_a_bad_unwrapped_bound);
	suite_add_tcase(s, many);

	tcase_add_unchecked_fixture(process, node_env_up, node_down);
	tcase_set_timeout(process, 120);
	tcase_add_test(process, core_dumps_off_by_default);
	tcase_add_test(process, core_dumps_allowed_by_the_configuration);
	tcase_add_test(process, pin_env_leaves_no_trace_in_environ);
	suite_add_tcase(s, process);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(node_suite());

	/* One kmsd serves a whole test case, and gRPC does not survive fork():
	 * run the tests in this process. */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
