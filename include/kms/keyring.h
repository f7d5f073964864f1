/* keyring.h - the replicated key ring: the Raft state machine (apply, snapshot, restore) and its read-side lookups; no I/O. */
#ifndef KMS_KEYRING_H
#define KMS_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/policy.h"
#include "kms/v1/kms.pb-c.h"
#include "kms/v1/state.pb-c.h"

/*
 * The key ring holds the key records (id, description, policy, state,
 * rotation policy, versions with their domain-key-wrapped material and
 * their counts of reserved encryptions), the aliases, and the cluster's
 * members and administrators. Raft's FSM callbacks call apply,
 * snapshot and restore on the Raft thread; request threads call the lookups
 * concurrently. The key ring locks itself (a rwlock): callers never lock.
 *
 * Beside each version the key ring keeps one node-local slot: the handle of
 * the master key once unwrapped into this node's HSM (none until then), a
 * reference-counted kms_key_handle (see "node-local handles" below). It is
 * not replicated and not in snapshots.
 */
typedef struct kms_keyring kms_keyring;

/*
 * Called once for every handle when its last reference goes: the key ring
 * dropped it (restore, free) and no caller holds it any more. It runs on
 * the thread that dropped the last reference (the Raft thread, a request
 * thread, or the owner at free), never under the key ring's lock, so it
 * must be thread-safe (kms_hsm_key_destroy is). It is the key ring's only
 * way out to the HSM: the key ring itself does no I/O.
 */
typedef void (*kms_keyring_release_fn)(void *arg, unsigned long handle);

int kms_keyring_new(kms_keyring **out, kms_err *err);
/*
 * Drops the key ring's reference to every handle, then frees. The owner
 * guarantees that no other thread uses kr any more and that every
 * kms_key_use has been released (the node stops its workers first); a
 * handle still held by a use would be released with that use.
 */
void kms_keyring_free(kms_keyring *kr);
/*
 * Set once, before any handle is recorded: a handle is released through
 * the function that was set when it was recorded.
 */
void kms_keyring_set_release(kms_keyring *kr, kms_keyring_release_fn fn,
			     void *arg);

/*
 * Called after the apply of a RotateKey made version the primary of key_id
 * (a real key id, valid only during the call) at rotated_at_unix (the
 * proposer's clock: a replay of an old log entry shows as an old date),
 * on the applying thread (the
 * Raft thread), outside the key ring's lock. It must not block nor call
 * back into a write of the key ring: the node only queues the version for
 * its background prefetch (node/key_prefetch.h). Not called for a refused
 * command, a check (kms_keyring_check), or versions a snapshot brings.
 */
typedef void (*kms_keyring_rotated_fn)(void *arg, const char *key_id, uint32_t version,
				       int64_t rotated_at_unix);

/* Set once, before Raft applies anything; NULL: nobody is told. */
void kms_keyring_set_rotated(kms_keyring *kr, kms_keyring_rotated_fn fn, void *arg);

/*
 * Applies one serialized kms.v1.Command. Deterministic: the same commands in
 * the same order give the same key ring on every node. A command that cannot
 * be parsed gives KMS_ERR_INVALID; a refused command (a key id that exists:
 * KMS_ERR_EXISTS; an invalid record: KMS_ERR_INVALID) changes nothing. The
 * buffer stays the caller's.
 */
int kms_keyring_apply(kms_keyring *kr, const uint8_t *cmd, size_t len,
		      kms_err *err);

/*
 * Serializes the whole key ring as a kms.v1.KeyRingSnapshot into memory
 * from alloc (Raft wants raft_malloc); out->data belongs to the caller.
 */
int kms_keyring_snapshot(kms_keyring *kr, void *(*alloc)(size_t), kms_buf *out,
			 kms_err *err);

/*
 * Replaces the whole key ring with a snapshot. On failure (KMS_ERR_INVALID)
 * the key ring is unchanged. The buffer stays the caller's.
 *
 * The node-local handle of a version that did not change (same key id,
 * version and wrapped material) stays with it, so a snapshot install does
 * not throw this node's unwrapped keys away. The key ring drops its
 * reference to the handle of every version that is gone or changed; the
 * handle is released when its last user is done (kms_keyring_use_release),
 * never while a call still uses it.
 */
int kms_keyring_restore(kms_keyring *kr, const uint8_t *snap, size_t len,
			kms_err *err);

/*
 * Builds a serialized CreateKey command for the Raft log. Validates key_id
 * (kms_key_id_check), description (at most 1024 bytes) and policy
 * (kms_policy_check) first: KMS_ERR_INVALID. A NULL policy is an empty one.
 * The command holds version 1 with the given wrapped material.
 * out->data is kms_malloc'd, owned by the caller.
 */
int kms_keyring_cmd_create_key(const char *key_id, const char *description,
			       const Kms__V1__KeyPolicy *policy,
			       const char *created_by, int64_t created_at_unix,
			       const uint8_t *wrapped, size_t wrapped_len,
			       kms_buf *out, kms_err *err);

/* --- cluster members, join grants, the domain-key check, administrators
 * (all replicated) --- */

#define KMS_MEMBERS_MAX 16
#define KMS_ADDRESS_MAX 255
#define KMS_FINGERPRINT_LEN 32 /* SHA-256 */
#define KMS_ADMINS_MAX 256

