/* test_quorum.c - Check suite for the quorum: the canonical encoding and digest of proposals, Ed25519 checks, and the proposal state machine of the key ring. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "kms/quorum.h"
#include "kms/v1/state.pb-c.h"
#include "check_run.h"
#include "test_pki.h"

#define ADMIN "spiffe://example.org/ns/ops/sa/admin"
#define OTHER "spiffe://example.org/ns/ops/sa/other"
#define T0 1700000000
#define PID1 "0123456789abcdef0123456789abcdef"
#define PID2 "fedcba9876543210fedcba9876543210"
#define PID3 "00112233445566778899aabbccddeeff"

#define ASSERT_MSG_HAS(err, s)                                                                    \
	ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' does not name '%s'",          \
		      (err).msg, (s))

static const uint8_t CID[KMS_CLUSTER_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* --- operators: three Ed25519 keys made for the test --- */

#define N_OPS 3
static EVP_PKEY *keys[N_OPS];
static uint8_t pubs[N_OPS][KMS_ED25519_PUB_LEN];
static Kms__V1__OperatorRecord recs[N_OPS], *rec_ptrs[N_OPS];
static const char *names[N_OPS] = {"alice", "bob", "carol"};
static kms_keyring *kr;

static void make_keys(void)
{
	for (int i = 0; i < N_OPS; i++) {
		size_t n = KMS_ED25519_PUB_LEN;

		keys[i] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
		ck_assert_ptr_nonnull(keys[i]);
		ck_assert_int_eq(EVP_PKEY_get_raw_public_key(keys[i], pubs[i], &n), 1);
		kms__v1__operator_record__init(&recs[i]);
		recs[i].name = (char *)names[i];
		recs[i].public_key.data = pubs[i];
		recs[i].public_key.len = KMS_ED25519_PUB_LEN;
		rec_ptrs[i] = &recs[i];
	}
}

static void free_keys(void)
{
	for (int i = 0; i < N_OPS; i++)
		EVP_PKEY_free(keys[i]);
}

static void sign(int who, const uint8_t *digest, uint8_t sig[KMS_ED25519_SIG_LEN])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t n = KMS_ED25519_SIG_LEN;

	ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, NULL, NULL, keys[who]), 1);
	ck_assert_int_eq(EVP_DigestSign(ctx, sig, &n, digest, KMS_QUORUM_DIGEST_LEN), 1);
	EVP_MD_CTX_free(ctx);
}

static int apply(kms_buf *cmd, kms_err *err)
{
	int rc = kms_keyring_apply(kr, cmd->data, cmd->len, err);

	kms_buf_free(cmd);
	return rc;
}

static void setup(void)
{
	kms_err err = {0};
	kms_buf cmd = {0};
	char *admins[1] = {(char *)ADMIN};

	make_keys();
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(admins, 1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, rec_ptrs, N_OPS, 2, "eu-west", &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
}

static void teardown(void)
{
	kms_keyring_free(kr);
	free_keys();
}

/* --- operations and proposals --- */

static Kms__V1__RootOperation op;
static Kms__V1__SetAdministratorsOperation sa;
static Kms__V1__RotateDomainKeyOperation rdk;
static char *new_admins[2] = {(char *)ADMIN, (char *)OTHER};

static Kms__V1__RootOperation *op_set_admins(void)
{
	kms__v1__root_operation__init(&op);
	kms__v1__set_administrators_operation__init(&sa);
	sa.administrators = new_admins;
	sa.n_administrators = 2;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
	op.set_administrators = &sa;
	return &op;
}

static Kms__V1__BackupExportOperation bex;
static Kms__V1__CustodianRecord cust, *cust_ptr = &cust;

static Kms__V1__RootOperation *op_backup_export(void)
{
	kms__v1__root_operation__init(&op);
	kms__v1__backup_export_operation__init(&bex);
	kms__v1__custodian_record__init(&cust);
	cust.name = (char *)"alice";
	cust.public_key.data = pubs[0]; /* 32 bytes, as an X25519 key is */
	cust.public_key.len = 32;
	bex.custodians = &cust_ptr;
	bex.n_custodians = 1;
	bex.threshold = 1;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT;
	op.backup_export = &bex;
	return &op;
}

static Kms__V1__RootOperation *op_rotate_dk(void)
{
	kms__v1__root_operation__init(&op);
	kms__v1__rotate_domain_key_operation__init(&rdk);
	op.op_case = KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY;
	op.rotate_domain_key = &rdk;
	return &op;
}

/* Proposes o as id (expiring at T0 + 3600); digest out. */
static int propose_as(const char *id, const Kms__V1__RootOperation *o, const uint8_t *cid,
		      uint8_t digest[KMS_QUORUM_DIGEST_LEN], kms_err *err)
{
	Kms__V1__ProposalRecord p = KMS__V1__PROPOSAL_RECORD__INIT;
	kms_buf cmd = {0};

	ck_assert_int_eq(kms_quorum_digest(cid, KMS_CLUSTER_ID_LEN, id, T0 + 3600, o, digest,
					   err),
			 KMS_OK);
	p.id = (char *)id;
	p.proposer = (char *)ADMIN;
	p.operation = (Kms__V1__RootOperation *)o;
	p.created_at_unix = T0;
	p.expires_at_unix = T0 + 3600;
	p.digest.data = digest;
	p.digest.len = KMS_QUORUM_DIGEST_LEN;
	ck_assert_int_eq(kms_keyring_cmd_propose(&p, &cmd, err), KMS_OK);
	return apply(&cmd, err);
}

static int approve(const char *id, const char *name, const uint8_t *sig, int64_t now,
		   kms_err *err)
{
	kms_buf cmd = {0};

	ck_assert_int_eq(kms_keyring_cmd_approve(id, name, sig, KMS_ED25519_SIG_LEN, now, &cmd,
						 err),
			 KMS_OK);
	return apply(&cmd, err);
}

static const char *state_of(const char *id, int64_t now)
{
	static char out[32];
	Kms__V1__ProposalRecord *p = NULL;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_proposal(kr, id, &p, &err), KMS_OK);
	snprintf(out, sizeof(out), "%s", kms_proposal_state_name(p, now));
	kms_keyring_proposal_free(p);
	return out;
}

