/* root_ops.h - the root operations the leader runs outside the replicated state, once a quorum approved them. */
#ifndef KMS_ROOT_OPS_H
#define KMS_ROOT_OPS_H

#include "kms/error.h"

struct kms_node;

/*
 * Rotates the cluster's domain key for the approved proposal proposal_id.
 * Runs on the leader, on the supervisor's thread, and may run again for the
 * same proposal on a new leader if the old one died before the result was
 * committed: it must finish or resume what an earlier run began, and
 * report the same outcome. KMS_OK when the rotation is complete; otherwise
 * a status and a sentence, which become the proposal's recorded result.
 */
int kms_root_rotate_domain_key(struct kms_node *node, const char *proposal_id, kms_err *err);

#endif