/*
 * The one-time permission of a node to receive the domain key: wrapped to
 * the transport key whose DER SubjectPublicKeyInfo has this SHA-256, before
 * expires_at_unix, once (used).
 */
typedef struct kms_join_grant {
	int present;
	uint8_t transport_key_sha256[KMS_FINGERPRINT_LEN];
	int64_t expires_at_unix;
	int used;
} kms_join_grant;

typedef struct kms_member {
	uint64_t id;
	char raft_address[KMS_ADDRESS_MAX + 1];
	char grpc_address[KMS_ADDRESS_MAX + 1];
	kms_join_grant grant; /* absent for the node that created the cluster */
} kms_member;

/*
 * True for a member that holds the domain key: it used its grant, or it
 * created the cluster (no grant). Such a member never gets a new grant.
 */
static inline int kms_member_joined(const kms_member *m)
{
	return !m->grant.present || m->grant.used;
}

/*
 * Serialized AddMember / RemoveMember / DomainKeyCheck commands (the same
 * checks as apply: ids >= 1, addresses host:port; a probe of 1..64 bytes).
 * AddMember with a grant admits a node (an operator's AddMember); without
 * one it only records or updates the addresses of a node (the leader's own
 * record). Applying AddMember with a grant for a node that is already a
 * member (its grant used, or the node that created the cluster) is
 * KMS_ERR_PRECONDITION: remove it first; for a node admitted but not yet
 * joined it replaces the grant. RemoveMember of an unknown id is
 * KMS_ERR_NOT_FOUND; a second DomainKeyCheck is KMS_ERR_EXISTS. out->data
 * is kms_malloc'd, the caller's.
 */
int kms_keyring_cmd_add_member(uint64_t id, const char *raft_address,
			       const char *grpc_address, const kms_join_grant *grant,
			       kms_buf *out, kms_err *err);
int kms_keyring_cmd_remove_member(uint64_t id, kms_buf *out, kms_err *err);
int kms_keyring_cmd_domain_key_check(const uint8_t *wrapped_probe, size_t len,
				     kms_buf *out, kms_err *err);

/*
 * ConsumeJoinGrant: marks node id's grant used, if it is for fp, unused and
 * unexpired at now_unix (the proposer's clock, carried in the command so
 * that every node decides alike); otherwise apply refuses it with
 * KMS_ERR_PERMISSION saying which. At most one consume of a grant ever
 * succeeds.
 */
int kms_keyring_cmd_consume_join_grant(uint64_t id, const uint8_t fp[KMS_FINGERPRINT_LEN],
				       int64_t now_unix, kms_buf *out, kms_err *err);

/*
 * SetAdministrators: replaces the list with 1..KMS_ADMINS_MAX distinct
 * principals (kms_principal_check), none a node identity. KMS_ERR_INVALID
 * otherwise, both here and at apply.
 */
int kms_keyring_cmd_set_administrators(char *const *admins, size_t n, kms_buf *out,
				       kms_err *err);

/*
 * The check FetchDomainKey makes before it commits the consume: KMS_OK when
 * node id holds an unused grant for fp that is unexpired at now_unix;
 * KMS_ERR_PERMISSION with the reason otherwise (for the log: the caller
 * gets one message for every reason).
 */
int kms_keyring_join_grant_check(kms_keyring *kr, uint64_t id,
				 const uint8_t fp[KMS_FINGERPRINT_LEN], int64_t now_unix,
				 kms_err *err);

/* True if principal is exactly one of the replicated administrators. */
int kms_keyring_is_admin(kms_keyring *kr, const char *principal);
/* How many administrators the replicated list holds (0 before bootstrap). */
size_t kms_keyring_admin_count(kms_keyring *kr);
/* A copy of the list: *out is an array of *n kms_strdup'd strings, the
 * caller's (kms_keyring_admins_free). */
int kms_keyring_admins(kms_keyring *kr, char ***out, size_t *n, kms_err *err);
void kms_keyring_admins_free(char **admins, size_t n);

/* Copies up to cap members (by id) into out; returns how many there are
 * (out may be NULL with cap 0, to count). */
size_t kms_keyring_members(kms_keyring *kr, kms_member *out, size_t cap);
/* KMS_OK with *out filled, or KMS_ERR_NOT_FOUND. */
int kms_keyring_member(kms_keyring *kr, uint64_t id, kms_member *out);
/* Copies the domain-key probe into out; returns its length (0: not set). */
size_t kms_keyring_domain_key_probe(kms_keyring *kr, uint8_t out[64]);

/* --- the quorum of operators (keyring_quorum.c; docs/OPERATIONS.md) ---
 *
 * QuorumInit records the cluster id, the operators and the threshold once
 * (KMS_ERR_EXISTS after). Propose adds a pending proposal whose digest
 * must be its canonical encoding's (kms_quorum_digest with this cluster's
 * id; KMS_ERR_INVALID otherwise). Approve records one operator's valid
 * Ed25519 signature over the digest; refusals change nothing:
 * KMS_ERR_NOT_FOUND (no such proposal), KMS_ERR_PRECONDITION (expired at
 * now_unix, not pending, or this operator approved it already),
 * KMS_ERR_PERMISSION (not an operator, or the signature does not verify).
 * The approval that reaches the threshold runs a state-only operation in
 * the same apply, on every node alike, and records its outcome in the
 * proposal (executed, or failed with the error); for the others the
 * proposal becomes approved, and the leader runs it and commits
 * ProposalResult (refused unless the proposal is approved: exactly one
 * result). CancelProposal: only by the proposer, only while pending.
 * out->data is kms_malloc'd, the caller's.
 */
