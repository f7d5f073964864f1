/* keyring_cmd.c - builders of the serialized kms.v1.Command entries the Raft log carries; each runs the checks apply runs. */
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

int kr_command_pack(const Kms__V1__Command *c, kms_buf *out, kms_err *err)
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
	KMS_TRY(kr_record_check(&rec, err));
	ck.key = &rec;
	c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_KEY;
	c.create_key = &ck;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_add_member(uint64_t id, const char *raft_address, const char *grpc_address,
			       const kms_join_grant *grant, kms_buf *out, kms_err *err)
{
	Kms__V1__JoinGrant g = KMS__V1__JOIN_GRANT__INIT;
	Kms__V1__MemberRecord m = KMS__V1__MEMBER_RECORD__INIT;
	Kms__V1__AddMemberCommand am = KMS__V1__ADD_MEMBER_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	m.id = id;
	m.raft_address = (char *)raft_address;
	m.grpc_address = (char *)grpc_address;
	if (grant != NULL) {
		g.transport_key_sha256.data = (uint8_t *)grant->transport_key_sha256;
		g.transport_key_sha256.len = KMS_FINGERPRINT_LEN;
		g.expires_at_unix = grant->expires_at_unix;
		m.join_grant = &g;
	}
	KMS_TRY(kr_member_check(&m, err));
	am.member = &m;
	c.cmd_case = KMS__V1__COMMAND__CMD_ADD_MEMBER;
	c.add_member = &am;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_remove_member(uint64_t id, kms_buf *out, kms_err *err)
{
	Kms__V1__RemoveMemberCommand rm = KMS__V1__REMOVE_MEMBER_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	KMS_ENSURE(id != 0, err, KMS_ERR_INVALID, "a member id is 1 or more");
	rm.id = id;
	c.cmd_case = KMS__V1__COMMAND__CMD_REMOVE_MEMBER;
	c.remove_member = &rm;
	return kr_command_pack(&c, out, err);
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
	return kr_command_pack(&c, out, err);
}


int kms_keyring_cmd_consume_join_grant(uint64_t id, const uint8_t fp[KMS_FINGERPRINT_LEN],
				       int64_t now_unix, kms_buf *out, kms_err *err)
{
	Kms__V1__ConsumeJoinGrantCommand cg = KMS__V1__CONSUME_JOIN_GRANT_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	KMS_ENSURE(id != 0 && fp != NULL, err, KMS_ERR_INVALID,
		   "a join grant is used by a node id with a transport key fingerprint");
	cg.node_id = id;
	cg.transport_key_sha256.data = (uint8_t *)fp;
	cg.transport_key_sha256.len = KMS_FINGERPRINT_LEN;
	cg.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_CONSUME_JOIN_GRANT;
	c.consume_join_grant = &cg;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_set_administrators(char *const *admins, size_t n, kms_buf *out,
				       kms_err *err)
{
	Kms__V1__SetAdministratorsCommand sa = KMS__V1__SET_ADMINISTRATORS_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	KMS_TRY(kr_admins_check(admins, n, err));
	sa.administrators = (char **)admins;
	sa.n_administrators = n;
	c.cmd_case = KMS__V1__COMMAND__CMD_SET_ADMINISTRATORS;
	c.set_administrators = &sa;
	return kr_command_pack(&c, out, err);
}
