/* keyring_aliases.c - the replicated alias table: "alias/<name>" pointing at one key id; apply of CreateAlias, UpdateAlias and DeleteAlias, lookups and listing. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"

/* --- names --- */

int kms_is_alias_name(const char *name)
{
	return name != NULL && strncmp(name, KMS_ALIAS_PREFIX, KMS_ALIAS_PREFIX_LEN) == 0;
}

static int alias_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '/' || c == '-';
}

int kms_alias_name_check(const char *name, kms_err *err)
{
	size_t len;

	KMS_ENSURE(name != NULL && name[0] != '\0', err, KMS_ERR_INVALID,
		   "alias name is missing");
	KMS_ENSURE(kms_is_alias_name(name), err, KMS_ERR_INVALID,
		   "an alias name starts with \"" KMS_ALIAS_PREFIX "\"");
	/* Bounded: never scan past one byte beyond the longest name. */
	len = strnlen(name, KMS_ALIAS_NAME_MAX + 1);
	KMS_ENSURE(len > KMS_ALIAS_PREFIX_LEN, err, KMS_ERR_INVALID,
		   "alias name has nothing after \"" KMS_ALIAS_PREFIX "\"");
	KMS_ENSURE(len <= KMS_ALIAS_NAME_MAX, err, KMS_ERR_INVALID,
		   "alias name is longer than %d characters after \"" KMS_ALIAS_PREFIX "\"",
		   KMS_ALIAS_NAME_MAX - KMS_ALIAS_PREFIX_LEN);
	for (size_t i = KMS_ALIAS_PREFIX_LEN; i < len; i++)
		KMS_ENSURE(alias_char(name[i]), err, KMS_ERR_INVALID,
			   "alias name has a character outside [A-Za-z0-9._/-] at position %zu",
			   i + 1);
	return KMS_OK;
}

int kms_key_name_check(const char *name, kms_err *err)
{
	if (kms_is_alias_name(name))
		return kms_alias_name_check(name, err);
	return kms_key_id_check(name, err);
}

int kms_keyring_new_key_id_check(const char *key_id, kms_err *err)
{
	KMS_TRY(kms_key_id_check(key_id, err));
	KMS_ENSURE(!kms_is_alias_name(key_id), err, KMS_ERR_INVALID,
		   "a key id may not start with \"" KMS_ALIAS_PREFIX "\": that prefix names "
		   "aliases");
	return KMS_OK;
}

int kr_alias_target_check(const char *key_id, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	KMS_ENSURE(key_id != NULL && key_id[0] != '\0', err, KMS_ERR_INVALID,
		   "an alias needs the key id it points at");
	KMS_ENSURE(!kms_is_alias_name(key_id), err, KMS_ERR_INVALID,
		   "an alias points at a key id, not at another alias ('%s')",
		   kms_quote(key_id, q));
	return kms_key_id_check(key_id, err);
}

/* --- records --- */

static void alias_free(Kms__V1__AliasRecord *a)
{
	if (a == NULL)
		return;
	kms_free(a->alias_name);
	kms_free(a->key_id);
	kms_free(a);
}

static Kms__V1__AliasRecord *alias_new(const char *name, const char *key_id, int64_t created,
				       int64_t updated)
{
	Kms__V1__AliasRecord *a = kms_malloc(sizeof(*a));

	if (a == NULL)
		return NULL;
	kms__v1__alias_record__init(a);
	a->alias_name = kms_strdup(name);
	a->key_id = kms_strdup(key_id);
	a->created_at_unix = created;
	a->updated_at_unix = updated;
	if (a->alias_name == NULL || a->key_id == NULL) {
		alias_free(a);
		return NULL;
	}
	return a;
}

void kr_aliases_free(struct kr_alias_table *t)
{
	for (size_t i = 0; i < t->n; i++)
		alias_free(t->aliases[i]);
	kms_free(t->aliases);
	kms_free(t->by_key);
	memset(t, 0, sizeof(*t));
}

/* The order of by_key[]: key id, then name. */
static int by_key_cmp(const Kms__V1__AliasRecord *a, const char *key_id, const char *name)
{
	int c = strcmp(a->key_id, key_id);

	return c != 0 ? c : strcmp(a->alias_name, name);
}