#include "kms/quorum.h"
#include "kms/region.h"

/* region: the cluster's region name (NULL or "": none, as before regions). */
int kms_keyring_cmd_quorum_init(const uint8_t cluster_id[KMS_CLUSTER_ID_LEN],
				Kms__V1__OperatorRecord *const *ops, size_t n, uint32_t threshold,
				const char *region, kms_buf *out, kms_err *err);
/*
 * Makes a serialized CreateKey command's key multi-region, homed in region
 * (rewrites *cmd); apply refuses it unless region is the cluster's own.
 */
int kms_keyring_cmd_set_home_region(kms_buf *cmd, const char *region, kms_err *err);
/* The cluster's region from the replicated state; "" before QuorumInit or
 * in a cluster made before regions. */
void kms_keyring_region(kms_keyring *kr, char out[KMS_REGION_NAME_MAX + 1]);
/*
 * Copies of the region links (kms_keyring_region_links_free) and the last
 * region_rev given (region_rev may be NULL).
 */
int kms_keyring_region_links(kms_keyring *kr, Kms__V1__RegionLinkRecord ***out, size_t *n,
			     uint64_t *region_rev, kms_err *err);
void kms_keyring_region_links_free(Kms__V1__RegionLinkRecord **links, size_t n);
/*
 * The primary's side of the stream: copies of at most max multi-region
 * keys homed here whose region_rev is above after_rev, in region_rev
 * order (kms_keyring_records_free), and *head, the last region_rev given.
 * KMS_ERR_UNAVAILABLE naming both when after_rev is past *head.
 */
int kms_keyring_region_changes(kms_keyring *kr, uint64_t after_rev, size_t max,
			       Kms__V1__KeyRecord ***out, size_t *n, uint64_t *head, kms_err *err);
void kms_keyring_records_free(Kms__V1__KeyRecord **recs, size_t n);
/*
 * The secondary's side: RegionApply with keys pulled from peer_region at
 * epoch, their materials under this cluster's domain key of dk_generation,
 * and the primary's region_rev up to which the stream is applied (cursor)
 * and its head. Apply refuses it unless this cluster is linked as a
 * secondary of peer_region at that epoch; it adds or replaces each key of
 * peer_region, keeps this region's reserved encryptions, and counts as a
 * conflict (RegionLinkRecord.conflicts) a key whose id this region's own
 * key holds, which stays.
 */
int kms_keyring_cmd_region_apply(const char *peer_region, uint64_t epoch,
				 Kms__V1__KeyRecord *const *keys, size_t n,
				 Kms__V1__AliasRecord *const *aliases, size_t n_aliases,
				 uint64_t cursor, uint64_t peer_head, int64_t now_unix,
				 uint32_t dk_generation, kms_buf *out, kms_err *err);
/*
 * Copies of every alias of the n keys (kms_keyring_aliases_free): what a
 * pull sends with them, so that a secondary's aliases of each key become
 * exactly the primary's (a name of the secondary's own stays, a conflict).
 */
int kms_keyring_aliases_of_keys(kms_keyring *kr, Kms__V1__KeyRecord *const *keys, size_t n,
				Kms__V1__AliasRecord ***out, size_t *n_out, kms_err *err);
void kms_keyring_aliases_free(Kms__V1__AliasRecord **a, size_t n);
/*
 * FenceRegion: this cluster, the primary of peer_region, learned that the
 * peer was promoted at epoch. Apply refuses it unless the link is PRIMARY
 * below epoch; then the link becomes SECONDARY at epoch with its cursor at
 * 0, and every multi-region key homed here is homed in peer_region (writes
 * to it are refused here from now on; the new primary's copies replace it).
 */
int kms_keyring_cmd_fence_region(const char *peer_region, uint64_t epoch, int64_t now_unix,
				 kms_buf *out, kms_err *err);
/*
 * RegionFollowed: this cluster, promoted over peer_region, saw it follow as
 * a secondary at epoch. Apply refuses it unless the link is PRIMARY at that
 * epoch and awaiting_follow (set by the promotion); it clears the flag, and
 * sync writes wait for that secondary again.
 */
int kms_keyring_cmd_region_followed(const char *peer_region, uint64_t epoch, kms_buf *out,
				    kms_err *err);
/* The key a serialized command changes (1, its id in out), as the stream
 * counts changes; 0 for other commands or bytes that do not parse. */
int kms_keyring_command_key(const uint8_t *cmd, size_t len, char out[KMS_KEY_ID_MAX + 1]);
/* 1 with its region_rev when key_id is a multi-region key homed here. */
int kms_keyring_stream_rev(kms_keyring *kr, const char *key_id, uint64_t *rev);
/* 1 with the proposal id in out when cmd is an Approve; 0 otherwise. */
int kms_keyring_command_approval(const uint8_t *cmd, size_t len,
				 char out[KMS_PROPOSAL_ID_HEX + 1]);
