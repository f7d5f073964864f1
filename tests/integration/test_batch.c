/* test_batch.c - ReEncrypt and the batch calls against real kmsd processes: grants, bad items answered in place, size limits, a follower. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/batch.h"
#include "kms/blob.h"
#include "kms/client_batch.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define KM "/kms.v1.KeyManagement/"
#define AUTH_FAILED_MSG "failed authentication"

enum {
	ST_OK = 0,
	ST_INVALID_ARGUMENT = 3,
	ST_NOT_FOUND = 5,
	ST_PERMISSION_DENIED = 7,
	ST_RESOURCE_EXHAUSTED = 8,
};

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

#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define ASSERT_STATUS(code, details, want, text)                                                  \
	do {                                                                                      \
		ck_assert_msg((int)(code) == (want), "want status %d, got %d: %s", (int)(want),   \
			      (int)(code), (details));                                            \
		ck_assert_msg(strstr((details), (text)) != NULL,                                  \
			      "status details '%s' do not mention '%s'", (details), (text));      \
	} while (0)

/* --- keys and encryption contexts --- */

/* CreateKey of id through admin, granting the service exactly ops. */
static void create_key(kms_client *admin, const char *id, const char *ops_csv)
{
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT;
	Kms__V1__Grant *grants[] = {&grant};
	char *ops[8], buf[128], *save = NULL;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	size_t n = 0;

	snprintf(buf, sizeof(buf), "%s", ops_csv);
	for (char *t = strtok_r(buf, ",", &save); t != NULL && n < 8; t = strtok_r(NULL, ",", &save))
		ops[n++] = t;
	grant.principal = (char *)KMS_TEST_APP;
	grant.operations = ops;
	grant.n_operations = n;
	policy.grants = grants;
	policy.n_grants = n > 0 ? 1 : 0;
	req.key_id = (char *)id;
	req.policy = &policy;
	ck_assert_msg(kms_client_call(admin, KM "CreateKey", &req.base,
				      &kms__v1__create_key_response__descriptor, &resp, &st) == 0,
		      "CreateKey %s: %s", id, st.details);
	FREE(resp);
}

typedef struct ctx_kv {
	const char *k, *v;
} ctx_kv;

#define CTX_MAX 8

/*
 * An encryption context as the map entries of any request (every entry
 * type is a message of key = 1 and value = 2), in storage of its own that
 * the request borrows.
 */
typedef struct test_ctx {
	ProtobufCMessage *p[CTX_MAX];
	_Alignas(16) unsigned char mem[CTX_MAX][64];
	size_t n;
} test_ctx;

static void *ctx_make(test_ctx *c, const ProtobufCMessageDescriptor *d, const ctx_kv *kv, size_t n)
{
	ck_assert_uint_le(n, CTX_MAX);
	ck_assert_uint_le(d->sizeof_message, sizeof(c->mem[0]));
	c->n = n;
	for (size_t i = 0; i < n; i++) {
		ProtobufCMessage *m = (ProtobufCMessage *)(void *)c->mem[i];
		const ProtobufCFieldDescriptor *k = protobuf_c_message_descriptor_get_field(d, 1);
		const ProtobufCFieldDescriptor *v = protobuf_c_message_descriptor_get_field(d, 2);

		protobuf_c_message_init(d, m);
		*(const char **)(void *)((char *)m + k->offset) = kv[i].k;
		*(const char **)(void *)((char *)m + v->offset) = kv[i].v;
		c->p[i] = m;
	}
	return c->p;
}

static const ctx_kv ctx1[] = {{"tenant", "t1"}, {"purpose", "orders"}};
static const ctx_kv ctx2[] = {{"tenant", "t2"}};
static const ctx_kv ctx_wrong[] = {{"tenant", "t9"}, {"purpose", "orders"}};

/* --- single calls --- */

