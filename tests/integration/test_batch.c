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
#include "largest_items.h"
#include "node_fixture.h"
#include "rpc/rpc_server.h"
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

/* --- batch calls --- */

/* A batch result's error, or NULL when it holds a response (every Result: error = 2). */
#define ITEM_ERROR(res) ((int)(res)->result_case == 2 ? (res)->error : NULL)

/* An item's error is what the single call answered: the same code and message. */
static void assert_item_as_single(const Kms__V1__ItemError *e, const kms_rpc_status *single,
				  int want, const char *text, size_t i)
{
	ck_assert_msg(e != NULL, "item %zu: no error", i);
	ck_assert_msg((int)e->code == want, "item %zu: want %d, got %u: %s", i, want, e->code,
		      e->message);
	ck_assert_msg(strstr(e->message, text) != NULL, "item %zu: '%s' does not mention '%s'", i,
		      e->message, text);
	ck_assert_int_eq(single->code, want);
	ck_assert_str_eq(e->message, single->details);
}

/* A blob for "no-such-key": the ciphertext of real relabelled. */
static void forge_unknown_key(const ProtobufCBinaryData *real, uint8_t *out, size_t *len)
{
	kms_blob_header h;
	const uint8_t *ct;
	size_t ct_len;

	ck_assert_int_eq(kms_blob_decode(real->data, real->len, &h, &ct, &ct_len, NULL), KMS_OK);
	snprintf(h.key_id, sizeof(h.key_id), "%s", "no-such-key");
	ck_assert_int_eq(kms_blob_encode(&h, ct, ct_len, out, KMS_BLOB_MAX, len, NULL), KMS_OK);
}

/*
 * A batch request packed, with extra raw bytes appended (more items: a
 * repeated field may continue anywhere in the message); the caller frees
 * the kms_malloc'd bytes.
 */
static kms_buf pack_with(const ProtobufCMessage *m, const uint8_t *extra, size_t extra_len)
{
	kms_buf b;

	b.len = protobuf_c_message_get_packed_size(m);
	b.data = malloc(b.len + extra_len);
	ck_assert_ptr_nonnull(b.data);
	protobuf_c_message_pack(m, b.data);
	memcpy(b.data + b.len, extra, extra_len);
	b.len += extra_len;
	return b;
}

/* An item whose key_id (field 3 of DecryptRequest, field 1 of the others)
 * holds a NUL, as field 1 of a batch. */
static const uint8_t nul_decrypt_item[] = {0x0a, 0x05, 0x1a, 0x03, 'a', 0x00, 'b'};
static const uint8_t nul_gdk_item[] = {0x0a, 0x05, 0x0a, 0x03, 'a', 0x00, 'b'};

