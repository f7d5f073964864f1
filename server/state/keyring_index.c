/* keyring_index.c - the key ring's entries in key-id order: sorted chunks of entries under a sorted directory of chunks. */
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/*
 * One array of all entries made a CreateKey at 1,000,000 keys move 24 MB
 * under the write lock. Here an insert moves the tail of one chunk, and a
 * full chunk splits in two, moving half a chunk and the directory's tail
 * (one pointer per chunk). Keys are never removed (a destroyed key stays
 * as its tombstone; a restore builds a new index), so no chunk ever empties.
 *
 * A chunk holds room for KR_CHUNK_STEP entries more than it holds at most,
 * and grows by that step: split halves and chunks that random ids fill
 * slowly cost about their entries, not a whole chunk each.
 */
#define KR_CHUNK_STEP 32

struct kr_chunk {
	size_t n;
	size_t cap;
	struct kr_entry e[];
};

static const char *id_of(const struct kr_entry *e)
{
	return e->rec->key_id;
}

void kr_index_init(struct kr_index *ix)
{
	memset(ix, 0, sizeof(*ix));
}

void kr_index_free(struct kr_index *ix)
{
	for (size_t c = 0; c < ix->n_chunks; c++)
		kms_free(ix->chunks[c]);
	kms_free(ix->chunks);
	kr_index_init(ix);
}

/* The chunk key_id belongs in: the last whose first id is <= key_id, else 0. */
static size_t dir_find(const struct kr_index *ix, const char *key_id)
{
	size_t lo = 1, hi = ix->n_chunks;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(id_of(&ix->chunks[mid]->e[0]), key_id) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo - 1;
}

/* The slot of the first entry whose id is >= key_id, and whether it is equal. */
static size_t slot_find(const struct kr_chunk *ch, const char *key_id, int *found)
{
	size_t lo = 0, hi = ch->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(id_of(&ch->e[mid]), key_id) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < ch->n && strcmp(id_of(&ch->e[lo]), key_id) == 0;
	return lo;
}

struct kr_entry *kr_index_find(const struct kr_index *ix, const char *key_id)
{
	size_t c, s;
	int found;

	if (key_id == NULL || ix->n_chunks == 0)
		return NULL;
	c = dir_find(ix, key_id);
	s = slot_find(ix->chunks[c], key_id, &found);
	return found ? &ix->chunks[c]->e[s] : NULL;
}

struct kr_entry *kr_index_last(const struct kr_index *ix)
{
	struct kr_chunk *ch;

	if (ix->n_chunks == 0)
		return NULL;
	ch = ix->chunks[ix->n_chunks - 1];
	return &ch->e[ch->n - 1];
}

/* --- growing ------------------------------------------------------------ */

static size_t chunk_bytes(size_t cap)
{
	return sizeof(struct kr_chunk) + cap * sizeof(struct kr_entry);
}

static int nomem(kms_err *err)
{
	return kms_errf(err, KMS_ERR_NOMEM, "out of memory growing the key index");
}

/* Room for one more chunk in the directory, and that chunk, empty. */
static int chunk_prepare(struct kr_index *ix, size_t cap, struct kr_chunk **out, kms_err *err)
{
	if (ix->n_chunks == ix->cap_chunks) {
		size_t n = ix->cap_chunks ? ix->cap_chunks * 2 : 16;
		struct kr_chunk **grown = kms_realloc(ix->chunks, n * sizeof(*grown));

		if (grown == NULL)
			return nomem(err);
		ix->chunks = grown;
		ix->cap_chunks = n;
	}
	*out = kms_malloc(chunk_bytes(cap));
	if (*out == NULL)
		return nomem(err);
	(*out)->n = 0;
	(*out)->cap = cap;
	return KMS_OK;
}

/* Room for one more entry in chunk c, which holds fewer than KR_CHUNK_MAX. */
static int chunk_room(struct kr_index *ix, size_t c, kms_err *err)
{
	struct kr_chunk *ch = ix->chunks[c], *grown;
	size_t cap = ch->cap + KR_CHUNK_STEP < KR_CHUNK_MAX ? ch->cap + KR_CHUNK_STEP : KR_CHUNK_MAX;

	if (ch->n < ch->cap)
		return KMS_OK;
	grown = kms_realloc(ch, chunk_bytes(cap));
	if (grown == NULL)
		return nomem(err);
	grown->cap = cap;
	ix->chunks[c] = grown;
	return KMS_OK;
}

/* Gives chunk c's room beyond one step back (best effort: it may stay). */
static void chunk_trim(struct kr_index *ix, size_t c)
{
	size_t cap = ix->chunks[c]->n + KR_CHUNK_STEP;
	struct kr_chunk *shrunk;

	if (cap >= ix->chunks[c]->cap)
		return;
	shrunk = kms_realloc(ix->chunks[c], chunk_bytes(cap));
	if (shrunk == NULL)
		return;
	shrunk->cap = cap;
	ix->chunks[c] = shrunk;
}

