/* test_security.c - a real kmsd node attacked with certificates from the deployment's own CA: each attack that once worked is a regression test that must be refused with no state change. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "kms/fingerprint.h"
#include "kms/keyring.h"
#include "kms/keyring_dk.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "test_pki.h"
#include "check_run.h"

#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define ASSERT_STATUS(st, want, text)                                                             \
	do {                                                                                      \
		ck_assert_msg((st).code == (want), "want status %d, got %d: %s", (want),          \
			      (st).code, (st).details);                                           \
		ck_assert_msg(strstr((st).details, (text)) != NULL,                               \
			      "message \"%s\" does not say \"%s\"", (st).details, (text));       \
	} while (0)

static kms_test_env env;
static kms_test_node node;

static void node_up(void)
{
	kms_test_env_init(&env);
	kms_test_node_init(&env, &node, 1);
	kms_test_node_start(&node);
}

static void node_down(void)
{
	kms_test_node_signal(&node, SIGTERM);
	kms_test_env_destroy(&env);
}

/* A client certificate named who, issued by the client CA with the SANs given. */
static void issue(const char *who, const kms_test_san *sans, size_t n)
{
	char ca[PATH_MAX], ca_key[PATH_MAX], pem[PATH_MAX], key[PATH_MAX];

	KMS_TEST_PATH(ca, "%s/ca.pem", env.pki);
	KMS_TEST_PATH(ca_key, "%s/ca.key", env.pki);
	KMS_TEST_PATH(pem, "%s/%s.pem", env.pki, who);
	KMS_TEST_PATH(key, "%s/%s.key", env.pki, who);
	kms_test_issue_cert(ca, ca_key, pem, key, sans, n, 1);
}

static int key_exists(const char *id)
{
	kms_client *c = kms_test_client(&node, "admin");
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;

	req.key_id = (char *)id;
	kms_client_call(c, KM "DescribeKey", &req.base, &kms__v1__describe_key_response__descriptor,
			&resp, &st);
	kms_client_close(c);
	if (resp != NULL)
		FREE(resp);
	return st.code == 0;
}

/* --- attack 1: a DNS or e-mail SAN spelling an administrator's SPIFFE ID --- */

START_TEST(dns_and_email_sans_name_nobody)
{
	static const kms_test_san dns[] = {{KMS_TEST_SAN_DNS, KMS_TEST_ADMIN, 0}};
	static const kms_test_san email[] = {{KMS_TEST_SAN_EMAIL, KMS_TEST_ADMIN, 0}};
	static const kms_test_san both[] = {{KMS_TEST_SAN_URI, KMS_TEST_APP, 0},
					    {KMS_TEST_SAN_DNS, KMS_TEST_ADMIN, 0}};
	kms_rpc_status st;
	kms_client *c;

	issue("dns-admin", dns, 1);
	issue("email-admin", email, 1);
	issue("app-and-dns-admin", both, 2);

	c = kms_test_client(&node, "dns-admin");
	kms_test_create_key(c, "attack-dns", NULL, &st);
	kms_client_close(c);
	ASSERT_STATUS(st, 16 /* UNAUTHENTICATED */, "no URI SAN");
	ck_assert_msg(!key_exists("attack-dns"), "a DNS SAN created a key as an administrator");

	c = kms_test_client(&node, "email-admin");
	kms_test_create_key(c, "attack-email", NULL, &st);
	kms_client_close(c);
	ASSERT_STATUS(st, 16, "no URI SAN");
	ck_assert_msg(!key_exists("attack-email"), "an e-mail SAN created a key as an administrator");

	/* Beside a real URI SAN, the DNS name is ignored: the caller is the app. */
	c = kms_test_client(&node, "app-and-dns-admin");
	kms_test_create_key(c, "attack-both", NULL, &st);
	kms_client_close(c);
	ASSERT_STATUS(st, 7 /* PERMISSION_DENIED */, KMS_TEST_APP);
	ck_assert(!key_exists("attack-both"));
}
END_TEST

/* --- attack 2: a client-CA certificate naming a node fetches the domain key --- */