static int by_key_qsort(const void *x, const void *y)
{
	const Kms__V1__AliasRecord *a = *(Kms__V1__AliasRecord *const *)x;
	const Kms__V1__AliasRecord *b = *(Kms__V1__AliasRecord *const *)y;

	return by_key_cmp(a, b->key_id, b->alias_name);
}

/* Binary searches (lock held): the first index whose entry is >= the key. */
static size_t name_pos(const struct kms_keyring *kr, const char *name, int *found)
{
	size_t lo = 0, hi = kr->n_aliases;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(kr->aliases[mid]->alias_name, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < kr->n_aliases && strcmp(kr->aliases[lo]->alias_name, name) == 0;
	return lo;
}

static size_t key_pos(const struct kms_keyring *kr, const char *key_id, const char *name)
{
	size_t lo = 0, hi = kr->n_aliases;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (by_key_cmp(kr->by_key[mid], key_id, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const Kms__V1__AliasRecord *kr_alias_find(const struct kms_keyring *kr, const char *name)
{
	int found;
	size_t pos = name_pos(kr, name, &found);

	return found ? kr->aliases[pos] : NULL;
}

const char *kr_name_to_key_id(const struct kms_keyring *kr, const char *name)
{
	const Kms__V1__AliasRecord *a;

	if (!kms_is_alias_name(name))
		return name;
	a = kr_alias_find(kr, name);
	if (a != NULL)
		return a->key_id;
	/* A key an earlier version let take such an id. */
	return kr_find_entry(kr, name) != NULL ? name : NULL;
}

size_t kr_aliases_of(const struct kms_keyring *kr, const char *key_id, size_t *first)
{
	size_t i = key_pos(kr, key_id, ""), n = 0;

	*first = i;
	while (i + n < kr->n_aliases && strcmp(kr->by_key[i + n]->key_id, key_id) == 0)
		n++;
	return n;
}

/* --- the table's two arrays (write lock held) --- */

static int table_reserve(kms_keyring *kr, kms_err *err)
{
	Kms__V1__AliasRecord **a, **b;
	size_t cap;

	if (kr->n_aliases < kr->cap_aliases)
		return KMS_OK;
	cap = kr->cap_aliases ? kr->cap_aliases * 2 : 16;
	a = kms_realloc(kr->aliases, cap * sizeof(*a));
	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory adding an alias");
	kr->aliases = a;
	b = kms_realloc(kr->by_key, cap * sizeof(*b));
	if (b == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory adding an alias");
	kr->by_key = b;
	/* Both hold cap now; a failure between leaves a larger first array. */
	kr->cap_aliases = cap;
	return KMS_OK;
}

static void array_insert(Kms__V1__AliasRecord **arr, size_t n, size_t pos,
			 Kms__V1__AliasRecord *a)
{
	memmove(&arr[pos + 1], &arr[pos], (n - pos) * sizeof(*arr));
	arr[pos] = a;
}

static void array_remove(Kms__V1__AliasRecord **arr, size_t n, size_t pos)
{
	memmove(&arr[pos], &arr[pos + 1], (n - pos - 1) * sizeof(*arr));
}

static void by_key_insert(kms_keyring *kr, Kms__V1__AliasRecord *a)
{
	array_insert(kr->by_key, kr->n_aliases, key_pos(kr, a->key_id, a->alias_name), a);
}

static void by_key_remove(kms_keyring *kr, const Kms__V1__AliasRecord *a)
{
	array_remove(kr->by_key, kr->n_aliases, key_pos(kr, a->key_id, a->alias_name));
}

/* --- apply --- */

/* An alias may point at a key that exists and is not destroyed (lock held). */
static int target_usable(const struct kms_keyring *kr, const char *key_id, kms_err *err)
{
	struct kr_entry *e;

	KMS_TRY(kr_entry_for_write(kr, key_id, &e, err));
	if (kr_key_state(e->rec) == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"key '%s' was destroyed: no alias may point at it", key_id);
	return KMS_OK;
}

/* An alias of a multi-region key is its primary region's to change. */
static int alias_changeable(const struct kms_keyring *kr, const Kms__V1__AliasRecord *a,
			    kms_err *err)
{
	const struct kr_entry *e = kr_find_entry(kr, a->key_id);

	return e != NULL ? kr_home_check(kr, e->rec, err) : KMS_OK;
}

int kr_apply_create_alias(kms_keyring *kr, const Kms__V1__CreateAliasCommand *c, int dry,
			  kms_err *err)
{
	Kms__V1__AliasRecord *a = NULL;
	size_t pos;
	int found, rc;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "CreateAlias command holds nothing");
	KMS_TRY(kms_alias_name_check(c->alias_name, err));
	KMS_TRY(kr_alias_target_check(c->key_id, err));
	if (!dry) {
		a = alias_new(c->alias_name, c->key_id, c->now_unix, c->now_unix);
		if (a == NULL)
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory adding an alias");
	}
	kr_lock(kr, dry);
	pos = name_pos(kr, c->alias_name, &found);
	if (found) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "alias '%s' already exists", c->alias_name);
		goto out;
	}
	/* A key an earlier version let take such an id keeps its name. */
	if (kr_find_entry(kr, c->alias_name) != NULL) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "a key named '%s' already exists",
			      c->alias_name);
		goto out;
	}
	if (kr->n_aliases >= KMS_ALIASES_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "the key ring holds %d aliases, the most it may: delete one first",
			      KMS_ALIASES_MAX);
		goto out;
	}
	KMS_TRY_GOTO(rc, target_usable(kr, c->key_id, err), out);
	if (dry)
		goto out;
	KMS_TRY_GOTO(rc, table_reserve(kr, err), out);
	by_key_insert(kr, a);
	array_insert(kr->aliases, kr->n_aliases, pos, a);
	kr->n_aliases++;
	a = NULL;
	/* A multi-region key's aliases travel with it. */
	kr_region_touch_locked(kr, c->key_id);
