/* api_quorum.c - kms.v1.Operator's quorum calls: root operations proposed, approved by M operators' signatures, shown, listed and cancelled. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/log.h"
#include "kms/quorum.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/node.h"

/* A proposal as the API shows it, with the buffers it borrows. */
struct shown {
	Kms__V1__Proposal msg;
	char digest[2 * KMS_QUORUM_DIGEST_LEN + 1];
	char state[16];
};

static int packed(const ProtobufCMessage *m, kms_buf *resp, kms_err *err)
{
	resp->len = protobuf_c_message_get_packed_size(m);
	resp->data = kms_malloc(resp->len > 0 ? resp->len : 1);
	if (resp->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory building the reply");
	protobuf_c_message_pack(m, resp->data);
	return KMS_OK;
}

/* Fills sh from p (borrowing its fields); cid and threshold from the state. */
static void show(const Kms__V1__ProposalRecord *p, const uint8_t *cid, uint32_t threshold,
		 struct shown *sh)
{
	Kms__V1__Proposal *m = &sh->msg;

	kms__v1__proposal__init(m);
	m->id = p->id;
	m->proposer = p->proposer;
	m->operation = p->operation;
	m->created_at_unix = p->created_at_unix;
	m->expires_at_unix = p->expires_at_unix;
	kms_hex_encode(p->digest.data, p->digest.len < KMS_QUORUM_DIGEST_LEN ? p->digest.len
									     : KMS_QUORUM_DIGEST_LEN,
		       sh->digest);
	m->digest = sh->digest;
	m->approvals = p->approvals;
	m->n_approvals = p->n_approvals;
	snprintf(sh->state, sizeof(sh->state), "%s",
		 kms_proposal_state_name(p, (int64_t)time(NULL)));
	m->state = sh->state;
	m->threshold = threshold;
	if (p->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_EXECUTED)
		m->result = (char *)"ok";
	else if (p->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_FAILED)
		m->result = p->result_message;
	m->finished_at_unix = p->finished_at_unix;
	m->cluster_id.data = (uint8_t *)cid;
	m->cluster_id.len = KMS_CLUSTER_ID_LEN;
}

/* The threshold and cluster id in force; KMS_ERR_PRECONDITION without operators. */
static int quorum_now(kms_node *node, uint8_t cid[KMS_CLUSTER_ID_LEN], uint32_t *threshold,
		      kms_err *err)
{
	Kms__V1__SetOperatorsOperation *ops = NULL;

	KMS_TRY(kms_keyring_quorum(node->kr, cid, &ops, err));
	*threshold = ops->threshold;
	kms_keyring_operators_free(ops);
	return KMS_OK;
}

/* Packs proposal id, as the state holds it now, into a response of desc's kind
 * (each of them is {Proposal proposal = 1}). */
static int reply_proposal(kms_node *node, const char *id, const ProtobufCMessageDescriptor *desc,
			  kms_buf *out, kms_err *err)
{
	Kms__V1__ProposalRecord *p = NULL;
	uint8_t cid[KMS_CLUSTER_ID_LEN];
	uint32_t threshold;
	struct shown sh;
	int rc;

	KMS_TRY(quorum_now(node, cid, &threshold, err));
	KMS_TRY(kms_keyring_proposal(node->kr, id, &p, err));
	show(p, cid, threshold, &sh);
	if (desc == &kms__v1__approve_operation_response__descriptor) {
		Kms__V1__ApproveOperationResponse r = KMS__V1__APPROVE_OPERATION_RESPONSE__INIT;

		r.proposal = &sh.msg;
		rc = packed(&r.base, out, err);
	} else if (desc == &kms__v1__cancel_operation_response__descriptor) {
		Kms__V1__CancelOperationResponse r = KMS__V1__CANCEL_OPERATION_RESPONSE__INIT;

		r.proposal = &sh.msg;
		rc = packed(&r.base, out, err);
	} else if (desc == &kms__v1__get_operation_response__descriptor) {
		Kms__V1__GetOperationResponse r = KMS__V1__GET_OPERATION_RESPONSE__INIT;

		r.proposal = &sh.msg;
		rc = packed(&r.base, out, err);
	} else {
		Kms__V1__ProposeOperationResponse r = KMS__V1__PROPOSE_OPERATION_RESPONSE__INIT;

		r.proposal = &sh.msg;
		rc = packed(&r.base, out, err);
	}
	kms_keyring_proposal_free(p);
	return rc;
}

/*
 * Commits cmd once the state, as the leader holds it, accepts it: a refusal
 * is answered with its own sentence and written nowhere (Raft would carry
 * only its status back).
 */
static int decide_and_commit(kms_node *node, const char *principal, const kms_buf *cmd,
			     kms_err *err)
{
	KMS_TRY(kms_keyring_check(node->kr, cmd->data, cmd->len, err));
	return kms_node_commit_wait(node, principal, cmd->data, cmd->len, NULL, err);
}

/* What the state cannot judge alone, checked against this node's view. */
static int propose_checks(kms_node *node, const Kms__V1__RootOperation *op, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	kms_member m;

	switch (op->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS:
		for (size_t i = 0; i < op->set_administrators->n_administrators; i++) {
			const char *a = op->set_administrators->administrators[i];
			kms_spiffe_id id;

			if (kms_spiffe_parse_str(a, 1, &id, err) != KMS_OK ||
			    !kms_spiffe_in_trust_domain(&id, node->cfg.trust_domain))
				return kms_errf(err, KMS_ERR_INVALID,
						"administrator '%s' is not in this cluster's trust "
						"domain '%s'",
						kms_quote(a, q), node->cfg.trust_domain);
		}
		return KMS_OK;
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER:
		if (kms_keyring_member(node->kr, op->add_member->id, &m) == KMS_OK &&
		    kms_member_joined(&m))
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"node %llu is already a member and holds the domain key; "
					"remove it first to admit it again",
					(unsigned long long)op->add_member->id);
		return KMS_OK;
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		if (kms_keyring_member(node->kr, op->remove_member->id, &m) != KMS_OK)
			return kms_errf(err, KMS_ERR_NOT_FOUND, "node %llu is not a member",
					(unsigned long long)op->remove_member->id);
		if (kms_keyring_members(node->kr, NULL, 0) <= 1)
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"node %llu is the only member; a cluster cannot remove its "
					"last node",
					(unsigned long long)op->remove_member->id);
		/* This runs on the leader. Handing leadership over first raced
		 * with raft 0.15's configuration changes in tests: the operator
		 * stops the leader so that another node leads. */
		if (op->remove_member->id == node->cfg.node_id)
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"node %llu is the leader; stop it first so that another "
					"node leads, then propose its removal",
					(unsigned long long)op->remove_member->id);
		return KMS_OK;
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		return kms_api_link_region_check(node, op->link_region, err);
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		if (!kms_keyring_has_key(node->kr, op->destroy_key->key_id))
			return kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
					op->destroy_key->key_id);
		return KMS_OK;
	default:
		return KMS_OK;
	}
}

