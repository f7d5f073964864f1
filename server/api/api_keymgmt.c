/* api_keymgmt.c - the kms.v1.KeyManagement handlers: parse, authorize through the key ring, run the HSM operation, reply. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "api/key_ops.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/client.h"
#include "kms/log.h"
#include "kms/keyring_dk.h"
#include "kms/policy.h"
#include "node/dk_rotation.h"
#include "node/node.h"

#define LIST_DEFAULT_PAGE 100
#define LIST_MAX_PAGE 1000

int kms_api_worker_init(void *app, void **wctx, kms_err *err)
{
	kms_node *node = app;

	return kms_hsm_session_open(node->hsm, (kms_hsm_session **)wctx, err);
}

void kms_api_worker_fini(void *app, void *wctx)
{
	kms_hsm_session_close(wctx);
}

static int is_admin(kms_node *node, const char *principal)
{
	return kms_keyring_is_admin(node->kr, principal);
}

static Kms__V1__KeyMetadata *describe_as_admin(kms_node *node, const char *key_id)
{
	Kms__V1__KeyMetadata *md = NULL;
	kms_err err = {0};

	if (kms_keyring_describe(node->kr, key_id, "", 1, &md, &err) != KMS_OK)
		return NULL;
	return md;
}

int kms_api_can_write(kms_node *node, kms_err *err)
{
	if (kms_node_can_write(node))
		return KMS_OK;
	return kms_errf(err, KMS_ERR_UNAVAILABLE,
			"this node cannot take writes now: no Raft leader is known (no quorum?) or "
			"it has no verified domain key yet");
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
	kms_hsm_key dk = 0;
	uint32_t dk_gen = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed CreateKeyRequest");
		return;
	}
	kms_call_audit_key(call, req->key_id, 0);
	if (!is_admin(node, principal)) {
		rc = kms_errf(&err, KMS_ERR_PERMISSION,
			      "principal '%s' is not an administrator and may not create keys",
			      principal);
		goto out;
	}
	/* Validate before spending an HSM key generation on the request. */
	KMS_TRY_GOTO(rc, kms_keyring_new_key_id_check(req->key_id, &err), out);
	KMS_TRY_GOTO(rc, kms_policy_check(req->policy, KMS_POLICY_NEW, node->cfg.trust_domain, &err),
		     out);
	if (kms_keyring_has_key(node->kr, req->key_id)) {
		rc = kms_errf(&err, KMS_ERR_EXISTS, "key '%s' already exists", req->key_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_api_can_write(node, &err), out);
	kms_dk_current(node, &dk, &dk_gen);
	KMS_TRY_GOTO(rc, kms_hsm_master_key_create(kms_call_worker(call), dk, &wrapped, &err),
		     out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_create_key(req->key_id, req->description, req->policy,
						    principal, (int64_t)time(NULL), wrapped.data,
						    wrapped.len, &cmd, &err), out);
	/* So that it lands only if the cluster is still on that key. */
	KMS_TRY_GOTO(rc, kms_keyring_cmd_set_dk_generation(&cmd, dk_gen, &err), out);
	/* Apply refuses it if the state's region is not this node's. */
	if (req->multi_region)
		KMS_TRY_GOTO(rc, kms_keyring_cmd_set_home_region(&cmd, node->cfg.region, &err),
			     out);
	w = kms_calloc(1, sizeof(*w));
	if (w == NULL) {
		rc = kms_errf(&err, KMS_ERR_NOMEM, "out of memory creating a key");
		goto out;
	}
	w->node = node;
	w->call = call;
	snprintf(w->key_id, sizeof(w->key_id), "%s", req->key_id);
	kms_node_commit_deadline(node, principal, kms_call_deadline_ms(call), cmd.data, cmd.len,
				 create_key_done, w);
	rc = KMS_OK;
out:
	if (rc != KMS_OK)
		kms_key_ops_fail(call, &err);
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
	kms_call_audit_key(call, req->key_id, 0);
	rc = kms_key_name_check(req->key_id, &err);
	if (rc == KMS_OK)
		rc = kms_keyring_describe(node->kr, req->key_id, principal,
					  is_admin(node, principal), &resp.key, &err);
	rc = kms_key_ops_fresh_read(node, call, rc, req->key_id, KMS_OP_DESCRIBE_KEY, &again, &err);
	if (rc == KMS_OK && again) {
		/* The answer is what the leader's state says: describe again. */
		kms_keyring_metadata_free(resp.key);
		rc = kms_keyring_describe(node->kr, req->key_id, principal,
					  is_admin(node, principal), &resp.key, &err);
	}
	if (rc != KMS_OK)
		kms_key_ops_fail(call, &err);
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
	KMS_TRY_GOTO(rc, kms_key_ops_fresh_read(node, call, KMS_OK, "", KMS_OP_DESCRIBE_KEY, &again, &err),
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
		kms_key_ops_fail(call, &err);
	kms_keyring_list_free(keys, n);
	kms__v1__list_keys_request__free_unpacked(req, NULL);
}

/* --- crypto operations, served from the local key ring --- */

static void generate_data_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__GenerateDataKeyRequest *req =
		kms__v1__generate_data_key_request__unpack(NULL, len, data);
	Kms__V1__GenerateDataKeyResponse resp = KMS__V1__GENERATE_DATA_KEY_RESPONSE__INIT;
	uint8_t dek[KMS_DATA_KEY_MAX_BYTES];
	char real_id[KMS_KEY_ID_MAX + 1];
	kms_buf blob = {0};
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed GenerateDataKeyRequest");
		return;
	}
	if (kms_key_op_generate_data_key(app, call, kms_call_worker(call), req, &resp, dek,
					 real_id, &blob, &err) == KMS_OK) {
		kms_call_audit_key(call, resp.key_id, resp.key_version);
		kms_call_reply(call, &resp.base, !req->without_plaintext);
	} else {
		kms_call_audit_key(call, req->key_id, 0);
		kms_key_ops_fail(call, &err);
	}
	kms_cleanse(dek, sizeof(dek));
	kms_buf_free(&blob);
	kms__v1__generate_data_key_request__free_unpacked(req, NULL);
}