START_TEST(batch_decrypt_answers_each_item_in_place)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static const uint8_t garbage[] = {0x01, 0x02, 0x03};
	Kms__V1__GenerateDataKeyResponse *g, *g_noperm;
	Kms__V1__DecryptRequest items[8], *ptrs[8];
	Kms__V1__BatchDecryptRequest req = KMS__V1__BATCH_DECRYPT_REQUEST__INIT;
	Kms__V1__BatchDecryptResponse *resp;
	ProtobufCMessage *one = NULL;
	kms_rpc_status st, single[8];
	test_ctx tc[8];
	uint8_t forged[KMS_BLOB_MAX];
	size_t forged_len;
	kms_buf raw, out = {0};
	const ctx_kv *ctx_of[8];
	size_t n_ctx[8];

	create_key(admin, "bd-app", "GenerateDataKey,Decrypt");
	create_key(admin, "bd-noperm", "GenerateDataKey");
	g = gen_key(app, "bd-app");
	g_noperm = gen_key(app, "bd-noperm");
	forge_unknown_key(&g->ciphertext_blob, forged, &forged_len);
	for (size_t i = 0; i < 8; i++) {
		kms__v1__decrypt_request__init(&items[i]);
		items[i].ciphertext_blob = g->ciphertext_blob;
		ctx_of[i] = ctx1;
		n_ctx[i] = 2;
		ptrs[i] = &items[i];
	}
	/* 0 and 7 good; 1 malformed blob; 2 wrong context; 3 unknown key;
	 * 4 no permission; 5 key_id not the blob's; 6 no context at all. */
	items[1].ciphertext_blob.data = (uint8_t *)garbage;
	items[1].ciphertext_blob.len = sizeof(garbage);
	ctx_of[2] = ctx_wrong;
	items[3].ciphertext_blob.data = forged;
	items[3].ciphertext_blob.len = forged_len;
	items[4].ciphertext_blob = g_noperm->ciphertext_blob;
	items[5].key_id = (char *)"bd-noperm";
	n_ctx[6] = 0;
	for (size_t i = 0; i < 8; i++) {
		items[i].encryption_context = ctx_make(
			&tc[i], &kms__v1__decrypt_request__encryption_context_entry__descriptor,
			ctx_of[i], n_ctx[i]);
		items[i].n_encryption_context = n_ctx[i];
		/* What the single call says about the same item. */
		kms_client_call(app, KM "Decrypt", &items[i].base,
				&kms__v1__decrypt_response__descriptor, &one, &single[i]);
		FREE(one);
	}
	req.requests = ptrs;
	req.n_requests = 8;
	ck_assert_msg(kms_client_batch_decrypt(app, &req, &resp, &st) == 0, "BatchDecrypt: %s",
		      st.details);
	ck_assert_uint_eq(resp->n_results, 8);
	for (size_t i = 0; i < 8; i += 7) {
		Kms__V1__DecryptResponse *d = resp->results[i]->response;

		ck_assert_int_eq(resp->results[i]->result_case,
				 KMS__V1__BATCH_DECRYPT_RESULT__RESULT_RESPONSE);
		ck_assert_str_eq(d->key_id, "bd-app");
		ck_assert_uint_eq(d->key_version, 1);
		ck_assert_uint_eq(d->plaintext.len, g->plaintext.len);
		ck_assert(memcmp(d->plaintext.data, g->plaintext.data, g->plaintext.len) == 0);
	}
	assert_item_as_single(ITEM_ERROR(resp->results[1]), &single[1], ST_INVALID_ARGUMENT, "blob", 1);
	assert_item_as_single(ITEM_ERROR(resp->results[2]), &single[2], ST_INVALID_ARGUMENT,
			      AUTH_FAILED_MSG, 2);
	assert_item_as_single(ITEM_ERROR(resp->results[3]), &single[3], ST_PERMISSION_DENIED,
			      "may not Decrypt with key 'no-such-key'", 3);
	assert_item_as_single(ITEM_ERROR(resp->results[4]), &single[4], ST_PERMISSION_DENIED,
			      "may not Decrypt with key 'bd-noperm'", 4);
	assert_item_as_single(ITEM_ERROR(resp->results[5]), &single[5], ST_INVALID_ARGUMENT,
			      "does not match", 5);
	assert_item_as_single(ITEM_ERROR(resp->results[6]), &single[6], ST_INVALID_ARGUMENT,
			      AUTH_FAILED_MSG, 6);
	kms_client_batch_decrypt_free(resp);

	/* A NUL in an item's string fails that item only, with the single call's message. */
	raw = pack_with(&req.base, nul_decrypt_item, sizeof(nul_decrypt_item));
	ck_assert_int_eq(kms_client_call_raw(app, KM "BatchDecrypt", raw.data, raw.len, &out, &st),
			 0);
	resp = kms__v1__batch_decrypt_response__unpack(NULL, out.len, out.data);
	ck_assert_ptr_nonnull(resp);
	kms_buf_free(&out);
	ck_assert_uint_eq(resp->n_results, 9);
	ck_assert_int_eq(resp->results[7]->result_case,
			 KMS__V1__BATCH_DECRYPT_RESULT__RESULT_RESPONSE);
	kms_client_call_raw(app, KM "Decrypt", nul_decrypt_item + 2, sizeof(nul_decrypt_item) - 2,
			    &out, &single[0]);
	assert_item_as_single(ITEM_ERROR(resp->results[8]), &single[0], ST_INVALID_ARGUMENT,
			      "field 'key_id' holds a NUL byte", 8);
	kms_client_batch_decrypt_free(resp);
	free(raw.data);
	FREE(g);
	FREE(g_noperm);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(batch_generate_data_key_answers_each_item_in_place)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static const ctx_kv empty_key[] = {{"", "x"}};
	Kms__V1__GenerateDataKeyRequest items[8], *ptrs[8];
	Kms__V1__BatchGenerateDataKeyRequest req = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__BatchGenerateDataKeyResponse *resp;
	Kms__V1__GenerateDataKeyResponse *one;
	kms_rpc_status st, single[8];
	test_ctx tc[8];
	kms_buf raw, out = {0};

	create_key(admin, "bg-app", "GenerateDataKey,Decrypt");
	create_key(admin, "bg-noperm", "Decrypt,Encrypt");
	for (size_t i = 0; i < 8; i++) {
		kms__v1__generate_data_key_request__init(&items[i]);
		items[i].key_id = (char *)"bg-app";
		items[i].encryption_context = ctx_make(
			&tc[i], &kms__v1__generate_data_key_request__encryption_context_entry__descriptor,
			ctx1, 2);
		items[i].n_encryption_context = 2;
		ptrs[i] = &items[i];
	}
	/* 0 default size, 1 15 bytes, 2 65 bytes, 3 unknown key, 4 no permission,
	 * 5 without plaintext, 6 a context with an empty key, 7 64 bytes. */
	items[1].number_of_bytes = 15;
	items[2].number_of_bytes = 65;
	items[3].key_id = (char *)"no-such-key";
	items[4].key_id = (char *)"bg-noperm";
	items[5].without_plaintext = 1;
	items[6].encryption_context = ctx_make(
		&tc[6], &kms__v1__generate_data_key_request__encryption_context_entry__descriptor,
		empty_key, 1);
	items[6].n_encryption_context = 1;
	items[7].number_of_bytes = 64;
	for (size_t i = 1; i <= 6; i++) {
		kms_client_call(app, KM "GenerateDataKey", &items[i].base,
				&kms__v1__generate_data_key_response__descriptor,
				(ProtobufCMessage **)&one, &single[i]);
		FREE(one);
	}
	req.requests = ptrs;
	req.n_requests = 8;
	ck_assert_msg(kms_client_batch_generate_data_key(app, &req, &resp, &st) == 0,
		      "BatchGenerateDataKey: %s", st.details);
	ck_assert_uint_eq(resp->n_results, 8);
	assert_item_as_single(ITEM_ERROR(resp->results[1]), &single[1], ST_INVALID_ARGUMENT,
			      "number_of_bytes 15 is out of range", 1);
	assert_item_as_single(ITEM_ERROR(resp->results[2]), &single[2], ST_INVALID_ARGUMENT,
			      "number_of_bytes 65 is out of range", 2);
	assert_item_as_single(ITEM_ERROR(resp->results[3]), &single[3], ST_PERMISSION_DENIED,
			      "may not GenerateDataKey with key 'no-such-key'", 3);
	assert_item_as_single(ITEM_ERROR(resp->results[4]), &single[4], ST_PERMISSION_DENIED,
			      "may not GenerateDataKey with key 'bg-noperm'", 4);
	assert_item_as_single(ITEM_ERROR(resp->results[6]), &single[6], ST_INVALID_ARGUMENT,
			      "empty key", 6);
	ck_assert_uint_eq(resp->results[5]->response->plaintext.len, 0);
	/* Each good item's blob opens to its own plaintext: decrypt them in one batch. */
	{
		static const size_t good[] = {0, 5, 7};
		static const size_t want_len[] = {32, 32, 64};
		Kms__V1__DecryptRequest d[3], *dp[3];
		Kms__V1__BatchDecryptRequest dreq = KMS__V1__BATCH_DECRYPT_REQUEST__INIT;
		Kms__V1__BatchDecryptResponse *dresp;
		test_ctx dtc;
		void *ents = ctx_make(&dtc, &kms__v1__decrypt_request__encryption_context_entry__descriptor,
				      ctx1, 2);

		for (size_t j = 0; j < 3; j++) {
			Kms__V1__GenerateDataKeyResponse *r = resp->results[good[j]]->response;

			ck_assert_str_eq(r->key_id, "bg-app");
			kms__v1__decrypt_request__init(&d[j]);
			d[j].ciphertext_blob = r->ciphertext_blob;
			d[j].encryption_context = ents;
			d[j].n_encryption_context = 2;
			dp[j] = &d[j];
		}
		dreq.requests = dp;
		dreq.n_requests = 3;
		ck_assert_msg(kms_client_batch_decrypt(app, &dreq, &dresp, &st) == 0,
			      "BatchDecrypt: %s", st.details);
		for (size_t j = 0; j < 3; j++) {
			const ProtobufCBinaryData *pt = &dresp->results[j]->response->plaintext;
			const ProtobufCBinaryData *orig = &resp->results[good[j]]->response->plaintext;

			ck_assert_uint_eq(pt->len, want_len[j]);
			if (good[j] != 5)
				ck_assert(orig->len == pt->len &&
					  memcmp(orig->data, pt->data, pt->len) == 0);
		}
		kms_client_batch_decrypt_free(dresp);
	}
	kms_client_batch_generate_data_key_free(resp);

	raw = pack_with(&req.base, nul_gdk_item, sizeof(nul_gdk_item));
	ck_assert_int_eq(kms_client_call_raw(app, KM "BatchGenerateDataKey", raw.data, raw.len,
					     &out, &st),
			 0);
	resp = kms__v1__batch_generate_data_key_response__unpack(NULL, out.len, out.data);
	ck_assert_ptr_nonnull(resp);
	kms_buf_free(&out);
	ck_assert_uint_eq(resp->n_results, 9);
	kms_client_call_raw(app, KM "GenerateDataKey", nul_gdk_item + 2, sizeof(nul_gdk_item) - 2,
			    &out, &single[0]);
	assert_item_as_single(ITEM_ERROR(resp->results[8]), &single[0], ST_INVALID_ARGUMENT,
			      "holds a NUL byte", 8);
	kms_client_batch_generate_data_key_free(resp);
	free(raw.data);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