/* 1 with its key in key_id when proposal_id is an executed destroy-key. */
int kms_keyring_executed_destroy(kms_keyring *kr, const char *proposal_id,
				 char key_id[KMS_KEY_ID_MAX + 1]);
/* p: a pending proposal without approvals, its digest filled in. */
int kms_keyring_cmd_propose(const Kms__V1__ProposalRecord *p, kms_buf *out, kms_err *err);
int kms_keyring_cmd_approve(const char *proposal_id, const char *operator_name,
			    const uint8_t *sig, size_t sig_len, int64_t now_unix, kms_buf *out,
			    kms_err *err);
int kms_keyring_cmd_cancel_proposal(const char *proposal_id, const char *principal,
				    int64_t now_unix, kms_buf *out, kms_err *err);
int kms_keyring_cmd_proposal_result(const char *proposal_id, int status, const char *message,
				    int64_t now_unix, kms_buf *out, kms_err *err);
/* A backup-export's success, with where its file is (ref borrowed). */
int kms_keyring_cmd_proposal_result_backup(const char *proposal_id, int64_t now_unix,
					   const kms_backup_ref *ref, kms_buf *out, kms_err *err);
/* RestoreBackup of a backup's key ring (borrowed). */
int kms_keyring_cmd_restore_backup(const uint8_t *key_ring, size_t len, kms_buf *out,
				   kms_err *err);

/*
 * Where the file of backup-export proposal_id is (*ref), or, for a backup
 * made before files left the replicated state, a copy of the file itself
 * (inline->data kms_malloc'd, the caller's; inline->len 0 otherwise). The
 * state keeps only the last backup: KMS_ERR_NOT_FOUND for any other
 * proposal.
 */
int kms_keyring_backup_find(kms_keyring *kr, const char *proposal_id, kms_backup_ref *ref,
			    kms_buf *inline_file, kms_err *err);
/* 1 with the last backup's ref when its file is kept out of the state. */
int kms_keyring_last_backup_ref(kms_keyring *kr, kms_backup_ref *ref);

/*
 * The part of the state a backup holds, packed as a kms.v1.KeyRingSnapshot
 * (out->data kms_malloc'd): the keys (material wrapped under the domain
 * key), the aliases, the domain-key probe and the domain key's generation,
 * in *generation. KMS_ERR_PRECONDITION while a domain-key rotation is in
 * progress (two keys are in use) or before the probe exists.
 */
int kms_keyring_backup_ring(kms_keyring *kr, kms_buf *out, uint32_t *generation, kms_err *err);

/* True once QuorumInit is applied. */
int kms_keyring_has_quorum(kms_keyring *kr);
/* The cluster id and a copy of the operators and threshold
 * (kms_keyring_operators_free); KMS_ERR_PRECONDITION before QuorumInit. */
int kms_keyring_quorum(kms_keyring *kr, uint8_t cluster_id[KMS_CLUSTER_ID_LEN],
		       Kms__V1__SetOperatorsOperation **ops, kms_err *err);
void kms_keyring_operators_free(Kms__V1__SetOperatorsOperation *ops);
/* A copy of one proposal (kms_keyring_proposal_free), or KMS_ERR_NOT_FOUND. */
int kms_keyring_proposal(kms_keyring *kr, const char *id, Kms__V1__ProposalRecord **out,
			 kms_err *err);
void kms_keyring_proposal_free(Kms__V1__ProposalRecord *p);
/* Copies of every proposal, by id (kms_keyring_proposals_free). */
int kms_keyring_proposals(kms_keyring *kr, Kms__V1__ProposalRecord ***out, size_t *n,
			  kms_err *err);
void kms_keyring_proposals_free(Kms__V1__ProposalRecord **ps, size_t n);
/* The ids of up to max approved proposals awaiting the leader's run. */
size_t kms_keyring_approved_proposals(kms_keyring *kr, char (*ids)[KMS_PROPOSAL_ID_HEX + 1],
				      size_t max);
/* "pending", "approved", "executed", "failed", "expired" (a pending one
 * at or past its expiry at now_unix) or "cancelled". */
const char *kms_proposal_state_name(const Kms__V1__ProposalRecord *p, int64_t now_unix);

/* True if a key with that id exists (a cheap check before a write). */
int kms_keyring_has_key(kms_keyring *kr, const char *key_id);
size_t kms_keyring_count(kms_keyring *kr);

#define KMS_WRAPPED_MAX 64

/*
 * One unwrapped master-key version in this node's HSM, reference-counted
 * (keyring_handles.c): the key ring holds one reference while the version
 * is in it, and every kms_key_use that names it holds another. Opaque.
 */
typedef struct kms_key_handle kms_key_handle;

/*
 * What the crypto path needs to use one key version, copied out. A use
 * with a handle holds a reference to it, so the HSM object outlives every
 * operation that uses it, whatever restore does meanwhile: use handle only
 * between resolve (or set_handle) and kms_keyring_use_release. A zeroed
 * use holds nothing.
 */