static void encrypt(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__EncryptRequest *req = kms__v1__encrypt_request__unpack(NULL, len, data);
	Kms__V1__EncryptResponse resp = KMS__V1__ENCRYPT_RESPONSE__INIT;
	char real_id[KMS_KEY_ID_MAX + 1];
	kms_buf blob = {0};
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed EncryptRequest");
		return;
	}
	if (kms_key_op_encrypt(app, call, kms_call_worker(call), req, &resp, real_id, &blob,
			       &err) == KMS_OK) {
		kms_call_audit_key(call, resp.key_id, resp.key_version);
		kms_call_reply(call, &resp.base, 0);
	} else {
		kms_call_audit_key(call, req->key_id, 0);
		kms_key_ops_fail(call, &err);
	}
	kms_buf_free(&blob);
	kms_cleanse(req->plaintext.data, req->plaintext.len);
	kms__v1__encrypt_request__free_unpacked(req, NULL);
}

static void decrypt(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__DecryptRequest *req = kms__v1__decrypt_request__unpack(NULL, len, data);
	Kms__V1__DecryptResponse resp = KMS__V1__DECRYPT_RESPONSE__INIT;
	kms_blob_header h;
	uint8_t pt[KMS_PLAINTEXT_MAX];
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed DecryptRequest");
		return;
	}
	memset(&h, 0, sizeof(h));
	rc = kms_key_op_decrypt(app, call, kms_call_worker(call), req, &h, &resp, pt, &err);
	/* The blob names its key and version, once its header decoded. */
	if (h.key_id[0] != '\0')
		kms_call_audit_key(call, h.key_id, h.key_version);
	if (rc == KMS_OK)
		kms_call_reply(call, &resp.base, 1);
	else
		kms_key_ops_fail(call, &err);
	kms_cleanse(pt, sizeof(pt));
	kms__v1__decrypt_request__free_unpacked(req, NULL);
}

/* Decrypt then Encrypt inside the server: the reply carries no plaintext. */
static void reencrypt(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__ReEncryptRequest *req = kms__v1__re_encrypt_request__unpack(NULL, len, data);
	Kms__V1__ReEncryptResponse resp = KMS__V1__RE_ENCRYPT_RESPONSE__INIT;
	kms_blob_header h;
	char real_id[KMS_KEY_ID_MAX + 1];
	kms_buf blob = {0};
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ReEncryptRequest");
		return;
	}
	memset(&h, 0, sizeof(h));
	if (kms_key_op_reencrypt(app, call, kms_call_worker(call), req, &h, &resp, real_id, &blob,
				 &err) == KMS_OK) {
		/* The destination: what the new blob is under. */
		kms_call_audit_key(call, resp.key_id, resp.key_version);
		kms_call_reply(call, &resp.base, 0);
	} else {
		if (h.key_id[0] != '\0')
			kms_call_audit_key(call, h.key_id, h.key_version);
		kms_key_ops_fail(call, &err);
	}
	kms_buf_free(&blob);
	kms__v1__re_encrypt_request__free_unpacked(req, NULL);
}

const kms_method kms_api_keymgmt_methods[] = {
	{"/kms.v1.KeyManagement/CreateKey", create_key, KMS_CALLERS_SERVICES,
	 &kms__v1__create_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/DescribeKey", describe_key, KMS_CALLERS_SERVICES,
	 &kms__v1__describe_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/ListKeys", list_keys, KMS_CALLERS_SERVICES,
	 &kms__v1__list_keys_request__descriptor, 0},
	{"/kms.v1.KeyManagement/GenerateDataKey", generate_data_key, KMS_CALLERS_SERVICES,
	 &kms__v1__generate_data_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/Encrypt", encrypt, KMS_CALLERS_SERVICES,
	 &kms__v1__encrypt_request__descriptor, 0},
	{"/kms.v1.KeyManagement/Decrypt", decrypt, KMS_CALLERS_SERVICES,
	 &kms__v1__decrypt_request__descriptor, 0},
	{"/kms.v1.KeyManagement/ReEncrypt", reencrypt, KMS_CALLERS_SERVICES,
	 &kms__v1__re_encrypt_request__descriptor, 0},
};
const size_t kms_api_keymgmt_n_methods =
	sizeof(kms_api_keymgmt_methods) / sizeof(kms_api_keymgmt_methods[0]);
