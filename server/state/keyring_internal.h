/* keyring_internal.h - what the key ring's files share: the structure, the record rules, the protobuf-c allocator; never included outside server/state/keyring_*.c (and the index's unit test). */
#ifndef KMS_KEYRING_INTERNAL_H
#define KMS_KEYRING_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "kms/alloc.h"
#include "kms/quorum.h"
#include "kms/keyring.h"
#include "kms/region.h"
#include "kms/keyring_dk.h"
#include "kms/v1/state.pb-c.h"
#include "state/keyring_index.h"

#define KEYRING_SNAPSHOT_FORMAT 1
#define KEYRING_DESCRIPTION_MAX 1024
#define KEYRING_PAGE_MAX 1000

/*
 * Ownership: an entry lives in the key ring's index (keyring_index.c),
 * which moves entries within a chunk on insert: a struct kr_entry * holds
 * only under the lock and until the next CreateKey. An entry's record is one kms_malloc'd block (kr_flat_copy,
 * keyring_flat.c) holding the record, its sub-messages, arrays and strings
 * in protobuf-c's own layout, and after them the handles array, all but its
 * policy, which is shared with every key of an equal policy (entry->policy,
 * keyring_policies.c) and never changed in place: an entry
 * frees it with one kms_free and never points into a Command or a snapshot
 * the caller owns. Nothing in the block may be freed or reallocated alone:
 * what changes a record's structure builds a new block (kr_entry_rebuild),
 * so pointers into a record hold only while the lock is held.
 *
 * handles[i] belongs to rec->versions[i]: the node-local HSM handle of that
 * version once unwrapped, NULL until then; the entry owns one reference to
 * it (keyring_handles.c). Not replicated, not in snapshots. A slot changes
 * only under the write lock (set_handle, restore).
 */
struct kr_entry {
	Kms__V1__KeyRecord *rec;
	kms_key_handle **handles;
	/* rec->policy is this interned policy's, outside the block (NULL: none). */
	struct kr_policy *policy;
	/*
	 * This node's allowance of encryptions (keyring_versions.c), for one
	 * version of the key: allow_version changes only under the write lock
	 * (apply, restore); allow_left is taken from under the read lock.
	 */
	uint32_t allow_version;
	_Atomic uint64_t allow_left;
	/* Grants credited to this entry in this process's life (write lock):
	 * tells whether a grant was applied here or came in a snapshot. */
	uint64_t allow_credits;
};

/*
 * The bound on recorded handles (keyring_handles.c): one heap entry per
 * recorded handle, keyed by the tick of its last use that eviction has
 * seen. An entry names its handle by key id, version and generation, never
 * by pointer: eviction finds the slot by looking the key up under the write
 * lock, so entries survive a realloc of the entries or of a key's handles,
 * and an entry whose slot was emptied elsewhere is recognized as stale.
 */
struct kr_lru_entry {
	uint64_t stamp; /* the last use seen by eviction */
	uint64_t gen;	/* the handle's kms_key_handle.gen */
	char *key_id;	/* kms_strdup'd */
	uint32_t version;
};

struct kr_lru {
	struct kr_lru_entry *heap; /* a binary min-heap on stamp */
	size_t n, cap;
	size_t limit; /* 0: KMS_KEYRING_HANDLES_DEFAULT */
	/* Advanced by every recorded handle, under the write lock; read by
	 * every resolve, under the read lock. */
	atomic_uint_fast64_t tick;
};

