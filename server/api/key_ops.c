/* key_ops.c - the per-item cores of the KeyManagement crypto calls: the key ring's gate, sealing a plaintext under a key, opening a blob. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "api/encryption_budget.h"
#include "api/key_ops.h"
#include "kms/alloc.h"
#include "kms/client.h"
#include "kms/keyring.h"
#include "node/node.h"

/* One message for both causes, so a caller cannot tell which it was. */
static const char auth_failed_msg[] =
	"the ciphertext blob failed authentication: it was altered, or the encryption "
	"context differs from the one it was made with";

const char *kms_key_ops_message(const kms_err *err)
{
	return err->code == KMS_ERR_AUTH_FAILED ? auth_failed_msg : err->msg;
}

void kms_key_ops_fail(kms_call *call, const kms_err *err)
{
	kms_call_fail(call, err->code, kms_key_ops_message(err));
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

int kms_key_ops_fresh_read(kms_node *node, kms_call *call, int rc, const char *key_id,
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
 * The gate of a crypto call: first, this node must have heard from a Raft
 * leader within [raft] max_staleness, so that a key disabled, narrowed or
 * deleted through the cluster stops working here within that bound even
 * when this node is cut off (docs/CONSISTENCY.md); then the key ring's
 * decision on this node's state, and, for a leader-commit read, again on
 * state that holds every write acknowledged before the call. Like
 * kms_keyring_resolve, use holds a reference to the version's handle on
 * success (the caller releases it) and none on failure.
 */
static int gate(kms_node *node, kms_call *call, const char *key_id, uint32_t version,
		enum kms_op op, kms_key_use *use, kms_err *err)
{
	const char *principal = kms_call_principal(call);
	int rc, again = 0;

	KMS_TRY(kms_raft_check_fresh(node->raft, err));
	rc = kms_keyring_resolve(node->kr, key_id, version, principal, op, use, err);
	rc = kms_key_ops_fresh_read(node, call, rc, key_id, op, &again, err);
	if (rc != KMS_OK || again)
		kms_keyring_use_release(use);
	if (rc != KMS_OK || !again)
		return rc;
	return kms_keyring_resolve(node->kr, key_id, version, principal, op, use, err);
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

int kms_key_ops_handle(kms_node *node, const char *key_id, kms_key_use *use, kms_err *err)
{
	unsigned long h = 0, dk = atomic_load(&node->domain_key);

	if (use->handle != 0)
		return KMS_OK;
	if (dk == 0 || !atomic_load(&node->probe_verified))
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"this node has not received and verified the domain key yet");
	if (kms_hsm_master_key_unwrap(node->hsm, dk, use->wrapped, use->wrapped_len, &h, err) !=
	    KMS_OK) {
		/* During a domain-key rotation the material may be under the
		 * other live key (read just before or after the switch). */
		unsigned long alt = atomic_load(&node->domain_key_alt);

		if (err->code != KMS_ERR_HSM || alt == 0 || alt == dk)
			return err->code;
		kms_err_clear(err);
		KMS_TRY(kms_hsm_master_key_unwrap(node->hsm, alt, use->wrapped, use->wrapped_len,
						  &h, err));
	}
	/* The key ring owns h from here on, whatever it answers. */
	return kms_keyring_set_handle(node->kr, key_id, h, use, err);
}

/*
 * Encrypts pt under the key's primary version into a new blob (AES-256-GCM
 * with a random 96-bit IV from the HSM, NIST SP 800-38D 8.2.2).
 */
int kms_key_ops_seal(kms_node *node, kms_call *call, kms_hsm_session *s, const char *key_id,
		     enum kms_op op, ProtobufCMessage **ctx, size_t n_ctx, const uint8_t *pt,
		     size_t pt_len, char *real_id, uint32_t *version, kms_buf *blob, kms_err *err)
{
	kms_ctx_pair *pairs = NULL;
	kms_key_use use = {0};
	kms_blob_header h;
	kms_buf aad = {0};
	uint8_t *ct = NULL;
	size_t ct_len = pt_len + KMS_GCM_TAG_LEN, cap;
	int rc;

	memset(&h, 0, sizeof(h));
	KMS_TRY_GOTO(rc, kms_key_name_check(key_id, err), out);
	KMS_TRY_GOTO(rc, context_pairs(ctx, n_ctx, &pairs, err), out);
	KMS_TRY_GOTO(rc, gate(node, call, key_id, 0, op, &use, err), out);
	/* The key's own id, never the alias the caller may have named it by. */
	snprintf(h.key_id, sizeof(h.key_id), "%s", use.key_id);
	h.key_version = use.version;
	KMS_TRY_GOTO(rc, kms_key_ops_handle(node, h.key_id, &use, err), out);
	KMS_TRY_GOTO(rc, kms_hsm_random(s, h.iv, sizeof(h.iv), err), out);
	KMS_TRY_GOTO(rc, kms_blob_aad(&h, pairs, n_ctx, &aad, err), out);
	/* One of this node's reserved encryptions (NIST SP 800-38D 8.3 bound). */
	KMS_TRY_GOTO(rc, kms_budget_take(node->budget, h.key_id, h.key_version,
					 kms_call_deadline_ms(call), err), out);
	ct = kms_malloc(ct_len);
	cap = kms_blob_encoded_size(&h, ct_len);
	blob->data = kms_malloc(cap);
	if (ct == NULL || blob->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory encrypting");
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_hsm_gcm_encrypt(s, use.handle, h.iv, aad.data, aad.len, pt, pt_len,
					     ct, err), out);
	KMS_TRY_GOTO(rc, kms_blob_encode(&h, ct, ct_len, blob->data, cap, &blob->len, err), out);
	memcpy(real_id, h.key_id, sizeof(h.key_id));
	*version = h.key_version;
out:
	kms_keyring_use_release(&use);
	if (rc != KMS_OK)
		kms_buf_free(blob);
	kms_free(ct);
	kms_buf_free(&aad);
	kms_free(pairs);
	return rc;
}

int kms_key_ops_open(kms_node *node, kms_call *call, kms_hsm_session *s, const uint8_t *blob,
		     size_t blob_len, ProtobufCMessage **ctx, size_t n_ctx,
		     const char *expect_key_id, enum kms_op op, kms_blob_header *h, uint8_t *pt,
		     size_t *pt_len, kms_err *err)
{
	kms_ctx_pair *pairs = NULL;
	kms_key_use use = {0};
	kms_buf aad = {0};
	const uint8_t *ct = NULL;
	size_t ct_len = 0;
	int rc;

	KMS_TRY_GOTO(rc, kms_blob_decode(blob, blob_len, h, &ct, &ct_len, err), out);
	if (ct_len - KMS_GCM_TAG_LEN > KMS_PLAINTEXT_MAX) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "the ciphertext blob is longer than any this server makes");
		goto out;
	}
	/* An alias is compared only after the gate: where it points is for
	 * those the key's policy admits. */
	if (expect_key_id[0] != '\0' && strcmp(expect_key_id, h->key_id) != 0 &&
	    !kms_is_alias_name(expect_key_id)) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "key_id '%s' does not match the key of the ciphertext blob",
			      expect_key_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, context_pairs(ctx, n_ctx, &pairs, err), out);
	KMS_TRY_GOTO(rc, gate(node, call, h->key_id, h->key_version, op, &use, err), out);
	if (expect_key_id[0] != '\0' && !kms_keyring_names_key(node->kr, expect_key_id, h->key_id)) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "key_id '%s' does not match the key of the ciphertext blob",
			      expect_key_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_key_ops_handle(node, h->key_id, &use, err), out);
	KMS_TRY_GOTO(rc, kms_blob_aad(h, pairs, n_ctx, &aad, err), out);
	KMS_TRY_GOTO(rc, kms_hsm_gcm_decrypt(s, use.handle, h->iv, aad.data, aad.len, ct, ct_len,
					     pt, err), out);
	*pt_len = ct_len - KMS_GCM_TAG_LEN;