typedef struct kms_key_use {
	char key_id[KMS_KEY_ID_MAX + 1]; /* the real key id (an alias resolved) */
	uint32_t version;
	unsigned long handle; /* 0: not unwrapped on this node yet */
	kms_key_handle *ref;  /* what keeps handle alive; NULL with handle 0 */
	uint8_t wrapped[KMS_WRAPPED_MAX];
	size_t wrapped_len;
} kms_key_use;

/*
 * The one gate of every crypto call: finds key_id (a key id, or an alias,
 * which names its key) and checks the policy for principal and op:
 * KMS_ERR_PERMISSION "principal '<p>' may not <op> with key '<id>'" for a
 * key it may not use and, alike, for one that does not exist (only an
 * administrator gets KMS_ERR_NOT_FOUND "key '<id>' not found"). Then the
 * key's state: KMS_ERR_PRECONDITION "key '<id>' is disabled", "key '<id>'
 * is pending deletion (on <date>)", "key '<id>' was destroyed". Then
 * version (0: the primary; an unknown one: KMS_ERR_NOT_FOUND "key '<id>'
 * has no version N"; a destroyed one: KMS_ERR_PRECONDITION); a primary
 * that has made its maximum of encryptions (Exhausted) is refused with
 * KMS_ERR_UNAVAILABLE saying so (the key needs a rotation), unless this
 * node still holds an allowance for it (its blocks lie within the
 * maximum). The version is copied into out, with the real key id in
 * out->key_id.
 *
 * out must hold no reference (it is overwritten). On success, if the
 * version is unwrapped here, out->handle is set and out holds a reference
 * to it: the caller calls kms_keyring_use_release once its HSM operation is
 * done, on every path. On failure out holds no reference. Any thread.
 */
int kms_keyring_resolve(kms_keyring *kr, const char *key_id, uint32_t version,
			const char *principal, enum kms_op op, kms_key_use *out,
			kms_err *err);

/*
 * The authorization part of kms_keyring_resolve alone, with its refusals:
 * may principal do op with key_id, a key id or an alias (DescribeKey: also
 * any administrator)? The key's state does not matter here.
 * An empty key_id asks only whether principal may list keys, which every
 * authenticated service principal may.
 */
int kms_keyring_authorize(kms_keyring *kr, const char *key_id, const char *principal,
			  enum kms_op op, kms_err *err);

/*
 * For the node's own background work, not a caller's: what kms_keyring_resolve
 * copies out, for key_id (a real key id, no alias, no policy check) and
 * version, only while that version is the key's primary, Enabled, and the
 * key is Enabled. Otherwise KMS_ERR_NOT_FOUND (no such key) or
 * KMS_ERR_PRECONDITION saying why (the key's state, with resolve's
 * sentence; a newer primary; the version Exhausted or Destroyed), and out
 * holds nothing. On success out holds a reference to the version's handle
 * when it is unwrapped here (kms_keyring_use_release). Any thread.
 */
int kms_keyring_primary_use(kms_keyring *kr, const char *key_id, uint32_t version,
			    kms_key_use *out, kms_err *err);

/* --- node-local handles (keyring_handles.c) --- */

/*
 * Hands the key ring handle, the object the caller unwrapped from
 * use->wrapped for key_id's use->version after a resolve that found none.
 * The key ring owns handle from the call on, in every case, and use then
 * holds a reference (use->handle, use->ref):
 *  - the version still has that wrapped material: handle is recorded, or,
 *    if another thread recorded one first, handle is released and use gets
 *    the recorded one;
 *  - the version is gone or its material changed (a snapshot install since
 *    the resolve): handle is not recorded; it serves this use alone and is
 *    released with it, so the call the resolve admitted still completes.
 * Errors: KMS_ERR_INVALID (handle 0, or use already holds a handle),
 * KMS_ERR_NOMEM; handle is released then and use holds nothing.
 * The release function runs outside the lock, on this thread. Any thread.
 */
int kms_keyring_set_handle(kms_keyring *kr, const char *key_id,
			   unsigned long handle, kms_key_use *use,
			   kms_err *err);

/*
 * The bound on unwrapped versions ([hsm] max_unwrapped_versions): the key
 * ring records at most max handles. Recording one more evicts the least
 * recently used (a resolve that lends a handle counts as a use, at the
 * resolution of one recorded handle: uses between two recordings tie),
 * preferring one that no call holds: the slot drops its reference, so an
 * HSM object a call still uses is released when that call is done, never
 * before; the next use of an evicted version unwraps it again. Lowering
 * the bound evicts down to it at once, outside the lock; the release
 * function runs on the calling thread. max is clamped to 1..SIZE_MAX; until
 * it is set the bound is KMS_KEYRING_HANDLES_DEFAULT. Any thread.
 */
#define KMS_KEYRING_HANDLES_DEFAULT 4096
void kms_keyring_set_handle_limit(kms_keyring *kr, size_t max);

/* How many handles the key ring records now (never more than the bound). */
size_t kms_keyring_handle_count(kms_keyring *kr);

/*
 * Drops the reference use holds, if any, and clears use->handle and
 * use->ref; a no-op on a use that holds none (zeroed, or left by a failed
 * resolve), and on a second call. When that was the last reference to a
 * handle the key ring no longer holds, the release function runs here, on
 * the calling thread. Any thread; the key ring may be busy restoring.
 */
void kms_keyring_use_release(kms_key_use *use);