START_TEST(batch_reencrypt_answers_each_item_in_place)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__GenerateDataKeyResponse *g, *g_nofrom;
	Kms__V1__ReEncryptRequest items[8], *ptrs[8];
	Kms__V1__BatchReEncryptRequest req = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptResponse *resp;
	Kms__V1__ReEncryptResponse *one;
	kms_rpc_status st, single[8];
	static rewrap rw[8];
	uint8_t tampered[KMS_BLOB_MAX];

	create_key(admin, "br-src", "GenerateDataKey,ReEncryptFrom");
	create_key(admin, "br-dst", "Decrypt,ReEncryptTo");
	create_key(admin, "br-nofrom", "GenerateDataKey,Decrypt,ReEncryptTo");
	g = gen_key(app, "br-src");
	g_nofrom = gen_key(app, "br-nofrom");
	memcpy(tampered, g->ciphertext_blob.data, g->ciphertext_blob.len);
	tampered[g->ciphertext_blob.len - 3] ^= 0x40;
	for (size_t i = 0; i < 8; i++)
		rewrap_init(&rw[i], &g->ciphertext_blob, "br-dst");
	/* 0 and 7 good; 1 wrong source context; 2 tampered; 3 no ReEncryptFrom;
	 * 4 no ReEncryptTo; 5 unknown destination; 6 source_key_id not the blob's. */
	rw[1].from_ctx = ctx_wrong;
	rw[2].blob.data = tampered;
	rw[3].blob = g_nofrom->ciphertext_blob;
	rw[4].to = "br-src";
	rw[5].to = "no-such-key";
	rw[6].source_key_id = "br-dst";
	for (size_t i = 0; i < 8; i++) {
		rewrap_request(&rw[i], &items[i]);
		ptrs[i] = &items[i];
		kms_client_reencrypt(app, &items[i], &one, &single[i]);
		kms_client_reencrypt_free(one);
	}
	req.requests = ptrs;
	req.n_requests = 8;
	ck_assert_msg(kms_client_batch_reencrypt(app, &req, &resp, &st) == 0, "BatchReEncrypt: %s",
		      st.details);
	ck_assert_uint_eq(resp->n_results, 8);
	for (size_t i = 0; i < 8; i += 7) {
		Kms__V1__ReEncryptResponse *r = resp->results[i]->response;
		Kms__V1__DecryptResponse *d;

		ck_assert_msg(ITEM_ERROR(resp->results[i]) == NULL, "item %zu: %s", i,
			      ITEM_ERROR(resp->results[i])->message);
		ck_assert_str_eq(r->key_id, "br-dst");
		ck_assert_str_eq(r->source_key_id, "br-src");
		ck_assert_uint_eq(r->source_key_version, 1);
		d = decrypt(app, &r->ciphertext_blob, ctx2, 1, &st);
		ck_assert_msg(d != NULL, "Decrypt: %s", st.details);
		ck_assert(memcmp(d->plaintext.data, g->plaintext.data, g->plaintext.len) == 0);
		FREE(d);
	}
	assert_item_as_single(ITEM_ERROR(resp->results[1]), &single[1], ST_INVALID_ARGUMENT,
			      AUTH_FAILED_MSG, 1);
	assert_item_as_single(ITEM_ERROR(resp->results[2]), &single[2], ST_INVALID_ARGUMENT,
			      AUTH_FAILED_MSG, 2);
	assert_item_as_single(ITEM_ERROR(resp->results[3]), &single[3], ST_PERMISSION_DENIED,
			      "may not ReEncryptFrom with key 'br-nofrom'", 3);
	assert_item_as_single(ITEM_ERROR(resp->results[4]), &single[4], ST_PERMISSION_DENIED,
			      "may not ReEncryptTo with key 'br-src'", 4);
	assert_item_as_single(ITEM_ERROR(resp->results[5]), &single[5], ST_PERMISSION_DENIED,
			      "may not ReEncryptTo with key 'no-such-key'", 5);
	assert_item_as_single(ITEM_ERROR(resp->results[6]), &single[6], ST_INVALID_ARGUMENT,
			      "does not match", 6);
	kms_client_batch_reencrypt_free(resp);
	FREE(g);
	FREE(g_nofrom);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

