/* api_keymgmt.c - the kms.v1.KeyManagement handlers: parse, authorize through the key ring, run the HSM operation, reply. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/client.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "node/node.h"

#define DATA_KEY_DEFAULT_BYTES 32
#define DATA_KEY_MAX_BYTES 64
#define LIST_DEFAULT_PAGE 100
#define LIST_MAX_PAGE 1000

/* One message for both causes, so a caller cannot tell which it was. */
static const char auth_failed_msg[] =
	"the ciphertext blob failed authentication: it was altered, or the encryption "
	"context differs from the one it was made with";

int kms_api_worker_init(void *app, void **wctx, kms_err *err)
{
	kms_node *node = app;

	return kms_hsm_session_open(node->hsm, (kms_hsm_session **)wctx, err);
}

void kms_api_worker_fini(void *app, void *wctx)
{
	kms_hsm_session_close(wctx);
}

static void fail(kms_call *call, const kms_err *err)
{
	kms_call_fail(call, err->code,
		      err->code == KMS_ERR_AUTH_FAILED ? auth_failed_msg : err->msg);
}

/*
 * The kms-consistency request metadata (docs/CONSISTENCY.md): *want is set
 * for "leader-commit", left 0 when it is absent; any other value is
 * KMS_ERR_INVALID.
 */
static int wants_leader_commit(kms_call *call, int *want, kms_err *err)
{
	size_t len = 0;
	const char *v = kms_call_metadata(call, KMS_CONSISTENCY_HEADER, &len);

	*want = 0;
	if (v == NULL)
		return KMS_OK;
	if (len == strlen(KMS_CONSISTENCY_LEADER_COMMIT) &&
	    memcmp(v, KMS_CONSISTENCY_LEADER_COMMIT, len) == 0) {
		*want = 1;
		return KMS_OK;
	}
	return kms_errf(err, KMS_ERR_INVALID,
			"unknown kms-consistency value: use \"" KMS_CONSISTENCY_LEADER_COMMIT
			"\" or leave it out");
}

/*
 * Whether a call whose local decision was rc must be decided again on
 * newer state: the caller asked for leader-commit and the local refusal
 * (if any) is one newer state could change. The metadata is read only
 * here, after the local decision; kms_node_sync_read then waits only if
 * the leader authorizes the call on its own state, and never past the
 * call's deadline. KMS_OK with *again set, or the error that ends the call.
 */
static int fresh_read(kms_node *node, kms_call *call, int rc, const char *key_id,
		      enum kms_op op, int *again, kms_err *err)
{
	int want = 0;

	kms_err bad = {0};

	*again = 0;
	if (rc != KMS_OK && rc != KMS_ERR_PERMISSION && rc != KMS_ERR_NOT_FOUND &&
	    rc != KMS_ERR_PRECONDITION)
		return rc;
	/* A bad value is reported only to a caller the local state allows. */
	if (wants_leader_commit(call, &want, &bad) != KMS_OK) {
		if (rc != KMS_OK)
			return rc;
		*err = bad;
		return bad.code;
	}
	if (!want)
		return rc;
	KMS_TRY(kms_node_sync_read(node, kms_call_principal(call), key_id, op,
				   kms_call_deadline_ms(call), err));
	*again = 1;
	return KMS_OK;
}

/*
 * The gate of a crypto call: the key ring's decision on this node's state,
 * and, for a leader-commit read, again on state that holds every write
 * acknowledged before the call. Like kms_keyring_resolve, use holds a
 * reference to the version's handle on success (the caller releases it)
 * and none on failure.
 */
static int gate(kms_node *node, kms_call *call, const char *key_id, uint32_t version,
		enum kms_op op, kms_key_use *use, kms_err *err)
{
	const char *principal = kms_call_principal(call);
	int rc = kms_keyring_resolve(node->kr, key_id, version, principal, op, use, err);
	int again = 0;

