/* keyring_versions.c - the versions of a key: rotation, destruction, encryption reservations and this node's allowance, and what the leader's supervisor acts on. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"

/*
 * A version is Enabled (the primary encrypts; every Enabled or Exhausted
 * version decrypts), Exhausted (its reservations reached the key's
 * max_encryptions_per_version: no grant is made for it any more) or
 * Destroyed (its material wiped). Versions are only ever added at the end
 * (RotateKey) and never removed, so version v is always at index v - 1.
 *
 * Counting encryptions across nodes (NIST SP 800-38D 8.3 bounds random-IV
 * GCM to 2^32 invocations per key): a node encrypts only with encryptions
 * it reserved through Raft. ReserveEncryptions grants at most what is left
 * below the maximum and adds the grant to the version's replicated
 * reserved_encryptions before any node may use it, so the sum of every
 * node's encryptions never passes the maximum, whatever crashes: a block
 * granted to a node that dies is simply never used.
 */

void kr_exhaust_versions(Kms__V1__KeyRecord *rec)
{
	uint64_t max = kr_max_encryptions(rec);

	for (size_t i = 0; i < rec->n_versions; i++) {
		Kms__V1__KeyVersionRecord *v = rec->versions[i];

		if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED &&
		    v->reserved_encryptions >= max)
			v->state = KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED;
	}
}

/* --- RotateKey --- */

int kr_apply_rotate_key(kms_keyring *kr, const Kms__V1__RotateKeyCommand *c, int dry,
			kms_err *err)
{
	const Kms__V1__KeyVersionRecord *v;
	Kms__V1__KeyRecord shape;
	struct kr_entry *e;
	Kms__V1__KeyVersionRecord **versions = NULL;
	kms_keyring_rotated_fn rotated = NULL;
	size_t n;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "RotateKey", err));
	v = c->version;
	if (v == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "RotateKey command for key '%s' holds no "
						      "version", c->key_id);
	if (v->state != KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED ||
	    v->reserved_encryptions != 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': a new version starts Enabled, with no encryptions",
				c->key_id);
	KMS_TRY(kr_version_check(c->key_id, v, err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, kr_state_refusal(e->rec, err), out);
	KMS_TRY_GOTO(rc, kr_dk_generation_check(kr, c->domain_key_generation, err), out);
	n = e->rec->n_versions;
	if (n >= KMS_KEY_VERSIONS_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "key '%s' holds %d versions, the most a key may hold", c->key_id,
			      KMS_KEY_VERSIONS_MAX);
		goto out;
	}
	/* Two rotations proposed at once: the second names a stale number. */
	if (v->version != n + 1) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "key '%s' is at version %zu: its next version is %zu, not %u (another "
			      "rotation came first)",
			      c->key_id, n, n + 1, v->version);
		goto out;
	}
	if (dry)
		goto out;
	/* The record with one more version, copied into a new block. */
	versions = kms_malloc((n + 1) * sizeof(*versions));
	if (versions == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory rotating key '%s'", c->key_id);
		goto out;
	}
	memcpy(versions, e->rec->versions, n * sizeof(*versions));
	versions[n] = (Kms__V1__KeyVersionRecord *)v;
	shape = *e->rec;
	shape.versions = versions;
	shape.n_versions = n + 1;
	shape.primary_version = (uint32_t)(n + 1);
	shape.last_rotated_at_unix = c->now_unix;
	rc = kr_entry_rebuild(e, &shape, err);
	if (rc == KMS_OK)
		rotated = kr->rotated;
out:
	pthread_rwlock_unlock(&kr->lock);
	kms_free(versions);
	/* Outside the lock: the node only queues work for later. */
	if (rotated != NULL)
		rotated(kr->rotated_arg, c->key_id, v->version, c->now_unix);
	return rc;
}

void kms_keyring_set_rotated(kms_keyring *kr, kms_keyring_rotated_fn fn, void *arg)
{
	pthread_rwlock_wrlock(&kr->lock);
	kr->rotated = fn;
	kr->rotated_arg = arg;
	pthread_rwlock_unlock(&kr->lock);
}

