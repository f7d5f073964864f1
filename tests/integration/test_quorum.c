/* test_quorum.c - root operations behind M of N operator signatures on three real kmsd processes: execution once, through kill -9 of the leader, and every refusal writing nothing. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/quorum.h"
#include "kms/v1/cluster.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define N 3
#define OP "/kms.v1.Operator/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define NODE_ARGS "--election-timeout 1000 --heartbeat-timeout 100"
#define SPREAD_MS 10000

enum {
	S_OK = 0,
	S_INVALID = 3,
	S_NOT_FOUND = 5,
	S_DENIED = 7,
	S_PRECOND = 9,
	S_UNIMPLEMENTED = 12,
};

static kms_test_env env;
static kms_test_node nodes[N];

#define ASSERT_STATUS KMS_TEST_ASSERT_STATUS

static void cluster_up(void)
{
	kms_test_cluster_up(&env, nodes, N, NODE_ARGS);
}

static void cluster_down(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

static int leader(void)
{
	int l = kms_test_wait_leader(nodes, N, 15000);

	ck_assert_int_ge(l, 0);
	return l;
}

static char *admins_1[] = {(char *)KMS_TEST_ADMIN};
static char *admins_2[] = {(char *)KMS_TEST_ADMIN, (char *)KMS_TEST_APP};

static void set_admins_op(Kms__V1__RootOperation *op, Kms__V1__SetAdministratorsOperation *sa,
			  char **list, size_t n)
{
	kms__v1__root_operation__init(op);
	kms__v1__set_administrators_operation__init(sa);
	sa->administrators = list;
	sa->n_administrators = n;
	op->op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
	op->set_administrators = sa;
}

static void rotate_dk_op(Kms__V1__RootOperation *op, Kms__V1__RotateDomainKeyOperation *r)
{
	kms__v1__root_operation__init(op);
	kms__v1__rotate_domain_key_operation__init(r);
	op->op_case = KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY;
	op->rotate_domain_key = r;
}

/* How many administrators node n lists (-1: the call failed). */
static int admins_on(int n)
{
	Kms__V1__ListAdministratorsRequest req = KMS__V1__LIST_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__ListAdministratorsResponse *r = NULL;
	kms_rpc_status st;
	int count;

	if (kms_test_call(&nodes[n], "admin", OP "ListAdministrators", &req.base,
			  &kms__v1__list_administrators_response__descriptor,
			  (ProtobufCMessage **)&r, &st) != 0)
		return -1;
	count = (int)r->n_administrators;
	FREE(r);
	return count;
}

/* Waits until every running node shows proposal id in state want. */
static void wait_state_everywhere(const char *id, const char *want)
{
	long until = kms_test_now_ms() + SPREAD_MS;

	for (int i = 0; i < N; i++) {
		Kms__V1__Proposal *p = NULL;
		kms_rpc_status st;

		if (nodes[i].pid <= 0)
			continue;
		for (;;) {
			p = kms_test_get_operation(&nodes[i], id, &st);
			if (p != NULL && strcmp(p->state, want) == 0)
				break;
			ck_assert_msg(kms_test_now_ms() < until, "node %d shows %s as %s, not %s",
				      i + 1, id, p != NULL ? p->state : st.details, want);
			if (p != NULL)
				FREE(p);
			kms_test_sleep_ms(100);
		}
		FREE(p);
	}
}

/* The proposal as node n shows it; fails the test if it cannot. */
static Kms__V1__Proposal *get(int n, const char *id)
{
	kms_rpc_status st;
	Kms__V1__Proposal *p = kms_test_get_operation(&nodes[n], id, &st);

	ck_assert_msg(p != NULL, "GetOperation %s on node %d: %s", id, n + 1, st.details);
	return p;
}

