/* api_internal.c - kms.v1.Internal, for member nodes only: writes forwarded to the leader (one or a batch), node status, the domain key for an admitted node, relayed Operator calls. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <raft.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/state.pb-c.h"
#include "node/dk_rotation.h"
#include "node/forward.h"
#include "node/node.h"
#include "rpc/wire_strings.h"

uint64_t kms_api_require_member_node(kms_node *node, kms_call *call)
{
	const kms_peer *p = kms_call_peer(call);
	kms_member m;
	char msg[KMS_ERRMSG_SIZE];

	if (p->kind == KMS_PEER_NODE && kms_keyring_member(node->kr, p->node_id, &m) == KMS_OK)
		return p->node_id;
	snprintf(msg, sizeof(msg), "node %llu is not a member of this cluster",
		 (unsigned long long)p->node_id);
	kms_call_fail(call, KMS_ERR_PERMISSION, msg);
	return 0;
}

/* --- Forward and ForwardBatch --- */

/* True if principal is the node identity of node id want in our trust domain. */
static int principal_is_node(kms_node *node, const char *principal, uint64_t want)
{
	kms_spiffe_id id;
	uint64_t node_id = 0;

	return kms_spiffe_parse_str(principal, 1, &id, NULL) == KMS_OK &&
	       kms_spiffe_in_trust_domain(&id, node->cfg.trust_domain) &&
	       kms_spiffe_node_id(&id, &node_id) == KMS_OK && node_id == want;
}

/*
 * The gate a forwarded command passes on the leader: the same decision the
 * handler on the forwarding node made, taken again for the principal the
 * forwarding node served, on the leader's state. Membership, the
 * administrators list and the domain-key check never come this way: they
 * run on the leader (Relay, or the leader's own bookkeeping).
 */
static int forward_gate(kms_node *node, uint64_t peer_id, const char *principal,
			const uint8_t *cmd, size_t len, kms_err *err)
{
	Kms__V1__Command *c = kms__v1__command__unpack(NULL, len, cmd);
	char q[KMS_QUOTE_MAX + 4];
	int rc = KMS_OK;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "the forwarded command is not a kms.v1.Command");
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_CREATE_KEY:
		if (!kms_keyring_is_admin(node->kr, principal))
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "principal '%s' is not an administrator and may not create "
				      "keys",
				      kms_quote(principal, q));
		else if (c->create_key->key == NULL ||
			 strcmp(c->create_key->key->created_by, principal) != 0)
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "the forwarded CreateKey was not made for principal '%s'",
				      kms_quote(principal, q));
		else
			rc = kms_keyring_new_key_id_check(c->create_key->key->key_id, err);
		break;
	case KMS__V1__COMMAND__CMD_CONSUME_JOIN_GRANT:
		/* Only the joining node itself uses its grant. */
		if (!principal_is_node(node, principal, c->consume_join_grant->node_id))
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "principal '%s' may not use the join grant of node %llu",
				      kms_quote(principal, q),
				      (unsigned long long)c->consume_join_grant->node_id);
		break;
	case KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION:
	case KMS__V1__COMMAND__CMD_CONSUME_DOMAIN_KEY_ROTATION_GRANT:
	case KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY: {
		/*
		 * A member's own steps of a rotation: its grant and its
		 * confirmations, which only it forwards; the use of its grant,
		 * which the holder it fetched from forwards in its name (as with
		 * ConsumeJoinGrant).
		 */
		int own = c->cmd_case != KMS__V1__COMMAND__CMD_CONSUME_DOMAIN_KEY_ROTATION_GRANT;
		uint64_t id = 0;

		/* The oneof's members share one pointer: read the one set. */
		if (c->cmd_case == KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION &&
		    c->grant_domain_key_rotation != NULL)
			id = c->grant_domain_key_rotation->node_id;
		else if (!own && c->consume_domain_key_rotation_grant != NULL)
			id = c->consume_domain_key_rotation_grant->node_id;
		else if (c->cmd_case == KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY &&
			 c->confirm_domain_key != NULL)
			id = c->confirm_domain_key->node_id;

		if (id == 0 || !principal_is_node(node, principal, id) || (own && peer_id != id))
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "principal '%s' may not take node %llu's domain-key rotation "
				      "steps",
				      kms_quote(principal, q), (unsigned long long)id);
		break;
	}
	case KMS__V1__COMMAND__CMD_RESERVE_ENCRYPTIONS:
		/*
		 * A node reserves encryptions for itself alone: the member that
		 * forwards it, whatever principal it names (only the node's own
		 * budget ever reserves, so the two always agree).
		 */
		if (peer_id != c->reserve_encryptions->node_id ||
		    !principal_is_node(node, principal, c->reserve_encryptions->node_id))
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "principal '%s' may not reserve encryptions for node %llu",
				      kms_quote(principal, q),
				      (unsigned long long)c->reserve_encryptions->node_id);
		break;
	default:
		/* Key administration: for administrators, by the handler's rules. */
		if (kms_api_keyadmin_command(c)) {
			rc = kms_api_keyadmin_gate(node, principal, c, cmd, len, err);
			break;
		}
		/* DestroyKey among the rest: only the leader's supervisor proposes it. */
		rc = kms_errf(err, KMS_ERR_PERMISSION,
			      "this command is not accepted through Forward: membership, the "
			      "administrators, the domain-key check and key destruction change "
			      "on the leader only");
		break;
	}
	kms__v1__command__free_unpacked(c, NULL);
	return rc;
}

