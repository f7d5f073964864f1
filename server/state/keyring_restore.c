/* keyring_restore.c - a snapshot installed into the key ring one record at a time, from its wire form. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/buf.h"

/*
 * Why not kms__v1__key_ring_snapshot__unpack: it parses the whole snapshot
 * at once (about 16 heap blocks a key, a gigabyte and a half at a million
 * keys) before a single entry is built. Here the snapshot's top-level fields
 * are walked in place: the few that are not keys are copied out and parsed
 * as a KeyRingSnapshot of their own, and each key record is parsed alone
 * into a scratch arena, checked, copied into its entry's one block, and the
 * arena is reset for the next. Everything is checked before the key ring
 * changes: a snapshot refused leaves it as it was.
 */

#define SNAP_FIELD_KEYS 2 /* KeyRingSnapshot.keys */

#define WIRE_VARINT 0
#define WIRE_FIXED64 1
#define WIRE_LEN 2
#define WIRE_FIXED32 5

struct wire_field {
	uint32_t number;
	unsigned type;
	const uint8_t *start; /* its tag */
	const uint8_t *value; /* a LEN field's payload */
	size_t value_len;
	const uint8_t *end; /* one past its last byte */
};

static int not_valid(const uint8_t *at, const uint8_t *base, const char *what, kms_err *err)
{
	return kms_errf(err, KMS_ERR_INVALID,
			"snapshot is not a valid kms.v1.KeyRingSnapshot: %s at byte %zu", what,
			(size_t)(at - base));
}

/* A varint of at most max_bytes bytes; NULL when it runs past end or max. */
static const uint8_t *read_varint(const uint8_t *p, const uint8_t *end, unsigned max_bytes,
				  uint64_t *out)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < max_bytes && p < end; i++, p++) {
		v |= (uint64_t)(*p & 0x7f) << (7 * i);
		if ((*p & 0x80) == 0) {
			*out = v;
			return p + 1;
		}
	}
	return NULL;
}

/* The field at *p (base: the snapshot's first byte, for messages). */
static int next_field(const uint8_t **p, const uint8_t *end, const uint8_t *base,
		      struct wire_field *f, kms_err *err)
{
	const uint8_t *q;
	uint64_t tag, len;

	memset(f, 0, sizeof(*f));
	f->start = *p;
	/* A tag is a 32-bit varint, as protobuf-c reads it. */
	q = read_varint(*p, end, 5, &tag);
	if (q == NULL || tag > UINT32_MAX || (tag >> 3) == 0)
		return not_valid(*p, base, "a malformed field tag", err);
	f->number = (uint32_t)(tag >> 3);
	f->type = (unsigned)(tag & 7);
	switch (f->type) {
	case WIRE_VARINT:
		q = read_varint(q, end, 10, &len);
		if (q == NULL)
			return not_valid(f->start, base, "a truncated varint", err);
		break;
	case WIRE_FIXED64:
	case WIRE_FIXED32: {
		size_t w = f->type == WIRE_FIXED64 ? 8 : 4;

		if ((size_t)(end - q) < w)
			return not_valid(f->start, base, "a truncated fixed-size field", err);
		q += w;
		break;
	}
	case WIRE_LEN:
		q = read_varint(q, end, 5, &len);
		if (q == NULL || len > (uint64_t)(end - q))
			return not_valid(f->start, base, "a field that runs past the end", err);
		f->value = q;
		f->value_len = (size_t)len;
		q += len;
		break;
	default:
		return not_valid(f->start, base, "a field of an unknown wire type", err);
	}
	if (f->number == SNAP_FIELD_KEYS && f->type != WIRE_LEN)
		return not_valid(f->start, base, "a key record that is not length-delimited",
				 err);
	f->end = q;
	*p = q;
	return KMS_OK;
}

/*
 * Walks the top level once: counts the key records and copies every other
 * field, in order, into *rest (kms_malloc'd), which parses as a
 * KeyRingSnapshot without keys.
 */