	rc = fresh_read(node, call, rc, key_id, op, &again, err);
	if (rc != KMS_OK || again)
		kms_keyring_use_release(use);
	if (rc != KMS_OK || !again)
		return rc;
	return kms_keyring_resolve(node->kr, key_id, version, principal, op, use, err);
}

static int is_admin(kms_node *node, const char *principal)
{
	return kms_keyring_is_admin(node->kr, principal);
}

/*
 * The encryption context arrives as protobuf map entries, one message type
 * per request; all have key = 1 and value = 2, read here by descriptor.
 */
static int context_pairs(ProtobufCMessage **entries, size_t n, kms_ctx_pair **out,
			 kms_err *err)
{
	kms_ctx_pair *pairs;

	*out = NULL;
	if (n > KMS_CONTEXT_MAX_PAIRS)
		return kms_errf(err, KMS_ERR_INVALID,
				"encryption_context has %zu pairs; at most %d are allowed", n,
				KMS_CONTEXT_MAX_PAIRS);
	pairs = kms_calloc(n, sizeof(*pairs));
	if (pairs == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading encryption_context");
	for (size_t i = 0; i < n; i++) {
		const ProtobufCMessageDescriptor *d = entries[i]->descriptor;
		const ProtobufCFieldDescriptor *k = protobuf_c_message_descriptor_get_field(d, 1);
		const ProtobufCFieldDescriptor *v = protobuf_c_message_descriptor_get_field(d, 2);

		pairs[i].key = *(const char **)(void *)((char *)entries[i] + k->offset);
		pairs[i].value = *(const char **)(void *)((char *)entries[i] + v->offset);
	}
	if (kms_context_check(pairs, n, err) != KMS_OK) {
		kms_free(pairs);
		return err->code;
	}
	*out = pairs;
	return KMS_OK;
}

/*
 * The master key version as an HSM handle, unwrapping it on first use here.
 * On success use holds a reference to the handle (the caller releases it
 * with kms_keyring_use_release when its HSM operation is done).
 */
static int key_handle(kms_node *node, const char *key_id, kms_key_use *use, kms_err *err)
{
	unsigned long h = 0, dk = atomic_load(&node->domain_key);

	if (use->handle != 0)
		return KMS_OK;
	if (dk == 0 || !atomic_load(&node->probe_verified))
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"this node has not received and verified the domain key yet");
	KMS_TRY(kms_hsm_master_key_unwrap(node->hsm, dk, use->wrapped,
					  use->wrapped_len, &h, err));
	/* The key ring owns h from here on, whatever it answers. */
	return kms_keyring_set_handle(node->kr, key_id, h, use, err);
}

/*
 * Encrypts pt under the key's primary version into a new blob (AES-256-GCM
 * with a random 96-bit IV from the HSM, NIST SP 800-38D 8.2.2). *blob is
 * kms_malloc'd, owned by the caller. use keeps its handle reference, if
 * any, on every path: the caller releases it.
 */
static int seal(kms_node *node, kms_hsm_session *s, const char *key_id, kms_key_use *use,
		const kms_ctx_pair *pairs, size_t n_pairs, const uint8_t *pt, size_t pt_len,
		kms_buf *blob, kms_err *err)
{
	kms_blob_header h;
	kms_buf aad = {0};
	uint8_t *ct = NULL;
	size_t ct_len = pt_len + KMS_GCM_TAG_LEN, cap;
	int rc;

	memset(&h, 0, sizeof(h));
	snprintf(h.key_id, sizeof(h.key_id), "%s", key_id);
	h.key_version = use->version;
	KMS_TRY(key_handle(node, key_id, use, err));
	KMS_TRY(kms_hsm_random(s, h.iv, sizeof(h.iv), err));
	KMS_TRY(kms_blob_aad(&h, pairs, n_pairs, &aad, err));
	ct = kms_malloc(ct_len);
	cap = kms_blob_encoded_size(&h, ct_len);
	blob->data = kms_malloc(cap);
	if (ct == NULL || blob->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory encrypting");
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_hsm_gcm_encrypt(s, use->handle, h.iv, aad.data, aad.len, pt,
					     pt_len, ct, err), out);
	KMS_TRY_GOTO(rc, kms_blob_encode(&h, ct, ct_len, blob->data, cap, &blob->len, err), out);
out:
	if (rc != KMS_OK)
		kms_buf_free(blob);
	kms_free(ct);
	kms_buf_free(&aad);
	return rc;
}

