/* keyring_quorum.c - the quorum part of the replicated state: operators, threshold, proposals and their approvals; state-only root operations run here, inside apply. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/quorum.h"

/* --- owned copies --- */

static int dup_ops(const Kms__V1__SetOperatorsOperation *src, Kms__V1__SetOperatorsOperation **out,
		   kms_err *err)
{
	return kr_message_dup(&src->base, (ProtobufCMessage **)out, err);
}

static int dup_proposal(const Kms__V1__ProposalRecord *src, Kms__V1__ProposalRecord **out,
			kms_err *err)
{
	return kr_message_dup(&src->base, (ProtobufCMessage **)out, err);
}

void kr_quorum_free(kms_keyring *kr)
{
	if (kr->operators != NULL)
		kr_pb_message_free(&kr->operators->base);
	for (size_t i = 0; i < kr->n_proposals; i++)
		kr_pb_message_free(&kr->proposals[i]->base);
	kms_free(kr->proposals);
	if (kr->last_backup != NULL)
		kr_pb_message_free(&kr->last_backup->base);
	kr_links_free(kr->links, kr->n_links);
	kr->operators = NULL;
	kr->proposals = NULL;
	kr->n_proposals = 0;
	kr->last_backup = NULL;
	kr->links = NULL;
	kr->n_links = 0;
}

/* Replaces a string field of a record with an owned copy of s, keeping the
 * old one when the copy fails. protobuf-c's empty default is static. */
static void set_string(char **field, const char *s)
{
	char *m = kms_strdup(s != NULL ? s : "");

	if (m == NULL)
		return;
	if (*field != NULL && *field != protobuf_c_empty_string)
		kms_free(*field);
	*field = m;
}

/* --- lookups (lock held) --- */

static size_t proposal_pos(const kms_keyring *kr, const char *id, int *found)
{
	size_t lo = 0, hi = kr->n_proposals;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(kr->proposals[mid]->id, id) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < kr->n_proposals && strcmp(kr->proposals[lo]->id, id) == 0;
	return lo;
}

static Kms__V1__ProposalRecord *proposal_find(const kms_keyring *kr, const char *id)
{
	int found;
	size_t pos = proposal_pos(kr, id, &found);

	return found ? kr->proposals[pos] : NULL;
}

static const Kms__V1__OperatorRecord *operator_find(const kms_keyring *kr, const char *name)
{
	if (kr->operators == NULL || name == NULL)
		return NULL;
	for (size_t i = 0; i < kr->operators->n_operators; i++)
		if (strcmp(kr->operators->operators[i]->name, name) == 0)
			return kr->operators->operators[i];
	return NULL;
}

static int quorum_ready(const kms_keyring *kr, kms_err *err)
{
	KMS_ENSURE(kr->has_quorum, err, KMS_ERR_PRECONDITION,
		   "the cluster has no operators: set [quorum] operators and threshold in the "
		   "first node's configuration (docs/OPERATIONS.md, \"Quorum\")");
	return KMS_OK;
}

const char *kms_proposal_state_name(const Kms__V1__ProposalRecord *p, int64_t now_unix)
{
	switch (p->state) {
	case KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING:
		return now_unix >= p->expires_at_unix ? "expired" : "pending";
	case KMS__V1__PROPOSAL_STATE__PROPOSAL_APPROVED:
		return "approved";
	case KMS__V1__PROPOSAL_STATE__PROPOSAL_EXECUTED:
		return "executed";
	case KMS__V1__PROPOSAL_STATE__PROPOSAL_FAILED:
		return "failed";
	case KMS__V1__PROPOSAL_STATE__PROPOSAL_CANCELLED:
		return "cancelled";
	default:
		return "unknown";
	}
}

/* Refuses anything but a pending, unexpired proposal, saying what it is. */
static int pending_check(const Kms__V1__ProposalRecord *p, int64_t now, kms_err *err)
{
	char when[32];

	if (p->state != KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING)
		return kms_errf(err, KMS_ERR_PRECONDITION, "proposal %s is %s already: it takes no "
				"more approvals", p->id, kms_proposal_state_name(p, now));
	if (now >= p->expires_at_unix) {
		kr_format_date(p->expires_at_unix, when);
		return kms_errf(err, KMS_ERR_PRECONDITION, "proposal %s expired at %s", p->id, when);
	}
	return KMS_OK;
}

/* --- QuorumInit --- */

