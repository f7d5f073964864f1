/* api_operator.c - kms.v1.Operator: cluster status, membership and the administrators list, for administrators; the calls that change them run on the leader or through a quorum proposal. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <raft.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/node.h"

#define STATUS_TIMEOUT_MS 1000
#define RELAY_TIMEOUT_MS 10000

int kms_api_admin_check(kms_node *node, const char *principal, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	if (principal != NULL && kms_keyring_is_admin(node->kr, principal))
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PERMISSION, "principal '%s' is not an administrator",
			kms_quote(principal != NULL ? principal : "", q));
}

static int require_admin(kms_node *node, kms_call *call)
{
	kms_err err = {0};

	if (kms_api_admin_check(node, kms_call_principal(call), &err) == KMS_OK)
		return 1;
	kms_call_fail(call, err.code, err.msg);
	return 0;
}

static int config_role(const kms_raft_view *v, uint64_t id)
{
	for (size_t i = 0; i < v->n_servers; i++)
		if (v->servers[i].id == id)
			return v->servers[i].role;
	return -1;
}

/* --- ClusterStatus --- */

static void cluster_status(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ClusterStatusRequest *req = kms__v1__cluster_status_request__unpack(NULL, len, data);
	Kms__V1__ClusterStatusResponse resp = KMS__V1__CLUSTER_STATUS_RESPONSE__INIT;
	Kms__V1__MemberStatus ms[KMS_MEMBERS_MAX], *msp[KMS_MEMBERS_MAX];
	Kms__V1__NodeStatusResponse *remote[KMS_MEMBERS_MAX] = {0};
	char errors[KMS_MEMBERS_MAX][160], local_reason[KMS_ERRMSG_SIZE];
	char region[KMS_REGION_NAME_MAX + 1];
	kms_member m[KMS_MEMBERS_MAX];
	kms_raft_view v;
	size_t n;
	uint64_t leader_commit = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ClusterStatusRequest");
		return;
	}
	kms__v1__cluster_status_request__free_unpacked(req, NULL);
	if (!require_admin(node, call))
		return;
	kms_raft_view_get(node->raft, &v);
	n = kms_keyring_members(node->kr, m, KMS_MEMBERS_MAX);
	if (n > KMS_MEMBERS_MAX)
		n = KMS_MEMBERS_MAX;
	for (size_t i = 0; i < n; i++) {
		Kms__V1__NodeStatusRequest nreq = KMS__V1__NODE_STATUS_REQUEST__INIT;
		kms_rpc_status st = {0};
		int role = config_role(&v, m[i].id);

		kms__v1__member_status__init(&ms[i]);
		msp[i] = &ms[i];
		errors[i][0] = '\0';
		ms[i].id = m[i].id;
		ms[i].raft_address = m[i].raft_address;
		ms[i].grpc_address = m[i].grpc_address;
		ms[i].raft_role = (char *)(role < 0 ? "pending" : kms_raft_role_name(role));
		if (m[i].id == node->cfg.node_id) {
			remote[i] = kms_calloc(1, sizeof(*remote[i]));
			if (remote[i] != NULL) {
				kms__v1__node_status_response__init(remote[i]);
				kms_node_local_status(node, remote[i], local_reason);
			}
		} else if (kms_peers_call(node->peers, m[i].grpc_address, m[i].id,
					  "/kms.v1.Internal/NodeStatus", &nreq.base,
					  &kms__v1__node_status_response__descriptor,
					  (ProtobufCMessage **)&remote[i], STATUS_TIMEOUT_MS, &st) != 0) {
			snprintf(errors[i], sizeof(errors[i]), "%.150s", st.details);
		}
		if (remote[i] != NULL && strcmp(remote[i]->role, "leader") == 0)
			leader_commit = remote[i]->commit_index;
	}
	for (size_t i = 0; i < n; i++) {
		if (remote[i] == NULL) {
			ms[i].role = (char *)"unreachable";
			ms[i].error = errors[i];
			continue;
		}
		ms[i].role = remote[i]->role;
		ms[i].term = remote[i]->term;
		ms[i].commit_index = remote[i]->commit_index;
		ms[i].applied_index = remote[i]->applied_index;
		ms[i].hsm_secret_keys = remote[i]->hsm_secret_keys;
		ms[i].not_serving_reason = remote[i]->not_serving_reason;
		ms[i].lag = leader_commit > remote[i]->applied_index
				    ? leader_commit - remote[i]->applied_index
				    : 0;
	}
	resp.leader_id = v.leader_id;
	resp.n_members = n;
	resp.members = msp;
	kms_keyring_region(node->kr, region);
	resp.region = region;
	kms_call_reply(call, &resp.base, 0);
	for (size_t i = 0; i < n; i++) {
		if (remote[i] == NULL)
			continue;
		if (m[i].id == node->cfg.node_id)
			kms_free(remote[i]); /* local: its strings are static */
		else
			protobuf_c_message_free_unpacked(&remote[i]->base, NULL);
	}
}

