/* api_cluster.c - kms.v1.Operator (cluster status, joins, removals) and kms.v1.Internal (forwarding, node status, domain-key transfer). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <raft.h>

#include "api.h"
#include "kms/alloc.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "kms/v1/cluster.pb-c.h"
#include "node.h"

#define STATUS_TIMEOUT_MS 1000
#define PROMOTION_WAIT_MS 30000
#define REMOVAL_WAIT_MS 5000

static int require_admin(kms_node *node, kms_call *call)
{
	const char *p = kms_call_principal(call);
	char msg[KMS_ERRMSG_SIZE];

	if (kms_is_admin(node->cfg.admins, node->cfg.n_admins, p))
		return 1;
	snprintf(msg, sizeof(msg), "principal '%.200s' is not an administrator", p);
	kms_call_fail(call, KMS_ERR_PERMISSION, msg);
	return 0;
}

/* Internal calls come only from member nodes of this cluster. */
static uint64_t require_member_node(kms_node *node, kms_call *call)
{
	const kms_peer *p = kms_call_peer(call);
	kms_member m;
	char msg[KMS_ERRMSG_SIZE];

	/* The method table lets only node identities (node CA) in. */
	if (p->kind == KMS_PEER_NODE && kms_keyring_member(node->kr, p->node_id, &m) == KMS_OK)
		return p->node_id;
	snprintf(msg, sizeof(msg), "node %llu is not a member of this cluster",
		 (unsigned long long)p->node_id);
	kms_call_fail(call, KMS_ERR_PERMISSION, msg);
	return 0;
}

static int sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	return nanosleep(&t, NULL);
}

static int config_role(const kms_raft_view *v, uint64_t id)
{
	for (size_t i = 0; i < v->n_servers; i++)
		if (v->servers[i].id == id)
			return v->servers[i].role;
	return -1;
}

/* --- kms.v1.Operator --- */

static void fill_local(kms_node *node, Kms__V1__NodeStatusResponse *r)
{
	kms_raft_view v;

	kms_raft_view_get(node->raft, &v);
	r->id = node->cfg.node_id;
	r->role = (char *)kms_raft_state_name(v.state);
	r->term = v.term;
	r->commit_index = v.commit_index;
	r->applied_index = v.applied_index;
	r->leader_id = v.leader_id;
	r->has_domain_key = atomic_load(&node->domain_key) != 0;
}

static void cluster_status(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ClusterStatusRequest *req = kms__v1__cluster_status_request__unpack(NULL, len, data);
	Kms__V1__ClusterStatusResponse resp = KMS__V1__CLUSTER_STATUS_RESPONSE__INIT;
	Kms__V1__MemberStatus ms[KMS_MEMBERS_MAX], *msp[KMS_MEMBERS_MAX];
	Kms__V1__NodeStatusResponse *remote[KMS_MEMBERS_MAX] = {0};
	char errors[KMS_MEMBERS_MAX][160];
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
				fill_local(node, remote[i]);
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
		ms[i].lag = leader_commit > remote[i]->applied_index
				    ? leader_commit - remote[i]->applied_index
				    : 0;
	}
	resp.leader_id = v.leader_id;
	resp.n_members = n;
	resp.members = msp;
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

static void add_member(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__AddMemberRequest *req = kms__v1__add_member_request__unpack(NULL, len, data);
	Kms__V1__AddMemberResponse resp = KMS__V1__ADD_MEMBER_RESPONSE__INIT;
	kms_buf cmd = {0};
	kms_err err = {0};
	kms_raft_view v;
	int rc, voter = 0;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed AddMemberRequest");
		return;
	}
	if (!require_admin(node, call))
		goto out;
	if (req->member == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "AddMemberRequest names no member");
		goto out;
	}
	rc = kms_keyring_cmd_add_member(req->member->id, req->member->raft_address,
					req->member->grpc_address, &cmd, &err);
	if (rc == KMS_OK)
		rc = kms_node_commit_wait(node, cmd.data, cmd.len, NULL, &err);
	if (rc != KMS_OK) {
		kms_call_fail(call, rc, err.msg);
		goto out;
	}
	KMS_LOG_I("admitted node %llu (Raft %s, gRPC %s); promoting it once it catches up",
		  (unsigned long long)req->member->id, req->member->raft_address,
		  req->member->grpc_address);
	/* The leader adds it to Raft and promotes it after catch-up; wait a while. */
	for (int waited = 0; waited < PROMOTION_WAIT_MS && !voter; waited += 100) {
		kms_raft_view_get(node->raft, &v);
		voter = config_role(&v, req->member->id) == RAFT_VOTER;
		if (!voter)
			sleep_ms(100);
	}
	resp.member = req->member;
	resp.raft_role = (char *)(voter ? "voter" : "catching-up");
	kms_call_reply(call, &resp.base, 0);