int kr_apply_quorum_init(kms_keyring *kr, const Kms__V1__QuorumInitCommand *c, int dry,
			 kms_err *err)
{
	Kms__V1__SetOperatorsOperation set = KMS__V1__SET_OPERATORS_OPERATION__INIT;
	Kms__V1__SetOperatorsOperation *copy = NULL;
	char region[KMS_REGION_NAME_MAX + 1];
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL && c->cluster_id.len == KMS_CLUSTER_ID_LEN, err, KMS_ERR_INVALID,
		   "QuorumInit needs a %d-byte cluster id", KMS_CLUSTER_ID_LEN);
	KMS_TRY(kms_operator_set_check(c->operators, c->n_operators, c->threshold, err));
	KMS_TRY(kr_region_set(region, c->region, err));
	set.operators = c->operators;
	set.n_operators = c->n_operators;
	set.threshold = c->threshold;
	if (!dry)
		KMS_TRY(dup_ops(&set, &copy, err));
	kr_lock(kr, dry);
	if (kr->has_quorum) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "the cluster's operators are set already");
	} else if (!dry) {
		memcpy(kr->cluster_id, c->cluster_id.data, KMS_CLUSTER_ID_LEN);
		memcpy(kr->region, region, sizeof(region));
		kr->operators = copy;
		kr->has_quorum = 1;
		copy = NULL;
	}
	pthread_rwlock_unlock(&kr->lock);
	if (copy != NULL)
		kr_pb_message_free(&copy->base);
	return rc;
}

/* --- Propose --- */

/* A finished or expired proposal that may make room (the oldest first). */
static long evictable(const kms_keyring *kr, int64_t now)
{
	long best = -1;

	for (size_t i = 0; i < kr->n_proposals; i++) {
		const Kms__V1__ProposalRecord *p = kr->proposals[i];
		int done = p->state != KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING &&
			   p->state != KMS__V1__PROPOSAL_STATE__PROPOSAL_APPROVED;

		if (!done && !(p->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING &&
			       now >= p->expires_at_unix))
			continue;
		if (best < 0 || p->created_at_unix < kr->proposals[best]->created_at_unix)
			best = (long)i;
	}
	return best;
}

static int proposal_record_check(const Kms__V1__ProposalRecord *p, kms_err *err)
{
	KMS_ENSURE(p != NULL, err, KMS_ERR_INVALID, "Propose holds no proposal");
	KMS_TRY(kms_proposal_id_check(p->id, err));
	KMS_ENSURE(p->proposer != NULL && p->proposer[0] != '\0', err, KMS_ERR_INVALID,
		   "proposal %s names no proposer", p->id);
	KMS_TRY(kms_root_operation_check(p->operation, err));
	KMS_ENSURE(p->created_at_unix > 0 && p->expires_at_unix > p->created_at_unix &&
			   p->expires_at_unix - p->created_at_unix <= KMS_PROPOSAL_TTL_MAX,
		   err, KMS_ERR_INVALID, "proposal %s expires outside 1 s..%d s of its creation",
		   p->id, KMS_PROPOSAL_TTL_MAX);
	KMS_ENSURE(p->digest.len == KMS_QUORUM_DIGEST_LEN, err, KMS_ERR_INVALID,
		   "proposal %s has no digest", p->id);
	return KMS_OK;
}

int kr_apply_propose(kms_keyring *kr, const Kms__V1__ProposeCommand *c, int dry, kms_err *err)
{
	Kms__V1__ProposalRecord *copy = NULL, *dropped = NULL;
	uint8_t digest[KMS_QUORUM_DIGEST_LEN];
	size_t pos;
	int found, rc;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "Propose holds no proposal");
	KMS_TRY(proposal_record_check(c->proposal, err));
	KMS_ENSURE(c->proposal->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING &&
			   c->proposal->n_approvals == 0,
		   err, KMS_ERR_INVALID, "a new proposal is pending and has no approvals");
	if (!dry)
		KMS_TRY(dup_proposal(c->proposal, &copy, err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, quorum_ready(kr, err), out);
	KMS_TRY_GOTO(rc,
		     kms_quorum_digest(kr->cluster_id, KMS_CLUSTER_ID_LEN, c->proposal->id,
				       c->proposal->expires_at_unix, c->proposal->operation, digest,
				       err),
		     out);
	if (CRYPTO_memcmp(digest, c->proposal->digest.data, sizeof(digest)) != 0) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "proposal %s carries a digest that is not its canonical encoding's",
			      c->proposal->id);
		goto out;
	}
	pos = proposal_pos(kr, c->proposal->id, &found);
	if (found) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "proposal %s exists already", c->proposal->id);
		goto out;
	}
	if (kr->n_proposals >= KMS_PROPOSALS_MAX) {
		long victim = evictable(kr, c->proposal->created_at_unix);

		if (victim < 0) {
			rc = kms_errf(err, KMS_ERR_LIMIT,
				      "%d proposals are pending: cancel some or let them expire",
				      KMS_PROPOSALS_MAX);
			goto out;
		}
		if (dry)
			goto out;
		dropped = kr->proposals[victim];
		memmove(&kr->proposals[victim], &kr->proposals[victim + 1],
			(kr->n_proposals - (size_t)victim - 1) * sizeof(*kr->proposals));
		kr->n_proposals--;
		pos = proposal_pos(kr, c->proposal->id, &found);
	}
	if (dry)
		goto out;
	if (kr->n_proposals == kr->cap_proposals) {
		size_t cap = kr->cap_proposals ? kr->cap_proposals * 2 : 16;
		Kms__V1__ProposalRecord **grown =
			kms_realloc(kr->proposals, cap * sizeof(*grown));

		if (grown == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory adding a proposal");
			goto out;
		}
		kr->proposals = grown;
		kr->cap_proposals = cap;
	}
	memmove(&kr->proposals[pos + 1], &kr->proposals[pos],
		(kr->n_proposals - pos) * sizeof(*kr->proposals));
	kr->proposals[pos] = copy;
	kr->n_proposals++;
	copy = NULL;