out:
	pthread_rwlock_unlock(&kr->lock);
	alias_free(a);
	return rc;
}

int kr_apply_update_alias(kms_keyring *kr, const Kms__V1__UpdateAliasCommand *c, int dry,
			  kms_err *err)
{
	Kms__V1__AliasRecord *a;
	char *fresh = NULL, *old = NULL;
	size_t pos;
	int found, rc;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "UpdateAlias command holds nothing");
	KMS_TRY(kms_alias_name_check(c->alias_name, err));
	KMS_TRY(kr_alias_target_check(c->key_id, err));
	if (!dry && (fresh = kms_strdup(c->key_id)) == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory updating an alias");
	kr_lock(kr, dry);
	pos = name_pos(kr, c->alias_name, &found);
	if (!found) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "alias '%s' not found", c->alias_name);
		goto out;
	}
	KMS_TRY_GOTO(rc, alias_changeable(kr, kr->aliases[pos], err), out);
	KMS_TRY_GOTO(rc, target_usable(kr, c->key_id, err), out);
	if (dry)
		goto out;
	a = kr->aliases[pos];
	/* Its place in by_key[] follows its key id. */
	by_key_remove(kr, a);
	kr->n_aliases--;
	old = a->key_id;
	a->key_id = fresh;
	fresh = NULL;
	a->updated_at_unix = c->now_unix;
	by_key_insert(kr, a);
	kr->n_aliases++;
	kr_region_touch_locked(kr, old);
	kr_region_touch_locked(kr, a->key_id);
out:
	pthread_rwlock_unlock(&kr->lock);
	kms_free(fresh);
	kms_free(old);
	return rc;
}

int kr_apply_delete_alias(kms_keyring *kr, const Kms__V1__DeleteAliasCommand *c, int dry,
			  kms_err *err)
{
	Kms__V1__AliasRecord *gone = NULL;
	size_t pos;
	int found, rc = KMS_OK;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "DeleteAlias command holds nothing");
	KMS_TRY(kms_alias_name_check(c->alias_name, err));
	kr_lock(kr, dry);
	pos = name_pos(kr, c->alias_name, &found);
	if (!found)
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "alias '%s' not found", c->alias_name);
	else
		rc = alias_changeable(kr, kr->aliases[pos], err);
	if (rc == KMS_OK && !dry) {
		gone = kr->aliases[pos];
		by_key_remove(kr, gone);
		array_remove(kr->aliases, kr->n_aliases, pos);
		kr->n_aliases--;
		kr_region_touch_locked(kr, gone->key_id);
	}
	pthread_rwlock_unlock(&kr->lock);
	alias_free(gone);
	return rc;
}

/* --- regions: a multi-region key's aliases, as its primary has them --- */

