/* test_policy.c - Check suite for every authorization decision (policy.c): grants, wildcards, principals, admins. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/error.h"
#include "kms/policy.h"
#include "check_run.h"

#define MAX_TEST_GRANTS (KMS_POLICY_MAX_GRANTS + 2)

static kms_err err;
static Kms__V1__KeyPolicy policy;
static Kms__V1__Grant grants[MAX_TEST_GRANTS];
static Kms__V1__Grant *grant_ptrs[MAX_TEST_GRANTS];
static char principals[MAX_TEST_GRANTS][64];

static char *ops_encrypt[] = {"Encrypt"};
static char *ops_decrypt_gdk[] = {"Decrypt", "GenerateDataKey"};
static char *ops_all[] = {"Encrypt", "Decrypt", "GenerateDataKey",
			  "DescribeKey"};

static const char *const app = "spiffe://prod.example/ns/payments/sa/api";

static void setup(void)
{
	kms_err_clear(&err);
	kms__v1__key_policy__init(&policy);
	memset(grants, 0, sizeof(grants));
	policy.grants = grant_ptrs;
	policy.n_grants = 0;
}

static void teardown(void)
{
}

/* Appends a grant to the fixture policy; the strings are borrowed. */
static Kms__V1__Grant *add_grant(const char *principal, char **ops,
				 size_t n_ops)
{
	Kms__V1__Grant *g = &grants[policy.n_grants];

	ck_assert_uint_lt(policy.n_grants, MAX_TEST_GRANTS);
	kms__v1__grant__init(g);
	g->principal = (char *)principal;
	g->operations = ops;
	g->n_operations = n_ops;
	grant_ptrs[policy.n_grants++] = g;
	return g;
}

#define ASSERT_MSG(needle)                                                     \
	ck_assert_msg(strstr(err.msg, needle) != NULL,                         \
		      "message '%s' lacks '%s'", err.msg, needle)

/* --- operations --- */

START_TEST(test_op_names)
{
	enum kms_op op;

	ck_assert_str_eq(kms_op_name(KMS_OP_ENCRYPT), "Encrypt");
	ck_assert_str_eq(kms_op_name(KMS_OP_DECRYPT), "Decrypt");
	ck_assert_str_eq(kms_op_name(KMS_OP_GENERATE_DATA_KEY),
			 "GenerateDataKey");
	ck_assert_str_eq(kms_op_name(KMS_OP_DESCRIBE_KEY), "DescribeKey");
	ck_assert_str_eq(kms_op_name(KMS_OP_REENCRYPT_FROM), "ReEncryptFrom");
	ck_assert_str_eq(kms_op_name(KMS_OP_REENCRYPT_TO), "ReEncryptTo");
	ck_assert_str_eq(kms_op_name((enum kms_op)0), "unknown");
	ck_assert_str_eq(kms_op_name((enum kms_op)(KMS_OP_REENCRYPT_TO + 1)), "unknown");
	ck_assert_str_eq(kms_op_name((enum kms_op)99), "unknown");
	for (int i = KMS_OP_ENCRYPT; i <= KMS_OP_REENCRYPT_TO; i++) {
		ck_assert_int_eq(
		    kms_op_parse(kms_op_name((enum kms_op)i), &op, &err),
		    KMS_OK);
		ck_assert_int_eq(op, i);
	}
}
END_TEST