/* n copies of one DecryptRequest of blob with ctx1; ptrs holds n. */
static void decrypt_batch(Kms__V1__BatchDecryptRequest *req, Kms__V1__DecryptRequest *item,
			  Kms__V1__DecryptRequest **ptrs, size_t n, const ProtobufCBinaryData *blob,
			  test_ctx *tc)
{
	kms__v1__batch_decrypt_request__init(req);
	kms__v1__decrypt_request__init(item);
	item->ciphertext_blob = *blob;
	item->encryption_context =
		ctx_make(tc, &kms__v1__decrypt_request__encryption_context_entry__descriptor, ctx1, 2);
	item->n_encryption_context = 2;
	for (size_t i = 0; i < n; i++)
		ptrs[i] = item;
	req->requests = ptrs;
	req->n_requests = n;
}

START_TEST(batch_item_count_limits)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	static Kms__V1__DecryptRequest *ptrs[KMS_BATCH_MAX_ITEMS + 1];
	Kms__V1__BatchGenerateDataKeyRequest greq = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__BatchGenerateDataKeyResponse *gresp = NULL;
	Kms__V1__BatchReEncryptRequest rreq = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptResponse *rresp = NULL;
	Kms__V1__BatchDecryptRequest req;
	Kms__V1__BatchDecryptResponse *resp = NULL;
	Kms__V1__DecryptRequest item;
	Kms__V1__GenerateDataKeyResponse *g;
	kms_rpc_status st;
	test_ctx tc;
	size_t ok = 0;

	create_key(admin, "bl-app", "GenerateDataKey,Decrypt");
	g = gen_key(app, "bl-app");
	decrypt_batch(&req, &item, ptrs, KMS_BATCH_MAX_ITEMS + 1, &g->ciphertext_blob, &tc);
	req.n_requests = KMS_BATCH_MAX_ITEMS;
	ck_assert_msg(kms_client_batch_decrypt(app, &req, &resp, &st) == 0,
		      "BatchDecrypt of %d: %s", KMS_BATCH_MAX_ITEMS, st.details);
	for (size_t i = 0; i < resp->n_results; i++)
		ok += resp->results[i]->result_case ==
			      KMS__V1__BATCH_DECRYPT_RESULT__RESULT_RESPONSE &&
		      memcmp(resp->results[i]->response->plaintext.data, g->plaintext.data,
			     g->plaintext.len) == 0;
	ck_assert_uint_eq(ok, KMS_BATCH_MAX_ITEMS);
	kms_client_batch_decrypt_free(resp);

	req.n_requests = KMS_BATCH_MAX_ITEMS + 1;
	ck_assert_int_eq(kms_client_batch_decrypt(app, &req, &resp, &st), ST_RESOURCE_EXHAUSTED);
	ASSERT_STATUS(st.code, st.details, ST_RESOURCE_EXHAUSTED,
		      "BatchDecrypt takes at most 1024 requests; this one has 1025");
	ck_assert_ptr_null(resp);
	/* Empty batches, of each kind. */
	req.n_requests = 0;
	ck_assert_int_eq(kms_client_batch_decrypt(app, &req, &resp, &st), ST_INVALID_ARGUMENT);
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT,
		      "BatchDecrypt needs at least one request");
	ck_assert_int_eq(kms_client_batch_generate_data_key(app, &greq, &gresp, &st),
			 ST_INVALID_ARGUMENT);
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, "BatchGenerateDataKey needs");
	ck_assert_int_eq(kms_client_batch_reencrypt(app, &rreq, &rresp, &st), ST_INVALID_ARGUMENT);
	ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT, "BatchReEncrypt needs");
	{
		static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
		kms_buf out = {0};

		kms_client_call_raw(app, KM "BatchReEncrypt", garbage, sizeof(garbage), &out, &st);
		ASSERT_STATUS(st.code, st.details, ST_INVALID_ARGUMENT,
			      "malformed BatchReEncryptRequest");
	}
	/* A stranger is refused item by item, like the single call. */
	{
		kms_client *other = kms_test_client(&node, "other");

		req.n_requests = 2;
		ck_assert_int_eq(kms_client_batch_decrypt(other, &req, &resp, &st), 0);
		ck_assert_int_eq(ITEM_ERROR(resp->results[1])->code, ST_PERMISSION_DENIED);
		kms_client_batch_decrypt_free(resp);
		kms_client_close(other);
	}
	FREE(g);
	kms_client_close(admin);
	kms_client_close(app);
}
END_TEST