out:
	kms_buf_free(&cmd);
	kms__v1__add_member_request__free_unpacked(req, NULL);
}

static void remove_member(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RemoveMemberRequest *req = kms__v1__remove_member_request__unpack(NULL, len, data);
	Kms__V1__RemoveMemberResponse resp = KMS__V1__REMOVE_MEMBER_RESPONSE__INIT;
	kms_buf cmd = {0};
	kms_err err = {0};
	kms_raft_view v;
	kms_member m;
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RemoveMemberRequest");
		return;
	}
	if (!require_admin(node, call))
		goto out;
	kms_raft_view_get(node->raft, &v);
	if (kms_keyring_member(node->kr, req->id, &m) != KMS_OK) {
		snprintf(err.msg, sizeof(err.msg), "node %llu is not a member",
			 (unsigned long long)req->id);
		kms_call_fail(call, KMS_ERR_NOT_FOUND, err.msg);
		goto out;
	}
	if (kms_keyring_members(node->kr, NULL, 0) <= 1) {
		snprintf(err.msg, sizeof(err.msg),
			 "node %llu is the only member; a cluster cannot remove its last node",
			 (unsigned long long)req->id);
		kms_call_fail(call, KMS_ERR_PRECONDITION, err.msg);
		goto out;
	}
	/* Handing leadership over first (raft_transfer) raced with raft 0.15's
	 * configuration-change bookkeeping in tests; until that is understood
	 * the operator moves leadership by stopping the leader. */
	if (req->id == v.leader_id) {
		snprintf(err.msg, sizeof(err.msg),
			 "node %llu is the leader; stop it first so that another node leads, then "
			 "remove it",
			 (unsigned long long)req->id);
		kms_call_fail(call, KMS_ERR_PRECONDITION, err.msg);
		goto out;
	}
	rc = kms_keyring_cmd_remove_member(req->id, &cmd, &err);
	if (rc == KMS_OK)
		rc = kms_node_commit_wait(node, cmd.data, cmd.len, NULL, &err);
	if (rc != KMS_OK) {
		kms_call_fail(call, rc, err.msg);
		goto out;
	}
	for (int waited = 0; waited < REMOVAL_WAIT_MS; waited += 100) {
		kms_raft_view_get(node->raft, &v);
		if (config_role(&v, req->id) < 0)
			break;
		sleep_ms(100);
	}
	KMS_LOG_I("removed node %llu", (unsigned long long)req->id);
	kms_call_reply(call, &resp.base, 0);
out:
	kms_buf_free(&cmd);
	kms__v1__remove_member_request__free_unpacked(req, NULL);
}

/* --- kms.v1.Internal --- */

static void forward_done(void *arg, int status, const char *msg, uint64_t index)
{
	kms_call *call = arg;
	Kms__V1__ForwardResponse resp = KMS__V1__FORWARD_RESPONSE__INIT;

	resp.status = (uint32_t)status;
	resp.message = (char *)(msg != NULL ? msg : "");
	resp.index = index;
	kms_call_reply(call, &resp.base, 0);
}