/* A data key under key_id with ctx1; the caller frees it. */
static Kms__V1__GenerateDataKeyResponse *gen_key(kms_client *c, const char *key_id)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	test_ctx tc;

	req.key_id = (char *)key_id;
	req.encryption_context =
		ctx_make(&tc, &kms__v1__generate_data_key_request__encryption_context_entry__descriptor,
			 ctx1, 2);
	req.n_encryption_context = tc.n;
	kms_client_call(c, KM "GenerateDataKey", &req.base,
			&kms__v1__generate_data_key_response__descriptor, &resp, &st);
	ck_assert_msg(resp != NULL, "GenerateDataKey %s: %s", key_id, st.details);
	return (Kms__V1__GenerateDataKeyResponse *)resp;
}

static Kms__V1__DecryptResponse *decrypt(kms_client *c, const ProtobufCBinaryData *blob,
					 const ctx_kv *kv, size_t n, kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	test_ctx tc;

	req.ciphertext_blob = *blob;
	req.encryption_context =
		ctx_make(&tc, &kms__v1__decrypt_request__encryption_context_entry__descriptor, kv, n);
	req.n_encryption_context = tc.n;
	kms_client_call(c, KM "Decrypt", &req.base, &kms__v1__decrypt_response__descriptor, &resp,
			st);
	return (Kms__V1__DecryptResponse *)resp;
}

/* The parts of a ReEncryptRequest a test varies; the contexts are ctx1 -> ctx2 unless set. */
typedef struct rewrap {
	ProtobufCBinaryData blob;
	const char *source_key_id;
	const char *to;
	const ctx_kv *from_ctx, *to_ctx;
	size_t n_from, n_to;
	test_ctx from_tc, to_tc;
} rewrap;

static void rewrap_init(rewrap *r, const ProtobufCBinaryData *blob, const char *to)
{
	memset(r, 0, sizeof(*r));
	r->blob = *blob;
	r->source_key_id = "";
	r->to = to;
	r->from_ctx = ctx1;
	r->n_from = 2;
	r->to_ctx = ctx2;
	r->n_to = 1;
}

/* Fills req from r; req borrows r's storage. */
static void rewrap_request(rewrap *r, Kms__V1__ReEncryptRequest *req)
{
	kms__v1__re_encrypt_request__init(req);
	req->ciphertext_blob = r->blob;
	req->source_key_id = (char *)r->source_key_id;
	req->destination_key_id = (char *)r->to;
	req->source_encryption_context = ctx_make(
		&r->from_tc, &kms__v1__re_encrypt_request__source_encryption_context_entry__descriptor,
		r->from_ctx, r->n_from);
	req->n_source_encryption_context = r->n_from;
	req->destination_encryption_context =
		ctx_make(&r->to_tc,
			 &kms__v1__re_encrypt_request__destination_encryption_context_entry__descriptor,
			 r->to_ctx, r->n_to);
	req->n_destination_encryption_context = r->n_to;
}

static Kms__V1__ReEncryptResponse *reencrypt(kms_client *c, rewrap *r, kms_rpc_status *st)
{
	Kms__V1__ReEncryptRequest req;
	Kms__V1__ReEncryptResponse *resp = NULL;

	rewrap_request(r, &req);
	kms_client_reencrypt(c, &req, &resp, st);
	return resp;
}

/* --- ReEncrypt --- */