/* Appends a 3-byte varint (v < 2^21): the length of a large field. */
static uint8_t *varint3(uint8_t *p, size_t v)
{
	p[0] = (uint8_t)(0x80 | (v & 0x7f));
	p[1] = (uint8_t)(0x80 | ((v >> 7) & 0x7f));
	p[2] = (uint8_t)(v >> 14);
	return p + 3;
}

/*
 * At least len bytes shaped like a batch of big items: field 1 items of
 * ITEM bytes, each one bytes field 1 (a blob) of filler. The size is what
 * matters: it is checked before anything parses the bytes.
 */
#define ITEM 60000
static kms_buf big_request(size_t len)
{
	size_t n = (len + ITEM + 3) / (ITEM + 4);
	kms_buf b = {malloc(n * (ITEM + 4)), 0};
	uint8_t *p = b.data;

	ck_assert_ptr_nonnull(b.data);
	for (size_t i = 0; i < n; i++) {
		*p++ = 0x0a;
		p = varint3(p, ITEM);
		*p++ = 0x0a;
		p = varint3(p, ITEM - 4);
		memset(p, 0x5a, ITEM - 4);
		p += ITEM - 4;
	}
	b.len = (size_t)(p - b.data);
	return b;
}

START_TEST(request_size_limits_per_method)
{
	kms_client *app = kms_test_client(&node, "app");
	kms_buf out = {0}, big;
	kms_rpc_status st;
	char want[128];

	/* Over BatchDecrypt's own limit, under the largest (BatchReEncrypt's):
	 * gRPC lets it in, kmsd refuses it naming the limit. */
	big = big_request(KMS_BATCH_DECRYPT_REQUEST_MAX + 1);
	ck_assert_uint_gt(big.len, KMS_BATCH_DECRYPT_REQUEST_MAX);
	ck_assert_uint_lt(big.len, KMS_BATCH_REENCRYPT_REQUEST_MAX);
	kms_client_call_raw(app, KM "BatchDecrypt", big.data, big.len, &out, &st);
	snprintf(want, sizeof(want), "over the limit of %u bytes for BatchDecrypt",
		 (unsigned)KMS_BATCH_DECRYPT_REQUEST_MAX);
	ASSERT_STATUS(st.code, st.details, ST_RESOURCE_EXHAUSTED, want);
	free(big.data);
	/* Over every limit: gRPC refuses it before kmsd reads it. */
	big = big_request(KMS_BATCH_REENCRYPT_REQUEST_MAX + 1);
	kms_client_call_raw(app, KM "BatchReEncrypt", big.data, big.len, &out, &st);
	ck_assert_msg(st.code == ST_RESOURCE_EXHAUSTED, "got %d: %s", st.code, st.details);
	free(big.data);
	/* The single calls keep the limit they had: 64 KiB. */
	big = big_request(KMS_RPC_MAX_REQUEST_DEFAULT + 1);
	kms_client_call_raw(app, KM "Decrypt", big.data, big.len, &out, &st);
	snprintf(want, sizeof(want), "over the limit of %d bytes for Decrypt",
		 KMS_RPC_MAX_REQUEST_DEFAULT);
	ASSERT_STATUS(st.code, st.details, ST_RESOURCE_EXHAUSTED, want);
	kms_client_call_raw(app, KM "ReEncrypt", big.data, big.len, &out, &st);
	ASSERT_STATUS(st.code, st.details, ST_RESOURCE_EXHAUSTED, "for ReEncrypt");
	kms_client_call_raw(app, KM "Encrypt", big.data, big.len, &out, &st);
	ASSERT_STATUS(st.code, st.details, ST_RESOURCE_EXHAUSTED, "for Encrypt");
	free(big.data);
	kms_client_close(app);
}
END_TEST