static void forward(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ForwardRequest *req = kms__v1__forward_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ForwardRequest");
		return;
	}
	/* The command is checked again by every node's apply; here only the
	 * caller's right to send one. */
	if (require_member_node(node, call) != 0)
		kms_raft_submit(node->raft, req->command.data, req->command.len, forward_done, call);
	kms__v1__forward_request__free_unpacked(req, NULL);
}

static void node_status(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__NodeStatusRequest *req = kms__v1__node_status_request__unpack(NULL, len, data);
	Kms__V1__NodeStatusResponse resp = KMS__V1__NODE_STATUS_RESPONSE__INIT;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed NodeStatusRequest");
		return;
	}
	kms__v1__node_status_request__free_unpacked(req, NULL);
	if (require_member_node(node, call) == 0)
		return;
	fill_local(node, &resp);
	kms_call_reply(call, &resp.base, 0);
}

static void fetch_domain_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__FetchDomainKeyRequest *req =
		kms__v1__fetch_domain_key_request__unpack(NULL, len, data);
	Kms__V1__FetchDomainKeyResponse resp = KMS__V1__FETCH_DOMAIN_KEY_RESPONSE__INIT;
	uint64_t caller;
	kms_buf wrapped = {0};
	kms_member m;
	kms_err err = {0};
	char msg[KMS_ERRMSG_SIZE];

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed FetchDomainKeyRequest");
		return;
	}
	caller = kms_call_peer(call)->node_id;
	if (caller == 0 || caller != req->node_id) {
		snprintf(msg, sizeof(msg), "principal '%.200s' may not fetch the key of node %llu",
			 kms_call_principal(call), (unsigned long long)req->node_id);
		kms_call_fail(call, KMS_ERR_PERMISSION, msg);
	} else if (kms_keyring_member(node->kr, caller, &m) != KMS_OK) {
		snprintf(msg, sizeof(msg),
			 "node %llu has not been admitted: an operator runs kmsctl cluster join "
			 "first",
			 (unsigned long long)caller);
		kms_call_fail(call, KMS_ERR_PERMISSION, msg);
	} else if (atomic_load(&node->domain_key) == 0 || !atomic_load(&node->probe_verified)) {
		kms_call_fail(call, KMS_ERR_UNAVAILABLE, "this node holds no verified domain key");
	} else if (kms_hsm_domain_key_wrap_for(node->hsm, atomic_load(&node->domain_key),
					       req->rsa_modulus.data, req->rsa_modulus.len,
					       req->rsa_public_exponent.data,
					       req->rsa_public_exponent.len, &wrapped, &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
	} else {
		KMS_LOG_I("domain key wrapped to node %llu's transport key",
			  (unsigned long long)caller);
		resp.wrapped_domain_key.data = wrapped.data;
		resp.wrapped_domain_key.len = wrapped.len;
		kms_call_reply(call, &resp.base, 0);
	}
	kms_buf_free(&wrapped);
	kms__v1__fetch_domain_key_request__free_unpacked(req, NULL);
}

const kms_method kms_api_cluster_methods[] = {
	{"/kms.v1.Operator/ClusterStatus", cluster_status, KMS_CALLERS_SERVICES,
	 &kms__v1__cluster_status_request__descriptor},
	{"/kms.v1.Operator/AddMember", add_member, KMS_CALLERS_SERVICES,
	 &kms__v1__add_member_request__descriptor},
	{"/kms.v1.Operator/RemoveMember", remove_member, KMS_CALLERS_SERVICES,
	 &kms__v1__remove_member_request__descriptor},
	{"/kms.v1.Internal/Forward", forward, KMS_CALLERS_NODES,
	 &kms__v1__forward_request__descriptor},
	{"/kms.v1.Internal/NodeStatus", node_status, KMS_CALLERS_NODES,
	 &kms__v1__node_status_request__descriptor},
	{"/kms.v1.Internal/FetchDomainKey", fetch_domain_key, KMS_CALLERS_NODES,
	 &kms__v1__fetch_domain_key_request__descriptor},
};
const size_t kms_api_cluster_n_methods =
	sizeof(kms_api_cluster_methods) / sizeof(kms_api_cluster_methods[0]);
