/* keyring_region.c - regions in the replicated state: the cluster's region, which region may change a key, the links to other regions, and the stream of multi-region changes (region_rev on the primary, RegionApply on a secondary). */
#include <stdlib.h>
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/region.h"
#include "kms/spiffe.h"

/*
 * A record's scope: a multi-region key names a valid home region, and a
 * regional key names none, so that "homed here" has one reading.
 */
/* The cluster's region for a message: a state from before regions names none. */
static const char *region_name(const struct kms_keyring *kr)
{
	return kr->region[0] != '\0' ? kr->region : "unnamed";
}

int kr_scope_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	const char *home = rec->home_region != NULL ? rec->home_region : "";
	kms_err sub;

	if (!rec->multi_region) {
		KMS_ENSURE(home[0] == '\0', err, KMS_ERR_INVALID,
			   "key '%s' is regional but names a home region", rec->key_id);
		return KMS_OK;
	}
	if (kms_region_name_check(home, &sub) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID, "multi-region key '%s': %s", rec->key_id,
				sub.msg);
	return KMS_OK;
}

int kr_home_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec, kms_err *err)
{
	if (!rec->multi_region || strcmp(rec->home_region, kr->region) == 0)
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PRECONDITION,
			"key '%s' is a multi-region key of primary region '%s' (this is region "
			"'%s'): change it in region '%s'",
			rec->key_id, rec->home_region, region_name(kr),
			rec->home_region);
}

int kr_entry_for_write(const struct kms_keyring *kr, const char *key_id, struct kr_entry **e,
		       kms_err *err)
{
	KMS_TRY(kr_entry_for(kr, key_id, e, err));
	return kr_home_check(kr, (*e)->rec, err);
}

int kr_create_scope_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec,
			  kms_err *err)
{
	if (!rec->multi_region)
		return KMS_OK;
	KMS_ENSURE(kr->region[0] != '\0', err, KMS_ERR_PRECONDITION,
		   "this cluster's state names no region (it was made before regions, or "
		   "without [quorum] operators): it cannot create multi-region keys");
	KMS_ENSURE(strcmp(rec->home_region, kr->region) == 0, err, KMS_ERR_PRECONDITION,
		   "key '%s' would be homed in region '%s', but this is region '%s'", rec->key_id,
		   rec->home_region, kr->region);
	return KMS_OK;
}

int kr_region_set(char out[KMS_REGION_NAME_MAX + 1], const char *region, kms_err *err)
{
	if (region == NULL || region[0] == '\0') {
		out[0] = '\0';
		return KMS_OK;
	}
	KMS_TRY(kms_region_name_check(region, err));
	memcpy(out, region, strlen(region) + 1);
	return KMS_OK;
}

void kms_keyring_region(kms_keyring *kr, char out[KMS_REGION_NAME_MAX + 1])
{
	pthread_rwlock_rdlock(&kr->lock);
	memcpy(out, kr->region, sizeof(kr->region));
	pthread_rwlock_unlock(&kr->lock);
}

int kms_keyring_cmd_set_home_region(kms_buf *cmd, const char *region, kms_err *err)
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c;
	kms_buf fresh = {0};
	char *own;
	int rc;

	KMS_ENSURE(cmd != NULL && cmd->data != NULL, err, KMS_ERR_INVALID, "no command to stamp");
	KMS_TRY(kms_region_name_check(region, err));
	c = kms__v1__command__unpack(&a, cmd->len, cmd->data);
	if (c == NULL)
		return kms_errf(err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
				"command is not a valid kms.v1.Command");
	if (c->cmd_case != KMS__V1__COMMAND__CMD_CREATE_KEY || c->create_key == NULL ||
	    c->create_key->key == NULL) {
		kr_pb_message_free(&c->base);
		return kms_errf(err, KMS_ERR_INVALID, "only CreateKey names a home region");
	}
	c->create_key->key->multi_region = 1;
	/* Borrowed while packed; c's own string goes back before c is freed. */
	own = c->create_key->key->home_region;
	c->create_key->key->home_region = (char *)region;
	rc = kr_command_pack(c, &fresh, err);
	c->create_key->key->home_region = own;
	kr_pb_message_free(&c->base);
	if (rc != KMS_OK)
		return rc;
	kms_buf_free(cmd);
	*cmd = fresh;
	return KMS_OK;
}

/* --- links --- */

void kr_links_free(Kms__V1__RegionLinkRecord **links, size_t n)
{
	for (size_t i = 0; i < n; i++)
		kr_pb_message_free(&links[i]->base);
	kms_free(links);
}