/* Every call that changes the cluster on the leader is a quorum call now. */
static const kms_leader_op abort_rotation_op = {
	"/kms.v1.Operator/RotateDomainKey", kms_api_op_rotate_domain_key,
	&kms__v1__rotate_domain_key_request__descriptor};

const kms_leader_op *kms_api_leader_op(const char *method)
{
	if (method != NULL && strcmp(method, abort_rotation_op.method) == 0)
		return &abort_rotation_op;
	return kms_api_quorum_leader_op(method);
}

/* Carries the call to the leader (Internal/Relay) with the caller's principal. */
static int relay(kms_node *node, const char *principal, const kms_leader_op *op,
		 const uint8_t *data, size_t len, kms_buf *out, kms_err *err)
{
	Kms__V1__RelayRequest req = KMS__V1__RELAY_REQUEST__INIT;
	Kms__V1__RelayResponse *resp = NULL;
	kms_member leader;
	kms_rpc_status st = {0};
	int rc;

	KMS_TRY(kms_node_leader(node, &leader, err));
	req.principal = (char *)principal;
	req.method = (char *)op->method;
	req.request.data = (uint8_t *)data;
	req.request.len = len;
	if (kms_peers_call(node->peers, leader.grpc_address, leader.id, "/kms.v1.Internal/Relay",
			   &req.base, &kms__v1__relay_response__descriptor,
			   (ProtobufCMessage **)&resp, RELAY_TIMEOUT_MS, &st) != 0)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"this call runs on the leader (node %llu), which did not answer: "
				"%.150s",
				(unsigned long long)leader.id, st.details);
	rc = resp->status < KMS_STATUS_COUNT ? (int)resp->status : KMS_ERR_INTERNAL;
	if (rc != KMS_OK) {
		kms_errf(err, rc, "%s", resp->message);
	} else {
		out->data = kms_malloc(resp->response.len > 0 ? resp->response.len : 1);
		out->len = resp->response.len;
		if (out->data == NULL)
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory relaying the reply");
		else if (resp->response.len > 0)
			memcpy(out->data, resp->response.data, resp->response.len);
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/*
 * Membership and the administrators list change only on the leader, so that
 * its guards (never remove itself or the last member) see the state they
 * guard. A follower checks the caller is an administrator (a stranger gets
 * no relay), then carries the request there.
 */
void kms_api_run_on_leader(kms_node *node, kms_call *call, const char *method,
			   const uint8_t *data, size_t len)
{
	const kms_leader_op *op = kms_api_leader_op(method);
	const char *principal = kms_call_principal(call);
	kms_buf out = {0};
	kms_err err = {0};
	int rc;

	if (!require_admin(node, call))
		return;
	if (kms_node_is_leader(node))
		rc = op->fn(node, principal, data, len, &out, &err);
	else
		rc = relay(node, principal, op, data, len, &out, &err);
	if (rc == KMS_OK)
		kms_call_reply_bytes(call, out.data, out.len);
	else
		kms_call_fail(call, rc, err.msg);
	kms_buf_free(&out);
}

/*
 * A root operation called directly: an administrator gets the command to
 * use; anyone else, as for every Operator call, PERMISSION_DENIED alone.
 */
static void refuse_root_operation(kms_node *node, kms_call *call, const char *what,
				  const char *command)
{
	char msg[KMS_ERRMSG_SIZE];

	if (!require_admin(node, call))
		return;
	snprintf(msg, sizeof(msg),
		 "%s is a root operation that M operators approve: %s, then kmsctl quorum approve",
		 what, command);
	kms_call_fail(call, KMS_ERR_PRECONDITION, msg);
}

static void add_member(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__AddMemberRequest *req = kms__v1__add_member_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed AddMemberRequest");
		return;
	}
	kms__v1__add_member_request__free_unpacked(req, NULL);
	refuse_root_operation(app, call, "admitting a member",
			      "kmsctl quorum propose add-member --id N --raft HOST:PORT --grpc "
			      "HOST:PORT --transport-key-sha256 HEX");
}

