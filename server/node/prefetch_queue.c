/* prefetch_queue.c - a bounded queue of key versions waiting for their background prefetch, one entry per key: a newer version of a key already queued takes its place. */
#include <string.h>

#include "node/prefetch_queue.h"

void kms_prefetch_queue_init(kms_prefetch_queue *q)
{
	q->head = 0;
	q->n = 0;
}

static kms_prefetch_item *at(kms_prefetch_queue *q, size_t i)
{
	return &q->items[(q->head + i) % KMS_PREFETCH_QUEUE_MAX];
}

enum kms_prefetch_push kms_prefetch_queue_push(kms_prefetch_queue *q, const char *key_id,
					       uint32_t version, int64_t rotated_at_unix)
{
	size_t len = strnlen(key_id, KMS_KEY_ID_MAX + 1);
	kms_prefetch_item *it;

	if (len > KMS_KEY_ID_MAX)
		return KMS_PREFETCH_DROPPED;
	/* At most 64 short compares, on the Raft thread: cheaper than an index. */
	for (size_t i = 0; i < q->n; i++) {
		it = at(q, i);
		if (strcmp(it->key_id, key_id) != 0)
			continue;
		if (version > it->version) {
			it->version = version;
			it->rotated_at_unix = rotated_at_unix;
		}
		return KMS_PREFETCH_COALESCED;
	}
	if (q->n == KMS_PREFETCH_QUEUE_MAX)
		return KMS_PREFETCH_DROPPED;
	it = at(q, q->n);
	memcpy(it->key_id, key_id, len + 1);
	it->version = version;
	it->rotated_at_unix = rotated_at_unix;
	q->n++;
	return KMS_PREFETCH_QUEUED;
}

int kms_prefetch_queue_pop(kms_prefetch_queue *q, kms_prefetch_item *out)
{
	if (q->n == 0)
		return 0;
	*out = *at(q, 0);
	q->head = (q->head + 1) % KMS_PREFETCH_QUEUE_MAX;
	q->n--;
	return 1;
}

size_t kms_prefetch_queue_len(const kms_prefetch_queue *q)
{
	return q->n;
}
