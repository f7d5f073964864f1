/* keyring.c - the replicated key ring: Raft FSM apply/snapshot/restore over an
 * in-memory sorted array, and the lookups that gate every crypto call. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/hostport.h"
#include "kms/keyring.h"
#include "kms/policy.h"
#include "kms/v1/state.pb-c.h"

#define KEYRING_SNAPSHOT_FORMAT 1
#define KEYRING_DESCRIPTION_MAX 1024
#define KEYRING_PAGE_MAX 1000

/*
 * Ownership: every record an entry holds is a standalone message unpacked by
 * this file through the kms_malloc allocator below (a deep copy made by
 * re-packing the validated record and unpacking it again), so an entry frees
 * its record with protobuf_c_message_free_unpacked and never points into a
 * Command or a snapshot the caller owns. The same holds for the metadata
 * that describe and list hand out.
 *
 * handles[i] belongs to rec->versions[i]: the node-local HSM handle of that
 * version once unwrapped, 0 until then. Not replicated, not in snapshots.
 */
struct kr_entry {
	Kms__V1__KeyRecord *rec;
	unsigned long *handles;
};

struct kms_keyring {
	pthread_rwlock_t lock;
	struct kr_entry *entries; /* sorted by key_id (strcmp), unique */
	size_t n;
	size_t cap;
	kms_member members[KMS_MEMBERS_MAX]; /* sorted by id, unique */
	size_t n_members;
	uint8_t probe[KMS_WRAPPED_MAX]; /* the domain-key check blob */
	size_t probe_len;
	kms_keyring_release_fn release;
	void *release_arg;
};

/* --- protobuf-c allocation through kms_malloc --------------------------- */

/*
 * protobuf-c returns NULL both for malformed input and for a failed
 * allocation; the flag tells the two apart so that an out-of-memory node
 * reports KMS_ERR_NOMEM instead of calling a good command invalid.
 */
struct pb_state {
	int failed;
};

static void *pb_alloc(void *data, size_t size)
{
	struct pb_state *st = data;
	void *p = kms_malloc(size);

	if (p == NULL && st != NULL)
		st->failed = 1;
	return p;
}

static void pb_free(void *data, void *p)
{
	(void)data;
	kms_free(p);
}

static void pb_message_free(ProtobufCMessage *m)
{
	ProtobufCAllocator a = {.alloc = pb_alloc, .free = pb_free};

	if (m != NULL)
		protobuf_c_message_free_unpacked(m, &a);
}

static void record_free(Kms__V1__KeyRecord *rec)
{
	if (rec != NULL)
		pb_message_free(&rec->base);
}

/*
 * Deep copy of any message through its wire form: the copy is one unpacked
 * message tree owned by the caller, allocated through kms_malloc.
 */
static int message_dup(const ProtobufCMessage *src, ProtobufCMessage **out,
		       kms_err *err)
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = pb_alloc, .free = pb_free, .allocator_data = &st};
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

/* --- record validation (the one rule set of apply, restore and build) --- */

/*
 * Every node runs the same checks on the same bytes, so a record is
 * accepted or refused everywhere alike (the FSM must stay deterministic,
 * Raft thesis 3.1). Today a record holds exactly version 1; rotation will
 * relax the version rules here and nowhere else.
 */
static int record_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	const Kms__V1__KeyVersionRecord *v;
	int rc;

	if (rec == NULL || rec->key_id == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"key record has no key id");
	KMS_TRY(kms_key_id_check(rec->key_id, err));
	if (rec->description != NULL &&
	    strnlen(rec->description, KEYRING_DESCRIPTION_MAX + 1) >
		KEYRING_DESCRIPTION_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': description is longer than %d bytes",
				rec->key_id, KEYRING_DESCRIPTION_MAX);
	if (rec->created_by != NULL &&
	    strnlen(rec->created_by, KMS_PRINCIPAL_MAX + 1) > KMS_PRINCIPAL_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': created_by is longer than %d bytes",
				rec->key_id, KMS_PRINCIPAL_MAX);
	if (rec->policy != NULL) {
		rc = kms_policy_check(rec->policy, KMS_POLICY_STORED, NULL, err);
		if (rc != KMS_OK) {
			char prefix[KMS_KEY_ID_MAX + 8];

			snprintf(prefix, sizeof(prefix), "key '%s'",
				 rec->key_id);
			if (err != NULL)
				kms_err_prefix(err, prefix);
			return rc;
		}
	}
	if (rec->n_versions != 1 || rec->versions == NULL ||
	    rec->versions[0] == NULL)
		return kms_errf(
		    err, KMS_ERR_INVALID,
		    "key '%s' must hold exactly one version, not %zu",
		    rec->key_id, rec->n_versions);
	v = rec->versions[0];
	if (v->version != 1)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': its first version must be 1, not %u",
				rec->key_id, v->version);
	if (v->wrapped_material.len == 0 ||
	    v->wrapped_material.len > KMS_WRAPPED_MAX ||
	    v->wrapped_material.data == NULL)
		return kms_errf(
		    err, KMS_ERR_INVALID,
		    "key '%s' version %u: wrapped material of %zu bytes "
		    "is outside 1..%d",
		    rec->key_id, v->version, v->wrapped_material.len,
		    KMS_WRAPPED_MAX);
	if (rec->primary_version != 1)
		return kms_errf(err, KMS_ERR_INVALID,
				"key '%s': primary version must be 1, not %u",
				rec->key_id, rec->primary_version);
	return KMS_OK;
}