struct kms_keyring {
	pthread_rwlock_t lock;
	struct kr_index keys; /* the entries, by key_id (strcmp), unique */
	kms_member members[KMS_MEMBERS_MAX]; /* sorted by id, unique */
	size_t n_members;
	uint8_t probe[KMS_WRAPPED_MAX]; /* the domain-key check blob */
	size_t probe_len;
	char **admins; /* kms_malloc'd strings, n_admins of them */
	size_t n_admins;
	/*
	 * The aliases (keyring_aliases.c): each record is owned once, by
	 * aliases[], sorted by name; by_key[] holds the same pointers sorted by
	 * (key id, name), for the aliases of one key.
	 */
	Kms__V1__AliasRecord **aliases;
	Kms__V1__AliasRecord **by_key;
	size_t n_aliases;
	size_t cap_aliases;
	/* Who this node is, for crediting encryption grants (set_self). */
	uint64_t self_node_id;
	uint64_t self_incarnation;
	kms_keyring_release_fn release;
	void *release_arg;
	kms_keyring_rotated_fn rotated; /* set once, before Raft applies */
	void *rotated_arg;
	struct kr_lru lru; /* the bound on recorded handles, keyring_handles.c */
	/*
	 * The quorum (keyring_quorum.c): set once by QuorumInit; operators is
	 * an owned copy of the set and threshold in force; proposals are owned
	 * records sorted by id.
	 */
	int has_quorum;
	uint8_t cluster_id[KMS_CLUSTER_ID_LEN];
	Kms__V1__SetOperatorsOperation *operators;
	Kms__V1__ProposalRecord **proposals;
	size_t n_proposals;
	size_t cap_proposals;
	Kms__V1__BackupRecord *last_backup; /* owned; NULL before the first backup */
	/* The cluster's region (QuorumInit); "" in a cluster made before regions. */
	char region[KMS_REGION_NAME_MAX + 1];
	/* Regions (keyring_region.c): the links, owned, sorted by peer_region,
	 * and the last region_rev given to a change of a multi-region key. */
	Kms__V1__RegionLinkRecord **links;
	size_t n_links;
	uint64_t region_rev;
	struct kr_rev_ring *revs; /* the keys of the latest revs; NULL before the first */
	kms_dk_state dk; /* the domain key's generation and rotation */
};

/*
 * protobuf-c allocation through kms_malloc (keyring_state.c). protobuf-c
 * returns NULL both for malformed input and for a failed allocation; the
 * flag tells the two apart so that an out-of-memory node reports
 * KMS_ERR_NOMEM instead of calling a good command invalid.
 */
struct pb_state {
	int failed;
};
void *kr_pb_alloc(void *data, size_t size);
void kr_pb_free(void *data, void *p);
void kr_pb_message_free(ProtobufCMessage *m);
void kr_record_free(Kms__V1__KeyRecord *rec);
/* Deep copy of a message through its wire form, owned by the caller. */
int kr_message_dup(const ProtobufCMessage *src, ProtobufCMessage **out, kms_err *err);

/*
 * keyring_flat.c: a deep copy of src in one kms_malloc'd block (freed with
 * kms_free), followed by `extra` zeroed bytes, aligned, at *extra_out. The
 * sub-message keep (NULL: none), wherever src points at it, is pointed at,
 * not copied.
 */
int kr_flat_copy(const ProtobufCMessage *src, const ProtobufCMessage *keep, size_t extra,
		 ProtobufCMessage **out, void **extra_out, kms_err *err);
/*
 * keyring_policies.c: the one shared copy of a policy equal to policy (NULL:
 * none, *out NULL), with one more reference, or a new one; release drops a
 * reference (NULL: nothing). kr_policy_get: the shared, immutable message.
 */
struct kr_policy;
int kr_policy_intern(const Kms__V1__KeyPolicy *policy, struct kr_policy **out, kms_err *err);
void kr_policy_release(struct kr_policy *p);
const Kms__V1__KeyPolicy *kr_policy_get(const struct kr_policy *p);
/*
 * A protobuf-c allocator whose frees do nothing and whose reset frees
 * everything at once (restore unpacks one record at a time with it). failed
 * tells an allocation failure from malformed input, as pb_state does.
 */
struct kr_arena_chunk;
struct kr_arena {
	ProtobufCAllocator pb;
	struct kr_arena_chunk *head;
	int failed;
};
void kr_arena_init(struct kr_arena *a);
void kr_arena_reset(struct kr_arena *a);
void kr_arena_free(struct kr_arena *a);

