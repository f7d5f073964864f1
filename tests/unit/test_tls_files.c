/* test_tls_files.c - Check suite for the node's TLS file set (tls_files.c): what a set must pass to be put in force, the change stamps, and the CRL check of client certificates. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kms/alloc.h"
#include "softhsm_fixture.h"
#include "test_pki.h"
#include "tls/tls_files.h"
#include "check_run.h"

#define ASSERT_MSG(err, needle)                                                                   \
	ck_assert_msg(strstr((err).msg, needle) != NULL, "message '%s' lacks '%s'", (err).msg,    \
		      needle)

static char tmp[PATH_MAX];
static char path[9][PATH_MAX + 32];
enum { CA, CA_KEY, NODE_CA, NODE_CA_KEY, NODE, NODE_KEY, CRL, APP, APP_KEY, N_PATHS };
static kms_config cfg;
static EVP_PKEY *node_pkey;

/* A CRL of ca listing the certificates in revoked (NULL-terminated), next
 * update next_s seconds from now (negative: stale). */
static void write_crl(const char *ca_pem, const char *ca_key, const char *const *revoked,
		      long next_s, const char *out)
{
	X509 *ca = kms_test_read_cert(ca_pem);
	EVP_PKEY *key = kms_test_read_key(ca_key);
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();
	FILE *f;

	ck_assert_int_eq(X509_CRL_set_version(crl, 1), 1);
	ck_assert_int_eq(X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)), 1);
	ck_assert_ptr_nonnull(X509_gmtime_adj(t, -7200));
	ck_assert_int_eq(X509_CRL_set1_lastUpdate(crl, t), 1);
	ck_assert_ptr_nonnull(X509_gmtime_adj(t, next_s));
	ck_assert_int_eq(X509_CRL_set1_nextUpdate(crl, t), 1);
	for (size_t i = 0; revoked != NULL && revoked[i] != NULL; i++) {
		X509 *c = kms_test_read_cert(revoked[i]);
		X509_REVOKED *r = X509_REVOKED_new();

		ck_assert_int_eq(X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(c)), 1);
		ck_assert_ptr_nonnull(X509_gmtime_adj(t, -3600));
		ck_assert_int_eq(X509_REVOKED_set_revocationDate(r, t), 1);
		ck_assert_int_eq(X509_CRL_add0_revoked(crl, r), 1);
		X509_free(c);
	}
	ck_assert_int_eq(X509_CRL_sort(crl), 1);
	ck_assert_int_gt(X509_CRL_sign(crl, key, EVP_sha256()), 0);
	f = fopen(out, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(PEM_write_X509_CRL(f, crl), 1);
	ck_assert_int_eq(fclose(f), 0);
	ASN1_TIME_free(t);
	X509_CRL_free(crl);
	EVP_PKEY_free(key);
	X509_free(ca);
}

static void write_text(const char *p, const char *text)
{
	FILE *f = fopen(p, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(text, f), 0);
	ck_assert_int_eq(fclose(f), 0);
}

static void issue(int ca, const char *uri, int pem, int key)
{
	kms_test_san san = {KMS_TEST_SAN_URI, uri, 0};

	kms_test_issue_cert(path[ca], path[ca + 1], path[pem], path[key], &san, 1, 1);
}

