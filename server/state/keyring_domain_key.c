/* keyring_domain_key.c - the domain key's replicated state: its generation, and
 * the commands of a rotation (begin, grant, consume, confirm, switch, abort)
 * with their rules. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/* --- the state and its helpers ------------------------------------------ */

void kr_dk_reset(kms_dk_state *s)
{
	memset(s, 0, sizeof(*s));
	s->generation = 1;
	s->highest = 1;
}

void kms_keyring_dk_state(kms_keyring *kr, kms_dk_state *out)
{
	pthread_rwlock_rdlock(&kr->lock);
	*out = kr->dk;
	pthread_rwlock_unlock(&kr->lock);
}

int kms_dk_has(const uint64_t *ids, size_t n, uint64_t id)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] == id)
			return 1;
	return 0;
}

const kms_dk_grant *kms_dk_grant_of(const kms_dk_state *s, uint64_t id)
{
	for (size_t i = 0; i < s->n_grants; i++)
		if (s->grants[i].node_id == id)
			return &s->grants[i];
	return NULL;
}

/* 0 (a command from before rotation existed) is the first generation. */
static uint32_t gen_of(uint32_t g)
{
	return g == 0 ? 1 : g;
}

/* Inserts id, keeping the list ascending and unique; 0 if present. */
static int ids_add(uint64_t *ids, size_t *n, uint64_t id)
{
	size_t i = 0;

	while (i < *n && ids[i] < id)
		i++;
	if (i < *n && ids[i] == id)
		return 0;
	memmove(&ids[i + 1], &ids[i], (*n - i) * sizeof(*ids));
	ids[i] = id;
	(*n)++;
	return 1;
}

static int is_member(const struct kms_keyring *kr, uint64_t id)
{
	size_t pos = kr_member_pos(kr, id);

	return pos < kr->n_members && kr->members[pos].id == id;
}

/* Every current member is in ids. */
static int all_members_in(const struct kms_keyring *kr, const uint64_t *ids,
			  size_t n)
{
	for (size_t i = 0; i < kr->n_members; i++)
		if (!kms_dk_has(ids, n, kr->members[i].id))
			return 0;
	return 1;
}

/* The rotation is over: switched, and every member dropped the old key. */
static int rotation_done(const struct kms_keyring *kr, const kms_dk_state *s)
{
	return s->rotating && s->switched &&
	       all_members_in(kr, s->destroyed, s->n_destroyed);
}

int kr_dk_generation_check(const struct kms_keyring *kr, uint32_t generation,
			   kms_err *err)
{
	if (gen_of(generation) == kr->dk.generation)
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PRECONDITION,
			"the material is wrapped under domain key generation "
			"%u, but the cluster's "
			"is generation %u; make it again",
			gen_of(generation), kr->dk.generation);
}

/* The rotation a command names: in progress, that generation. */
static int rotation_named(const kms_dk_state *s, uint32_t generation,
			  const char *what, kms_err *err)
{
	if (!s->rotating)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"%s: no domain-key rotation is in progress",
				what);
	if (generation != s->rot_generation)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"%s names domain-key generation %u, but the "
				"rotation in progress "
				"is to generation %u",
				what, generation, s->rot_generation);
	return KMS_OK;
}

static int before_switch(const kms_dk_state *s, const char *what, kms_err *err)
{
	if (s->switched)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"%s: the cluster already switched to "
				"domain-key generation %u",
				what, s->rot_generation);
	return KMS_OK;
}

static int member_named(const struct kms_keyring *kr, uint64_t id,
			const char *what, kms_err *err)
{
	if (id == 0 || !is_member(kr, id))
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"%s: node %llu is not a member", what,
				(unsigned long long)id);
	return KMS_OK;
}

static int fingerprint_check(const ProtobufCBinaryData *fp, const char *what,
			     kms_err *err)
{
	if (fp->len != KMS_FINGERPRINT_LEN)
		return kms_errf(
		    err, KMS_ERR_INVALID,
		    "%s: a transport key SHA-256 is %d bytes, not %zu", what,
		    KMS_FINGERPRINT_LEN, fp->len);
	return KMS_OK;
}