static int op_propose(kms_node *node, const char *principal, const uint8_t *data, size_t len,
		      kms_buf *out, kms_err *err)
{
	Kms__V1__ProposeOperationRequest *req =
		kms__v1__propose_operation_request__unpack(NULL, len, data);
	Kms__V1__ProposalRecord p = KMS__V1__PROPOSAL_RECORD__INIT;
	uint8_t cid[KMS_CLUSTER_ID_LEN], rnd[KMS_PROPOSAL_ID_HEX / 2], digest[KMS_QUORUM_DIGEST_LEN];
	char id[KMS_PROPOSAL_ID_HEX + 1];
	kms_buf cmd = {0};
	uint32_t ttl, threshold;
	int64_t now = (int64_t)time(NULL);
	int rc;

	if (req == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "malformed ProposeOperationRequest");
	KMS_TRY_GOTO(rc, kms_api_admin_check(node, principal, err), out);
	ttl = req->ttl_seconds == 0 ? KMS_PROPOSAL_TTL_DEFAULT : req->ttl_seconds;
	if (ttl > KMS_PROPOSAL_TTL_MAX) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "ttl_seconds %u is over the limit of %d (24 hours)", ttl,
			      KMS_PROPOSAL_TTL_MAX);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_root_operation_check(req->operation, err), out);
	KMS_TRY_GOTO(rc, quorum_now(node, cid, &threshold, err), out);
	KMS_TRY_GOTO(rc, propose_checks(node, req->operation, err), out);
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "no random bytes for a proposal id");
		goto out;
	}
	kms_hex_encode(rnd, sizeof(rnd), id);
	KMS_TRY_GOTO(rc, kms_quorum_digest(cid, sizeof(cid), id, now + ttl, req->operation, digest,
					   err),
		     out);
	p.id = id;
	p.proposer = (char *)principal;
	p.operation = req->operation;
	p.created_at_unix = now;
	p.expires_at_unix = now + ttl;
	p.digest.data = digest;
	p.digest.len = sizeof(digest);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_propose(&p, &cmd, err), out);
	KMS_TRY_GOTO(rc, decide_and_commit(node, principal, &cmd, err), out);
	KMS_LOG_I("quorum: '%s' proposed %s as %s; it needs %u approval(s) by %lld", principal,
		  kms_root_operation_name(req->operation), id, threshold, (long long)(now + ttl));
	rc = reply_proposal(node, id, &kms__v1__propose_operation_response__descriptor, out, err);