/*
 * The writes of one Forward or ForwardBatch call, answered together once
 * each has its outcome. pending counts the outcomes still to come plus the
 * handler's own reference: Raft may finish a write (on its thread) before
 * the handler has submitted the next one, and whoever drops the last
 * reference answers the call.
 */
struct fwd_item {
	struct fwd_writes *w;
	int status;
	uint64_t index;
	int not_leader;
	uint64_t leader_id;
	char msg[KMS_ERRMSG_SIZE];
};

struct fwd_writes {
	kms_call *call;
	atomic_size_t pending;
	int batch; /* answer a ForwardBatchResponse (else a ForwardResponse) */
	size_t n;
	struct fwd_item items[];
};

static void fwd_reply(struct fwd_writes *w)
{
	Kms__V1__ForwardResponse res[KMS_FORWARD_BATCH_MAX], *ptr[KMS_FORWARD_BATCH_MAX];
	Kms__V1__ForwardBatchResponse batch = KMS__V1__FORWARD_BATCH_RESPONSE__INIT;

	for (size_t i = 0; i < w->n; i++) {
		kms__v1__forward_response__init(&res[i]);
		res[i].status = (uint32_t)w->items[i].status;
		res[i].message = w->items[i].msg;
		res[i].index = w->items[i].index;
		res[i].not_leader = w->items[i].not_leader;
		res[i].leader_id = w->items[i].leader_id;
		ptr[i] = &res[i];
	}
	batch.results = ptr;
	batch.n_results = w->n;
	kms_call_reply(w->call, w->batch ? &batch.base : &res[0].base, 0);
	kms_free(w);
}

static void fwd_release(struct fwd_writes *w)
{
	if (atomic_fetch_sub(&w->pending, 1) == 1)
		fwd_reply(w);
}

static void fwd_item_set(struct fwd_item *it, int status, const char *msg, uint64_t index)
{
	it->status = status;
	it->index = index;
	snprintf(it->msg, sizeof(it->msg), "%s", msg != NULL ? msg : "");
}

/* A write's outcome from Raft (the Raft thread, or the submitting one). */
static void fwd_item_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct fwd_item *it = arg;

	fwd_item_set(it, status, msg, index);
	fwd_release(it->w);
}

/*
 * Decides and submits n forwarded writes, and answers the call once all
 * have their outcome. A node that does not lead submits none of them and
 * says so (not_leader), so that the forwarding node may send them on; a
 * refusal by the gate travels in the answer, as a write's outcome does.
 */