/*
 * The largest valid BatchReEncrypt (1,024 items, each with two full
 * contexts, alias-length key references and the longest blob) passes the
 * size limit: every item is answered (here: refused, its blob is not real).
 */
START_TEST(largest_batch_passes_the_size_limit)
{
	kms_client *app = kms_test_client_with(&node, "app", NULL, 60000);
	static Kms__V1__ReEncryptRequest *ptrs[KMS_BATCH_MAX_ITEMS];
	Kms__V1__ReEncryptRequest item;
	Kms__V1__BatchReEncryptRequest req = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptResponse *resp = NULL;
	kms_rpc_status st;
	size_t size;

	kms_test_largest_reencrypt(&item);
	for (size_t i = 0; i < KMS_BATCH_MAX_ITEMS; i++)
		ptrs[i] = &item;
	req.requests = ptrs;
	req.n_requests = KMS_BATCH_MAX_ITEMS;
	size = protobuf_c_message_get_packed_size(&req.base);
	ck_assert_uint_gt(size, 20u * 1024 * 1024);
	ck_assert_msg(kms_client_batch_reencrypt(app, &req, &resp, &st) == 0,
		      "BatchReEncrypt of %zu bytes: %s", size, st.details);
	ck_assert_uint_eq(resp->n_results, KMS_BATCH_MAX_ITEMS);
	ck_assert_int_eq(ITEM_ERROR(resp->results[KMS_BATCH_MAX_ITEMS - 1])->code,
			 ST_INVALID_ARGUMENT);
	kms_client_batch_reencrypt_free(resp);
	kms_client_close(app);
}
END_TEST