static void setup(void)
{
	static const char *const names[] = {"ca.pem",  "ca.key",  "node-ca.pem",
					    "node-ca.key", "node.pem", "node.key",
					    "crl.pem", "app.pem", "app.key"};

	snprintf(tmp, sizeof(tmp), "%s/kms-test-tls-files-XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	for (int i = 0; i < N_PATHS; i++)
		snprintf(path[i], sizeof(path[i]), "%s/%s", tmp, names[i]);
	kms_test_make_ca(path[CA], path[CA_KEY], "client CA");
	kms_test_make_ca(path[NODE_CA], path[NODE_CA_KEY], "node CA");
	issue(NODE_CA, "spiffe://kmsd.dev/kmsd/node/1", NODE, NODE_KEY);
	write_crl(path[CA], path[CA_KEY], NULL, 3600, path[CRL]);
	node_pkey = kms_test_read_key(path[NODE_KEY]);
	memset(&cfg, 0, sizeof(cfg));
	cfg.node_id = 1;
	cfg.trust_domain = (char *)"kmsd.dev";
	cfg.tls_key_uri = (char *)"pkcs11:object=kmsd-node-tls";
	cfg.ca_file = path[CA];
	cfg.node_ca_file = path[NODE_CA];
	cfg.cert_file = path[NODE];
	cfg.crl_file = path[CRL];
}

static void teardown(void)
{
	EVP_PKEY_free(node_pkey);
	node_pkey = NULL;
	kms_test_rmtree(tmp);
}

static int load(kms_tls_files *f, kms_err *err)
{
	return kms_tls_files_load(&cfg, node_pkey, f, err);
}

START_TEST(a_good_set_loads)
{
	kms_tls_files f;
	kms_err err = {0};

	ck_assert_msg(load(&f, &err) == KMS_OK, "%s", err.msg);
	ck_assert_ptr_nonnull(f.cert_chain);
	ck_assert_ptr_nonnull(f.crl);
	ck_assert(strstr(f.summary, "node certificate serial ") != NULL);
	ck_assert(strstr(f.summary, "client CRL of 0 revoked") != NULL);
	kms_tls_files_free(&f);
	/* Without a CRL configured. */
	cfg.crl_file = NULL;
	ck_assert_msg(load(&f, &err) == KMS_OK, "%s", err.msg);
	ck_assert_ptr_null(f.crl);
	kms_tls_files_free(&f);
}
END_TEST

START_TEST(node_certificate_rules)
{
	kms_tls_files f;
	kms_err err = {0};
	char other_key[PATH_MAX + 32];

	/* Not PEM. */
	write_text(path[NODE], "garbage\n");
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "holds no certificate");
	/* Another node's name. */
	issue(NODE_CA, "spiffe://kmsd.dev/kmsd/node/2", NODE, NODE_KEY);
	EVP_PKEY_free(node_pkey);
	node_pkey = kms_test_read_key(path[NODE_KEY]);
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "not spiffe://kmsd.dev/kmsd/node/1");
	/* From the client CA. */
	issue(CA, "spiffe://kmsd.dev/kmsd/node/1", NODE, NODE_KEY);
	EVP_PKEY_free(node_pkey);
	node_pkey = kms_test_read_key(path[NODE_KEY]);
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "does not verify against the node CA");
	/* For another key than the node's. */
	snprintf(other_key, sizeof(other_key), "%s/other.key", tmp);
	issue(NODE_CA, "spiffe://kmsd.dev/kmsd/node/1", NODE, NODE_KEY);
	EVP_PKEY_free(node_pkey);
	kms_test_issue_cert(path[NODE_CA], path[NODE_CA_KEY], path[APP], other_key, NULL, 0, 1);
	node_pkey = kms_test_read_key(other_key);
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "is not for this node's key in the HSM");
}
END_TEST

START_TEST(ca_and_crl_rules)
{
	kms_tls_files f;
	kms_err err = {0};

	write_text(path[CA], "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "does not parse");
	kms_test_make_ca(path[CA], path[CA_KEY], "client CA");
	/* A CRL that does not parse, one by the node CA, a stale one. */
	write_text(path[CRL], "garbage\n");
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "holds no CRL that parses");
	write_crl(path[NODE_CA], path[NODE_CA_KEY], NULL, 3600, path[CRL]);
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "is not signed by the client CA");
	write_crl(path[CA], path[CA_KEY], NULL, -60, path[CRL]);
	ck_assert_int_eq(load(&f, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "is stale");
	write_crl(path[CA], path[CA_KEY], NULL, 3600, path[CRL]);
	ck_assert_msg(load(&f, &err) == KMS_OK, "%s", err.msg);
	kms_tls_files_free(&f);
}
END_TEST