/* The whole replicated state, to show a refusal changed nothing. */
static kms_buf snap(void)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &b, &err), KMS_OK);
	return b;
}

static void assert_same(kms_buf a, kms_buf b)
{
	ck_assert_uint_eq(a.len, b.len);
	ck_assert_int_eq(memcmp(a.data, b.data, a.len), 0);
	kms_buf_free(&a);
	kms_buf_free(&b);
}

/* --- the canonical encoding --- */

START_TEST(encoding_is_the_documented_bytes)
{
	/* docs/FORMAT.md "Quorum digests", written out by hand. */
	static const uint8_t want_tail[] = {
	    0, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, /* cluster id */
	    0, 0, 0, 32, '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e',
	    'f', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
	    0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00, /* expires 1700000000 */
	    0, 0, 0, 18, 's', 'e', 't', '-', 'a', 'd', 'm', 'i', 'n', 'i', 's', 't', 'r', 'a', 't',
	    'o', 'r', 's', 0, 0, 0, 2, /* two administrators */
	};
	kms_buf enc = {0};
	kms_err err = {0};
	size_t tag = strlen(KMS_QUORUM_TAG), off;
	uint8_t d[KMS_QUORUM_DIGEST_LEN], want_d[KMS_QUORUM_DIGEST_LEN];

	ck_assert_int_eq(kms_quorum_encode(CID, sizeof(CID), PID1, T0, op_set_admins(), &enc, &err),
			 KMS_OK);
	ck_assert_int_eq(memcmp(enc.data, "kmsd quorum proposal v1", tag), 0);
	ck_assert_int_eq(memcmp(enc.data + tag, want_tail, sizeof(want_tail)), 0);
	off = tag + sizeof(want_tail);
	ck_assert_uint_eq(enc.len, off + 4 + strlen(ADMIN) + 4 + strlen(OTHER));
	ck_assert_int_eq(enc.data[off + 3], (int)strlen(ADMIN));
	ck_assert_int_eq(memcmp(enc.data + off + 4, ADMIN, strlen(ADMIN)), 0);
	/* The digest is SHA-256 of exactly these bytes. */
	SHA256(enc.data, enc.len, want_d);
	ck_assert_int_eq(kms_quorum_digest(CID, sizeof(CID), PID1, T0, &op, d, &err), KMS_OK);
	ck_assert_int_eq(memcmp(d, want_d, sizeof(d)), 0);
	kms_buf_free(&enc);
}
END_TEST

START_TEST(digest_binds_every_field)
{
	uint8_t base[32], d[32], cid2[KMS_CLUSTER_ID_LEN];
	kms_err err = {0};

	memcpy(cid2, CID, sizeof(cid2));
	cid2[0] ^= 1;
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, op_set_admins(), base, &err), KMS_OK);
	ck_assert_int_eq(kms_quorum_digest(cid2, 16, PID1, T0, &op, d, &err), KMS_OK);
	ck_assert_int_ne(memcmp(base, d, 32), 0);
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID2, T0, &op, d, &err), KMS_OK);
	ck_assert_int_ne(memcmp(base, d, 32), 0);
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0 + 1, &op, d, &err), KMS_OK);
	ck_assert_int_ne(memcmp(base, d, 32), 0);
	sa.n_administrators = 1;
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, &op, d, &err), KMS_OK);
	ck_assert_int_ne(memcmp(base, d, 32), 0);
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, op_rotate_dk(), d, &err), KMS_OK);
	ck_assert_int_ne(memcmp(base, d, 32), 0);
	/* The same inputs, the same digest. */
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, op_set_admins(), d, &err), KMS_OK);
	ck_assert_int_eq(memcmp(base, d, 32), 0);
}
END_TEST