static Kms__V1__KeyMetadata *describe_as_admin(kms_node *node, const char *key_id)
{
	Kms__V1__KeyMetadata *md = NULL;
	kms_err err = {0};

	if (kms_keyring_describe(node->kr, key_id, "", 1, &md, &err) != KMS_OK)
		return NULL;
	return md;
}

/* --- CreateKey: a Raft write, answered when the command is applied --- */

struct create_wait {
	kms_node *node;
	kms_call *call;
	char key_id[KMS_KEY_ID_MAX + 1];
};

static void create_key_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct create_wait *w = arg;
	Kms__V1__CreateKeyResponse resp = KMS__V1__CREATE_KEY_RESPONSE__INIT;
	char text[KMS_ERRMSG_SIZE];

	if (status == KMS_ERR_EXISTS) {
		snprintf(text, sizeof(text), "key '%s' already exists", w->key_id);
		kms_call_fail(w->call, status, text);
	} else if (status != KMS_OK) {
		snprintf(text, sizeof(text), "key '%s' was not created: %s", w->key_id,
			 msg != NULL ? msg : kms_strerror(status));
		kms_call_fail(w->call, status, text);
	} else {
		resp.key = describe_as_admin(w->node, w->key_id);
		if (resp.key == NULL) {
			kms_call_fail(w->call, KMS_ERR_INTERNAL, "the new key cannot be read back");
		} else {
			KMS_LOG_I("created key '%s'", w->key_id);
			kms_call_reply(w->call, &resp.base, 0);
			kms_keyring_metadata_free(resp.key);
		}
	}
	kms_free(w);
}

static void create_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	const char *principal = kms_call_principal(call);
	Kms__V1__CreateKeyRequest *req = kms__v1__create_key_request__unpack(NULL, len, data);
	kms_buf wrapped = {0}, cmd = {0};
	struct create_wait *w = NULL;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed CreateKeyRequest");
		return;
	}
	if (!is_admin(node, principal)) {
		rc = kms_errf(&err, KMS_ERR_PERMISSION,
			      "principal '%s' is not an administrator and may not create keys",
			      principal);
		goto out;
	}
	/* Validate before spending an HSM key generation on the request. */
	KMS_TRY_GOTO(rc, kms_key_id_check(req->key_id, &err), out);
	KMS_TRY_GOTO(rc, kms_policy_check(req->policy, KMS_POLICY_NEW, node->cfg.trust_domain, &err),
		     out);
	if (kms_keyring_has_key(node->kr, req->key_id)) {
		rc = kms_errf(&err, KMS_ERR_EXISTS, "key '%s' already exists", req->key_id);
		goto out;
	}
	if (!kms_node_can_write(node)) {
		rc = kms_errf(&err, KMS_ERR_UNAVAILABLE,
			      "this node cannot take writes now: no Raft leader is known (no "
			      "quorum?) or it has no verified domain key yet");
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_hsm_master_key_create(kms_call_worker(call),
						   atomic_load(&node->domain_key), &wrapped, &err),
		     out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_create_key(req->key_id, req->description, req->policy,
						    principal, (int64_t)time(NULL), wrapped.data,
						    wrapped.len, &cmd, &err), out);
	w = kms_calloc(1, sizeof(*w));
	if (w == NULL) {
		rc = kms_errf(&err, KMS_ERR_NOMEM, "out of memory creating a key");
		goto out;
	}
	w->node = node;
	w->call = call;
	snprintf(w->key_id, sizeof(w->key_id), "%s", req->key_id);
	kms_node_commit(node, principal, cmd.data, cmd.len, create_key_done, w);
	rc = KMS_OK;