/* A software RSA-3072 key, as an attacker would make it. */
static EVP_PKEY *software_rsa(BIGNUM **n, BIGNUM **e)
{
	EVP_PKEY *k = EVP_RSA_gen(3072);

	ck_assert_ptr_nonnull(k);
	*n = *e = NULL;
	ck_assert_int_eq(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, n), 1);
	ck_assert_int_eq(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, e), 1);
	return k;
}

/* What the attacker learns from a wrapped domain key: RSA-OAEP (SHA-1) undone. */
static size_t oaep_open(EVP_PKEY *k, const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
	size_t n = cap;

	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(EVP_PKEY_decrypt_init(ctx), 1);
	ck_assert_int_gt(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING), 0);
	if (EVP_PKEY_decrypt(ctx, out, &n, in, len) != 1)
		n = 0;
	EVP_PKEY_CTX_free(ctx);
	return n;
}

static int admit(uint64_t id, const char *fp, uint32_t ttl, kms_rpc_status *st);

START_TEST(client_ca_certificate_of_a_node_gets_no_domain_key)
{
	static const kms_test_san node2[] = {{KMS_TEST_SAN_URI, KMS_TEST_TD "/kmsd/node/2", 0}};
	Kms__V1__FetchDomainKeyRequest req = KMS__V1__FETCH_DOMAIN_KEY_REQUEST__INIT;
	Kms__V1__FetchDomainKeyResponse *resp = NULL;
	uint8_t nbuf[512], ebuf[8], dk[512];
	kms_rpc_status st;
	BIGNUM *n, *e;
	EVP_PKEY *k = software_rsa(&n, &e);
	kms_client *c;

	/* Node 2 is an admitted member, as in a live cluster, for the
	 * fingerprint of the real node 2's transport key, not the attacker's. */
	ck_assert_msg(admit(2, "5f3c1a0e9b8d7c6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7",
			    600, &st) == 0,
		      "add-member node 2: %s", st.details);

	/* The attacker's certificate comes from the deployment's client CA; the
	 * node's real key stays in its HSM. */
	issue("fake-node2", node2, 1);
	req.node_id = 2;
	req.rsa_modulus.len = (size_t)BN_bn2bin(n, nbuf);
	req.rsa_modulus.data = nbuf;
	req.rsa_public_exponent.len = (size_t)BN_bn2bin(e, ebuf);
	req.rsa_public_exponent.data = ebuf;
	c = kms_test_client(&node, "fake-node2");
	for (int attempt = 0; attempt < 2; attempt++) {
		kms_client_call(c, "/kms.v1.Internal/FetchDomainKey", &req.base,
				&kms__v1__fetch_domain_key_response__descriptor,
				(ProtobufCMessage **)&resp, &st);
		if (resp != NULL) {
			size_t got = oaep_open(k, resp->wrapped_domain_key.data,
					       resp->wrapped_domain_key.len, dk, sizeof(dk));

			OPENSSL_cleanse(dk, sizeof(dk));
			ck_abort_msg("a client-CA certificate for node 2 received the domain key "
				     "(%zu bytes once its software RSA key undid the OAEP wrap)",
				     got);
		}
		ASSERT_STATUS(st, 7 /* PERMISSION_DENIED */, "node CA");
	}
	kms_client_close(c);
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(k);
}
END_TEST

/* --- the domain key goes only to the key a join grant names --- */

/* A node-CA certificate for node id with a software key: the test plays a
 * joining node (the real one would keep its key in its HSM). */
static void issue_node_cert(uint64_t id, const char *who)
{
	kms_test_issue_node_cert(env.pki, KMS_TEST_TD, id, who);
}

struct transport {
	EVP_PKEY *k;
	uint8_t n[512], e[8];
	size_t n_len, e_len;
	char fp[KMS_SHA256_HEX_LEN + 1];
};

static void transport_new(struct transport *t)
{
	BIGNUM *n, *e;
	uint8_t fp[KMS_SHA256_LEN];
	kms_err err = {0};

	t->k = software_rsa(&n, &e);
	t->n_len = (size_t)BN_bn2bin(n, t->n);
	t->e_len = (size_t)BN_bn2bin(e, t->e);
	ck_assert_int_eq(kms_rsa_public_sha256(t->n, t->n_len, t->e, t->e_len, fp, &err), KMS_OK);
	kms_hex_encode(fp, sizeof(fp), t->fp);
	BN_free(n);
	BN_free(e);
}