/* Proposed on a follower (relayed), approved on the two others: M = 2 of 3. */
START_TEST(set_administrators_needs_two_operators)
{
	int l = leader(), f = (l + 1) % N, g = (l + 2) % N;
	Kms__V1__RootOperation op;
	Kms__V1__SetAdministratorsOperation sa;
	Kms__V1__Proposal *p, *after = NULL;
	kms_rpc_status st;

	set_admins_op(&op, &sa, admins_2, 2);
	p = kms_test_propose(&nodes[f], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_str_eq(p->state, "pending");
	ck_assert_uint_eq(strlen(p->digest), 64);
	ck_assert_int_eq(p->expires_at_unix - p->created_at_unix, KMS_PROPOSAL_TTL_DEFAULT);
	ck_assert_uint_eq(p->threshold, 2);
	ck_assert_int_eq(kms_test_approve(&nodes[g], p->id, p->digest, "operator1", &after, &st),
			 S_OK);
	ck_assert_str_eq(after->state, "pending");
	FREE(after);
	/* One operator alone changed nothing. */
	ck_assert_int_eq(admins_on(l), 1);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator3", &after, &st),
			 S_OK);
	ck_assert_str_eq(after->state, "executed");
	ck_assert_str_eq(after->result, "ok");
	ck_assert_uint_eq(after->n_approvals, 2);
	FREE(after);
	wait_state_everywhere(p->id, "executed");
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(admins_on(i), 2);
	FREE(p);
	/* And back to the administrator alone, for the other tests. */
	set_admins_op(&op, &sa, admins_1, 1);
	p = kms_test_quorum_run(&nodes[g], &op, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_str_eq(p->state, "executed");
	wait_state_everywhere(p->id, "executed");
	FREE(p);
}
END_TEST

START_TEST(direct_set_administrators_names_the_quorum_command)
{
	Kms__V1__SetAdministratorsRequest req = KMS__V1__SET_ADMINISTRATORS_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;

	req.administrators = admins_2;
	req.n_administrators = 2;
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(kms_test_call(&nodes[i], "admin", OP "SetAdministrators", &req.base,
					       &kms__v1__set_administrators_response__descriptor,
					       &resp, &st),
				 S_PRECOND);
		ASSERT_STATUS(st, S_PRECOND, "kmsctl quorum propose set-administrators");
		/* A non-administrator learns nothing more than PERMISSION_DENIED. */
		ck_assert_int_eq(kms_test_call(&nodes[i], "app", OP "SetAdministrators", &req.base,
					       &kms__v1__set_administrators_response__descriptor,
					       &resp, &st),
				 S_DENIED);
		ck_assert_int_eq(admins_on(i), 1);
	}
}
END_TEST

/* Every refusal: the right code, a message naming the problem, and the
 * proposal unchanged on every node. */
