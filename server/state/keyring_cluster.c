/* keyring_cluster.c - the cluster part of the replicated state: members and their join grants, the domain-key check, the administrators. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/hostport.h"
#include "kms/policy.h"
#include "kms/spiffe.h"

/* --- members and the domain-key check ----------------------------------- */

static int grant_check(const Kms__V1__JoinGrant *g, kms_err *err)
{
	if (g == NULL)
		return KMS_OK;
	if (g->transport_key_sha256.len != KMS_FINGERPRINT_LEN)
		return kms_errf(err, KMS_ERR_INVALID,
				"a join grant names a %d-byte SHA-256, not %zu bytes",
				KMS_FINGERPRINT_LEN, g->transport_key_sha256.len);
	if (g->expires_at_unix <= 0)
		return kms_errf(err, KMS_ERR_INVALID, "a join grant needs an expiry");
	return KMS_OK;
}

int kr_member_check(const Kms__V1__MemberRecord *m, kms_err *err)
{
	if (m == NULL || m->id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "a member needs an id of 1 or more");
	KMS_TRY(kms_hostport_check(m->raft_address, "raft_address", err));
	KMS_TRY(kms_hostport_check(m->grpc_address, "grpc_address", err));
	return grant_check(m->join_grant, err);
}

/* Index of the first member whose id is >= id (caller holds the lock). */
size_t kr_member_pos(const struct kms_keyring *kr, uint64_t id)
{
	size_t i = 0;

	while (i < kr->n_members && kr->members[i].id < id)
		i++;
	return i;
}

static void grant_set(kms_join_grant *dst, const Kms__V1__JoinGrant *g)
{
	memset(dst, 0, sizeof(*dst));
	if (g == NULL)
		return;
	dst->present = 1;
	memcpy(dst->transport_key_sha256, g->transport_key_sha256.data, KMS_FINGERPRINT_LEN);
	dst->expires_at_unix = g->expires_at_unix;
	dst->used = g->used;
}

void kr_member_set(kms_member *dst, const Kms__V1__MemberRecord *m)
{
	dst->id = m->id;
	snprintf(dst->raft_address, sizeof(dst->raft_address), "%s", m->raft_address);
	snprintf(dst->grpc_address, sizeof(dst->grpc_address), "%s", m->grpc_address);
	grant_set(&dst->grant, m->join_grant);
}

/*
 * A member that received the domain key (its grant used), or the node that
 * created the cluster (no grant), is admitted for good: a new grant for it
 * would hand the domain key out again. Only a node admitted but not yet
 * joined may get a fresh grant (it restarted, with a new transport key).
 */
static int may_regrant(const kms_member *m, kms_err *err)
{
	if (!kms_member_joined(m))
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PRECONDITION,
			"node %llu is already a member and holds the domain key; remove it "
			"first to admit it again",
			(unsigned long long)m->id);
}

/* An AddMember without a grant only records or updates addresses (a
 * re-sent registration is not an error); one with a grant admits. */
int kr_apply_add_member(kms_keyring *kr, const Kms__V1__AddMemberCommand *c, kms_err *err)
{
	size_t pos;
	int rc = KMS_OK;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "AddMember command holds no member");
	KMS_TRY(kr_member_check(c->member, err));
	pthread_rwlock_wrlock(&kr->lock);
	pos = kr_member_pos(kr, c->member->id);
	if (pos < kr->n_members && kr->members[pos].id == c->member->id) {
		kms_join_grant keep = kr->members[pos].grant;

		if (c->member->join_grant != NULL &&
		    (rc = may_regrant(&kr->members[pos], err)) != KMS_OK)
			goto out;
		kr_member_set(&kr->members[pos], c->member);
		if (c->member->join_grant == NULL)
			kr->members[pos].grant = keep;
	} else if (kr->n_members == KMS_MEMBERS_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "the cluster already has %d members",
			      KMS_MEMBERS_MAX);
	} else {
		memmove(&kr->members[pos + 1], &kr->members[pos],
			(kr->n_members - pos) * sizeof(kr->members[0]));
		kr_member_set(&kr->members[pos], c->member);
		kr->n_members++;
	}
out:
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* The one rule of a grant's use, for the check and for apply (lock held). */
static int grant_usable(const struct kms_keyring *kr, uint64_t id,
			const uint8_t fp[KMS_FINGERPRINT_LEN], int64_t now, kms_err *err)
{
	size_t pos = kr_member_pos(kr, id);
	const kms_join_grant *g;

	if (pos == kr->n_members || kr->members[pos].id != id)
		return kms_errf(err, KMS_ERR_PERMISSION, "node %llu has not been admitted",
				(unsigned long long)id);
	g = &kr->members[pos].grant;
	if (!g->present)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu holds no join grant (it created the cluster)",
				(unsigned long long)id);
	if (g->used)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu's join grant is used already", (unsigned long long)id);
	if (now >= g->expires_at_unix)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu's join grant expired %lld s ago", (unsigned long long)id,
				(long long)(now - g->expires_at_unix));
	/* Not secret, but there is no reason to answer in data-dependent time. */
	if (CRYPTO_memcmp(g->transport_key_sha256, fp, KMS_FINGERPRINT_LEN) != 0)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node %llu's join grant is for another transport key",
				(unsigned long long)id);
	return KMS_OK;
}