/* --- the commands ----------------------------------------------------------
 */

/* A proposal id a rotation records: none, or 1..64 printable characters. */
static int proposal_id_check(const char *id, const char *what, kms_err *err)
{
	size_t n = id != NULL ? strlen(id) : 0;

	if (n > KMS_DK_PROPOSAL_ID_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "%s: a proposal id of %zu characters (at most %d)",
				what, n, KMS_DK_PROPOSAL_ID_MAX);
	for (size_t i = 0; i < n; i++)
		if (id[i] <= 0x20 || id[i] >= 0x7f)
			return kms_errf(err, KMS_ERR_INVALID,
					"%s: the proposal id holds a byte that is not printable",
					what);
	return KMS_OK;
}

static int dk_begin(const struct kms_keyring *kr, kms_dk_state *s,
		    const Kms__V1__BeginDomainKeyRotationCommand *c,
		    kms_err *err)
{
	static const char what[] = "BeginDomainKeyRotation";

	if (c == NULL || c->wrapped_probe.len == 0 ||
	    c->wrapped_probe.len > KMS_WRAPPED_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"%s needs a probe of 1..%d bytes", what,
				KMS_WRAPPED_MAX);
	if (s->rotating && !rotation_done(kr, s))
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"a domain-key rotation to generation %u is "
				"already in progress",
				s->rot_generation);
	if (s->highest == UINT32_MAX || c->generation != s->highest + 1)
		return kms_errf(
		    err, KMS_ERR_PRECONDITION,
		    "%s names generation %u; the next generation is %u", what,
		    c->generation, s->highest + 1);
	KMS_TRY(member_named(kr, c->node_id, what, err));
	KMS_TRY(proposal_id_check(c->proposal_id, what, err));
	snprintf(s->proposal_id, sizeof(s->proposal_id), "%s",
		 c->proposal_id != NULL ? c->proposal_id : "");
	s->highest = c->generation;
	s->rotating = 1;
	s->rot_generation = c->generation;
	memcpy(s->probe, c->wrapped_probe.data, c->wrapped_probe.len);
	s->probe_len = c->wrapped_probe.len;
	s->started_by = c->node_id;
	s->started_at_unix = c->now_unix;
	s->n_installed = 0;
	ids_add(s->installed, &s->n_installed, c->node_id);
	s->n_grants = 0;
	s->switched = 0;
	s->switched_at_unix = 0;
	s->n_destroyed = 0;
	return KMS_OK;
}

static int dk_grant(const struct kms_keyring *kr, kms_dk_state *s,
		    const Kms__V1__GrantDomainKeyRotationCommand *c,
		    kms_err *err)
{
	static const char what[] = "GrantDomainKeyRotation";
	kms_dk_grant *g = NULL;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty", what);
	KMS_TRY(fingerprint_check(&c->transport_key_sha256, what, err));
	KMS_TRY(rotation_named(s, c->generation, what, err));
	KMS_TRY(before_switch(s, what, err));
	KMS_TRY(member_named(kr, c->node_id, what, err));
	if (kms_dk_has(s->installed, s->n_installed, c->node_id))
		return kms_errf(
		    err, KMS_ERR_PRECONDITION,
		    "%s: node %llu already holds domain key generation %u",
		    what, (unsigned long long)c->node_id, s->rot_generation);
	for (size_t i = 0; i < s->n_grants; i++)
		if (s->grants[i].node_id == c->node_id)
			g = &s->grants[i];
	if (g == NULL) {
		size_t i = 0;

		if (s->n_grants == KMS_MEMBERS_MAX)
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"%s: %d grants already", what,
					KMS_MEMBERS_MAX);
		while (i < s->n_grants && s->grants[i].node_id < c->node_id)
			i++;
		memmove(&s->grants[i + 1], &s->grants[i],
			(s->n_grants - i) * sizeof(*g));
		s->n_grants++;
		g = &s->grants[i];
	}
	/* A node that restarted before installing asks again, with a new key.
	 */
	g->node_id = c->node_id;
	memcpy(g->transport_key_sha256, c->transport_key_sha256.data,
	       KMS_FINGERPRINT_LEN);
	g->used = 0;
	return KMS_OK;
}