static int link_record_check(const Kms__V1__RegionLinkRecord *l, kms_err *err)
{
	Kms__V1__LinkRegionOperation op = KMS__V1__LINK_REGION_OPERATION__INIT;

	op.peer_region = l->peer_region;
	op.role = l->role;
	op.mode = l->mode;
	op.peer_endpoints = l->peer_endpoints;
	op.n_peer_endpoints = l->n_peer_endpoints;
	op.peer_trust_domain = l->peer_trust_domain;
	op.peer_node_ca_pem = l->peer_node_ca_pem;
	KMS_TRY(kms_link_region_check(&op, err));
	KMS_ENSURE(l->epoch >= 1, err, KMS_ERR_INVALID, "the link to region '%s' has no epoch",
		   l->peer_region);
	return KMS_OK;
}

int kr_links_build(const Kms__V1__KeyRingSnapshot *s, struct kr_quorum *q, kms_err *err)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	size_t i;
	int rc = KMS_OK;

	q->region_rev = s->region_rev;
	if (s->n_region_links == 0)
		return KMS_OK;
	KMS_ENSURE(s->n_region_links <= KMS_REGION_LINKS_MAX, err, KMS_ERR_INVALID,
		   "snapshot holds %zu region links", s->n_region_links);
	KMS_ENSURE(q->region[0] != '\0', err, KMS_ERR_INVALID,
		   "snapshot holds region links but names no region");
	links = kms_calloc(s->n_region_links, sizeof(*links));
	if (links == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory restoring region links");
	for (i = 0; i < s->n_region_links && rc == KMS_OK; i++) {
		rc = link_record_check(s->region_links[i], err);
		if (rc == KMS_OK && i > 0 &&
		    strcmp(s->region_links[i - 1]->peer_region, s->region_links[i]->peer_region) >= 0)
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "snapshot region links are out of order or repeated");
		if (rc == KMS_OK)
			rc = kr_message_dup(&s->region_links[i]->base, (ProtobufCMessage **)&links[i],
					    err);
	}
	if (rc != KMS_OK) {
		kr_links_free(links, i);
		return rc;
	}
	q->links = links;
	q->n_links = s->n_region_links;
	return KMS_OK;
}

static long link_find(const struct kms_keyring *kr, const char *peer)
{
	for (size_t i = 0; i < kr->n_links; i++)
		if (strcmp(kr->links[i]->peer_region, peer) == 0)
			return (long)i;
	return -1;
}

int kr_exec_link_region(kms_keyring *kr, const Kms__V1__LinkRegionOperation *op,
			const char *proposal_id, int64_t now, kms_err *err)
{
	Kms__V1__RegionLinkRecord rec = KMS__V1__REGION_LINK_RECORD__INIT, *copy = NULL;
	Kms__V1__RegionLinkRecord **grown;
	char td[KMS_SPIFFE_ID_MAX + 1];
	size_t pos;
	int rc = KMS_OK;

	KMS_TRY(kms_link_region_check(op, err));
	KMS_TRY(kms_trust_domain_parse(op->peer_trust_domain, td, sizeof(td), err));
	rec.peer_region = op->peer_region;
	rec.role = op->role;
	rec.mode = op->mode;
	rec.peer_endpoints = op->peer_endpoints;
	rec.n_peer_endpoints = op->n_peer_endpoints;
	rec.peer_trust_domain = td;
	rec.peer_node_ca_pem = op->peer_node_ca_pem;
	rec.epoch = 1;
	rec.linked_at_unix = now;
	rec.proposal_id = (char *)proposal_id;
	KMS_TRY(kr_message_dup(&rec.base, (ProtobufCMessage **)&copy, err));
	pthread_rwlock_wrlock(&kr->lock);
	if (kr->region[0] == '\0') {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "this cluster's state names no region: it cannot be linked");
	} else if (strcmp(op->peer_region, kr->region) == 0) {
		rc = kms_errf(err, KMS_ERR_INVALID, "region '%s' cannot be linked to itself",
			      kr->region);
	} else if (link_find(kr, op->peer_region) >= 0) {
		rc = kms_errf(err, KMS_ERR_EXISTS, "region '%s' is linked to region '%s' already",
			      kr->region, op->peer_region);
	} else if (kr->n_links == KMS_REGION_LINKS_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "region '%s' has %d links, the most it keeps",
			      kr->region, KMS_REGION_LINKS_MAX);
	} else if ((grown = kms_realloc(kr->links, (kr->n_links + 1) * sizeof(*grown))) == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory linking region '%s'",
			      op->peer_region);
	} else {
		kr->links = grown;
		for (pos = 0; pos < kr->n_links &&
			      strcmp(kr->links[pos]->peer_region, op->peer_region) < 0;
		     pos++)
			;
		memmove(&kr->links[pos + 1], &kr->links[pos],
			(kr->n_links - pos) * sizeof(*kr->links));
		kr->links[pos] = copy;
		kr->n_links++;
		copy = NULL;
	}
	pthread_rwlock_unlock(&kr->lock);
	if (copy != NULL)
		kr_pb_message_free(&copy->base);
	return rc;
}

