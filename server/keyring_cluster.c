/* keyring_cluster.c - the cluster part of the replicated state: members, the domain-key check. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "keyring_internal.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/hostport.h"
#include "kms/policy.h"

/* --- members and the domain-key check ----------------------------------- */

int kr_member_check(const Kms__V1__MemberRecord *m, kms_err *err)
{
	if (m == NULL || m->id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "a member needs an id of 1 or more");
	KMS_TRY(kms_hostport_check(m->raft_address, "raft_address", err));
	return kms_hostport_check(m->grpc_address, "grpc_address", err);
}

/* Index of the first member whose id is >= id (caller holds the lock). */
size_t kr_member_pos(const struct kms_keyring *kr, uint64_t id)
{
	size_t i = 0;

	while (i < kr->n_members && kr->members[i].id < id)
		i++;
	return i;
}

void kr_member_set(kms_member *dst, const Kms__V1__MemberRecord *m)
{
	dst->id = m->id;
	snprintf(dst->raft_address, sizeof(dst->raft_address), "%s", m->raft_address);
	snprintf(dst->grpc_address, sizeof(dst->grpc_address), "%s", m->grpc_address);
}

/* Adding a member that exists updates its addresses: a re-sent join is not
 * an error. */
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
		kr_member_set(&kr->members[pos], c->member);
	} else if (kr->n_members == KMS_MEMBERS_MAX) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION, "the cluster already has %d members",
			      KMS_MEMBERS_MAX);
	} else {
		memmove(&kr->members[pos + 1], &kr->members[pos],
			(kr->n_members - pos) * sizeof(kr->members[0]));
		kr_member_set(&kr->members[pos], c->member);
		kr->n_members++;
	}
	pthread_rwlock_unlock(&kr->lock);
	return rc;
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

