/* keyring_lookup.c - the read side of the key ring: the gate of every crypto call, describe and list. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/hostport.h"
#include "kms/policy.h"

/* --- lookups ------------------------------------------------------------ */

int kms_keyring_has_key(kms_keyring *kr, const char *key_id)
{
	int found;

	if (key_id == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	found = kr_find_entry(kr, key_id) != NULL;
	pthread_rwlock_unlock(&kr->lock);
	return found;
}

size_t kms_keyring_count(kms_keyring *kr)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->keys.n;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/*
 * The refusal of a key the caller may not use. Only an administrator (who
 * may list every key anyway) learns that a key does not exist: anyone else
 * gets the same status and the same sentence for an unknown key as for a
 * key it has no grant on, so key ids cannot be probed. name is what the
 * caller gave (a key id or an alias). Lock held.
 */
static int refuse(const struct kms_keyring *kr, const char *principal, int is_admin,
		  enum kms_op op, const char *name, int exists, kms_err *err)
{
	if (!exists && (is_admin || kms_is_admin(kr->admins, kr->n_admins, principal)))
		return kms_errf(err, KMS_ERR_NOT_FOUND, "%s '%s' not found",
				kms_is_alias_name(name) && kr_alias_find(kr, name) == NULL ? "alias"
											   : "key",
				name);
	return kms_errf(err, KMS_ERR_PERMISSION, "principal '%.200s' may not %s with key '%s'",
			principal != NULL ? principal : "(none)", kms_op_name(op), name);
}

/* The entry a caller's name stands for (lock held), or NULL. */
static const struct kr_entry *named_entry(const struct kms_keyring *kr, const char *name)
{
	const char *id = kr_name_to_key_id(kr, name);

	return id != NULL ? kr_find_entry(kr, id) : NULL;
}

/*
 * A primary that has made its maximum encryptions serves no more
 * encryptions, except those this node reserved before it got there: every
 * granted block lies within the maximum.
 */
static int primary_exhausted(const struct kr_entry *e, const Kms__V1__KeyVersionRecord *v,
			     kms_err *err)
{
	if (v->state != KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED ||
	    (e->allow_version == v->version && atomic_load(&e->allow_left) > 0))
		return KMS_OK;
	return kms_errf(err, KMS_ERR_UNAVAILABLE,
			"key '%s' version %u has made its maximum of %llu encryptions and no newer "
			"version exists yet: the key must be rotated (automatic rotation needs a "
			"Raft quorum)",
			e->rec->key_id, v->version, (unsigned long long)kr_max_encryptions(e->rec));
}

/*
 * The order of the checks is the contract: existence and policy (one
 * answer for both, see refuse), then state, then version, so a caller
 * without a grant learns nothing about a key's existence, state or
 * versions.
 */
int kms_keyring_resolve(kms_keyring *kr, const char *key_id, uint32_t version,
			const char *principal, enum kms_op op, kms_key_use *out,
			kms_err *err)
{
	const struct kr_entry *e;
	const Kms__V1__KeyVersionRecord *v;
	uint32_t want;
	long idx;
	int rc = KMS_OK;

	out->handle = 0;
	out->ref = NULL;
	out->key_id[0] = '\0';
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = named_entry(kr, key_id);
	if (e == NULL || !kms_policy_allows(e->rec->policy, principal, op)) {
		rc = refuse(kr, principal, 0, op, key_id, e != NULL, err);
		goto out;
	}
	KMS_TRY_GOTO(rc, kr_state_refusal(e->rec, err), out);
	want = version != 0 ? version : e->rec->primary_version;
	idx = kr_version_index(e->rec, want);
	if (idx < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' has no version %u", e->rec->key_id,
			      want);
		goto out;
	}
	v = e->rec->versions[idx];
	if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' version %u was destroyed",
			      e->rec->key_id, want);
		goto out;
	}
	if (version == 0)
		KMS_TRY_GOTO(rc, primary_exhausted(e, v, err), out);
	kr_use_fill(e, idx, out);
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_authorize(kms_keyring *kr, const char *key_id, const char *principal,
			  enum kms_op op, kms_err *err)
{
	const struct kr_entry *e;
	int admin, rc = KMS_OK;