int kr_aliases_set_for_key(kms_keyring *kr, const char *key_id, Kms__V1__AliasRecord *const *in,
			   size_t n, Kms__V1__RegionLinkRecord *l, kms_err *err)
{
	size_t first, held = kr_aliases_of(kr, key_id, &first);

	/* Drop the ones held (the primary's, as replicated before). */
	while (held-- > 0) {
		Kms__V1__AliasRecord *a = kr->by_key[first];
		int found;
		size_t pos = name_pos(kr, a->alias_name, &found);

		array_remove(kr->by_key, kr->n_aliases, first);
		array_remove(kr->aliases, kr->n_aliases, pos);
		kr->n_aliases--;
		alias_free(a);
	}
	for (size_t i = 0; i < n; i++) {
		Kms__V1__AliasRecord *a;
		int found;
		size_t pos;

		if (strcmp(in[i]->key_id, key_id) != 0)
			continue;
		pos = name_pos(kr, in[i]->alias_name, &found);
		/* This region's own alias (or key) holds the name: it stays. */
		if (found || kr_find_entry(kr, in[i]->alias_name) != NULL ||
		    kr->n_aliases >= KMS_ALIASES_MAX) {
			kr_region_conflict(l, in[i]->alias_name);
			continue;
		}
		a = alias_new(in[i]->alias_name, key_id, in[i]->created_at_unix,
			      in[i]->updated_at_unix);
		if (a == NULL || table_reserve(kr, err) != KMS_OK) {
			alias_free(a);
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory applying aliases");
		}
		by_key_insert(kr, a);
		array_insert(kr->aliases, kr->n_aliases, pos, a);
		kr->n_aliases++;
	}
	return KMS_OK;
}

int kms_keyring_aliases_of_keys(kms_keyring *kr, Kms__V1__KeyRecord *const *keys, size_t n,
				Kms__V1__AliasRecord ***out, size_t *n_out, kms_err *err)
{
	Kms__V1__AliasRecord **copies = NULL;
	size_t total = 0, k = 0;
	int rc = KMS_OK;

	*out = NULL;
	*n_out = 0;
	pthread_rwlock_rdlock(&kr->lock);
	for (size_t i = 0; i < n; i++) {
		size_t first;

		size_t m = kr_aliases_of(kr, keys[i]->key_id, &first);

		total += m < KMS_REGION_ALIASES_PER_KEY ? m : KMS_REGION_ALIASES_PER_KEY;
	}
	if (total > 0 && (copies = kms_calloc(total, sizeof(*copies))) == NULL)
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading aliases");
	for (size_t i = 0; i < n && rc == KMS_OK; i++) {
		size_t first, m = kr_aliases_of(kr, keys[i]->key_id, &first);

		/* The first ones by name; the secondary counts no more. */
		if (m > KMS_REGION_ALIASES_PER_KEY)
			m = KMS_REGION_ALIASES_PER_KEY;
		for (size_t j = 0; j < m && rc == KMS_OK; j++) {
			copies[k] = alias_new(kr->by_key[first + j]->alias_name,
					      kr->by_key[first + j]->key_id,
					      kr->by_key[first + j]->created_at_unix,
					      kr->by_key[first + j]->updated_at_unix);
			if (copies[k] == NULL)
				rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading aliases");
			else
				k++;
		}
	}
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK) {
		kms_keyring_aliases_free(copies, k);
		return rc;
	}
	*out = copies;
	*n_out = k;
	return KMS_OK;
}

void kms_keyring_aliases_free(Kms__V1__AliasRecord **a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		alias_free(a[i]);
	kms_free(a);
}

/* --- restore --- */