/* --- entries ------------------------------------------------------------ */

static void entry_clear(struct kr_entry *e)
{
	record_free(e->rec);
	kms_free(e->handles);
	e->rec = NULL;
	e->handles = NULL;
}

/* A validated record copied into a fresh entry with no handles yet. */
static int entry_make(const Kms__V1__KeyRecord *rec, struct kr_entry *e,
		      kms_err *err)
{
	ProtobufCMessage *copy = NULL;

	e->rec = NULL;
	e->handles = NULL;
	KMS_TRY(message_dup(&rec->base, &copy, err));
	e->rec = (Kms__V1__KeyRecord *)copy;
	e->handles = kms_calloc(e->rec->n_versions, sizeof(*e->handles));
	if (e->handles == NULL) {
		entry_clear(e);
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory adding key '%s'", rec->key_id);
	}
	return KMS_OK;
}

/* Hands every non-zero handle of the entries to fn, then frees them. */
static void entries_drop(struct kr_entry *es, size_t n,
			 kms_keyring_release_fn fn, void *arg)
{
	size_t i, j;

	for (i = 0; i < n; i++) {
		for (j = 0; fn != NULL && j < es[i].rec->n_versions; j++) {
			if (es[i].handles[j] != 0)
				fn(arg, es[i].handles[j]);
		}
		entry_clear(&es[i]);
	}
	kms_free(es);
}

/*
 * Binary search (caller holds the lock): the index of the first entry whose
 * id is >= key_id, and whether it is equal.
 */
static size_t find_pos(const struct kms_keyring *kr, const char *key_id,
		       int *found)
{
	size_t lo = 0, hi = kr->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(kr->entries[mid].rec->key_id, key_id) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < kr->n && strcmp(kr->entries[lo].rec->key_id, key_id) == 0;
	return lo;
}

static struct kr_entry *find_entry(const struct kms_keyring *kr,
				   const char *key_id)
{
	int found;
	size_t pos = find_pos(kr, key_id, &found);

	return found ? &kr->entries[pos] : NULL;
}

/* Index of version v in the record, or -1. */
static long version_index(const Kms__V1__KeyRecord *rec, uint32_t v)
{
	size_t i;

	for (i = 0; i < rec->n_versions; i++)
		if (rec->versions[i]->version == v)
			return (long)i;
	return -1;
}

/*
 * A caller's key id that is not even well formed names no key; say so
 * without echoing the bytes (they may be anything) into the message.
 */
static int lookup_id_check(const char *key_id, kms_err *err)
{
	if (key_id == NULL)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"key not found: no key id");
	if (kms_key_id_check(key_id, NULL) != KMS_OK)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"key not found: the key id is malformed");
	return KMS_OK;
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
	*out = kr;
	return KMS_OK;
}