/*
 * An add-member proposal, approved by the quorum, of a node that never
 * runs: 0 once executed. fp is hex; one that is not 64 hex digits goes as
 * its own bytes, for the server to refuse.
 */
static int admit(uint64_t id, const char *fp, uint32_t ttl, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__AddMemberOperation am = KMS__V1__ADD_MEMBER_OPERATION__INIT;
	Kms__V1__Proposal *p;
	uint8_t b[32];
	int code;

	am.id = id;
	am.raft_address = (char *)"127.0.0.1:9";
	am.grpc_address = (char *)"127.0.0.1:9";
	if (kms_hex_decode(fp, b, sizeof(b), "fp", NULL) == KMS_OK) {
		am.transport_key_sha256.data = b;
		am.transport_key_sha256.len = sizeof(b);
	} else {
		am.transport_key_sha256.data = (uint8_t *)fp;
		am.transport_key_sha256.len = strlen(fp);
	}
	am.grant_ttl_seconds = ttl;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER;
	op.add_member = &am;
	p = kms_test_quorum_run(&node, &op, st);
	if (p == NULL)
		return st->code;
	code = strcmp(p->state, "executed") == 0 ? 0 : 9;
	if (code != 0) {
		st->code = code;
		snprintf(st->details, sizeof(st->details), "%s: %s", p->state, p->result);
	}
	FREE(p);
	return code;
}

static int remove_member(uint64_t id, kms_rpc_status *st)
{
	return kms_test_remove_member(&node, id, st);
}

/* FetchDomainKey as who for node id with transport key t: the status. */
static int fetch(const char *who, uint64_t id, const struct transport *t, kms_rpc_status *st)
{
	Kms__V1__FetchDomainKeyRequest req = KMS__V1__FETCH_DOMAIN_KEY_REQUEST__INIT;
	Kms__V1__FetchDomainKeyResponse *resp = NULL;
	kms_client *c = kms_test_client(&node, who);
	uint8_t dk[512];

	req.node_id = id;
	req.rsa_modulus.data = (uint8_t *)t->n;
	req.rsa_modulus.len = t->n_len;
	req.rsa_public_exponent.data = (uint8_t *)t->e;
	req.rsa_public_exponent.len = t->e_len;
	kms_client_call(c, "/kms.v1.Internal/FetchDomainKey", &req.base,
			&kms__v1__fetch_domain_key_response__descriptor, (ProtobufCMessage **)&resp,
			st);
	kms_client_close(c);
	if (resp != NULL) {
		/* The answer is the domain key for t's private key only. */
		ck_assert_uint_eq(oaep_open(t->k, resp->wrapped_domain_key.data,
					    resp->wrapped_domain_key.len, dk, sizeof(dk)),
				  32);
		OPENSSL_cleanse(dk, sizeof(dk));
		ck_assert_uint_ge(resp->n_members, 1);
		FREE(resp);
	}
	return st->code;
}