/*
 * Metadata of one key (key_id: a key id or an alias) for a caller allowed
 * to DescribeKey it (or an administrator); refusals as
 * kms_keyring_resolve's, whatever the key's state. It holds the lifecycle
 * fields 9..15 of KeyMetadata: the state, the deletion date, the rotation
 * policy (max_encryptions_per_version as in force: 2^30 for 0), the next
 * rotation by age, every version with its state, creation time and
 * reserved encryptions, and the aliases of the key. *out is a deep copy
 * owned by the caller: free it with kms_keyring_metadata_free.
 */
int kms_keyring_describe(kms_keyring *kr, const char *key_id,
			 const char *principal, int is_admin,
			 Kms__V1__KeyMetadata **out, kms_err *err);
void kms_keyring_metadata_free(Kms__V1__KeyMetadata *md);

/*
 * Up to page_size keys (1..1000) in key-id order, strictly after
 * after_key_id ("" for the first page), that principal may DescribeKey (all
 * of them for an administrator). *keys is an array of *n deep copies; free
 * with kms_keyring_list_free. *more is set when further keys follow. Each
 * is what describe gives, without version_details (a page of keys with
 * thousands of versions each would not fit a message).
 */
int kms_keyring_list(kms_keyring *kr, const char *principal, int is_admin,
		     const char *after_key_id, size_t page_size,
		     Kms__V1__KeyMetadata ***keys, size_t *n, int *more,
		     kms_err *err);
void kms_keyring_list_free(Kms__V1__KeyMetadata **keys, size_t n);

/* --- the key lifecycle (keyring_record.c, keyring_lifecycle.c,
 * keyring_versions.c): versions, key states, rotation policy, encryption
 * reservations. All replicated but the allowance. ---
 *
 * A key is Enabled, Disabled, PendingDeletion or Destroyed; each of its
 * versions 1..N (contiguous, at most KMS_KEY_VERSIONS_MAX) is Enabled,
 * Exhausted (decrypts only) or Destroyed (no material left). The primary
 * is the version new encryptions use. A destroyed key keeps its id for
 * ever (a tombstone): no key of that id can be created again.
 */

#define KMS_KEY_VERSIONS_MAX 100000
/* GCM with random IVs: at most 2^32 encryptions per key (NIST SP 800-38D
 * 8.3); the default leaves a wide margin. */
#define KMS_ENCRYPTIONS_DEFAULT (UINT64_C(1) << 30)
#define KMS_ENCRYPTIONS_MAX (UINT64_C(1) << 32)
/* A bound that keeps every date computed from it far inside int64. */
#define KMS_ROTATION_PERIOD_MAX (UINT64_C(100) * 366 * 86400)

/* "Enabled", "Disabled", "PendingDeletion", "Destroyed" for a
 * Kms__V1__KeyState; "Exhausted" etc. for a Kms__V1__KeyVersionState. */
const char *kms_key_state_name(Kms__V1__KeyState state);
const char *kms_key_version_state_name(Kms__V1__KeyVersionState state);

/* What the supervisor and the encryption counting need to know of a key. */
typedef struct kms_key_status {
	Kms__V1__KeyState state;
	uint32_t primary_version;
	uint32_t last_version; /* a rotation adds last_version + 1 */
	Kms__V1__KeyVersionState primary_state;
	uint64_t primary_reserved;
	uint64_t max_encryptions; /* in force: KMS_ENCRYPTIONS_DEFAULT for 0 */
	uint64_t rotation_period_seconds;
	int64_t last_rotated_at_unix; /* creation time when never rotated */
	int64_t deletion_at_unix;
} kms_key_status;

/* The status of key_id (a key id; not an alias): KMS_OK, or
 * KMS_ERR_NOT_FOUND. */
int kms_keyring_key_status(kms_keyring *kr, const char *key_id, kms_key_status *out,
			   kms_err *err);

/*
 * The real key id an administrator's call names: name is a key id or an
 * alias. KMS_OK with out (KMS_KEY_ID_MAX + 1 bytes) filled, or
 * KMS_ERR_NOT_FOUND "key '<id>' not found" / "alias '<a>' not found"
 * (KMS_ERR_INVALID for a name that is neither). Administrators only: it
 * tells an unknown key apart.
 */
int kms_keyring_real_key_id(kms_keyring *kr, const char *name, char *out, kms_err *err);

/*
 * Would apply accept this serialized command on the key ring as it is now?
 * The same decision as kms_keyring_apply, with its refusals and messages,
 * and no change. For the key, alias and lifecycle commands; a cluster
 * command is only parsed. A node runs it before it proposes a command, so
 * that the caller gets apply's sentence (Raft carries only the status).
 */
int kms_keyring_check(kms_keyring *kr, const uint8_t *cmd, size_t len, kms_err *err);