int kr_aliases_build(Kms__V1__AliasRecord *const *src, size_t n,
		     const struct kr_index *keys, struct kr_alias_table *out,
		     kms_err *err)
{
	struct kr_alias_table t = {0};
	int rc = KMS_OK;

	memset(out, 0, sizeof(*out));
	if (n > KMS_ALIASES_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "snapshot holds %zu aliases, more than %d", n,
				KMS_ALIASES_MAX);
	for (size_t i = 0; i < n; i++) {
		if (src[i] == NULL)
			return kms_errf(err, KMS_ERR_INVALID, "snapshot alias %zu is missing", i + 1);
		KMS_TRY(kms_alias_name_check(src[i]->alias_name, err));
		KMS_TRY(kr_alias_target_check(src[i]->key_id, err));
		if (i > 0 && strcmp(src[i - 1]->alias_name, src[i]->alias_name) >= 0)
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot aliases are out of order or repeated at '%s'",
					src[i]->alias_name);
		if (kr_index_find(keys, src[i]->key_id) == NULL)
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot alias '%s' points at key '%s', which it does not "
					"hold",
					src[i]->alias_name, src[i]->key_id);
	}
	t.aliases = kms_calloc(n > 0 ? n : 1, sizeof(*t.aliases));
	t.by_key = kms_calloc(n > 0 ? n : 1, sizeof(*t.by_key));
	if (t.aliases == NULL || t.by_key == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring the aliases");
		goto out;
	}
	for (; t.n < n; t.n++) {
		t.aliases[t.n] = alias_new(src[t.n]->alias_name, src[t.n]->key_id,
					   src[t.n]->created_at_unix, src[t.n]->updated_at_unix);
		if (t.aliases[t.n] == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring the aliases");
			goto out;
		}
	}
	memcpy(t.by_key, t.aliases, n * sizeof(*t.by_key));
	qsort(t.by_key, n, sizeof(*t.by_key), by_key_qsort);
	*out = t;
	return KMS_OK;
out:
	kr_aliases_free(&t);
	return rc;
}

/* --- reads --- */

static void alias_copy(kms_alias *out, const Kms__V1__AliasRecord *a)
{
	memset(out, 0, sizeof(*out));
	/* Both were checked against their bounds when they entered. */
	memcpy(out->name, a->alias_name, strnlen(a->alias_name, KMS_ALIAS_NAME_MAX));
	memcpy(out->key_id, a->key_id, strnlen(a->key_id, KMS_KEY_ID_MAX));
	out->created_at_unix = a->created_at_unix;
	out->updated_at_unix = a->updated_at_unix;
}

int kms_keyring_alias(kms_keyring *kr, const char *name, kms_alias *out, kms_err *err)
{
	const Kms__V1__AliasRecord *a;
	int rc = KMS_OK;

	if (kms_alias_name_check(name, NULL) != KMS_OK)
		return kms_errf(err, KMS_ERR_NOT_FOUND, "alias not found: the name is malformed");
	pthread_rwlock_rdlock(&kr->lock);
	a = kr_alias_find(kr, name);
	if (a == NULL)
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "alias '%s' not found", name);
	else
		alias_copy(out, a);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_names_key(kms_keyring *kr, const char *name, const char *key_id)
{
	const char *id;
	int yes;

	if (name == NULL || key_id == NULL)
		return 0;
	if (strcmp(name, key_id) == 0)
		return 1;
	if (!kms_is_alias_name(name))
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	id = kr_name_to_key_id(kr, name);
	yes = id != NULL && strcmp(id, key_id) == 0;
	pthread_rwlock_unlock(&kr->lock);
	return yes;
}

size_t kms_keyring_alias_count(kms_keyring *kr)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->n_aliases;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

int kms_keyring_list_aliases(kms_keyring *kr, const char *key_id, const char *after_name,
			     size_t page_size, kms_alias **out, size_t *n, int *more,
			     kms_err *err)
{
	Kms__V1__AliasRecord **arr;
	kms_alias *page;
	size_t i, end, got = 0;
	int found, one_key = key_id != NULL && key_id[0] != '\0';

	*out = NULL;
	*n = 0;
	*more = 0;
	if (page_size == 0 || page_size > KEYRING_PAGE_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "page size %zu is outside 1..%d", page_size,
				KEYRING_PAGE_MAX);
	if (after_name == NULL)
		after_name = "";
	page = kms_calloc(page_size, sizeof(*page));
	if (page == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory listing aliases");
	pthread_rwlock_rdlock(&kr->lock);
	if (one_key) {
		size_t first, count = kr_aliases_of(kr, key_id, &first);

		arr = kr->by_key;
		i = key_pos(kr, key_id, after_name);
		end = first + count;
		/* Strictly after the cursor. */
		if (i < end && strcmp(arr[i]->alias_name, after_name) == 0)
			i++;
	} else {
		arr = kr->aliases;
		i = name_pos(kr, after_name, &found);
		if (found)
			i++;
		end = kr->n_aliases;
	}
	for (; i < end && got < page_size; i++)
		alias_copy(&page[got++], arr[i]);
	*more = i < end;
	pthread_rwlock_unlock(&kr->lock);
	*out = page;
	*n = got;
	return KMS_OK;
}