	if (key_id != NULL && key_id[0] == '\0')
		return KMS_OK;
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = named_entry(kr, key_id);
	admin = op == KMS_OP_DESCRIBE_KEY && kms_is_admin(kr->admins, kr->n_admins, principal);
	if (e == NULL || !(admin || kms_policy_allows(e->rec->policy, principal, op)))
		rc = refuse(kr, principal, admin, op, key_id, e != NULL, err);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* When the rotation policy next rotates the key by age (0: never). */
static int64_t next_rotation(const Kms__V1__KeyRecord *rec)
{
	int64_t base = rec->last_rotated_at_unix != 0 ? rec->last_rotated_at_unix
						       : rec->created_at_unix;

	if (rec->rotation_period_seconds == 0 ||
	    kr_key_state(rec) != KMS__V1__KEY_STATE__KEY_STATE_ENABLED)
		return 0;
	/* The period is at most 100 years (kr_record_check); dates saturate. */
	if (base > INT64_MAX - (int64_t)rec->rotation_period_seconds)
		return INT64_MAX;
	return base + (int64_t)rec->rotation_period_seconds;
}

/* The temporaries a KeyMetadata borrows while it is copied. */
struct md_parts {
	uint32_t *versions;
	Kms__V1__KeyVersionMetadata *details;
	Kms__V1__KeyVersionMetadata **detail_ptrs;
	char **aliases;
};

static void md_parts_free(struct md_parts *p)
{
	kms_free(p->versions);
	kms_free(p->details);
	kms_free(p->detail_ptrs);
	kms_free(p->aliases);
}

/*
 * Builds the metadata by packing a temporary that borrows from the record
 * (and from the alias table: the caller holds the lock) and unpacking it:
 * the result is one unpacked tree (kms_malloc'd) that
 * kms_keyring_metadata_free releases with protobuf_c_message_free_unpacked.
 * with_details: every version's state, creation and count (DescribeKey).
 */
static int metadata_build(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec,
			  int with_details, Kms__V1__KeyMetadata **out, kms_err *err)
{
	Kms__V1__KeyMetadata md = KMS__V1__KEY_METADATA__INIT;
	struct md_parts p = {0};
	ProtobufCMessage *copy = NULL;
	size_t i, first, n_aliases = kr_aliases_of(kr, rec->key_id, &first);
	Kms__V1__KeyState state = kr_key_state(rec);
	int rc;

	*out = NULL;
	p.versions = kms_calloc(rec->n_versions, sizeof(*p.versions));
	p.aliases = kms_calloc(n_aliases > 0 ? n_aliases : 1, sizeof(*p.aliases));
	if (with_details) {
		p.details = kms_calloc(rec->n_versions, sizeof(*p.details));
		p.detail_ptrs = kms_calloc(rec->n_versions, sizeof(*p.detail_ptrs));
	}
	if (p.versions == NULL || p.aliases == NULL ||
	    (with_details && (p.details == NULL || p.detail_ptrs == NULL))) {
		md_parts_free(&p);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory describing key '%s'",
				rec->key_id);
	}
	for (i = 0; i < rec->n_versions; i++) {
		const Kms__V1__KeyVersionRecord *v = rec->versions[i];

		p.versions[i] = v->version;
		if (!with_details)
			continue;
		kms__v1__key_version_metadata__init(&p.details[i]);
		p.details[i].version = v->version;
		p.details[i].state = (char *)kms_key_version_state_name(v->state);
		p.details[i].created_at_unix = v->created_at_unix;
		p.details[i].encryptions = v->reserved_encryptions;
		p.detail_ptrs[i] = &p.details[i];
	}
	for (i = 0; i < n_aliases; i++)
		p.aliases[i] = kr->by_key[first + i]->alias_name;
	md.key_id = rec->key_id;
	md.description = rec->description;
	md.policy = rec->policy;
	md.primary_version = rec->primary_version;
	md.n_versions = rec->n_versions;
	md.versions = p.versions;
	md.created_at_unix = rec->created_at_unix;
	md.enabled = state == KMS__V1__KEY_STATE__KEY_STATE_ENABLED;
	md.created_by = rec->created_by;
	md.key_state = (char *)kms_key_state_name(state);
	md.deletion_date_unix =
		state == KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION ? rec->deletion_at_unix : 0;
	md.rotation_period_seconds = rec->rotation_period_seconds;
	md.max_encryptions_per_version = kr_max_encryptions(rec);
	md.next_rotation_unix = next_rotation(rec);
	md.multi_region = rec->multi_region;
	md.home_region = rec->home_region;
	if (with_details) {
		md.n_version_details = rec->n_versions;
		md.version_details = p.detail_ptrs;
	}
	md.n_aliases = n_aliases;
	md.aliases = p.aliases;
	rc = kr_message_dup(&md.base, &copy, err);
	md_parts_free(&p);
	if (rc == KMS_OK)
		*out = (Kms__V1__KeyMetadata *)copy;
	return rc;
}

