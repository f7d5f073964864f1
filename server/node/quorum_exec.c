/* quorum_exec.c - the leader's run of approved root operations outside the replicated state, and the commit of their results. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "node/backup_store.h"
#include "node/node.h"
#include "node/quorum_exec.h"
#include "node/root_ops.h"

struct kms_quorum_exec {
	kms_node *node;
	atomic_int in_flight; /* a result submitted, not yet answered */
	/* The last backup the state named when tidy looked (supervisor's thread). */
	uint8_t seen_id[KMS_BACKUP_ID_LEN];
	int seen;
};

int kms_quorum_exec_new(kms_node *node, kms_quorum_exec **out, kms_err *err)
{
	kms_quorum_exec *q = kms_calloc(1, sizeof(*q));

	if (q == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	q->node = node;
	*out = q;
	return KMS_OK;
}

void kms_quorum_exec_free(kms_quorum_exec *q)
{
	kms_free(q);
}

static void result_done(void *arg, int status, const char *msg, uint64_t index)
{
	kms_quorum_exec *q = arg;

	(void)index;
	if (status != KMS_OK)
		KMS_LOG_W("quorum: recording a root operation's result failed (it is tried "
			  "again while the proposal stays approved): %s",
			  msg != NULL ? msg : kms_strerror(status));
	atomic_store(&q->in_flight, 0);
}

/* Runs one approved operation; its outcome (and where a backup's file is) is what the proposal records. */
static int run(kms_quorum_exec *q, const Kms__V1__ProposalRecord *p, kms_backup_ref *ref,
	       kms_err *err)
{
	switch (p->operation->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY:
		return kms_root_rotate_domain_key(q->node, p->id, err);
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		return kms_root_backup_export(q->node, p, ref, err);
	default:
		/* State-only operations ran inside apply; nothing else is approved. */
		return kms_errf(err, KMS_ERR_INTERNAL, "%s is not run by the leader",
				kms_root_operation_name(p->operation));
	}
}

void kms_quorum_exec_pass(kms_quorum_exec *q)
{
	kms_node *node = q->node;
	char ids[1][KMS_PROPOSAL_ID_HEX + 1];
	Kms__V1__ProposalRecord *p = NULL;
	kms_backup_ref ref;
	kms_buf cmd = {0};
	kms_err err = {0}, xerr = {0};
	int rc;

	if (atomic_load(&q->in_flight) || !kms_raft_ready(node->raft) ||
	    kms_keyring_approved_proposals(node->kr, ids, 1) == 0)
		return;
	if (kms_keyring_proposal(node->kr, ids[0], &p, &err) != KMS_OK)
		return;
	memset(&ref, 0, sizeof(ref));
	KMS_LOG_I("quorum: running approved proposal %s (%s)", p->id,
		  kms_root_operation_name(p->operation));
	rc = run(q, p, &ref, &xerr);
	if (rc == KMS_OK)
		KMS_LOG_I("quorum: proposal %s executed", p->id);
	else
		KMS_LOG_W("quorum: proposal %s failed: %s", p->id, xerr.msg);
	/* The result is replicated with the proposal: every node shows it. */
	if (rc == KMS_OK && ref.holder_node_id != 0)
		rc = kms_keyring_cmd_proposal_result_backup(p->id, (int64_t)time(NULL), &ref, &cmd,
							    &err);
	else
		rc = kms_keyring_cmd_proposal_result(p->id, rc, rc == KMS_OK ? "" : xerr.msg,
						     (int64_t)time(NULL), &cmd, &err);
	if (rc != KMS_OK) {
		KMS_LOG_E("quorum: %s", err.msg);
		goto out;
	}
	atomic_store(&q->in_flight, 1);
	kms_raft_submit(node->raft, cmd.data, cmd.len, result_done, q);
out:
	kms_buf_free(&cmd);
	kms_keyring_proposal_free(p);
}

void kms_quorum_exec_tidy(kms_quorum_exec *q)
{
	kms_backup_ref ref;
	int n, first;

	if (!kms_keyring_last_backup_ref(q->node->kr, &ref) ||
	    (q->seen && memcmp(ref.backup_id, q->seen_id, KMS_BACKUP_ID_LEN) == 0))
		return;
	first = !q->seen;
	memcpy(q->seen_id, ref.backup_id, KMS_BACKUP_ID_LEN);
	q->seen = 1;
	/*
	 * Only when the state moves on to another backup while this node runs.
	 * The first backup it sees may be an older one (a restarted node
	 * replaying its log), and pruning for it would remove the newer file
	 * the state names a moment later; and a file made by a pass whose
	 * result is not applied yet is not the state's yet, and must stay. A
	 * file replaced while this node was down waits for the next backup.
	 */
	if (first)
		return;
	n = kms_backup_store_prune(q->node->cfg.data_dir, ref.backup_id);
	if (n > 0)
		KMS_LOG_I("backup: removed %d backup file%s a later backup replaced", n,
			  n == 1 ? "" : "s");
}
