/* forward.h - a follower's writes: sent to the leader with no thread waiting, answered once applied on this node too. */
#ifndef KMS_FORWARD_H
#define KMS_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"
#include "raft/raft_node.h"

struct kms_node;
typedef struct kms_forwarder kms_forwarder;

/* The writes one kms.v1.Internal/ForwardBatch call carries at most. */
#define KMS_FORWARD_BATCH_MAX 64

/* Starts the thread that watches the deadlines of forwarded writes. node
 * must outlive the forwarder; node->raft may be started after this, with
 * kms_forwarder_applied as its applied hook (kms_raft_opts). */
int kms_forwarder_new(struct kms_node *node, kms_forwarder **out, kms_err *err);

/* The Raft thread's word that this node applied index (arg: the
 * forwarder): answers the forwarded writes waiting for it. */
void kms_forwarder_applied(void *arg, uint64_t index);

/*
 * Sends the serialized command cmd (copied) to the leader on behalf of
 * principal, and returns at once. It goes in a kms.v1.Internal/ForwardBatch
 * call at once, or, while earlier batches are still out, with the writes
 * taken meanwhile in the next one.
 * done runs exactly once, once this node has applied the write too (so
 * that the caller reads it here): on the Raft thread, on the thread that
 * finishes node-to-node calls, or on the forwarder's own (for a deadline),
 * or on this thread before the function returns when nothing could be
 * sent. It gets:
 *  - the leader's verdict and the index the write was applied at;
 *  - KMS_ERR_DEADLINE once deadline_ms (the caller's deadline, from now;
 *    LONG_MAX: none) has passed without an answer; the forward itself ends
 *    after 10 s at most;
 *  - KMS_ERR_UNAVAILABLE when no leader is known, it cannot be reached, it
 *    is no longer the leader and no other leader is known (a node that
 *    answers that it does not lead has not submitted the command: it is
 *    sent once more to the leader that node or this one knows), when this
 *    node has not applied the write 5 s after the leader did, and when the
 *    forwarder stops.
 */
void kms_forwarder_submit(kms_forwarder *f, const char *principal, long deadline_ms,
			  const uint8_t *cmd, size_t len, kms_raft_done_fn done, void *arg);

/*
 * Refuses new forwards, cancels those waiting for the leader and answers
 * those waiting to be applied here (UNAVAILABLE, "kmsd is shutting down"),
 * and joins the thread: every done has run when it returns. Uses
 * kms_peers_stop_calls, which ends every asynchronous node-to-node call.
 */
void kms_forwarder_stop(kms_forwarder *f);

/* Stops (if needed) and frees. */
void kms_forwarder_free(kms_forwarder *f);

#endif