out:
	kms_keyring_use_release(&use);
	kms_buf_free(&aad);
	kms_free(pairs);
	return rc;
}

int kms_key_op_decrypt(kms_node *node, kms_call *call, kms_hsm_session *s,
		       const Kms__V1__DecryptRequest *req, kms_blob_header *h,
		       Kms__V1__DecryptResponse *resp, uint8_t *pt, kms_err *err)
{
	size_t pt_len = 0;

	KMS_TRY(kms_key_ops_open(node, call, s, req->ciphertext_blob.data, req->ciphertext_blob.len,
				 (ProtobufCMessage **)req->encryption_context,
				 req->n_encryption_context, req->key_id, KMS_OP_DECRYPT, h, pt,
				 &pt_len, err));
	resp->key_id = h->key_id;
	resp->key_version = h->key_version;
	resp->plaintext.data = pt;
	resp->plaintext.len = pt_len;
	return KMS_OK;
}

int kms_key_op_generate_data_key(kms_node *node, kms_call *call, kms_hsm_session *s,
				 const Kms__V1__GenerateDataKeyRequest *req,
				 Kms__V1__GenerateDataKeyResponse *resp, uint8_t *dek,
				 char *real_id, kms_buf *blob, kms_err *err)
{
	size_t n = req->number_of_bytes == 0 ? KMS_DATA_KEY_DEFAULT_BYTES : req->number_of_bytes;
	uint32_t version = 0;

	if (n < 16 || n > KMS_DATA_KEY_MAX_BYTES)
		return kms_errf(err, KMS_ERR_INVALID,
				"number_of_bytes %u is out of range: use 0 (32), or 16 to %d",
				req->number_of_bytes, KMS_DATA_KEY_MAX_BYTES);
	/* Checked before spending HSM randomness on a request that must fail. */
	KMS_TRY(kms_key_name_check(req->key_id, err));
	KMS_TRY(kms_hsm_random(s, dek, n, err));
	KMS_TRY(kms_key_ops_seal(node, call, s, req->key_id, KMS_OP_GENERATE_DATA_KEY,
				 (ProtobufCMessage **)req->encryption_context,
				 req->n_encryption_context, dek, n, real_id, &version, blob, err));
	resp->key_id = real_id;
	resp->key_version = version;
	resp->ciphertext_blob.data = blob->data;
	resp->ciphertext_blob.len = blob->len;
	if (!req->without_plaintext) {
		resp->plaintext.data = dek;
		resp->plaintext.len = n;
	}
	return KMS_OK;
}