static void forward_writes(kms_node *node, kms_call *call, Kms__V1__ForwardRequest **writes,
			   size_t n, int batch)
{
	struct fwd_writes *w = kms_calloc(1, sizeof(*w) + n * sizeof(w->items[0]));
	kms_raft_view v;
	int leads = kms_node_is_leader(node);

	if (w == NULL) {
		kms_call_fail(call, KMS_ERR_NOMEM, "out of memory taking forwarded writes");
		return;
	}
	w->call = call;
	w->batch = batch;
	w->n = n;
	atomic_init(&w->pending, n + 1);
	kms_raft_view_get(node->raft, &v);
	for (size_t i = 0; i < n; i++) {
		struct fwd_item *it = &w->items[i];
		kms_err err = {0};

		it->w = w;
		if (!leads) {
			snprintf(it->msg, sizeof(it->msg),
				 "node %u is no longer the Raft leader (%s); retry shortly",
				 node->cfg.node_id,
				 v.leader_id != 0 ? "it knows another"
						  : "no leader is known: no quorum?");
			it->status = KMS_ERR_UNAVAILABLE;
			it->not_leader = 1;
			it->leader_id = v.leader_id;
			fwd_release(w);
		} else if (forward_gate(node, kms_call_peer(call)->node_id, writes[i]->principal,
					writes[i]->command.data, writes[i]->command.len,
					&err) != KMS_OK) {
			KMS_LOG_W("refused a write forwarded by node %llu: %s",
				  (unsigned long long)kms_call_peer(call)->node_id, err.msg);
			fwd_item_set(it, err.code, err.msg, 0);
			fwd_release(w);
		} else {
			/* The command is checked again by every node's apply. */
			kms_raft_submit(node->raft, writes[i]->command.data,
					writes[i]->command.len, fwd_item_done, it);
		}
	}
	fwd_release(w);
}

static void forward(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ForwardRequest *req = kms__v1__forward_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ForwardRequest");
		return;
	}
	/* The leader's record names the caller the follower served too. */
	kms_call_audit_on_behalf_of(call, req->principal);
	if (kms_api_require_member_node(node, call) != 0)
		forward_writes(node, call, &req, 1, 0);
	kms__v1__forward_request__free_unpacked(req, NULL);
}

static void forward_batch(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ForwardBatchRequest *req =
		kms__v1__forward_batch_request__unpack(NULL, len, data);
	char msg[KMS_ERRMSG_SIZE];
	size_t same;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ForwardBatchRequest");
		return;
	}
	if (kms_api_require_member_node(node, call) == 0)
		goto out;
	if (req->n_writes == 0 || req->n_writes > KMS_FORWARD_BATCH_MAX) {
		snprintf(msg, sizeof(msg), "a ForwardBatch holds 1 to %d writes, not %zu",
			 KMS_FORWARD_BATCH_MAX, req->n_writes);
		kms_call_fail(call, KMS_ERR_INVALID, msg);
		goto out;
	}
	kms_call_audit_items(call, (unsigned)req->n_writes);
	/* The leader's record names the caller the follower served when the
	 * writes are all one caller's (the usual case: a batch of one). */
	same = 1;
	while (same < req->n_writes &&
	       strcmp(req->writes[same]->principal, req->writes[0]->principal) == 0)
		same++;
	if (same == req->n_writes)
		kms_call_audit_on_behalf_of(call, req->writes[0]->principal);
	forward_writes(node, call, req->writes, req->n_writes, 1);
out:
	kms__v1__forward_batch_request__free_unpacked(req, NULL);
}

/* --- NodeStatus --- */

static void node_status(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__NodeStatusRequest *req = kms__v1__node_status_request__unpack(NULL, len, data);
	Kms__V1__NodeStatusResponse resp = KMS__V1__NODE_STATUS_RESPONSE__INIT;
	char reason[KMS_ERRMSG_SIZE];

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed NodeStatusRequest");
		return;
	}
	kms__v1__node_status_request__free_unpacked(req, NULL);
	if (kms_api_require_member_node(node, call) == 0)
		return;
	kms_node_local_status(node, &resp, reason);
	kms_call_reply(call, &resp.base, 0);
}

/* --- ReadIndex --- */

static void read_index_reply(kms_call *call, int status, const char *msg, uint64_t commit)
{
	Kms__V1__ReadIndexResponse resp = KMS__V1__READ_INDEX_RESPONSE__INIT;

	resp.status = (uint32_t)status;
	resp.message = (char *)(msg != NULL ? msg : "");
	resp.commit_index = commit;
	kms_call_reply(call, &resp.base, 0);
}

/*
 * A follower's "leader-commit" read: the commit index, but only for a call
 * this, the leader's, state authorizes; the follower then waits for it.
 */