int kms_keyring_region_links(kms_keyring *kr, Kms__V1__RegionLinkRecord ***out, size_t *n,
			     uint64_t *region_rev, kms_err *err)
{
	Kms__V1__RegionLinkRecord **copy = NULL;
	size_t i = 0;
	int rc = KMS_OK;

	*out = NULL;
	*n = 0;
	pthread_rwlock_rdlock(&kr->lock);
	if (region_rev != NULL)
		*region_rev = kr->region_rev;
	if (kr->n_links > 0 && (copy = kms_calloc(kr->n_links, sizeof(*copy))) == NULL)
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading region links");
	for (i = 0; rc == KMS_OK && i < kr->n_links; i++)
		rc = kr_message_dup(&kr->links[i]->base, (ProtobufCMessage **)&copy[i], err);
	pthread_rwlock_unlock(&kr->lock);
	if (rc != KMS_OK) {
		kr_links_free(copy, i > 0 ? i - 1 : 0);
		return rc;
	}
	*out = copy;
	*n = kr->n_links > 0 ? i : 0;
	return KMS_OK;
}

void kms_keyring_region_links_free(Kms__V1__RegionLinkRecord **links, size_t n)
{
	kr_links_free(links, n);
}

/* --- the stream: region_rev on the primary --- */

/* The key a command changed, for the region stream; NULL for the others.
 * Reserved encryptions are each region's own, and not a change. */
const char *kr_changed_key(const Kms__V1__Command *c)
{
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_CREATE_KEY:
		return c->create_key->key->key_id;
	case KMS__V1__COMMAND__CMD_ROTATE_KEY:
		return c->rotate_key->key_id;
	case KMS__V1__COMMAND__CMD_SET_KEY_ENABLED:
		return c->set_key_enabled->key_id;
	case KMS__V1__COMMAND__CMD_SCHEDULE_KEY_DELETION:
		return c->schedule_key_deletion->key_id;
	case KMS__V1__COMMAND__CMD_CANCEL_KEY_DELETION:
		return c->cancel_key_deletion->key_id;
	case KMS__V1__COMMAND__CMD_DESTROY_KEY:
		return c->destroy_key->key_id;
	case KMS__V1__COMMAND__CMD_PUT_KEY_POLICY:
		return c->put_key_policy->key_id;
	case KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY:
		return c->set_rotation_policy->key_id;
	default:
		return NULL;
	}
}


/*
 * The keys of the latest KR_REV_RING revs, so that a pull that is not far
 * behind reads its changes in O(changes) instead of scanning every key
 * (under the read lock, which holds off Raft's writes). Not replicated:
 * each node records the revs it applies; a rev missing from it (given
 * before this process started, or by a restored snapshot) sends the pull
 * to the scan.
 */
#define KR_REV_RING 4096

struct kr_rev_ring {
	struct {
		uint64_t rev; /* 0: none recorded */
		char key_id[KMS_KEY_ID_MAX + 1];
	} slot[KR_REV_RING];
};

void kr_rev_ring_free(kms_keyring *kr)
{
	kms_free(kr->revs);
	kr->revs = NULL;
}

/* Records that rev was given to key_id (write lock held). */
static void rev_ring_note(kms_keyring *kr, uint64_t rev, const char *key_id)
{
	size_t len = strlen(key_id);

	if (kr->revs == NULL)
		kr->revs = kms_calloc(1, sizeof(*kr->revs));
	/* Out of memory, or an id no record holds: the pulls scan. */
	if (kr->revs == NULL || len > KMS_KEY_ID_MAX)
		return;
	kr->revs->slot[rev % KR_REV_RING].rev = rev;
	memcpy(kr->revs->slot[rev % KR_REV_RING].key_id, key_id, len + 1);
}

/* The next region_rev, for e's record (write lock held). */
static uint64_t next_rev(kms_keyring *kr, const struct kr_entry *e)
{
	rev_ring_note(kr, ++kr->region_rev, e->rec->key_id);
	return kr->region_rev;
}

void kr_region_touch_locked(kms_keyring *kr, const char *key_id)
{
	struct kr_entry *e = key_id != NULL ? kr_find_entry(kr, key_id) : NULL;

	/* A scalar of the record's block: changed in place, under the lock. */
	if (e != NULL && e->rec->multi_region && strcmp(e->rec->home_region, kr->region) == 0)
		e->rec->region_rev = next_rev(kr, e);
}