int kms_keyring_primary_use(kms_keyring *kr, const char *key_id, uint32_t version,
			    kms_key_use *out, kms_err *err)
{
	const Kms__V1__KeyVersionRecord *v;
	struct kr_entry *e;
	long idx;
	int rc;

	out->handle = 0;
	out->ref = NULL;
	out->key_id[0] = '\0';
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	KMS_TRY_GOTO(rc, kr_entry_for(kr, key_id, &e, err), out);
	KMS_TRY_GOTO(rc, kr_state_refusal(e->rec, err), out);
	idx = kr_version_index(e->rec, version);
	if (idx < 0 || e->rec->primary_version != version) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "key '%s' version %u is not its primary version (%u)", key_id,
			      version, e->rec->primary_version);
		goto out;
	}
	v = e->rec->versions[idx];
	if (v->state != KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' version %u is %s", key_id,
			      version, kms_key_version_state_name(v->state));
		goto out;
	}
	kr_use_fill(e, idx, out);
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* --- DestroyKey --- */

/* The one rule of destruction, for apply (a destroy-key proposal lifts the date). */
static int destroy_check(const Kms__V1__KeyRecord *rec, int64_t now, kms_err *err)
{
	Kms__V1__KeyState state = kr_key_state(rec);
	char when[32], at[32];

	if (state == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED)
		return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' was destroyed already",
				rec->key_id);
	if (state != KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"key '%s' is %s, not pending deletion: schedule its deletion first",
				rec->key_id, kms_key_state_name(state));
	if (now < rec->deletion_at_unix) {
		kr_format_date(rec->deletion_at_unix, when);
		kr_format_date(now, at);
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"key '%s' may be destroyed from %s on, not at %s", rec->key_id,
				when, at);
	}
	return KMS_OK;
}

/* How many versions key_id holds now (0: none, or no such key). Only the
 * Raft thread adds versions, so the count holds until it applies again. */
static size_t versions_now(kms_keyring *kr, const char *key_id)
{
	struct kr_entry *e;
	size_t n = 0;

	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e != NULL)
		n = e->rec->n_versions;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

static int destroy_key(kms_keyring *kr, const Kms__V1__DestroyKeyCommand *c, int dry, int now,
		       kms_err *err);

int kr_apply_destroy_key(kms_keyring *kr, const Kms__V1__DestroyKeyCommand *c, int dry,
			 kms_err *err)
{
	return destroy_key(kr, c, dry, 0, err);
}

int kr_destroy_key_now(kms_keyring *kr, const char *key_id, int64_t now_unix, kms_err *err)
{
	Kms__V1__DestroyKeyCommand c = KMS__V1__DESTROY_KEY_COMMAND__INIT;

	c.key_id = (char *)key_id;
	c.now_unix = now_unix;
	KMS_TRY(destroy_key(kr, &c, 0, 1, err));
	/* An approved destroy-key runs inside Approve: the stream sees it here. */
	kr_region_touch(kr, key_id);
	return KMS_OK;
}

/* now: M operators approved it, so the deletion date need not have come. */
static int destroy_key(kms_keyring *kr, const Kms__V1__DestroyKeyCommand *c, int dry, int now,
		       kms_err *err)
{
	kms_key_handle **dropped = NULL;
	struct kr_entry *e;
	size_t n = 0;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "DestroyKey", err));
	/* Where the handles go until they are dropped, outside the lock. */
	if (!dry && (n = versions_now(kr, c->key_id)) > 0 &&
	    (dropped = kms_calloc(n, sizeof(*dropped))) == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory destroying key '%s'", c->key_id);
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc,
		     destroy_check(e->rec,
				   now && c->now_unix < e->rec->deletion_at_unix
					   ? e->rec->deletion_at_unix
					   : c->now_unix,
				   err),
		     out);
	if (dry)
		goto out;
	if (e->rec->n_versions != n) {
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "key '%s' changed while it was being destroyed", c->key_id);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		Kms__V1__KeyVersionRecord *v = e->rec->versions[i];

		/* Wrapped, not plaintext; wiped all the same: it is gone for good.
		 * The bytes are part of the record's block: zeroed in place. */
		kms_cleanse(v->wrapped_material.data, v->wrapped_material.len);
		v->wrapped_material.data = NULL;
		v->wrapped_material.len = 0;
		v->state = KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED;
		dropped[i] = e->handles[i];
		e->handles[i] = NULL;
	}
	kr_lru_prune(kr); /* the bound counts the handles still recorded */
	kr_set_key_state(e->rec, KMS__V1__KEY_STATE__KEY_STATE_DESTROYED);
	e->rec->destroyed_at_unix = c->now_unix;
	e->allow_version = 0;
	atomic_store(&e->allow_left, 0);
