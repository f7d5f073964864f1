/* keyring_state.c - the replicated key ring as a Raft state machine: key records, apply, snapshot and restore. */
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

/* --- protobuf-c allocation through kms_malloc --------------------------- */

void *kr_pb_alloc(void *data, size_t size)
{
	struct pb_state *st = data;
	void *p = kms_malloc(size);

	if (p == NULL && st != NULL)
		st->failed = 1;
	return p;
}

void kr_pb_free(void *data, void *p)
{
	(void)data;
	kms_free(p);
}

void kr_pb_message_free(ProtobufCMessage *m)
{
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free};

	if (m != NULL)
		protobuf_c_message_free_unpacked(m, &a);
}

void kr_record_free(Kms__V1__KeyRecord *rec)
{
	if (rec != NULL)
		kr_pb_message_free(&rec->base);
}

/*
 * Deep copy of any message through its wire form: the copy is one unpacked
 * message tree owned by the caller, allocated through kms_malloc.
 */
int kr_message_dup(const ProtobufCMessage *src, ProtobufCMessage **out,
		       kms_err *err)
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	size_t len = protobuf_c_message_get_packed_size(src);
	uint8_t *buf = kms_malloc(len);
	int rc = KMS_OK;

	*out = NULL;
	if (buf == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory copying a %s",
				src->descriptor->name);
	if (protobuf_c_message_pack(src, buf) != len) {
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "packing a %s gave a wrong size",
			      src->descriptor->name);
		goto out;
	}
	*out = protobuf_c_message_unpack(src->descriptor, &a, len, buf);
	if (*out == NULL)
		rc = kms_errf(err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INTERNAL,
			      "%s copying a %s",
			      st.failed ? "out of memory" : "cannot re-read",
			      src->descriptor->name);
out:
	kms_free(buf);
	return rc;
}

/* --- entries ------------------------------------------------------------ */

void kr_entry_clear(struct kr_entry *e)
{
	/* The handles array lives in the record's block. */
	kms_free(e->rec);
	kr_policy_release(e->policy);
	e->rec = NULL;
	e->handles = NULL;
	e->policy = NULL;
}

/*
 * A block for shape with its policy interned: *rec and *handles in one
 * block, *policy holding one reference (NULL for no policy).
 */
static int entry_block(const Kms__V1__KeyRecord *shape, Kms__V1__KeyRecord **rec,
		       kms_key_handle ***handles, struct kr_policy **policy, kms_err *err)
{
	Kms__V1__KeyRecord s = *shape;
	ProtobufCMessage *copy = NULL;
	void *extra = NULL;
	int rc;

	KMS_TRY(kr_policy_intern(shape->policy, policy, err));
	s.policy = (Kms__V1__KeyPolicy *)kr_policy_get(*policy);
	rc = kr_flat_copy(&s.base, s.policy != NULL ? &s.policy->base : NULL,
			  s.n_versions * sizeof(**handles), &copy, &extra, err);
	if (rc != KMS_OK) {
		kr_policy_release(*policy);
		*policy = NULL;
		return rc;
	}
	*rec = (Kms__V1__KeyRecord *)copy;
	*handles = extra;
	return KMS_OK;
}

/* A validated record copied into a fresh entry with no handles yet. */
int kr_entry_make(const Kms__V1__KeyRecord *rec, struct kr_entry *e,
		      kms_err *err)
{
	e->rec = NULL;
	e->handles = NULL;
	e->policy = NULL;
	e->allow_version = 0;
	atomic_init(&e->allow_left, 0);
	e->allow_credits = 0;
	KMS_TRY(entry_block(rec, &e->rec, &e->handles, &e->policy, err));
	/* Readers see the state a record written before key_state had. */
	kr_set_key_state(e->rec, kr_key_state(e->rec));
	return KMS_OK;
}

int kr_entry_rebuild(struct kr_entry *e, const Kms__V1__KeyRecord *shape, kms_err *err)
{
	Kms__V1__KeyRecord *rec = NULL;
	kms_key_handle **handles = NULL;
	struct kr_policy *policy = NULL;
	size_t keep = e->rec->n_versions < shape->n_versions ? e->rec->n_versions
							     : shape->n_versions;

	KMS_TRY(entry_block(shape, &rec, &handles, &policy, err));
	memcpy(handles, e->handles, keep * sizeof(*handles));
	kms_free(e->rec);
	kr_policy_release(e->policy);
	e->rec = rec;
	e->handles = handles;
	e->policy = policy;
	return KMS_OK;
}

