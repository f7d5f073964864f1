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
typedef void (*kms_raft_done_fn)(void *arg, int status, const char *msg,
				 uint64_t index);

struct raft_uv_transport;
struct uv_loop_s;

typedef struct kms_raft_opts {
	/* Bootstrap a one-node cluster when the data directory is new. A node
	 * joining an existing cluster starts empty and waits for the leader. */
	int bootstrap;
	/* The peer transport, made on the Raft thread's loop; NULL: plain TCP
	 * (raft_uv_tcp), for tests only. close runs after raft closed it. */
	int (*transport_init)(void *arg, struct raft_uv_transport *t,
			      struct uv_loop_s *loop, kms_err *err);
	void (*transport_close)(void *arg, struct raft_uv_transport *t);
	void *transport_arg;
	/* Runs on the Raft thread after each entry this node applies, with its
	 * index, once the key ring holds it (a snapshot install does not call
	 * it); NULL: nothing. It must not block. */
	void (*applied)(void *arg, uint64_t index);
	void *applied_arg;
} kms_raft_opts;

/*
 * Starts Raft for this node on its own thread; an existing data directory is
 * replayed (snapshot plus log) into kr. Returns once Raft has started, or
 * KMS_ERR_CONFIG / KMS_ERR_IO with raft's own message. *out is set before
 * the Raft thread starts, so the transport's callbacks (on threads it
 * creates) may use it; on failure it is set back to NULL.
 *
 * While this node leads, it keeps Raft's configuration in step with the
 * member list of the key ring: members missing from the configuration are
 * added and promoted to voters (raft catches them up first), and voters
 * that are no longer members are removed, one change at a time.
 */
int kms_raft_start(const kms_config *cfg, kms_keyring *kr,
		   const kms_raft_opts *opts, kms_raft **out, kms_err *err);

#define KMS_RAFT_VIEW_MAX 16

/* What this node knows of Raft, refreshed every 50 ms and on every apply. */
typedef struct kms_raft_view {
	int state;             /* RAFT_LEADER, RAFT_FOLLOWER, RAFT_CANDIDATE, 0 */
	uint64_t leader_id;    /* 0: none known */
	uint64_t term;
	uint64_t commit_index;
	uint64_t applied_index;
	size_t n_servers;      /* the Raft configuration */
	struct {
		uint64_t id;
		int role;      /* RAFT_VOTER, RAFT_STANDBY, RAFT_SPARE */
	} servers[KMS_RAFT_VIEW_MAX];
} kms_raft_view;

void kms_raft_view_get(kms_raft *r, kms_raft_view *out);

/*
 * How many servers the Raft configuration holds, and whether id is one of
 * them. A restarted node knows its configuration from its log and snapshot
 * before its transport accepts a link: the view is refreshed right after
 * raft_start, which loads them. Thread-safe.
 */
size_t kms_raft_configured(kms_raft *r);
int kms_raft_has_server(kms_raft *r, uint64_t id);

/* "leader", "follower", "candidate" or "unavailable"; role names likewise. */
const char *kms_raft_state_name(int state);
const char *kms_raft_role_name(int role);

/* Waits until this node has applied index (KMS_OK) or timeout_ms passes
 * (KMS_ERR_UNAVAILABLE). */
int kms_raft_wait_applied(kms_raft *r, uint64_t index, int timeout_ms);

/*
 * Queues a serialized kms.v1.Command. Thread-safe. cmd is copied. done runs
 * exactly once, on the Raft thread (or on this thread when Raft is stopped).
 */
void kms_raft_submit(kms_raft *r, const uint8_t *cmd, size_t len,
		     kms_raft_done_fn done, void *arg);

/*
 * KMS_OK when this node has heard from a Raft leader within [raft]
 * max_staleness (leading: from a majority of the voters; a sole voter
 * always has), else KMS_ERR_UNAVAILABLE saying for how long it has not
 * (raft_contact.h). Any thread.
 */
int kms_raft_check_fresh(kms_raft *r, kms_err *err);

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