out:
	if (rc != KMS_OK)
		fail(call, &err);
	kms_buf_free(&cmd);
	kms_buf_free(&wrapped);
	kms__v1__create_key_request__free_unpacked(req, NULL);
}

/* --- reads of the key ring --- */

static void describe_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	const char *principal = kms_call_principal(call);
	Kms__V1__DescribeKeyRequest *req = kms__v1__describe_key_request__unpack(NULL, len, data);
	Kms__V1__DescribeKeyResponse resp = KMS__V1__DESCRIBE_KEY_RESPONSE__INIT;
	kms_err err = {0};
	int rc, again = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed DescribeKeyRequest");
		return;
	}
	rc = kms_key_id_check(req->key_id, &err);
	if (rc == KMS_OK)
		rc = kms_keyring_describe(node->kr, req->key_id, principal,
					  is_admin(node, principal), &resp.key, &err);
	rc = fresh_read(node, call, rc, req->key_id, KMS_OP_DESCRIBE_KEY, &again, &err);
	if (rc == KMS_OK && again) {
		/* The answer is what the leader's state says: describe again. */
		kms_keyring_metadata_free(resp.key);
		rc = kms_keyring_describe(node->kr, req->key_id, principal,
					  is_admin(node, principal), &resp.key, &err);
	}
	if (rc != KMS_OK)
		fail(call, &err);
	else
		kms_call_reply(call, &resp.base, 0);
	kms_keyring_metadata_free(resp.key);
	kms__v1__describe_key_request__free_unpacked(req, NULL);
}

static void list_keys(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	const char *principal = kms_call_principal(call);
	Kms__V1__ListKeysRequest *req = kms__v1__list_keys_request__unpack(NULL, len, data);
	Kms__V1__ListKeysResponse resp = KMS__V1__LIST_KEYS_RESPONSE__INIT;
	Kms__V1__KeyMetadata **keys = NULL;
	size_t n = 0, page;
	int more = 0, again = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ListKeysRequest");
		return;
	}
	/* Every authenticated service may list (what it may describe). */
	KMS_TRY_GOTO(rc, fresh_read(node, call, KMS_OK, "", KMS_OP_DESCRIBE_KEY, &again, &err),
		     out);
	page = req->page_size == 0 ? LIST_DEFAULT_PAGE : req->page_size;
	if (page > LIST_MAX_PAGE) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "page_size %u is over the limit of %d",
			      req->page_size, LIST_MAX_PAGE);
		goto out;
	}
	/* The page token is the last key id of the previous page. */
	if (req->page_token[0] != '\0' && kms_key_id_check(req->page_token, &err) != KMS_OK) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "page_token is not one this server issued");
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_keyring_list(node->kr, principal, is_admin(node, principal),
					  req->page_token, page, &keys, &n, &more, &err), out);
	resp.keys = keys;
	resp.n_keys = n;
	resp.next_page_token = (char *)(more && n > 0 ? keys[n - 1]->key_id : "");
	kms_call_reply(call, &resp.base, 0);
out:
	if (rc != KMS_OK)
		fail(call, &err);
	kms_keyring_list_free(keys, n);
	kms__v1__list_keys_request__free_unpacked(req, NULL);
}

/* --- crypto operations, served from the local key ring --- */