void kr_region_touch(kms_keyring *kr, const char *key_id)
{
	pthread_rwlock_wrlock(&kr->lock);
	kr_region_touch_locked(kr, key_id);
	pthread_rwlock_unlock(&kr->lock);
}

struct rev_ref {
	uint64_t rev;
	const Kms__V1__KeyRecord *rec;
};

static int rev_cmp(const void *x, const void *y)
{
	const struct rev_ref *a = x, *b = y;

	return a->rev < b->rev ? -1 : a->rev > b->rev;
}

/*
 * The changes after after_rev from the ring (read lock held), at most max,
 * in rev order: 1 when it held every rev up to the head, 0 when the scan
 * must answer, -1 out of memory. A key changed again since a rev has a
 * newer one and is taken there.
 */
static int rev_ring_changes(const struct kms_keyring *kr, uint64_t after_rev, size_t max,
			    struct rev_ref **out, size_t *n)
{
	struct rev_ref *refs;
	size_t got = 0;

	*n = 0;
	if (kr->revs == NULL || kr->region_rev - after_rev > KR_REV_RING)
		return 0;
	for (uint64_t r = after_rev + 1; r <= kr->region_rev; r++)
		if (kr->revs->slot[r % KR_REV_RING].rev != r)
			return 0;
	refs = kms_calloc(max > 0 ? max : 1, sizeof(*refs));
	if (refs == NULL)
		return -1;
	for (uint64_t r = after_rev + 1; r <= kr->region_rev && got < max; r++) {
		const struct kr_entry *e = kr_find_entry(kr, kr->revs->slot[r % KR_REV_RING].key_id);

		if (e == NULL || !e->rec->multi_region || e->rec->region_rev != r ||
		    strcmp(e->rec->home_region, kr->region) != 0)
			continue;
		refs[got].rev = r;
		refs[got].rec = e->rec;
		got++;
	}
	*out = refs;
	*n = got;
	return 1;
}

void kms_keyring_records_free(Kms__V1__KeyRecord **recs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (recs[i] != NULL)
			kr_pb_message_free(&recs[i]->base);
	kms_free(recs);
}

int kms_keyring_region_changes(kms_keyring *kr, uint64_t after_rev, size_t max,
			       Kms__V1__KeyRecord ***out, size_t *n, uint64_t *head, kms_err *err)
{
	struct rev_ref *refs = NULL, *grown;
	size_t n_refs = 0, cap = 0, take;
	Kms__V1__KeyRecord **copies = NULL;
	struct kr_cursor cur;
	struct kr_entry *e;
	int rc = KMS_OK;

	*out = NULL;
	*n = 0;
	pthread_rwlock_rdlock(&kr->lock);
	*head = kr->region_rev;
	/*
	 * A cursor past the head: this node is behind the one that answered
	 * before (another node may answer), or the region's state went back
	 * (a restore). Answering "nothing new" would skip every change up to
	 * the cursor once the head passes it.
	 */
	if (after_rev > kr->region_rev) {
		rc = kms_errf(err, KMS_ERR_UNAVAILABLE,
			      "the cursor %llu is past region '%s''s changes on this node (up to "
			      "%llu): this node is behind, or the region's state went back (a "
			      "restore)",
			      (unsigned long long)after_rev, region_name(kr),
			      (unsigned long long)kr->region_rev);
		goto out;
	}
	/* Not far behind: the ring names the keys of the revs after the
	 * cursor, and they come in rev order, so max of them are enough. */
	switch (rev_ring_changes(kr, after_rev, max, &refs, &n_refs)) {
	case 0:
		break;
	case 1:
		goto copy;
	default:
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading changes");
		goto out;
	}
	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		if (!e->rec->multi_region || e->rec->region_rev <= after_rev ||
		    strcmp(e->rec->home_region, kr->region) != 0)
			continue;
		if (n_refs == cap) {
			cap = cap == 0 ? 64 : cap * 2;
			grown = kms_realloc(refs, cap * sizeof(*refs));
			if (grown == NULL) {
				rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading changes");
				goto out;
			}
			refs = grown;
		}
		refs[n_refs].rev = e->rec->region_rev;
		refs[n_refs].rec = e->rec;
		n_refs++;
	}
	if (n_refs > 0)
		qsort(refs, n_refs, sizeof(*refs), rev_cmp);
copy:
	if (n_refs == 0)
		goto out;
	take = n_refs < max ? n_refs : max;
	copies = kms_calloc(take, sizeof(*copies));
	if (copies == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading changes");
		goto out;
	}
	for (size_t i = 0; i < take && rc == KMS_OK; i++)
		rc = kr_message_dup(&refs[i].rec->base, (ProtobufCMessage **)&copies[i], err);
	if (rc == KMS_OK) {
		*out = copies;
		*n = take;
		copies = NULL;
	}
	kms_keyring_records_free(copies, copies != NULL ? take : 0);