out:
	pthread_rwlock_unlock(&kr->lock);
	if (copy != NULL)
		kr_pb_message_free(&copy->base);
	if (dropped != NULL)
		kr_pb_message_free(&dropped->base);
	return rc;
}

/* --- executing the state-only operations --- */

/* Sets the new operators; the approvals other pending proposals hold were
 * given under the old set, so they are void. */
static int exec_set_operators(kms_keyring *kr, const Kms__V1__SetOperatorsOperation *op,
			      const char *self_id, kms_err *err)
{
	Kms__V1__SetOperatorsOperation *copy = NULL;

	KMS_TRY(kms_operator_set_check(op->operators, op->n_operators, op->threshold, err));
	KMS_TRY(dup_ops(op, &copy, err));
	pthread_rwlock_wrlock(&kr->lock);
	if (kr->operators != NULL)
		kr_pb_message_free(&kr->operators->base);
	kr->operators = copy;
	for (size_t i = 0; i < kr->n_proposals; i++) {
		Kms__V1__ProposalRecord *p = kr->proposals[i];

		if (p->state != KMS__V1__PROPOSAL_STATE__PROPOSAL_PENDING ||
		    strcmp(p->id, self_id) == 0)
			continue;
		for (size_t j = 0; j < p->n_approvals; j++)
			kr_pb_message_free(&p->approvals[j]->base);
		p->n_approvals = 0;
	}
	pthread_rwlock_unlock(&kr->lock);
	return KMS_OK;
}

static int exec_cancel_proposal(kms_keyring *kr, const char *id, int64_t now, kms_err *err)
{
	Kms__V1__ProposalRecord *p;
	int rc;

	pthread_rwlock_wrlock(&kr->lock);
	p = proposal_find(kr, id);
	if (p == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "proposal %s not found", id);
	} else if ((rc = pending_check(p, now, err)) == KMS_OK) {
		p->state = KMS__V1__PROPOSAL_STATE__PROPOSAL_CANCELLED;
		p->finished_at_unix = now;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

static int exec_remove_member(kms_keyring *kr, uint64_t id, kms_err *err)
{
	Kms__V1__RemoveMemberCommand rm = KMS__V1__REMOVE_MEMBER_COMMAND__INIT;

	/* The guard the direct call had, decided on the state: deterministic. */
	if (kms_keyring_members(kr, NULL, 0) <= 1)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"node %llu is the only member; a cluster cannot remove its last "
				"node",
				(unsigned long long)id);
	rm.id = id;
	return kr_apply_remove_member(kr, &rm, err);
}

static int exec_add_member(kms_keyring *kr, const Kms__V1__AddMemberOperation *op, int64_t now,
			   kms_err *err)
{
	Kms__V1__JoinGrant g = KMS__V1__JOIN_GRANT__INIT;
	Kms__V1__MemberRecord m = KMS__V1__MEMBER_RECORD__INIT;
	Kms__V1__AddMemberCommand am = KMS__V1__ADD_MEMBER_COMMAND__INIT;

	g.transport_key_sha256 = op->transport_key_sha256;
	/* The grant runs from the execution, not from the proposal. */
	g.expires_at_unix = now + op->grant_ttl_seconds;
	m.id = op->id;
	m.raft_address = op->raft_address;
	m.grpc_address = op->grpc_address;
	m.join_grant = &g;
	am.member = &m;
	return kr_apply_add_member(kr, &am, err);
}

