/* keyring_handles.c - the key ring's node-local HSM handle cache: reference-counted handles of unwrapped master-key versions, kept across restore, released when their last user is done. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/*
 * Who owns what. A kms_key_handle is one master-key version unwrapped into
 * this node's HSM (a PKCS#11 session object). Its references are counted:
 * one belongs to the key ring's slot of that version (kr_entry.handles[i])
 * while the version is in the key ring, one to every kms_key_use that names
 * it. A reference is only ever taken from one that is held and cannot go
 * meanwhile: from a slot under the key ring's lock (resolve, set_handle),
 * or at creation. So a count that reached 0 never rises again, and the
 * thread that drops the last reference alone calls the release function
 * (C_DestroyObject, in the node) and frees the handle: no HSM object is
 * used after it is destroyed, and its number, which a module may give to
 * a new object (PKCS#11 allows it), is never used after that either.
 *
 * Which thread. Request threads lend (resolve), record (set_handle) and
 * drop (kms_keyring_use_release) references; the Raft thread carries the
 * unchanged ones over at restore and drops the rest; the owner drops the
 * key ring's references at free. The count is atomic; a slot changes only
 * under the write lock; the release function never runs under the lock.
 * Each handle keeps the release function it was recorded with, so a use
 * released after a restore (or after kms_keyring_free) still releases it.
 *
 * The key ring does no I/O: the release function is its only way out.
 *
 * How many. A real HSM holds a few thousand objects, not one per key of a
 * large key ring, so the key ring records at most a bound of handles
 * ([hsm] max_unwrapped_versions) and evicts the least recently used to
 * record one more. Eviction only empties a slot and drops the slot's
 * reference: a call that holds the handle keeps its object until it is
 * done, and the next resolve finds no handle and unwraps again.
 *
 * Recency costs the read path one relaxed store: every lend copies the key
 * ring's tick (advanced by each recorded handle) into the handle's
 * last_used. The heap of recorded handles is keyed by the last use
 * eviction has seen; eviction looks at the top and, if the handle was used
 * since (or a call holds it), re-keys it and looks again (lazy LRU: each
 * re-key pays for at least one use, so eviction costs O(log n) per
 * recording on average). A run of re-keys is bounded so that one recording
 * never holds the write lock for long; past it the top goes regardless.
 *
 * The handle itself and its two primitives, lend and drop, are in
 * keyring_internal.h (inline: every resolve takes a reference, and the fuzz
 * targets link the key ring's other files without this one); what restore
 * keeps is decided in keyring_state.c (kr_handles_carry).
 */

/* --- the LRU bound ------------------------------------------------------ */

/*
 * Re-keys per recording before the top is evicted regardless. Each costs a
 * lookup by key id (a binary search) under the write lock; 256 of them
 * take well under a millisecond with a million keys.
 */
#define LRU_REKEY_MAX 256

static size_t lru_limit(const struct kr_lru *l)
{
	return l->limit != 0 ? l->limit : KMS_KEYRING_HANDLES_DEFAULT;
}

/*
 * Older first. Within one tick the recording that advanced it came before
 * every use stamped with it (stamp == gen: stamped by its recording); uses
 * within one tick are not ordered: the one recorded first goes first.
 */
static int lru_before(const struct kr_lru_entry *a, const struct kr_lru_entry *b)
{
	int ra = a->stamp == a->gen, rb = b->stamp == b->gen;

	if (a->stamp != b->stamp)
		return a->stamp < b->stamp;
	if (ra != rb)
		return ra;
	return a->gen < b->gen;
}

static void lru_swap(struct kr_lru *l, size_t i, size_t j)
{
	struct kr_lru_entry t = l->heap[i];

	l->heap[i] = l->heap[j];
	l->heap[j] = t;
}

