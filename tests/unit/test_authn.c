/* test_authn.c - Check suite for telling services from nodes (authn.c), with a client CA and a node CA made at test time. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity/authn.h"
#include "kms/alloc.h"
#include "softhsm_fixture.h"
#include "test_pki.h"
#include "check_run.h"

#define ASSERT_MSG(err, needle)                                                                   \
	ck_assert_msg(strstr((err).msg, needle) != NULL, "message '%s' lacks '%s'", (err).msg,    \
		      needle)

static char tmp[PATH_MAX];
static char client_ca[PATH_MAX + 32], client_key[PATH_MAX + 32];
static char node_ca[PATH_MAX + 32], node_key[PATH_MAX + 32];
static kms_authn *authn;

static void setup(void)
{
	kms_err err = {0};

	snprintf(tmp, sizeof(tmp), "%s/kms-test-authn-XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	snprintf(client_ca, sizeof(client_ca), "%s/ca.pem", tmp);
	snprintf(client_key, sizeof(client_key), "%s/ca.key", tmp);
	snprintf(node_ca, sizeof(node_ca), "%s/node-ca.pem", tmp);
	snprintf(node_key, sizeof(node_key), "%s/node-ca.key", tmp);
	kms_test_make_ca(client_ca, client_key, "client CA");
	kms_test_make_ca(node_ca, node_key, "node CA");
	ck_assert_int_eq(kms_authn_new("kmsd.dev", node_ca, &authn, &err), KMS_OK);
}

static void teardown(void)
{
	kms_authn_free(authn);
	authn = NULL;
	kms_test_rmtree(tmp);
}

/* Identifies a fresh certificate for uri issued by the client or the node CA. */
static int identify(const char *uri, int by_node_ca, kms_peer *peer, kms_err *err)
{
	kms_test_san san = {KMS_TEST_SAN_URI, uri, 0};
	char pem[PATH_MAX + 16], key[PATH_MAX + 16];
	size_t len;
	char *text;
	int rc;

	snprintf(pem, sizeof(pem), "%s/c.pem", tmp);
	snprintf(key, sizeof(key), "%s/c.key", tmp);
	kms_test_issue_cert(by_node_ca ? node_ca : client_ca, by_node_ca ? node_key : client_key,
			    pem, key, &san, 1, 1);
	text = kms_test_read_file(pem, &len);
	rc = kms_authn_identify(authn, text, len, peer, err);
	kms_free(text);
	return rc;
}

START_TEST(test_service_and_node)
{
	kms_peer p;
	kms_err err = {0};

	ck_assert_int_eq(identify("spiffe://kmsd.dev/ns/demo/sa/app", 0, &p, &err), KMS_OK);
	ck_assert_int_eq(p.kind, KMS_PEER_SERVICE);
	ck_assert_str_eq(p.id.id, "spiffe://kmsd.dev/ns/demo/sa/app");
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/3", 1, &p, &err), KMS_OK);
	ck_assert_int_eq(p.kind, KMS_PEER_NODE);
	ck_assert(p.node_id == 3);
}
END_TEST

START_TEST(test_identities_apart)
{
	kms_peer p;
	kms_err err = {0};

	/* The client CA cannot name a node... */
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/2", 0, &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "not issued by the node CA");
	ck_assert_int_eq(p.kind, KMS_PEER_NONE);
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/anything", 0, &p, &err),
			 KMS_ERR_PERMISSION);
	/* ...and the node CA names nodes only. */
	ck_assert_int_eq(identify("spiffe://kmsd.dev/ns/ops/sa/admin", 1, &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "issues node identities");
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/01", 1, &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "names no node");
	/* Another trust domain is nobody here, whoever signed it. */
	ck_assert_int_eq(identify("spiffe://evil.dev/ns/ops/sa/admin", 0, &p, &err),
			 KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "not in this cluster's trust domain 'kmsd.dev'");
	ck_assert_int_eq(identify("spiffe://evil.dev/kmsd/node/1", 1, &p, &err),
			 KMS_ERR_UNAUTHENTICATED);
	/* Not a certificate at all. */
	ck_assert_int_eq(kms_authn_identify(authn, "junk", 4, &p, &err), KMS_ERR_UNAUTHENTICATED);
	ck_assert_int_eq(kms_authn_identify(authn, NULL, 0, &p, &err), KMS_ERR_UNAUTHENTICATED);
}
END_TEST

START_TEST(test_cache_and_reload)
{
	kms_test_san san = {KMS_TEST_SAN_URI, "spiffe://kmsd.dev/kmsd/node/5", 0};
	char pem[PATH_MAX + 16], key[PATH_MAX + 16];
	kms_peer p;
	kms_err err = {0};
	size_t len;
	char *text;

	snprintf(pem, sizeof(pem), "%s/n5.pem", tmp);
	snprintf(key, sizeof(key), "%s/n5.key", tmp);
	kms_test_issue_cert(node_ca, node_key, pem, key, &san, 1, 1);
	text = kms_test_read_file(pem, &len);
	/* The second answer comes from the cache and is the same. */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_OK);
		ck_assert(p.node_id == 5);
	}
	/* A new node CA: certificates of the old one are no longer nodes. */
	kms_test_make_ca(node_ca, node_key, "node CA 2");
	ck_assert_int_eq(kms_authn_reload(authn, node_ca, &err), KMS_OK);
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_ERR_PERMISSION);
	/* A failed reload keeps the node CA in force. */
	ck_assert_int_eq(kms_authn_reload(authn, "/nonexistent", &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "/nonexistent");
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/6", 1, &p, &err), KMS_OK);
	kms_free(text);
}
END_TEST

START_TEST(test_new_refusals)
{
	kms_authn *a = NULL;
	kms_err err = {0};
	char empty[PATH_MAX + 16];
	FILE *f;

	ck_assert_int_eq(kms_authn_new("kmsd.dev", "/nonexistent", &a, &err), KMS_ERR_CONFIG);
	snprintf(empty, sizeof(empty), "%s/empty.pem", tmp);
	f = fopen(empty, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	ck_assert_int_eq(kms_authn_new("kmsd.dev", empty, &a, &err), KMS_ERR_CONFIG);
	ASSERT_MSG(err, "holds no certificate");
	ck_assert_int_eq(kms_authn_new(NULL, node_ca, &a, &err), KMS_ERR_CONFIG);
	ck_assert_ptr_null(a);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("authn");
	TCase *tc = tcase_create("identify");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_service_and_node);
	tcase_add_test(tc, test_identities_apart);
	tcase_add_test(tc, test_cache_and_reload);
	tcase_add_test(tc, test_new_refusals);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
