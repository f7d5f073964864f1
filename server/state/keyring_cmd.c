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
	/* Apply takes such ids (earlier versions made them); new ones, never. */
	KMS_TRY(kms_keyring_new_key_id_check(key_id, err));
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
	kr_set_key_state(&rec, KMS__V1__KEY_STATE__KEY_STATE_ENABLED);
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

/* --- the key lifecycle --- */

/* Every lifecycle builder's first check: a key id, not an alias. */
static int key_arg_check(const char *key_id, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	KMS_ENSURE(key_id != NULL, err, KMS_ERR_INVALID, "key id missing");
	KMS_ENSURE(!kms_is_alias_name(key_id), err, KMS_ERR_INVALID,
		   "'%s' is an alias: commands name the key id it points at",
		   kms_quote(key_id, q));
	return kms_key_id_check(key_id, err);
}

int kms_keyring_cmd_rotate_key(const char *key_id, uint32_t version, const uint8_t *wrapped,
			       size_t wrapped_len, int64_t now_unix, kms_buf *out, kms_err *err)
{
	Kms__V1__KeyVersionRecord v = KMS__V1__KEY_VERSION_RECORD__INIT;
	Kms__V1__RotateKeyCommand rk = KMS__V1__ROTATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	KMS_ENSURE(version >= 2 && version <= KMS_KEY_VERSIONS_MAX, err, KMS_ERR_INVALID,
		   "a rotation adds version 2 to %d, not %u", KMS_KEY_VERSIONS_MAX, version);
	KMS_ENSURE(wrapped != NULL || wrapped_len == 0, err, KMS_ERR_INVALID,
		   "wrapped material missing");
	v.version = version;
	v.wrapped_material.data = (uint8_t *)wrapped;
	v.wrapped_material.len = wrapped_len;
	v.created_at_unix = now_unix;
	KMS_TRY(kr_version_check(key_id, &v, err));
	rk.key_id = (char *)key_id;
	rk.version = &v;
	rk.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_ROTATE_KEY;
	c.rotate_key = &rk;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_set_key_enabled(const char *key_id, int enabled, kms_buf *out, kms_err *err)
{
	Kms__V1__SetKeyEnabledCommand se = KMS__V1__SET_KEY_ENABLED_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	se.key_id = (char *)key_id;
	se.enabled = enabled != 0;
	c.cmd_case = KMS__V1__COMMAND__CMD_SET_KEY_ENABLED;
	c.set_key_enabled = &se;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_schedule_key_deletion(const char *key_id, int64_t deletion_at_unix,
					  kms_buf *out, kms_err *err)
{
	Kms__V1__ScheduleKeyDeletionCommand sd = KMS__V1__SCHEDULE_KEY_DELETION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	KMS_ENSURE(deletion_at_unix > 0, err, KMS_ERR_INVALID, "a deletion needs a date");
	sd.key_id = (char *)key_id;
	sd.deletion_at_unix = deletion_at_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_SCHEDULE_KEY_DELETION;
	c.schedule_key_deletion = &sd;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_cancel_key_deletion(const char *key_id, kms_buf *out, kms_err *err)
{
	Kms__V1__CancelKeyDeletionCommand cd = KMS__V1__CANCEL_KEY_DELETION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	cd.key_id = (char *)key_id;
	c.cmd_case = KMS__V1__COMMAND__CMD_CANCEL_KEY_DELETION;
	c.cancel_key_deletion = &cd;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_destroy_key(const char *key_id, int64_t now_unix, kms_buf *out, kms_err *err)
{
	Kms__V1__DestroyKeyCommand dk = KMS__V1__DESTROY_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	dk.key_id = (char *)key_id;
	dk.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_DESTROY_KEY;
	c.destroy_key = &dk;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_put_key_policy(const char *key_id, const Kms__V1__KeyPolicy *policy,
				   kms_buf *out, kms_err *err)
{
	Kms__V1__PutKeyPolicyCommand pp = KMS__V1__PUT_KEY_POLICY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	KMS_TRY(kms_policy_check(policy, KMS_POLICY_STORED, NULL, err));
	pp.key_id = (char *)key_id;
	pp.policy = (Kms__V1__KeyPolicy *)policy;
	c.cmd_case = KMS__V1__COMMAND__CMD_PUT_KEY_POLICY;
	c.put_key_policy = &pp;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_set_rotation_policy(const char *key_id, uint64_t rotation_period_seconds,
					uint64_t max_encryptions_per_version, kms_buf *out,
					kms_err *err)
{
	Kms__V1__SetRotationPolicyCommand rp = KMS__V1__SET_ROTATION_POLICY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	KMS_ENSURE(rotation_period_seconds <= KMS_ROTATION_PERIOD_MAX, err, KMS_ERR_INVALID,
		   "rotation period of %llu s is longer than 100 years",
		   (unsigned long long)rotation_period_seconds);
	KMS_ENSURE(max_encryptions_per_version <= KMS_ENCRYPTIONS_MAX, err, KMS_ERR_INVALID,
		   "max_encryptions_per_version %llu is above 2^32, the AES-GCM random-IV bound "
		   "(NIST SP 800-38D)",
		   (unsigned long long)max_encryptions_per_version);
	rp.key_id = (char *)key_id;
	rp.rotation_period_seconds = rotation_period_seconds;
	rp.max_encryptions_per_version = max_encryptions_per_version;
	c.cmd_case = KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY;
	c.set_rotation_policy = &rp;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_reserve_encryptions(const char *key_id, uint32_t version, uint64_t count,
					uint64_t node_id, uint64_t incarnation, kms_buf *out,
					kms_err *err)
{
	Kms__V1__ReserveEncryptionsCommand re = KMS__V1__RESERVE_ENCRYPTIONS_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(key_arg_check(key_id, err));
	KMS_ENSURE(version >= 1, err, KMS_ERR_INVALID, "a reservation names a version");
	KMS_ENSURE(count >= 1 && count <= KMS_ENCRYPTIONS_MAX, err, KMS_ERR_INVALID,
		   "a reservation is of 1 to 2^32 encryptions, not %llu",
		   (unsigned long long)count);
	KMS_ENSURE(node_id >= 1 && incarnation >= 1, err, KMS_ERR_INVALID,
		   "a reservation names a node id and its incarnation");
	re.key_id = (char *)key_id;
	re.version = version;
	re.count = count;
	re.node_id = node_id;
	re.incarnation = incarnation;
	c.cmd_case = KMS__V1__COMMAND__CMD_RESERVE_ENCRYPTIONS;
	c.reserve_encryptions = &re;
	return kr_command_pack(&c, out, err);
}

/* --- aliases --- */

static int alias_cmd(const char *name, const char *key_id, int64_t now_unix, int update,
		     kms_buf *out, kms_err *err)
{
	Kms__V1__CreateAliasCommand ca = KMS__V1__CREATE_ALIAS_COMMAND__INIT;
	Kms__V1__UpdateAliasCommand ua = KMS__V1__UPDATE_ALIAS_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_alias_name_check(name, err));
	KMS_TRY(kr_alias_target_check(key_id, err));
	if (update) {
		ua.alias_name = (char *)name;
		ua.key_id = (char *)key_id;
		ua.now_unix = now_unix;
		c.cmd_case = KMS__V1__COMMAND__CMD_UPDATE_ALIAS;
		c.update_alias = &ua;
	} else {
		ca.alias_name = (char *)name;
		ca.key_id = (char *)key_id;
		ca.now_unix = now_unix;
		c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_ALIAS;
		c.create_alias = &ca;
	}
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_create_alias(const char *name, const char *key_id, int64_t now_unix,
				 kms_buf *out, kms_err *err)
{
	return alias_cmd(name, key_id, now_unix, 0, out, err);
}

int kms_keyring_cmd_update_alias(const char *name, const char *key_id, int64_t now_unix,
				 kms_buf *out, kms_err *err)
{
	return alias_cmd(name, key_id, now_unix, 1, out, err);
}

int kms_keyring_cmd_delete_alias(const char *name, kms_buf *out, kms_err *err)
{
	Kms__V1__DeleteAliasCommand da = KMS__V1__DELETE_ALIAS_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_alias_name_check(name, err));
	da.alias_name = (char *)name;
	c.cmd_case = KMS__V1__COMMAND__CMD_DELETE_ALIAS;
	c.delete_alias = &da;
	return kr_command_pack(&c, out, err);
}

/* --- the quorum --- */

int kms_keyring_cmd_quorum_init(const uint8_t cluster_id[KMS_CLUSTER_ID_LEN],
				Kms__V1__OperatorRecord *const *ops, size_t n, uint32_t threshold,
				const char *region, kms_buf *out, kms_err *err)
{
	Kms__V1__QuorumInitCommand qi = KMS__V1__QUORUM_INIT_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_operator_set_check(ops, n, threshold, err));
	qi.cluster_id.data = (uint8_t *)cluster_id;
	qi.cluster_id.len = KMS_CLUSTER_ID_LEN;
	qi.operators = (Kms__V1__OperatorRecord **)ops;
	qi.n_operators = n;
	qi.threshold = threshold;
	if (region != NULL && region[0] != '\0') {
		KMS_TRY(kms_region_name_check(region, err));
		qi.region = (char *)region;
	}
	c.cmd_case = KMS__V1__COMMAND__CMD_QUORUM_INIT;
	c.quorum_init = &qi;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_propose(const Kms__V1__ProposalRecord *p, kms_buf *out, kms_err *err)
{
	Kms__V1__ProposeCommand pc = KMS__V1__PROPOSE_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_ENSURE(p != NULL, err, KMS_ERR_INVALID, "no proposal");
	KMS_TRY(kms_proposal_id_check(p->id, err));
	KMS_TRY(kms_root_operation_check(p->operation, err));
	pc.proposal = (Kms__V1__ProposalRecord *)p;
	c.cmd_case = KMS__V1__COMMAND__CMD_PROPOSE;
	c.propose = &pc;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_approve(const char *proposal_id, const char *operator_name,
			    const uint8_t *sig, size_t sig_len, int64_t now_unix, kms_buf *out,
			    kms_err *err)
{
	Kms__V1__ApproveCommand ac = KMS__V1__APPROVE_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_proposal_id_check(proposal_id, err));
	KMS_TRY(kms_operator_name_check(operator_name, err));
	KMS_ENSURE(sig != NULL && sig_len == KMS_ED25519_SIG_LEN, err, KMS_ERR_INVALID,
		   "an approval carries a %d-byte Ed25519 signature, not %zu bytes",
		   KMS_ED25519_SIG_LEN, sig_len);
	ac.proposal_id = (char *)proposal_id;
	ac.operator_name = (char *)operator_name;
	ac.signature.data = (uint8_t *)sig;
	ac.signature.len = sig_len;
	ac.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_APPROVE;
	c.approve = &ac;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_cancel_proposal(const char *proposal_id, const char *principal,
				    int64_t now_unix, kms_buf *out, kms_err *err)
{
	Kms__V1__CancelProposalCommand cc = KMS__V1__CANCEL_PROPOSAL_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_proposal_id_check(proposal_id, err));
	cc.proposal_id = (char *)proposal_id;
	cc.principal = (char *)(principal != NULL ? principal : "");
	cc.now_unix = now_unix;
	c.cmd_case = KMS__V1__COMMAND__CMD_CANCEL_PROPOSAL;
	c.cancel_proposal = &cc;
	return kr_command_pack(&c, out, err);
}

static int proposal_result(const char *proposal_id, int status, const char *message,
			   int64_t now_unix, const kms_backup_ref *ref, kms_buf *out, kms_err *err)
{
	Kms__V1__ProposalResultCommand pr = KMS__V1__PROPOSAL_RESULT_COMMAND__INIT;
	Kms__V1__BackupFileRef br = KMS__V1__BACKUP_FILE_REF__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_proposal_id_check(proposal_id, err));
	KMS_ENSURE(status >= 0 && status < KMS_STATUS_COUNT, err, KMS_ERR_INVALID,
		   "status %d is unknown", status);
	pr.proposal_id = (char *)proposal_id;
	pr.status = (uint32_t)status;
	pr.message = (char *)(message != NULL ? message : "");
	pr.now_unix = now_unix;
	if (ref != NULL) {
		br.backup_id.data = (uint8_t *)ref->backup_id;
		br.backup_id.len = KMS_BACKUP_ID_LEN;
		br.size = ref->size;
		br.sha256.data = (uint8_t *)ref->sha256;
		br.sha256.len = sizeof(ref->sha256);
		br.holder_node_id = ref->holder_node_id;
		pr.backup_ref = &br;
	}
	c.cmd_case = KMS__V1__COMMAND__CMD_PROPOSAL_RESULT;
	c.proposal_result = &pr;
	return kr_command_pack(&c, out, err);
}

int kms_keyring_cmd_proposal_result(const char *proposal_id, int status, const char *message,
				    int64_t now_unix, kms_buf *out, kms_err *err)
{
	return proposal_result(proposal_id, status, message, now_unix, NULL, out, err);
}

int kms_keyring_cmd_proposal_result_backup(const char *proposal_id, int64_t now_unix,
					   const kms_backup_ref *ref, kms_buf *out, kms_err *err)
{
	return proposal_result(proposal_id, KMS_OK, "", now_unix, ref, out, err);
}

int kms_keyring_cmd_restore_backup(const uint8_t *key_ring, size_t len, kms_buf *out,
				   kms_err *err)
{
	Kms__V1__RestoreBackupCommand rb = KMS__V1__RESTORE_BACKUP_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;

	out->data = NULL;
	out->len = 0;
	KMS_ENSURE(key_ring != NULL && len > 0, err, KMS_ERR_INVALID, "RestoreBackup needs a key ring");
	rb.key_ring.data = (uint8_t *)key_ring;
	rb.key_ring.len = len;
	c.cmd_case = KMS__V1__COMMAND__CMD_RESTORE_BACKUP;
	c.restore_backup = &rb;
	return kr_command_pack(&c, out, err);
}