/*
 * Drops the entries' references to their handles: a handle no call uses
 * any more is released here, one still in use when its last user is done.
 */
void kr_entries_drop(struct kr_index *ix)
{
	struct kr_cursor cur;
	struct kr_entry *e;

	for (kr_index_first(ix, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		for (size_t j = 0; j < e->rec->n_versions; j++)
			kr_handle_drop(e->handles[j]);
		kr_entry_clear(e);
	}
	kr_index_free(ix);
}

/* The caller holds the lock. */
struct kr_entry *kr_find_entry(const struct kms_keyring *kr,
				   const char *key_id)
{
	return kr_index_find(&kr->keys, key_id);
}

/*
 * A caller's key id that is not even well formed names no key; say so
 * without echoing the bytes (they may be anything) into the message.
 */
int kr_lookup_id_check(const char *key_id, kms_err *err)
{
	if (key_id == NULL)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"key not found: no key id");
	if (kms_is_alias_name(key_id)) {
		if (kms_alias_name_check(key_id, NULL) != KMS_OK)
			return kms_errf(err, KMS_ERR_NOT_FOUND,
					"key not found: the alias name is malformed");
		return KMS_OK;
	}
	if (kms_key_id_check(key_id, NULL) != KMS_OK)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"key not found: the key id is malformed");
	return KMS_OK;
}

/* --- what a restore keeps of this node's handles ------------------------ */

int kr_same_material(const Kms__V1__KeyVersionRecord *v, const uint8_t *wrapped, size_t len)
{
	return v->wrapped_material.len == len &&
	       memcmp(v->wrapped_material.data, wrapped, len) == 0;
}

/* Moves from's handles of versions that to holds unchanged into to. */
static void carry_entry(struct kr_entry *to, struct kr_entry *from)
{
	for (size_t v = 0; v < from->rec->n_versions; v++) {
		const Kms__V1__KeyVersionRecord *fv = from->rec->versions[v];
		long k;

		if (from->handles[v] == NULL)
			continue;
		k = kr_version_index(to->rec, fv->version);
		if (k < 0 || to->handles[k] != NULL ||
		    !kr_same_material(to->rec->versions[k], fv->wrapped_material.data,
				      fv->wrapped_material.len))
			continue;
		to->handles[k] = from->handles[v];
		from->handles[v] = NULL;
	}
	kr_allowance_carry(to, from);
}

/* Both indexes walk in key-id order: one merge walk pairs the same ids. */
void kr_handles_carry(const struct kr_index *fresh, const struct kr_index *old)
{
	struct kr_cursor fc, oc;
	struct kr_entry *f, *o;

	kr_index_first(fresh, &fc);
	kr_index_first(old, &oc);
	f = kr_cursor_next(&fc);
	o = kr_cursor_next(&oc);
	while (f != NULL && o != NULL) {
		int c = strcmp(f->rec->key_id, o->rec->key_id);

		if (c == 0)
			carry_entry(f, o);
		if (c <= 0)
			f = kr_cursor_next(&fc);
		if (c >= 0)
			o = kr_cursor_next(&oc);
	}
}

/* --- lifetime ----------------------------------------------------------- */

