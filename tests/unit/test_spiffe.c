/* test_spiffe.c - Check suite for the SPIFFE ID parser, node ids and X509-SVIDs (spiffe.c), and host:port (hostport.c). */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/alloc.h"
#include "kms/hostport.h"
#include "kms/spiffe.h"
#include "softhsm_fixture.h"
#include "test_pki.h"
#include "check_run.h"

#define ASSERT_MSG(err, needle)                                                                   \
	ck_assert_msg(strstr((err).msg, needle) != NULL, "message '%s' lacks '%s'", (err).msg,    \
		      needle)

/* --- parsing --- */

START_TEST(test_parse_valid)
{
	kms_spiffe_id id;
	kms_err err = {0};

	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://kmsd.dev/ns/a-b/sa/x_y.z", 1, &id, &err),
			 KMS_OK);
	ck_assert_str_eq(id.id, "spiffe://kmsd.dev/ns/a-b/sa/x_y.z");
	ck_assert_uint_eq(id.td_len, 8);
	ck_assert_str_eq(kms_spiffe_path(&id), "/ns/a-b/sa/x_y.z");
	ck_assert(kms_spiffe_in_trust_domain(&id, "kmsd.dev"));
	ck_assert(!kms_spiffe_in_trust_domain(&id, "kmsd.de"));
	ck_assert(!kms_spiffe_in_trust_domain(&id, "kmsd.devx"));
	ck_assert(!kms_spiffe_is_node_path(&id));
	/* A trust domain alone, where a path is not needed. */
	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://td_1", 0, &id, &err), KMS_OK);
	ck_assert_str_eq(kms_spiffe_path(&id), "");
	/* Segments may hold dots, as long as they are not "." or "..". */
	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://t/.a/a./...", 1, &id, &err), KMS_OK);
}
END_TEST

START_TEST(test_parse_invalid)
{
	static const struct {
		const char *id;
		const char *why;
	} bad[] = {
	    {"", "empty"},
	    {"https://td/x", "does not start with spiffe://"},
	    {"SPIFFE://td/x", "does not start with spiffe://"},
	    {"spiffe:/td/x", "does not start with spiffe://"},
	    {"spiffe://", "trust domain is empty"},
	    {"spiffe:///x", "trust domain is empty"},
	    {"spiffe://Td/x", "upper-case"},
	    {"spiffe://td:8443/x", "port"},
	    {"spiffe://user@td/x", "user info"},
	    {"spiffe://t!d/x", "outside [a-z0-9.-_]"},
	    {"spiffe://td", "path is empty"},
	    {"spiffe://td/", "ends with '/'"},
	    {"spiffe://td/a/", "ends with '/'"},
	    {"spiffe://td//a", "empty segment"},
	    {"spiffe://td/./a", "'.' or '..'"},
	    {"spiffe://td/a/..", "'.' or '..'"},
	    {"spiffe://td/a%2Fb", "percent-encoded"},
	    {"spiffe://td/a?x=1", "no query or fragment"},
	    {"spiffe://td/a#f", "no query or fragment"},
	    {"spiffe://td/a b", "outside [A-Za-z0-9.-_]"},
	    {"spiffe://td/a\tb", "outside [A-Za-z0-9.-_]"},
	    {"spiffe://td/a*", "outside [A-Za-z0-9.-_]"},
	};
	kms_spiffe_id id;
	kms_err err = {0};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(kms_spiffe_parse_str(bad[i].id, 1, &id, &err) == KMS_ERR_INVALID,
			      "accepted '%s'", bad[i].id);
		ASSERT_MSG(err, bad[i].why);
		/* Control bytes never reach the message. */
		ck_assert_ptr_null(strchr(err.msg, '\t'));
	}
	ck_assert_int_eq(kms_spiffe_parse_str(NULL, 1, &id, &err), KMS_ERR_INVALID);
	ASSERT_MSG(err, "missing");
}
END_TEST

