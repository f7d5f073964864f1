/* api_domain_key.c - the calls of domain-key rotation: RotateDomainKey (the
 * leader's part, for administrators), DomainKeyStatus, and
 * Internal/FetchRotationDomainKey, the new key HSM to HSM for a member. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/keyring_dk.h"
#include "kms/log.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/dk_rotation.h"
#include "node/node.h"

#define TOKEN_GENS_MAX 8

int kms_api_op_rotate_domain_key(struct kms_node *node, const char *principal,
				 const uint8_t *data, size_t len, kms_buf *out,
				 kms_err *err)
{
	Kms__V1__RotateDomainKeyRequest *req =
	    kms__v1__rotate_domain_key_request__unpack(NULL, len, data);
	Kms__V1__RotateDomainKeyResponse resp =
	    KMS__V1__ROTATE_DOMAIN_KEY_RESPONSE__INIT;
	uint32_t gen = 0;
	int rc;

	if (req == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"malformed RotateDomainKeyRequest");
	if (principal == NULL || !kms_keyring_is_admin(node->kr, principal)) {
		rc =
		    kms_errf(err, KMS_ERR_PERMISSION,
			     "only an administrator may rotate the domain key");
		goto out;
	}
	/* A relayed start is refused as a direct one: only a proposal starts it. */
	if (!req->abort) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "rotating the domain key is a root operation that M operators "
			      "approve: kmsctl quorum propose rotate-domain-key, then kmsctl "
			      "quorum approve");
		goto out;
	}
	rc = kms_dk_rotation_abort(node, &gen, err);
	if (rc != KMS_OK)
		goto out;
	KMS_LOG_I("domain-key rotation to generation %u %s by '%s'", gen,
		  req->abort ? "aborted" : "begun", principal);
	resp.generation = gen;
	out->len = kms__v1__rotate_domain_key_response__get_packed_size(&resp);
	out->data = kms_malloc(out->len > 0 ? out->len : 1);
	if (out->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory building the reply");
		goto out;
	}
	kms__v1__rotate_domain_key_response__pack(&resp, out->data);
out:
	kms__v1__rotate_domain_key_request__free_unpacked(req, NULL);
	return rc;
}

static void domain_key_status(void *app, kms_call *call, const uint8_t *data,
			      size_t len)
{
	kms_node *node = app;
	Kms__V1__DomainKeyStatusRequest *req =
	    kms__v1__domain_key_status_request__unpack(NULL, len, data);
	Kms__V1__DomainKeyStatusResponse resp =
	    KMS__V1__DOMAIN_KEY_STATUS_RESPONSE__INIT;
	uint32_t gens[TOKEN_GENS_MAX];
	kms_dk_state st;
	kms_err err = {0};
	size_t n = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID,
			      "malformed DomainKeyStatusRequest");
		return;
	}
	kms__v1__domain_key_status_request__free_unpacked(req, NULL);
	if (!kms_keyring_is_admin(node->kr, kms_call_principal(call))) {
		kms_call_fail(
		    call, KMS_ERR_PERMISSION,
		    "only an administrator may see the domain key's status");
		return;
	}
	if (kms_dk_token_generations(node, gens, TOKEN_GENS_MAX, &n, &err) !=
	    KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	kms_keyring_dk_state(node->kr, &st);
	resp.generation = st.generation;
	resp.highest_generation = st.highest;
	resp.rotating = st.rotating;
	resp.rotation_generation = st.rot_generation;
	resp.switched = st.switched;
	resp.started_by = st.started_by;
	resp.installed = st.installed;
	resp.n_installed = st.n_installed;
	resp.destroyed = st.destroyed;
	resp.n_destroyed = st.n_destroyed;
	resp.token_generations = gens;
	resp.n_token_generations = n;
	resp.last_rotated_at_unix = st.last_rotated_at_unix;
	kms_call_reply(call, &resp.base, 0);
}

/* One message for every refusal: the log says which. */
static const char no_grant_msg[] = "no unused rotation grant names this node "
				   "and this transport key for that generation";

/*
 * The new key only to the transport key of the caller's own unused grant,
 * and the grant used up through Raft before the answer leaves, as
 * FetchDomainKey does for a joining node. The wrap comes first, so a key
 * the HSM refuses burns no grant.
 */