static void read_index(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ReadIndexRequest *req = kms__v1__read_index_request__unpack(NULL, len, data);
	kms_raft_view v;
	enum kms_op op;
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ReadIndexRequest");
		return;
	}
	if (kms_api_require_member_node(node, call) == 0)
		goto out;
	kms_raft_view_get(node->raft, &v);
	if (v.state != RAFT_LEADER) {
		read_index_reply(call, KMS_ERR_UNAVAILABLE,
				 "leader-commit consistency: the node asked is no longer the leader",
				 0);
		goto out;
	}
	if (kms_op_parse(req->operation, &op, &err) != KMS_OK ||
	    kms_keyring_authorize(node->kr, req->key_id, req->principal, op, &err) != KMS_OK) {
		read_index_reply(call, err.code, err.msg, 0);
		goto out;
	}
	read_index_reply(call, KMS_OK, NULL, v.commit_index);
out:
	kms__v1__read_index_request__free_unpacked(req, NULL);
}

/* --- FetchDomainKey --- */

/* One answer for every grant problem: the caller learns nothing more. */
static const char no_grant_msg[] =
	"no unexpired, unused join grant names this node and this transport key: an "
	"operator admits a node with kmsctl cluster join ... --transport-key-sha256 HEX";

/*
 * The domain key only to the exact key of an unexpired, unused grant, and
 * the grant used up through Raft before the answer leaves. The wrap comes
 * first so that a key the HSM refuses (a weak exponent) burns no grant; a
 * wrap whose consume then fails is thrown away.
 */
static void fetch_domain_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__FetchDomainKeyRequest *req =
		kms__v1__fetch_domain_key_request__unpack(NULL, len, data);
	Kms__V1__FetchDomainKeyResponse resp = KMS__V1__FETCH_DOMAIN_KEY_RESPONSE__INIT;
	Kms__V1__Member mrec[KMS_MEMBERS_MAX], *mptr[KMS_MEMBERS_MAX];
	kms_member members[KMS_MEMBERS_MAX];
	uint8_t fp[KMS_SHA256_LEN];
	uint64_t caller = kms_call_peer(call)->node_id;
	int64_t now = (int64_t)time(NULL);
	kms_buf wrapped = {0}, cmd = {0};
	kms_hsm_key dk = 0;
	uint32_t dk_gen = 0;
	kms_err err = {0};
	size_t n;
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed FetchDomainKeyRequest");
		return;
	}
	if (caller != req->node_id) {
		rc = kms_errf(&err, KMS_ERR_PERMISSION,
			      "node %llu may not fetch the domain key for node %llu",
			      (unsigned long long)caller, (unsigned long long)req->node_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_rsa_public_sha256(req->rsa_modulus.data, req->rsa_modulus.len,
					       req->rsa_public_exponent.data,
					       req->rsa_public_exponent.len, fp, &err),
		     out);
	if (kms_keyring_join_grant_check(node->kr, caller, fp, now, &err) != KMS_OK) {
		KMS_LOG_W("domain key refused to node %llu: %s", (unsigned long long)caller,
			  err.msg);
		rc = kms_errf(&err, KMS_ERR_PERMISSION, "%s", no_grant_msg);
		goto out;
	}
	if (atomic_load(&node->domain_key) == 0 || !atomic_load(&node->probe_verified)) {
		rc = kms_errf(&err, KMS_ERR_UNAVAILABLE, "this node holds no verified domain key");
		goto out;
	}
	kms_dk_current(node, &dk, &dk_gen);
	KMS_TRY_GOTO(rc, kms_hsm_domain_key_wrap_for(node->hsm, dk,
						     req->rsa_modulus.data, req->rsa_modulus.len,
						     req->rsa_public_exponent.data,
						     req->rsa_public_exponent.len, &wrapped, &err),
		     out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_consume_join_grant(caller, fp, now, &cmd, &err), out);
	rc = kms_node_commit_wait(node, kms_call_principal(call), cmd.data, cmd.len, NULL, &err);
	if (rc != KMS_OK) {
		KMS_LOG_W("domain key refused to node %llu: using its grant failed: %s",
			  (unsigned long long)caller, err.msg);
		if (rc == KMS_ERR_PERMISSION)
			kms_errf(&err, KMS_ERR_PERMISSION, "%s", no_grant_msg);
		goto out;
	}
	n = kms_keyring_members(node->kr, members, KMS_MEMBERS_MAX);
	for (size_t i = 0; i < n && i < KMS_MEMBERS_MAX; i++) {
		kms__v1__member__init(&mrec[i]);
		mrec[i].id = members[i].id;
		mrec[i].raft_address = members[i].raft_address;
		mrec[i].grpc_address = members[i].grpc_address;
		mptr[i] = &mrec[i];
	}
	resp.members = mptr;
	resp.n_members = n < KMS_MEMBERS_MAX ? n : KMS_MEMBERS_MAX;
	resp.wrapped_domain_key.data = wrapped.data;
	resp.wrapped_domain_key.len = wrapped.len;
	resp.domain_key_generation = dk_gen;
	KMS_LOG_I("domain key wrapped to node %llu's transport key; its join grant is used",
		  (unsigned long long)caller);
	kms_call_reply(call, &resp.base, 0);
out:
	if (rc != KMS_OK)
		kms_call_fail(call, rc, err.msg);
	kms_buf_free(&cmd);
	kms_buf_free(&wrapped);
	kms__v1__fetch_domain_key_request__free_unpacked(req, NULL);
}