static int dk_consume(const struct kms_keyring *kr, kms_dk_state *s,
		      const Kms__V1__ConsumeDomainKeyRotationGrantCommand *c,
		      kms_err *err)
{
	static const char what[] = "ConsumeDomainKeyRotationGrant";
	kms_dk_grant *g = NULL;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty", what);
	KMS_TRY(fingerprint_check(&c->transport_key_sha256, what, err));
	KMS_TRY(rotation_named(s, c->generation, what, err));
	KMS_TRY(before_switch(s, what, err));
	KMS_TRY(member_named(kr, c->node_id, what, err));
	for (size_t i = 0; i < s->n_grants; i++)
		if (s->grants[i].node_id == c->node_id)
			g = &s->grants[i];
	if (g == NULL)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu holds no rotation grant",
				(unsigned long long)c->node_id);
	if (g->used)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu's rotation grant is used",
				(unsigned long long)c->node_id);
	if (CRYPTO_memcmp(g->transport_key_sha256, c->transport_key_sha256.data,
			  KMS_FINGERPRINT_LEN) != 0)
		return kms_errf(
		    err, KMS_ERR_PERMISSION,
		    "node %llu's rotation grant is for another transport key",
		    (unsigned long long)c->node_id);
	g->used = 1;
	return KMS_OK;
}

static int dk_confirm(const struct kms_keyring *kr, kms_dk_state *s,
		      const Kms__V1__ConfirmDomainKeyCommand *c, kms_err *err)
{
	static const char what[] = "ConfirmDomainKey";
	const kms_dk_grant *g;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty", what);
	KMS_TRY(rotation_named(s, c->generation, what, err));
	KMS_TRY(member_named(kr, c->node_id, what, err));
	switch (c->stage) {
	case KMS__V1__DOMAIN_KEY_CONFIRMATION__DOMAIN_KEY_INSTALLED:
		KMS_TRY(before_switch(s, what, err));
		g = kms_dk_grant_of(s, c->node_id);
		if (c->node_id != s->started_by && (g == NULL || !g->used))
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"%s: node %llu has not received domain "
					"key generation %u",
					what, (unsigned long long)c->node_id,
					s->rot_generation);
		if (!ids_add(s->installed, &s->n_installed, c->node_id))
			return kms_errf(err, KMS_ERR_EXISTS,
					"node %llu already confirmed domain "
					"key generation %u",
					(unsigned long long)c->node_id,
					s->rot_generation);
		return KMS_OK;
	case KMS__V1__DOMAIN_KEY_CONFIRMATION__DOMAIN_KEY_OLD_DESTROYED:
		if (!s->switched)
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"%s: the cluster has not switched to "
					"domain-key generation "
					"%u yet; the old key is still needed",
					what, s->rot_generation);
		if (!ids_add(s->destroyed, &s->n_destroyed, c->node_id))
			return kms_errf(
			    err, KMS_ERR_EXISTS,
			    "node %llu already destroyed its old domain key",
			    (unsigned long long)c->node_id);
		return KMS_OK;
	default:
		return kms_errf(err, KMS_ERR_INVALID, "%s: unknown stage %d",
				what, (int)c->stage);
	}
}

static int dk_abort(kms_dk_state *s,
		    const Kms__V1__AbortDomainKeyRotationCommand *c,
		    kms_err *err)
{
	static const char what[] = "AbortDomainKeyRotation";

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty", what);
	KMS_TRY(rotation_named(s, c->generation, what, err));
	KMS_TRY(before_switch(s, what, err));
	s->rotating = 0;
	s->n_installed = s->n_grants = s->n_destroyed = 0;
	s->probe_len = 0;
	return KMS_OK;
}

/*
 * The switch's list must be exactly the versions that are not destroyed,
 * in key-ring order: a version made or destroyed since the list was taken
 * fails the switch, and the proposer takes it again.
 */