static int split_snapshot(const uint8_t *snap, size_t len, size_t *n_keys, kms_buf *rest,
			  kms_err *err)
{
	const uint8_t *end = snap + len, *p;
	struct wire_field f;
	size_t rest_len = 0;

	*n_keys = 0;
	rest->data = NULL;
	rest->len = 0;
	for (p = snap; p < end;) {
		KMS_TRY(next_field(&p, end, snap, &f, err));
		if (f.number == SNAP_FIELD_KEYS)
			(*n_keys)++;
		else
			rest_len += (size_t)(f.end - f.start);
	}
	rest->data = kms_malloc(rest_len > 0 ? rest_len : 1);
	if (rest->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring a snapshot");
	for (p = snap; p < end;) {
		/* Checked by the walk above. */
		(void)next_field(&p, end, snap, &f, NULL);
		if (f.number == SNAP_FIELD_KEYS)
			continue;
		memcpy(rest->data + rest->len, f.start, (size_t)(f.end - f.start));
		rest->len += (size_t)(f.end - f.start);
	}
	return KMS_OK;
}

/* The snapshot's key records, in order, each checked and built into out. */
static int build_entries(const uint8_t *snap, size_t len, struct kr_index *out, size_t n_keys,
			 kms_err *err)
{
	static const uint8_t none[1];
	const uint8_t *end = snap + len, *p;
	struct kr_arena arena;
	struct wire_field f;
	int rc = KMS_OK;

	kr_arena_init(&arena);
	for (p = snap; p < end && out->n < n_keys;) {
		const struct kr_entry *last = kr_index_last(out);
		Kms__V1__KeyRecord *rec;
		struct kr_entry e;

		(void)next_field(&p, end, snap, &f, NULL); /* split_snapshot checked it */
		if (f.number != SNAP_FIELD_KEYS)
			continue;
		kr_arena_reset(&arena);
		rec = kms__v1__key_record__unpack(&arena.pb, f.value_len,
						  f.value_len > 0 ? f.value : none);
		if (rec == NULL) {
			rc = arena.failed
				 ? kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring a snapshot")
				 : kms_errf(err, KMS_ERR_INVALID,
					    "snapshot is not a valid kms.v1.KeyRingSnapshot: key "
					    "record %zu is malformed",
					    out->n + 1);
			break;
		}
		KMS_TRY_GOTO(rc, kr_record_check(rec, err), out);
		if (last != NULL && strcmp(last->rec->key_id, rec->key_id) >= 0) {
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "snapshot keys are out of order or repeated at key '%s'",
				      rec->key_id);
			break;
		}
		KMS_TRY_GOTO(rc, kr_entry_make(rec, &e, err), out);
		rc = kr_index_append(out, &e, err);
		if (rc != KMS_OK) {
			kr_entry_clear(&e);
			break;
		}
	}
out:
	kr_arena_free(&arena);
	return rc;
}

/* The parts of a snapshot that are not keys, with their rules. */
static int check_rest(const Kms__V1__KeyRingSnapshot *s, kms_err *err)
{
	if (s->format != KEYRING_SNAPSHOT_FORMAT)
		return kms_errf(err, KMS_ERR_INVALID,
				"snapshot format %u is not supported (want %d)", s->format,
				KEYRING_SNAPSHOT_FORMAT);
	if (s->n_members > KMS_MEMBERS_MAX || s->domain_key_probe.len > KMS_WRAPPED_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"snapshot holds too many members or too long a probe");
	for (size_t i = 0; i < s->n_members; i++) {
		KMS_TRY(kr_member_check(s->members[i], err));
		if (i > 0 && s->members[i - 1]->id >= s->members[i]->id)
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot members are out of order or repeated");
	}
	/* A snapshot from before the list was replicated holds none. */
	if (s->n_administrators > 0)
		KMS_TRY(kr_admins_check(s->administrators, s->n_administrators, err));
	return KMS_OK;
}