/* --- Relay --- */

static void relay_reply(kms_call *call, int status, const char *msg, const kms_buf *out)
{
	Kms__V1__RelayResponse resp = KMS__V1__RELAY_RESPONSE__INIT;

	resp.status = (uint32_t)status;
	resp.message = (char *)(msg != NULL ? msg : "");
	if (status == KMS_OK && out != NULL) {
		resp.response.data = out->data;
		resp.response.len = out->len;
	}
	kms_call_reply(call, &resp.base, 0);
}

/*
 * An Operator call a member carried here for its caller. It runs as if the
 * caller had called the leader: the same code, the same checks, with the
 * principal the member authenticated (a service identity of our trust
 * domain; a member node is trusted to report it, as it is trusted with the
 * domain key).
 */
static void relay(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RelayRequest *req = kms__v1__relay_request__unpack(NULL, len, data);
	const kms_leader_op *op;
	kms_spiffe_id id;
	kms_buf out = {0};
	kms_err err = {0};
	char q[KMS_QUOTE_MAX + 4];
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RelayRequest");
		return;
	}
	if (kms_api_require_member_node(node, call) == 0)
		goto out;
	op = kms_api_leader_op(req->method);
	if (op == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "this method is not one the leader runs for others");
		goto out;
	}
	if (kms_spiffe_parse_str(req->principal, 1, &id, NULL) != KMS_OK ||
	    !kms_spiffe_in_trust_domain(&id, node->cfg.trust_domain) ||
	    kms_spiffe_is_node_path(&id)) {
		kms_call_fail(call, KMS_ERR_PERMISSION, "the relayed principal is not a service "
							"identity of this trust domain");
		goto out;
	}
	if (!kms_node_is_leader(node)) {
		relay_reply(call, KMS_ERR_UNAVAILABLE,
			    "this node is no longer the leader; retry the call", NULL);
		goto out;
	}
	rc = kms_wire_check_strings(op->request, req->request.data, req->request.len, &err);
	if (rc == KMS_OK)
		rc = op->fn(node, req->principal, req->request.data, req->request.len, &out, &err);
	if (rc != KMS_OK)
		KMS_LOG_D("relayed %s for '%s' refused: %s", req->method,
			  kms_quote(req->principal, q), err.msg);
	relay_reply(call, rc, rc == KMS_OK ? NULL : err.msg, &out);
out:
	kms_buf_free(&out);
	kms__v1__relay_request__free_unpacked(req, NULL);
}

const kms_method kms_api_internal_methods[] = {
	{"/kms.v1.Internal/Forward", forward, KMS_CALLERS_NODES,
	 &kms__v1__forward_request__descriptor, 0},
	{"/kms.v1.Internal/NodeStatus", node_status, KMS_CALLERS_NODES,
	 &kms__v1__node_status_request__descriptor, 0},
	{"/kms.v1.Internal/FetchDomainKey", fetch_domain_key, KMS_CALLERS_NODES,
	 &kms__v1__fetch_domain_key_request__descriptor, 0},
	{"/kms.v1.Internal/Relay", relay, KMS_CALLERS_NODES, &kms__v1__relay_request__descriptor,
	 0},
	{"/kms.v1.Internal/ReadIndex", read_index, KMS_CALLERS_NODES,
	 &kms__v1__read_index_request__descriptor, 0},
	{"/kms.v1.Internal/ForwardBatch", forward_batch, KMS_CALLERS_NODES,
	 &kms__v1__forward_batch_request__descriptor, 0},
};
const size_t kms_api_internal_n_methods =
	sizeof(kms_api_internal_methods) / sizeof(kms_api_internal_methods[0]);
