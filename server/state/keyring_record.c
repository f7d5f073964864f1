/* keyring_record.c - the rules of a key record (its versions, its state, its rotation policy), the one check apply, restore and the builders share. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "state/keyring_internal.h"
#include "kms/blob.h"
#include "kms/policy.h"

#define KEY_STATE_LAST KMS__V1__KEY_STATE__KEY_STATE_DESTROYED
#define VERSION_STATE_LAST KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED

const char *kms_key_state_name(Kms__V1__KeyState state)
{
	switch (state) {
	case KMS__V1__KEY_STATE__KEY_STATE_ENABLED:
		return "Enabled";
	case KMS__V1__KEY_STATE__KEY_STATE_DISABLED:
		return "Disabled";
	case KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION:
		return "PendingDeletion";
	case KMS__V1__KEY_STATE__KEY_STATE_DESTROYED:
		return "Destroyed";
	default:
		return "Unknown";
	}
}

const char *kms_key_version_state_name(Kms__V1__KeyVersionState state)
{
	switch (state) {
	case KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED:
		return "Enabled";
	case KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED:
		return "Exhausted";
	case KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED:
		return "Destroyed";
	default:
		return "Unknown";
	}
}

Kms__V1__KeyState kr_key_state(const Kms__V1__KeyRecord *rec)
{
	if (rec->key_state != KMS__V1__KEY_STATE__KEY_STATE_UNSPECIFIED)
		return rec->key_state;
	return rec->enabled ? KMS__V1__KEY_STATE__KEY_STATE_ENABLED
			    : KMS__V1__KEY_STATE__KEY_STATE_DISABLED;
}

void kr_set_key_state(Kms__V1__KeyRecord *rec, Kms__V1__KeyState state)
{
	rec->key_state = state;
	rec->enabled = state == KMS__V1__KEY_STATE__KEY_STATE_ENABLED;
}

uint64_t kr_max_encryptions(const Kms__V1__KeyRecord *rec)
{
	return rec->max_encryptions_per_version != 0 ? rec->max_encryptions_per_version
						     : KMS_ENCRYPTIONS_DEFAULT;
}

void kr_format_date(int64_t t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, 32, "%lld", (long long)t);
}

int kr_state_refusal(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	char date[32];

	switch (kr_key_state(rec)) {
	case KMS__V1__KEY_STATE__KEY_STATE_ENABLED:
		return KMS_OK;
	case KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION:
		kr_format_date(rec->deletion_at_unix, date);
		return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' is pending deletion (on %s)",
				rec->key_id, date);
	case KMS__V1__KEY_STATE__KEY_STATE_DESTROYED:
		return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' was destroyed", rec->key_id);
	default:
		return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' is disabled", rec->key_id);
	}
}

int kr_version_check(const char *key_id, const Kms__V1__KeyVersionRecord *v, kms_err *err)
{
	if ((unsigned)v->state > VERSION_STATE_LAST)
		return kms_errf(err, KMS_ERR_INVALID, "key '%s' version %u: unknown state %d",
				key_id, v->version, (int)v->state);
	if (v->reserved_encryptions > KMS_ENCRYPTIONS_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s' version %u: %llu reserved encryptions, more than 2^32",
				key_id, v->version, (unsigned long long)v->reserved_encryptions);
	/* Destruction removes the material: a destroyed version holds none. */
	if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED) {
		if (v->wrapped_material.len != 0)
			return kms_errf(err, KMS_ERR_INVALID,
					"key '%s' version %u is destroyed but holds wrapped material",
					key_id, v->version);
		return KMS_OK;
	}
	if (v->wrapped_material.len == 0 || v->wrapped_material.len > KMS_WRAPPED_MAX ||
	    v->wrapped_material.data == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s' version %u: wrapped material of %zu bytes is outside 1..%d",
				key_id, v->version, v->wrapped_material.len, KMS_WRAPPED_MAX);
	return KMS_OK;
}

static int versions_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	if (rec->n_versions == 0 || rec->n_versions > KMS_KEY_VERSIONS_MAX || rec->versions == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "key '%s' must hold 1 to %d versions, not %zu",
				rec->key_id, KMS_KEY_VERSIONS_MAX, rec->n_versions);
	/* 1..N without gaps, in order: a version is found by its number alone. */
	for (size_t i = 0; i < rec->n_versions; i++) {
		const Kms__V1__KeyVersionRecord *v = rec->versions[i];

		if (v == NULL)
			return kms_errf(err, KMS_ERR_INVALID, "key '%s': version %zu is missing",
					rec->key_id, i + 1);
		if (v->version != i + 1)
			return kms_errf(err, KMS_ERR_INVALID,
					"key '%s': version %zu of its list must be %zu, not %u "
					"(versions run from 1 without gaps)",
					rec->key_id, i + 1, i + 1, v->version);
		KMS_TRY(kr_version_check(rec->key_id, v, err));
	}
	return KMS_OK;
}