out:
	pthread_rwlock_unlock(&kr->lock);
	/* A handle a call still uses goes when that call is done. */
	for (size_t i = 0; dropped != NULL && i < n; i++)
		kr_handle_drop(dropped[i]);
	kms_free(dropped);
	return rc;
}

/* --- ReserveEncryptions and the allowance --- */

/*
 * Credits a grant for version to this node's allowance (write lock held).
 * The allowance only moves forward: a grant for an older version than the
 * one it holds is not credited (that version is no longer the primary, and
 * a version left behind is never credited twice: see
 * kms_keyring_credit_skipped_grant).
 */
static void allowance_credit(struct kr_entry *e, uint32_t version, uint64_t grant)
{
	if (version < e->allow_version)
		return;
	if (version > e->allow_version) {
		e->allow_version = version;
		atomic_store(&e->allow_left, grant);
	} else {
		atomic_fetch_add(&e->allow_left, grant);
	}
	e->allow_credits++;
}

int kr_apply_reserve_encryptions(kms_keyring *kr, const Kms__V1__ReserveEncryptionsCommand *c,
				 int dry, kms_err *err)
{
	Kms__V1__KeyVersionRecord *v;
	struct kr_entry *e;
	uint64_t max, grant = 0;
	long idx;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "ReserveEncryptions", err));
	if (c->version == 0 || c->count == 0 || c->count > KMS_ENCRYPTIONS_MAX ||
	    c->node_id == 0 || c->incarnation == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"ReserveEncryptions command for key '%s' needs a version, a count "
				"of 1..2^32, a node id and an incarnation",
				c->key_id);
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, kr_state_refusal(e->rec, err), out);
	idx = kr_version_index(e->rec, c->version);
	if (idx < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' has no version %u", c->key_id,
			      c->version);
		goto out;
	}
	v = e->rec->versions[idx];
	if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' version %u was destroyed",
			      c->key_id, c->version);
		goto out;
	}
	max = kr_max_encryptions(e->rec);
	/* An exhausted version gets nothing: no error, a grant of 0. */
	if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED &&
	    v->reserved_encryptions < max)
		grant = c->count < max - v->reserved_encryptions ? c->count
								   : max - v->reserved_encryptions;
	if (dry)
		goto out;
	v->reserved_encryptions += grant;
	if (v->reserved_encryptions >= max)
		v->state = KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED;
	/* Only this life of this node may use what it reserved. */
	if (grant > 0 && kr->self_incarnation != 0 && c->node_id == kr->self_node_id &&
	    c->incarnation == kr->self_incarnation)
		allowance_credit(e, c->version, grant);
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

void kms_keyring_set_self(kms_keyring *kr, uint64_t node_id, uint64_t incarnation)
{
	pthread_rwlock_wrlock(&kr->lock);
	kr->self_node_id = node_id;
	kr->self_incarnation = incarnation;
	pthread_rwlock_unlock(&kr->lock);
}

void kr_allowance_carry(struct kr_entry *to, const struct kr_entry *from)
{
	long k;

	/* The count goes along even with nothing left: it is what tells a
	 * grant applied here from one that came in this snapshot. */
	to->allow_credits = from->allow_credits;
	if (from->allow_version == 0)
		return;
	k = kr_version_index(to->rec, from->allow_version);
	if (k < 0 ||
	    to->rec->versions[k]->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED ||
	    kr_key_state(to->rec) == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED)
		return;
	to->allow_version = from->allow_version;
	atomic_store(&to->allow_left, atomic_load(&from->allow_left));
}