static void fetch_rotation_domain_key(void *app, kms_call *call,
				      const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__FetchRotationDomainKeyRequest *req =
	    kms__v1__fetch_rotation_domain_key_request__unpack(NULL, len, data);
	Kms__V1__FetchRotationDomainKeyResponse resp =
	    KMS__V1__FETCH_ROTATION_DOMAIN_KEY_RESPONSE__INIT;
	uint64_t caller = kms_call_peer(call)->node_id;
	uint8_t fp[KMS_SHA256_LEN];
	const kms_dk_grant *g;
	kms_buf wrapped = {0}, cmd = {0};
	kms_hsm_key dk;
	kms_dk_state st;
	kms_member m;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID,
			      "malformed FetchRotationDomainKeyRequest");
		return;
	}
	if (caller != req->node_id ||
	    kms_keyring_member(node->kr, caller, &m) != KMS_OK) {
		rc = kms_errf(
		    &err, KMS_ERR_PERMISSION,
		    "node %llu may not fetch a rotation key for node %llu",
		    (unsigned long long)caller,
		    (unsigned long long)req->node_id);
		goto out;
	}
	KMS_TRY_GOTO(
	    rc,
	    kms_rsa_public_sha256(req->rsa_modulus.data, req->rsa_modulus.len,
				  req->rsa_public_exponent.data,
				  req->rsa_public_exponent.len, fp, &err),
	    out);
	kms_keyring_dk_state(node->kr, &st);
	g = kms_dk_grant_of(&st, caller);
	if (!st.rotating || st.switched ||
	    st.rot_generation != req->generation || g == NULL || g->used ||
	    CRYPTO_memcmp(g->transport_key_sha256, fp, KMS_FINGERPRINT_LEN) !=
		0) {
		KMS_LOG_W(
		    "rotation key refused to node %llu (generation %u): %s",
		    (unsigned long long)caller, req->generation,
		    !st.rotating || st.switched ||
			    st.rot_generation != req->generation
			? "no such rotation before its switch"
		    : g == NULL ? "no grant"
		    : g->used	? "grant used"
				: "grant for another transport key");
		rc = kms_errf(&err, KMS_ERR_PERMISSION, "%s", no_grant_msg);
		goto out;
	}
	dk = kms_dk_held(node, st.rot_generation);
	if (dk == 0) {
		rc =
		    kms_errf(&err, KMS_ERR_UNAVAILABLE,
			     "this node does not hold domain key generation %u",
			     st.rot_generation);
		goto out;
	}
	KMS_TRY_GOTO(rc,
		     kms_hsm_domain_key_wrap_for(
			 node->hsm, dk, req->rsa_modulus.data,
			 req->rsa_modulus.len, req->rsa_public_exponent.data,
			 req->rsa_public_exponent.len, &wrapped, &err),
		     out);
	KMS_TRY_GOTO(rc,
		     kms_keyring_cmd_dk_consume(caller, st.rot_generation, fp,
						&cmd, &err),
		     out);
	rc = kms_node_commit_wait(node, kms_call_principal(call), cmd.data,
				  cmd.len, NULL, &err);
	if (rc != KMS_OK) {
		KMS_LOG_W("rotation key refused to node %llu: using its grant "
			  "failed: %s",
			  (unsigned long long)caller, err.msg);
		if (rc == KMS_ERR_PERMISSION)
			kms_errf(&err, KMS_ERR_PERMISSION, "%s", no_grant_msg);
		goto out;
	}
	resp.wrapped_domain_key.data = wrapped.data;
	resp.wrapped_domain_key.len = wrapped.len;
	KMS_LOG_I("domain key generation %u wrapped to node %llu's transport "
		  "key; its rotation "
		  "grant is used",
		  st.rot_generation, (unsigned long long)caller);
	kms_call_reply(call, &resp.base, 0);
out:
	if (rc != KMS_OK)
		kms_call_fail(call, rc, err.msg);
	kms_buf_free(&cmd);
	kms_buf_free(&wrapped);
	kms__v1__fetch_rotation_domain_key_request__free_unpacked(req, NULL);
}

const kms_method kms_api_domain_key_methods[] = {
    {"/kms.v1.Operator/DomainKeyStatus", domain_key_status,
     KMS_CALLERS_SERVICES, &kms__v1__domain_key_status_request__descriptor, 0},
    {"/kms.v1.Internal/FetchRotationDomainKey", fetch_rotation_domain_key,
     KMS_CALLERS_NODES, &kms__v1__fetch_rotation_domain_key_request__descriptor,
     0},
};
const size_t kms_api_domain_key_n_methods =
    sizeof(kms_api_domain_key_methods) / sizeof(kms_api_domain_key_methods[0]);