void kms_keyring_free(kms_keyring *kr)
{
	if (kr == NULL)
		return;
	/* The owner guarantees no other thread uses kr any more. */
	entries_drop(kr->entries, kr->n, kr->release, kr->release_arg);
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
static int apply_create_key(kms_keyring *kr,
			    const Kms__V1__CreateKeyCommand *ck, kms_err *err)
{
	struct kr_entry e;
	size_t pos;
	int found, rc = KMS_OK;

	if (ck == NULL || ck->key == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"CreateKey command holds no key record");
	KMS_TRY(record_check(ck->key, err));
	KMS_TRY(entry_make(ck->key, &e, err));

	pthread_rwlock_wrlock(&kr->lock);
	pos = find_pos(kr, e.rec->key_id, &found);
	if (found) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "key '%s' already exists",
			      e.rec->key_id);
		goto unlock;
	}
	if (kr->n == kr->cap) {
		size_t cap = kr->cap ? kr->cap * 2 : 16;
		struct kr_entry *grown =
		    kms_realloc(kr->entries, cap * sizeof(*grown));

		if (grown == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM,
				      "out of memory adding key '%s'",
				      e.rec->key_id);
			goto unlock;
		}
		kr->entries = grown;
		kr->cap = cap;
	}
	memmove(&kr->entries[pos + 1], &kr->entries[pos],
		(kr->n - pos) * sizeof(*kr->entries));
	kr->entries[pos] = e;
	kr->n++;
unlock:
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK)
		entry_clear(&e);
	return rc;
}


/* --- members and the domain-key check ----------------------------------- */

static int member_check(const Kms__V1__MemberRecord *m, kms_err *err)
{
	if (m == NULL || m->id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "a member needs an id of 1 or more");
	KMS_TRY(kms_hostport_check(m->raft_address, "raft_address", err));
	return kms_hostport_check(m->grpc_address, "grpc_address", err);
}

/* Index of the first member whose id is >= id (caller holds the lock). */
static size_t member_pos(const struct kms_keyring *kr, uint64_t id)
{
	size_t i = 0;

	while (i < kr->n_members && kr->members[i].id < id)
		i++;
	return i;
}

static void member_set(kms_member *dst, const Kms__V1__MemberRecord *m)
{
	dst->id = m->id;
	snprintf(dst->raft_address, sizeof(dst->raft_address), "%s", m->raft_address);
	snprintf(dst->grpc_address, sizeof(dst->grpc_address), "%s", m->grpc_address);
}

/* Adding a member that exists updates its addresses: a re-sent join is not
 * an error. */
static int apply_add_member(kms_keyring *kr, const Kms__V1__AddMemberCommand *c, kms_err *err)
{
	size_t pos;
	int rc = KMS_OK;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "AddMember command holds no member");
	KMS_TRY(member_check(c->member, err));
	pthread_rwlock_wrlock(&kr->lock);
	pos = member_pos(kr, c->member->id);
	if (pos < kr->n_members && kr->members[pos].id == c->member->id) {
		member_set(&kr->members[pos], c->member);
	} else if (kr->n_members == KMS_MEMBERS_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "the cluster already has %d members",
			      KMS_MEMBERS_MAX);
	} else {
		memmove(&kr->members[pos + 1], &kr->members[pos],
			(kr->n_members - pos) * sizeof(kr->members[0]));
		member_set(&kr->members[pos], c->member);
		kr->n_members++;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

static int apply_remove_member(kms_keyring *kr, const Kms__V1__RemoveMemberCommand *c,
			       kms_err *err)
{
	size_t pos;
	int rc = KMS_OK;

	if (c == NULL || c->id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "RemoveMember command names no member");
	pthread_rwlock_wrlock(&kr->lock);
	pos = member_pos(kr, c->id);
	if (pos == kr->n_members || kr->members[pos].id != c->id) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "node %llu is not a member",
			      (unsigned long long)c->id);
	} else {
		memmove(&kr->members[pos], &kr->members[pos + 1],
			(kr->n_members - pos - 1) * sizeof(kr->members[0]));
		kr->n_members--;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* The probe is set once, when the cluster is born; it never changes. */
static int apply_domain_key_check(kms_keyring *kr, const Kms__V1__DomainKeyCheckCommand *c,
				  kms_err *err)
{
	int rc = KMS_OK;

	if (c == NULL || c->wrapped_probe.len == 0 || c->wrapped_probe.len > KMS_WRAPPED_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"DomainKeyCheck command needs a probe of 1..%d bytes", KMS_WRAPPED_MAX);
	pthread_rwlock_wrlock(&kr->lock);
	if (kr->probe_len != 0) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "the domain-key check is already set");
	} else {
		memcpy(kr->probe, c->wrapped_probe.data, c->wrapped_probe.len);
		kr->probe_len = c->wrapped_probe.len;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_apply(kms_keyring *kr, const uint8_t *cmd, size_t len,
		      kms_err *err)
{
	static const uint8_t none[1];
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = pb_alloc, .free = pb_free, .allocator_data = &st};
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
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_CREATE_KEY:
		rc = apply_create_key(kr, c->create_key, err);
		break;
	case KMS__V1__COMMAND__CMD_ADD_MEMBER:
		rc = apply_add_member(kr, c->add_member, err);
		break;
	case KMS__V1__COMMAND__CMD_REMOVE_MEMBER:
		rc = apply_remove_member(kr, c->remove_member, err);
		break;
	case KMS__V1__COMMAND__CMD_DOMAIN_KEY_CHECK:
		rc = apply_domain_key_check(kr, c->domain_key_check, err);
		break;
	case KMS__V1__COMMAND__CMD__NOT_SET:
	default:
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "command names no operation this node knows");
		break;
	}
	pb_message_free(&c->base);
	return rc;
}