static int switch_list_check(const struct kms_keyring *kr,
			     const Kms__V1__SwitchDomainKeyCommand *c,
			     kms_err *err)
{
	const struct kr_entry *e;
	struct kr_cursor cur;
	size_t k = 0;

	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		const Kms__V1__KeyRecord *rec = e->rec;

		for (size_t j = 0; j < rec->n_versions; j++) {
			const Kms__V1__KeyVersionRecord *v = rec->versions[j];
			const Kms__V1__RewrappedVersion *r;

			if (v->state ==
			    KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED)
				continue;
			r = k < c->n_versions ? c->versions[k] : NULL;
			if (r == NULL || r->key_id == NULL ||
			    strcmp(r->key_id, rec->key_id) != 0 ||
			    r->version != v->version)
				return kms_errf(err, KMS_ERR_PRECONDITION,
						"SwitchDomainKey does not list "
						"key '%s' version %u "
						"where the key ring has it; "
						"take the list again",
						rec->key_id, v->version);
			/*
			 * The material is rewritten in place, in the entry's
			 * one block (keyring_flat.c): a rewrap of the same key
			 * under another AES-256 key has the same length.
			 */
			if (r->wrapped_material.len != v->wrapped_material.len)
				return kms_errf(err, KMS_ERR_INVALID,
						"SwitchDomainKey: key '%s' "
						"version %u has %zu bytes of "
						"material, not the %zu the key "
						"ring holds",
						rec->key_id, v->version,
						r->wrapped_material.len,
						v->wrapped_material.len);
			k++;
		}
	}
	if (k != c->n_versions)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"SwitchDomainKey lists %zu versions, the key "
				"ring holds %zu; take "
				"the list again",
				c->n_versions, k);
	return KMS_OK;
}

static int dk_switch(const struct kms_keyring *kr, kms_dk_state *s,
		     const Kms__V1__SwitchDomainKeyCommand *c, kms_err *err)
{
	static const char what[] = "SwitchDomainKey";

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty", what);
	KMS_TRY(rotation_named(s, c->generation, what, err));
	KMS_TRY(before_switch(s, what, err));
	for (size_t i = 0; i < kr->n_members; i++)
		if (!kms_dk_has(s->installed, s->n_installed,
				kr->members[i].id))
			return kms_errf(err, KMS_ERR_PRECONDITION,
					"%s: member %llu does not hold domain "
					"key generation %u "
					"yet",
					what,
					(unsigned long long)kr->members[i].id,
					s->rot_generation);
	KMS_TRY(switch_list_check(kr, c, err));
	s->switched = 1;
	s->switched_at_unix = c->now_unix;
	s->generation = s->rot_generation;
	s->last_rotated_at_unix = c->now_unix;
	return KMS_OK;
}

/*
 * Puts the switch's material in place (write lock held, list checked: each
 * new material has its old one's length). Nothing to allocate, so nothing
 * can fail half-way. The handles of this node's unwrapped versions stay:
 * the key behind each is the same.
 */
static void switch_material(kms_keyring *kr, const Kms__V1__SwitchDomainKeyCommand *c)
{
	const struct kr_entry *e;
	struct kr_cursor cur;
	size_t k = 0;

	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		Kms__V1__KeyRecord *rec = e->rec;

		for (size_t j = 0; j < rec->n_versions; j++) {
			Kms__V1__KeyVersionRecord *v = rec->versions[j];

			if (v->state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED)
				continue;
			kms_cleanse(v->wrapped_material.data, v->wrapped_material.len);
			memcpy(v->wrapped_material.data, c->versions[k]->wrapped_material.data,
			       v->wrapped_material.len);
			k++;
		}
	}
}