out:
	pthread_rwlock_unlock(&kr->lock);
	kms_free(refs);
	return rc;
}

/* --- the stream: RegionApply on the secondary --- */

/* An incoming record, as a secondary may hold it. */
static int incoming_check(const Kms__V1__KeyRecord *rec, const char *peer, kms_err *err)
{
	KMS_TRY(kr_record_check(rec, err));
	KMS_ENSURE(rec->multi_region && strcmp(rec->home_region, peer) == 0, err, KMS_ERR_INVALID,
		   "RegionApply: key '%s' is not a multi-region key of region '%s'", rec->key_id,
		   peer);
	return KMS_OK;
}

/*
 * Replaces e's record with the incoming one (write lock held). What is
 * this region's own stays: the encryptions it reserved per version, and a
 * version it exhausted. A version whose material is not the one held here
 * any more (destroyed at the primary, or, after a promotion, the new
 * primary's version of that number) gives its handle to *dropped, for the
 * caller to drop outside the lock: the handle was of the other key. Versions
 * held here beyond the incoming ones (made by a primary that was fenced
 * since, inside its RPO) stay until the new primary makes its own of that
 * number.
 */
static int replace_record(kms_keyring *kr, struct kr_entry *e, const Kms__V1__KeyRecord *in,
			  kms_key_handle **dropped, kms_err *err)
{
	Kms__V1__KeyVersionRecord *vs = NULL, **vp = NULL;
	Kms__V1__KeyRecord shape = *in;
	size_t mine = e->rec->n_versions;
	size_t n = in->n_versions > mine ? in->n_versions : mine;
	int rc;

	(void)kr;
	if (n > 0 && ((vs = kms_calloc(n, sizeof(*vs))) == NULL ||
		      (vp = kms_calloc(n, sizeof(*vp))) == NULL)) {
		kms_free(vs);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory applying key '%s'", in->key_id);
	}
	for (size_t i = 0; i < n; i++) {
		const Kms__V1__KeyVersionRecord *own = i < mine ? e->rec->versions[i] : NULL;

		if (i >= in->n_versions) {
			vs[i] = *own;
			vp[i] = &vs[i];
			continue;
		}
		vs[i] = *in->versions[i];
		vs[i].reserved_encryptions = own != NULL ? own->reserved_encryptions : 0;
		if (own != NULL && own->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED &&
		    vs[i].state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED)
			vs[i].state = own->state;
		if (own != NULL && e->handles[i] != NULL &&
		    (vs[i].wrapped_material.len != own->wrapped_material.len ||
		     memcmp(vs[i].wrapped_material.data, own->wrapped_material.data,
			    own->wrapped_material.len) != 0)) {
			dropped[i] = e->handles[i];
			e->handles[i] = NULL;
		}
		vp[i] = &vs[i];
	}
	shape.versions = vp;
	shape.n_versions = n;
	rc = kr_entry_rebuild(e, &shape, err);
	if (rc != KMS_OK) {
		/* Put back what was taken: the entry is unchanged. */
		for (size_t i = 0; i < in->n_versions && i < mine; i++)
			if (dropped[i] != NULL) {
				e->handles[i] = dropped[i];
				dropped[i] = NULL;
			}
	}
	kms_free(vs);
	kms_free(vp);
	return rc;
}

void kr_region_conflict(Kms__V1__RegionLinkRecord *l, const char *name)
{
	char *id = kms_strdup(name);

	l->conflicts++;
	/* Out of memory: counted, the last name kept. */
	if (id == NULL)
		return;
	if (l->last_conflict != NULL && l->last_conflict != protobuf_c_empty_string)
		kms_free(l->last_conflict);
	l->last_conflict = id;
}

/* One incoming record (write lock held): a new key, a newer state of one
 * already here, or a conflict or a stale copy, which change nothing. */