out:
	kms_buf_free(&cmd);
	kms__v1__propose_operation_request__free_unpacked(req, NULL);
	return rc;
}

static int op_approve(kms_node *node, const char *principal, const uint8_t *data, size_t len,
		      kms_buf *out, kms_err *err)
{
	Kms__V1__ApproveOperationRequest *req =
		kms__v1__approve_operation_request__unpack(NULL, len, data);
	kms_buf cmd = {0};
	int rc;

	if (req == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "malformed ApproveOperationRequest");
	KMS_TRY_GOTO(rc, kms_api_admin_check(node, principal, err), out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_approve(req->proposal_id, req->operator_name,
						 req->signature.data, req->signature.len,
						 (int64_t)time(NULL), &cmd, err),
		     out);
	rc = decide_and_commit(node, principal, &cmd, err);
	if (rc != KMS_OK) {
		KMS_LOG_W("quorum: approval of %s by operator '%s' (sent by '%s') refused: %s",
			  req->proposal_id, req->operator_name, principal, err->msg);
		goto out;
	}
	KMS_LOG_I("quorum: operator '%s' approved %s (sent by '%s')", req->operator_name,
		  req->proposal_id, principal);
	rc = reply_proposal(node, req->proposal_id, &kms__v1__approve_operation_response__descriptor,
			    out, err);
out:
	kms_buf_free(&cmd);
	kms__v1__approve_operation_request__free_unpacked(req, NULL);
	return rc;
}

static int op_cancel(kms_node *node, const char *principal, const uint8_t *data, size_t len,
		     kms_buf *out, kms_err *err)
{
	Kms__V1__CancelOperationRequest *req =
		kms__v1__cancel_operation_request__unpack(NULL, len, data);
	kms_buf cmd = {0};
	int rc;

	if (req == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "malformed CancelOperationRequest");
	KMS_TRY_GOTO(rc, kms_api_admin_check(node, principal, err), out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_cancel_proposal(req->proposal_id, principal,
							 (int64_t)time(NULL), &cmd, err),
		     out);
	KMS_TRY_GOTO(rc, decide_and_commit(node, principal, &cmd, err), out);
	KMS_LOG_I("quorum: '%s' cancelled proposal %s", principal, req->proposal_id);
	rc = reply_proposal(node, req->proposal_id, &kms__v1__cancel_operation_response__descriptor,
			    out, err);
out:
	kms_buf_free(&cmd);
	kms__v1__cancel_operation_request__free_unpacked(req, NULL);
	return rc;
}

static const kms_leader_op quorum_leader_ops[] = {
	{"/kms.v1.Operator/ProposeOperation", op_propose,
	 &kms__v1__propose_operation_request__descriptor},
	{"/kms.v1.Operator/ApproveOperation", op_approve,
	 &kms__v1__approve_operation_request__descriptor},
	{"/kms.v1.Operator/CancelOperation", op_cancel,
	 &kms__v1__cancel_operation_request__descriptor},
};

const kms_leader_op *kms_api_quorum_leader_op(const char *method)
{
	for (size_t i = 0; i < sizeof(quorum_leader_ops) / sizeof(quorum_leader_ops[0]); i++)
		if (method != NULL && strcmp(quorum_leader_ops[i].method, method) == 0)
			return &quorum_leader_ops[i];
	return NULL;
}

static void propose(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_api_run_on_leader(app, call, "/kms.v1.Operator/ProposeOperation", data, len);
}

/*
 * The audit record of an approval names the proposal and the operator, also
 * when it is refused: a refused approval is recorded nowhere else.
 */
static void approve(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__ApproveOperationRequest *req =
		kms__v1__approve_operation_request__unpack(NULL, len, data);

	if (req != NULL) {
		const char *who = req->operator_name;

		kms_call_audit_proposal(call, req->proposal_id, &who, who[0] != '\0' ? 1 : 0);
		kms__v1__approve_operation_request__free_unpacked(req, NULL);
	}
	kms_api_run_on_leader(app, call, "/kms.v1.Operator/ApproveOperation", data, len);
}

static void cancel(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__CancelOperationRequest *req =
		kms__v1__cancel_operation_request__unpack(NULL, len, data);

	if (req != NULL) {
		kms_call_audit_proposal(call, req->proposal_id, NULL, 0);
		kms__v1__cancel_operation_request__free_unpacked(req, NULL);
	}
	kms_api_run_on_leader(app, call, "/kms.v1.Operator/CancelOperation", data, len);
}