/* --- the domain key's state (keyring_domain_key.c) --- */

/* The state of a new key ring, or of a snapshot without one. */
void kr_dk_reset(kms_dk_state *s);
/* The six rotation commands (dry: decide only), and CreateKey/RotateKey's
 * generation (lock held). */
int kr_apply_dk(kms_keyring *kr, const Kms__V1__Command *c, int dry, kms_err *err);
int kr_dk_generation_check(const struct kms_keyring *kr, uint32_t generation, kms_err *err);
/* Snapshot: *m borrows from s while packed; restore: checked copy into *out. */
void kr_dk_to_message(const kms_dk_state *s, Kms__V1__DomainKeyState *m,
		      Kms__V1__DomainKeyRotation *r, Kms__V1__DomainKeyRotationGrant *g,
		      Kms__V1__DomainKeyRotationGrant **gp);
int kr_dk_from_message(const Kms__V1__DomainKeyState *m, kms_dk_state *out, kms_err *err);

/* --- records and their lifecycle rules (keyring_record.c) --- */

/* The one rule set of a key record, for apply, restore and the builders. */
int kr_record_check(const Kms__V1__KeyRecord *rec, kms_err *err);
/* The rules of one version record alone (rotation's new version). */
int kr_version_check(const char *key_id, const Kms__V1__KeyVersionRecord *v, kms_err *err);
/* A record's state; one written before key_state existed reads from its
 * enabled flag. kr_entry_make stores it, so entries always hold it. */
Kms__V1__KeyState kr_key_state(const Kms__V1__KeyRecord *rec);
/* Sets key_state and keeps the enabled flag of older readers in step. */
void kr_set_key_state(Kms__V1__KeyRecord *rec, Kms__V1__KeyState state);
/* The maximum of encryptions per version in force for rec. */
uint64_t kr_max_encryptions(const Kms__V1__KeyRecord *rec);
/* t as "2024-01-31T12:00:00Z" (UTC, the same on every node). */
void kr_format_date(int64_t t, char out[32]);
/*
 * Refuses a key whose state forbids what is asked: "key '<id>' is
 * disabled" / "is pending deletion (on <date>)" / "was destroyed"
 * (KMS_ERR_PRECONDITION); KMS_OK for an Enabled key.
 */
int kr_state_refusal(const Kms__V1__KeyRecord *rec, kms_err *err);
/* The read lock for a dry run (kms_keyring_check), else the write lock. */
void kr_lock(kms_keyring *kr, int dry);
/* What every key command checks first, before the lock: it names a well
 * formed key id. */
int kr_command_key_check(const void *c, const char *key_id, const char *what, kms_err *err);
/* The key commands' "find the key": the entry, or KMS_ERR_NOT_FOUND. */
int kr_entry_for(const struct kms_keyring *kr, const char *key_id, struct kr_entry **e,
		 kms_err *err);

/* --- regions (keyring_region.c); the caller holds the lock --- */

/* A multi-region record names a valid home region, a regional one none. */
int kr_scope_check(const Kms__V1__KeyRecord *rec, kms_err *err);
/* KMS_ERR_PRECONDITION, naming the primary, for a key homed elsewhere. */
int kr_home_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec, kms_err *err);
/* kr_entry_for, for the commands that change a key: only in its home. */
int kr_entry_for_write(const struct kms_keyring *kr, const char *key_id, struct kr_entry **e,
		       kms_err *err);
/* A new multi-region key is homed in this cluster's region. */
int kr_create_scope_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec,
			  kms_err *err);
/* Copies a valid region name, or "" for none, into out. */
int kr_region_set(char out[KMS_REGION_NAME_MAX + 1], const char *region, kms_err *err);
/* A snapshot's links and region_rev, checked and copied into q (the
 * quorum's restore, kr_quorum_build); kr_links_free frees such a copy. */
