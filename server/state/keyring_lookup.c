/* keyring_lookup.c - the read side of the key ring: the gate of every crypto call, describe and list. */
#include <pthread.h>
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
	int found = 0;

	if (key_id == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	(void)kr_find_pos(kr, key_id, &found);
	pthread_rwlock_unlock(&kr->lock);
	return found;
}

size_t kms_keyring_count(kms_keyring *kr)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->n;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/*
 * The refusal of a key the caller may not use. Only an administrator (who
 * may list every key anyway) learns that a key does not exist: anyone else
 * gets the same status and the same sentence for an unknown key as for a
 * key it has no grant on, so key ids cannot be probed. Lock held.
 */
static int refuse(const struct kms_keyring *kr, const char *principal, int is_admin,
		  enum kms_op op, const char *key_id, int exists, kms_err *err)
{
	if (!exists && (is_admin || kms_is_admin(kr->admins, kr->n_admins, principal)))
		return kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found", key_id);
	return kms_errf(err, KMS_ERR_PERMISSION, "principal '%.200s' may not %s with key '%s'",
			principal != NULL ? principal : "(none)", kms_op_name(op), key_id);
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
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e == NULL || !kms_policy_allows(e->rec->policy, principal, op)) {
		rc = refuse(kr, principal, 0, op, key_id, e != NULL, err);
		goto out;
	}
	if (!e->rec->enabled) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' is disabled",
			      key_id);
		goto out;
	}
	want = version != 0 ? version : e->rec->primary_version;
	idx = kr_version_index(e->rec, want);
	if (idx < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND,
			      "key '%s' has no version %u", key_id, want);
		goto out;
	}
	v = e->rec->versions[idx];
	out->version = v->version;
	/* The caller's reference, taken while the slot's holds it. */
	kr_handle_lend(e->handles[idx], out);
	/* kr_record_check bounded the length to KMS_WRAPPED_MAX. */
	memcpy(out->wrapped, v->wrapped_material.data, v->wrapped_material.len);
	out->wrapped_len = v->wrapped_material.len;
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
	e = kr_find_entry(kr, key_id);
	admin = op == KMS_OP_DESCRIBE_KEY && kms_is_admin(kr->admins, kr->n_admins, principal);
	if (e == NULL || !(admin || kms_policy_allows(e->rec->policy, principal, op)))
		rc = refuse(kr, principal, admin, op, key_id, e != NULL, err);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/*
 * Builds the metadata by packing a temporary that borrows from the record
 * and unpacking it: the result is one unpacked tree (kms_malloc'd) that
 * kms_keyring_metadata_free releases with protobuf_c_message_free_unpacked.
 */
static int metadata_build(const Kms__V1__KeyRecord *rec,
			  Kms__V1__KeyMetadata **out, kms_err *err)
{
	Kms__V1__KeyMetadata md = KMS__V1__KEY_METADATA__INIT;
	ProtobufCMessage *copy = NULL;
	uint32_t *versions;
	size_t i;
	int rc;

	*out = NULL;
	versions = kms_calloc(rec->n_versions, sizeof(*versions));
	if (versions == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory describing key '%s'",
				rec->key_id);
	for (i = 0; i < rec->n_versions; i++)
		versions[i] = rec->versions[i]->version;
	md.key_id = rec->key_id;
	md.description = rec->description;
	md.policy = rec->policy;
	md.primary_version = rec->primary_version;
	md.n_versions = rec->n_versions;
	md.versions = versions;
	md.created_at_unix = rec->created_at_unix;
	md.enabled = rec->enabled;
	md.created_by = rec->created_by;
	rc = kr_message_dup(&md.base, &copy, err);
	kms_free(versions);
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
	e = kr_find_entry(kr, key_id);
	if (e == NULL || !may_describe(e->rec, principal, is_admin)) {
		rc = refuse(kr, principal, is_admin, KMS_OP_DESCRIBE_KEY, key_id, e != NULL, err);
		goto out;
	}
	rc = metadata_build(e->rec, out, err);
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
	size_t i, got = 0;
	int found, rc = KMS_OK;

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
	i = kr_find_pos(kr, after_key_id != NULL ? after_key_id : "", &found);
	if (found)
		i++; /* strictly after */
	for (; i < kr->n; i++) {
		if (!may_describe(kr->entries[i].rec, principal, is_admin))
			continue;
		if (got == page_size) {
			*more = 1;
			break;
		}
		KMS_TRY_GOTO(
		    rc, metadata_build(kr->entries[i].rec, &page[got], err),
		    unlock);
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

