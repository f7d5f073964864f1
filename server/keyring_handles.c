/* keyring_handles.c - the key ring's node-local HSM handle cache: the handle of each master-key version once unwrapped on this node. */
#include <pthread.h>
#include <stdint.h>

#include "keyring_internal.h"

/*
 * Request threads record handles here (under the write lock); restore and
 * free hand the ones they drop to the release function (keyring_state.c).
 * Not replicated, not in snapshots.
 */

int kms_keyring_set_handle(kms_keyring *kr, const char *key_id,
			   uint32_t version, unsigned long handle,
			   unsigned long *kept, kms_err *err)
{
	struct kr_entry *e;
	long idx;
	int rc = KMS_OK;

	if (handle == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"handle 0 names no object");
	KMS_TRY(kr_lookup_id_check(key_id, err));
	pthread_rwlock_wrlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	if (e == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
			      key_id);
		goto out;
	}
	idx = kr_version_index(e->rec, version);
	if (idx < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND,
			      "key '%s' has no version %u", key_id, version);
		goto out;
	}
	/* First writer wins; the loser destroys its own object. */
	if (e->handles[idx] == 0)
		e->handles[idx] = handle;
	*kept = e->handles[idx];
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}