START_TEST(domain_key_only_to_an_unexpired_unused_grant)
{
	struct transport k1, k2;
	kms_rpc_status st;

	transport_new(&k1);
	transport_new(&k2);
	issue_node_cert(5, "node5");
	issue_node_cert(6, "node6");
	issue_node_cert(1, "node1-copy");

	/* Not admitted yet: no grant. */
	ck_assert_int_eq(fetch("node5", 5, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* Admitted for k1: another key gets nothing, k1 gets it once. */
	ck_assert_msg(admit(5, k1.fp, 600, &st) == 0, "%s", st.details);
	ck_assert_int_eq(fetch("node5", 5, &k2, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* The certificate must name the node it asks for. */
	ck_assert_int_eq(fetch("node6", 5, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "may not fetch the domain key for node 5");
	ck_assert_msg(fetch("node5", 5, &k1, &st) == 0, "%s", st.details);
	ck_assert_int_eq(fetch("node5", 5, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* A member is admitted for good: no second grant while it is one. */
	ck_assert_int_eq(admit(5, k2.fp, 600, &st), 9 /* FAILED_PRECONDITION */);
	ASSERT_STATUS(st, 9, "already a member");
	ck_assert_int_eq(fetch("node5", 5, &k2, &st), 7);
	/* The node that created the cluster holds no grant. */
	ck_assert_int_eq(fetch("node1-copy", 1, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* An expired grant. */
	ck_assert_msg(admit(6, k1.fp, 1, &st) == 0, "%s", st.details);
	sleep(2);
	ck_assert_int_eq(fetch("node6", 6, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* A removed node's grant goes with it. */
	ck_assert_msg(admit(6, k1.fp, 600, &st) == 0, "%s", st.details);
	ck_assert_msg(remove_member(6, &st) == 0, "%s", st.details);
	ck_assert_int_eq(fetch("node6", 6, &k1, &st), 7);
	ASSERT_STATUS(st, 7, "no unexpired, unused join grant");
	/* Malformed grants are refused at the proposal, with nothing recorded. */
	ck_assert_int_eq(admit(6, "", 600, &st), 3);
	ASSERT_STATUS(st, 3, "transport key SHA-256");
	ck_assert_int_eq(admit(6, "abc", 600, &st), 3);
	ASSERT_STATUS(st, 3, "transport key SHA-256");
	ck_assert_int_eq(admit(6, k1.fp, 86401, &st), 3);
	ASSERT_STATUS(st, 3, "grant_ttl_seconds");
	ck_assert_int_eq(fetch("node6", 6, &k1, &st), 7);
	ck_assert_msg(remove_member(5, &st) == 0, "%s", st.details);
	EVP_PKEY_free(k1.k);
	EVP_PKEY_free(k2.k);
}
END_TEST

/* --- Forward: the leader authorizes the original caller --- */

/* Internal/Forward of cmd as member node "node7" for principal: the
 * ForwardResponse status (a kmsd status). */
static int forward_as(const char *principal, const kms_buf *cmd, char *msg, size_t cap)
{
	Kms__V1__ForwardRequest req = KMS__V1__FORWARD_REQUEST__INIT;
	Kms__V1__ForwardResponse *resp = NULL;
	kms_client *c = kms_test_client(&node, "node7");
	kms_rpc_status st;
	int status;

	req.command.data = cmd->data;
	req.command.len = cmd->len;
	req.principal = (char *)principal;
	kms_client_call(c, "/kms.v1.Internal/Forward", &req.base,
			&kms__v1__forward_response__descriptor, (ProtobufCMessage **)&resp, &st);
	kms_client_close(c);
	ck_assert_msg(resp != NULL, "Forward: %s", st.details);
	status = (int)resp->status;
	snprintf(msg, cap, "%s", resp->message);
	FREE(resp);
	return status;
}

START_TEST(forwarded_writes_are_authorized_for_the_original_caller)
{
	static const uint8_t wrapped[40] = {1};
	struct transport k;
	kms_buf cmd = {0};
	kms_rpc_status st;
	kms_err err = {0};
	char msg[512];
	char *admins[] = {(char *)KMS_TEST_APP};

	/* Node 7 is a member (its certificate from the node CA). */
	transport_new(&k);
	issue_node_cert(7, "node7");
	ck_assert_msg(admit(7, k.fp, 600, &st) == 0, "%s", st.details);

	/* A service that is not an administrator, however a member reports it. */
	ck_assert_int_eq(kms_keyring_cmd_create_key("fwd-app", "", NULL, KMS_TEST_APP, 1, wrapped,
						    sizeof(wrapped), &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(forward_as(KMS_TEST_APP, &cmd, msg, sizeof(msg)), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(msg, "is not an administrator") != NULL, "%s", msg);
	/* A command made for someone else than the principal named. */
	ck_assert_int_eq(forward_as(KMS_TEST_ADMIN, &cmd, msg, sizeof(msg)), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(msg, "was not made for") != NULL, "%s", msg);
	ck_assert(!key_exists("fwd-app"));
	kms_buf_free(&cmd);
	/* The administrator's own write passes. */
	ck_assert_int_eq(kms_keyring_cmd_create_key("fwd-admin", "", NULL, KMS_TEST_ADMIN, 1,
						    wrapped, sizeof(wrapped), &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(forward_as(KMS_TEST_ADMIN, &cmd, msg, sizeof(msg)), KMS_OK);
	ck_assert(key_exists("fwd-admin"));
	kms_buf_free(&cmd);
	/* Membership and the administrators never travel through Forward. */
	ck_assert_int_eq(kms_keyring_cmd_remove_member(1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(forward_as(KMS_TEST_ADMIN, &cmd, msg, sizeof(msg)), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(msg, "not accepted through Forward") != NULL, "%s", msg);
	kms_buf_free(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(admins, 1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(forward_as(KMS_TEST_ADMIN, &cmd, msg, sizeof(msg)), KMS_ERR_PERMISSION);
	kms_buf_free(&cmd);
	/* Nor another node's join grant. */
	{
		uint8_t fp[KMS_SHA256_LEN] = {0};

		ck_assert_int_eq(kms_keyring_cmd_consume_join_grant(7, fp, 1, &cmd, &err), KMS_OK);
		ck_assert_int_eq(forward_as(KMS_TEST_ADMIN, &cmd, msg, sizeof(msg)),
				 KMS_ERR_PERMISSION);
		kms_buf_free(&cmd);
	}
	/*
	 * Nor reserve encryptions in another node's name, even naming that
	 * node as the principal: the forwarding member is the one that reserves.
	 */
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("fwd-admin", 1, 64, 1, 1, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(forward_as(KMS_TEST_TD "/kmsd/node/1", &cmd, msg, sizeof(msg)),
			 KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(msg, "may not reserve encryptions for node 1") != NULL, "%s", msg);
	kms_buf_free(&cmd);
	/* Nor ask for, or confirm, node 1's share of a domain-key rotation. */
	{
		static const uint8_t fp[KMS_FINGERPRINT_LEN] = {1};

		ck_assert_int_eq(kms_keyring_cmd_dk_grant(1, 2, fp, &cmd, &err), KMS_OK);
		ck_assert_int_eq(forward_as(KMS_TEST_TD "/kmsd/node/1", &cmd, msg, sizeof(msg)),
				 KMS_ERR_PERMISSION);
		ck_assert_msg(strstr(msg, "may not take node 1's domain-key rotation steps") !=
				  NULL,
			      "%s", msg);
		kms_buf_free(&cmd);
		ck_assert_int_eq(kms_keyring_cmd_dk_confirm(1, 2, KMS_DK_INSTALLED, &cmd, &err),
				 KMS_OK);
		ck_assert_int_eq(forward_as(KMS_TEST_TD "/kmsd/node/1", &cmd, msg, sizeof(msg)),
				 KMS_ERR_PERMISSION);
		kms_buf_free(&cmd);
	}
	ck_assert_msg(remove_member(7, &st) == 0, "%s", st.details);
	/* No longer a member: refused before any gate. */
	ck_assert_int_eq(kms_keyring_cmd_create_key("fwd-gone", "", NULL, KMS_TEST_ADMIN, 1,
						    wrapped, sizeof(wrapped), &cmd, &err),
			 KMS_OK);
	{
		Kms__V1__ForwardRequest req = KMS__V1__FORWARD_REQUEST__INIT;
		kms_client *c = kms_test_client(&node, "node7");
		ProtobufCMessage *resp = NULL;

		req.command.data = cmd.data;
		req.command.len = cmd.len;
		req.principal = (char *)KMS_TEST_ADMIN;
		kms_client_call(c, "/kms.v1.Internal/Forward", &req.base,
				&kms__v1__forward_response__descriptor, &resp, &st);
		kms_client_close(c);
		ck_assert_ptr_null(resp);
		ASSERT_STATUS(st, 7, "node 7 is not a member");
	}
	kms_buf_free(&cmd);
	ck_assert(!key_exists("fwd-gone"));
	EVP_PKEY_free(k.k);
}
END_TEST

/* --- the administrators list lives in the replicated state --- */

/* A set-administrators proposal by who, approved by operator1 and operator2:
 * 0 once executed, else the refusing call's gRPC code. */
static int set_admins(const char *who, char **list, size_t n, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__SetAdministratorsOperation sa = KMS__V1__SET_ADMINISTRATORS_OPERATION__INIT;
	Kms__V1__Proposal *p, *done = NULL;
	int code = 0;

	sa.administrators = list;
	sa.n_administrators = n;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
	op.set_administrators = &sa;
	p = kms_test_propose(&node, who, &op, 0, st);
	if (p == NULL)
		return st->code;
	if (kms_test_approve(&node, p->id, p->digest, "operator1", NULL, st) != 0 ||
	    kms_test_approve(&node, p->id, p->digest, "operator2", &done, st) != 0)
		code = st->code;
	else if (strcmp(done->state, "executed") != 0)
		code = 9;
	if (done != NULL)
		FREE(done);
	FREE(p);
	return code;
}

static size_t count_admins(const char *who, kms_rpc_status *st)
{
	Kms__V1__ListAdministratorsRequest req = KMS__V1__LIST_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__ListAdministratorsResponse *resp = NULL;
	kms_client *c = kms_test_client(&node, who);
	size_t n = 0;

	kms_client_call(c, "/kms.v1.Operator/ListAdministrators", &req.base,
			&kms__v1__list_administrators_response__descriptor,
			(ProtobufCMessage **)&resp, st);
	if (resp != NULL) {
		n = resp->n_administrators;
		FREE(resp);
	}
	kms_client_close(c);
	return n;
}

START_TEST(administrators_change_through_the_operator_api)
{
	char *both[] = {(char *)KMS_TEST_ADMIN, (char *)KMS_TEST_APP};
	char *admin_only[] = {(char *)KMS_TEST_ADMIN};
	char *node_path[] = {(char *)KMS_TEST_TD "/kmsd/node/1"};
	char *other_td[] = {(char *)"spiffe://evil.dev/ns/ops/sa/admin"};
	char *twice[] = {(char *)KMS_TEST_ADMIN, (char *)KMS_TEST_ADMIN};
	kms_rpc_status st;
	kms_client *app;

	/* The configuration's administrators were recorded at bootstrap. */
	ck_assert_uint_eq(count_admins("admin", &st), 1);
	count_admins("app", &st);
	ASSERT_STATUS(st, 7, "is not an administrator");
	/* Called directly, the root operation names the quorum command. */
	{
		Kms__V1__SetAdministratorsRequest req = KMS__V1__SET_ADMINISTRATORS_REQUEST__INIT;
		ProtobufCMessage *resp = NULL;

		req.administrators = both;
		req.n_administrators = 2;
		kms_test_call(&node, "admin", "/kms.v1.Operator/SetAdministrators", &req.base,
			      &kms__v1__set_administrators_response__descriptor, &resp, &st);
		ASSERT_STATUS(st, 9, "kmsctl quorum propose set-administrators");
	}
	/* Only an administrator proposes a change, and only to a valid list. */
	ck_assert_int_eq(set_admins("app", both, 2, &st), 7);
	ck_assert_int_eq(set_admins("admin", both, 0, &st), 3);
	ASSERT_STATUS(st, 3, "may not be empty");
	ck_assert_int_eq(set_admins("admin", node_path, 1, &st), 3);
	ASSERT_STATUS(st, 3, "node identity");
	ck_assert_int_eq(set_admins("admin", other_td, 1, &st), 3);
	ASSERT_STATUS(st, 3, "not in this cluster's trust domain");
	ck_assert_int_eq(set_admins("admin", twice, 2, &st), 3);
	ASSERT_STATUS(st, 3, "listed twice");
	ck_assert_uint_eq(count_admins("admin", &st), 1);
	/* Granted, the app creates keys; taken away, it no longer does. */
	ck_assert_msg(set_admins("admin", both, 2, &st) == 0, "%s", st.details);
	ck_assert_uint_eq(count_admins("app", &st), 2);
	app = kms_test_client(&node, "app");
	ck_assert_msg(kms_test_create_key(app, "made-by-app", NULL, &st) == 0, "%s", st.details);
	ck_assert_msg(set_admins("app", admin_only, 1, &st) == 0, "%s", st.details);
	kms_test_create_key(app, "made-by-app-2", NULL, &st);
	ASSERT_STATUS(st, 7, "not an administrator");
	ck_assert(!key_exists("made-by-app-2"));
	kms_client_close(app);
}
END_TEST

/* --- attack 3: an encryption context cut short at an embedded NUL --- */

/* Appends a length-delimited protobuf field (len < 128). */
static size_t put_field(uint8_t *p, unsigned field, const void *data, size_t len)
{
	ck_assert_uint_lt(len, 128);
	p[0] = (uint8_t)(field << 3 | 2);
	p[1] = (uint8_t)len;
	memcpy(p + 2, data, len);
	return len + 2;
}

/* key_id (field 1) and one encryption_context entry (field ctx_field). */
static size_t request_with_context(uint8_t *out, unsigned id_field, const char *key_id,
				   unsigned ctx_field, const char *k, const char *v, size_t vlen)
{
	uint8_t entry[64];
	size_t n = 0, e = 0;

	if (key_id != NULL)
		n += put_field(out + n, id_field, key_id, strlen(key_id));
	e += put_field(entry + e, 1, k, strlen(k));
	e += put_field(entry + e, 2, v, vlen);
	n += put_field(out + n, ctx_field, entry, e);
	return n;
}

START_TEST(nul_in_encryption_context_is_refused)
{
	static const char evil[] = "acme\0evil";
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	uint8_t req[256];
	kms_buf out = {0};
	kms_rpc_status st;
	size_t n;

	ck_assert_int_eq(kms_test_create_key(admin, "nul-context", KMS_TEST_APP, &st), 0);
	/* GenerateDataKeyRequest: key_id = 1, encryption_context = 3. */
	n = request_with_context(req, 1, "nul-context", 3, "tenant", evil, sizeof(evil) - 1);
	kms_client_call_raw(app, KM "GenerateDataKey", req, n, &out, &st);
	if (st.code == 0) {
		Kms__V1__GenerateDataKeyResponse *g =
			kms__v1__generate_data_key_response__unpack(NULL, out.len, out.data);
		Kms__V1__DecryptRequest d = KMS__V1__DECRYPT_REQUEST__INIT;
		Kms__V1__DecryptRequest__EncryptionContextEntry ent =
			KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
		Kms__V1__DecryptRequest__EncryptionContextEntry *ents[] = {&ent};
		ProtobufCMessage *dr = NULL;

		ck_assert_ptr_nonnull(g);
		ent.key = (char *)"tenant";
		ent.value = (char *)"acme";
		d.ciphertext_blob = g->ciphertext_blob;
		d.encryption_context = ents;
		d.n_encryption_context = 1;
		kms_client_call(app, KM "Decrypt", &d.base, &kms__v1__decrypt_response__descriptor,
				&dr, &st);
		ck_abort_msg("GenerateDataKey accepted a context value with a NUL; Decrypt with "
			     "{tenant: acme} then answered %d",
			     st.code);
	}
	ASSERT_STATUS(st, 3 /* INVALID_ARGUMENT */, "NUL");
	ck_assert_msg(strstr(st.details, "encryption_context") != NULL, "%s", st.details);
	kms_buf_free(&out);

	/* The same for Encrypt (encryption_context = 3) and Decrypt (= 2), in a key too. */
	n = request_with_context(req, 1, "nul-context", 3, "tenant", evil, sizeof(evil) - 1);
	kms_client_call_raw(app, KM "Encrypt", req, n, &out, &st);
	ASSERT_STATUS(st, 3, "NUL");
	n = request_with_context(req, 0, NULL, 2, "tenant", evil, sizeof(evil) - 1);
	kms_client_call_raw(app, KM "Decrypt", req, n, &out, &st);
	ASSERT_STATUS(st, 3, "NUL");
	/* A key_id with a NUL is refused the same way, not read as its prefix. */
	n = put_field(req, 1, "nul-context\0x", 13);
	kms_client_call_raw(app, KM "GenerateDataKey", req, n, &out, &st);
	ASSERT_STATUS(st, 3, "NUL");
	kms_client_close(app);
	kms_client_close(admin);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kmsd security");
	TCase *tc = tcase_create("attacks");
	SRunner *sr;

	tcase_add_unchecked_fixture(tc, node_up, node_down);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, dns_and_email_sans_name_nobody);
	tcase_add_test(tc, client_ca_certificate_of_a_node_gets_no_domain_key);
	tcase_add_test(tc, nul_in_encryption_context_is_refused);
	tcase_add_test(tc, domain_key_only_to_an_unexpired_unused_grant);
	tcase_add_test(tc, forwarded_writes_are_authorized_for_the_original_caller);
	tcase_add_test(tc, administrators_change_through_the_operator_api);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
