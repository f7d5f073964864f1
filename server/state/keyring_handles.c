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
 * The handle itself and its two primitives, lend and drop, are in
 * keyring_internal.h (inline: every resolve takes a reference, and the fuzz
 * targets link the key ring's other files without this one); what restore
 * keeps is decided in keyring_state.c (kr_handles_carry).
 */

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
	kms_key_handle *mine, *lost = NULL;
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
			atomic_fetch_add_explicit(&mine->refs, 1, memory_order_relaxed);
			e->handles[idx] = mine; /* the slot's reference */
		} else {
			/* First writer wins; ours goes. */
			lost = mine;
			kr_handle_lend(e->handles[idx], use);
		}
	}
	pthread_rwlock_unlock(&kr->lock);
	if (lost != NULL) {
		kr_handle_drop(lost);
		return KMS_OK;
	}
	use->handle = mine->handle;
	use->ref = mine;
	return KMS_OK;
}