static void generate_data_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	kms_hsm_session *s = kms_call_worker(call);
	Kms__V1__GenerateDataKeyRequest *req =
		kms__v1__generate_data_key_request__unpack(NULL, len, data);
	Kms__V1__GenerateDataKeyResponse resp = KMS__V1__GENERATE_DATA_KEY_RESPONSE__INIT;
	kms_ctx_pair *pairs = NULL;
	kms_key_use use = {0};
	kms_buf blob = {0};
	uint8_t dek[DATA_KEY_MAX_BYTES];
	size_t n_bytes = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed GenerateDataKeyRequest");
		return;
	}
	n_bytes = req->number_of_bytes == 0 ? DATA_KEY_DEFAULT_BYTES : req->number_of_bytes;
	if (n_bytes < 16 || n_bytes > DATA_KEY_MAX_BYTES) {
		rc = kms_errf(&err, KMS_ERR_INVALID,
			      "number_of_bytes %u is out of range: use 0 (32), or 16 to %d",
			      req->number_of_bytes, DATA_KEY_MAX_BYTES);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_key_id_check(req->key_id, &err), out);
	KMS_TRY_GOTO(rc, context_pairs((ProtobufCMessage **)req->encryption_context,
				       req->n_encryption_context, &pairs, &err), out);
	KMS_TRY_GOTO(rc, gate(node, call, req->key_id, 0, KMS_OP_GENERATE_DATA_KEY, &use, &err), out);
	KMS_TRY_GOTO(rc, kms_hsm_random(s, dek, n_bytes, &err), out);
	KMS_TRY_GOTO(rc, seal(node, s, req->key_id, &use, pairs, req->n_encryption_context, dek,
			      n_bytes, &blob, &err), out);
	resp.key_id = req->key_id;
	resp.key_version = use.version;
	resp.ciphertext_blob.data = blob.data;
	resp.ciphertext_blob.len = blob.len;
	if (!req->without_plaintext) {
		resp.plaintext.data = dek;
		resp.plaintext.len = n_bytes;
	}
	kms_call_reply(call, &resp.base, !req->without_plaintext);
out:
	kms_keyring_use_release(&use);
	if (rc != KMS_OK)
		fail(call, &err);
	kms_cleanse(dek, sizeof(dek));
	kms_buf_free(&blob);
	kms_free(pairs);
	kms__v1__generate_data_key_request__free_unpacked(req, NULL);
}

static void encrypt(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	kms_hsm_session *s = kms_call_worker(call);
	Kms__V1__EncryptRequest *req = kms__v1__encrypt_request__unpack(NULL, len, data);
	Kms__V1__EncryptResponse resp = KMS__V1__ENCRYPT_RESPONSE__INIT;
	kms_ctx_pair *pairs = NULL;
	kms_key_use use = {0};
	kms_buf blob = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed EncryptRequest");
		return;
	}
	if (req->plaintext.len == 0 || req->plaintext.len > KMS_PLAINTEXT_MAX) {
		rc = kms_errf(&err, KMS_ERR_INVALID,
			      "plaintext is %zu bytes; it must be 1 to %d bytes",
			      req->plaintext.len, KMS_PLAINTEXT_MAX);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_key_id_check(req->key_id, &err), out);
	KMS_TRY_GOTO(rc, context_pairs((ProtobufCMessage **)req->encryption_context,
				       req->n_encryption_context, &pairs, &err), out);
	KMS_TRY_GOTO(rc, gate(node, call, req->key_id, 0, KMS_OP_ENCRYPT, &use, &err), out);
	KMS_TRY_GOTO(rc, seal(node, s, req->key_id, &use, pairs, req->n_encryption_context,
			      req->plaintext.data, req->plaintext.len, &blob, &err), out);
	resp.key_id = req->key_id;
	resp.key_version = use.version;
	resp.ciphertext_blob.data = blob.data;
	resp.ciphertext_blob.len = blob.len;
	kms_call_reply(call, &resp.base, 0);
out:
	kms_keyring_use_release(&use);
	if (rc != KMS_OK)
		fail(call, &err);
	kms_buf_free(&blob);
	kms_free(pairs);
	kms_cleanse(req->plaintext.data, req->plaintext.len);
	kms__v1__encrypt_request__free_unpacked(req, NULL);
}

