/* keyring.h - the replicated key ring: the Raft state machine (apply, snapshot, restore) and its read-side lookups; no I/O. */
#ifndef KMS_KEYRING_H
#define KMS_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"
#include "kms/policy.h"
#include "kms/v1/kms.pb-c.h"
#include "kms/v1/state.pb-c.h"

/*
 * The key ring holds the key records (id, description, policy, versions with
 * their domain-key-wrapped material). Raft's FSM callbacks call apply,
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
	uint32_t version;
	unsigned long handle; /* 0: not unwrapped on this node yet */
	kms_key_handle *ref;  /* what keeps handle alive; NULL with handle 0 */
	uint8_t wrapped[KMS_WRAPPED_MAX];
	size_t wrapped_len;
} kms_key_use;

/*
 * The one gate of every crypto call: finds key_id and checks the policy for
 * principal and op: KMS_ERR_PERMISSION "principal '<p>' may not <op> with
 * key '<id>'" for a key it may not use and, alike, for one that does not
 * exist (only an administrator gets KMS_ERR_NOT_FOUND "key '<id>' not
 * found"); then refuses a disabled key (KMS_ERR_PRECONDITION), resolves
 * version (0: the primary version; an unknown one: KMS_ERR_NOT_FOUND) and
 * copies it into out.
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
 * may principal do op with key_id (DescribeKey: also any administrator)?
 * An empty key_id asks only whether principal may list keys, which every
 * authenticated service principal may.
 */
int kms_keyring_authorize(kms_keyring *kr, const char *key_id, const char *principal,
			  enum kms_op op, kms_err *err);

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
 * Metadata of one key for a caller allowed to DescribeKey it (or an
 * administrator); refusals as kms_keyring_resolve's. *out is a deep copy owned by the caller: free it with
 * kms_keyring_metadata_free.
 */
int kms_keyring_describe(kms_keyring *kr, const char *key_id,
			 const char *principal, int is_admin,
			 Kms__V1__KeyMetadata **out, kms_err *err);
void kms_keyring_metadata_free(Kms__V1__KeyMetadata *md);

/*
 * Up to page_size keys (1..1000) in key-id order, strictly after
 * after_key_id ("" for the first page), that principal may DescribeKey (all
 * of them for an administrator). *keys is an array of *n deep copies; free
 * with kms_keyring_list_free. *more is set when further keys follow.
 */
int kms_keyring_list(kms_keyring *kr, const char *principal, int is_admin,
		     const char *after_key_id, size_t page_size,
		     Kms__V1__KeyMetadata ***keys, size_t *n, int *more,
		     kms_err *err);
void kms_keyring_list_free(Kms__V1__KeyMetadata **keys, size_t n);

#endif
