/* node.h - one kmsd node: configuration, HSM, key ring, Raft, peers and gRPC server, started and stopped in order. */
#ifndef KMS_NODE_H
#define KMS_NODE_H

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/types.h>

#include "kms/config.h"
#include "kms/error.h"
#include "kms/hsm.h"
#include "identity/authn.h"
#include "kms/keyring.h"
#include "kms/quorum.h"
#include "kms/v1/cluster.pb-c.h"
#include "rpc/peers.h"
#include "raft/raft_node.h"
#include "rpc/rpc_server.h"
#include "tls/tls_files.h"

struct kms_audit_log;
struct kms_budget;
struct kms_dk_rotation;
struct kms_forwarder;
struct kms_supervisor;
struct kms_key_prefetch;
struct kms_tls_watch;
struct raft_uv_transport;

/* The one server context, passed to every handler (no request state in globals). */
typedef struct kms_node {
	kms_config cfg;
	kms_hsm *hsm;
	/* 0 until this node holds the domain key (a joining node receives it
	 * from a member after admission). */
	_Atomic unsigned long domain_key;
	/* Its generation, and during a rotation the other live domain key
	 * (the new one before the switch, the old one after it until it is
	 * destroyed); an unwrap that fails under domain_key tries it
	 * (node/dk_rotation.c keeps the three in step with the state). */
	_Atomic uint32_t domain_key_gen;
	_Atomic unsigned long domain_key_alt;
	struct kms_dk_rotation *dkrot;
	atomic_int probe_verified; /* the token's domain key is the cluster's */
	atomic_int fatal;          /* a check failed: stop and exit non-zero */
	kms_authn *authn;          /* who a TLS peer is (services apart from nodes) */
	kms_keyring *kr;
	struct kms_budget *budget; /* this node's reserved encryptions */
	struct kms_key_prefetch *prefetch; /* new primaries made ready in the background */
	/* Random, new at every start, never 0: the encryptions this node
	 * reserves through Raft are credited to this life of it only
	 * (kms_keyring_set_self), so a restart never reuses a block. */
	uint64_t incarnation;
	EVP_PKEY *raft_key; /* the node key in the HSM, for Raft peer TLS */
	/* The same key, loaded once more for the audit writer thread alone,
	 * which signs checkpoints with it (docs/SECURITY.md). */
	EVP_PKEY *audit_key;
	struct kms_audit_log *audit; /* NULL: [audit] enabled = false */
	/* The TLS files in force, replaced as a whole by kms_node_reload_tls
	 * (under reload_mu, which also guards raft_transport). */
	kms_tls_files tls;
	pthread_mutex_t reload_mu;
	struct raft_uv_transport *raft_transport; /* (reload_mu) NULL once closed */
	struct kms_tls_watch *tls_watch;
	kms_raft *raft;
	kms_peers *peers;
	struct kms_forwarder *fwd; /* a follower's writes on their way to the leader */
	struct kms_supervisor *sup;
	struct kms_region_sync *region_sync; /* a secondary region's puller (region/) */
	kms_rpc_server *rpc;
	/* A joining node's only allowed Raft peers until its key ring lists
	 * the members: the members the FetchDomainKey answer named. */
	pthread_mutex_t join_mu;
	kms_member join_members[KMS_MEMBERS_MAX];
	size_t n_join_members;
	/* [quorum] of the configuration, read at start: the operators a new
	 * cluster records once (QuorumInit); none when not configured. */
	Kms__V1__OperatorRecord cfg_operators[KMS_OPERATORS_MAX];
	Kms__V1__OperatorRecord *cfg_operator_ptrs[KMS_OPERATORS_MAX];
	uint8_t cfg_operator_keys[KMS_OPERATORS_MAX][KMS_ED25519_PUB_LEN];
	size_t n_cfg_operators;
	/* kmsd --restore (node/restore.c): the backup's key ring until the
	 * state holds it (the supervisor's thread frees it then), and the
	 * domain key installed from the backup (undone if the start fails). */
	kms_buf restore_ring;
	kms_hsm_key restore_dk;
} kms_node;

/*
 * Loads the configuration at path and brings the node up: PIN, HSM, TLS
 * engine, domain key (created only when this node starts a new cluster),
 * key ring, Raft, gRPC, supervisor. Every failure names the step and cause.
 */
int kms_node_start(const char *config_path, kms_node **out, kms_err *err);
/* The same for kmsd --restore (restore NULL: a plain start). */
struct kms_restore_opts;
int kms_node_start_restore(const char *config_path, const struct kms_restore_opts *restore,
			   kms_node **out, kms_err *err);