/*
 * Builders of the lifecycle commands. Each runs the checks apply runs on
 * its arguments alone (KMS_ERR_INVALID), so a command built here is refused
 * only for the state it meets. key_id is a key id, never an alias (resolve
 * it first). out->data is kms_malloc'd, the caller's.
 *
 * rotate_key: version must be the key's last version + 1 at apply (else
 * KMS_ERR_PRECONDITION: a rotation raced another), wrapped is its material
 * (1..KMS_WRAPPED_MAX bytes), now_unix its creation time. Apply refuses a
 * key that is not Enabled (KMS_ERR_PRECONDITION) and one that holds
 * KMS_KEY_VERSIONS_MAX versions; the new version becomes the primary.
 *
 * set_key_enabled: Disabled <-> Enabled (the same state again is a no-op);
 * refused for a key pending deletion or destroyed.
 *
 * schedule_key_deletion: an Enabled or Disabled key becomes
 * PendingDeletion, to be destroyed at deletion_at_unix (> 0). The window is
 * the caller's rule (API: 7..30 days).
 * cancel_key_deletion: PendingDeletion -> Disabled, as AWS KMS does.
 * destroy_key: PendingDeletion with now_unix >= its deletion date ->
 * Destroyed: every version's wrapped material is wiped from the state, and
 * this node's HSM handles of them are released once no call uses them.
 *
 * put_key_policy: policy (kms_policy_check KMS_POLICY_STORED here and at
 * apply; the API checks KMS_POLICY_NEW first) replaces the key's.
 * set_rotation_policy: period 0 or up to KMS_ROTATION_PERIOD_MAX, max 0
 * (the default) or up to KMS_ENCRYPTIONS_MAX. A version whose reserved
 * count already reaches the new max becomes Exhausted.
 * Every one but set_key_enabled's no-op is refused for a destroyed key.
 *
 * reserve_encryptions: count (1..KMS_ENCRYPTIONS_MAX) more encryptions of
 * key_id's version for node_id (>= 1) in its incarnation (>= 1). Apply
 * grants min(count, max - reserved) (0 once the version is Exhausted, which
 * is no error), adds it to the version's reserved_encryptions, and marks
 * the version Exhausted when that reaches max. A destroyed version or a
 * key that is not Enabled is refused (KMS_ERR_PRECONDITION). The grant is
 * credited to this node's allowance only if node_id and incarnation are
 * this key ring's own (kms_keyring_set_self).
 */
int kms_keyring_cmd_rotate_key(const char *key_id, uint32_t version, const uint8_t *wrapped,
			       size_t wrapped_len, int64_t now_unix, kms_buf *out, kms_err *err);
int kms_keyring_cmd_set_key_enabled(const char *key_id, int enabled, kms_buf *out, kms_err *err);
int kms_keyring_cmd_schedule_key_deletion(const char *key_id, int64_t deletion_at_unix,
					  kms_buf *out, kms_err *err);
int kms_keyring_cmd_cancel_key_deletion(const char *key_id, kms_buf *out, kms_err *err);
int kms_keyring_cmd_destroy_key(const char *key_id, int64_t now_unix, kms_buf *out, kms_err *err);
int kms_keyring_cmd_put_key_policy(const char *key_id, const Kms__V1__KeyPolicy *policy,
				   kms_buf *out, kms_err *err);
int kms_keyring_cmd_set_rotation_policy(const char *key_id, uint64_t rotation_period_seconds,
					uint64_t max_encryptions_per_version, kms_buf *out,
					kms_err *err);
int kms_keyring_cmd_reserve_encryptions(const char *key_id, uint32_t version, uint64_t count,
					uint64_t node_id, uint64_t incarnation, kms_buf *out,
					kms_err *err);

/* --- encryption counting: this node's allowance (keyring_versions.c) ---
 *
 * Each node may encrypt under a version only with encryptions it reserved
 * through Raft (ReserveEncryptions), so that the sum over every node never
 * passes the version's maximum, whatever crashes. The blocks granted to
 * this node form its allowance: node-local, not replicated, not in
 * snapshots, kept across a snapshot install for versions that still hold
 * their material (the install holds every grant this node applied), lost
 * at a restart (a restarted node has a new incarnation, so a grant made to
 * its previous life is never credited again). One version per key holds an
 * allowance: a grant for a newer version replaces it, and one for an older
 * version is not credited.
 */

/* Sets who this node is, for crediting grants: call it before Raft starts
 * applying. incarnation 0 credits nothing. */
void kms_keyring_set_self(kms_keyring *kr, uint64_t node_id, uint64_t incarnation);

/*
 * Takes one encryption of key_id's version from this node's allowance:
 * KMS_OK with *remaining (may be NULL) what is left after it, or
 * KMS_ERR_UNAVAILABLE "this node holds no reserved encryptions for key
 * '<id>' version N" when none is left (the caller reserves more through
 * Raft). Any thread, lock-free against other takes.
 */
int kms_keyring_take_encryption(kms_keyring *kr, const char *key_id, uint32_t version,
				uint64_t *remaining, kms_err *err);

/* What this node may still encrypt under key_id's version (0: nothing, or
 * another version holds the allowance), for a low-water check. */
uint64_t kms_keyring_allowance(kms_keyring *kr, const char *key_id, uint32_t version);

/*
 * How many grants were credited to this node's allowance for key_id in this
 * life so far (node-local; 0 for an unknown key). A node reads it before it
 * proposes a ReserveEncryptions, for kms_keyring_credit_skipped_grant.
 */
uint64_t kms_keyring_grants_credited(kms_keyring *kr, const char *key_id);

