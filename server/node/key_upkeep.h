/* key_upkeep.h - the leader's upkeep of the keys: the rotations and the destructions that have come due, proposed through Raft. */
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
 * before the nodes' allowances run out), or is exhausted. A key pending
 * deletion is destroyed once its date has come and
 * kms_keyring_destroy_allowed agrees (where the quorum approval of issue
 * #6 goes). At most KMS_UPKEEP_MAX_PER_PASS of each per pass; a pass
 * proposes nothing while the previous one's proposals are unanswered, and
 * a proposal that fails is made again at the next pass. Each rotation and
 * destruction is logged with its reason (never key material).
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
