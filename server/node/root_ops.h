/* root_ops.h - the root operations the leader runs outside the replicated state, once a quorum approved them. */
#ifndef KMS_ROOT_OPS_H
#define KMS_ROOT_OPS_H

#include "kms/error.h"

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

#endif
