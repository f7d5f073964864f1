/* encryption_budget.h - takes one encryption from this node's reserved blocks, asking Raft for more before they run out. */
#ifndef KMS_API_ENCRYPTION_BUDGET_H
#define KMS_API_ENCRYPTION_BUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"
#include "kms/keyring.h"
#include "raft/raft_node.h"

/*
 * A node encrypts under a key version only with encryptions it reserved
 * through Raft (ReserveEncryptions, keyring.h "encryption counting"): the
 * sum over every node then never passes the version's maximum, whatever
 * crashes. This module spends this node's allowance one encryption at a
 * time and keeps it topped up:
 *
 *  - a node reserves one block at a time, kms_budget_block(max) encryptions;
 *  - when what is left of the allowance falls to a quarter of a block (the
 *    low water), the take that saw it starts one reservation in the
 *    background, unless one is in flight for that key version already
 *    (one at a time per key version): a steady load never waits for Raft;
 *  - when nothing is left, the call waits for the reservation in flight (or
 *    one it starts), at most wait_ms and never past its own deadline, then
 *    fails closed with KMS_ERR_UNAVAILABLE saying why: the reservation
 *    failed (no quorum, with Raft's reason), did not commit in time, or the
 *    version has made its maximum and the key needs a rotation. After a
 *    failed reservation, calls fail at once with its reason for retry_ms,
 *    rather than each starting a reservation of its own.
 *
 * A follower that skipped its own reservation's log entry by installing a
 * snapshot would lose the grant (a snapshot carries reserved counts, not
 * allowances): once the reservation is answered, the grant is credited
 * unless the apply did it (kms_keyring_credit_skipped_grant).
 *
 * The key ring holds the allowance itself (kms_keyring_take_encryption,
 * lock-free against other takes); this module only decides when to ask
 * for more, and waits. No I/O of its own: reservations leave through
 * commit, which the node points at kms_node_commit.
 */
typedef struct kms_budget kms_budget;

/*
 * Commits the serialized command cmd (len bytes, copied or used before
 * the call returns) through the cluster's leader, as kms_node_commit does;
 * done runs exactly once, on any thread, possibly before commit returns,
 * and only after the command is applied on this node when it succeeds.
 */
typedef void (*kms_budget_commit_fn)(void *arg, const uint8_t *cmd, size_t len,
				     kms_raft_done_fn done, void *done_arg);

typedef struct kms_budget_opts {
	kms_keyring *kr;      /* not owned; outlives the budget */
	uint64_t node_id;     /* this node, >= 1 */
	uint64_t incarnation; /* this process's life, >= 1 (kms_keyring_set_self) */
	kms_budget_commit_fn commit;
	void *commit_arg;
	unsigned wait_ms;  /* 0: KMS_BUDGET_WAIT_MS */
	unsigned retry_ms; /* 0: KMS_BUDGET_RETRY_MS */
} kms_budget_opts;

/*
 * How long a call with nothing left waits for a reservation unless told
 * (kmsd waits [raft] max_staleness): a Raft commit takes milliseconds, a
 * leader election about a second; past that the cluster has no quorum and
 * the caller is better told so.
 */
#define KMS_BUDGET_WAIT_MS 2000
#define KMS_BUDGET_RETRY_MS 250
/* The largest block: see kms_budget_block. */
#define KMS_BUDGET_BLOCK_MAX 65536

/*
 * The block a node reserves for a version whose maximum is max:
 * min(KMS_BUDGET_BLOCK_MAX, max / 64), at least 1. Small enough that a
 * node that dies wastes little of the bound (its unused block: at the
 * default 2^30, 65,536 is 1/16384 of it; a small test maximum still splits
 * into 64 blocks, several per node), large enough that reservations are
 * rare: at 60,000 encryptions per second a node commits about one Raft
 * write a second, 16 per million encryptions.
 */
uint64_t kms_budget_block(uint64_t max);

/* The allowance at or below which a take asks for the next block. */
uint64_t kms_budget_low_water(uint64_t block);

/* KMS_ERR_INVALID for missing fields, KMS_ERR_NOMEM. *out is the caller's
 * (kms_budget_free). */
int kms_budget_new(const kms_budget_opts *o, kms_budget **out, kms_err *err);

/*
 * Waits until every reservation in flight has finished (its done ran:
 * once Raft and the forwarding of writes have stopped, none is left
 * pending), then frees. NULL is fine.
 */
void kms_budget_free(kms_budget *b);

/*
 * Takes one encryption of key_id's version (a real key id, as the gate
 * resolved it) from this node's allowance, as described above, waiting at
 * most min(wait_ms, deadline_ms) (deadline_ms: what is left of the
 * caller's deadline, LONG_MAX for none). KMS_OK: the caller may make
 * exactly one encryption under that version. Otherwise the error, most
 * often KMS_ERR_UNAVAILABLE; KMS_ERR_PRECONDITION / KMS_ERR_NOT_FOUND when
 * the key changed meanwhile (disabled, pending deletion, destroyed), with
 * apply's sentence. Worker threads only: it may block (never the Raft
 * thread, which it would wait for).
 */
int kms_budget_take(kms_budget *b, const char *key_id, uint32_t version, long deadline_ms,
		    kms_err *err);

/*
 * Reserves one block of key_id's version in the background, as the
 * low-water refill of a take does, for a version no call has taken from
 * yet (a new primary after a rotation: node/key_prefetch.h), so that the
 * first encryption under it finds this node's allowance ready instead of
 * waiting for Raft on a worker. Nothing is proposed when this node's
 * allowance is above the low water or a reservation is in flight already
 * (*started 0); *started 1 when this call proposed one. KMS_ERR_NOT_FOUND
 * for an unknown key, KMS_ERR_PRECONDITION when the version is no longer
 * the key's Enabled primary or the key is not Enabled (nothing proposed:
 * a disabled, deleted or rotated key gets no reservation), or the error of
 * building the command, or the refusal remembered from a reservation that
 * failed less than retry_ms ago. Never waits for the commit; any thread
 * but the Raft thread (the commit may run done inline).
 */
int kms_budget_prefetch(kms_budget *b, const char *key_id, uint32_t version, int *started,
			kms_err *err);

/* How many reservations this node committed (granted or not) since start. */
uint64_t kms_budget_reservations(kms_budget *b);

#endif
