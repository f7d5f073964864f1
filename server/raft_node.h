/* raft_node.h - the key ring replicated with canonical/raft on its own libuv thread; other threads submit commands through a queue. */
#ifndef KMS_RAFT_NODE_H
#define KMS_RAFT_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "kms/config.h"
#include "kms/error.h"
#include "kms/keyring.h"

typedef struct kms_raft kms_raft;

/*
 * Called once per submitted command, on the Raft thread: status is the key
 * ring's verdict on the applied command (KMS_OK, KMS_ERR_EXISTS, ...) or
 * KMS_ERR_UNAVAILABLE when it could not be committed (not the leader, no
 * quorum, shutting down), with msg saying which.
 */
typedef void (*kms_raft_done_fn)(void *arg, int status, const char *msg);

/*
 * Starts Raft for this node on its own thread: a new data directory is
 * bootstrapped as a one-node cluster; an existing one is replayed (snapshot
 * plus log) into kr. Returns once Raft has started, or KMS_ERR_CONFIG /
 * KMS_ERR_IO with raft's own message.
 */
int kms_raft_start(const kms_config *cfg, kms_keyring *kr, kms_raft **out,
		   kms_err *err);

/*
 * Queues a serialized kms.v1.Command. Thread-safe. cmd is copied. done runs
 * exactly once, on the Raft thread (or on this thread when Raft is stopped).
 */
void kms_raft_submit(kms_raft *r, const uint8_t *cmd, size_t len,
		     kms_raft_done_fn done, void *arg);

/* True once this node leads and has applied every entry of earlier terms. */
int kms_raft_ready(kms_raft *r);

/* Stops Raft and joins its thread; pending commands fail UNAVAILABLE.
 * Later submissions fail at once. */
void kms_raft_stop(kms_raft *r);
void kms_raft_free(kms_raft *r);

/*
 * The frame every command travels in through the Raft log (see raft_node.c
 * for why): kms_raft_frame writes kms_raft_frame_size(len) bytes to out;
 * kms_raft_unframe borrows the payload back, or KMS_ERR_INVALID.
 */
size_t kms_raft_frame_size(size_t payload_len);
void kms_raft_frame(const uint8_t *payload, size_t len, uint8_t *out);
int kms_raft_unframe(const uint8_t *buf, size_t len, const uint8_t **payload,
		     size_t *payload_len, kms_err *err);

#endif