int kms_keyring_new(kms_keyring **out, kms_err *err)
{
	pthread_rwlockattr_t attr;
	kms_keyring *kr;
	int rc;

	*out = NULL;
	kr = kms_calloc(1, sizeof(*kr));
	if (kr == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory creating the key ring");
	if (pthread_rwlockattr_init(&attr) != 0) {
		kms_free(kr);
		return kms_errf(err, KMS_ERR_INTERNAL,
				"pthread_rwlockattr_init failed");
	}
	/*
	 * glibc's default rwlock prefers readers: a steady stream of crypto
	 * calls would starve the Raft thread's apply. Prefer the writer.
	 */
	rc = pthread_rwlockattr_setkind_np(
	    &attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (rc == 0)
		rc = pthread_rwlock_init(&kr->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc != 0) {
		kms_free(kr);
		return kms_errf(err, KMS_ERR_INTERNAL,
				"cannot create the key ring lock (error %d)",
				rc);
	}
	kr_dk_reset(&kr->dk);
	kr_index_init(&kr->keys);
	*out = kr;
	return KMS_OK;
}

void kms_keyring_free(kms_keyring *kr)
{
	if (kr == NULL)
		return;
	/* The owner guarantees no other thread uses kr any more. */
	kr_entries_drop(&kr->keys);
	kr_lru_free(kr);
	kms_keyring_admins_free(kr->admins, kr->n_admins);
	kr_quorum_free(kr);
	kr_rev_ring_free(kr);
	{
		struct kr_alias_table t = {kr->aliases, kr->by_key, kr->n_aliases};

		kr_aliases_free(&t);
	}
	pthread_rwlock_destroy(&kr->lock);
	kms_free(kr);
}

void kms_keyring_set_release(kms_keyring *kr, kms_keyring_release_fn fn,
			     void *arg)
{
	pthread_rwlock_wrlock(&kr->lock);
	kr->release = fn;
	kr->release_arg = arg;
	pthread_rwlock_unlock(&kr->lock);
}

/* --- the state machine -------------------------------------------------- */

/*
 * Validation and the copy happen before the lock, so readers wait only for
 * the insertion itself. Only the Raft thread writes, so the existence check
 * under the lock sees every earlier command.
 */
/*
 * A key id stays taken for ever, also by a destroyed key (its tombstone),
 * so no blob made under an old key can ever decrypt under a new one.
 */
int kr_check_create_key(kms_keyring *kr, const Kms__V1__CreateKeyCommand *ck, kms_err *err)
{
	int rc = KMS_OK;

	if (ck == NULL || ck->key == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "CreateKey command holds no key record");
	KMS_TRY(kr_record_check(ck->key, err));
	pthread_rwlock_rdlock(&kr->lock);
	if (kr_find_entry(kr, ck->key->key_id) != NULL)
		rc = kms_errf(err, KMS_ERR_EXISTS, "key '%s' already exists", ck->key->key_id);
	else if ((rc = kr_dk_generation_check(kr, ck->domain_key_generation, err)) == KMS_OK)
		rc = kr_create_scope_check(kr, ck->key, err);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_create_key(kms_keyring *kr,
			    const Kms__V1__CreateKeyCommand *ck, kms_err *err)
{
	struct kr_entry e;
	int rc = KMS_OK;

	if (ck == NULL || ck->key == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"CreateKey command holds no key record");
	KMS_TRY(kr_record_check(ck->key, err));
	KMS_TRY(kr_entry_make(ck->key, &e, err));

	pthread_rwlock_wrlock(&kr->lock);
	if (kr_find_entry(kr, e.rec->key_id) != NULL) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "key '%s' already exists",
			      e.rec->key_id);
		goto unlock;
	}
	KMS_TRY_GOTO(rc, kr_dk_generation_check(kr, ck->domain_key_generation, err), unlock);
	KMS_TRY_GOTO(rc, kr_create_scope_check(kr, e.rec, err), unlock);
	rc = kr_index_insert(&kr->keys, &e, err);
unlock:
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK)
		kr_entry_clear(&e);
	return rc;
}


/*
 * One command, applied (dry 0) or only decided (dry 1: kms_keyring_check).
 * A dry run of a cluster command only parses it.
 */