static int may_describe(const Kms__V1__KeyRecord *rec, const char *principal,
			int is_admin)
{
	return is_admin ||
	       kms_policy_allows(rec->policy, principal, KMS_OP_DESCRIBE_KEY);
}

int kms_keyring_describe(kms_keyring *kr, const char *key_id,
			 const char *principal, int is_admin,
			 Kms__V1__KeyMetadata **out, kms_err *err)
{
	const struct kr_entry *e;
	int rc = KMS_OK;

	*out = NULL;
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = named_entry(kr, key_id);
	if (e == NULL || !may_describe(e->rec, principal, is_admin)) {
		rc = refuse(kr, principal, is_admin, KMS_OP_DESCRIBE_KEY, key_id, e != NULL, err);
		goto out;
	}
	rc = metadata_build(kr, e->rec, 1, out, err);
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

void kms_keyring_metadata_free(Kms__V1__KeyMetadata *md)
{
	if (md != NULL)
		kr_pb_message_free(&md->base);
}

int kms_keyring_list(kms_keyring *kr, const char *principal, int is_admin,
		     const char *after_key_id, size_t page_size,
		     Kms__V1__KeyMetadata ***keys, size_t *n, int *more,
		     kms_err *err)
{
	Kms__V1__KeyMetadata **page;
	const struct kr_entry *e;
	struct kr_cursor cur;
	size_t got = 0;
	int rc = KMS_OK;

	*keys = NULL;
	*n = 0;
	*more = 0;
	if (page_size == 0 || page_size > KEYRING_PAGE_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"page size %zu is outside 1..%d", page_size,
				KEYRING_PAGE_MAX);
	page = kms_calloc(page_size, sizeof(*page));
	if (page == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory listing keys");

	pthread_rwlock_rdlock(&kr->lock);
	/* The page token is the last id of the page before: strictly after it. */
	kr_index_seek_after(&kr->keys, after_key_id != NULL ? after_key_id : "", &cur);
	while ((e = kr_cursor_next(&cur)) != NULL) {
		if (!may_describe(e->rec, principal, is_admin))
			continue;
		if (got == page_size) {
			*more = 1;
			break;
		}
		KMS_TRY_GOTO(rc, metadata_build(kr, e->rec, 0, &page[got], err), unlock);
		got++;
	}
unlock:
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK) {
		kms_keyring_list_free(page, got);
		*more = 0;
		return rc;
	}
	*keys = page;
	*n = got;
	return KMS_OK;
}

void kms_keyring_list_free(Kms__V1__KeyMetadata **keys, size_t n)
{
	size_t i;

	if (keys == NULL)
		return;
	for (i = 0; i < n; i++)
		kms_keyring_metadata_free(keys[i]);
	kms_free(keys);
}

