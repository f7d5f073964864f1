/* keyring_index.h - the key ring's entries in key-id order: sorted chunks under a directory, so that an insert moves one chunk, never the whole ring. */
#ifndef KMS_KEYRING_INDEX_H
#define KMS_KEYRING_INDEX_H

#include <stddef.h>

#include "kms/error.h"

/*
 * Entries per chunk. An insert moves at most this many entries (48 B each)
 * and a split a directory of n / (about 350) pointers, instead of half of a
 * one-array ring (24 MB at 1,000,000 keys).
 */
#define KR_CHUNK_MAX 512

struct kr_entry;
struct kr_chunk;

/*
 * The entries are copied in and live inside their chunk: an insert or a
 * split moves the entries of one chunk, so a struct kr_entry * holds only
 * while the lock is held and no entry is inserted (apply keeps none longer;
 * the handle bound names its slots by key id, keyring_handles.c).
 */
struct kr_index {
	struct kr_chunk **chunks; /* in key-id order, none empty */
	size_t n_chunks;
	size_t cap_chunks;
	size_t n; /* entries in all */
};

/* A position for walking the entries in key-id order (no insert meanwhile). */
struct kr_cursor {
	const struct kr_index *ix;
	size_t chunk;
	size_t slot;
};

void kr_index_init(struct kr_index *ix);
/* Frees the chunks and the directory; the entries' records are the caller's. */
void kr_index_free(struct kr_index *ix);

/* The entry with this id, or NULL (also for a NULL id). */
struct kr_entry *kr_index_find(const struct kr_index *ix, const char *key_id);
/* The entry of the greatest id, or NULL when empty. */
struct kr_entry *kr_index_last(const struct kr_index *ix);

/*
 * Copies *e in at its place by e->rec->key_id. KMS_ERR_EXISTS for an id
 * already there, KMS_ERR_NOMEM: the index is unchanged.
 */
int kr_index_insert(struct kr_index *ix, const struct kr_entry *e, kms_err *err);
/*
 * Copies *e in after the last entry, filling chunks whole (a restore's
 * sorted build). KMS_ERR_INVALID for an id not greater than the last one,
 * KMS_ERR_NOMEM: the index is unchanged.
 */
int kr_index_append(struct kr_index *ix, const struct kr_entry *e, kms_err *err);

/* The cursor at the first entry. */
void kr_index_first(const struct kr_index *ix, struct kr_cursor *cur);
/* The cursor at the first entry whose id is greater than key_id. */
void kr_index_seek_after(const struct kr_index *ix, const char *key_id, struct kr_cursor *cur);
/* The entry at the cursor, which then moves to the next; NULL past the end. */
struct kr_entry *kr_cursor_next(struct kr_cursor *cur);

#endif