/* --- on a follower --- */

#define N_NODES 3
static kms_test_env cenv;
static kms_test_node nodes[N_NODES];

static void cluster_up(void)
{
	kms_test_cluster_up(&cenv, nodes, N_NODES, "");
}

static void cluster_down(void)
{
	for (int i = 0; i < N_NODES; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&cenv);
}

/* Crypto calls are served from each node's own key ring: batches too. */
START_TEST(batches_on_a_follower)
{
	int leader = kms_test_wait_leader(nodes, N_NODES, 20000);
	kms_test_node *follower = &nodes[(leader + 1) % N_NODES];
	kms_client *admin, *app_fresh, *app, *on_leader;
	Kms__V1__GenerateDataKeyRequest g_item = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest *g_ptrs[2] = {&g_item, &g_item};
	Kms__V1__BatchGenerateDataKeyRequest g_req = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__BatchGenerateDataKeyResponse *g_resp;
	Kms__V1__DecryptRequest *d_ptrs[2];
	Kms__V1__DecryptRequest d_item;
	Kms__V1__BatchDecryptRequest d_req;
	Kms__V1__BatchDecryptResponse *d_resp;
	Kms__V1__ReEncryptRequest r_item, *r_ptrs[1] = {&r_item};
	Kms__V1__BatchReEncryptRequest r_req = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptResponse *r_resp;
	Kms__V1__DecryptResponse *d;
	const ProtobufCBinaryData *blob, *pt;
	kms_rpc_status st;
	test_ctx g_tc, d_tc;
	rewrap rw;

	ck_assert_int_ge(leader, 0);
	admin = kms_test_client(&nodes[leader], "admin");
	create_key(admin, "f-src", "GenerateDataKey,Decrypt,ReEncryptFrom");
	create_key(admin, "f-dst", "Decrypt,ReEncryptTo");
	/* The first call reads what the leader has committed (the new keys). */
	app_fresh = kms_test_client_with(follower, "app", KMS_CONSISTENCY_LEADER_COMMIT, 0);
	app = kms_test_client(follower, "app");
	on_leader = kms_test_client(&nodes[leader], "app");
	g_item.key_id = (char *)"f-src";
	g_item.encryption_context = ctx_make(
		&g_tc, &kms__v1__generate_data_key_request__encryption_context_entry__descriptor,
		ctx1, 2);
	g_item.n_encryption_context = 2;
	g_req.requests = g_ptrs;
	g_req.n_requests = 2;
	ck_assert_msg(kms_client_batch_generate_data_key(app_fresh, &g_req, &g_resp, &st) == 0,
		      "BatchGenerateDataKey on the follower: %s", st.details);
	ck_assert_msg(ITEM_ERROR(g_resp->results[1]) == NULL, "%s",
		      ITEM_ERROR(g_resp->results[1])->message);
	blob = &g_resp->results[1]->response->ciphertext_blob;
	pt = &g_resp->results[1]->response->plaintext;

	decrypt_batch(&d_req, &d_item, d_ptrs, 2, blob, &d_tc);
	ck_assert_msg(kms_client_batch_decrypt(app, &d_req, &d_resp, &st) == 0,
		      "BatchDecrypt on the follower: %s", st.details);
	ck_assert_msg(ITEM_ERROR(d_resp->results[0]) == NULL, "%s",
		      ITEM_ERROR(d_resp->results[0])->message);
	ck_assert(memcmp(d_resp->results[0]->response->plaintext.data, pt->data, pt->len) == 0);
	kms_client_batch_decrypt_free(d_resp);

	rewrap_init(&rw, blob, "f-dst");
	rewrap_request(&rw, &r_item);
	r_req.requests = r_ptrs;
	r_req.n_requests = 1;
	ck_assert_msg(kms_client_batch_reencrypt(app, &r_req, &r_resp, &st) == 0,
		      "BatchReEncrypt on the follower: %s", st.details);
	ck_assert_msg(ITEM_ERROR(r_resp->results[0]) == NULL, "%s",
		      ITEM_ERROR(r_resp->results[0])->message);
	/* What the follower made, the leader opens. */
	d = decrypt(on_leader, &r_resp->results[0]->response->ciphertext_blob, ctx2, 1, &st);
	ck_assert_msg(d != NULL, "Decrypt on the leader: %s", st.details);
	ck_assert(memcmp(d->plaintext.data, pt->data, pt->len) == 0);
	FREE(d);
	kms_client_batch_reencrypt_free(r_resp);
	kms_client_batch_generate_data_key_free(g_resp);
	kms_client_close(admin);
	kms_client_close(app_fresh);
	kms_client_close(app);
	kms_client_close(on_leader);
}
END_TEST