static int apply_one(kms_keyring *kr, Kms__V1__RegionLinkRecord *l, const Kms__V1__KeyRecord *in,
		     kms_key_handle **dropped, kms_err *err)
{
	struct kr_entry *e = kr_find_entry(kr, in->key_id), fresh;
	int rc;

	if (e == NULL) {
		KMS_TRY(kr_entry_make(in, &fresh, err));
		/* The encryptions reserved at the primary are the primary's. */
		for (size_t i = 0; i < fresh.rec->n_versions; i++)
			fresh.rec->versions[i]->reserved_encryptions = 0;
		rc = kr_index_insert(&kr->keys, &fresh, err);
		if (rc != KMS_OK)
			kr_entry_clear(&fresh);
		return rc;
	}
	if (!e->rec->multi_region || strcmp(e->rec->home_region, l->peer_region) != 0) {
		/* This region's own key holds the id: it stays, and status shows it. */
		kr_region_conflict(l, in->key_id);
		return KMS_OK;
	}
	/*
	 * Pulls after the cursor never bring an older copy of a key from the
	 * same primary; a copy with a lower region_rev than the one held is
	 * one, and changes nothing. (A fenced region's own revs are set to 0,
	 * so its new primary's copies replace them.)
	 */
	if (in->region_rev < e->rec->region_rev)
		return KMS_OK;
	return replace_record(kr, e, in, dropped, err);
}

/* Each alias a valid name of one of the command's keys, at most 4 a key. */
static int incoming_aliases_check(const Kms__V1__RegionApplyCommand *c, kms_err *err)
{
	KMS_ENSURE(c->n_aliases <= (size_t)c->n_keys * KMS_REGION_ALIASES_PER_KEY, err,
		   KMS_ERR_INVALID, "RegionApply holds %zu aliases for %zu keys", c->n_aliases,
		   c->n_keys);
	for (size_t i = 0; i < c->n_aliases; i++) {
		const Kms__V1__AliasRecord *a = c->aliases[i];
		int known = 0;

		KMS_ENSURE(a != NULL, err, KMS_ERR_INVALID, "RegionApply holds an empty alias");
		KMS_TRY(kms_alias_name_check(a->alias_name, err));
		for (size_t k = 0; k < c->n_keys && !known; k++)
			known = strcmp(c->keys[k]->key_id, a->key_id) == 0;
		KMS_ENSURE(known, err, KMS_ERR_INVALID,
			   "RegionApply: alias '%s' names key '%s', which it does not hold",
			   a->alias_name, a->key_id);
	}
	return KMS_OK;
}

/* The versions of in, or of the copy held here when it has more (lock held). */
static size_t slots_for(const struct kms_keyring *kr, const Kms__V1__KeyRecord *in)
{
	const struct kr_entry *e = kr_find_entry(kr, in->key_id);

	return e != NULL && e->rec->n_versions > in->n_versions ? e->rec->n_versions
								: in->n_versions;
}

int kr_apply_region_apply(kms_keyring *kr, const Kms__V1__RegionApplyCommand *c, int dry,
			  kms_err *err)
{
	kms_key_handle **dropped = NULL;
	Kms__V1__RegionLinkRecord *l;
	size_t total = 0, at_version = 0;
	long at;
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL && c->peer_region != NULL, err, KMS_ERR_INVALID,
		   "RegionApply holds nothing");
	KMS_ENSURE(c->n_keys <= KMS_REGION_APPLY_MAX, err, KMS_ERR_INVALID,
		   "RegionApply holds %zu keys, more than %d", c->n_keys, KMS_REGION_APPLY_MAX);
	for (size_t i = 0; i < c->n_keys; i++) {
		KMS_TRY(incoming_check(c->keys[i], c->peer_region, err));
		/* Once each: the slots of the dropped handles count on it. */
		for (size_t j = 0; j < i; j++)
			KMS_ENSURE(strcmp(c->keys[i]->key_id, c->keys[j]->key_id) != 0, err,
				   KMS_ERR_INVALID, "RegionApply holds key '%s' twice",
				   c->keys[i]->key_id);
	}
	KMS_TRY(incoming_aliases_check(c, err));
	kr_lock(kr, dry);
	at = link_find(kr, c->peer_region);
	if (at < 0 || kr->links[at]->role != KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "region '%s' is not linked as a secondary of region '%s'",
			      region_name(kr), c->peer_region);
		goto out;
	}
	l = kr->links[at];
	if (c->epoch != l->epoch) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "the changes are of epoch %llu of the link to region '%s', which is "
			      "at epoch %llu",
			      (unsigned long long)c->epoch, c->peer_region,
			      (unsigned long long)l->epoch);
		goto out;
	}
	if (c->n_keys > 0)
		KMS_TRY_GOTO(rc, kr_dk_generation_check(kr, c->domain_key_generation, err), out);
	if (dry)
		goto out;
	/* One slot per version, incoming or held: the handles to drop
	 * outside the lock. */
	for (size_t i = 0; i < c->n_keys; i++)
		total += slots_for(kr, c->keys[i]);
	if (total > 0 && (dropped = kms_calloc(total, sizeof(*dropped))) == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory applying region changes");
		goto out;
	}
	/*
	 * Key by key: only running out of memory stops it half way, and then
	 * the cursor stays, so the next pull brings the same keys again and
	 * applying one twice changes nothing.
	 */
	for (size_t i = 0; i < c->n_keys && rc == KMS_OK; i++) {
		size_t slots = slots_for(kr, c->keys[i]);
		const struct kr_entry *e;

		rc = apply_one(kr, l, c->keys[i], dropped + at_version, err);
		at_version += slots;
		/* The aliases of a key that is the primary's here (not a conflict). */
		e = rc == KMS_OK ? kr_find_entry(kr, c->keys[i]->key_id) : NULL;
		if (e != NULL && e->rec->multi_region &&
		    strcmp(e->rec->home_region, c->peer_region) == 0)
			rc = kr_aliases_set_for_key(kr, c->keys[i]->key_id, c->aliases,
						    c->n_aliases, l, err);
	}
	if (rc == KMS_OK) {
		if (c->cursor > l->cursor)
			l->cursor = c->cursor;
		l->peer_head = c->peer_head;
		l->applied_at_unix = c->now_unix;
	}
	kr_lru_prune(kr);