static void lru_sift_up(struct kr_lru *l, size_t i)
{
	while (i > 0 && lru_before(&l->heap[i], &l->heap[(i - 1) / 2])) {
		lru_swap(l, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void lru_sift_down(struct kr_lru *l, size_t i)
{
	for (;;) {
		size_t c = 2 * i + 1, m = i;

		if (c < l->n && lru_before(&l->heap[c], &l->heap[m]))
			m = c;
		if (c + 1 < l->n && lru_before(&l->heap[c + 1], &l->heap[m]))
			m = c + 1;
		if (m == i)
			return;
		lru_swap(l, i, m);
		i = m;
	}
}

static void lru_pop(struct kr_lru *l)
{
	kms_free(l->heap[0].key_id);
	l->heap[0] = l->heap[--l->n];
	lru_sift_down(l, 0);
}

/*
 * The slot that holds x's handle, found by key id and version (write lock
 * held), or NULL when x is stale: its version is gone, or its slot was
 * emptied or holds another handle since (restore, or a version dropped).
 */
static kms_key_handle **lru_slot(kms_keyring *kr, const struct kr_lru_entry *x)
{
	struct kr_entry *e = kr_find_entry(kr, x->key_id);
	long idx;

	if (e == NULL)
		return NULL;
	idx = kr_version_index(e->rec, x->version);
	if (idx < 0 || e->handles[idx] == NULL || e->handles[idx]->gen != x->gen)
		return NULL;
	return &e->handles[idx];
}

/*
 * Removes the top of the heap, write lock held. Returns its handle, taken
 * out of its slot with the slot's reference (the caller drops it outside
 * the lock), or NULL when the entry was stale: room made, nothing evicted.
 */
static kms_key_handle *lru_evict_one(kms_keyring *kr)
{
	struct kr_lru *l = &kr->lru;
	unsigned rekeys = 0;

	while (l->n > 0) {
		struct kr_lru_entry *top = &l->heap[0];
		kms_key_handle **slot = lru_slot(kr, top), *kh;
		uint64_t last;

		if (slot == NULL) {
			lru_pop(l);
			return NULL;
		}
		kh = *slot;
		if (rekeys < LRU_REKEY_MAX) {
			/* Lends happen under the read lock: none run now. */
			last = atomic_load_explicit(&kh->last_used, memory_order_relaxed);
			if (last > top->stamp) {
				top->stamp = last;
				lru_sift_down(l, 0);
				rekeys++;
				continue;
			}
			/* Held by a call: it is being used right now. */
			if (atomic_load_explicit(&kh->refs, memory_order_relaxed) > 1) {
				top->stamp = atomic_load_explicit(&l->tick, memory_order_relaxed);
				lru_sift_down(l, 0);
				rekeys++;
				continue;
			}
		}
		*slot = NULL;
		lru_pop(l);
		return kh;
	}
	return NULL;
}

/*
 * Makes kh the newest recorded handle of key_id's version, evicting one if
 * the bound is reached (*victim, to drop outside the lock). Write lock
 * held; the caller puts kh in its slot on KMS_OK. KMS_ERR_NOMEM leaves
 * everything as it was: kh is then not recorded.
 */
static int lru_record(kms_keyring *kr, const char *key_id, uint32_t version,
		      kms_key_handle *kh, kms_key_handle **victim)
{
	struct kr_lru *l = &kr->lru;
	struct kr_lru_entry *x;
	uint64_t tick;
	char *id;

	*victim = NULL;
	id = kms_strdup(key_id);
	if (id == NULL)
		return KMS_ERR_NOMEM;
	if (l->n < lru_limit(l) && l->n == l->cap) {
		size_t cap = l->cap < 8 ? 16 : l->cap * 2;
		struct kr_lru_entry *grown;

		if (cap > lru_limit(l))
			cap = lru_limit(l);
		grown = kms_realloc(l->heap, cap * sizeof(*grown));
		if (grown == NULL) {
			kms_free(id);
			return KMS_ERR_NOMEM;
		}
		l->heap = grown;
		l->cap = cap;
	}
	/* The bound holds before (set_handle_limit evicts down to it at once),
	 * so one removal makes room. */
	if (l->n >= lru_limit(l))
		*victim = lru_evict_one(kr);
	/* The only writer of the tick, under the write lock. */
	tick = atomic_load_explicit(&l->tick, memory_order_relaxed) + 1;
	atomic_store_explicit(&l->tick, tick, memory_order_relaxed);
	kh->gen = tick;
	kh->clock = &l->tick;
	atomic_store_explicit(&kh->last_used, tick, memory_order_relaxed);
	x = &l->heap[l->n++];
	x->stamp = tick;
	x->gen = tick;
	x->key_id = id;
	x->version = version;
	lru_sift_up(l, l->n - 1);
	return KMS_OK;
}

void kr_lru_prune(kms_keyring *kr)
{
	struct kr_lru *l = &kr->lru;
	size_t i, kept = 0;

	for (i = 0; i < l->n; i++) {
		if (lru_slot(kr, &l->heap[i]) == NULL) {
			kms_free(l->heap[i].key_id);
			continue;
		}
		l->heap[kept++] = l->heap[i];
	}
	l->n = kept;
	for (i = kept / 2; i-- > 0;)
		lru_sift_down(l, i);
}

void kr_lru_free(kms_keyring *kr)
{
	for (size_t i = 0; i < kr->lru.n; i++)
		kms_free(kr->lru.heap[i].key_id);
	kms_free(kr->lru.heap);
	kr->lru.heap = NULL;
	kr->lru.n = kr->lru.cap = 0;
}

void kms_keyring_set_handle_limit(kms_keyring *kr, size_t max)
{
	if (max == 0)
		max = 1;
	/* One eviction per turn of the lock: the release runs outside it. */
	for (;;) {
		kms_key_handle *victim = NULL;

		pthread_rwlock_wrlock(&kr->lock);
		kr->lru.limit = max;
		while (victim == NULL && kr->lru.n > max)
			victim = lru_evict_one(kr);
		pthread_rwlock_unlock(&kr->lock);
		if (victim == NULL)
			return;
		kr_handle_drop(victim);
	}
}

size_t kms_keyring_handle_count(kms_keyring *kr)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->lru.n;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/* --- recording and releasing -------------------------------------------- */

void kms_keyring_use_release(kms_key_use *use)
{
	kms_key_handle *kh;

	if (use == NULL)
		return;
	kh = use->ref;
	use->ref = NULL;
	use->handle = 0;
	kr_handle_drop(kh);
}

/*
 * The key ring's release function, read under the lock, applied outside
 * it to a handle the key ring never recorded.
 */
static void release_unrecorded(kms_keyring *kr, unsigned long handle)
{
	kms_keyring_release_fn fn;
	void *arg;

	pthread_rwlock_rdlock(&kr->lock);
	fn = kr->release;
	arg = kr->release_arg;
	pthread_rwlock_unlock(&kr->lock);
	if (fn != NULL)
		fn(arg, handle);
}

int kms_keyring_set_handle(kms_keyring *kr, const char *key_id,
			   unsigned long handle, kms_key_use *use,
			   kms_err *err)
{
	kms_key_handle *mine, *lost = NULL, *victim = NULL;
	struct kr_entry *e;
	long idx = -1;

	if (handle == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"handle 0 names no object");
	if (key_id == NULL || use->ref != NULL) {
		release_unrecorded(kr, handle);
		return kms_errf(err, KMS_ERR_INVALID, "%s",
				key_id == NULL ? "no key id for a handle"
					       : "the key use holds a handle already");
	}
	mine = kms_malloc(sizeof(*mine));
	if (mine == NULL) {
		release_unrecorded(kr, handle);
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory recording a key handle");
	}
	atomic_init(&mine->refs, 1); /* the use's */
	mine->handle = handle;
	mine->gen = 0;
	mine->clock = NULL;
	atomic_init(&mine->last_used, 0);

	pthread_rwlock_wrlock(&kr->lock);
	mine->release = kr->release;
	mine->release_arg = kr->release_arg;
	e = kr_find_entry(kr, key_id);
	if (e != NULL)
		idx = kr_version_index(e->rec, use->version);
	/*
	 * Only a handle of the material the slot's version holds goes into
	 * the slot. One unwrapped from material a snapshot install has since
	 * replaced or removed serves the call that resolved it, and no other.
	 */
	if (idx >= 0 &&
	    kr_same_material(e->rec->versions[idx], use->wrapped, use->wrapped_len)) {
		if (e->handles[idx] == NULL) {
			/* Out of memory for the LRU entry: not recorded, it serves
			 * this use alone (as below). Eviction empties another slot,
			 * never a realloc: e stays valid. */
			if (lru_record(kr, key_id, use->version, mine, &victim) == KMS_OK) {
				atomic_fetch_add_explicit(&mine->refs, 1,
							  memory_order_relaxed);
				e->handles[idx] = mine; /* the slot's reference */
			}
		} else {
			/* First writer wins; ours goes. */
			lost = mine;
			kr_handle_lend(e->handles[idx], use);
		}
	}
	pthread_rwlock_unlock(&kr->lock);
	/* The evicted one's object goes now, or with the last call using it. */
	kr_handle_drop(victim);
	if (lost != NULL) {
		kr_handle_drop(lost);
		return KMS_OK;
	}
	use->handle = mine->handle;
	use->ref = mine;
	return KMS_OK;
}
