/* region_sync.h - a secondary region's leader pulls its primary's multi-region changes and records them through Raft; and what each side remembers of the stream for region status. */
#ifndef KMS_REGION_SYNC_H
#define KMS_REGION_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"
#include "kms/region.h"
#include "raft/raft_node.h"

struct kms_node;
typedef struct kms_region_sync kms_region_sync;

/* Pulls run this often while a secondary is caught up and nothing
 * changes, at once while its primary has more than a page, and this soon
 * (from the start of the last) while changes keep coming. */
#define KMS_REGION_PULL_INTERVAL_MS 200
#define KMS_REGION_PULL_BUSY_MS 50

/* The wait before the next pull, from the start of one that went well:
 * caught_up when it reached the primary's head, with n_keys keys. */
long kms_region_pull_wait_ms(int caught_up, size_t n_keys);
/* One pull's deadline: a primary that is gone costs at most this. */
#define KMS_REGION_PULL_TIMEOUT_MS 3000
/* How often a primary asks its secondaries whether one was promoted. */
#define KMS_REGION_EPOCH_EVERY_S 1

/*
 * Starts the puller thread. It does nothing unless this node is the ready
 * leader and the state links this region as a secondary; then, for each
 * such link, it asks the primary's endpoints in turn for the changes after
 * the link's cursor (kms.v1.Internal/RegionPull, as a region peer: its
 * node certificate, the peer's node CA and trust domain), moves each
 * version's material from the primary's carrier key to this region's
 * domain key inside the HSM, and commits RegionApply, one pull at a time.
 * The CA files it needs are written under <data_dir>/regions/. On a
 * primary's ready leader it asks each secondary once a second for the
 * epoch of their link, and fences this region (FenceRegion) when that
 * secondary was promoted.
 */
int kms_region_sync_start(struct kms_node *node, kms_region_sync **out, kms_err *err);
/* Stops the thread (before Raft stops) and frees. NULL is fine. */
void kms_region_sync_stop(kms_region_sync *s);

/* What this node knows of one link beyond the state. */
typedef struct kms_region_link_info {
	/* secondary, on the leader: the last pull and its error ("" after
	 * success), and when this region last held every change it knew of */
	int64_t last_pull_unix;
	char last_error[256];
	int64_t caught_up_unix;
	/* secondary, on the leader: the primary's region_rev at the last pull */
	uint64_t peer_head;
	/* primary: the rev the secondary last asked after, on this node */
	uint64_t peer_cursor;
} kms_region_link_info;

/* The info of the link to peer (zeroed when none). Any thread. */
void kms_region_sync_info(kms_region_sync *s, const char *peer, kms_region_link_info *out);

/* The primary's side: a pull from peer asked after after_rev. */
void kms_region_sync_served(kms_region_sync *s, const char *peer, uint64_t after_rev);

/*
 * Sync mode: a write to a multi-region key homed here is answered only
 * once every secondary linked in sync mode has committed it (its cursor,
 * asked every KMS_REGION_SYNC_POLL_MS with RegionEpoch, reached the key's
 * region_rev), or, at the latest, after KMS_REGION_SYNC_WAIT_MS: then
 * UNAVAILABLE says that the write is committed here and which secondary
 * has not confirmed it. A sync secondary pulls every
 * KMS_REGION_SYNC_POLL_MS.
 */
#define KMS_REGION_SYNC_WAIT_MS 5000
#define KMS_REGION_SYNC_POLL_MS 20

/* 1 when this region is the primary of a secondary linked in sync mode. */
int kms_region_sync_acks(kms_region_sync *s);
/*
 * Holds the answer of a committed write (done, arg, index as Raft gave
 * them) until the sync secondaries hold rev, or wait_ms pass. done runs on
 * the region thread (or on this one once the thread stopped).
 */
void kms_region_sync_hold(kms_region_sync *s, uint64_t rev, long wait_ms, kms_raft_done_fn done,
			  void *arg, uint64_t index);

#endif