/* Runs op on the state (no lock held: each part locks itself). */
static int execute(kms_keyring *kr, const char *self_id, const Kms__V1__RootOperation *op,
		   int64_t now, kms_err *err)
{
	switch (op->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS:
		return exec_set_operators(kr, op->set_operators, self_id, err);
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS: {
		Kms__V1__SetAdministratorsCommand sa = KMS__V1__SET_ADMINISTRATORS_COMMAND__INIT;

		sa.administrators = op->set_administrators->administrators;
		sa.n_administrators = op->set_administrators->n_administrators;
		return kr_apply_set_administrators(kr, &sa, err);
	}
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER:
		return exec_add_member(kr, op->add_member, now, err);
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		return exec_remove_member(kr, op->remove_member->id, err);
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		return kr_destroy_key_now(kr, op->destroy_key->key_id, now, err);
	case KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL:
		if (strcmp(op->cancel_proposal->proposal_id, self_id) == 0)
			return kms_errf(err, KMS_ERR_INVALID, "a proposal cannot cancel itself");
		return exec_cancel_proposal(kr, op->cancel_proposal->proposal_id, now, err);
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		return kr_exec_link_region(kr, op->link_region, self_id, now, err);
	case KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION:
		return kr_exec_promote_region(kr, op->promote_region->peer_region, err);
	case KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION:
		return kr_exec_unlink_region(kr, op->unlink_region->peer_region, err);
	default:
		return kms_errf(err, KMS_ERR_INTERNAL, "%s does not run inside the state",
				kms_root_operation_name(op));
	}
}

/* Records the outcome in proposal id (the Raft thread: it is still there). */
static void record_result(kms_keyring *kr, const char *id, int status, const char *msg,
			  int64_t now)
{
	Kms__V1__ProposalRecord *p;

	pthread_rwlock_wrlock(&kr->lock);
	p = proposal_find(kr, id);
	if (p != NULL) {
		p->state = status == KMS_OK ? KMS__V1__PROPOSAL_STATE__PROPOSAL_EXECUTED
					    : KMS__V1__PROPOSAL_STATE__PROPOSAL_FAILED;
		p->result_status = (uint32_t)status;
		p->finished_at_unix = now;
		/* An allocation failure keeps the status; the sentence is lost. */
		set_string(&p->result_message, msg);
	}
	pthread_rwlock_unlock(&kr->lock);
}

/* --- Approve --- */

int kr_apply_approve(kms_keyring *kr, const Kms__V1__ApproveCommand *c, int dry, kms_err *err)
{
	Kms__V1__ProposalRecord *p;
	Kms__V1__RootOperation *op = NULL;
	const Kms__V1__OperatorRecord *o;
	Kms__V1__Approval *a = NULL, **grown;
	char q[KMS_QUOTE_MAX + 4], id[KMS_PROPOSAL_ID_HEX + 1];
	int rc, reached = 0;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "Approve is empty");
	KMS_TRY(kms_proposal_id_check(c->proposal_id, err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, quorum_ready(kr, err), out);
	p = proposal_find(kr, c->proposal_id);
	if (p == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "proposal %s not found", c->proposal_id);
		goto out;
	}
	KMS_TRY_GOTO(rc, pending_check(p, c->now_unix, err), out);
	o = operator_find(kr, c->operator_name);
	if (o == NULL) {
		rc = kms_errf(err, KMS_ERR_PERMISSION, "'%s' is not one of the cluster's operators",
			      kms_quote(c->operator_name != NULL ? c->operator_name : "", q));
		goto out;
	}
	for (size_t i = 0; i < p->n_approvals; i++)
		if (strcmp(p->approvals[i]->operator_name, o->name) == 0) {
			rc = kms_errf(err, KMS_ERR_PRECONDITION,
				      "operator '%s' approved proposal %s already: an operator "
				      "counts once",
				      o->name, p->id);
			goto out;
		}
	/* The stored digest was checked against the canonical encoding at
	 * Propose, with this cluster's id: a signature over another proposal
	 * or another cluster's fails here. */
	rc = kms_ed25519_verify(o->public_key.data, p->digest.data, c->signature.data,
				c->signature.len, err);
	if (rc != KMS_OK) {
		kms_errf(err, KMS_ERR_PERMISSION,
			 "operator '%s''s signature does not verify over the digest of proposal "
			 "%s (a signature over another proposal, another cluster's, or with "
			 "another key)",
			 o->name, p->id);
		goto out;
	}
	if (dry)
		goto out;
	a = kms_calloc(1, sizeof(*a));
	grown = kms_realloc(p->approvals, (p->n_approvals + 1) * sizeof(*grown));
	if (grown != NULL)
		p->approvals = grown;
	if (a == NULL || grown == NULL) {
		kms_free(a);
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory recording an approval");
		goto out;
	}
	kms__v1__approval__init(a);
	a->operator_name = kms_strdup(o->name);
	a->signature.data = kms_malloc(c->signature.len);
	if (a->operator_name == NULL || a->signature.data == NULL) {
		kr_pb_message_free(&a->base);
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory recording an approval");
		goto out;
	}
	memcpy(a->signature.data, c->signature.data, c->signature.len);
	a->signature.len = c->signature.len;
	a->approved_at_unix = c->now_unix;
	p->approvals[p->n_approvals++] = a;
	if (p->n_approvals >= kr->operators->threshold) {
		reached = 1;
		snprintf(id, sizeof(id), "%s", p->id);
		if (!kms_root_operation_in_state(p->operation)) {
			/* The leader runs it and records the result. */
			p->state = KMS__V1__PROPOSAL_STATE__PROPOSAL_APPROVED;
			reached = 0;
		} else if ((rc = kr_message_dup(&p->operation->base, (ProtobufCMessage **)&op,
						err)) != KMS_OK) {
			/* Nothing ran: undo the approval, so that a retry can
			 * reach the threshold again. */
			kr_pb_message_free(&p->approvals[--p->n_approvals]->base);
			reached = 0;
		}
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	if (reached) {
		kms_err xerr = {0};
		int xrc = execute(kr, id, op, c->now_unix, &xerr);

		record_result(kr, id, xrc, xrc == KMS_OK ? "" : xerr.msg, c->now_unix);
	}
	if (op != NULL)
		kr_pb_message_free(&op->base);
	return rc;
}