static Suite *batch_suite(void)
{
	Suite *s = suite_create("ReEncrypt and batches");
	TCase *re = tcase_create("one node");
	TCase *cluster = tcase_create("three nodes");

	tcase_add_unchecked_fixture(re, node_up, node_down);
	tcase_set_timeout(re, 300);
	tcase_add_test(re, reencrypt_moves_a_blob_to_another_key);
	tcase_add_test(re, reencrypt_needs_both_grants);
	tcase_add_test(re, reencrypt_bad_inputs_name_the_problem);
	tcase_add_test(re, batch_decrypt_answers_each_item_in_place);
	tcase_add_test(re, batch_generate_data_key_answers_each_item_in_place);
	tcase_add_test(re, batch_reencrypt_answers_each_item_in_place);
	tcase_add_test(re, batch_item_count_limits);
	tcase_add_test(re, request_size_limits_per_method);
	tcase_add_test(re, largest_batch_passes_the_size_limit);
	suite_add_tcase(s, re);

	tcase_add_unchecked_fixture(cluster, cluster_up, cluster_down);
	tcase_set_timeout(cluster, 180);
	tcase_add_test(cluster, batches_on_a_follower);
	suite_add_tcase(s, cluster);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(batch_suite());

	/* One kmsd serves a whole test case, and gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