START_TEST(test_parse_nul_and_length)
{
	static const char with_nul[] = "spiffe://td/acme\0evil";
	char big[KMS_SPIFFE_ID_MAX + 2];
	kms_spiffe_id id;
	kms_err err = {0};

	/* The length given counts: a NUL inside is refused, not a cut. */
	ck_assert_int_eq(kms_spiffe_parse(with_nul, sizeof(with_nul) - 1, 1, &id, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "NUL byte");
	ck_assert_int_eq(kms_spiffe_parse(with_nul, 16, 1, &id, &err), KMS_OK);
	ck_assert_str_eq(id.id, "spiffe://td/acme");

	memset(big, 'a', sizeof(big));
	memcpy(big, "spiffe://td/", 12);
	ck_assert_int_eq(kms_spiffe_parse(big, KMS_SPIFFE_ID_MAX, 1, &id, &err), KMS_OK);
	ck_assert_int_eq(kms_spiffe_parse(big, KMS_SPIFFE_ID_MAX + 1, 1, &id, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG(err, "longer than the 2048 allowed");
	/* 255 bytes of trust domain, and 256. */
	memset(big, 'a', sizeof(big));
	memcpy(big, "spiffe://", 9);
	memcpy(big + 9 + 255, "/x", 2);
	ck_assert_int_eq(kms_spiffe_parse(big, 9 + 255 + 2, 1, &id, &err), KMS_OK);
	big[9 + 255] = 'a';
	memcpy(big + 9 + 256, "/x", 2);
	ck_assert_int_eq(kms_spiffe_parse(big, 9 + 256 + 2, 1, &id, &err), KMS_ERR_INVALID);
	ASSERT_MSG(err, "longer than 255");
}
END_TEST

START_TEST(test_trust_domain_parse)
{
	char td[KMS_TRUST_DOMAIN_MAX + 1];
	kms_err err = {0};

	ck_assert_int_eq(kms_trust_domain_parse("kmsd.dev", td, sizeof(td), &err), KMS_OK);
	ck_assert_str_eq(td, "kmsd.dev");
	ck_assert_int_eq(kms_trust_domain_parse("spiffe://kmsd.dev", td, sizeof(td), &err), KMS_OK);
	ck_assert_str_eq(td, "kmsd.dev");
	ck_assert_int_eq(kms_trust_domain_parse("spiffe://kmsd.dev/x", td, sizeof(td), &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_trust_domain_parse("", td, sizeof(td), &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_trust_domain_parse("KMSD", td, sizeof(td), &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_trust_domain_parse("kmsd.dev", td, 4, &err), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_node_ids)
{
	static const char *const bad[] = {
	    "spiffe://td/kmsd/node/0", "spiffe://td/kmsd/node/01", "spiffe://td/kmsd/node/x",
	    "spiffe://td/kmsd/node/1/x", "spiffe://td/kmsd/nodes/1",
	    "spiffe://td/kmsd/node/18446744073709551616", "spiffe://td/ns/kmsd/node/1",
	    "spiffe://td/kmsd/node/-2"};
	kms_spiffe_id id;
	kms_err err = {0};
	uint64_t n = 0;

	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://td/kmsd/node/18446744073709551615", 1, &id,
					      &err),
			 KMS_OK);
	ck_assert(kms_spiffe_is_node_path(&id));
	ck_assert_int_eq(kms_spiffe_node_id(&id, &n), KMS_OK);
	ck_assert(n == UINT64_MAX);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(kms_spiffe_parse_str(bad[i], 1, &id, &err), KMS_OK);
		ck_assert_msg(kms_spiffe_node_id(&id, &n) == KMS_ERR_INVALID, "accepted %s",
			      bad[i]);
	}
	/* Everything under /kmsd/ is reserved for nodes, node ids or not. */
	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://td/kmsd/other", 1, &id, &err), KMS_OK);
	ck_assert(kms_spiffe_is_node_path(&id));
	ck_assert_int_eq(kms_spiffe_parse_str("spiffe://td/kmsdx/a", 1, &id, &err), KMS_OK);
	ck_assert(!kms_spiffe_is_node_path(&id));

	ck_assert_int_eq(kms_spiffe_node_format("kmsd.dev", 7, &id, &err), KMS_OK);
	ck_assert_str_eq(id.id, "spiffe://kmsd.dev/kmsd/node/7");
	ck_assert_int_eq(kms_spiffe_node_format("kmsd.dev", 0, &id, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_spiffe_node_format("Bad", 1, &id, &err), KMS_ERR_INVALID);
}
END_TEST

/* --- X509-SVID: certificates made at test time --- */

static char tmp[PATH_MAX], ca_pem[PATH_MAX + 16], ca_key[PATH_MAX + 16];

static void pki_setup(void)
{
	snprintf(tmp, sizeof(tmp), "%s/kms-test-spiffe-XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", tmp);
	snprintf(ca_key, sizeof(ca_key), "%s/ca.key", tmp);
	kms_test_make_ca(ca_pem, ca_key, "test CA");
}

static void pki_teardown(void)
{
	kms_test_rmtree(tmp);
}

/* The SVID of a fresh certificate with these SANs: its status and *id. */
static int svid_of(const kms_test_san *sans, size_t n, kms_spiffe_id *id, kms_err *err)
{
	char pem[PATH_MAX + 16], key[PATH_MAX + 16];
	size_t len;
	char *text;
	int rc;

	snprintf(pem, sizeof(pem), "%s/c.pem", tmp);
	snprintf(key, sizeof(key), "%s/c.key", tmp);
	kms_test_issue_cert(ca_pem, ca_key, pem, key, sans, n, 1);
	text = kms_test_read_file(pem, &len);
	rc = kms_svid_from_pem(text, len, id, err);
	kms_free(text);
	return rc;
}

START_TEST(test_svid_one_uri)
{
	static const kms_test_san one[] = {{KMS_TEST_SAN_URI, "spiffe://td/ns/a/sa/b", 0},
					   {KMS_TEST_SAN_DNS, "spiffe://td/ns/ops/sa/admin", 0},
					   {KMS_TEST_SAN_IP, "127.0.0.1", 0}};
	kms_spiffe_id id;
	kms_err err = {0};

	/* DNS and IP SANs beside the URI SAN do not count. */
	ck_assert_int_eq(svid_of(one, 3, &id, &err), KMS_OK);
	ck_assert_str_eq(id.id, "spiffe://td/ns/a/sa/b");
}
END_TEST

START_TEST(test_svid_refusals)
{
	static const char nul_uri[] = "spiffe://td/acme\0evil";
	static const struct {
		kms_test_san sans[2];
		size_t n;
		const char *why;
	} bad[] = {
	    {{{KMS_TEST_SAN_DNS, "spiffe://td/ns/ops/sa/admin", 0}}, 1, "no URI SAN"},
	    {{{KMS_TEST_SAN_EMAIL, "spiffe://td/ns/ops/sa/admin", 0}}, 1, "no URI SAN"},
	    {{{KMS_TEST_SAN_IP, "10.0.0.1", 0}}, 1, "no URI SAN"},
	    {{{KMS_TEST_SAN_URI, "spiffe://td/a", 0}, {KMS_TEST_SAN_URI, "spiffe://td/b", 0}},
	     2,
	     "2 URI SANs"},
	    {{{KMS_TEST_SAN_URI, nul_uri, sizeof(nul_uri) - 1}}, 1, "NUL byte"},
	    {{{KMS_TEST_SAN_URI, "https://td/a", 0}}, 1, "is not a spiffe:// ID"},
	    {{{KMS_TEST_SAN_URI, "spiffe://td/a/../b", 0}}, 1, "'.' or '..'"},
	    {{{KMS_TEST_SAN_URI, "spiffe://TD/a", 0}}, 1, "upper-case"},
	    {{{KMS_TEST_SAN_URI, "spiffe://td", 0}}, 1, "path is empty"},
	    {{{KMS_TEST_SAN_URI, "spiffe://td/a%20b", 0}}, 1, "percent-encoded"},
	};
	kms_spiffe_id id;
	kms_err err = {0};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(svid_of(bad[i].sans, bad[i].n, &id, &err) ==
				      KMS_ERR_UNAUTHENTICATED,
			      "case %zu accepted", i);
		ASSERT_MSG(err, bad[i].why);
	}
	/* No SAN extension at all. */
	ck_assert_int_eq(svid_of(NULL, 0, &id, &err), KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "no URI SAN");
	/* Not a certificate. */
	ck_assert_int_eq(kms_svid_from_pem("garbage", 7, &id, &err), KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "does not parse");
	ck_assert_int_eq(kms_svid_from_pem(NULL, 0, &id, &err), KMS_ERR_UNAUTHENTICATED);
}
END_TEST

/* --- host:port --- */

START_TEST(test_hostport)
{
	static const char *const good[] = {"127.0.0.1:7401", "node-1.example:1", "[::1]:65535",
					   "h_1:80"};
	static const struct {
		const char *s;
		const char *why;
	} bad[] = {
	    {"", "empty"},
	    {"7401", "not HOST:PORT"},
	    {":7401", "not HOST:PORT"},
	    {"h:", "port must be"},
	    {"h:0", "port must be"},
	    {"h:65536", "port must be"},
	    {"h:070", "port must be"},
	    {"h:+1", "port must be"},
	    {"h:1x", "port must be"},
	    {"h o:1", "outside [A-Za-z0-9._-]"},
	    {"h\n:1", "outside [A-Za-z0-9._-]"},
	    {"[::1:1", "[ADDRESS]:PORT"},
	    {"[::g]:1", "IPv6 address"},
	};
	char big[KMS_HOSTPORT_MAX + 8];
	kms_err err = {0};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(kms_hostport_check(good[i], "addr", &err) == KMS_OK, "%s: %s",
			      good[i], err.msg);
	}
	/* IPv6 zone ids are not taken. */
	ck_assert_int_eq(kms_hostport_check("[fe80::1%x]:1", "addr", &err), KMS_ERR_INVALID);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(kms_hostport_check(bad[i].s, "addr", &err) == KMS_ERR_INVALID,
			      "accepted '%s'", bad[i].s);
		ASSERT_MSG(err, bad[i].why);
		ASSERT_MSG(err, "addr");
	}
	ck_assert_int_eq(kms_hostport_check(NULL, "addr", &err), KMS_ERR_INVALID);
	memset(big, 'a', sizeof(big));
	memcpy(big + KMS_HOSTPORT_MAX - 2, ":1", 3);
	ck_assert_int_eq(kms_hostport_check(big, "addr", &err), KMS_OK);
	memset(big, 'a', sizeof(big));
	memcpy(big + KMS_HOSTPORT_MAX - 1, ":1", 3);
	ck_assert_int_eq(kms_hostport_check(big, "addr", &err), KMS_ERR_INVALID);
	ASSERT_MSG(err, "longer than 255");
	/* The gRPC listener also takes a Unix socket; Raft never does. */
	ck_assert_int_eq(kms_hostport_check_listen("unix:/run/kmsd.sock", "l", &err), KMS_OK);
	ck_assert_int_eq(kms_hostport_check_listen("unix:", "l", &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_hostport_check_listen("unix:/a\tb", "l", &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_hostport_check_listen("h:1", "l", &err), KMS_OK);
	ck_assert_int_eq(kms_hostport_check("unix:/run/kmsd.sock", "l", &err), KMS_ERR_INVALID);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("spiffe");
	TCase *tc = tcase_create("parse");
	SRunner *sr;

	tcase_add_test(tc, test_parse_valid);
	tcase_add_test(tc, test_parse_invalid);
	tcase_add_test(tc, test_parse_nul_and_length);
	tcase_add_test(tc, test_trust_domain_parse);
	tcase_add_test(tc, test_node_ids);
	tcase_add_test(tc, test_hostport);
	suite_add_tcase(s, tc);
	tc = tcase_create("svid");
	tcase_add_checked_fixture(tc, pki_setup, pki_teardown);
	tcase_add_test(tc, test_svid_one_uri);
	tcase_add_test(tc, test_svid_refusals);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