/* The state, the primary and the versions agree with one another. */
static int state_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	Kms__V1__KeyState state = kr_key_state(rec);
	int destroyed = state == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED;

	if ((unsigned)rec->key_state > KEY_STATE_LAST)
		return kms_errf(err, KMS_ERR_INVALID, "key '%s': unknown key state %d", rec->key_id,
				(int)rec->key_state);
	if (rec->key_state != KMS__V1__KEY_STATE__KEY_STATE_UNSPECIFIED &&
	    !rec->enabled != !(state == KMS__V1__KEY_STATE__KEY_STATE_ENABLED))
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': its enabled flag disagrees with its state %s",
				rec->key_id, kms_key_state_name(state));
	if (rec->primary_version == 0 || rec->primary_version > rec->n_versions)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': primary version %u is not one of its %zu versions",
				rec->key_id, rec->primary_version, rec->n_versions);
	for (size_t i = 0; i < rec->n_versions; i++) {
		int gone = rec->versions[i]->state ==
			   KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED;

		if (destroyed && !gone)
			return kms_errf(err, KMS_ERR_INVALID,
					"key '%s' is destroyed but its version %zu is not",
					rec->key_id, i + 1);
		if (!destroyed && gone && i + 1 == rec->primary_version)
			return kms_errf(err, KMS_ERR_INVALID,
					"key '%s': its primary version %u is destroyed", rec->key_id,
					rec->primary_version);
	}
	if (state == KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION && rec->deletion_at_unix <= 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s' is pending deletion without a deletion date", rec->key_id);
	return KMS_OK;
}

/*
 * Every node runs the same checks on the same bytes, so a record is
 * accepted or refused everywhere alike (the FSM must stay deterministic,
 * Raft thesis 3.1).
 */
int kr_record_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	int rc;

	if (rec == NULL || rec->key_id == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "key record has no key id");
	KMS_TRY(kms_key_id_check(rec->key_id, err));
	if (rec->description != NULL &&
	    strnlen(rec->description, KEYRING_DESCRIPTION_MAX + 1) > KEYRING_DESCRIPTION_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': description is longer than %d bytes", rec->key_id,
				KEYRING_DESCRIPTION_MAX);
	if (rec->created_by != NULL &&
	    strnlen(rec->created_by, KMS_PRINCIPAL_MAX + 1) > KMS_PRINCIPAL_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': created_by is longer than %d bytes", rec->key_id,
				KMS_PRINCIPAL_MAX);
	if (rec->policy != NULL) {
		rc = kms_policy_check(rec->policy, KMS_POLICY_STORED, NULL, err);
		if (rc != KMS_OK) {
			char prefix[KMS_KEY_ID_MAX + 8];

			snprintf(prefix, sizeof(prefix), "key '%s'", rec->key_id);
			if (err != NULL)
				kms_err_prefix(err, prefix);
			return rc;
		}
	}
	KMS_TRY(versions_check(rec, err));
	KMS_TRY(state_check(rec, err));
	KMS_TRY(kr_scope_check(rec, err));
	if (rec->max_encryptions_per_version > KMS_ENCRYPTIONS_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': max_encryptions_per_version %llu is above 2^32 (the "
				"AES-GCM random-IV bound, NIST SP 800-38D)",
				rec->key_id, (unsigned long long)rec->max_encryptions_per_version);
	if (rec->rotation_period_seconds > KMS_ROTATION_PERIOD_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': rotation period of %llu s is longer than 100 years",
				rec->key_id, (unsigned long long)rec->rotation_period_seconds);
	return KMS_OK;
}

/* Versions are 1..N in order (versions_check), so v sits at index v - 1. */
long kr_version_index(const Kms__V1__KeyRecord *rec, uint32_t v)
{
	if (v == 0 || v > rec->n_versions || rec->versions[v - 1]->version != v)
		return -1;
	return (long)v - 1;
}

void kr_lock(kms_keyring *kr, int dry)
{
	if (dry)
		pthread_rwlock_rdlock(&kr->lock);
	else
		pthread_rwlock_wrlock(&kr->lock);
}

int kr_command_key_check(const void *c, const char *key_id, const char *what, kms_err *err)
{
	if (c == NULL || key_id == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s command names no key", what);
	return kms_key_id_check(key_id, err);
}

int kr_entry_for(const struct kms_keyring *kr, const char *key_id, struct kr_entry **e,
		 kms_err *err)
{
	*e = key_id != NULL ? kr_find_entry(kr, key_id) : NULL;
	if (*e == NULL)
		return kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
				key_id != NULL ? key_id : "");
	return KMS_OK;
}
