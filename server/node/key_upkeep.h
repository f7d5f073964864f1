/* key_upkeep.h - the leader's upkeep of the keys: the rotations that have come due, proposed through Raft, and a reminder of the keys whose deletion window has ended. */
#ifndef KMS_NODE_KEY_UPKEEP_H
#define KMS_NODE_KEY_UPKEEP_H

#include <stdint.h>

#include "kms/error.h"

struct kms_node;
typedef struct kms_key_upkeep kms_key_upkeep;

/*
 * A key is rotated when its rotation period has elapsed, or when its
 * primary version has reserved KMS_UPKEEP_HIGH_WATER_PERMILLE thousandths
 * of its maximum of encryptions (so that the next version is the primary
 * before the nodes' allowances run out), or is exhausted. At most
 * KMS_UPKEEP_MAX_PER_PASS per pass; a pass proposes nothing while the
 * previous one's proposals are unanswered, and a proposal that fails is
 * made again at the next pass. Each rotation is logged with its reason
 * (never key material). A key whose deletion window has ended is not
 * destroyed here: destruction is a root operation (a destroy-key proposal
 * M operators approve); the pass logs the keys that wait for one.
 */
#define KMS_UPKEEP_HIGH_WATER_PERMILLE 900
#define KMS_UPKEEP_MAX_PER_PASS 16

int kms_key_upkeep_new(struct kms_node *node, kms_key_upkeep **out, kms_err *err);

/*
 * One pass at now_unix, on the calling thread (the supervisor's), which
 * gets an HSM session of its own for the rotations. Does nothing unless
 * this node is the ready leader. Proposals are answered on the Raft
 * thread.
 */
void kms_key_upkeep_pass(kms_key_upkeep *u, int64_t now_unix);

/* Frees it. Only after Raft has stopped: until then a proposal of a pass
 * may still be answered. NULL is fine. */
void kms_key_upkeep_free(kms_key_upkeep *u);

#endif