static int crl_check(const char *crl_path, const char *pem_path, kms_err *err)
{
	FILE *fp = fopen(crl_path, "r");
	X509_CRL *crl;
	char *pem;
	size_t len;
	int rc;

	ck_assert_ptr_nonnull(fp);
	crl = PEM_read_X509_CRL(fp, NULL, NULL, NULL);
	fclose(fp);
	ck_assert_ptr_nonnull(crl);
	pem = kms_test_read_file(pem_path, &len);
	rc = kms_tls_crl_check(crl, pem, len, err);
	kms_free(pem);
	X509_CRL_free(crl);
	return rc;
}

START_TEST(revoked_clients_are_refused)
{
	const char *revoked[] = {path[APP], NULL};
	char other[PATH_MAX + 32], other_key[PATH_MAX + 32];
	kms_err err = {0};

	snprintf(other, sizeof(other), "%s/other.pem", tmp);
	snprintf(other_key, sizeof(other_key), "%s/other.key", tmp);
	issue(CA, "spiffe://kmsd.dev/ns/demo/sa/app", APP, APP_KEY);
	kms_test_issue_cert(path[CA], path[CA_KEY], other, other_key, NULL, 0, 1);
	write_crl(path[CA], path[CA_KEY], revoked, 3600, path[CRL]);
	ck_assert_int_eq(crl_check(path[CRL], path[APP], &err), KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "revoked");
	/* Another certificate of the same CA, and one of the node CA, pass. */
	ck_assert_int_eq(crl_check(path[CRL], other, &err), KMS_OK);
	issue(NODE_CA, "spiffe://kmsd.dev/kmsd/node/1", NODE, NODE_KEY);
	ck_assert_int_eq(crl_check(path[CRL], path[NODE], &err), KMS_OK);
	/* No CRL, nothing to check. */
	ck_assert_int_eq(kms_tls_crl_check(NULL, "x", 1, &err), KMS_OK);
	/* A stale CRL vouches for nothing of its CA. */
	write_crl(path[CA], path[CA_KEY], NULL, -60, path[CRL]);
	ck_assert_int_eq(crl_check(path[CRL], other, &err), KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "stale");
	ck_assert_int_eq(crl_check(path[CRL], path[NODE], &err), KMS_OK);
}
END_TEST

START_TEST(stamps_see_every_kind_of_change)
{
	kms_tls_stamp a, b;
	char moved[PATH_MAX + 32];

	kms_tls_files_stamp(&cfg, &a);
	kms_tls_files_stamp(&cfg, &b);
	ck_assert(kms_tls_stamp_equal(&a, &b));
	/* Rewritten in place (same inode). */
	write_crl(path[CA], path[CA_KEY], NULL, 7200, path[CRL]);
	kms_tls_files_stamp(&cfg, &b);
	ck_assert(!kms_tls_stamp_equal(&a, &b));
	/* Renamed over. */
	a = b;
	snprintf(moved, sizeof(moved), "%s/new.pem", tmp);
	kms_test_make_ca(moved, path[CA_KEY], "client CA");
	ck_assert_int_eq(rename(moved, path[CA]), 0);
	kms_tls_files_stamp(&cfg, &b);
	ck_assert(!kms_tls_stamp_equal(&a, &b));
	/* Gone. */
	a = b;
	ck_assert_int_eq(unlink(path[CRL]), 0);
	kms_tls_files_stamp(&cfg, &b);
	ck_assert(!kms_tls_stamp_equal(&a, &b));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tls_files");
	TCase *tc = tcase_create("core");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, a_good_set_loads);
	tcase_add_test(tc, node_certificate_rules);
	tcase_add_test(tc, ca_and_crl_rules);
	tcase_add_test(tc, revoked_clients_are_refused);
	tcase_add_test(tc, stamps_see_every_kind_of_change);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