int kms_keyring_snapshot(kms_keyring *kr, void *(*alloc)(size_t), kms_buf *out,
			 kms_err *err)
{
	Kms__V1__KeyRingSnapshot snap = KMS__V1__KEY_RING_SNAPSHOT__INIT;
	Kms__V1__KeyRecord **recs = NULL;
	Kms__V1__MemberRecord mrec[KMS_MEMBERS_MAX], *mptr[KMS_MEMBERS_MAX];
	size_t i, len;
	int rc = KMS_OK;

	out->data = NULL;
	out->len = 0;
	pthread_rwlock_rdlock(&kr->lock);
	recs = kms_calloc(kr->n, sizeof(*recs));
	if (recs == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory taking a snapshot");
		goto out;
	}
	/* The snapshot borrows the records only while it is packed. */
	for (i = 0; i < kr->n; i++)
		recs[i] = kr->entries[i].rec;
	snap.format = KEYRING_SNAPSHOT_FORMAT;
	snap.n_keys = kr->n;
	snap.keys = recs;
	for (i = 0; i < kr->n_members; i++) {
		kms__v1__member_record__init(&mrec[i]);
		mrec[i].id = kr->members[i].id;
		mrec[i].raft_address = kr->members[i].raft_address;
		mrec[i].grpc_address = kr->members[i].grpc_address;
		mptr[i] = &mrec[i];
	}
	snap.n_members = kr->n_members;
	snap.members = mptr;
	snap.domain_key_probe.data = kr->probe;
	snap.domain_key_probe.len = kr->probe_len;
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

int kms_keyring_restore(kms_keyring *kr, const uint8_t *snap, size_t len,
			kms_err *err)
{
	static const uint8_t none[1];
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = pb_alloc, .free = pb_free, .allocator_data = &st};
	Kms__V1__KeyRingSnapshot *s = NULL;
	struct kr_entry *fresh = NULL, *old;
	size_t i, built = 0, old_n;
	kms_keyring_release_fn fn;
	void *arg;
	int rc = KMS_OK;

	if (snap == NULL && len > 0)
		return kms_errf(err, KMS_ERR_INVALID, "snapshot bytes missing");
	s = kms__v1__key_ring_snapshot__unpack(&a, len,
					       snap != NULL ? snap : none);
	if (s == NULL)
		return kms_errf(
		    err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
		    st.failed
			? "out of memory parsing a snapshot"
			: "snapshot is not a valid kms.v1.KeyRingSnapshot");
	if (s->format != KEYRING_SNAPSHOT_FORMAT) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "snapshot format %u is not supported (want %d)",
			      s->format, KEYRING_SNAPSHOT_FORMAT);
		goto out;
	}
	/* Check everything before building anything: all or nothing. */
	for (i = 0; i < s->n_keys; i++) {
		KMS_TRY_GOTO(rc, record_check(s->keys[i], err), out);
		if (i > 0 &&
		    strcmp(s->keys[i - 1]->key_id, s->keys[i]->key_id) >= 0) {
			rc = kms_errf(
			    err, KMS_ERR_INVALID,
			    "snapshot keys are out of order or repeated "
			    "at key '%s'",
			    s->keys[i]->key_id);
			goto out;
		}
	}
	if (s->n_members > KMS_MEMBERS_MAX || s->domain_key_probe.len > KMS_WRAPPED_MAX) {
		rc = kms_errf(err, KMS_ERR_INVALID, "snapshot holds too many members or too long a probe");
		goto out;
	}
	for (i = 0; i < s->n_members; i++) {
		KMS_TRY_GOTO(rc, member_check(s->members[i], err), out);
		if (i > 0 && s->members[i - 1]->id >= s->members[i]->id) {
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "snapshot members are out of order or repeated");
			goto out;
		}
	}
	fresh = kms_calloc(s->n_keys, sizeof(*fresh));
	if (fresh == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory restoring a snapshot");
		goto out;
	}
	for (built = 0; built < s->n_keys; built++)
		KMS_TRY_GOTO(rc, entry_make(s->keys[built], &fresh[built], err),
			     out);

	pthread_rwlock_wrlock(&kr->lock);
	old = kr->entries;
	old_n = kr->n;
	kr->entries = fresh;
	kr->n = kr->cap = s->n_keys;
	for (i = 0; i < s->n_members; i++)
		member_set(&kr->members[i], s->members[i]);
	kr->n_members = s->n_members;
	if (s->domain_key_probe.len > 0)
		memcpy(kr->probe, s->domain_key_probe.data, s->domain_key_probe.len);
	kr->probe_len = s->domain_key_probe.len;
	fn = kr->release;
	arg = kr->release_arg;
	pthread_rwlock_unlock(&kr->lock);
	fresh = NULL;
	built = 0;
	/* Old handles are unreachable now; release them outside the lock. */
	entries_drop(old, old_n, fn, arg);