out:
	pthread_rwlock_unlock(&kr->lock);
	for (size_t j = 0; dropped != NULL && j < total; j++)
		kr_handle_drop(dropped[j]);
	kms_free(dropped);
	return rc;
}

int kms_keyring_cmd_region_apply(const char *peer_region, uint64_t epoch,
				 Kms__V1__KeyRecord *const *keys, size_t n,
				 Kms__V1__AliasRecord *const *aliases, size_t n_aliases,
				 uint64_t cursor, uint64_t peer_head, int64_t now_unix,
				 uint32_t dk_generation, kms_buf *out, kms_err *err)
{
	Kms__V1__RegionApplyCommand ra = KMS__V1__REGION_APPLY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_region_name_check(peer_region, err));
	KMS_ENSURE(n <= KMS_REGION_APPLY_MAX, err, KMS_ERR_INVALID,
		   "RegionApply takes at most %d keys, not %zu", KMS_REGION_APPLY_MAX, n);
	for (size_t i = 0; i < n; i++)
		KMS_TRY(incoming_check(keys[i], peer_region, err));
	ra.peer_region = (char *)peer_region;
	ra.epoch = epoch;
	ra.keys = (Kms__V1__KeyRecord **)keys;
	ra.n_keys = n;
	ra.aliases = (Kms__V1__AliasRecord **)aliases;
	ra.n_aliases = n_aliases;
	KMS_TRY(incoming_aliases_check(&ra, err));
	ra.cursor = cursor;
	ra.peer_head = peer_head;
	ra.now_unix = now_unix;
	ra.domain_key_generation = dk_generation;
	c.cmd_case = KMS__V1__COMMAND__CMD_REGION_APPLY;
	c.region_apply = &ra;
	return kr_command_pack(&c, out, err);
}

/* --- promotion and fencing --- */

/*
 * Gives every multi-region key homed in `from` the home `to` (write lock
 * held): its record is rebuilt, its handles kept. revs: give each the
 * next region_rev (a promotion: the new primary sends them all), else 0
 * (a fence: the new primary's copies replace them).
 */
static int rehome(kms_keyring *kr, const char *from, const char *to, int revs, kms_err *err)
{
	struct kr_cursor cur;
	struct kr_entry *e;

	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		Kms__V1__KeyRecord shape;

		if (!e->rec->multi_region || strcmp(e->rec->home_region, from) != 0)
			continue;
		shape = *e->rec;
		shape.home_region = (char *)to;
		shape.region_rev = revs ? next_rev(kr, e) : 0;
		KMS_TRY(kr_entry_rebuild(e, &shape, err));
	}
	return KMS_OK;
}

