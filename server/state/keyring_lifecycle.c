/* keyring_lifecycle.c - the state machine of a key: enable, disable, schedule and cancel its deletion, replace its policy, set its rotation policy. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/policy.h"

/*
 * Key states and the commands that move between them:
 *
 *   Enabled <--SetKeyEnabled--> Disabled
 *      |                           |
 *      +--ScheduleKeyDeletion--+---+
 *                              v
 *                        PendingDeletion --CancelKeyDeletion--> Disabled
 *                              |
 *                              +--DestroyKey (keyring_versions.c)--> Destroyed
 *
 * Destroyed is final. Every refused transition is KMS_ERR_PRECONDITION
 * with a sentence that says what state the key is in and what to do, and
 * changes nothing.
 */

static int refuse_destroyed(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	if (kr_key_state(rec) == KMS__V1__KEY_STATE__KEY_STATE_DESTROYED)
		return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' was destroyed", rec->key_id);
	return KMS_OK;
}

static int refuse_pending(const Kms__V1__KeyRecord *rec, const char *hint, kms_err *err)
{
	char date[32];

	if (kr_key_state(rec) != KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION)
		return KMS_OK;
	kr_format_date(rec->deletion_at_unix, date);
	return kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' is pending deletion (on %s)%s",
			rec->key_id, date, hint);
}

int kr_apply_set_key_enabled(kms_keyring *kr, const Kms__V1__SetKeyEnabledCommand *c, int dry,
			     kms_err *err)
{
	struct kr_entry *e;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "SetKeyEnabled", err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, refuse_destroyed(e->rec, err), out);
	KMS_TRY_GOTO(rc, refuse_pending(e->rec, ": cancel the deletion first", err), out);
	/* The same state again is a no-op, as AWS KMS does it. */
	if (!dry)
		kr_set_key_state(e->rec, c->enabled ? KMS__V1__KEY_STATE__KEY_STATE_ENABLED
						    : KMS__V1__KEY_STATE__KEY_STATE_DISABLED);
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_schedule_key_deletion(kms_keyring *kr,
				   const Kms__V1__ScheduleKeyDeletionCommand *c, int dry,
				   kms_err *err)
{
	struct kr_entry *e;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "ScheduleKeyDeletion", err));
	if (c->deletion_at_unix <= 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"ScheduleKeyDeletion command for key '%s' has no deletion date",
				c->key_id);
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, refuse_destroyed(e->rec, err), out);
	KMS_TRY_GOTO(rc, refuse_pending(e->rec, ": cancel it first to set another date", err),
		     out);
	if (!dry) {
		kr_set_key_state(e->rec, KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION);
		e->rec->deletion_at_unix = c->deletion_at_unix;
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_cancel_key_deletion(kms_keyring *kr, const Kms__V1__CancelKeyDeletionCommand *c,
				 int dry, kms_err *err)
{
	struct kr_entry *e;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "CancelKeyDeletion", err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, refuse_destroyed(e->rec, err), out);
	if (kr_key_state(e->rec) != KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "key '%s' is not pending deletion (it is %s)", c->key_id,
			      kms_key_state_name(kr_key_state(e->rec)));
		goto out;
	}
	/* Disabled, not Enabled: turning it back on is a decision of its own. */
	if (!dry) {
		kr_set_key_state(e->rec, KMS__V1__KEY_STATE__KEY_STATE_DISABLED);
		e->rec->deletion_at_unix = 0;
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_put_key_policy(kms_keyring *kr, const Kms__V1__PutKeyPolicyCommand *c, int dry,
			    kms_err *err)
{
	Kms__V1__KeyRecord shape;
	struct kr_entry *e;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "PutKeyPolicy", err));
	if (c->policy == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "PutKeyPolicy command for key '%s' holds no "
						      "policy", c->key_id);
	KMS_TRY(kms_policy_check(c->policy, KMS_POLICY_STORED, NULL, err));
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, refuse_destroyed(e->rec, err), out);
	if (!dry) {
		/* The record with the new policy, copied into a new block: a few
		 * hundred bytes, under the lock. */
		shape = *e->rec;
		shape.policy = c->policy;
		rc = kr_entry_rebuild(e, &shape, err);
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_set_rotation_policy(kms_keyring *kr, const Kms__V1__SetRotationPolicyCommand *c,
				 int dry, kms_err *err)
{
	struct kr_entry *e;
	int rc;

	KMS_TRY(kr_command_key_check(c, c != NULL ? c->key_id : NULL, "SetRotationPolicy", err));
	if (c->rotation_period_seconds > KMS_ROTATION_PERIOD_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"rotation period of %llu s is longer than 100 years",
				(unsigned long long)c->rotation_period_seconds);
	if (c->max_encryptions_per_version > KMS_ENCRYPTIONS_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"max_encryptions_per_version %llu is above 2^32, the AES-GCM "
				"random-IV bound (NIST SP 800-38D)",
				(unsigned long long)c->max_encryptions_per_version);
	kr_lock(kr, dry);
	KMS_TRY_GOTO(rc, kr_entry_for_write(kr, c->key_id, &e, err), out);
	KMS_TRY_GOTO(rc, refuse_destroyed(e->rec, err), out);
	if (!dry) {
		e->rec->rotation_period_seconds = c->rotation_period_seconds;
		e->rec->max_encryptions_per_version = c->max_encryptions_per_version;
		/* A lower bound may leave versions past it: they encrypt no more. */
		kr_exhaust_versions(e->rec);
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}