START_TEST(test_op_parse_unknown)
{
	enum kms_op op = KMS_OP_DESCRIBE_KEY;

	ck_assert_int_eq(kms_op_parse("Destroy", &op, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "unknown operation 'Destroy'");
	ck_assert_int_eq(op, KMS_OP_DESCRIBE_KEY);
	/* Names are exact and case-sensitive. */
	ck_assert_int_eq(kms_op_parse("encrypt", &op, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_op_parse("Encrypt ", &op, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_op_parse("", &op, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_op_parse(NULL, &op, &err), KMS_ERR_INVALID);
	/* ReEncrypt is two grants, never one name for both. */
	ck_assert_int_eq(kms_op_parse("ReEncrypt", &op, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "unknown operation 'ReEncrypt'");
	ck_assert_int_eq(kms_op_parse("reencryptfrom", &op, &err), KMS_ERR_INVALID);
	/* Control characters from a request never reach the message. */
	ck_assert_int_eq(kms_op_parse("X\n\x1b[31m", &op, &err),
			 KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "unknown operation 'X??[31m'");
}
END_TEST

/* --- principals --- */

START_TEST(test_principal_valid)
{
	ck_assert_int_eq(kms_principal_check(app, &err), KMS_OK);
	ck_assert_int_eq(kms_principal_check("spiffe://td/x", &err), KMS_OK);
	/* A trust domain alone names no workload. */
	ck_assert_int_eq(kms_principal_check("spiffe://td", &err), KMS_ERR_INVALID);
	ASSERT_MSG("path is empty");
	ck_assert_int_eq(kms_principal_check("spiffe://td/", &err), KMS_ERR_INVALID);
	ASSERT_MSG("ends with '/'");
}
END_TEST

START_TEST(test_principal_invalid)
{
	char big[KMS_PRINCIPAL_MAX + 2];

	ck_assert_int_eq(kms_principal_check(NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("missing");
	ck_assert_int_eq(kms_principal_check("", &err), KMS_ERR_INVALID);
	ASSERT_MSG("empty");
	ck_assert_int_eq(kms_principal_check("https://td/x", &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("does not start with spiffe://");
	ck_assert_int_eq(kms_principal_check("SPIFFE://td/x", &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_principal_check("spiffe://", &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("trust domain is empty");
	ck_assert_int_eq(kms_principal_check("spiffe:///ns/x", &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("trust domain is empty");
	ck_assert_int_eq(kms_principal_check("spiffe://td/a b", &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("character outside");
	ck_assert_int_eq(kms_principal_check("spiffe://td/a\tb", &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_principal_check("spiffe://td/a\x7f", &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_principal_check("spiffe://td/ns/*", &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_principal_check("spiffe://TD/x", &err), KMS_ERR_INVALID);
	ASSERT_MSG("upper-case");
	ck_assert_int_eq(kms_principal_check("spiffe://td:443/x", &err), KMS_ERR_INVALID);
	ASSERT_MSG("port");
	ck_assert_int_eq(kms_principal_check("spiffe://td/a/../b", &err), KMS_ERR_INVALID);
	ASSERT_MSG("'..'");
	ck_assert_int_eq(kms_principal_check("spiffe://td/a/%41", &err), KMS_ERR_INVALID);
	ASSERT_MSG("percent-encoded");

	/* Exactly KMS_PRINCIPAL_MAX bytes is allowed, one more is not. */
	memset(big, 'a', sizeof(big));
	memcpy(big, "spiffe://td/", 12);
	big[KMS_PRINCIPAL_MAX] = '\0';
	ck_assert_int_eq(kms_principal_check(big, &err), KMS_OK);
	big[KMS_PRINCIPAL_MAX] = 'a';
	big[KMS_PRINCIPAL_MAX + 1] = '\0';
	ck_assert_int_eq(kms_principal_check(big, &err), KMS_ERR_INVALID);
	ASSERT_MSG("longer than the 2048 allowed");
}
END_TEST

/* --- decisions --- */

START_TEST(test_allows_exact)
{
	add_grant(app, ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
	/* Bad-input twins: wrong operation, near-miss principals. */
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_DESCRIBE_KEY));
	ck_assert(!kms_policy_allows(
	    &policy, "spiffe://prod.example/ns/payments/sa/api2",
	    KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy,
				     "spiffe://prod.example/ns/payments/sa/ap",
				     KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy,
				     "spiffe://prod.example/ns/payments/sa/API",
				     KMS_OP_ENCRYPT));
}
END_TEST

START_TEST(test_allows_prefix)
{
	add_grant("spiffe://prod.example/ns/payments/*", ops_decrypt_gdk, 2);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, app, KMS_OP_DECRYPT));
	ck_assert(kms_policy_allows(&policy, app, KMS_OP_GENERATE_DATA_KEY));
	/* The wildcard's own prefix is not below it. */
	ck_assert(!kms_policy_allows(
	    &policy, "spiffe://prod.example/ns/payments", KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(
	    &policy, "spiffe://prod.example/ns/payment", KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy,
				     "spiffe://prod.example/ns/paymentsx/sa/a",
				     KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy,
				     "spiffe://dev.example/ns/payments/sa/api",
				     KMS_OP_DECRYPT));
}
END_TEST

START_TEST(test_allows_star_alone)
{
	add_grant("*", ops_all, 4);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
	ck_assert(kms_policy_allows(&policy, "spiffe://other/x",
				    KMS_OP_DESCRIBE_KEY));
	ck_assert(!kms_policy_allows(&policy, "spiffe://other/../x", KMS_OP_DESCRIBE_KEY));
	/* "*" is every SPIFFE identity, not every string. */
	ck_assert(!kms_policy_allows(&policy, "", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, "CN=admin", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, app, (enum kms_op)0));
	ck_assert(!kms_policy_allows(&policy, app, (enum kms_op)42));
}
END_TEST

START_TEST(test_allows_several_grants)
{
	add_grant("spiffe://prod.example/ns/batch/*", ops_encrypt, 1);
	add_grant(app, ops_decrypt_gdk, 2);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, app, KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
	ck_assert(kms_policy_allows(
	    &policy, "spiffe://prod.example/ns/batch/sa/j", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(
	    &policy, "spiffe://prod.example/ns/batch/sa/j", KMS_OP_DECRYPT));
}
END_TEST

START_TEST(test_deny_by_default)
{
	/* No grants at all: a valid policy that allows nothing. */
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
	add_grant(app, ops_all, 4);
	ck_assert(!kms_policy_allows(NULL, app, KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, NULL, KMS_OP_ENCRYPT));
	/* A stored grant with a NULL entry is skipped, not dereferenced. */
	grant_ptrs[0] = NULL;
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_ENCRYPT));
}
END_TEST

/* --- policy validation --- */

START_TEST(test_check_bad_operation)
{
	char *bad_ops[] = {"Encrypt", "Destroy"};

	add_grant(app, ops_all, 4);
	add_grant(app, bad_ops, 2);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "grant 2: unknown operation 'Destroy'");
}
END_TEST

START_TEST(test_check_duplicate_operation)
{
	char *dup_ops[] = {"Encrypt", "Decrypt", "Encrypt"};

	add_grant(app, dup_ops, 3);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg,
			 "grant 1: operation 'Encrypt' is listed twice");
}
END_TEST

START_TEST(test_check_too_many_operations)
{
	char *seven[] = {"Encrypt",	"Decrypt",     "GenerateDataKey", "DescribeKey",
			 "ReEncryptFrom", "ReEncryptTo", "Encrypt"};

	add_grant(app, seven, 6);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	policy.n_grants = 0;
	add_grant(app, seven, 7);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg,
			 "grant 1: 7 operations listed; there are only 6");
}
END_TEST

/*
 * The ReEncrypt grants stand alone: From opens blobs of the key for
 * re-encryption only, To seals under it only, and neither is implied by
 * Decrypt, Encrypt or the other.
 */
START_TEST(test_allows_reencrypt_grants)
{
	char *from[] = {"ReEncryptFrom"};
	char *to[] = {"ReEncryptTo"};
	const char *other = "spiffe://prod.example/ns/batch/sa/rewrap";

	add_grant(app, ops_all, 4);
	add_grant("spiffe://prod.example/ns/batch/*", from, 1);
	add_grant(other, to, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	/* Every other operation does not stand in for either. */
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_REENCRYPT_FROM));
	ck_assert(!kms_policy_allows(&policy, app, KMS_OP_REENCRYPT_TO));
	ck_assert(kms_policy_allows(&policy, other, KMS_OP_REENCRYPT_FROM));
	ck_assert(kms_policy_allows(&policy, other, KMS_OP_REENCRYPT_TO));
	ck_assert(kms_policy_allows(&policy, "spiffe://prod.example/ns/batch/sa/x",
				    KMS_OP_REENCRYPT_FROM));
	ck_assert(!kms_policy_allows(&policy, "spiffe://prod.example/ns/batch/sa/x",
				     KMS_OP_REENCRYPT_TO));
	/* ... and neither stands in for Decrypt or Encrypt. */
	ck_assert(!kms_policy_allows(&policy, other, KMS_OP_DECRYPT));
	ck_assert(!kms_policy_allows(&policy, other, KMS_OP_ENCRYPT));
}
END_TEST

START_TEST(test_check_no_operations)
{
	add_grant(app, NULL, 0);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "grant 1: no operations listed");
}
END_TEST

START_TEST(test_check_bad_principal)
{
	add_grant(app, ops_encrypt, 1);
	add_grant("https://prod.example/x", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(strncmp(err.msg, "grant 2: ", 9), 0);
	ASSERT_MSG("spiffe://");

	/* A node identity never uses a key; another trust domain never authenticates. */
	setup();
	add_grant("spiffe://prod.example/kmsd/node/2", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("only kmsd nodes use");
	setup();
	add_grant(app, ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, "prod.example", &err), KMS_OK);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, "dev.example", &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("not in this cluster's trust domain 'dev.example'");

	setup();
	add_grant("", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("grant 1: the SPIFFE ID is empty");

	setup();
	add_grant("spiffe://td/a b", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("grant 1: 'spiffe://td/a b' is not a SPIFFE ID");
}
END_TEST

START_TEST(test_check_star_in_middle)
{
	add_grant("spiffe://prod.example/ns/*/sa/api", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("grant 1: principal 'spiffe://prod.example/ns/*/sa/api' has a '*' that is not");

	setup();
	add_grant("**", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("not a whole last path segment");

	setup();
	add_grant("*spiffe://td/x", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_check_wildcard_segment_boundary)
{
	/* The example: ".../ns/pay/" + '*' is a segment; ".../ns/pay" + '*' is not. */
	add_grant("spiffe://td/ns/pay/*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, "td", &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, "spiffe://td/ns/pay/sa/x", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, "spiffe://td/ns/payroll/sa/x", KMS_OP_ENCRYPT));

	setup();
	add_grant("spiffe://td/ns/pay*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, "td", &err), KMS_ERR_INVALID);
	ASSERT_MSG("segment boundary");
	/* Accepted by an earlier version, such a stored grant matches nobody. */
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_STORED, NULL, &err), KMS_OK);
	ck_assert(!kms_policy_allows(&policy, "spiffe://td/ns/payroll/sa/x", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, "spiffe://td/ns/pay/sa/x", KMS_OP_ENCRYPT));

	/* The wildcard's prefix must itself be a valid ID. */
	setup();
	add_grant("spiffe://td/ns/../*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("'..'");
}
END_TEST

START_TEST(test_check_wildcard_trust_domain)
{
	/* A wildcard may not span the trust domain. */
	add_grant("spiffe://prod*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("segment boundary");

	setup();
	add_grant("spiffe://*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("is not a SPIFFE ID");

	setup();
	add_grant("spi*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);

	/* The whole trust domain, on its own segment boundary. */
	setup();
	add_grant("spiffe://prod/*", ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	ck_assert(kms_policy_allows(&policy, "spiffe://prod/a", KMS_OP_ENCRYPT));
	ck_assert(!kms_policy_allows(&policy, "spiffe://production/a", KMS_OP_ENCRYPT));
}
END_TEST

START_TEST(test_check_grant_count)
{
	for (int i = 0; i < KMS_POLICY_MAX_GRANTS; i++) {
		snprintf(principals[i], sizeof(principals[i]),
			 "spiffe://td/sa/%d", i);
		add_grant(principals[i], ops_encrypt, 1);
	}
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_OK);
	snprintf(principals[KMS_POLICY_MAX_GRANTS],
		 sizeof(principals[KMS_POLICY_MAX_GRANTS]), "spiffe://td/sa/x");
	add_grant(principals[KMS_POLICY_MAX_GRANTS], ops_encrypt, 1);
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "policy has 65 grants, more than 64");
}
END_TEST

START_TEST(test_check_missing)
{
	ck_assert_int_eq(kms_policy_check(NULL, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("policy is missing");
	add_grant(app, ops_encrypt, 1);
	grant_ptrs[0] = NULL;
	ck_assert_int_eq(kms_policy_check(&policy, KMS_POLICY_NEW, NULL, &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "grant 1: missing");
}
END_TEST

/* --- administrators --- */

START_TEST(test_is_admin)
{
	char *admins[] = {"spiffe://prod.example/ops/alice",
			  "spiffe://prod.example/ops/bob"};

	ck_assert(kms_is_admin(admins, 2, "spiffe://prod.example/ops/bob"));
	ck_assert(kms_is_admin(admins, 2, "spiffe://prod.example/ops/alice"));
	/* Exact only: no prefixes, no wildcards, no near misses. */
	ck_assert(!kms_is_admin(admins, 2, "spiffe://prod.example/ops/bo"));
	ck_assert(!kms_is_admin(admins, 2, "spiffe://prod.example/ops/bobby"));
	ck_assert(!kms_is_admin(admins, 2, "spiffe://prod.example/ops/*"));
	ck_assert(!kms_is_admin(admins, 2, "*"));
	ck_assert(!kms_is_admin(admins, 2, ""));
	ck_assert(!kms_is_admin(admins, 1, "spiffe://prod.example/ops/bob"));
	ck_assert(!kms_is_admin(admins, 2, NULL));
	ck_assert(!kms_is_admin(NULL, 2, "spiffe://prod.example/ops/bob"));
	ck_assert(!kms_is_admin(admins, 0, "spiffe://prod.example/ops/bob"));
}
END_TEST

START_TEST(test_is_admin_wildcard_entry_is_literal)
{
	char *admins[] = {"spiffe://prod.example/ops/*"};

	ck_assert(!kms_is_admin(admins, 1, "spiffe://prod.example/ops/alice"));
}
END_TEST

static Suite *policy_suite(void)
{
	Suite *s = suite_create("policy");
	TCase *tc;

	tc = tcase_create("names");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_op_names);
	tcase_add_test(tc, test_op_parse_unknown);
	tcase_add_test(tc, test_principal_valid);
	tcase_add_test(tc, test_principal_invalid);
	suite_add_tcase(s, tc);

	tc = tcase_create("allows");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_allows_exact);
	tcase_add_test(tc, test_allows_prefix);
	tcase_add_test(tc, test_allows_star_alone);
	tcase_add_test(tc, test_allows_several_grants);
	tcase_add_test(tc, test_deny_by_default);
	tcase_add_test(tc, test_allows_reencrypt_grants);
	suite_add_tcase(s, tc);

	tc = tcase_create("check");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_check_bad_operation);
	tcase_add_test(tc, test_check_duplicate_operation);
	tcase_add_test(tc, test_check_no_operations);
	tcase_add_test(tc, test_check_too_many_operations);
	tcase_add_test(tc, test_check_bad_principal);
	tcase_add_test(tc, test_check_star_in_middle);
	tcase_add_test(tc, test_check_wildcard_segment_boundary);
	tcase_add_test(tc, test_check_wildcard_trust_domain);
	tcase_add_test(tc, test_check_grant_count);
	tcase_add_test(tc, test_check_missing);
	suite_add_tcase(s, tc);

	tc = tcase_create("admin");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_is_admin);
	tcase_add_test(tc, test_is_admin_wildcard_entry_is_literal);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(policy_suite());

	return kms_check_run(sr);
}