int kr_apply_dk(kms_keyring *kr, const Kms__V1__Command *c, int dry,
		kms_err *err)
{
	kms_dk_state s;
	int rc;

	kr_lock(kr, dry);
	s = kr->dk;
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_BEGIN_DOMAIN_KEY_ROTATION:
		rc = dk_begin(kr, &s, c->begin_domain_key_rotation, err);
		break;
	case KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION:
		rc = dk_grant(kr, &s, c->grant_domain_key_rotation, err);
		break;
	case KMS__V1__COMMAND__CMD_CONSUME_DOMAIN_KEY_ROTATION_GRANT:
		rc = dk_consume(kr, &s, c->consume_domain_key_rotation_grant,
				err);
		break;
	case KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY:
		rc = dk_confirm(kr, &s, c->confirm_domain_key, err);
		if (rc == KMS_OK && rotation_done(kr, &s)) {
			/* The last member dropped the old key: the rotation is
			 * over. */
			s.rotating = 0;
			s.n_installed = s.n_grants = s.n_destroyed = 0;
			s.probe_len = 0;
		}
		break;
	case KMS__V1__COMMAND__CMD_SWITCH_DOMAIN_KEY:
		rc = dk_switch(kr, &s, c->switch_domain_key, err);
		if (rc == KMS_OK && !dry) {
			switch_material(kr, c->switch_domain_key);
			memcpy(kr->probe, s.probe, s.probe_len);
			kr->probe_len = s.probe_len;
		}
		break;
	case KMS__V1__COMMAND__CMD_ABORT_DOMAIN_KEY_ROTATION:
		rc = dk_abort(&s, c->abort_domain_key_rotation, err);
		break;
	default:
		rc = kms_errf(err, KMS_ERR_INVALID, "not a domain-key command");
		break;
	}
	if (rc == KMS_OK && !dry)
		kr->dk = s;
	kms_cleanse(&s, sizeof(s));
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* --- snapshots --------------------------------------------------------------
 */

void kr_dk_to_message(const kms_dk_state *s, Kms__V1__DomainKeyState *m,
		      Kms__V1__DomainKeyRotation *r,
		      Kms__V1__DomainKeyRotationGrant *g,
		      Kms__V1__DomainKeyRotationGrant **gp)
{
	kms__v1__domain_key_state__init(m);
	m->generation = s->generation;
	m->highest_generation = s->highest;
	m->last_rotated_at_unix = s->last_rotated_at_unix;
	m->proposal_id = (char *)s->proposal_id;
	if (!s->rotating)
		return;
	kms__v1__domain_key_rotation__init(r);
	r->generation = s->rot_generation;
	r->wrapped_probe.data = (uint8_t *)s->probe;
	r->wrapped_probe.len = s->probe_len;
	r->started_by = s->started_by;
	r->started_at_unix = s->started_at_unix;
	r->installed = (uint64_t *)s->installed;
	r->n_installed = s->n_installed;
	for (size_t i = 0; i < s->n_grants; i++) {
		kms__v1__domain_key_rotation_grant__init(&g[i]);
		g[i].node_id = s->grants[i].node_id;
		g[i].transport_key_sha256.data =
		    (uint8_t *)s->grants[i].transport_key_sha256;
		g[i].transport_key_sha256.len = KMS_FINGERPRINT_LEN;
		g[i].used = s->grants[i].used;
		gp[i] = &g[i];
	}
	r->grants = gp;
	r->n_grants = s->n_grants;
	r->switched = s->switched;
	r->switched_at_unix = s->switched_at_unix;
	r->destroyed = (uint64_t *)s->destroyed;
	r->n_destroyed = s->n_destroyed;
	m->rotation = r;
}

static int ids_from(const uint64_t *in, size_t n, uint64_t *out, size_t *n_out,
		    const char *what, kms_err *err)
{
	if (n > KMS_MEMBERS_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"snapshot: %zu %s node ids, more than %d", n,
				what, KMS_MEMBERS_MAX);
	for (size_t i = 0; i < n; i++)
		if (in[i] == 0 || (i > 0 && in[i - 1] >= in[i]))
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot: %s node ids are zero, out "
					"of order or repeated",
					what);
	if (n > 0)
		memcpy(out, in, n * sizeof(*in));
	*n_out = n;
	return KMS_OK;
}

