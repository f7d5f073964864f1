/* key_prefetch.h - after a rotation, every node reserves encryptions for the new primary version and unwraps it into its HSM in the background, so that the first encryption under it waits for neither. */
#ifndef KMS_NODE_KEY_PREFETCH_H
#define KMS_NODE_KEY_PREFETCH_H

#include <stdint.h>

#include "kms/error.h"

struct kms_node;
typedef struct kms_key_prefetch kms_key_prefetch;

/*
 * Without it, the first encryption under a new version holds a gRPC
 * worker while it proposes a ReserveEncryptions and waits for its commit,
 * then while it unwraps the version (C_UnwrapKey): the calls queued behind
 * it see that in their latency (docs/PERFORMANCE.md, "Rotation every
 * second"). With it, the apply of a RotateKey on each node queues the key
 * (kms_key_prefetch_rotated, the key ring's rotated hook, on the Raft
 * thread: no I/O there) and the supervisor's thread, woken at once, does
 * the work for the key's newest version:
 *
 *  - only for a rotation made within KMS_PREFETCH_MAX_AGE_S of its apply
 *    here: an older one is a log this node replays (a restart, which
 *    applies every rotation of the log again) or catches up on, whose key
 *    may not be used soon; those keys pay on their first encryption, as
 *    before;
 *
 *  - only on a member that holds and verified the domain key and knows a
 *    leader (until then, its keys wait in the queue), and only while the version is still the Enabled primary of an
 *    Enabled key (kms_keyring_primary_use): a key disabled, scheduled for
 *    deletion or destroyed meanwhile gets neither a reservation nor an
 *    unwrap, and rotations of the same key coalesce into the newest;
 *  - one block through the budget's own background reservation
 *    (kms_budget_prefetch: the low-water refill, nobody waiting), unless
 *    this node holds enough or one is in flight;
 *  - the unwrap into the key ring's handle cache (kms_key_ops_handle),
 *    within [hsm] max_unwrapped_versions: it counts as a use, so it may
 *    evict the least recently used version, never one a call holds.
 *
 * Each prefetch logs one line saying what it did. The queue is bounded
 * (prefetch_queue.h); a dropped or skipped key costs its first encryption
 * what it cost before. At stop, keys still queued are dropped: nothing was
 * started for them.
 */

#define KMS_PREFETCH_MAX_AGE_S 60

int kms_key_prefetch_new(struct kms_node *node, kms_key_prefetch **out, kms_err *err);

/*
 * The key ring's rotated hook (kms_keyring_set_rotated, arg the prefetch):
 * queues key_id's version and wakes the worker, if one is set. Never
 * blocks on anything but the queue's lock.
 */
void kms_key_prefetch_rotated(void *arg, const char *key_id, uint32_t version,
			      int64_t rotated_at_unix);

/*
 * Who does the work: wake(wake_arg) is called after each key queued, under
 * the queue's lock (so it must not call back into the prefetch). NULL
 * (before the supervisor stops): nobody is woken any more.
 */
void kms_key_prefetch_set_wake(kms_key_prefetch *p, void (*wake)(void *), void *wake_arg);

/*
 * Prefetches what is queued, at most KMS_PREFETCH_QUEUE_MAX keys per call,
 * on the calling thread (the supervisor's): it waits for unwraps, never
 * for a commit. While this node cannot prefetch (see above) the keys stay
 * queued for the next call, until their rotation is KMS_PREFETCH_MAX_AGE_S
 * old. 1 when more keys wait that a call now could prefetch, else 0.
 */
int kms_key_prefetch_run(kms_key_prefetch *p);

/* Frees it. Only once Raft has stopped (no apply calls the hook) and the
 * worker no longer runs it. NULL is fine. */
void kms_key_prefetch_free(kms_key_prefetch *p);

#endif