START_TEST(reencrypt_moves_a_blob_to_another_key)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyResponse *g;
	Kms__V1__ReEncryptResponse *r, *again;
	Kms__V1__DecryptResponse *d;
	kms_rpc_status st;
	rewrap rw;

	create_key(admin, "re-src", "GenerateDataKey,ReEncryptFrom");
	create_key(admin, "re-dst", "Decrypt,ReEncryptTo");
	create_key(admin, "re-both", "GenerateDataKey,Decrypt,ReEncryptFrom,ReEncryptTo");
	g = gen_key(app, "re-src");
	rewrap_init(&rw, &g->ciphertext_blob, "re-dst");
	r = reencrypt(app, &rw, &st);
	ck_assert_msg(r != NULL, "ReEncrypt: %s", st.details);
	ck_assert_str_eq(r->key_id, "re-dst");
	ck_assert_uint_eq(r->key_version, 1);
	ck_assert_str_eq(r->source_key_id, "re-src");
	ck_assert_uint_eq(r->source_key_version, 1);
	/* The new blob holds the same data key, under the new key and context. */
	d = decrypt(app, &r->ciphertext_blob, ctx2, 1, &st);
	ck_assert_msg(d != NULL, "Decrypt of the new blob: %s", st.details);
	ck_assert_str_eq(d->key_id, "re-dst");
	ck_assert_uint_eq(d->plaintext.len, g->plaintext.len);
	ck_assert(memcmp(d->plaintext.data, g->plaintext.data, d->plaintext.len) == 0);
	FREE(d);
	ck_assert_ptr_null(decrypt(app, &r->ciphertext_blob, ctx1, 2, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, AUTH_FAILED_MSG);
	/* source_key_id naming the blob's key is accepted. */
	rw.source_key_id = "re-src";
	again = reencrypt(app, &rw, &st);
	ck_assert_msg(again != NULL, "ReEncrypt with source_key_id: %s", st.details);
	kms_client_reencrypt_free(again);
	FREE(g);

	/* Within one key (both grants on it): a new blob with a new IV. */
	g = gen_key(app, "re-both");
	rewrap_init(&rw, &g->ciphertext_blob, "re-both");
	rw.to_ctx = ctx1;
	rw.n_to = 2;
	again = reencrypt(app, &rw, &st);
	ck_assert_msg(again != NULL, "ReEncrypt within a key: %s", st.details);
	ck_assert(again->ciphertext_blob.len == g->ciphertext_blob.len &&
		  memcmp(again->ciphertext_blob.data, g->ciphertext_blob.data,
			 g->ciphertext_blob.len) != 0);
	d = decrypt(app, &again->ciphertext_blob, ctx1, 2, &st);
	ck_assert_msg(d != NULL, "Decrypt: %s", st.details);
	ck_assert(memcmp(d->plaintext.data, g->plaintext.data, d->plaintext.len) == 0);
	FREE(d);
	kms_client_reencrypt_free(again);
	kms_client_reencrypt_free(r);
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(reencrypt_needs_both_grants)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	kms_client *other = kms_test_client(&node, "other");
	Kms__V1__GenerateDataKeyResponse *g_src, *g_nofrom;
	kms_rpc_status st;
	rewrap rw;

	create_key(admin, "g-src", "GenerateDataKey,ReEncryptFrom");
	create_key(admin, "g-dst", "ReEncryptTo");
	/* Decrypt and Encrypt stand in for neither grant. */
	create_key(admin, "g-nofrom", "GenerateDataKey,Decrypt,Encrypt,ReEncryptTo");
	create_key(admin, "g-noto", "Decrypt,Encrypt,ReEncryptFrom");
	g_src = gen_key(app, "g-src");
	g_nofrom = gen_key(app, "g-nofrom");

	rewrap_init(&rw, &g_nofrom->ciphertext_blob, "g-dst");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED,
		      "may not ReEncryptFrom with key 'g-nofrom'");
	rewrap_init(&rw, &g_src->ciphertext_blob, "g-noto");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED,
		      "may not ReEncryptTo with key 'g-noto'");
	/* From on a key is not To on it. */
	rewrap_init(&rw, &g_src->ciphertext_blob, "g-src");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED,
		      "may not ReEncryptTo with key 'g-src'");
	/* Another principal, and an administrator without a grant, get nothing. */
	rewrap_init(&rw, &g_src->ciphertext_blob, "g-dst");
	ck_assert_ptr_null(reencrypt(other, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED, "ReEncryptFrom");
	ck_assert_ptr_null(reencrypt(admin, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED, KMS_TEST_ADMIN);
	FREE(g_src);
	FREE(g_nofrom);
	kms_client_close(admin);
	kms_client_close(app);
	kms_client_close(other);
}
END_TEST

START_TEST(reencrypt_bad_inputs_name_the_problem)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	static const ctx_kv empty_key[] = {{"", "x"}};
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st, st_dec;
	ProtobufCBinaryData junk = {sizeof(garbage), (uint8_t *)garbage};
	uint8_t *tampered;
	kms_buf out = {0};
	rewrap rw;

	create_key(admin, "b-src", "GenerateDataKey,Decrypt,ReEncryptFrom");
	create_key(admin, "b-dst", "ReEncryptTo");
	g = gen_key(app, "b-src");

	/* A wrong source context fails as Decrypt fails: one message for it and a tampered blob. */
	rewrap_init(&rw, &g->ciphertext_blob, "b-dst");
	rw.from_ctx = ctx_wrong;
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, AUTH_FAILED_MSG);
	ck_assert_ptr_null(decrypt(app, &g->ciphertext_blob, ctx_wrong, 2, &st_dec));
	ck_assert_str_eq(st.details, st_dec.details);
	tampered = malloc(g->ciphertext_blob.len);
	memcpy(tampered, g->ciphertext_blob.data, g->ciphertext_blob.len);
	tampered[g->ciphertext_blob.len - 1] ^= 0x01;
	rewrap_init(&rw, &g->ciphertext_blob, "b-dst");
	rw.blob.data = tampered;
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, AUTH_FAILED_MSG);
	ck_assert_str_eq(st.details, st_dec.details);
	free(tampered);

	rewrap_init(&rw, &g->ciphertext_blob, "b-dst");
	rw.source_key_id = "b-dst";
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT,
		      "key_id 'b-dst' does not match the key of the ciphertext blob");
	rewrap_init(&rw, &junk, "b-dst");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ck_assert_int_eq(st.code, ST_INVALID_ARGUMENT);
	/* An unknown destination reads like one without a grant (ids cannot be probed). */
	rewrap_init(&rw, &g->ciphertext_blob, "no-such-key");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_PERMISSION_DENIED,
		      "may not ReEncryptTo with key 'no-such-key'");
	rewrap_init(&rw, &g->ciphertext_blob, "");
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, "destination_key_id");
	rewrap_init(&rw, &g->ciphertext_blob, "b-dst");
	rw.to_ctx = empty_key;
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT,
		      "destination_encryption_context: encryption context has an empty key");
	rw.to_ctx = ctx2;
	rw.from_ctx = empty_key;
	rw.n_from = 1;
	ck_assert_ptr_null(reencrypt(app, &rw, &st));
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, "source_encryption_context");
	kms_client_call_raw(app, KM "ReEncrypt", garbage, sizeof(garbage), &out, &st);
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, "malformed ReEncryptRequest");
	/* None of it changed the blob's key: it still rewraps. */
	rewrap_init(&rw, &g->ciphertext_blob, "b-dst");
	kms_client_reencrypt_free(reencrypt(app, &rw, &st));
	ck_assert_msg(st.code == ST_OK, "ReEncrypt: %s", st.details);
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

static Suite *batch_suite(void)
{
	Suite *s = suite_create("ReEncrypt and batches");
	TCase *re = tcase_create("reencrypt");

	tcase_add_unchecked_fixture(re, node_up, node_down);
	tcase_set_timeout(re, 120);
	tcase_add_test(re, reencrypt_moves_a_blob_to_another_key);
	tcase_add_test(re, reencrypt_needs_both_grants);
	tcase_add_test(re, reencrypt_bad_inputs_name_the_problem);
	suite_add_tcase(s, re);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(batch_suite());

	/* One kmsd serves a whole test case, and gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