int kr_dk_from_message(const Kms__V1__DomainKeyState *m, kms_dk_state *out,
		       kms_err *err)
{
	const Kms__V1__DomainKeyRotation *r;
	kms_dk_state s;

	kr_dk_reset(&s);
	if (m == NULL) {
		*out = s;
		return KMS_OK;
	}
	s.generation = gen_of(m->generation);
	s.highest = gen_of(m->highest_generation);
	s.last_rotated_at_unix = m->last_rotated_at_unix;
	KMS_TRY(proposal_id_check(m->proposal_id, "snapshot", err));
	snprintf(s.proposal_id, sizeof(s.proposal_id), "%s",
		 m->proposal_id != NULL ? m->proposal_id : "");
	if (s.highest < s.generation)
		return kms_errf(err, KMS_ERR_INVALID,
				"snapshot: domain-key generation %u is above "
				"the highest, %u",
				s.generation, s.highest);
	r = m->rotation;
	if (r != NULL) {
		s.rotating = 1;
		s.rot_generation = r->generation;
		s.switched = r->switched;
		if (r->generation > s.highest || r->generation <= 1 ||
		    (s.switched ? r->generation != s.generation
				: r->generation <= s.generation))
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot: a rotation to generation %u "
					"does not fit "
					"generation %u (highest %u)",
					r->generation, s.generation, s.highest);
		if (r->wrapped_probe.len == 0 ||
		    r->wrapped_probe.len > KMS_WRAPPED_MAX)
			return kms_errf(
			    err, KMS_ERR_INVALID,
			    "snapshot: a rotation needs a probe of 1..%d bytes",
			    KMS_WRAPPED_MAX);
		memcpy(s.probe, r->wrapped_probe.data, r->wrapped_probe.len);
		s.probe_len = r->wrapped_probe.len;
		s.started_by = r->started_by;
		s.started_at_unix = r->started_at_unix;
		s.switched_at_unix = r->switched_at_unix;
		KMS_TRY(ids_from(r->installed, r->n_installed, s.installed,
				 &s.n_installed, "installed", err));
		KMS_TRY(ids_from(r->destroyed, r->n_destroyed, s.destroyed,
				 &s.n_destroyed, "destroyed", err));
		if (r->n_grants > KMS_MEMBERS_MAX)
			return kms_errf(err, KMS_ERR_INVALID,
					"snapshot: %zu rotation grants",
					r->n_grants);
		for (size_t i = 0; i < r->n_grants; i++) {
			const Kms__V1__DomainKeyRotationGrant *g = r->grants[i];

			if (g->node_id == 0 ||
			    g->transport_key_sha256.len !=
				KMS_FINGERPRINT_LEN ||
			    (i > 0 && r->grants[i - 1]->node_id >= g->node_id))
				return kms_errf(err, KMS_ERR_INVALID,
						"snapshot: a rotation grant is "
						"malformed or out of "
						"order");
			s.grants[i].node_id = g->node_id;
			memcpy(s.grants[i].transport_key_sha256,
			       g->transport_key_sha256.data,
			       KMS_FINGERPRINT_LEN);
			s.grants[i].used = g->used;
		}
		s.n_grants = r->n_grants;
	}
	*out = s;
	return KMS_OK;
}

/* --- builders ----------------------------------------------------------------
 */

int kms_keyring_cmd_dk_begin(uint32_t generation, const uint8_t *probe,
			     size_t probe_len, uint64_t node_id,
			     int64_t now_unix, kms_buf *out, kms_err *err)
{
	return kms_keyring_cmd_dk_begin_for(generation, probe, probe_len, node_id, now_unix, NULL,
					    out, err);
}