int kms_keyring_join_grant_check(kms_keyring *kr, uint64_t id,
				 const uint8_t fp[KMS_FINGERPRINT_LEN], int64_t now_unix,
				 kms_err *err)
{
	int rc;

	pthread_rwlock_rdlock(&kr->lock);
	rc = grant_usable(kr, id, fp, now_unix, err);
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

int kr_apply_consume_join_grant(kms_keyring *kr, const Kms__V1__ConsumeJoinGrantCommand *c,
				kms_err *err)
{
	int rc;

	if (c == NULL || c->node_id == 0 || c->transport_key_sha256.len != KMS_FINGERPRINT_LEN)
		return kms_errf(err, KMS_ERR_INVALID,
				"ConsumeJoinGrant command needs a node id and a %d-byte SHA-256",
				KMS_FINGERPRINT_LEN);
	pthread_rwlock_wrlock(&kr->lock);
	rc = grant_usable(kr, c->node_id, c->transport_key_sha256.data, c->now_unix, err);
	if (rc == KMS_OK)
		kr->members[kr_member_pos(kr, c->node_id)].grant.used = 1;
	pthread_rwlock_unlock(&kr->lock);
	return rc;
}

/* --- administrators --- */

int kr_admins_check(char *const *admins, size_t n, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	kms_spiffe_id id;

	if (n == 0 || admins == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"the administrators list may not be empty: nobody could change it");
	if (n > KMS_ADMINS_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "%zu administrators, more than %d", n,
				KMS_ADMINS_MAX);
	for (size_t i = 0; i < n; i++) {
		kms_err sub = {0};

		if (kms_spiffe_parse_str(admins[i], 1, &id, &sub) != KMS_OK)
			return kms_errf(err, KMS_ERR_INVALID, "administrator %zu: %s", i + 1,
					sub.msg);
		if (kms_spiffe_is_node_path(&id))
			return kms_errf(err, KMS_ERR_INVALID,
					"administrator %zu ('%s') is a node identity", i + 1,
					kms_quote(admins[i], q));
		for (size_t j = 0; j < i; j++)
			if (strcmp(admins[i], admins[j]) == 0)
				return kms_errf(err, KMS_ERR_INVALID,
						"administrator '%s' is listed twice",
						kms_quote(admins[i], q));
	}
	return KMS_OK;
}

char **kr_admins_dup(char *const *admins, size_t n)
{
	char **copy = kms_calloc(n > 0 ? n : 1, sizeof(*copy));

	if (copy == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		copy[i] = kms_strdup(admins[i]);
		if (copy[i] == NULL) {
			kms_keyring_admins_free(copy, i);
			return NULL;
		}
	}
	return copy;
}

void kms_keyring_admins_free(char **admins, size_t n)
{
	if (admins == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		kms_free(admins[i]);
	kms_free(admins);
}

int kr_apply_set_administrators(kms_keyring *kr, const Kms__V1__SetAdministratorsCommand *c,
				kms_err *err)
{
	char **fresh, **old;
	size_t old_n;

	if (c == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "SetAdministrators command holds no list");
	KMS_TRY(kr_admins_check(c->administrators, c->n_administrators, err));
	fresh = kr_admins_dup(c->administrators, c->n_administrators);
	if (fresh == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory setting the administrators");
	pthread_rwlock_wrlock(&kr->lock);
	old = kr->admins;
	old_n = kr->n_admins;
	kr->admins = fresh;
	kr->n_admins = c->n_administrators;
	pthread_rwlock_unlock(&kr->lock);
	kms_keyring_admins_free(old, old_n);
	return KMS_OK;
}

int kms_keyring_is_admin(kms_keyring *kr, const char *principal)
{
	int yes;

	pthread_rwlock_rdlock(&kr->lock);
	yes = kms_is_admin(kr->admins, kr->n_admins, principal);
	pthread_rwlock_unlock(&kr->lock);
	return yes;
}

size_t kms_keyring_admin_count(kms_keyring *kr)
{
	size_t n;

	pthread_rwlock_rdlock(&kr->lock);
	n = kr->n_admins;
	pthread_rwlock_unlock(&kr->lock);
	return n;
}

int kms_keyring_admins(kms_keyring *kr, char ***out, size_t *n, kms_err *err)
{
	pthread_rwlock_rdlock(&kr->lock);
	*out = kr_admins_dup(kr->admins, kr->n_admins);
	*n = kr->n_admins;
	pthread_rwlock_unlock(&kr->lock);
	if (*out == NULL) {
		*n = 0;
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory listing the administrators");
	}
	return KMS_OK;
}

int kr_apply_remove_member(kms_keyring *kr, const Kms__V1__RemoveMemberCommand *c,
			       kms_err *err)
{
	size_t pos;
	int rc = KMS_OK;

	if (c == NULL || c->id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "RemoveMember command names no member");
	pthread_rwlock_wrlock(&kr->lock);
	pos = kr_member_pos(kr, c->id);
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
int kr_apply_domain_key_check(kms_keyring *kr, const Kms__V1__DomainKeyCheckCommand *c,
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
	pos = kr_member_pos(kr, id);
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