struct kr_quorum;
int kr_links_build(const Kms__V1__KeyRingSnapshot *s, struct kr_quorum *q, kms_err *err);
void kr_links_free(Kms__V1__RegionLinkRecord **links, size_t n);
/* An executed link-region proposal (no lock held). */
int kr_exec_link_region(kms_keyring *kr, const Kms__V1__LinkRegionOperation *op,
			const char *proposal_id, int64_t now, kms_err *err);
/* The key a command changes, as the stream counts changes; NULL for the
 * others (reserved encryptions are each region's own, not a change). */
const char *kr_changed_key(const Kms__V1__Command *c);
/* After a change to key_id is applied: a multi-region key homed here gets
 * the next region_rev, so that secondaries receive it (no lock held). */
void kr_region_touch(kms_keyring *kr, const char *key_id);
/* kr_region_touch with the write lock held. */
void kr_region_touch_locked(kms_keyring *kr, const char *key_id);
/* Forgets the keys of the latest revs (write lock held, or kr unshared):
 * a restored state gave its revs without them. */
void kr_rev_ring_free(kms_keyring *kr);
/* Counts a replicated key or alias whose name this region's own holds. */
void kr_region_conflict(Kms__V1__RegionLinkRecord *l, const char *name);
/* keyring_aliases.c, write lock held: key_id's aliases become the ones of
 * in that name it; a name this region's own alias or key holds stays, a
 * conflict of l. */
int kr_aliases_set_for_key(kms_keyring *kr, const char *key_id, Kms__V1__AliasRecord *const *in,
			   size_t n, Kms__V1__RegionLinkRecord *l, kms_err *err);
/* RegionApply (dry: decide only). */
int kr_apply_region_apply(kms_keyring *kr, const Kms__V1__RegionApplyCommand *c, int dry,
			  kms_err *err);
/* An executed unlink-region proposal (no lock held). */
int kr_exec_unlink_region(kms_keyring *kr, const char *peer, kms_err *err);
/* An executed promote-region proposal (no lock held). */
int kr_exec_promote_region(kms_keyring *kr, const char *peer, kms_err *err);
/* RegionFollowed (dry: decide only). */
int kr_apply_region_followed(kms_keyring *kr, const Kms__V1__RegionFollowedCommand *c, int dry,
			     kms_err *err);
/* FenceRegion (dry: decide only). */
int kr_apply_fence_region(kms_keyring *kr, const Kms__V1__FenceRegionCommand *c, int dry,
			  kms_err *err);

/* Entries (keyring_state.c); the caller holds the lock where it matters. */
void kr_entry_clear(struct kr_entry *e);
int kr_entry_make(const Kms__V1__KeyRecord *rec, struct kr_entry *e, kms_err *err);
/*
 * Replaces e's block with a copy of shape (which may point into the old
 * block): the handles of its first versions move over, new versions start
 * with none. The caller holds the write lock; on failure e is unchanged.
 */
int kr_entry_rebuild(struct kr_entry *e, const Kms__V1__KeyRecord *shape, kms_err *err);
/* Drops the entries' references to their handles (never under the lock:
 * the last one runs the release function), then frees them and the index. */
void kr_entries_drop(struct kr_index *ix);
struct kr_entry *kr_find_entry(const struct kms_keyring *kr, const char *key_id);
/* Index of version v in the record, or -1: versions are 1..N in order
 * (kr_record_check), so this is O(1). */
long kr_version_index(const Kms__V1__KeyRecord *rec, uint32_t v);
int kr_lookup_id_check(const char *key_id, kms_err *err);
int kr_apply_create_key(kms_keyring *kr, const Kms__V1__CreateKeyCommand *ck, kms_err *err);
int kr_check_create_key(kms_keyring *kr, const Kms__V1__CreateKeyCommand *ck, kms_err *err);