START_TEST(refusals_record_nothing)
{
	int l = leader(), f = (l + 1) % N;
	Kms__V1__RootOperation op;
	Kms__V1__SetAdministratorsOperation sa;
	Kms__V1__Proposal *p, *q, *now;
	uint8_t sig[64], other[KMS_QUORUM_DIGEST_LEN], cid2[KMS_CLUSTER_ID_LEN];
	char other_hex[65];
	kms_rpc_status st;
	kms_err err = {0};

	set_admins_op(&op, &sa, admins_2, 2);
	p = kms_test_propose(&nodes[f], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	q = kms_test_propose(&nodes[f], "admin", &op, 0, &st);
	ck_assert_msg(q != NULL, "%s", st.details);
	ck_assert_str_ne(p->id, q->id);
	ck_assert_str_ne(p->digest, q->digest);
	ck_assert_int_eq(kms_test_approve(&nodes[f], p->id, p->digest, "operator1", NULL, &st),
			 S_OK);

	/* An operator the cluster does not have (signing with a real key). */
	kms_test_operator_sign(&env, "operator2", p->digest, sig);
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "admin", p->id, "mallory", sig, 64, NULL,
					      &st),
			 S_DENIED);
	ASSERT_STATUS(st, S_DENIED, "'mallory' is not one of the cluster's operators");
	/* The same operator twice. */
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator1", NULL, &st),
			 S_PRECOND);
	ASSERT_STATUS(st, S_PRECOND, "approved proposal");
	/* A signature over another proposal. */
	kms_test_operator_sign(&env, "operator2", q->digest, sig);
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "admin", p->id, "operator2", sig, 64, NULL,
					      &st),
			 S_DENIED);
	ASSERT_STATUS(st, S_DENIED, "does not verify");
	/* A signature over the same proposal in another cluster. */
	memcpy(cid2, p->cluster_id.data, sizeof(cid2));
	cid2[0] ^= 0x80;
	ck_assert_int_eq(kms_quorum_digest(cid2, sizeof(cid2), p->id, p->expires_at_unix,
					   p->operation, other, &err),
			 KMS_OK);
	for (int i = 0; i < 32; i++)
		snprintf(other_hex + 2 * i, 3, "%02x", other[i]);
	kms_test_operator_sign(&env, "operator2", other_hex, sig);
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "admin", p->id, "operator2", sig, 64, NULL,
					      &st),
			 S_DENIED);
	ASSERT_STATUS(st, S_DENIED, "another cluster");
	/* A signature of the wrong length: malformed. */
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "admin", p->id, "operator2", sig, 63, NULL,
					      &st),
			 S_INVALID);
	/* A proposal that does not exist. */
	kms_test_operator_sign(&env, "operator2", p->digest, sig);
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "admin", "0123456789abcdef0123456789abcdef",
					      "operator2", sig, 64, NULL, &st),
			 S_NOT_FOUND);
	/* A caller who is no administrator, with a valid signature. */
	ck_assert_int_eq(kms_test_approve_sig(&nodes[f], "app", p->id, "operator2", sig, 64, NULL,
					      &st),
			 S_DENIED);
	ASSERT_STATUS(st, S_DENIED, "not an administrator");
	ck_assert_ptr_null(kms_test_propose(&nodes[l], "app", &op, 0, &st));
	ck_assert_int_eq(st.code, S_DENIED);
	/* Nothing of that is in the state: one approval, pending, everywhere. */
	for (int i = 0; i < N; i++) {
		now = get(i, p->id);
		ck_assert_str_eq(now->state, "pending");
		ck_assert_uint_eq(now->n_approvals, 1);
		FREE(now);
		ck_assert_int_eq(admins_on(i), 1);
	}
	/* Cancel: the proposer may; then nothing approves it any more. */
	{
		Kms__V1__CancelOperationRequest req = KMS__V1__CANCEL_OPERATION_REQUEST__INIT;
		Kms__V1__CancelOperationResponse *r = NULL;

		req.proposal_id = q->id;
		ck_assert_int_eq(kms_test_call(&nodes[f], "app", OP "CancelOperation", &req.base,
					       &kms__v1__cancel_operation_response__descriptor,
					       (ProtobufCMessage **)&r, &st),
				 S_DENIED);
		ck_assert_int_eq(kms_test_call(&nodes[f], "admin", OP "CancelOperation", &req.base,
					       &kms__v1__cancel_operation_response__descriptor,
					       (ProtobufCMessage **)&r, &st),
				 S_OK);
		ck_assert_str_eq(r->proposal->state, "cancelled");
		FREE(r);
	}
	ck_assert_int_eq(kms_test_approve(&nodes[l], q->id, q->digest, "operator2", NULL, &st),
			 S_PRECOND);
	ASSERT_STATUS(st, S_PRECOND, "cancelled already");
	wait_state_everywhere(q->id, "cancelled");
	/* Finish p; a further approval finds it finished. */
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator2", NULL, &st),
			 S_OK);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator3", NULL, &st),
			 S_PRECOND);
	ASSERT_STATUS(st, S_PRECOND, "executed already");
	wait_state_everywhere(p->id, "executed");
	FREE(p);
	FREE(q);
	set_admins_op(&op, &sa, admins_1, 1);
	p = kms_test_quorum_run(&nodes[l], &op, &st);
	ck_assert_msg(p != NULL && strcmp(p->state, "executed") == 0, "%s", st.details);
	FREE(p);
}
END_TEST

START_TEST(expired_proposal_refuses_approvals)
{
	int l = leader();
	Kms__V1__RootOperation op;
	Kms__V1__RotateDomainKeyOperation r;
	Kms__V1__Proposal *p, *now;
	kms_rpc_status st;

	rotate_dk_op(&op, &r);
	/* ttl over the 24-hour limit: refused */
	ck_assert_ptr_null(kms_test_propose(&nodes[l], "admin", &op, 86401, &st));
	ASSERT_STATUS(st, S_INVALID, "over the limit");
	p = kms_test_propose(&nodes[l], "admin", &op, 1, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	kms_test_sleep_ms(2100);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator1", NULL, &st),
			 S_PRECOND);
	ASSERT_STATUS(st, S_PRECOND, "expired at");
	now = get(l, p->id);
	ck_assert_str_eq(now->state, "expired");
	ck_assert_uint_eq(now->n_approvals, 0);
	FREE(now);
	FREE(p);
}
END_TEST