/* --- Cancel (by the proposer) and the leader's results --- */

int kr_apply_cancel_proposal(kms_keyring *kr, const Kms__V1__CancelProposalCommand *c, int dry,
			     kms_err *err)
{
	Kms__V1__ProposalRecord *p;
	char q[KMS_QUOTE_MAX + 4];
	int rc;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "CancelProposal is empty");
	KMS_TRY(kms_proposal_id_check(c->proposal_id, err));
	kr_lock(kr, dry);
	p = proposal_find(kr, c->proposal_id);
	if (p == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "proposal %s not found", c->proposal_id);
		goto out;
	}
	if (c->principal == NULL || strcmp(c->principal, p->proposer) != 0) {
		rc = kms_errf(err, KMS_ERR_PERMISSION,
			      "principal '%s' did not propose %s: only its proposer cancels it, or "
			      "M operators with a cancel-proposal proposal",
			      kms_quote(c->principal != NULL ? c->principal : "", q), p->id);
		goto out;
	}
	KMS_TRY_GOTO(rc, pending_check(p, c->now_unix, err), out);
	if (!dry) {
		p->state = KMS__V1__PROPOSAL_STATE__PROPOSAL_CANCELLED;
		p->finished_at_unix = c->now_unix;
		set_string(&p->cancelled_by, c->principal);
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* An executed backup-export replaces the last one (Raft thread). */
static int keep_backup(kms_keyring *kr, const Kms__V1__ProposalResultCommand *c)
{
	Kms__V1__BackupRecord rec = KMS__V1__BACKUP_RECORD__INIT, *copy = NULL, *old;
	kms_err err = {0};

	rec.proposal_id = c->proposal_id;
	rec.file = c->backup_file;
	rec.created_at_unix = c->now_unix;
	rec.ref = c->backup_ref;
	/* Every node decides alike, but out of memory here is this node's alone. */
	if (kr_message_dup(&rec.base, (ProtobufCMessage **)&copy, &err) != KMS_OK)
		return KMS_ERR_NOMEM;
	pthread_rwlock_wrlock(&kr->lock);
	old = kr->last_backup;
	kr->last_backup = copy;
	pthread_rwlock_unlock(&kr->lock);
	if (old != NULL)
		kr_pb_message_free(&old->base);
	return KMS_OK;
}

static void ref_out(const Kms__V1__BackupFileRef *r, kms_backup_ref *out)
{
	memcpy(out->backup_id, r->backup_id.data, KMS_BACKUP_ID_LEN);
	out->size = r->size;
	memcpy(out->sha256, r->sha256.data, sizeof(out->sha256));
	out->holder_node_id = r->holder_node_id;
}

int kms_keyring_backup_find(kms_keyring *kr, const char *proposal_id, kms_backup_ref *ref,
			    kms_buf *inline_file, kms_err *err)
{
	const Kms__V1__BackupRecord *b;
	int rc = KMS_OK;

	memset(ref, 0, sizeof(*ref));
	inline_file->data = NULL;
	inline_file->len = 0;
	KMS_TRY(kms_proposal_id_check(proposal_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	b = kr->last_backup;
	if (b == NULL || strcmp(b->proposal_id, proposal_id) != 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND,
			      "no backup file for proposal %s: it is not an executed backup-export, "
			      "or a later backup replaced it (the cluster keeps the last one)",
			      proposal_id);
		goto out;
	}
	if (b->ref != NULL) {
		ref_out(b->ref, ref);
		goto out;
	}
	inline_file->data = kms_malloc(b->file.len > 0 ? b->file.len : 1);
	if (inline_file->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory copying the backup file");
		goto out;
	}
	memcpy(inline_file->data, b->file.data, b->file.len);
	inline_file->len = b->file.len;
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_last_backup_ref(kms_keyring *kr, kms_backup_ref *ref)
{
	int yes;

	pthread_rwlock_rdlock(&kr->lock);
	yes = kr->last_backup != NULL && kr->last_backup->ref != NULL;
	if (yes)
		ref_out(kr->last_backup->ref, ref);
	pthread_rwlock_unlock(&kr->lock);
	return yes;
}

/* A ref's shape: the id and digest sizes, a size a file can have, a maker. */
static int ref_check(const Kms__V1__BackupFileRef *r, kms_err *err)
{
	KMS_ENSURE(r->backup_id.len == KMS_BACKUP_ID_LEN, err, KMS_ERR_INVALID,
		   "a backup's id is %d bytes, not %zu", KMS_BACKUP_ID_LEN, r->backup_id.len);
	KMS_ENSURE(r->sha256.len == 32, err, KMS_ERR_INVALID,
		   "a backup file's SHA-256 is 32 bytes, not %zu", r->sha256.len);
	KMS_ENSURE(r->size > 0 && r->size <= KMS_BACKUP_FILE_MAX, err, KMS_ERR_INVALID,
		   "a backup file of %llu bytes is not in 1..%u", (unsigned long long)r->size,
		   KMS_BACKUP_FILE_MAX);
	KMS_ENSURE(r->holder_node_id != 0, err, KMS_ERR_INVALID,
		   "a backup file's ref names no node that holds it");
	return KMS_OK;
}

int kr_apply_proposal_result(kms_keyring *kr, const Kms__V1__ProposalResultCommand *c, int dry,
			     kms_err *err)
{
	Kms__V1__ProposalRecord *p;
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "ProposalResult is empty");
	KMS_TRY(kms_proposal_id_check(c->proposal_id, err));
	KMS_ENSURE(c->status < KMS_STATUS_COUNT, err, KMS_ERR_INVALID,
		   "ProposalResult status %u is unknown", c->status);
	KMS_ENSURE(c->backup_ref == NULL || c->backup_file.len == 0, err, KMS_ERR_INVALID,
		   "a ProposalResult names a backup file or holds one, not both");
	if (c->backup_ref != NULL)
		KMS_TRY(ref_check(c->backup_ref, err));
	pthread_rwlock_rdlock(&kr->lock);
	p = proposal_find(kr, c->proposal_id);
	if (p == NULL)
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "proposal %s not found", c->proposal_id);
	else if (p->state != KMS__V1__PROPOSAL_STATE__PROPOSAL_APPROVED)
		/* Exactly once: a result for a proposal that has one is refused. */
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "proposal %s is %s, not awaiting a result",
			      p->id, kms_proposal_state_name(p, c->now_unix));
	else if ((c->backup_file.len > 0 || c->backup_ref != NULL) &&
		 (c->status != KMS_OK ||
		  p->operation->op_case != KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT))
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "a backup file comes only with the success of a backup-export");
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK || dry)
		return rc;
	if (c->backup_file.len > 0 || c->backup_ref != NULL)
		KMS_TRY(keep_backup(kr, c));
	record_result(kr, c->proposal_id, (int)c->status, c->message, c->now_unix);
	return KMS_OK;
}