/*
 * Node-local handles: the reference-counted handle of one unwrapped
 * version. Who owns what, and which thread may do what, is written in
 * keyring_handles.c, which holds the cache's operations (set_handle,
 * kms_keyring_use_release). The handle and its two primitives are here,
 * inline: every resolve takes a reference, and the fuzz targets (ops/fuzz)
 * link the key ring's other files without keyring_handles.c.
 */
struct kms_key_handle {
	atomic_ulong refs;
	unsigned long handle;
	kms_keyring_release_fn release; /* as set when it was recorded */
	void *release_arg;
	/* Set when the key ring records it: its identity in the LRU heap, the
	 * key ring's tick, and the tick of its last use (every lend stores it). */
	uint64_t gen;
	const atomic_uint_fast64_t *clock;
	atomic_uint_fast64_t last_used;
};

/*
 * A new reference to kh (NULL: none) for out. The caller holds the key
 * ring's lock (read or write), so the slot's reference keeps kh alive.
 */
static inline void kr_handle_lend(kms_key_handle *kh, kms_key_use *out)
{
	out->handle = 0;
	out->ref = NULL;
	if (kh == NULL)
		return;
	/* Taken from a reference that is held: no ordering needed. */
	atomic_fetch_add_explicit(&kh->refs, 1, memory_order_relaxed);
	/* Recently used, for eviction: a store to the line refs dirtied anyway. */
	if (kh->clock != NULL)
		atomic_store_explicit(&kh->last_used,
				      atomic_load_explicit(kh->clock, memory_order_relaxed),
				      memory_order_relaxed);
	out->handle = kh->handle;
	out->ref = kh;
}

/*
 * out for version index idx of e: its key id, version, a lent handle and
 * its wrapped material. The caller holds the lock and checked idx.
 */
static inline void kr_use_fill(const struct kr_entry *e, long idx, kms_key_use *out)
{
	const Kms__V1__KeyVersionRecord *v = e->rec->versions[idx];

	/* kms_key_id_check bounded the id to KMS_KEY_ID_MAX. */
	snprintf(out->key_id, sizeof(out->key_id), "%s", e->rec->key_id);
	out->version = v->version;
	/* The caller's reference, taken while the slot's holds it. */
	kr_handle_lend(e->handles[idx], out);
	/* kr_record_check bounded the length to KMS_WRAPPED_MAX. */
	memcpy(out->wrapped, v->wrapped_material.data, v->wrapped_material.len);
	out->wrapped_len = v->wrapped_material.len;
}

/*
 * Drops one reference to kh (NULL: nothing); the last one runs the release
 * function and frees kh, so the caller must not hold the key ring's lock.
 */