/*
 * The grant of a ReserveEncryptions this node proposed (count of key_id's
 * version), once the command committed and this node's applied index
 * passed it, when this node may have skipped its log entry by installing a
 * snapshot (which carries reserved counts, never allowances): credited
 * now if no grant was credited for key_id since credits_before
 * (kms_keyring_grants_credited before the proposal; otherwise the
 * command's own apply may have been one), and only if the grant must have
 * been whole: the version is still Enabled (a partial grant exhausts it for
 * ever). A version older than the one the allowance holds is never
 * credited: the allowance only moves forward. *credited says whether it
 * was. KMS_ERR_NOT_FOUND for an unknown key, KMS_ERR_INVALID for a version
 * 0 or a count outside 1..2^32. Any thread but the Raft thread's apply.
 */
int kms_keyring_credit_skipped_grant(kms_keyring *kr, const char *key_id, uint32_t version,
				     uint64_t count, uint64_t credits_before, int *credited,
				     kms_err *err);

/* --- what the leader's supervisor acts on (keyring_versions.c) --- */

/*
 * The Enabled keys due for a rotation at now_unix: a rotation period that
 * has elapsed since the last rotation (or creation), or a primary version
 * whose reserved encryptions reach high_water_permille thousandths of its
 * maximum, or that is Exhausted. *ids: *n kms_malloc'd key ids in key-id
 * order, at most max_n of them; free with kms_keyring_ids_free.
 */
int kms_keyring_due_rotations(kms_keyring *kr, int64_t now_unix, unsigned high_water_permille,
			      size_t max_n, char ***ids, size_t *n, kms_err *err);

/* The keys pending deletion whose deletion date has come at now_unix, as
 * kms_keyring_due_rotations gives them: they wait for a destroy-key
 * proposal (destruction is a root operation). */
int kms_keyring_due_destructions(kms_keyring *kr, int64_t now_unix, size_t max_n, char ***ids,
				 size_t *n, kms_err *err);
void kms_keyring_ids_free(char **ids, size_t n);

/* --- aliases (keyring_aliases.c, replicated) --- */

#define KMS_ALIAS_PREFIX "alias/"
#define KMS_ALIAS_PREFIX_LEN 6
#define KMS_ALIAS_NAME_MAX (KMS_ALIAS_PREFIX_LEN + 250)
#define KMS_ALIASES_MAX 100000

/* True if name starts with "alias/" (an alias, never a key id). */
int kms_is_alias_name(const char *name);

/* "alias/" and 1..250 characters of [A-Za-z0-9._/-]: KMS_OK or
 * KMS_ERR_INVALID naming the rule. */
int kms_alias_name_check(const char *name, kms_err *err);

/* What a call may name a key by: an alias name (kms_alias_name_check) or
 * a key id (kms_key_id_check). KMS_OK or KMS_ERR_INVALID naming the rule. */
int kms_key_name_check(const char *name, kms_err *err);

/*
 * True if name names key_id: it is key_id, or an alias pointing at it now.
 * For a caller's optional key id beside a blob that names its own key.
 */
int kms_keyring_names_key(kms_keyring *kr, const char *name, const char *key_id);

/* The id of a key to be created: kms_key_id_check, and not "alias/..."
 * (that prefix names aliases). KMS_ERR_INVALID naming the rule. */
int kms_keyring_new_key_id_check(const char *key_id, kms_err *err);

typedef struct kms_alias {
	char name[KMS_ALIAS_NAME_MAX + 1];
	char key_id[KMS_KEY_ID_MAX + 1];
	int64_t created_at_unix;
	int64_t updated_at_unix;
} kms_alias;

/*
 * CreateAlias: name (kms_alias_name_check) for key_id, an existing key id
 * that is not destroyed (KMS_ERR_NOT_FOUND, KMS_ERR_PRECONDITION; an alias
 * is refused, KMS_ERR_INVALID: aliases never point at aliases), a name not
 * taken (KMS_ERR_EXISTS), at most KMS_ALIASES_MAX (KMS_ERR_PRECONDITION).
 * UpdateAlias: an existing alias (KMS_ERR_NOT_FOUND) to such a key.
 * DeleteAlias: an existing alias (KMS_ERR_NOT_FOUND), whatever its key's
 * state. now_unix is the proposer's clock.
 */
int kms_keyring_cmd_create_alias(const char *name, const char *key_id, int64_t now_unix,
				 kms_buf *out, kms_err *err);
int kms_keyring_cmd_update_alias(const char *name, const char *key_id, int64_t now_unix,
				 kms_buf *out, kms_err *err);
int kms_keyring_cmd_delete_alias(const char *name, kms_buf *out, kms_err *err);

/* One alias: KMS_OK and *out, or KMS_ERR_NOT_FOUND. */
int kms_keyring_alias(kms_keyring *kr, const char *name, kms_alias *out, kms_err *err);
size_t kms_keyring_alias_count(kms_keyring *kr);

/*
 * Up to page_size aliases (1..1000) in name order, strictly after
 * after_name ("" for the first page); only those of key_id when it is not
 * "" (a key id). *out is an array of *n (kms_malloc'd, the caller's:
 * kms_free); *more is set when further aliases follow.
 */
int kms_keyring_list_aliases(kms_keyring *kr, const char *key_id, const char *after_name,
			     size_t page_size, kms_alias **out, size_t *n, int *more,
			     kms_err *err);

#endif