uint64_t kms_keyring_grants_credited(kms_keyring *kr, const char *key_id)
{
	struct kr_entry *e;
	uint64_t n = 0;

	if (key_id == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e != NULL)
		n = e->allow_credits;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/*
 * A snapshot carries the versions' reserved counts, not this node's
 * allowance: a grant whose log entry this node skipped by installing a
 * snapshot would be lost. Its proposer knows it: the command committed
 * (the leader said so), this node's applied index passed it, and no grant
 * was credited here since it was proposed.
 */
int kms_keyring_credit_skipped_grant(kms_keyring *kr, const char *key_id, uint32_t version,
				     uint64_t count, uint64_t credits_before, int *credited,
				     kms_err *err)
{
	struct kr_entry *e;
	long idx;
	int rc = KMS_OK;

	*credited = 0;
	KMS_TRY(kr_lookup_id_check(key_id, err));
	if (version == 0 || count == 0 || count > KMS_ENCRYPTIONS_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "a skipped grant needs a version and a count "
						      "of 1..2^32");
	pthread_rwlock_wrlock(&kr->lock);
	KMS_TRY_GOTO(rc, kr_entry_for(kr, key_id, &e, err), out);
	idx = kr_version_index(e->rec, version);
	/*
	 * Whole, or not at all: a grant smaller than its count took the
	 * version to its maximum, and an Exhausted version never turns back,
	 * so a version still Enabled got every encryption asked for.
	 */
	if (e->allow_credits != credits_before || idx < 0 ||
	    e->rec->versions[idx]->state != KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED ||
	    kr_key_state(e->rec) == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED ||
	    version < e->allow_version)
		goto out;
	allowance_credit(e, version, count);
	*credited = 1;
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_take_encryption(kms_keyring *kr, const char *key_id, uint32_t version,
				uint64_t *remaining, kms_err *err)
{
	struct kr_entry *e;
	uint64_t left = 0;
	int taken = 0;

	if (remaining != NULL)
		*remaining = 0;
	if (key_id == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "no key id");
	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e != NULL && e->allow_version == version && version != 0) {
		left = atomic_load(&e->allow_left);
		while (left > 0 && !taken)
			taken = atomic_compare_exchange_weak(&e->allow_left, &left, left - 1);
	}
	pthread_rwlock_unlock(&kr->lock);
	if (!taken)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"this node holds no reserved encryptions for key '%.128s' version "
				"%u: more must be reserved through Raft first",
				key_id, version);
	if (remaining != NULL)
		*remaining = left - 1;
	return KMS_OK;
}

uint64_t kms_keyring_allowance(kms_keyring *kr, const char *key_id, uint32_t version)
{
	struct kr_entry *e;
	uint64_t left = 0;

	if (key_id == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e != NULL && e->allow_version == version && version != 0)
		left = atomic_load(&e->allow_left);
	pthread_rwlock_unlock(&kr->lock);
	return left;
}

/* --- what the supervisor reads --- */

static void status_of(const Kms__V1__KeyRecord *rec, kms_key_status *out)
{
	const Kms__V1__KeyVersionRecord *p = rec->versions[rec->primary_version - 1];

	memset(out, 0, sizeof(*out));
	out->state = kr_key_state(rec);
	out->primary_version = rec->primary_version;
	out->last_version = (uint32_t)rec->n_versions;
	out->primary_state = p->state;
	out->primary_reserved = p->reserved_encryptions;
	out->max_encryptions = kr_max_encryptions(rec);
	out->rotation_period_seconds = rec->rotation_period_seconds;
	out->last_rotated_at_unix =
		rec->last_rotated_at_unix != 0 ? rec->last_rotated_at_unix : rec->created_at_unix;
	out->deletion_at_unix = rec->deletion_at_unix;
}