static void remove_member(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__RemoveMemberRequest *req = kms__v1__remove_member_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RemoveMemberRequest");
		return;
	}
	kms__v1__remove_member_request__free_unpacked(req, NULL);
	refuse_root_operation(app, call, "removing a member",
			      "kmsctl quorum propose remove-member --id N");
}

/*
 * The administrators list is a root operation: only M operators change it
 * (issue #6). An administrator gets the way to do it; anyone else, as for
 * every Operator call, a refusal that says nothing more.
 */
static void set_administrators(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__SetAdministratorsRequest *req =
		kms__v1__set_administrators_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed SetAdministratorsRequest");
		return;
	}
	kms__v1__set_administrators_request__free_unpacked(req, NULL);
	refuse_root_operation(app, call, "changing the administrators",
			      "kmsctl quorum propose set-administrators ID[,ID...]");
}

/*
 * Starting a rotation is a root operation; aborting one before its switch
 * only returns to the domain key in use, and stays an administrator's call.
 */
static void rotate_domain_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__RotateDomainKeyRequest *req =
		kms__v1__rotate_domain_key_request__unpack(NULL, len, data);
	int abort_it;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RotateDomainKeyRequest");
		return;
	}
	abort_it = req->abort;
	kms__v1__rotate_domain_key_request__free_unpacked(req, NULL);
	if (!abort_it) {
		refuse_root_operation(app, call, "rotating the domain key",
				      "kmsctl quorum propose rotate-domain-key");
		return;
	}
	kms_api_run_on_leader(app, call, "/kms.v1.Operator/RotateDomainKey", data, len);
}

static void list_administrators(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ListAdministratorsRequest *req =
		kms__v1__list_administrators_request__unpack(NULL, len, data);
	Kms__V1__ListAdministratorsResponse resp = KMS__V1__LIST_ADMINISTRATORS_RESPONSE__INIT;
	kms_err err = {0};
	char **admins = NULL;
	size_t n = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ListAdministratorsRequest");
		return;
	}
	kms__v1__list_administrators_request__free_unpacked(req, NULL);
	if (!require_admin(node, call))
		return;
	if (kms_keyring_admins(node->kr, &admins, &n, &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	resp.administrators = admins;
	resp.n_administrators = n;
	kms_call_reply(call, &resp.base, 0);
	kms_keyring_admins_free(admins, n);
}

const kms_method kms_api_operator_methods[] = {
	{"/kms.v1.Operator/ClusterStatus", cluster_status, KMS_CALLERS_SERVICES,
	 &kms__v1__cluster_status_request__descriptor, 0},
	{"/kms.v1.Operator/AddMember", add_member, KMS_CALLERS_SERVICES,
	 &kms__v1__add_member_request__descriptor, 0},
	{"/kms.v1.Operator/RemoveMember", remove_member, KMS_CALLERS_SERVICES,
	 &kms__v1__remove_member_request__descriptor, 0},
	{"/kms.v1.Operator/ListAdministrators", list_administrators, KMS_CALLERS_SERVICES,
	 &kms__v1__list_administrators_request__descriptor, 0},
	{"/kms.v1.Operator/SetAdministrators", set_administrators, KMS_CALLERS_SERVICES,
	 &kms__v1__set_administrators_request__descriptor, 0},
	{"/kms.v1.Operator/RotateDomainKey", rotate_domain_key, KMS_CALLERS_SERVICES,
	 &kms__v1__rotate_domain_key_request__descriptor, 0},
};
const size_t kms_api_operator_n_methods =
	sizeof(kms_api_operator_methods) / sizeof(kms_api_operator_methods[0]);