static int run_command(kms_keyring *kr, const Kms__V1__Command *c, int dry, kms_err *err)
{
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_CREATE_KEY:
		return dry ? kr_check_create_key(kr, c->create_key, err)
			   : kr_apply_create_key(kr, c->create_key, err);
	case KMS__V1__COMMAND__CMD_ADD_MEMBER:
		return dry ? KMS_OK : kr_apply_add_member(kr, c->add_member, err);
	case KMS__V1__COMMAND__CMD_REMOVE_MEMBER:
		return dry ? KMS_OK : kr_apply_remove_member(kr, c->remove_member, err);
	case KMS__V1__COMMAND__CMD_DOMAIN_KEY_CHECK:
		return dry ? KMS_OK : kr_apply_domain_key_check(kr, c->domain_key_check, err);
	case KMS__V1__COMMAND__CMD_CONSUME_JOIN_GRANT:
		return dry ? KMS_OK : kr_apply_consume_join_grant(kr, c->consume_join_grant, err);
	case KMS__V1__COMMAND__CMD_SET_ADMINISTRATORS:
		return dry ? KMS_OK : kr_apply_set_administrators(kr, c->set_administrators, err);
	case KMS__V1__COMMAND__CMD_ROTATE_KEY:
		return kr_apply_rotate_key(kr, c->rotate_key, dry, err);
	case KMS__V1__COMMAND__CMD_SET_KEY_ENABLED:
		return kr_apply_set_key_enabled(kr, c->set_key_enabled, dry, err);
	case KMS__V1__COMMAND__CMD_SCHEDULE_KEY_DELETION:
		return kr_apply_schedule_key_deletion(kr, c->schedule_key_deletion, dry, err);
	case KMS__V1__COMMAND__CMD_CANCEL_KEY_DELETION:
		return kr_apply_cancel_key_deletion(kr, c->cancel_key_deletion, dry, err);
	case KMS__V1__COMMAND__CMD_DESTROY_KEY:
		return kr_apply_destroy_key(kr, c->destroy_key, dry, err);
	case KMS__V1__COMMAND__CMD_PUT_KEY_POLICY:
		return kr_apply_put_key_policy(kr, c->put_key_policy, dry, err);
	case KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY:
		return kr_apply_set_rotation_policy(kr, c->set_rotation_policy, dry, err);
	case KMS__V1__COMMAND__CMD_CREATE_ALIAS:
		return kr_apply_create_alias(kr, c->create_alias, dry, err);
	case KMS__V1__COMMAND__CMD_UPDATE_ALIAS:
		return kr_apply_update_alias(kr, c->update_alias, dry, err);
	case KMS__V1__COMMAND__CMD_DELETE_ALIAS:
		return kr_apply_delete_alias(kr, c->delete_alias, dry, err);
	case KMS__V1__COMMAND__CMD_RESERVE_ENCRYPTIONS:
		return kr_apply_reserve_encryptions(kr, c->reserve_encryptions, dry, err);
	case KMS__V1__COMMAND__CMD_QUORUM_INIT:
		return kr_apply_quorum_init(kr, c->quorum_init, dry, err);
	case KMS__V1__COMMAND__CMD_PROPOSE:
		return kr_apply_propose(kr, c->propose, dry, err);
	case KMS__V1__COMMAND__CMD_APPROVE:
		return kr_apply_approve(kr, c->approve, dry, err);
	case KMS__V1__COMMAND__CMD_CANCEL_PROPOSAL:
		return kr_apply_cancel_proposal(kr, c->cancel_proposal, dry, err);
	case KMS__V1__COMMAND__CMD_PROPOSAL_RESULT:
		return kr_apply_proposal_result(kr, c->proposal_result, dry, err);
	case KMS__V1__COMMAND__CMD_RESTORE_BACKUP:
		return kr_apply_restore_backup(kr, c->restore_backup, dry, err);
	case KMS__V1__COMMAND__CMD_REGION_APPLY:
		return kr_apply_region_apply(kr, c->region_apply, dry, err);
	case KMS__V1__COMMAND__CMD_FENCE_REGION:
		return kr_apply_fence_region(kr, c->fence_region, dry, err);
	case KMS__V1__COMMAND__CMD_REGION_FOLLOWED:
		return kr_apply_region_followed(kr, c->region_followed, dry, err);
	case KMS__V1__COMMAND__CMD_BEGIN_DOMAIN_KEY_ROTATION:
	case KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION:
	case KMS__V1__COMMAND__CMD_CONSUME_DOMAIN_KEY_ROTATION_GRANT:
	case KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY:
	case KMS__V1__COMMAND__CMD_SWITCH_DOMAIN_KEY:
	case KMS__V1__COMMAND__CMD_ABORT_DOMAIN_KEY_ROTATION:
		return kr_apply_dk(kr, c, dry, err);
	case KMS__V1__COMMAND__CMD__NOT_SET:
	default:
		return kms_errf(err, KMS_ERR_INVALID,
				"command names no operation this node knows");
	}
}