/*
 * The M-th approval executes a state-only operation inside its own Raft
 * apply: killing the leader right after it leaves it executed once, on
 * every node, whoever leads next.
 */
START_TEST(kill_9_after_the_last_approval_state_operation)
{
	int l = leader(), f = (l + 1) % N;
	Kms__V1__RootOperation op;
	Kms__V1__SetAdministratorsOperation sa;
	Kms__V1__Proposal *p, *now;
	kms_rpc_status st;
	uint8_t sig[64];

	set_admins_op(&op, &sa, admins_2, 2);
	p = kms_test_propose(&nodes[f], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_int_eq(kms_test_approve(&nodes[f], p->id, p->digest, "operator2", NULL, &st),
			 S_OK);
	kms_test_operator_sign(&env, "operator3", p->digest, sig);
	ck_assert_int_eq(kms_test_approve_sig(&nodes[l], "admin", p->id, "operator3", sig, 64, NULL,
					      &st),
			 S_OK);
	kms_test_node_signal(&nodes[l], SIGKILL);
	l = leader();
	wait_state_everywhere(p->id, "executed");
	now = get(l, p->id);
	ck_assert_uint_eq(now->n_approvals, 2);
	ck_assert_str_eq(now->result, "ok");
	FREE(now);
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			ck_assert_int_eq(admins_on(i), 2);
	/* The killed node comes back with the same history. */
	for (int i = 0; i < N; i++)
		if (nodes[i].pid <= 0)
			kms_test_node_start(&nodes[i]);
	wait_state_everywhere(p->id, "executed");
	FREE(p);
	set_admins_op(&op, &sa, admins_1, 1);
	p = kms_test_quorum_run(&nodes[leader()], &op, &st);
	ck_assert_msg(p != NULL && strcmp(p->state, "executed") == 0, "%s", st.details);
	FREE(p);
}
END_TEST

/* The highest domain-key generation ever begun, and whether a rotation
 * runs, as node n's state says (0 when it cannot say). */
static uint32_t dk_highest(int n, int *rotating)
{
	Kms__V1__DomainKeyStatusRequest req = KMS__V1__DOMAIN_KEY_STATUS_REQUEST__INIT;
	Kms__V1__DomainKeyStatusResponse *r = NULL;
	kms_rpc_status st;
	uint32_t h;

	if (kms_test_call(&nodes[n], "admin", OP "DomainKeyStatus", &req.base,
			  &kms__v1__domain_key_status_response__descriptor,
			  (ProtobufCMessage **)&r, &st) != 0)
		return 0;
	h = r->highest_generation;
	*rotating = r->rotating;
	FREE(r);
	return h;
}

/*
 * An operation the leader runs outside the state (the domain-key rotation):
 * approved, then the leader is killed before or while it runs it; the new
 * leader runs it or finds it begun, and the rotation happens exactly once.
 */
START_TEST(kill_9_after_the_last_approval_leader_operation)
{
	int l = leader(), f = (l + 1) % N, rotating = 0;
	Kms__V1__RootOperation op;
	Kms__V1__RotateDomainKeyOperation r;
	Kms__V1__Proposal *p, *now;
	kms_rpc_status st;
	uint32_t before = dk_highest(f, &rotating), after = 0;

	ck_assert_uint_ge(before, 1);
	rotate_dk_op(&op, &r);
	p = kms_test_propose(&nodes[f], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_int_eq(kms_test_approve(&nodes[f], p->id, p->digest, "operator1", NULL, &st),
			 S_OK);
	ck_assert_int_eq(kms_test_approve(&nodes[f], p->id, p->digest, "operator2", &now, &st),
			 S_OK);
	ck_assert_msg(strcmp(now->state, "approved") == 0 || strcmp(now->state, "executed") == 0,
		      "%s", now->state);
	FREE(now);
	kms_test_node_signal(&nodes[l], SIGKILL);
	l = leader();
	wait_state_everywhere(p->id, "executed");
	now = get(l, p->id);
	ck_assert_uint_eq(now->n_approvals, 2);
	FREE(now);
	for (int i = 0; i < N; i++)
		if (nodes[i].pid <= 0)
			kms_test_node_start(&nodes[i]);
	wait_state_everywhere(p->id, "executed");
	/* Exactly one rotation began, and it runs to its end. */
	for (long until = kms_test_now_ms() + 90000; kms_test_now_ms() < until;
	     kms_test_sleep_ms(500)) {
		after = dk_highest(leader(), &rotating);
		if (after != 0 && !rotating)
			break;
	}
	ck_assert_uint_eq(after, before + 1);
	ck_assert_msg(!rotating, "the rotation to generation %u never ended", after);
	FREE(p);
}
END_TEST

START_TEST(list_shows_every_proposal)
{
	Kms__V1__ListOperationsRequest req = KMS__V1__LIST_OPERATIONS_REQUEST__INIT;
	Kms__V1__ListOperationsResponse *r = NULL;
	Kms__V1__GetQuorumRequest qreq = KMS__V1__GET_QUORUM_REQUEST__INIT;
	Kms__V1__GetQuorumResponse *q = NULL;
	kms_rpc_status st;
	int seen_states = 0;

	ck_assert_int_eq(kms_test_call(&nodes[leader()], "admin", OP "ListOperations", &req.base,
				       &kms__v1__list_operations_response__descriptor,
				       (ProtobufCMessage **)&r, &st),
			 S_OK);
	ck_assert_uint_ge(r->n_proposals, 1);
	for (size_t i = 0; i < r->n_proposals; i++)
		seen_states |= strcmp(r->proposals[i]->state, "executed") == 0;
	ck_assert(seen_states);
	FREE(r);
	ck_assert_int_eq(kms_test_call(&nodes[0], "admin", OP "GetQuorum", &qreq.base,
				       &kms__v1__get_quorum_response__descriptor,
				       (ProtobufCMessage **)&q, &st),
			 S_OK);
	ck_assert_uint_eq(q->n_operators, 3);
	ck_assert_uint_eq(q->threshold, 2);
	ck_assert_uint_eq(q->cluster_id.len, KMS_CLUSTER_ID_LEN);
	FREE(q);
	ck_assert_int_eq(kms_test_call(&nodes[0], "app", OP "ListOperations", &req.base,
				       &kms__v1__list_operations_response__descriptor,
				       (ProtobufCMessage **)&r, &st),
			 S_DENIED);
}
END_TEST

/* The leader as the nodes other than skip see it (-1: none agreed yet). */
static int leader_without(int skip)
{
	for (int i = 0; i < N; i++) {
		Kms__V1__ClusterStatusResponse *s;
		kms_rpc_status st;
		int found = -1;

		if (i == skip || nodes[i].pid <= 0)
			continue;
		s = kms_test_cluster_status(&nodes[i], "admin", &st);
		if (s == NULL)
			continue;
		for (int j = 0; j < N; j++)
			if (s->leader_id == nodes[j].id && j != skip)
				found = j;
		FREE(s);
		if (found >= 0)
			return found;
	}
	return -1;
}

/* What each node other than skip says of the leader, for a failure message. */
static void leaders_seen(int skip, char *out, size_t cap)
{
	size_t used = 0;

	out[0] = '\0';
	for (int i = 0; i < N && used < cap; i++) {
		Kms__V1__ClusterStatusResponse *s;
		kms_rpc_status st;
		int n;

		if (i == skip)
			continue;
		s = nodes[i].pid > 0 ? kms_test_cluster_status(&nodes[i], "admin", &st) : NULL;
		if (s != NULL)
			n = snprintf(out + used, cap - used, "; node %d sees leader %llu (%s)", i + 1,
				     (unsigned long long)s->leader_id, nodes[i].log);
		else
			n = snprintf(out + used, cap - used, "; node %d: %s (%s)", i + 1,
				     nodes[i].pid > 0 ? st.details : "not running", nodes[i].log);
		if (s != NULL)
			FREE(s);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

/*
 * A removal approved while its node leads (it was a follower when it was
 * proposed): the removed leader hands leadership over, and the next leader
 * takes it out of the Raft configuration; the cluster goes on serving.
 */
START_TEST(removal_approved_while_the_node_leads)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__RemoveMemberOperation rm = KMS__V1__REMOVE_MEMBER_OPERATION__INIT;
	Kms__V1__ClusterStatusResponse *s;
	Kms__V1__Proposal *p, *now = NULL;
	int l = leader(), x = (l + 1) % N, tries = 0;
	char line[128], seen[1024] = "";
	kms_client *c;
	kms_rpc_status st;

	rm.id = nodes[x].id;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER;
	op.remove_member = &rm;
	p = kms_test_propose(&nodes[l], "admin", &op, 0, &st);
	ck_assert_msg(p != NULL, "%s", st.details);
	ck_assert_int_eq(kms_test_approve(&nodes[l], p->id, p->digest, "operator1", NULL, &st),
			 S_OK);
	/* Kill -9 whoever else leads, and start it again, until x leads (each
	 * election is a coin toss between the two others). Not SIGSTOP: with
	 * the leader paused, the two others sometimes elected nobody for 15 s
	 * (both still named the paused node), an open question noted on
	 * issue #6; elections after a kill -9 are what the tests above use. */
	while ((l = leader()) != x) {
		long until = kms_test_now_ms() + 15000;

		ck_assert_int_lt(tries++, 12);
		kms_test_node_signal(&nodes[l], SIGKILL);
		while (leader_without(l) < 0 && kms_test_now_ms() < until)
			kms_test_sleep_ms(100);
		if (leader_without(l) < 0)
			leaders_seen(l, seen, sizeof(seen));
		ck_assert_msg(leader_without(l) >= 0, "no new leader after node %d was killed%s",
			      l + 1, seen);
		kms_test_node_start(&nodes[l]);
	}
	ck_assert_int_eq(kms_test_approve(&nodes[x], p->id, p->digest, "operator2", &now, &st),
			 S_OK);
	ck_assert_str_eq(now->state, "executed");
	FREE(now);
	FREE(p);
	/* Another node leads, and it takes x out of the configuration. */
	for (long until = kms_test_now_ms() + 20000; (l = leader_without(x)) < 0;
	     kms_test_sleep_ms(200)) {
		if (kms_test_now_ms() >= until)
			leaders_seen(x, seen, sizeof(seen));
		ck_assert_msg(kms_test_now_ms() < until, "the removed node still leads; see %s%s",
			      nodes[x].log, seen);
	}
	/* (x hands over when it still leads as it applies its removal; a
	 * node killed and started again above may also have unseated it first.) */
	snprintf(line, sizeof(line), "raft: configuration change: remove node %llu",
		 (unsigned long long)nodes[x].id);
	ck_assert_msg(kms_test_wait_log(&nodes[l], line, 20), "see %s", nodes[l].log);
	s = kms_test_cluster_status(&nodes[l], "admin", &st);
	ck_assert_msg(s != NULL, "%s", st.details);
	ck_assert_uint_eq(s->n_members, N - 1);
	FREE(s);
	kms_test_node_signal(&nodes[x], SIGTERM);
	c = kms_test_client_with(&nodes[l], "admin", NULL, 20000);
	ck_assert_msg(kms_test_create_key(c, "after-leader-removal", NULL, &st) == 0, "%s",
		      st.details);
	kms_client_close(c);
}
END_TEST

static Suite *quorum_suite(void)
{
	Suite *s = suite_create("quorum");
	TCase *tc = tcase_create("three nodes");

	tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, set_administrators_needs_two_operators);
	tcase_add_test(tc, direct_set_administrators_names_the_quorum_command);
	tcase_add_test(tc, refusals_record_nothing);
	tcase_add_test(tc, expired_proposal_refuses_approvals);
	tcase_add_test(tc, kill_9_after_the_last_approval_state_operation);
	tcase_add_test(tc, kill_9_after_the_last_approval_leader_operation);
	tcase_add_test(tc, list_shows_every_proposal);
	/* Last: it leaves two members. */
	tcase_add_test(tc, removal_approved_while_the_node_leads);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(quorum_suite());

	/* The nodes serve the whole test case: tests kill and start them, and
	 * gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