/* --- reads --- */

int kms_keyring_command_approval(const uint8_t *cmd, size_t len,
				 char out[KMS_PROPOSAL_ID_HEX + 1])
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c = kms__v1__command__unpack(&a, len, cmd);
	int yes = c != NULL && c->cmd_case == KMS__V1__COMMAND__CMD_APPROVE &&
		  kms_proposal_id_check(c->approve->proposal_id, NULL) == KMS_OK;

	if (yes)
		memcpy(out, c->approve->proposal_id, KMS_PROPOSAL_ID_HEX + 1);
	if (c != NULL)
		kr_pb_message_free(&c->base);
	return yes;
}

int kms_keyring_executed_destroy(kms_keyring *kr, const char *proposal_id,
				 char key_id[KMS_KEY_ID_MAX + 1])
{
	const Kms__V1__ProposalRecord *p;
	int yes;

	pthread_rwlock_rdlock(&kr->lock);
	p = proposal_find(kr, proposal_id);
	yes = p != NULL && p->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_EXECUTED &&
	      p->operation != NULL &&
	      p->operation->op_case == KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY &&
	      strlen(p->operation->destroy_key->key_id) <= KMS_KEY_ID_MAX;
	if (yes)
		memcpy(key_id, p->operation->destroy_key->key_id,
		       strlen(p->operation->destroy_key->key_id) + 1);
	pthread_rwlock_unlock(&kr->lock);
	return yes;
}

