/* keyring_backup.c - the part of the key ring a backup holds, and its return into a new cluster (RestoreBackup). */
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/*
 * Both directions go through the snapshot (kms_keyring_snapshot and
 * kms_keyring_restore): one encoding of the key ring, with its checks, and
 * no second walk over the entries.
 */

static Kms__V1__KeyRingSnapshot *unpack_ring(const uint8_t *data, size_t len, struct pb_state *st,
					     ProtobufCAllocator *a, kms_err *err)
{
	Kms__V1__KeyRingSnapshot *s;

	a->alloc = kr_pb_alloc;
	a->free = kr_pb_free;
	a->allocator_data = st;
	s = kms__v1__key_ring_snapshot__unpack(a, len, data);
	if (s == NULL)
		kms_errf(err, st->failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
			 st->failed ? "out of memory reading a key ring"
				    : "the key ring is not a valid kms.v1.KeyRingSnapshot");
	return s;
}

static void *malloc_fn(size_t n)
{
	return kms_malloc(n);
}

int kms_keyring_backup_ring(kms_keyring *kr, kms_buf *out, uint32_t *generation, kms_err *err)
{
	Kms__V1__KeyRingSnapshot part = KMS__V1__KEY_RING_SNAPSHOT__INIT, *s = NULL;
	Kms__V1__DomainKeyState dks = KMS__V1__DOMAIN_KEY_STATE__INIT;
	struct pb_state st = {0};
	ProtobufCAllocator a;
	kms_buf full = {0};
	size_t len;
	int rc = KMS_OK;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_keyring_snapshot(kr, malloc_fn, &full, err));
	s = unpack_ring(full.data, full.len, &st, &a, err);
	if (s == NULL) {
		rc = err != NULL ? err->code : KMS_ERR_INVALID;
		goto out;
	}
	if (s->domain_key != NULL && s->domain_key->rotation != NULL) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "a domain-key rotation is in progress: back up once it has ended");
		goto out;
	}
	if (s->domain_key_probe.len == 0) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "the cluster has no domain-key probe yet: nothing to back up");
		goto out;
	}
	part.format = s->format;
	part.keys = s->keys;
	part.n_keys = s->n_keys;
	part.aliases = s->aliases;
	part.n_aliases = s->n_aliases;
	part.domain_key_probe = s->domain_key_probe;
	/* The generation only: the rotation history is the old cluster's. */
	if (s->domain_key != NULL) {
		dks.generation = s->domain_key->generation;
		dks.highest_generation = s->domain_key->highest_generation;
		dks.last_rotated_at_unix = s->domain_key->last_rotated_at_unix;
	}
	part.domain_key = &dks;
	*generation = dks.generation != 0 ? dks.generation : 1;
	len = kms__v1__key_ring_snapshot__get_packed_size(&part);
	out->data = kms_malloc(len > 0 ? len : 1);
	if (out->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory packing the backup's key ring");
		goto out;
	}
	out->len = kms__v1__key_ring_snapshot__pack(&part, out->data);
out:
	if (s != NULL)
		kr_pb_message_free(&s->base);
	kms_buf_free(&full);
	return rc;
}

/* A new cluster: no key, no alias, no probe, no rotation. */
static int empty_check(kms_keyring *kr, kms_err *err)
{
	int empty;

	pthread_rwlock_rdlock(&kr->lock);
	empty = kr->n_aliases == 0 && kr->probe_len == 0 && !kr->dk.rotating;
	pthread_rwlock_unlock(&kr->lock);
	if (!empty || kms_keyring_count(kr) != 0)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"a backup is restored only into a new cluster, and this one "
				"already holds keys, aliases or a domain key");
	return KMS_OK;
}

int kr_apply_restore_backup(kms_keyring *kr, const Kms__V1__RestoreBackupCommand *c, int dry,
			    kms_err *err)
{
	struct pb_state rst = {0}, cst = {0};
	ProtobufCAllocator ra, ca;
	Kms__V1__KeyRingSnapshot *r = NULL, *cur = NULL;
	Kms__V1__KeyRingSnapshot keep;
	kms_buf full = {0}, merged = {0};
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL && c->key_ring.len > 0, err, KMS_ERR_INVALID,
		   "RestoreBackup holds no key ring");
	r = unpack_ring(c->key_ring.data, c->key_ring.len, &rst, &ra, err);
	if (r == NULL)
		return err != NULL ? err->code : KMS_ERR_INVALID;
	if (r->format != KEYRING_SNAPSHOT_FORMAT || r->domain_key_probe.len == 0 ||
	    r->domain_key_probe.len > KMS_WRAPPED_MAX ||
	    (r->domain_key != NULL && r->domain_key->rotation != NULL)) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "the backup's key ring has another format, no domain-key probe or a "
			      "rotation in progress");
		goto out;
	}
	KMS_TRY_GOTO(rc, empty_check(kr, err), out);
	if (dry)
		goto out;
	/* The new cluster's members, administrators and quorum, with the backup's keys. */
	KMS_TRY_GOTO(rc, kms_keyring_snapshot(kr, malloc_fn, &full, err), out);
	cur = unpack_ring(full.data, full.len, &cst, &ca, err);
	if (cur == NULL) {
		rc = err != NULL ? err->code : KMS_ERR_INVALID;
		goto out;
	}
	keep = *cur;
	cur->keys = r->keys;
	cur->n_keys = r->n_keys;
	cur->aliases = r->aliases;
	cur->n_aliases = r->n_aliases;
	cur->domain_key_probe = r->domain_key_probe;
	cur->domain_key = r->domain_key;
	merged.len = kms__v1__key_ring_snapshot__get_packed_size(cur);
	merged.data = kms_malloc(merged.len > 0 ? merged.len : 1);
	if (merged.data == NULL)
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring a backup");
	else
		merged.len = kms__v1__key_ring_snapshot__pack(cur, merged.data);
	/* Give back what cur borrowed before it is freed. */
	cur->keys = keep.keys;
	cur->n_keys = keep.n_keys;
	cur->aliases = keep.aliases;
	cur->n_aliases = keep.n_aliases;
	cur->domain_key_probe = keep.domain_key_probe;
	cur->domain_key = keep.domain_key;
	if (rc == KMS_OK)
		rc = kms_keyring_restore(kr, merged.data, merged.len, err);
	if (rc != KMS_OK)
		kms_err_prefix(err, "restoring the backup's key ring");
out:
	if (cur != NULL)
		kr_pb_message_free(&cur->base);
	kr_pb_message_free(&r->base);
	kms_buf_free(&full);
	kms_buf_free(&merged);
	return rc;
}
