/* quorum_exec.c - the leader's run of approved root operations outside the replicated state, and the commit of their results. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "node/node.h"
#include "node/quorum_exec.h"
#include "node/root_ops.h"

struct kms_quorum_exec {
	kms_node *node;
	atomic_int in_flight; /* a result submitted, not yet answered */
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

/* Runs one approved operation; its outcome (and a backup's file) is what the proposal records. */
static int run(kms_quorum_exec *q, const Kms__V1__ProposalRecord *p, kms_buf *file, kms_err *err)
{
	switch (p->operation->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY:
		return kms_root_rotate_domain_key(q->node, p->id, err);
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		return kms_root_backup_export(q->node, p, file, err);
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
	kms_buf cmd = {0}, file = {0};
	kms_err err = {0}, xerr = {0};
	int rc;

	if (atomic_load(&q->in_flight) || !kms_raft_ready(node->raft) ||
	    kms_keyring_approved_proposals(node->kr, ids, 1) == 0)
		return;
	if (kms_keyring_proposal(node->kr, ids[0], &p, &err) != KMS_OK)
		return;
	KMS_LOG_I("quorum: running approved proposal %s (%s)", p->id,
		  kms_root_operation_name(p->operation));
	rc = run(q, p, &file, &xerr);
	if (rc == KMS_OK)
		KMS_LOG_I("quorum: proposal %s executed", p->id);
	else
		KMS_LOG_W("quorum: proposal %s failed: %s", p->id, xerr.msg);
	/* The result is replicated with the proposal: every node shows it. */
	if (kms_keyring_cmd_proposal_result_file(p->id, rc, rc == KMS_OK ? "" : xerr.msg,
						 (int64_t)time(NULL), file.data, file.len, &cmd,
						 &err) != KMS_OK) {
		KMS_LOG_E("quorum: %s", err.msg);
		goto out;
	}
	atomic_store(&q->in_flight, 1);
	kms_raft_submit(node->raft, cmd.data, cmd.len, result_done, q);
out:
	kms_buf_free(&cmd);
	kms_buf_free(&file);
	kms_keyring_proposal_free(p);
}