START_TEST(encoding_refuses_bad_input)
{
	Kms__V1__RootOperation empty = KMS__V1__ROOT_OPERATION__INIT;
	uint8_t d[32];
	kms_err err = {0};

	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, &empty, d, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "names no root operation");
	ck_assert_int_eq(kms_quorum_digest(CID, 16, "ABC", T0, op_rotate_dk(), d, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "lowercase hex");
	ck_assert_int_eq(kms_quorum_digest(CID, 15, PID1, T0, &op, d, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "cluster id");
	new_admins[1] = (char *)"not-spiffe";
	ck_assert_int_eq(kms_quorum_digest(CID, 16, PID1, T0, op_set_admins(), d, &err),
			 KMS_ERR_INVALID);
	new_admins[1] = (char *)OTHER;
}
END_TEST

START_TEST(operator_set_rules)
{
	kms_err err = {0};
	Kms__V1__OperatorRecord dup = recs[1];
	Kms__V1__OperatorRecord *two[2] = {&recs[0], &dup};

	ck_assert_int_eq(kms_operator_set_check(rec_ptrs, 3, 3, &err), KMS_OK);
	ck_assert_int_eq(kms_operator_set_check(rec_ptrs, 3, 4, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "cannot be reached");
	ck_assert_int_eq(kms_operator_set_check(rec_ptrs, 3, 0, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_operator_set_check(rec_ptrs, 0, 1, &err), KMS_ERR_INVALID);
	dup.name = (char *)"alice";
	ck_assert_int_eq(kms_operator_set_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "listed twice");
	dup.name = (char *)"dave";
	dup.public_key = recs[0].public_key;
	ck_assert_int_eq(kms_operator_set_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "same public key");
	dup.public_key.len = 31;
	ck_assert_int_eq(kms_operator_set_check(two, 2, 1, &err), KMS_ERR_INVALID);
	dup.public_key = recs[1].public_key;
	dup.name = (char *)"Dave!";
	ck_assert_int_eq(kms_operator_set_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "may hold only");
}
END_TEST

/* --- Ed25519 --- */

START_TEST(ed25519_verifies_and_refuses)
{
	uint8_t d[32], sig[64];
	kms_err err = {0};

	memset(d, 7, sizeof(d));
	sign(0, d, sig);
	ck_assert_int_eq(kms_ed25519_verify(pubs[0], d, sig, 64, &err), KMS_OK);
	ck_assert_int_eq(kms_ed25519_verify(pubs[1], d, sig, 64, &err), KMS_ERR_PERMISSION);
	d[0] ^= 1;
	ck_assert_int_eq(kms_ed25519_verify(pubs[0], d, sig, 64, &err), KMS_ERR_PERMISSION);
	d[0] ^= 1;
	sig[10] ^= 0x40;
	ck_assert_int_eq(kms_ed25519_verify(pubs[0], d, sig, 64, &err), KMS_ERR_PERMISSION);
	sig[10] ^= 0x40;
	ck_assert_int_eq(kms_ed25519_verify(pubs[0], d, sig, 63, &err), KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, "63 bytes");
}
END_TEST

START_TEST(ed25519_key_files)
{
	char priv[] = "/tmp/kmsq-priv-XXXXXX", pub[] = "/tmp/kmsq-pub-XXXXXX";
	int fd1 = mkstemp(priv), fd2 = mkstemp(pub);
	FILE *f;
	uint8_t d[32], sig[64], p1[32], p2[32];
	kms_err err = {0};

	ck_assert(fd1 >= 0 && fd2 >= 0);
	f = fdopen(fd1, "w");
	ck_assert_int_eq(PEM_write_PrivateKey(f, keys[2], NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	f = fdopen(fd2, "w");
	ck_assert_int_eq(PEM_write_PUBKEY(f, keys[2]), 1);
	fclose(f);
	memset(d, 3, sizeof(d));
	ck_assert_int_eq(kms_ed25519_sign_file(priv, d, sig, p1, &err), KMS_OK);
	ck_assert_int_eq(kms_ed25519_public_from_file(pub, p2, &err), KMS_OK);
	ck_assert_int_eq(memcmp(p1, pubs[2], 32), 0);
	ck_assert_int_eq(memcmp(p2, pubs[2], 32), 0);
	ck_assert_int_eq(kms_ed25519_verify(p2, d, sig, 64, &err), KMS_OK);
	/* The wrong kind of file, either way. */
	ck_assert_int_eq(kms_ed25519_public_from_file(priv, p2, &err), KMS_ERR_CONFIG);
	ck_assert_int_eq(kms_ed25519_sign_file(pub, d, sig, NULL, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_ed25519_sign_file("/nonexistent/k", d, sig, NULL, &err), KMS_ERR_IO);
	unlink(priv);
	unlink(pub);
}
END_TEST

/* --- the state machine --- */

START_TEST(two_of_three_executes_once)
{
	uint8_t d[32], s0[64], s1[64], s2[64];
	kms_err err = {0};
	kms_buf before;

	ck_assert_msg(propose_as(PID1, op_set_admins(), CID, d, &err) == KMS_OK, "%s", err.msg);
	ck_assert_str_eq(state_of(PID1, T0 + 1), "pending");
	ck_assert(!kms_keyring_is_admin(kr, OTHER));
	sign(0, d, s0);
	sign(1, d, s1);
	sign(2, d, s2);
	ck_assert_int_eq(approve(PID1, "alice", s0, T0 + 10, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 10), "pending");
	ck_assert(!kms_keyring_is_admin(kr, OTHER));
	/* alice again: counts once, changes nothing */
	before = snap();
	ck_assert_int_eq(approve(PID1, "alice", s0, T0 + 11, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "approved proposal " PID1 " already");
	assert_same(before, snap());
	ck_assert_int_eq(approve(PID1, "bob", s1, T0 + 12, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 12), "executed");
	ck_assert(kms_keyring_is_admin(kr, OTHER));
	/* A third approval finds it finished. */
	before = snap();
	ck_assert_int_eq(approve(PID1, "carol", s2, T0 + 13, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "executed already");
	assert_same(before, snap());
}
END_TEST

START_TEST(refusals_write_nothing)
{
	uint8_t d[32], d2[32], other_cluster[32], sig[64];
	uint8_t cid2[KMS_CLUSTER_ID_LEN];
	Kms__V1__RootOperation *o = op_rotate_dk();
	kms_err err = {0};
	kms_buf before;

	ck_assert_int_eq(propose_as(PID1, o, CID, d, &err), KMS_OK);
	ck_assert_int_eq(propose_as(PID2, o, CID, d2, &err), KMS_OK);
	before = snap();
	/* unknown operator */
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "mallory", sig, T0 + 1, &err), KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, "'mallory' is not one of the cluster's operators");
	/* a signature over another proposal */
	sign(0, d2, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 1, &err), KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, "does not verify");
	/* a signature by another operator's key */
	sign(1, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 1, &err), KMS_ERR_PERMISSION);
	/* a signature over the same proposal in another cluster */
	memcpy(cid2, CID, sizeof(cid2));
	cid2[15] ^= 0xff;
	ck_assert_int_eq(kms_quorum_digest(cid2, 16, PID1, T0 + 3600, o, other_cluster, &err),
			 KMS_OK);
	sign(0, other_cluster, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 1, &err), KMS_ERR_PERMISSION);
	/* expired */
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 3600, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "expired at");
	ck_assert_str_eq(state_of(PID1, T0 + 3600), "expired");
	/* an unknown proposal */
	ck_assert_int_eq(approve("00000000000000000000000000000000", "alice", sig, T0 + 1, &err),
			 KMS_ERR_NOT_FOUND);
	assert_same(before, snap());
	/* A proposal whose digest is another cluster's, or none of its own. */
	ck_assert_int_eq(propose_as("11111111111111111111111111111111", o, cid2, d, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "not its canonical encoding");
	ck_assert_int_eq(propose_as(PID1, o, CID, d, &err), KMS_ERR_EXISTS);
}
END_TEST

START_TEST(outside_state_gets_one_result)
{
	uint8_t d[32], sig[64];
	kms_err err = {0};
	kms_buf cmd = {0};
	char ids[4][KMS_PROPOSAL_ID_HEX + 1];
	Kms__V1__ProposalRecord *p = NULL;

	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_OK);
	/* No result before it is approved. */
	ck_assert_int_eq(kms_keyring_cmd_proposal_result(PID1, KMS_OK, "", T0 + 1, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	sign(2, d, sig);
	ck_assert_int_eq(approve(PID1, "carol", sig, T0 + 2, &err), KMS_OK);
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 3, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 3), "approved");
	ck_assert_uint_eq(kms_keyring_approved_proposals(kr, ids, 4), 1);
	ck_assert_str_eq(ids[0], PID1);
	ck_assert_int_eq(kms_keyring_cmd_proposal_result(PID1, KMS_ERR_UNAVAILABLE,
							 "not in this build", T0 + 4, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 4), "failed");
	ck_assert_uint_eq(kms_keyring_approved_proposals(kr, ids, 4), 0);
	/* A second result (a new leader that ran it again) is refused. */
	ck_assert_int_eq(kms_keyring_cmd_proposal_result(PID1, KMS_OK, "", T0 + 5, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_keyring_proposal(kr, PID1, &p, &err), KMS_OK);
	ck_assert_str_eq(p->result_message, "not in this build");
	ck_assert_uint_eq(p->result_status, KMS_ERR_UNAVAILABLE);
	ck_assert_uint_eq(p->n_approvals, 2);
	kms_keyring_proposal_free(p);
}
END_TEST

/* A ProposalResult that holds a file and names one (never written by kmsd). */
static void result_file_and_ref(const char *id, const kms_backup_ref *ref, kms_buf *out)
{
	Kms__V1__ProposalResultCommand pr = KMS__V1__PROPOSAL_RESULT_COMMAND__INIT;
	Kms__V1__BackupFileRef br = KMS__V1__BACKUP_FILE_REF__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	static uint8_t file[] = "KMSDBAK1 an older backup's file";

	pr.proposal_id = (char *)id;
	pr.now_unix = T0 + 5;
	pr.backup_file.data = file;
	pr.backup_file.len = sizeof(file);
	if (ref != NULL) {
		br.backup_id.data = (uint8_t *)ref->backup_id;
		br.backup_id.len = KMS_BACKUP_ID_LEN;
		br.size = ref->size;
		br.sha256.data = (uint8_t *)ref->sha256;
		br.sha256.len = 32;
		br.holder_node_id = ref->holder_node_id;
		pr.backup_ref = &br;
	}
	c.cmd_case = KMS__V1__COMMAND__CMD_PROPOSAL_RESULT;
	c.proposal_result = &pr;
	out->len = kms__v1__command__get_packed_size(&c);
	out->data = kms_malloc(out->len);
	ck_assert_ptr_nonnull(out->data);
	kms__v1__command__pack(&c, out->data);
}

/*
 * A backup-export's result names where its file is (the state holds no
 * file); a bad ref, a ref for another operation, or a ref and a file
 * together are refused and change nothing. A result an older kmsd wrote,
 * with the file in it, still applies and is served as it was.
 */
START_TEST(backup_result_records_where_the_file_is)
{
	uint8_t d[32], d2[32], sig[64];
	kms_backup_ref ref, got, bad;
	kms_buf cmd = {0}, file = {0}, before;
	kms_keyring *kr2;
	kms_err err = {0};

	memset(&ref, 0, sizeof(ref));
	memset(ref.backup_id, 0xb1, sizeof(ref.backup_id));
	memset(ref.sha256, 0x5a, sizeof(ref.sha256));
	ref.size = 190000000;
	ref.holder_node_id = 2;
	ck_assert_int_eq(propose_as(PID1, op_backup_export(), CID, d, &err), KMS_OK);
	ck_assert_int_eq(propose_as(PID2, op_rotate_dk(), CID, d2, &err), KMS_OK);
	for (int i = 0; i < 2; i++) {
		sign(i, d, sig);
		ck_assert_int_eq(approve(PID1, names[i], sig, T0 + 1, &err), KMS_OK);
		sign(i, d2, sig);
		ck_assert_int_eq(approve(PID2, names[i], sig, T0 + 1, &err), KMS_OK);
	}
	ck_assert(!kms_keyring_last_backup_ref(kr, &got));
	before = snap();
	/* a ref naming no node, an empty or oversized file, a ref for a rotation */
	bad = ref;
	bad.holder_node_id = 0;
	ck_assert_int_eq(kms_keyring_cmd_proposal_result_backup(PID1, T0 + 5, &bad, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "names no node");
	bad = ref;
	bad.size = 0;
	ck_assert_int_eq(kms_keyring_cmd_proposal_result_backup(PID1, T0 + 5, &bad, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "a backup file of 0 bytes");
	bad.size = (uint64_t)KMS_BACKUP_FILE_MAX + 1;
	ck_assert_int_eq(kms_keyring_cmd_proposal_result_backup(PID1, T0 + 5, &bad, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_proposal_result_backup(PID2, T0 + 5, &ref, &cmd, &err),
			 KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "only with the success of a backup-export");
	result_file_and_ref(PID1, &ref, &cmd);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "not both");
	assert_same(before, snap());
	ck_assert_int_eq(kms_keyring_backup_find(kr, PID1, &got, &file, &err), KMS_ERR_NOT_FOUND);

	ck_assert_int_eq(kms_keyring_cmd_proposal_result_backup(PID1, T0 + 5, &ref, &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_str_eq(state_of(PID1, T0 + 5), "executed");
	ck_assert_int_eq(kms_keyring_backup_find(kr, PID1, &got, &file, &err), KMS_OK);
	ck_assert_uint_eq(file.len, 0);
	ck_assert_mem_eq(&got, &ref, sizeof(ref));
	ck_assert_int_eq(kms_keyring_backup_find(kr, PID2, &got, &file, &err), KMS_ERR_NOT_FOUND);
	ASSERT_MSG_HAS(err, "no backup file for proposal " PID2);
	/* Through a snapshot, as a restarted or joining node has it. */
	before = snap();
	ck_assert_int_eq(kms_keyring_new(&kr2, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(kr2, before.data, before.len, &err) == KMS_OK, "%s",
		      err.msg);
	ck_assert(kms_keyring_last_backup_ref(kr2, &got));
	ck_assert_mem_eq(&got, &ref, sizeof(ref));
	kms_keyring_free(kr2);
	kms_buf_free(&before);

	/* An older kmsd's result: the file itself, no ref. */
	ck_assert_int_eq(propose_as(PID3, op_backup_export(), CID, d, &err), KMS_OK);
	for (int i = 0; i < 2; i++) {
		sign(i, d, sig);
		ck_assert_int_eq(approve(PID3, names[i], sig, T0 + 1, &err), KMS_OK);
	}
	result_file_and_ref(PID3, NULL, &cmd);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert(!kms_keyring_last_backup_ref(kr, &got));
	ck_assert_int_eq(kms_keyring_backup_find(kr, PID3, &got, &file, &err), KMS_OK);
	ck_assert_uint_eq(file.len, sizeof("KMSDBAK1 an older backup's file"));
	ck_assert_mem_eq(file.data, "KMSDBAK1", 8);
	kms_buf_free(&file);
	ck_assert_int_eq(kms_keyring_backup_find(kr, PID1, &got, &file, &err), KMS_ERR_NOT_FOUND);
}
END_TEST

/*
 * What a sync write waits for: an Approve names its proposal, and only an
 * executed destroy-key names a key. Other commands, bytes that do not
 * parse, a pending or unknown proposal, another operation: nothing.
 */
START_TEST(an_approval_names_the_key_it_destroys)
{
	static const uint8_t junk[] = {0xff, 0xff, 0xff};
	Kms__V1__DestroyKeyOperation dko = KMS__V1__DESTROY_KEY_OPERATION__INIT;
	Kms__V1__RootOperation dop = KMS__V1__ROOT_OPERATION__INIT;
	char pid[KMS_PROPOSAL_ID_HEX + 1], key[KMS_KEY_ID_MAX + 1];
	uint8_t d[32], d2[32], sig[64], w[40];
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(sig, 0, sizeof(sig));
	ck_assert_int_eq(kms_keyring_cmd_approve(PID1, "alice", sig, sizeof(sig), T0, &cmd, &err),
			 KMS_OK);
	ck_assert(kms_keyring_command_approval(cmd.data, cmd.len, pid));
	ck_assert_str_eq(pid, PID1);
	kms_buf_free(&cmd);
	ck_assert(!kms_keyring_command_approval(junk, sizeof(junk), pid));
	ck_assert_int_eq(kms_keyring_cmd_proposal_result(PID1, KMS_OK, "", T0, &cmd, &err), KMS_OK);
	ck_assert(!kms_keyring_command_approval(cmd.data, cmd.len, pid));
	kms_buf_free(&cmd);

	dko.key_id = (char *)"doomed";
	dop.op_case = KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY;
	dop.destroy_key = &dko;
	ck_assert_int_eq(propose_as(PID1, &dop, CID, d, &err), KMS_OK);
	ck_assert_int_eq(propose_as(PID2, op_set_admins(), CID, d2, &err), KMS_OK);
	ck_assert(!kms_keyring_executed_destroy(kr, PID1, key)); /* pending */
	ck_assert(!kms_keyring_executed_destroy(kr, PID3, key)); /* unknown */
	for (int i = 0; i < 2; i++) {
		sign(i, d2, sig);
		ck_assert_int_eq(approve(PID2, names[i], sig, T0 + 1, &err), KMS_OK);
	}
	ck_assert_str_eq(state_of(PID2, T0 + 1), "executed");
	ck_assert(!kms_keyring_executed_destroy(kr, PID2, key)); /* not a destroy-key */
	/* The key, pending deletion: the M-th approval destroys it. */
	memset(w, 0x11, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_create_key("doomed", "", NULL, ADMIN, T0, w, sizeof(w),
						    &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_schedule_key_deletion("doomed", T0 + 7 * 86400, &cmd,
							       &err),
			 KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	for (int i = 0; i < 2; i++) {
		sign(i, d, sig);
		ck_assert_msg(approve(PID1, names[i], sig, T0 + 2, &err) == KMS_OK, "%s", err.msg);
	}
	ck_assert_str_eq(state_of(PID1, T0 + 2), "executed");
	ck_assert(kms_keyring_executed_destroy(kr, PID1, key));
	ck_assert_str_eq(key, "doomed");
}
END_TEST

START_TEST(cancel_by_proposer_only)
{
	uint8_t d[32], sig[64];
	kms_err err = {0};
	kms_buf cmd = {0}, before;

	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_OK);
	before = snap();
	ck_assert_int_eq(kms_keyring_cmd_cancel_proposal(PID1, OTHER, T0 + 1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, "did not propose");
	assert_same(before, snap());
	ck_assert_int_eq(kms_keyring_cmd_cancel_proposal(PID1, ADMIN, T0 + 1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 1), "cancelled");
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 2, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "cancelled already");
}
END_TEST

START_TEST(operators_cancel_with_a_proposal)
{
	Kms__V1__RootOperation co = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__CancelProposalOperation cp = KMS__V1__CANCEL_PROPOSAL_OPERATION__INIT;
	uint8_t d[32], d2[32], sig[64];
	kms_err err = {0};

	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_OK);
	cp.proposal_id = (char *)PID1;
	co.op_case = KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL;
	co.cancel_proposal = &cp;
	ck_assert_int_eq(propose_as(PID2, &co, CID, d2, &err), KMS_OK);
	sign(0, d2, sig);
	ck_assert_int_eq(approve(PID2, "alice", sig, T0 + 1, &err), KMS_OK);
	sign(1, d2, sig);
	ck_assert_int_eq(approve(PID2, "bob", sig, T0 + 2, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID2, T0 + 2), "executed");
	ck_assert_str_eq(state_of(PID1, T0 + 2), "cancelled");
}
END_TEST

START_TEST(set_operators_voids_other_approvals)
{
	Kms__V1__RootOperation so = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__SetOperatorsOperation set = KMS__V1__SET_OPERATORS_OPERATION__INIT;
	uint8_t d[32], d2[32], sig[64];
	kms_err err = {0};
	Kms__V1__SetOperatorsOperation *now = NULL;
	uint8_t cid[16];
	Kms__V1__ProposalRecord *p = NULL;

	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_OK);
	sign(2, d, sig);
	ck_assert_int_eq(approve(PID1, "carol", sig, T0 + 1, &err), KMS_OK);
	/* alice and bob alone, both needed */
	set.operators = rec_ptrs;
	set.n_operators = 2;
	set.threshold = 2;
	so.op_case = KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS;
	so.set_operators = &set;
	ck_assert_int_eq(propose_as(PID2, &so, CID, d2, &err), KMS_OK);
	sign(0, d2, sig);
	ck_assert_int_eq(approve(PID2, "alice", sig, T0 + 2, &err), KMS_OK);
	sign(2, d2, sig);
	ck_assert_int_eq(approve(PID2, "carol", sig, T0 + 3, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID2, T0 + 3), "executed");
	ck_assert_int_eq(kms_keyring_quorum(kr, cid, &now, &err), KMS_OK);
	ck_assert_uint_eq(now->n_operators, 2);
	ck_assert_uint_eq(now->threshold, 2);
	kms_keyring_operators_free(now);
	ck_assert_int_eq(kms_keyring_proposal(kr, PID1, &p, &err), KMS_OK);
	ck_assert_uint_eq(p->n_approvals, 0);
	kms_keyring_proposal_free(p);
	/* carol is no operator now */
	sign(2, d, sig);
	ck_assert_int_eq(approve(PID1, "carol", sig, T0 + 4, &err), KMS_ERR_PERMISSION);
}
END_TEST

START_TEST(failed_execution_is_recorded)
{
	Kms__V1__RootOperation ro = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__RemoveMemberOperation rm = KMS__V1__REMOVE_MEMBER_OPERATION__INIT;
	uint8_t d[32], sig[64];
	kms_err err = {0};
	Kms__V1__ProposalRecord *p = NULL;

	rm.id = 9;
	ro.op_case = KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER;
	ro.remove_member = &rm;
	ck_assert_int_eq(propose_as(PID1, &ro, CID, d, &err), KMS_OK);
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 1, &err), KMS_OK);
	sign(1, d, sig);
	/* The approval is recorded; the operation's failure is its result. */
	ck_assert_int_eq(approve(PID1, "bob", sig, T0 + 2, &err), KMS_OK);
	ck_assert_str_eq(state_of(PID1, T0 + 2), "failed");
	ck_assert_int_eq(kms_keyring_proposal(kr, PID1, &p, &err), KMS_OK);
	ck_assert_msg(strstr(p->result_message, "only member") != NULL ||
			      strstr(p->result_message, "not a member") != NULL,
		      "%s", p->result_message);
	kms_keyring_proposal_free(p);
}
END_TEST

/* --- link-region --- */

static Kms__V1__LinkRegionOperation lr;
static char *link_endpoints[2] = {"10.1.0.1:7401", "10.1.0.2:7401"};
static char link_ca[4096];

/* A real certificate: the check parses it. */
static void make_link_ca(void)
{
	size_t len;
	char *text = kms_test_ca_pem("us-east node CA", &len);

	ck_assert_uint_lt(len, sizeof(link_ca));
	memcpy(link_ca, text, len + 1);
	kms_free(text);
}

static Kms__V1__RootOperation *op_link(const char *peer)
{
	make_link_ca();
	kms__v1__root_operation__init(&op);
	kms__v1__link_region_operation__init(&lr);
	lr.peer_region = (char *)peer;
	lr.role = KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY;
	lr.mode = KMS__V1__REGION_MODE__REGION_MODE_ASYNC;
	lr.peer_endpoints = link_endpoints;
	lr.n_peer_endpoints = 2;
	lr.peer_trust_domain = "spiffe://us-east.example";
	lr.peer_node_ca_pem.data = (uint8_t *)link_ca;
	lr.peer_node_ca_pem.len = strlen(link_ca);
	op.op_case = KMS__V1__ROOT_OPERATION__OP_LINK_REGION;
	op.link_region = &lr;
	return &op;
}

/* Proposes o as id and has alice and bob approve it. */
static void propose_and_approve(const char *id, const Kms__V1__RootOperation *o)
{
	uint8_t d[KMS_QUORUM_DIGEST_LEN], sig[KMS_ED25519_SIG_LEN];
	kms_err err = {0};

	ck_assert_msg(propose_as(id, o, CID, d, &err) == KMS_OK, "%s", err.msg);
	sign(0, d, sig);
	ck_assert_int_eq(approve(id, "alice", sig, T0 + 1, &err), KMS_OK);
	sign(1, d, sig);
	ck_assert_int_eq(approve(id, "bob", sig, T0 + 2, &err), KMS_OK);
}

START_TEST(link_region_is_recorded_when_approved)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	Kms__V1__ProposalRecord *p = NULL;
	size_t n = 0;
	kms_err err = {0};

	propose_and_approve(PID1, op_link("us-east"));
	ck_assert_str_eq(state_of(PID1, T0 + 3), "executed");
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(links[0]->peer_region, "us-east");
	ck_assert_int_eq(links[0]->role, KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	/* Kept as the bare name, as [authz] trust_domain is. */
	ck_assert_str_eq(links[0]->peer_trust_domain, "us-east.example");
	ck_assert_uint_eq(links[0]->epoch, 1);
	ck_assert_uint_eq(links[0]->n_peer_endpoints, 2);
	ck_assert_str_eq(links[0]->proposal_id, PID1);
	kms_keyring_region_links_free(links, n);
	/* A second link to the same region fails, recorded in its proposal. */
	propose_and_approve(PID2, op_link("us-east"));
	ck_assert_str_eq(state_of(PID2, T0 + 3), "failed");
	ck_assert_int_eq(kms_keyring_proposal(kr, PID2, &p, &err), KMS_OK);
	ck_assert_msg(strstr(p->result_message, "linked to region 'us-east' already") != NULL, "%s",
		      p->result_message);
	kms_keyring_proposal_free(p);
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	kms_keyring_region_links_free(links, n);
}
END_TEST

START_TEST(link_region_refusals)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	Kms__V1__ProposalRecord *p = NULL;
	uint8_t d[KMS_QUORUM_DIGEST_LEN];
	kms_buf before = snap();
	size_t n = 5;
	kms_err err = {0};
	static const char *const bad_names[] = {"", "US-East", "us_east", "-us"};

	/* A malformed operation is refused at proposal: nothing recorded. */
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		op_link(bad_names[i]);
		ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
		ck_assert_msg(strstr(err.msg, "region") != NULL, "%s", err.msg);
	}
	op_link("us-east");
	lr.role = KMS__V1__REGION_ROLE__REGION_ROLE_UNSPECIFIED;
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "role");
	op_link("us-east");
	lr.n_peer_endpoints = 0;
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "peer endpoints");
	op_link("us-east");
	link_endpoints[1] = "no-port";
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	link_endpoints[1] = "10.1.0.2:7401";
	op_link("us-east");
	lr.peer_trust_domain = "spiffe://";
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "trust domain");
	op_link("us-east");
	lr.peer_node_ca_pem.data = (uint8_t *)"not a certificate";
	lr.peer_node_ca_pem.len = 17;
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "no PEM certificate");
	{
		/* A good certificate, then a block cut short: the nodes would refuse it. */
		static char twice[2 * sizeof(link_ca)];
		size_t one = strlen(link_ca);

		op_link("us-east");
		memcpy(twice, link_ca, one);
		memcpy(twice + one, link_ca, one / 2);
		memcpy(twice + one + one / 2, "\n-----END CERTIFICATE-----\n", 27);
		lr.peer_node_ca_pem.data = (uint8_t *)twice;
		lr.peer_node_ca_pem.len = one + one / 2 + 27;
		ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
		ASSERT_MSG_HAS(err, "does not parse");
	}
	/* The digest, and so a proposal, cannot be made of it. */
	ck_assert_int_eq(kms_quorum_digest(CID, KMS_CLUSTER_ID_LEN, PID1, T0 + 3600, &op, d, &err),
			 KMS_ERR_INVALID);
	assert_same(before, snap());
	/* Well formed but a link to this region itself: fails at execution. */
	propose_and_approve(PID2, op_link("eu-west"));
	ck_assert_str_eq(state_of(PID2, T0 + 3), "failed");
	ck_assert_int_eq(kms_keyring_proposal(kr, PID2, &p, &err), KMS_OK);
	ck_assert_msg(strstr(p->result_message, "cannot be linked to itself") != NULL, "%s",
		      p->result_message);
	kms_keyring_proposal_free(p);
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 0);
}
END_TEST