int kms_keyring_has_quorum(kms_keyring *kr)
{
	int yes;

	pthread_rwlock_rdlock(&kr->lock);
	yes = kr->has_quorum;
	pthread_rwlock_unlock(&kr->lock);
	return yes;
}

int kms_keyring_quorum(kms_keyring *kr, uint8_t cluster_id[KMS_CLUSTER_ID_LEN],
		       Kms__V1__SetOperatorsOperation **ops, kms_err *err)
{
	int rc;

	*ops = NULL;
	pthread_rwlock_rdlock(&kr->lock);
	rc = quorum_ready(kr, err);
	if (rc == KMS_OK) {
		memcpy(cluster_id, kr->cluster_id, KMS_CLUSTER_ID_LEN);
		rc = dup_ops(kr->operators, ops, err);
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_proposal(kms_keyring *kr, const char *id, Kms__V1__ProposalRecord **out,
			 kms_err *err)
{
	Kms__V1__ProposalRecord *p;
	int rc;

	*out = NULL;
	KMS_TRY(kms_proposal_id_check(id, err));
	pthread_rwlock_rdlock(&kr->lock);
	p = proposal_find(kr, id);
	rc = p == NULL ? kms_errf(err, KMS_ERR_NOT_FOUND, "proposal %s not found", id)
		       : dup_proposal(p, out, err);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_proposals(kms_keyring *kr, Kms__V1__ProposalRecord ***out, size_t *n,
			  kms_err *err)
{
	int rc = KMS_OK;
	size_t i;

	*out = NULL;
	*n = 0;
	pthread_rwlock_rdlock(&kr->lock);
	*out = kms_calloc(kr->n_proposals > 0 ? kr->n_proposals : 1, sizeof(**out));
	if (*out == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory listing proposals");
		goto out;
	}
	for (i = 0; i < kr->n_proposals; i++) {
		if ((rc = dup_proposal(kr->proposals[i], &(*out)[i], err)) != KMS_OK)
			break;
	}
	*n = i;
out:
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK) {
		kms_keyring_proposals_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

void kms_keyring_proposal_free(Kms__V1__ProposalRecord *p)
{
	if (p != NULL)
		kr_pb_message_free(&p->base);
}

void kms_keyring_proposals_free(Kms__V1__ProposalRecord **ps, size_t n)
{
	if (ps == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		kms_keyring_proposal_free(ps[i]);
	kms_free(ps);
}

void kms_keyring_operators_free(Kms__V1__SetOperatorsOperation *ops)
{
	if (ops != NULL)
		kr_pb_message_free(&ops->base);
}

size_t kms_keyring_approved_proposals(kms_keyring *kr, char (*ids)[KMS_PROPOSAL_ID_HEX + 1],
				      size_t max)
{
	size_t n = 0;

	pthread_rwlock_rdlock(&kr->lock);
	for (size_t i = 0; i < kr->n_proposals && n < max; i++)
		if (kr->proposals[i]->state == KMS__V1__PROPOSAL_STATE__PROPOSAL_APPROVED)
			snprintf(ids[n++], KMS_PROPOSAL_ID_HEX + 1, "%s", kr->proposals[i]->id);
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/* --- snapshot and restore --- */

void kr_quorum_snapshot(kms_keyring *kr, Kms__V1__KeyRingSnapshot *snap)
{
	if (!kr->has_quorum)
		return;
	snap->cluster_id.data = kr->cluster_id;
	snap->cluster_id.len = KMS_CLUSTER_ID_LEN;
	snap->operators = kr->operators->operators;
	snap->n_operators = kr->operators->n_operators;
	snap->threshold = kr->operators->threshold;
	snap->proposals = kr->proposals;
	snap->n_proposals = kr->n_proposals;
	snap->last_backup = kr->last_backup;
	snap->region = kr->region;
	snap->region_links = kr->links;
	snap->n_region_links = kr->n_links;
	snap->region_rev = kr->region_rev;
}

int kr_quorum_build(const Kms__V1__KeyRingSnapshot *s, struct kr_quorum *out, kms_err *err)
{
	Kms__V1__SetOperatorsOperation set = KMS__V1__SET_OPERATORS_OPERATION__INIT;
	size_t i;

	memset(out, 0, sizeof(*out));
	if (s->cluster_id.len == 0) {
		KMS_ENSURE(s->n_operators == 0 && s->n_proposals == 0, err, KMS_ERR_INVALID,
			   "snapshot holds operators or proposals without a cluster id");
		return KMS_OK;
	}
	KMS_ENSURE(s->cluster_id.len == KMS_CLUSTER_ID_LEN, err, KMS_ERR_INVALID,
		   "snapshot cluster id is %zu bytes", s->cluster_id.len);
	KMS_TRY(kms_operator_set_check(s->operators, s->n_operators, s->threshold, err));
	KMS_ENSURE(s->n_proposals <= KMS_PROPOSALS_MAX, err, KMS_ERR_INVALID,
		   "snapshot holds %zu proposals", s->n_proposals);
	for (i = 0; i < s->n_proposals; i++) {
		KMS_TRY(proposal_record_check(s->proposals[i], err));
		KMS_ENSURE(i == 0 || strcmp(s->proposals[i - 1]->id, s->proposals[i]->id) < 0,
			   err, KMS_ERR_INVALID, "snapshot proposals are out of order or repeated");
	}
	set.operators = s->operators;
	set.n_operators = s->n_operators;
	set.threshold = s->threshold;
	KMS_TRY(dup_ops(&set, &out->operators, err));
	out->proposals = kms_calloc(s->n_proposals > 0 ? s->n_proposals : 1,
				    sizeof(*out->proposals));
	if (out->proposals == NULL) {
		kr_quorum_build_free(out);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring proposals");
	}
	for (i = 0; i < s->n_proposals; i++) {
		int rc = dup_proposal(s->proposals[i], &out->proposals[i], err);

		if (rc != KMS_OK) {
			out->n_proposals = i;
			kr_quorum_build_free(out);
			return rc;
		}
	}
	out->n_proposals = s->n_proposals;
	if (s->last_backup != NULL) {
		int rc = kr_message_dup(&s->last_backup->base, (ProtobufCMessage **)&out->last_backup,
					err);

		if (rc != KMS_OK) {
			kr_quorum_build_free(out);
			return rc;
		}
	}
	if (kr_region_set(out->region, s->region, err) != KMS_OK ||
	    kr_links_build(s, out, err) != KMS_OK) {
		kr_quorum_build_free(out);
		return err != NULL ? err->code : KMS_ERR_INVALID;
	}
	memcpy(out->cluster_id, s->cluster_id.data, KMS_CLUSTER_ID_LEN);
	out->has_quorum = 1;
	return KMS_OK;
}

void kr_quorum_build_free(struct kr_quorum *q)
{
	if (q->operators != NULL)
		kr_pb_message_free(&q->operators->base);
	for (size_t i = 0; i < q->n_proposals; i++)
		kr_pb_message_free(&q->proposals[i]->base);
	kms_free(q->proposals);
	if (q->last_backup != NULL)
		kr_pb_message_free(&q->last_backup->base);
	kr_links_free(q->links, q->n_links);
	memset(q, 0, sizeof(*q));
}

void kr_quorum_swap(kms_keyring *kr, struct kr_quorum *q)
{
	struct kr_quorum old;

	memcpy(old.cluster_id, kr->cluster_id, KMS_CLUSTER_ID_LEN);
	old.has_quorum = kr->has_quorum;
	old.operators = kr->operators;
	old.proposals = kr->proposals;
	old.n_proposals = kr->n_proposals;
	old.last_backup = kr->last_backup;
	memcpy(old.region, kr->region, sizeof(old.region));
	old.links = kr->links;
	old.n_links = kr->n_links;
	old.region_rev = kr->region_rev;
	kr->last_backup = q->last_backup;
	memcpy(kr->region, q->region, sizeof(kr->region));
	kr->links = q->links;
	kr->n_links = q->n_links;
	kr->region_rev = q->region_rev;
	memcpy(kr->cluster_id, q->cluster_id, KMS_CLUSTER_ID_LEN);
	kr->has_quorum = q->has_quorum;
	kr->operators = q->operators;
	kr->proposals = q->proposals;
	kr->n_proposals = kr->cap_proposals = q->n_proposals;
	*q = old;
}