out:
	if (fresh != NULL)
		entries_drop(fresh, built, NULL, NULL);
	pb_message_free(&s->base);
	return rc;
}

/* Packs a command into out->data (kms_malloc'd, the caller's). */
static int command_pack(const Kms__V1__Command *c, kms_buf *out, kms_err *err)
{
	size_t len = kms__v1__command__get_packed_size(c);

	out->data = kms_malloc(len);
	if (out->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory building a command");
	if (kms__v1__command__pack(c, out->data) != len) {
		kms_buf_free(out);
		return kms_errf(err, KMS_ERR_INTERNAL, "command packed to a wrong size");
	}
	out->len = len;
	return KMS_OK;
}

int kms_keyring_cmd_create_key(const char *key_id, const char *description,
			       const Kms__V1__KeyPolicy *policy,
			       const char *created_by, int64_t created_at_unix,
			       const uint8_t *wrapped, size_t wrapped_len,
			       kms_buf *out, kms_err *err)
{
	Kms__V1__KeyPolicy empty = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__KeyVersionRecord v = KMS__V1__KEY_VERSION_RECORD__INIT;
	Kms__V1__KeyVersionRecord *vs[1] = {&v};
	Kms__V1__KeyRecord rec = KMS__V1__KEY_RECORD__INIT;
	Kms__V1__CreateKeyCommand ck = KMS__V1__CREATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	if (key_id == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "key id missing");
	if (wrapped == NULL && wrapped_len > 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"wrapped material missing");
	/* The command only borrows the caller's strings while it is packed. */
	v.version = 1;
	v.wrapped_material.data = (uint8_t *)wrapped;
	v.wrapped_material.len = wrapped_len;
	v.created_at_unix = created_at_unix;
	rec.key_id = (char *)key_id;
	rec.description = (char *)(description != NULL ? description : "");
	rec.policy = policy != NULL ? (Kms__V1__KeyPolicy *)policy : &empty;
	rec.created_at_unix = created_at_unix;
	rec.n_versions = 1;
	rec.versions = vs;
	rec.primary_version = 1;
	rec.enabled = 1;
	rec.created_by = (char *)(created_by != NULL ? created_by : "");
	/* The very checks apply runs, so a command we build is never refused as
	 * invalid. */
	KMS_TRY(record_check(&rec, err));
	ck.key = &rec;
	c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_KEY;
	c.create_key = &ck;
	return command_pack(&c, out, err);
}

int kms_keyring_cmd_add_member(uint64_t id, const char *raft_address, const char *grpc_address,
			       kms_buf *out, kms_err *err)
{
	Kms__V1__MemberRecord m = KMS__V1__MEMBER_RECORD__INIT;
	Kms__V1__AddMemberCommand am = KMS__V1__ADD_MEMBER_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	m.id = id;
	m.raft_address = (char *)raft_address;
	m.grpc_address = (char *)grpc_address;
	KMS_TRY(member_check(&m, err));
	am.member = &m;
	c.cmd_case = KMS__V1__COMMAND__CMD_ADD_MEMBER;
	c.add_member = &am;
	return command_pack(&c, out, err);
}

int kms_keyring_cmd_remove_member(uint64_t id, kms_buf *out, kms_err *err)
{
	Kms__V1__RemoveMemberCommand rm = KMS__V1__REMOVE_MEMBER_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	KMS_ENSURE(id != 0, err, KMS_ERR_INVALID, "a member id is 1 or more");
	rm.id = id;
	c.cmd_case = KMS__V1__COMMAND__CMD_REMOVE_MEMBER;
	c.remove_member = &rm;
	return command_pack(&c, out, err);
}

int kms_keyring_cmd_domain_key_check(const uint8_t *wrapped_probe, size_t len, kms_buf *out,
				     kms_err *err)
{
	Kms__V1__DomainKeyCheckCommand dk = KMS__V1__DOMAIN_KEY_CHECK_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	KMS_ENSURE(len > 0 && len <= KMS_WRAPPED_MAX, err, KMS_ERR_INVALID,
		   "a domain-key probe is 1..%d bytes", KMS_WRAPPED_MAX);
	dk.wrapped_probe.data = (uint8_t *)wrapped_probe;
	dk.wrapped_probe.len = len;
	c.cmd_case = KMS__V1__COMMAND__CMD_DOMAIN_KEY_CHECK;
	c.domain_key_check = &dk;
	return command_pack(&c, out, err);
}

size_t kms_keyring_members(kms_keyring *kr, kms_member *out, size_t cap)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->n_members;
	if (out != NULL && cap > 0)
		memcpy(out, kr->members, (n < cap ? n : cap) * sizeof(*out));
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

int kms_keyring_member(kms_keyring *kr, uint64_t id, kms_member *out)
{
	size_t pos;
	int rc = KMS_ERR_NOT_FOUND;

	pthread_rwlock_rdlock(&kr->lock);
	pos = member_pos(kr, id);
	if (pos < kr->n_members && kr->members[pos].id == id) {
		*out = kr->members[pos];
		rc = KMS_OK;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

size_t kms_keyring_domain_key_probe(kms_keyring *kr, uint8_t out[KMS_WRAPPED_MAX])
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->probe_len;
	memcpy(out, kr->probe, n);
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

/* --- lookups ------------------------------------------------------------ */

int kms_keyring_has_key(kms_keyring *kr, const char *key_id)
{
	int found = 0;

	if (key_id == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	(void)find_pos(kr, key_id, &found);
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
 * The order of the checks is the contract: existence, then policy, then
 * state, then version, so a caller without a grant learns nothing about a
 * key's state or versions.
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

	KMS_TRY(lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = find_entry(kr, key_id);
	if (e == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
			      key_id);
		goto out;
	}
	if (!kms_policy_allows(e->rec->policy, principal, op)) {
		rc = kms_errf(err, KMS_ERR_PERMISSION,
			      "principal '%s' may not %s with key '%s'",
			      principal != NULL ? principal : "(none)",
			      kms_op_name(op), key_id);
		goto out;
	}
	if (!e->rec->enabled) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "key '%s' is disabled",
			      key_id);
		goto out;
	}
	want = version != 0 ? version : e->rec->primary_version;
	idx = version_index(e->rec, want);
	if (idx < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND,
			      "key '%s' has no version %u", key_id, want);
		goto out;
	}
	v = e->rec->versions[idx];
	out->version = v->version;
	out->handle = e->handles[idx];
	/* record_check bounded the length to KMS_WRAPPED_MAX. */
	memcpy(out->wrapped, v->wrapped_material.data, v->wrapped_material.len);
	out->wrapped_len = v->wrapped_material.len;
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

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
	KMS_TRY(lookup_id_check(key_id, err));
	pthread_rwlock_wrlock(&kr->lock);
	e = find_entry(kr, key_id);
	if (e == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
			      key_id);
		goto out;
	}
	idx = version_index(e->rec, version);
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
	rc = message_dup(&md.base, &copy, err);
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
	KMS_TRY(lookup_id_check(key_id, err));
	pthread_rwlock_rdlock(&kr->lock);
	e = find_entry(kr, key_id);
	if (e == NULL) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "key '%s' not found",
			      key_id);
		goto out;
	}
	if (!may_describe(e->rec, principal, is_admin)) {
		rc = kms_errf(err, KMS_ERR_PERMISSION,
			      "principal '%s' may not %s with key '%s'",
			      principal != NULL ? principal : "(none)",
			      kms_op_name(KMS_OP_DESCRIBE_KEY), key_id);
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
		pb_message_free(&md->base);
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
	i = find_pos(kr, after_key_id != NULL ? after_key_id : "", &found);
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