/*
 * Reads the certificate, CA and CRL files again and, if the set passes
 * kms_tls_files_load, puts it in force for new handshakes everywhere: the
 * gRPC server, the Raft links, the node-to-node channels and the node CA
 * that tells nodes from services. Calls and links in flight go on with
 * what they were made with. A set that fails keeps the old one in force;
 * either way one log line says what happened and why (trigger names what
 * asked: "SIGHUP", "a file changed"). Any thread; reloads are serialized.
 */
void kms_node_reload_tls(kms_node *node, const char *trigger);

/* Stops serving, then Raft, then releases the HSM. */
void kms_node_stop(kms_node *node);

/* True when this node may serve: it holds the cluster's domain key and is
 * the ready leader, or a follower that knows a leader and has applied what
 * it knows to be committed; and it has heard from a leader (leading: from a
 * majority) within [raft] max_staleness, as crypto calls require. */
int kms_node_ready(kms_node *node);

/*
 * KMS_OK when this node serves every kms.v1 call (grpc.health.v1 SERVING):
 * its audit log can be written and kms_node_ready holds. Otherwise
 * KMS_ERR_UNAVAILABLE with the first reason in why, the sentence the
 * health status and ClusterStatus show.
 */
int kms_node_serving(kms_node *node, kms_err *why);

/* True when this node can take a write now: it holds the verified domain
 * key (to wrap a new master key) and leads, or knows a leader to forward
 * to. Being a few entries behind does not matter: the forward waits. */
int kms_node_can_write(kms_node *node);

/*
 * The read barrier behind "kms-consistency: leader-commit": asks the leader
 * for its commit index (or reads its own when leading) and waits until this
 * node has applied it, so the read sees every write acknowledged before the
 * call began. The leader answers only if its own state lets principal do op
 * with key_id (kms_keyring_authorize; "" for ListKeys), so a node waits only
 * for a call the leader authorizes; a refusal comes back as the leader's.
 * Both the call to the leader and the wait end by deadline_ms (the caller's
 * deadline, milliseconds from now). KMS_ERR_UNAVAILABLE with the reason when
 * it cannot.
 */
int kms_node_sync_read(kms_node *node, const char *principal, const char *key_id,
		       enum kms_op op, long deadline_ms, kms_err *err);

/*
 * Commits a serialized command through the cluster's leader on behalf of
 * principal (the caller this node served), and returns at once: no thread
 * waits for the outcome. On the leader it goes to Raft and done runs on the
 * Raft thread once applied; on a follower it is forwarded (Internal/Forward,
 * with the principal, which the leader authorizes again) and done runs,
 * on another thread, once the command is applied here too, so the caller
 * reads its own write (node/forward.h). deadline_ms is the caller's
 * deadline (kms_call_deadline_ms): a forward still unanswered then ends
 * with KMS_ERR_DEADLINE. No leader: done(KMS_ERR_UNAVAILABLE, "no quorum
 * ..."). done may run before this returns.
 */
void kms_node_commit_deadline(kms_node *node, const char *principal, long deadline_ms,
			      const uint8_t *cmd, size_t len, kms_raft_done_fn done, void *arg);

/* The same without a deadline of the caller's (a forward ends after 10 s). */
void kms_node_commit(kms_node *node, const char *principal, const uint8_t *cmd, size_t len,
		     kms_raft_done_fn done, void *arg);

/* The same, waiting for the outcome (worker threads only, never the Raft thread). */
int kms_node_commit_wait(kms_node *node, const char *principal, const uint8_t *cmd, size_t len,
			 uint64_t *index, kms_err *err);

/* This node's Raft view, domain-key state and why it does not serve (into
 * reason, which r points to; empty while it serves), for NodeStatus and
 * ClusterStatus; the other strings are static. */
void kms_node_local_status(kms_node *node, Kms__V1__NodeStatusResponse *r,
			   char reason[KMS_ERRMSG_SIZE]);

/* True when this node is the Raft leader now (it may lose that any time). */
int kms_node_is_leader(kms_node *node);

/* The leader's member record; KMS_ERR_UNAVAILABLE naming why there is none. */
int kms_node_leader(kms_node *node, kms_member *out, kms_err *err);

/* Records the members a joining node may accept Raft links from. */
void kms_node_set_join_members(kms_node *node, const kms_member *m, size_t n);

#endif