static inline void kr_handle_drop(kms_key_handle *kh)
{
	if (kh == NULL)
		return;
	/* Every use of the object happens before its release (acq_rel). */
	if (atomic_fetch_sub_explicit(&kh->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (kh->release != NULL)
		kh->release(kh->release_arg, kh->handle);
	kms_free(kh);
}

/*
 * What a restore keeps (keyring_state.c). kr_same_material: whether version
 * record v holds exactly these wrapped bytes. kr_handles_carry moves every
 * handle of old whose version is unchanged in fresh (same key id, version
 * and wrapped material) into fresh's slot, leaving NULL behind; restore
 * calls it with the write lock held.
 */
int kr_same_material(const Kms__V1__KeyVersionRecord *v, const uint8_t *wrapped, size_t len);
/*
 * The LRU bound (keyring_handles.c), write lock held: kr_lru_prune forgets
 * the entries of handles no slot holds any more (restore calls it once the
 * new entries are in place, so the count stays exact); kr_lru_free frees the
 * heap (kms_keyring_free).
 */
void kr_lru_prune(kms_keyring *kr);
void kr_lru_free(kms_keyring *kr);
void kr_handles_carry(const struct kr_index *fresh, const struct kr_index *old);

/* Cluster state (keyring_cluster.c). */
int kr_member_check(const Kms__V1__MemberRecord *m, kms_err *err);
size_t kr_member_pos(const struct kms_keyring *kr, uint64_t id);
void kr_member_set(kms_member *dst, const Kms__V1__MemberRecord *m);
int kr_apply_add_member(kms_keyring *kr, const Kms__V1__AddMemberCommand *c, kms_err *err);
int kr_apply_remove_member(kms_keyring *kr, const Kms__V1__RemoveMemberCommand *c,
			   kms_err *err);
int kr_apply_domain_key_check(kms_keyring *kr, const Kms__V1__DomainKeyCheckCommand *c,
			      kms_err *err);
int kr_apply_consume_join_grant(kms_keyring *kr, const Kms__V1__ConsumeJoinGrantCommand *c,
				kms_err *err);
int kr_apply_set_administrators(kms_keyring *kr, const Kms__V1__SetAdministratorsCommand *c,
				kms_err *err);
/* The rules of an administrators list (apply, restore, the builder). */
int kr_admins_check(char *const *admins, size_t n, kms_err *err);
/* A deep copy of a list, or NULL (kms_keyring_admins_free). */
char **kr_admins_dup(char *const *admins, size_t n);

/* Packs a command into out->data (kms_malloc'd, the caller's). keyring_cmd.c */
int kr_command_pack(const Kms__V1__Command *c, kms_buf *out, kms_err *err);

/*
 * The lifecycle commands. Each decides on the state exactly as apply does;
 * with dry set it takes the read lock and changes nothing (kms_keyring_check),
 * otherwise the write lock, and changes the state only when it accepts.
 * keyring_lifecycle.c:
 */
int kr_apply_set_key_enabled(kms_keyring *kr, const Kms__V1__SetKeyEnabledCommand *c, int dry,
			     kms_err *err);
int kr_apply_schedule_key_deletion(kms_keyring *kr,
				   const Kms__V1__ScheduleKeyDeletionCommand *c, int dry,
				   kms_err *err);
int kr_apply_cancel_key_deletion(kms_keyring *kr, const Kms__V1__CancelKeyDeletionCommand *c,
				 int dry, kms_err *err);
int kr_apply_put_key_policy(kms_keyring *kr, const Kms__V1__PutKeyPolicyCommand *c, int dry,
			    kms_err *err);
int kr_apply_set_rotation_policy(kms_keyring *kr, const Kms__V1__SetRotationPolicyCommand *c,
				 int dry, kms_err *err);
/* keyring_versions.c: */
int kr_apply_rotate_key(kms_keyring *kr, const Kms__V1__RotateKeyCommand *c, int dry,
			kms_err *err);
int kr_apply_destroy_key(kms_keyring *kr, const Kms__V1__DestroyKeyCommand *c, int dry,
			 kms_err *err);
int kr_apply_reserve_encryptions(kms_keyring *kr, const Kms__V1__ReserveEncryptionsCommand *c,
				 int dry, kms_err *err);
/* What the versions of an entry marked Exhausted when max changes (lock held). */
void kr_exhaust_versions(Kms__V1__KeyRecord *rec);
/* Moves from's allowance (and its count of credits) into to when to still
 * holds that version with its material (restore, write lock held). */
void kr_allowance_carry(struct kr_entry *to, const struct kr_entry *from);
/* keyring_aliases.c: */
int kr_apply_create_alias(kms_keyring *kr, const Kms__V1__CreateAliasCommand *c, int dry,
			  kms_err *err);
int kr_apply_update_alias(kms_keyring *kr, const Kms__V1__UpdateAliasCommand *c, int dry,
			  kms_err *err);
int kr_apply_delete_alias(kms_keyring *kr, const Kms__V1__DeleteAliasCommand *c, int dry,
			  kms_err *err);
/* The key id an alias points at: a well-formed key id, never an alias. */
int kr_alias_target_check(const char *key_id, kms_err *err);
/* The alias named name (lock held), or NULL. */
const Kms__V1__AliasRecord *kr_alias_find(const struct kms_keyring *kr, const char *name);
/*
 * The key id a caller's name stands for (lock held): an alias's key id, or
 * name itself. NULL for an alias that does not exist. A key whose id an
 * earlier version let start with "alias/" is still found by its id.
 */
const char *kr_name_to_key_id(const struct kms_keyring *kr, const char *name);
/* The aliases of key_id (lock held): *first is the index of the first in
 * by_key[], the return value how many. */
size_t kr_aliases_of(const struct kms_keyring *kr, const char *key_id, size_t *first);
/*
 * Restore of the alias table: kr_aliases_build checks a snapshot's aliases
 * (sorted, unique, valid, each naming one of its keys, the entries built
 * from the snapshot, sorted) and builds both
 * arrays; kr_aliases_free frees what it built (or what a key ring held).
 */
struct kr_alias_table {
	Kms__V1__AliasRecord **aliases;
	Kms__V1__AliasRecord **by_key;
	size_t n;
};
int kr_aliases_build(Kms__V1__AliasRecord *const *src, size_t n,
		     const struct kr_index *keys, struct kr_alias_table *out,
		     kms_err *err);
void kr_aliases_free(struct kr_alias_table *t);

/* keyring_quorum.c: the quorum commands (dry: decide only, as above). */
int kr_apply_quorum_init(kms_keyring *kr, const Kms__V1__QuorumInitCommand *c, int dry,
			 kms_err *err);
int kr_apply_propose(kms_keyring *kr, const Kms__V1__ProposeCommand *c, int dry, kms_err *err);
int kr_apply_approve(kms_keyring *kr, const Kms__V1__ApproveCommand *c, int dry, kms_err *err);
int kr_apply_cancel_proposal(kms_keyring *kr, const Kms__V1__CancelProposalCommand *c, int dry,
			     kms_err *err);
int kr_apply_proposal_result(kms_keyring *kr, const Kms__V1__ProposalResultCommand *c, int dry,
			     kms_err *err);
/* Frees the quorum a key ring holds (kms_keyring_free). */
void kr_quorum_free(kms_keyring *kr);
/* Points a snapshot at the quorum (read lock held; it borrows). */
void kr_quorum_snapshot(kms_keyring *kr, Kms__V1__KeyRingSnapshot *snap);
/* Restore: kr_quorum_build checks and copies a snapshot's quorum;
 * kr_quorum_swap puts it in (write lock held) and leaves the old one in q
 * for kr_quorum_build_free. */
struct kr_quorum {
	int has_quorum;
	uint8_t cluster_id[KMS_CLUSTER_ID_LEN];
	Kms__V1__SetOperatorsOperation *operators;
	Kms__V1__ProposalRecord **proposals;
	size_t n_proposals;
	Kms__V1__BackupRecord *last_backup;
	char region[KMS_REGION_NAME_MAX + 1];
	Kms__V1__RegionLinkRecord **links;
	size_t n_links;
	uint64_t region_rev;
	struct kr_rev_ring *revs; /* the keys of the latest revs; NULL before the first */
};
int kr_quorum_build(const Kms__V1__KeyRingSnapshot *s, struct kr_quorum *out, kms_err *err);
void kr_quorum_swap(kms_keyring *kr, struct kr_quorum *q);
void kr_quorum_build_free(struct kr_quorum *q);
/* RestoreBackup (keyring_backup.c). */
int kr_apply_restore_backup(kms_keyring *kr, const Kms__V1__RestoreBackupCommand *c, int dry,
			    kms_err *err);
/*
 * Destroys key_id now, whatever its deletion date, if it is pending
 * deletion (an executed destroy-key proposal; keyring_versions.c). Takes
 * the write lock.
 */
int kr_destroy_key_now(kms_keyring *kr, const char *key_id, int64_t now_unix, kms_err *err);

#endif
