/* quorum_exec.h - the leader's run of approved root operations that live outside the replicated state, each result committed exactly once. */
#ifndef KMS_QUORUM_EXEC_H
#define KMS_QUORUM_EXEC_H

#include "kms/error.h"

struct kms_node;
typedef struct kms_quorum_exec kms_quorum_exec;

int kms_quorum_exec_new(struct kms_node *node, kms_quorum_exec **out, kms_err *err);
/* The owner stops calling pass and lets a submitted result finish first
 * (Raft answers every submit before kms_raft_stop returns). */
void kms_quorum_exec_free(kms_quorum_exec *q);

/*
 * On the leader (the supervisor's thread): runs the first proposal the
 * state shows approved (M approvals in, no result yet) and commits its
 * result (ProposalResult). One at a time; a result Raft refuses (another
 * leader recorded it first) changes nothing. A new leader finds the
 * proposal still approved and runs it again, so each operation must be
 * resumable (node/root_ops.h).
 */
void kms_quorum_exec_pass(kms_quorum_exec *q);

/*
 * On every node (the supervisor's thread): when the state moves on to a
 * new backup while this node runs, removes the backup files this node made
 * before it (node/backup_store.h): the cluster serves only the last one.
 */
void kms_quorum_exec_tidy(kms_quorum_exec *q);

#endif