/* --- reads, from this node's state --- */

static void get_operation(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__GetOperationRequest *req = kms__v1__get_operation_request__unpack(NULL, len, data);
	kms_buf out = {0};
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed GetOperationRequest");
		return;
	}
	if (kms_api_admin_check(node, kms_call_principal(call), &err) == KMS_OK &&
	    reply_proposal(node, req->proposal_id, &kms__v1__get_operation_response__descriptor,
			   &out, &err) == KMS_OK)
		kms_call_reply_bytes(call, out.data, out.len);
	else
		kms_call_fail(call, err.code, err.msg);
	kms_buf_free(&out);
	kms__v1__get_operation_request__free_unpacked(req, NULL);
}

static void list_operations(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ListOperationsRequest *req =
		kms__v1__list_operations_request__unpack(NULL, len, data);
	Kms__V1__ListOperationsResponse resp = KMS__V1__LIST_OPERATIONS_RESPONSE__INIT;
	Kms__V1__ProposalRecord **ps = NULL;
	struct shown *sh = NULL;
	Kms__V1__Proposal **ptrs = NULL;
	uint8_t cid[KMS_CLUSTER_ID_LEN];
	uint32_t threshold;
	kms_err err = {0};
	size_t n = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ListOperationsRequest");
		return;
	}
	kms__v1__list_operations_request__free_unpacked(req, NULL);
	if (kms_api_admin_check(node, kms_call_principal(call), &err) != KMS_OK ||
	    quorum_now(node, cid, &threshold, &err) != KMS_OK ||
	    kms_keyring_proposals(node->kr, &ps, &n, &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	sh = kms_calloc(n > 0 ? n : 1, sizeof(*sh));
	ptrs = kms_calloc(n > 0 ? n : 1, sizeof(*ptrs));
	if (sh == NULL || ptrs == NULL) {
		kms_call_fail(call, KMS_ERR_NOMEM, "out of memory listing proposals");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		show(ps[i], cid, threshold, &sh[i]);
		ptrs[i] = &sh[i].msg;
	}
	resp.proposals = ptrs;
	resp.n_proposals = n;
	kms_call_reply(call, &resp.base, 0);
out:
	kms_free(sh);
	kms_free(ptrs);
	kms_keyring_proposals_free(ps, n);
}

static void get_quorum(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__GetQuorumRequest *req = kms__v1__get_quorum_request__unpack(NULL, len, data);
	Kms__V1__GetQuorumResponse resp = KMS__V1__GET_QUORUM_RESPONSE__INIT;
	Kms__V1__SetOperatorsOperation *ops = NULL;
	uint8_t cid[KMS_CLUSTER_ID_LEN];
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed GetQuorumRequest");
		return;
	}
	kms__v1__get_quorum_request__free_unpacked(req, NULL);
	if (kms_api_admin_check(node, kms_call_principal(call), &err) != KMS_OK ||
	    kms_keyring_quorum(node->kr, cid, &ops, &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	resp.cluster_id.data = cid;
	resp.cluster_id.len = sizeof(cid);
	resp.operators = ops->operators;
	resp.n_operators = ops->n_operators;
	resp.threshold = ops->threshold;
	kms_call_reply(call, &resp.base, 0);
	kms_keyring_operators_free(ops);
}

const kms_method kms_api_quorum_methods[] = {
	{"/kms.v1.Operator/ProposeOperation", propose, KMS_CALLERS_SERVICES,
	 &kms__v1__propose_operation_request__descriptor, 0},
	{"/kms.v1.Operator/ApproveOperation", approve, KMS_CALLERS_SERVICES,
	 &kms__v1__approve_operation_request__descriptor, 0},
	{"/kms.v1.Operator/GetOperation", get_operation, KMS_CALLERS_SERVICES,
	 &kms__v1__get_operation_request__descriptor, 0},
	{"/kms.v1.Operator/ListOperations", list_operations, KMS_CALLERS_SERVICES,
	 &kms__v1__list_operations_request__descriptor, 0},
	{"/kms.v1.Operator/CancelOperation", cancel, KMS_CALLERS_SERVICES,
	 &kms__v1__cancel_operation_request__descriptor, 0},
	{"/kms.v1.Operator/GetQuorum", get_quorum, KMS_CALLERS_SERVICES,
	 &kms__v1__get_quorum_request__descriptor, 0},
};
const size_t kms_api_quorum_n_methods =
	sizeof(kms_api_quorum_methods) / sizeof(kms_api_quorum_methods[0]);