int kms_key_op_encrypt(kms_node *node, kms_call *call, kms_hsm_session *s,
		       const Kms__V1__EncryptRequest *req, Kms__V1__EncryptResponse *resp,
		       char *real_id, kms_buf *blob, kms_err *err)
{
	uint32_t version = 0;

	if (req->plaintext.len == 0 || req->plaintext.len > KMS_PLAINTEXT_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"plaintext is %zu bytes; it must be 1 to %d bytes",
				req->plaintext.len, KMS_PLAINTEXT_MAX);
	KMS_TRY(kms_key_ops_seal(node, call, s, req->key_id, KMS_OP_ENCRYPT,
				 (ProtobufCMessage **)req->encryption_context,
				 req->n_encryption_context, req->plaintext.data, req->plaintext.len,
				 real_id, &version, blob, err));
	resp->key_id = real_id;
	resp->key_version = version;
	resp->ciphertext_blob.data = blob->data;
	resp->ciphertext_blob.len = blob->len;
	return KMS_OK;
}

/*
 * A context of a ReEncrypt request, checked before any HSM work, with the
 * name of the field in the message: a request has two contexts.
 */
static int reencrypt_context_check(ProtobufCMessage **ctx, size_t n, const char *field,
				   kms_err *err)
{
	kms_ctx_pair *pairs = NULL;

	if (context_pairs(ctx, n, &pairs, err) != KMS_OK)
		return kms_err_prefix(err, field);
	kms_free(pairs);
	return KMS_OK;
}

int kms_key_op_reencrypt(kms_node *node, kms_call *call, kms_hsm_session *s,
			 const Kms__V1__ReEncryptRequest *req, kms_blob_header *h,
			 Kms__V1__ReEncryptResponse *resp, char *real_id, kms_buf *blob,
			 kms_err *err)
{
	/* The plaintext never leaves this frame: opened here, sealed here, wiped here. */
	uint8_t pt[KMS_PLAINTEXT_MAX];
	size_t pt_len = 0;
	uint32_t version = 0;
	int rc;

	/* What can be refused without the HSM is refused before the decrypt. */
	if (kms_key_id_check(req->destination_key_id, err) != KMS_OK)
		return kms_err_prefix(err, "destination_key_id");
	KMS_TRY(reencrypt_context_check((ProtobufCMessage **)req->source_encryption_context,
					req->n_source_encryption_context,
					"source_encryption_context", err));
	KMS_TRY(reencrypt_context_check((ProtobufCMessage **)req->destination_encryption_context,
					req->n_destination_encryption_context,
					"destination_encryption_context", err));
	KMS_TRY_GOTO(rc, kms_key_ops_open(node, call, s, req->ciphertext_blob.data,
					  req->ciphertext_blob.len,
					  (ProtobufCMessage **)req->source_encryption_context,
					  req->n_source_encryption_context, req->source_key_id,
					  KMS_OP_REENCRYPT_FROM, h, pt, &pt_len, err), out);
	KMS_TRY_GOTO(rc, kms_key_ops_seal(node, call, s, req->destination_key_id,
					  KMS_OP_REENCRYPT_TO,
					  (ProtobufCMessage **)req->destination_encryption_context,
					  req->n_destination_encryption_context, pt, pt_len, real_id,
					  &version, blob, err), out);
	resp->ciphertext_blob.data = blob->data;
	resp->ciphertext_blob.len = blob->len;
	resp->key_id = real_id;
	resp->key_version = version;
	resp->source_key_id = h->key_id;
	resp->source_key_version = h->key_version;
out:
	kms_cleanse(pt, sizeof(pt));
	return rc;
}