static int parse_and_run(kms_keyring *kr, const uint8_t *cmd, size_t len, int dry,
			 kms_err *err)
{
	static const uint8_t none[1];
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c;
	int rc;

	if (cmd == NULL && len > 0)
		return kms_errf(err, KMS_ERR_INVALID, "command bytes missing");
	c = kms__v1__command__unpack(&a, len, cmd != NULL ? cmd : none);
	if (c == NULL)
		return kms_errf(
		    err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
		    st.failed ? "out of memory parsing a command"
			      : "command is not a valid kms.v1.Command");
	rc = run_command(kr, c, dry, err);
	if (rc == KMS_OK && !dry)
		kr_region_touch(kr, kr_changed_key(c));
	kr_pb_message_free(&c->base);
	return rc;
}

int kms_keyring_apply(kms_keyring *kr, const uint8_t *cmd, size_t len, kms_err *err)
{
	return parse_and_run(kr, cmd, len, 0, err);
}

int kms_keyring_check(kms_keyring *kr, const uint8_t *cmd, size_t len, kms_err *err)
{
	return parse_and_run(kr, cmd, len, 1, err);
}

int kms_keyring_snapshot(kms_keyring *kr, void *(*alloc)(size_t), kms_buf *out,
			 kms_err *err)
{
	Kms__V1__KeyRingSnapshot snap = KMS__V1__KEY_RING_SNAPSHOT__INIT;
	Kms__V1__KeyRecord **recs = NULL;
	struct kr_cursor cur;
	struct kr_entry *e;
	Kms__V1__MemberRecord mrec[KMS_MEMBERS_MAX], *mptr[KMS_MEMBERS_MAX];
	Kms__V1__JoinGrant grants[KMS_MEMBERS_MAX];
	Kms__V1__DomainKeyState dks;
	Kms__V1__DomainKeyRotation dkr;
	Kms__V1__DomainKeyRotationGrant dkg[KMS_MEMBERS_MAX], *dkgp[KMS_MEMBERS_MAX];
	size_t i, len;
	int rc = KMS_OK;

	out->data = NULL;
	out->len = 0;
	pthread_rwlock_rdlock(&kr->lock);
	recs = kms_calloc(kr->keys.n > 0 ? kr->keys.n : 1, sizeof(*recs));
	if (recs == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory taking a snapshot");
		goto out;
	}
	/* The snapshot borrows the records only while it is packed. */
	i = 0;
	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;)
		recs[i++] = e->rec;
	snap.format = KEYRING_SNAPSHOT_FORMAT;
	snap.n_keys = kr->keys.n;
	snap.keys = recs;
	for (i = 0; i < kr->n_members; i++) {
		kms__v1__member_record__init(&mrec[i]);
		mrec[i].id = kr->members[i].id;
		mrec[i].raft_address = kr->members[i].raft_address;
		mrec[i].grpc_address = kr->members[i].grpc_address;
		if (kr->members[i].grant.present) {
			const kms_join_grant *g = &kr->members[i].grant;

			kms__v1__join_grant__init(&grants[i]);
			grants[i].transport_key_sha256.data = (uint8_t *)g->transport_key_sha256;
			grants[i].transport_key_sha256.len = KMS_FINGERPRINT_LEN;
			grants[i].expires_at_unix = g->expires_at_unix;
			grants[i].used = g->used;
			mrec[i].join_grant = &grants[i];
		}
		mptr[i] = &mrec[i];
	}
	snap.n_members = kr->n_members;
	snap.members = mptr;
	snap.domain_key_probe.data = kr->probe;
	snap.domain_key_probe.len = kr->probe_len;
	snap.administrators = kr->admins;
	snap.n_administrators = kr->n_admins;
	snap.aliases = kr->aliases;
	snap.n_aliases = kr->n_aliases;
	kr_quorum_snapshot(kr, &snap);
	kr_dk_to_message(&kr->dk, &dks, &dkr, dkg, dkgp);
	snap.domain_key = &dks;
	len = kms__v1__key_ring_snapshot__get_packed_size(&snap);
	out->data = alloc(len);
	if (out->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory for a snapshot of %zu bytes", len);
		goto out;
	}
	if (kms__v1__key_ring_snapshot__pack(&snap, out->data) != len) {
		/* out->data came from alloc, whose free we do not know. */
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "snapshot packed to a wrong size");
		goto out;
	}
	out->len = len;
out:
	pthread_rwlock_unlock(&kr->lock);
	kms_free(recs);
	return rc;
}

/* Packs a command into out->data (kms_malloc'd, the caller's). */
