/* root_ops.h - the root operations the leader runs outside the replicated state, once a quorum approved them. */
#ifndef KMS_ROOT_OPS_H
#define KMS_ROOT_OPS_H

#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/v1/state.pb-c.h"

struct kms_node;

/*
 * Begins the rotation of the cluster's domain key for the approved
 * proposal proposal_id (server/node/dk_rotation.c carries it through on
 * every node). Runs on the leader, on the supervisor's thread, and may run
 * again for the same proposal on a new leader if the old one died before
 * the result was committed: the state names the proposal that began the
 * last rotation, so it is begun once. KMS_OK once the rotation is begun;
 * otherwise a status and a sentence, which become the proposal's result.
 */
int kms_root_rotate_domain_key(struct kms_node *node, const char *proposal_id, kms_err *err);

/*
 * Makes the backup of the approved backup-export proposal p: the key ring
 * as it is now (material wrapped under the domain key), the domain key
 * wrapped under a backup key made for it in this node's HSM and destroyed
 * there again, that key's shares sealed to p's custodians
 * (docs/FORMAT.md "Backup files"). The file goes to this node's data
 * directory (node/backup_store.h), durably, and *ref, which says where it
 * is, becomes the proposal's result: recorded once, it replaces the last
 * backup. A new leader that runs p again makes another backup (a new id,
 * a new key); only the one Raft records is served, and the others are
 * removed. Refused while a domain-key rotation is in progress.
 */
int kms_root_backup_export(struct kms_node *node, const Kms__V1__ProposalRecord *p,
			   kms_backup_ref *ref, kms_err *err);

#endif