int kr_exec_promote_region(kms_keyring *kr, const char *peer, kms_err *err)
{
	Kms__V1__RegionLinkRecord *l;
	long at;
	int rc;

	KMS_TRY(kms_region_name_check(peer, err));
	pthread_rwlock_wrlock(&kr->lock);
	at = link_find(kr, peer);
	if (at < 0 || kr->links[at]->role != KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "region '%s' is not linked as a secondary of region '%s': nothing to "
			      "promote",
			      region_name(kr), peer);
		goto out;
	}
	l = kr->links[at];
	/* Every key of the old primary first: a failure changes no link. */
	KMS_TRY_GOTO(rc, rehome(kr, peer, kr->region, 1, err), out);
	l->role = KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY;
	l->epoch++;
	l->cursor = 0;
	l->peer_head = 0;
	/* The region promoted over is lost or fenced late: nothing waits for it. */
	l->awaiting_follow = 1;
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_fence_region(kms_keyring *kr, const Kms__V1__FenceRegionCommand *c, int dry,
			  kms_err *err)
{
	Kms__V1__RegionLinkRecord *l;
	long at;
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "FenceRegion holds nothing");
	KMS_TRY(kms_region_name_check(c->peer_region, err));
	kr_lock(kr, dry);
	at = link_find(kr, c->peer_region);
	if (at < 0 || kr->links[at]->role != KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY ||
	    c->epoch <= kr->links[at]->epoch) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "region '%s' is not the primary of region '%s' below epoch %llu: "
			      "nothing to fence",
			      region_name(kr), c->peer_region,
			      (unsigned long long)c->epoch);
		goto out;
	}
	if (dry)
		goto out;
	l = kr->links[at];
	KMS_TRY_GOTO(rc, rehome(kr, kr->region, c->peer_region, 0, err), out);
	l->role = KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY;
	l->epoch = c->epoch;
	l->cursor = 0;
	l->peer_head = 0;
	l->applied_at_unix = c->now_unix;
	l->awaiting_follow = 0;
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_cmd_fence_region(const char *peer_region, uint64_t epoch, int64_t now_unix,
				 kms_buf *out, kms_err *err)
{
	Kms__V1__FenceRegionCommand f = KMS__V1__FENCE_REGION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_region_name_check(peer_region, err));
	f.peer_region = (char *)peer_region;
	f.epoch = epoch;
	f.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_FENCE_REGION;
	c.fence_region = &f;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_command_key(const uint8_t *cmd, size_t len, char out[KMS_KEY_ID_MAX + 1])
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c = kms__v1__command__unpack(&a, len, cmd);
	const char *id = c != NULL ? kr_changed_key(c) : NULL;
	int found = id != NULL && strlen(id) <= KMS_KEY_ID_MAX;

	if (found)
		memcpy(out, id, strlen(id) + 1);
	if (c != NULL)
		kr_pb_message_free(&c->base);
	return found;
}

int kms_keyring_stream_rev(kms_keyring *kr, const char *key_id, uint64_t *rev)
{
	struct kr_entry *e;
	int homed;

	pthread_rwlock_rdlock(&kr->lock);
	e = kr_find_entry(kr, key_id);
	homed = e != NULL && e->rec->multi_region && strcmp(e->rec->home_region, kr->region) == 0;
	if (homed)
		*rev = e->rec->region_rev;
	pthread_rwlock_unlock(&kr->lock);
	return homed;
}

int kr_apply_region_followed(kms_keyring *kr, const Kms__V1__RegionFollowedCommand *c, int dry,
			     kms_err *err)
{
	long at;
	int rc = KMS_OK;

	KMS_ENSURE(c != NULL, err, KMS_ERR_INVALID, "RegionFollowed holds nothing");
	KMS_TRY(kms_region_name_check(c->peer_region, err));
	kr_lock(kr, dry);
	at = link_find(kr, c->peer_region);
	if (at < 0 || kr->links[at]->role != KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY ||
	    kr->links[at]->epoch != c->epoch || !kr->links[at]->awaiting_follow)
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "region '%s' is not awaiting region '%s' to follow at epoch %llu",
			      region_name(kr), c->peer_region,
			      (unsigned long long)c->epoch);
	else if (!dry)
		kr->links[at]->awaiting_follow = 0;
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kms_keyring_cmd_region_followed(const char *peer_region, uint64_t epoch, kms_buf *out,
				    kms_err *err)
{
	Kms__V1__RegionFollowedCommand f = KMS__V1__REGION_FOLLOWED_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_region_name_check(peer_region, err));
	f.peer_region = (char *)peer_region;
	f.epoch = epoch;
	c.cmd_case = KMS__V1__COMMAND__CMD_REGION_FOLLOWED;
	c.region_followed = &f;
	return kr_command_pack(&c, out, err);
}

int kr_exec_unlink_region(kms_keyring *kr, const char *peer, kms_err *err)
{
	Kms__V1__RegionLinkRecord *gone = NULL;
	long at;
	int rc = KMS_OK;

	KMS_TRY(kms_region_name_check(peer, err));
	pthread_rwlock_wrlock(&kr->lock);
	at = link_find(kr, peer);
	if (at < 0) {
		rc = kms_errf(err, KMS_ERR_NOT_FOUND, "region '%s' is not linked to region '%s'",
			      region_name(kr), peer);
	} else {
		gone = kr->links[at];
		memmove(&kr->links[at], &kr->links[at + 1],
			(kr->n_links - (size_t)at - 1) * sizeof(*kr->links));
		kr->n_links--;
	}
	pthread_rwlock_unlock(&kr->lock);
	if (gone != NULL)
		kr_pb_message_free(&gone->base);
	return rc;
}