static void decrypt(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	kms_hsm_session *s = kms_call_worker(call);
	Kms__V1__DecryptRequest *req = kms__v1__decrypt_request__unpack(NULL, len, data);
	Kms__V1__DecryptResponse resp = KMS__V1__DECRYPT_RESPONSE__INIT;
	kms_ctx_pair *pairs = NULL;
	kms_blob_header h;
	kms_key_use use = {0};
	kms_buf aad = {0};
	const uint8_t *ct = NULL;
	size_t ct_len = 0;
	uint8_t pt[KMS_PLAINTEXT_MAX];
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed DecryptRequest");
		return;
	}
	KMS_TRY_GOTO(rc, kms_blob_decode(req->ciphertext_blob.data, req->ciphertext_blob.len, &h,
					 &ct, &ct_len, &err), out);
	if (ct_len - KMS_GCM_TAG_LEN > sizeof(pt)) {
		rc = kms_errf(&err, KMS_ERR_INVALID,
			      "the ciphertext blob is longer than any this server makes");
		goto out;
	}
	if (req->key_id[0] != '\0' && strcmp(req->key_id, h.key_id) != 0) {
		rc = kms_errf(&err, KMS_ERR_INVALID,
			      "key_id '%s' does not match the key of the ciphertext blob",
			      req->key_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, context_pairs((ProtobufCMessage **)req->encryption_context,
				       req->n_encryption_context, &pairs, &err), out);
	KMS_TRY_GOTO(rc, gate(node, call, h.key_id, h.key_version, KMS_OP_DECRYPT, &use, &err), out);
	KMS_TRY_GOTO(rc, key_handle(node, h.key_id, &use, &err), out);
	KMS_TRY_GOTO(rc, kms_blob_aad(&h, pairs, req->n_encryption_context, &aad, &err), out);
	KMS_TRY_GOTO(rc, kms_hsm_gcm_decrypt(s, use.handle, h.iv, aad.data, aad.len, ct, ct_len,
					     pt, &err), out);
	resp.key_id = h.key_id;
	resp.key_version = h.key_version;
	resp.plaintext.data = pt;
	resp.plaintext.len = ct_len - KMS_GCM_TAG_LEN;
	kms_call_reply(call, &resp.base, 1);
out:
	kms_keyring_use_release(&use);
	if (rc != KMS_OK)
		fail(call, &err);
	kms_cleanse(pt, sizeof(pt));
	kms_buf_free(&aad);
	kms_free(pairs);
	kms__v1__decrypt_request__free_unpacked(req, NULL);
}

const kms_method kms_api_keymgmt_methods[] = {
	{"/kms.v1.KeyManagement/CreateKey", create_key, KMS_CALLERS_SERVICES,
	 &kms__v1__create_key_request__descriptor},
	{"/kms.v1.KeyManagement/DescribeKey", describe_key, KMS_CALLERS_SERVICES,
	 &kms__v1__describe_key_request__descriptor},
	{"/kms.v1.KeyManagement/ListKeys", list_keys, KMS_CALLERS_SERVICES,
	 &kms__v1__list_keys_request__descriptor},
	{"/kms.v1.KeyManagement/GenerateDataKey", generate_data_key, KMS_CALLERS_SERVICES,
	 &kms__v1__generate_data_key_request__descriptor},
	{"/kms.v1.KeyManagement/Encrypt", encrypt, KMS_CALLERS_SERVICES,
	 &kms__v1__encrypt_request__descriptor},
	{"/kms.v1.KeyManagement/Decrypt", decrypt, KMS_CALLERS_SERVICES,
	 &kms__v1__decrypt_request__descriptor},
};
const size_t kms_api_keymgmt_n_methods =
	sizeof(kms_api_keymgmt_methods) / sizeof(kms_api_keymgmt_methods[0]);