static void dir_put(struct kr_index *ix, size_t at, struct kr_chunk *ch)
{
	memmove(&ix->chunks[at + 1], &ix->chunks[at], (ix->n_chunks - at) * sizeof(*ix->chunks));
	ix->chunks[at] = ch;
	ix->n_chunks++;
}

static void chunk_put(struct kr_chunk *ch, size_t s, const struct kr_entry *e)
{
	memmove(&ch->e[s + 1], &ch->e[s], (ch->n - s) * sizeof(ch->e[0]));
	memcpy(&ch->e[s], e, sizeof(*e));
	ch->n++;
}

int kr_index_append(struct kr_index *ix, const struct kr_entry *e, kms_err *err)
{
	const struct kr_entry *last = kr_index_last(ix);
	struct kr_chunk *fresh;

	if (last != NULL && strcmp(id_of(last), id_of(e)) >= 0)
		return kms_errf(err, KMS_ERR_INVALID, "key '%s' does not come after key '%s'",
				id_of(e), id_of(last));
	if (last != NULL && ix->chunks[ix->n_chunks - 1]->n < KR_CHUNK_MAX) {
		KMS_TRY(chunk_room(ix, ix->n_chunks - 1, err));
		chunk_put(ix->chunks[ix->n_chunks - 1], ix->chunks[ix->n_chunks - 1]->n, e);
	} else {
		KMS_TRY(chunk_prepare(ix, KR_CHUNK_STEP, &fresh, err));
		chunk_put(fresh, 0, e);
		dir_put(ix, ix->n_chunks, fresh);
	}
	ix->n++;
	return KMS_OK;
}

int kr_index_insert(struct kr_index *ix, const struct kr_entry *e, kms_err *err)
{
	const char *id = id_of(e);
	struct kr_chunk *ch, *fresh;
	size_t c, s, half = KR_CHUNK_MAX / 2;
	int found;

	if (ix->n_chunks == 0)
		return kr_index_append(ix, e, err);
	c = dir_find(ix, id);
	ch = ix->chunks[c];
	s = slot_find(ch, id, &found);
	if (found)
		return kms_errf(err, KMS_ERR_EXISTS, "key '%s' already exists", id);
	if (ch->n < KR_CHUNK_MAX) {
		KMS_TRY(chunk_room(ix, c, err));
		chunk_put(ix->chunks[c], s, e);
		ix->n++;
		return KMS_OK;
	}
	if ((s == ch->n && c + 1 == ix->n_chunks) || (s == 0 && c == 0)) {
		/* Past the last id or before the first: ids that come in order
		 * fill chunks whole. */
		KMS_TRY(chunk_prepare(ix, KR_CHUNK_STEP, &fresh, err));
		chunk_put(fresh, 0, e);
		dir_put(ix, s == 0 ? 0 : c + 1, fresh);
	} else {
		KMS_TRY(chunk_prepare(ix, ch->n - half + KR_CHUNK_STEP, &fresh, err));
		memcpy(fresh->e, &ch->e[half], (ch->n - half) * sizeof(ch->e[0]));
		fresh->n = ch->n - half;
		ch->n = half;
		if (s <= half)
			chunk_put(ch, s, e);
		else
			chunk_put(fresh, s - half, e);
		dir_put(ix, c + 1, fresh);
		chunk_trim(ix, c);
	}
	ix->n++;
	return KMS_OK;
}

/* --- walking ------------------------------------------------------------ */

void kr_index_first(const struct kr_index *ix, struct kr_cursor *cur)
{
	cur->ix = ix;
	cur->chunk = 0;
	cur->slot = 0;
}

void kr_index_seek_after(const struct kr_index *ix, const char *key_id, struct kr_cursor *cur)
{
	int found;

	kr_index_first(ix, cur);
	if (key_id == NULL || ix->n_chunks == 0)
		return;
	cur->chunk = dir_find(ix, key_id);
	cur->slot = slot_find(ix->chunks[cur->chunk], key_id, &found);
	if (found)
		cur->slot++;
	if (cur->slot == ix->chunks[cur->chunk]->n) {
		cur->chunk++;
		cur->slot = 0;
	}
}

struct kr_entry *kr_cursor_next(struct kr_cursor *cur)
{
	struct kr_chunk *ch;
	struct kr_entry *e;

	if (cur->chunk >= cur->ix->n_chunks)
		return NULL;
	ch = cur->ix->chunks[cur->chunk];
	e = &ch->e[cur->slot];
	if (++cur->slot == ch->n) {
		cur->chunk++;
		cur->slot = 0;
	}
	return e;
}