static Kms__V1__PromoteRegionOperation pr;

static Kms__V1__RootOperation *op_promote(const char *peer)
{
	kms__v1__root_operation__init(&op);
	kms__v1__promote_region_operation__init(&pr);
	pr.peer_region = (char *)peer;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION;
	op.promote_region = &pr;
	return &op;
}

/* us-east's key mr1, as eu-west (linked as its secondary) receives it. */
static void receive_mr1(void)
{
	kms_keyring *east = NULL;
	Kms__V1__OperatorRecord *one[1] = {rec_ptrs[0]};
	Kms__V1__KeyRecord **krs = NULL;
	uint8_t w[40];
	uint64_t head = 0;
	size_t n = 0;
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(w, 0x11, sizeof(w));
	ck_assert_int_eq(kms_keyring_new(&east, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, one, 1, 1, "us-east", &cmd, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_apply(east, cmd.data, cmd.len, &err), KMS_OK);
	kms_buf_free(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_create_key("mr1", "", NULL, ADMIN, T0, w, sizeof(w), &cmd,
						    &err),
			 KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_set_home_region(&cmd, "us-east", &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_apply(east, cmd.data, cmd.len, &err), KMS_OK);
	kms_buf_free(&cmd);
	ck_assert_int_eq(kms_keyring_region_changes(east, 0, 256, &krs, &n, &head, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", 1, krs, n, NULL, 0, head, head, T0, 1, &cmd,
						      &err),
			 KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	kms_keyring_records_free(krs, n);
	kms_keyring_free(east);
}

START_TEST(promote_region_rehomes_its_keys_and_raises_the_epoch)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	Kms__V1__KeyRecord **krs = NULL;
	Kms__V1__KeyMetadata *md = NULL;
	Kms__V1__ProposalRecord *p = NULL;
	uint64_t head = 0;
	size_t n = 0;
	kms_buf cmd = {0};
	kms_err err = {0};

	propose_and_approve(PID1, op_link("us-east"));
	receive_mr1();
	/* Before: a change of mr1 is us-east's. */
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr1", 0, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	propose_and_approve(PID2, op_promote("us-east"));
	ck_assert_str_eq(state_of(PID2, T0 + 3), "executed");
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(links[0]->role, KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY);
	ck_assert_uint_eq(links[0]->epoch, 2);
	/* Nothing waits for the region promoted over until it follows. */
	ck_assert(links[0]->awaiting_follow);
	kms_keyring_region_links_free(links, n);
	ck_assert_int_eq(kms_keyring_cmd_region_followed("us-east", 1, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_keyring_cmd_region_followed("ap-south", 2, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_keyring_cmd_region_followed("us-east", 2, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert(!links[0]->awaiting_follow);
	kms_keyring_region_links_free(links, n);
	ck_assert_int_eq(kms_keyring_cmd_region_followed("us-east", 2, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "not awaiting") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_describe(kr, "mr1", ADMIN, 1, &md, &err), KMS_OK);
	ck_assert_str_eq(md->home_region, "eu-west");
	kms_keyring_metadata_free(md);
	/* Its keys are sent to its secondaries now, and changed here. */
	ck_assert_int_eq(kms_keyring_region_changes(kr, 0, 256, &krs, &n, &head, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(krs[0]->key_id, "mr1");
	kms_keyring_records_free(krs, n);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr1", 0, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(&cmd, &err) == KMS_OK, "%s", err.msg);
	/* Twins: promoted already; a region it is not linked to. */
	propose_and_approve(PID3, op_promote("us-east"));
	ck_assert_int_eq(kms_keyring_proposal(kr, PID3, &p, &err), KMS_OK);
	ck_assert_str_eq(kms_proposal_state_name(p, T0 + 3), "failed");
	ck_assert_msg(strstr(p->result_message, "not linked as a secondary of region 'us-east'") !=
			  NULL,
		      "%s", p->result_message);
	kms_keyring_proposal_free(p);
	op_promote("Not A Region");
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
}
END_TEST

START_TEST(unlink_region_removes_the_link)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	Kms__V1__UnlinkRegionOperation ur = KMS__V1__UNLINK_REGION_OPERATION__INIT;
	Kms__V1__ProposalRecord *p = NULL;
	size_t n = 9;
	kms_err err = {0};

	propose_and_approve(PID1, op_link("us-east"));
	kms__v1__root_operation__init(&op);
	ur.peer_region = "us-east";
	op.op_case = KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION;
	op.unlink_region = &ur;
	propose_and_approve(PID2, &op);
	ck_assert_str_eq(state_of(PID2, T0 + 3), "executed");
	ck_assert_int_eq(kms_keyring_region_links(kr, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 0);
	/* Twins: not linked (any more); not a region name. */
	propose_and_approve(PID3, &op);
	ck_assert_int_eq(kms_keyring_proposal(kr, PID3, &p, &err), KMS_OK);
	ck_assert_str_eq(kms_proposal_state_name(p, T0 + 3), "failed");
	ck_assert_msg(strstr(p->result_message, "is not linked to region 'us-east'") != NULL, "%s",
		      p->result_message);
	kms_keyring_proposal_free(p);
	ur.peer_region = "US";
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
}
END_TEST

START_TEST(snapshot_keeps_the_quorum)
{
	uint8_t d[32], sig[64];
	kms_err err = {0};
	kms_keyring *kr2;
	kms_buf a, b = {0};

	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_OK);
	sign(0, d, sig);
	ck_assert_int_eq(approve(PID1, "alice", sig, T0 + 1, &err), KMS_OK);
	a = snap();
	ck_assert_int_eq(kms_keyring_new(&kr2, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(kr2, a.data, a.len, &err) == KMS_OK, "%s", err.msg);
	ck_assert(kms_keyring_has_quorum(kr2));
	ck_assert_int_eq(kms_keyring_snapshot(kr2, kms_malloc, &b, &err), KMS_OK);
	ck_assert_uint_eq(a.len, b.len);
	ck_assert_int_eq(memcmp(a.data, b.data, a.len), 0);
	kms_keyring_free(kr2);
	kms_buf_free(&a);
	kms_buf_free(&b);
}
END_TEST

START_TEST(init_once)
{
	kms_err err = {0};
	kms_buf cmd = {0};

	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, rec_ptrs, N_OPS, 1, NULL, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(&cmd, &err), KMS_ERR_EXISTS);
	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, rec_ptrs, N_OPS, 4, NULL, &cmd, &err),
			 KMS_ERR_INVALID);
}
END_TEST

START_TEST(no_operators_no_proposals)
{
	kms_keyring *bare;
	kms_err err = {0};
	uint8_t d[32];
	kms_keyring *keep = kr;

	ck_assert_int_eq(kms_keyring_new(&bare, &err), KMS_OK);
	kr = bare;
	ck_assert_int_eq(propose_as(PID1, op_rotate_dk(), CID, d, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "no operators");
	kr = keep;
	kms_keyring_free(bare);
}
END_TEST

static Suite *quorum_suite(void)
{
	Suite *s = suite_create("quorum");
	TCase *enc = tcase_create("encoding");
	TCase *sm = tcase_create("state machine");

	tcase_add_checked_fixture(enc, make_keys, free_keys);
	tcase_add_test(enc, encoding_is_the_documented_bytes);
	tcase_add_test(enc, digest_binds_every_field);
	tcase_add_test(enc, encoding_refuses_bad_input);
	tcase_add_test(enc, operator_set_rules);
	tcase_add_test(enc, ed25519_verifies_and_refuses);
	tcase_add_test(enc, ed25519_key_files);
	suite_add_tcase(s, enc);
	tcase_add_checked_fixture(sm, setup, teardown);
	tcase_add_test(sm, two_of_three_executes_once);
	tcase_add_test(sm, refusals_write_nothing);
	tcase_add_test(sm, outside_state_gets_one_result);
	tcase_add_test(sm, backup_result_records_where_the_file_is);
	tcase_add_test(sm, an_approval_names_the_key_it_destroys);
	tcase_add_test(sm, cancel_by_proposer_only);
	tcase_add_test(sm, operators_cancel_with_a_proposal);
	tcase_add_test(sm, set_operators_voids_other_approvals);
	tcase_add_test(sm, failed_execution_is_recorded);
	tcase_add_test(sm, snapshot_keeps_the_quorum);
	tcase_add_test(sm, link_region_is_recorded_when_approved);
	tcase_add_test(sm, link_region_refusals);
	tcase_add_test(sm, promote_region_rehomes_its_keys_and_raises_the_epoch);
	tcase_add_test(sm, unlink_region_removes_the_link);
	tcase_add_test(sm, init_once);
	tcase_add_test(sm, no_operators_no_proposals);
	suite_add_tcase(s, sm);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(quorum_suite()));
}