int kms_keyring_key_status(kms_keyring *kr, const char *key_id, kms_key_status *out,
			   kms_err *err)
{
	struct kr_entry *e;
	int rc;

	memset(out, 0, sizeof(*out));
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	rc = kr_entry_for(kr, key_id, &e, err);
	if (rc == KMS_OK)
		status_of(e->rec, out);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

static int rotation_due(const Kms__V1__KeyRecord *rec, int64_t now, unsigned permille)
{
	kms_key_status s;

	status_of(rec, &s);
	if (s.state != KMS__V1__KEY_STATE__KEY_STATE_ENABLED)
		return 0;
	if (s.primary_state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED)
		return 1;
	/* reserved <= 2^32 and max <= 2^32: neither product overflows. */
	if (s.primary_reserved * 1000 >= s.max_encryptions * (uint64_t)permille)
		return 1;
	/* In unsigned arithmetic: the dates come from proposers' clocks. */
	return s.rotation_period_seconds != 0 && now >= s.last_rotated_at_unix &&
	       (uint64_t)now - (uint64_t)s.last_rotated_at_unix >= s.rotation_period_seconds;
}

static int destruction_due(const Kms__V1__KeyRecord *rec, int64_t now, unsigned unused)
{
	(void)unused;
	return destroy_check(rec, now, NULL) == KMS_OK;
}

static int ids_where(kms_keyring *kr, int (*due)(const Kms__V1__KeyRecord *, int64_t, unsigned),
		     int64_t now, unsigned arg, size_t max_n, char ***ids, size_t *n,
		     kms_err *err)
{
	const struct kr_entry *e;
	struct kr_cursor cur;
	char **out;
	size_t got = 0;
	int rc = KMS_OK;

	*ids = NULL;
	*n = 0;
	out = kms_calloc(max_n > 0 ? max_n : 1, sizeof(*out));
	if (out == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory listing keys due");
	pthread_rwlock_rdlock(&kr->lock);
	kr_index_first(&kr->keys, &cur);
	while (got < max_n && (e = kr_cursor_next(&cur)) != NULL) {
		/* A replicated key is rotated and destroyed in its home region. */
		if (!due(e->rec, now, arg) || kr_home_check(kr, e->rec, NULL) != KMS_OK)
			continue;
		out[got] = kms_strdup(e->rec->key_id);
		if (out[got] == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory listing keys due");
			break;
		}
		got++;
	}
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK) {
		kms_keyring_ids_free(out, got);
		return rc;
	}
	*ids = out;
	*n = got;
	return KMS_OK;
}

int kms_keyring_due_rotations(kms_keyring *kr, int64_t now_unix, unsigned high_water_permille,
			      size_t max_n, char ***ids, size_t *n, kms_err *err)
{
	if (high_water_permille == 0 || high_water_permille > 1000)
		return kms_errf(err, KMS_ERR_INVALID, "a high-water mark is 1..1000 per mille, not %u",
				high_water_permille);
	return ids_where(kr, rotation_due, now_unix, high_water_permille, max_n, ids, n, err);
}

int kms_keyring_due_destructions(kms_keyring *kr, int64_t now_unix, size_t max_n, char ***ids,
				 size_t *n, kms_err *err)
{
	return ids_where(kr, destruction_due, now_unix, 0, max_n, ids, n, err);
}

void kms_keyring_ids_free(char **ids, size_t n)
{
	if (ids == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		kms_free(ids[i]);
	kms_free(ids);
}

int kms_keyring_real_key_id(kms_keyring *kr, const char *name, char *out, kms_err *err)
{
	const char *id;
	char q[KMS_QUOTE_MAX + 4];
	int rc = KMS_OK;

	out[0] = '\0';
	if (name == NULL || (kms_is_alias_name(name) ? kms_alias_name_check(name, NULL)
						       : kms_key_id_check(name, NULL)) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID, "'%s' is neither a key id nor an alias name",
				kms_quote(name != NULL ? name : "", q));
	pthread_rwlock_rdlock(&kr->lock);
	id = kr_name_to_key_id(kr, name);
	if (id == NULL)
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "alias '%s' not found", name);
	else if (kr_find_entry(kr, id) == NULL)
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found", id);
	else
		snprintf(out, KMS_KEY_ID_MAX + 1, "%s", id);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}
