/* prefetch_queue.h - a bounded queue of key versions waiting for their background prefetch, one entry per key: a newer version of a key already queued takes its place. */
#ifndef KMS_NODE_PREFETCH_QUEUE_H
#define KMS_NODE_PREFETCH_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "kms/blob.h"

/*
 * What the node prepares after a rotation (node/key_prefetch.h) is worth
 * something only for a key's newest primary, so a key is queued once: a
 * second rotation of a key still waiting replaces its version in place
 * (its turn stays). The queue is bounded: many rotations at once (a
 * leader rotating every key due, a burst of RotateKey calls) queue at most
 * KMS_PREFETCH_QUEUE_MAX keys and the rest are dropped, whose first
 * encryption then reserves and unwraps for itself, as without a prefetch.
 * No locking and no I/O: the owner holds its lock around every call.
 */
#define KMS_PREFETCH_QUEUE_MAX 64

typedef struct kms_prefetch_item {
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t version;
	int64_t rotated_at_unix; /* of the version queued */
} kms_prefetch_item;

typedef struct kms_prefetch_queue {
	kms_prefetch_item items[KMS_PREFETCH_QUEUE_MAX]; /* a ring, from head */
	size_t head, n;
} kms_prefetch_queue;

enum kms_prefetch_push {
	KMS_PREFETCH_QUEUED,    /* a new entry at the end */
	KMS_PREFETCH_COALESCED, /* the key was queued: its entry holds the newer version */
	KMS_PREFETCH_DROPPED,   /* full, or an id longer than KMS_KEY_ID_MAX: not queued */
};

/* An empty queue. */
void kms_prefetch_queue_init(kms_prefetch_queue *q);

/* Queues key_id's version, rotated at rotated_at_unix (see above). An
 * older version than the one queued for the key changes nothing
 * (COALESCED). */
enum kms_prefetch_push kms_prefetch_queue_push(kms_prefetch_queue *q, const char *key_id,
					       uint32_t version, int64_t rotated_at_unix);

/* Takes the oldest entry into *out: 1, or 0 when the queue is empty. */
int kms_prefetch_queue_pop(kms_prefetch_queue *q, kms_prefetch_item *out);

/* How many keys wait. */
size_t kms_prefetch_queue_len(const kms_prefetch_queue *q);

#endif