int kms_keyring_cmd_dk_begin_for(uint32_t generation, const uint8_t *probe, size_t probe_len,
				 uint64_t node_id, int64_t now_unix, const char *proposal_id,
				 kms_buf *out, kms_err *err)
{
	Kms__V1__BeginDomainKeyRotationCommand b =
	    KMS__V1__BEGIN_DOMAIN_KEY_ROTATION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	if (probe == NULL || probe_len == 0 || probe_len > KMS_WRAPPED_MAX ||
	    generation < 2 || node_id == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"BeginDomainKeyRotation needs a generation of "
				"2 or more, a node and "
				"a probe of 1..%d bytes",
				KMS_WRAPPED_MAX);
	b.generation = generation;
	b.wrapped_probe.data = (uint8_t *)probe;
	b.wrapped_probe.len = probe_len;
	b.node_id = node_id;
	b.now_unix = now_unix;
	KMS_TRY(proposal_id_check(proposal_id, "BeginDomainKeyRotation", err));
	if (proposal_id != NULL)
		b.proposal_id = (char *)proposal_id;
	c.cmd_case = KMS__V1__COMMAND__CMD_BEGIN_DOMAIN_KEY_ROTATION;
	c.begin_domain_key_rotation = &b;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_dk_grant(uint64_t node_id, uint32_t generation,
			     const uint8_t fp[KMS_FINGERPRINT_LEN],
			     kms_buf *out, kms_err *err)
{
	Kms__V1__GrantDomainKeyRotationCommand g =
	    KMS__V1__GRANT_DOMAIN_KEY_ROTATION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	if (fp == NULL || node_id == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"GrantDomainKeyRotation needs a node and a "
				"fingerprint");
	g.node_id = node_id;
	g.generation = generation;
	g.transport_key_sha256.data = (uint8_t *)fp;
	g.transport_key_sha256.len = KMS_FINGERPRINT_LEN;
	c.cmd_case = KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION;
	c.grant_domain_key_rotation = &g;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_dk_consume(uint64_t node_id, uint32_t generation,
			       const uint8_t fp[KMS_FINGERPRINT_LEN],
			       kms_buf *out, kms_err *err)
{
	Kms__V1__ConsumeDomainKeyRotationGrantCommand g =
	    KMS__V1__CONSUME_DOMAIN_KEY_ROTATION_GRANT_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	if (fp == NULL || node_id == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"ConsumeDomainKeyRotationGrant needs a node "
				"and a fingerprint");
	g.node_id = node_id;
	g.generation = generation;
	g.transport_key_sha256.data = (uint8_t *)fp;
	g.transport_key_sha256.len = KMS_FINGERPRINT_LEN;
	c.cmd_case = KMS__V1__COMMAND__CMD_CONSUME_DOMAIN_KEY_ROTATION_GRANT;
	c.consume_domain_key_rotation_grant = &g;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_dk_confirm(uint64_t node_id, uint32_t generation, int stage,
			       kms_buf *out, kms_err *err)
{
	Kms__V1__ConfirmDomainKeyCommand k =
	    KMS__V1__CONFIRM_DOMAIN_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	if (node_id == 0 ||
	    (stage != KMS_DK_INSTALLED && stage != KMS_DK_OLD_DESTROYED))
		return kms_errf(err, KMS_ERR_INVALID,
				"ConfirmDomainKey needs a node and a stage");
	k.node_id = node_id;
	k.generation = generation;
	k.stage =
	    stage == KMS_DK_INSTALLED
		? KMS__V1__DOMAIN_KEY_CONFIRMATION__DOMAIN_KEY_INSTALLED
		: KMS__V1__DOMAIN_KEY_CONFIRMATION__DOMAIN_KEY_OLD_DESTROYED;
	c.cmd_case = KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY;
	c.confirm_domain_key = &k;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_dk_abort(uint32_t generation, kms_buf *out, kms_err *err)
{
	Kms__V1__AbortDomainKeyRotationCommand a =
	    KMS__V1__ABORT_DOMAIN_KEY_ROTATION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	a.generation = generation;
	c.cmd_case = KMS__V1__COMMAND__CMD_ABORT_DOMAIN_KEY_ROTATION;
	c.abort_domain_key_rotation = &a;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_wrapped_versions(kms_keyring *kr, kms_wrapped_version **out,
				 size_t *n, kms_err *err)
{
	size_t count = 0, k = 0;
	const struct kr_entry *e;
	struct kr_cursor cur;
	kms_wrapped_version *v;

	*out = NULL;
	*n = 0;
	pthread_rwlock_rdlock(&kr->lock);
	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;)
		for (size_t j = 0; j < e->rec->n_versions; j++)
			if (e->rec->versions[j]->state !=
			    KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED)
				count++;
	v = kms_calloc(count ? count : 1, sizeof(*v));
	if (v == NULL) {
		pthread_rwlock_unlock(&kr->lock);
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory listing %zu versions", count);
	}
	for (kr_index_first(&kr->keys, &cur); (e = kr_cursor_next(&cur)) != NULL;) {
		const Kms__V1__KeyRecord *rec = e->rec;

		for (size_t j = 0; j < rec->n_versions; j++) {
			const Kms__V1__KeyVersionRecord *r = rec->versions[j];

			if (r->state ==
			    KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED)
				continue;
			snprintf(v[k].key_id, sizeof(v[k].key_id), "%s",
				 rec->key_id);
			v[k].version = r->version;
			v[k].len = r->wrapped_material.len;
			memcpy(v[k].wrapped, r->wrapped_material.data,
			       v[k].len);
			k++;
		}
	}
	pthread_rwlock_unlock(&kr->lock);
	*out = v;
	*n = count;
	return KMS_OK;
}

int kms_keyring_cmd_dk_switch(uint32_t generation, const kms_wrapped_version *v,
			      size_t n, int64_t now_unix, kms_buf *out,
			      kms_err *err)
{
	Kms__V1__SwitchDomainKeyCommand s =
	    KMS__V1__SWITCH_DOMAIN_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	Kms__V1__RewrappedVersion *rv = NULL, **rp = NULL;
	int rc;

	if (v == NULL && n > 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"SwitchDomainKey: versions missing");
	if (n > 0) {
		rv = kms_calloc(n, sizeof(*rv));
		rp = kms_calloc(n, sizeof(*rp));
		if (rv == NULL || rp == NULL) {
			kms_free(rv);
			kms_free(rp);
			return kms_errf(err, KMS_ERR_NOMEM,
					"out of memory building a switch");
		}
	}
	for (size_t i = 0; i < n; i++) {
		kms__v1__rewrapped_version__init(&rv[i]);
		rv[i].key_id = (char *)v[i].key_id;
		rv[i].version = v[i].version;
		rv[i].wrapped_material.data = (uint8_t *)v[i].wrapped;
		rv[i].wrapped_material.len = v[i].len;
		rp[i] = &rv[i];
	}
	s.generation = generation;
	s.versions = rp;
	s.n_versions = n;
	s.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_SWITCH_DOMAIN_KEY;
	c.switch_domain_key = &s;
	rc = kr_command_pack(&c, out, err);
	kms_free(rv);
	kms_free(rp);
	return rc;
}

int kms_keyring_cmd_set_dk_generation(kms_buf *cmd, uint32_t generation,
				      kms_err *err)
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {
	    .alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c;
	kms_buf fresh = {0};
	int rc = KMS_OK;

	if (cmd == NULL || cmd->data == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "no command to stamp");
	c = kms__v1__command__unpack(&a, cmd->len, cmd->data);
	if (c == NULL)
		return kms_errf(err,
				st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
				"command is not a valid kms.v1.Command");
	if (c->cmd_case == KMS__V1__COMMAND__CMD_CREATE_KEY &&
	    c->create_key != NULL)
		c->create_key->domain_key_generation = generation;
	else if (c->cmd_case == KMS__V1__COMMAND__CMD_ROTATE_KEY &&
		 c->rotate_key != NULL)
		c->rotate_key->domain_key_generation = generation;
	else
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "only CreateKey and RotateKey carry a domain-key "
			      "generation");
	if (rc == KMS_OK)
		rc = kr_command_pack(c, &fresh, err);
	kr_pb_message_free(&c->base);
	if (rc != KMS_OK)
		return rc;
	kms_buf_free(cmd);
	*cmd = fresh;
	return KMS_OK;
}