int kms_keyring_restore(kms_keyring *kr, const uint8_t *snap, size_t len, kms_err *err)
{
	static const uint8_t none[1];
	struct pb_state st = {0};
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__KeyRingSnapshot *s = NULL;
	kms_buf rest = {NULL, 0};
	struct kr_index fresh, old;
	struct kr_alias_table aliases = {0}, old_aliases;
	struct kr_quorum quorum = {0};
	char **admins = NULL, **old_admins;
	kms_dk_state dk;
	size_t i, n_keys = 0, old_n_admins, n_admins = 0;
	int rc = KMS_OK;

	kr_index_init(&fresh);
	if (snap == NULL && len > 0)
		return kms_errf(err, KMS_ERR_INVALID, "snapshot bytes missing");
	if (snap == NULL)
		snap = none;
	KMS_TRY_GOTO(rc, split_snapshot(snap, len, &n_keys, &rest, err), out);
	s = kms__v1__key_ring_snapshot__unpack(&a, rest.len, rest.data);
	if (s == NULL) {
		rc = kms_errf(err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
			      st.failed ? "out of memory parsing a snapshot"
					: "snapshot is not a valid kms.v1.KeyRingSnapshot");
		goto out;
	}
	KMS_TRY_GOTO(rc, check_rest(s, err), out);
	if (s->n_administrators > 0) {
		admins = kr_admins_dup(s->administrators, s->n_administrators);
		if (admins == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring a snapshot");
			goto out;
		}
		n_admins = s->n_administrators;
	}
	KMS_TRY_GOTO(rc, kr_dk_from_message(s->domain_key, &dk, err), out);
	KMS_TRY_GOTO(rc, build_entries(snap, len, &fresh, n_keys, err), out);
	KMS_TRY_GOTO(rc, kr_aliases_build(s->aliases, s->n_aliases, &fresh, &aliases, err), out);
	KMS_TRY_GOTO(rc, kr_quorum_build(s, &quorum, err), out);

	pthread_rwlock_wrlock(&kr->lock);
	old = kr->keys;
	/* Unchanged versions keep this node's unwrapped keys. */
	kr_handles_carry(&fresh, &old);
	kr->keys = fresh;
	kr_lru_prune(kr); /* the versions that were gone or changed */
	for (i = 0; i < s->n_members; i++)
		kr_member_set(&kr->members[i], s->members[i]);
	kr->n_members = s->n_members;
	if (s->domain_key_probe.len > 0)
		memcpy(kr->probe, s->domain_key_probe.data, s->domain_key_probe.len);
	kr->probe_len = s->domain_key_probe.len;
	kr->dk = dk;
	old_admins = kr->admins;
	old_n_admins = kr->n_admins;
	kr->admins = admins;
	kr->n_admins = n_admins;
	admins = NULL;
	old_aliases.aliases = kr->aliases;
	old_aliases.by_key = kr->by_key;
	old_aliases.n = kr->n_aliases;
	kr->aliases = aliases.aliases;
	kr->by_key = aliases.by_key;
	kr->n_aliases = kr->cap_aliases = aliases.n;
	memset(&aliases, 0, sizeof(aliases));
	kr_quorum_swap(kr, &quorum); /* quorum now holds the old one */
	kr_rev_ring_free(kr);
	pthread_rwlock_unlock(&kr->lock);
	kr_index_init(&fresh);
	/*
	 * The old entries are unreachable now: drop their references outside
	 * the lock. A handle a call still uses is released when it is done.
	 */
	kr_entries_drop(&old);
	kms_keyring_admins_free(old_admins, old_n_admins);
	kr_aliases_free(&old_aliases);
out:
	kr_aliases_free(&aliases);
	kr_quorum_build_free(&quorum);
	kr_entries_drop(&fresh);
	kms_keyring_admins_free(admins, n_admins);
	if (s != NULL)
		kr_pb_message_free(&s->base);
	kms_buf_free(&rest);
	return rc;
}
