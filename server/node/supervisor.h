/* supervisor.h - a node's background chores: fetch the domain key when joining, register the node and the domain-key probe when leading, check the token against the probe, and the leader's key upkeep (key_upkeep.h). */
#ifndef KMS_SUPERVISOR_H
#define KMS_SUPERVISOR_H

#include "kms/error.h"

struct kms_node;
struct kms_supervisor;

/* Starts the supervisor thread (every 200 ms). */
int kms_supervisor_start(struct kms_node *node, struct kms_supervisor **out, kms_err *err);
/* Stops and joins the thread; NULL is fine. */
void kms_supervisor_stop(struct kms_supervisor *s);
/* Frees it. Only after Raft has stopped: a bookkeeping write it queued is
 * answered (to the supervisor) until then. */
void kms_supervisor_free(struct kms_supervisor *s);

#endif
