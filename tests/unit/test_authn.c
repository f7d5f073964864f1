/* test_authn.c - Check suite for telling services from nodes and from linked regions' nodes (authn.c), with a client CA, a node CA and regions' node CAs made at test time. */
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
/* The node CAs of two linked regions, "eu-west" and "us-east". */
static char eu_ca[PATH_MAX + 32], eu_key[PATH_MAX + 32];
static char us_ca[PATH_MAX + 32], us_key[PATH_MAX + 32];
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
	snprintf(eu_ca, sizeof(eu_ca), "%s/eu-ca.pem", tmp);
	snprintf(eu_key, sizeof(eu_key), "%s/eu-ca.key", tmp);
	snprintf(us_ca, sizeof(us_ca), "%s/us-ca.pem", tmp);
	snprintf(us_key, sizeof(us_key), "%s/us-ca.key", tmp);
	kms_test_make_ca(eu_ca, eu_key, "eu-west node CA");
	kms_test_make_ca(us_ca, us_key, "us-east node CA");
	ck_assert_int_eq(kms_authn_new("kmsd.dev", node_ca, &authn, &err), KMS_OK);
}

static void teardown(void)
{
	kms_authn_free(authn);
	authn = NULL;
	kms_test_rmtree(tmp);
}

/* A fresh certificate for uri issued by ca_pem/ca_key: its PEM (kms_free)
 * and length. */
static char *issue(const char *ca_pem, const char *ca_key, const char *uri, size_t *len)
{
	kms_test_san san = {KMS_TEST_SAN_URI, uri, 0};
	char pem[PATH_MAX + 16], key[PATH_MAX + 16];

	snprintf(pem, sizeof(pem), "%s/c.pem", tmp);
	snprintf(key, sizeof(key), "%s/c.key", tmp);
	kms_test_issue_cert(ca_pem, ca_key, pem, key, &san, 1, 1);
	return kms_test_read_file(pem, len);
}

/* Identifies a fresh certificate for uri issued by ca_pem/ca_key. */
static int identify_by(const char *ca_pem, const char *ca_key, const char *uri, kms_peer *peer,
		       kms_err *err)
{
	size_t len;
	char *text = issue(ca_pem, ca_key, uri, &len);
	int rc = kms_authn_identify(authn, text, len, peer, err);

	kms_free(text);
	return rc;
}

/* Identifies a fresh certificate for uri issued by the client or the node CA. */
static int identify(const char *uri, int by_node_ca, kms_peer *peer, kms_err *err)
{
	return identify_by(by_node_ca ? node_ca : client_ca, by_node_ca ? node_key : client_key,
			   uri, peer, err);
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

/* --- linked regions --- */

/* The PEM files of the regions' node CAs, read per test (free_region_cas). */
static char *eu_pem, *us_pem;
static size_t eu_len, us_len;

static void read_region_cas(void)
{
	eu_pem = kms_test_read_file(eu_ca, &eu_len);
	us_pem = kms_test_read_file(us_ca, &us_len);
}

static void free_region_cas(void)
{
	kms_free(eu_pem);
	kms_free(us_pem);
	eu_pem = us_pem = NULL;
}

/* Links eu-west (trust domain eu_td) alone. */
static void link_eu(const char *eu_td)
{
	kms_authn_region r = {"eu-west", eu_td, eu_pem, eu_len};
	kms_err err = {0};

	ck_assert_msg(kms_authn_set_regions(authn, &r, 1, &err) == KMS_OK, "%s", err.msg);
}

/* Links eu-west (eu.kmsd.dev) and us-east (us.kmsd.dev). */
static void link_both(void)
{
	kms_authn_region r[] = {{"eu-west", "eu.kmsd.dev", eu_pem, eu_len},
				{"us-east", "spiffe://us.kmsd.dev", us_pem, us_len}};
	kms_err err = {0};

	ck_assert_msg(kms_authn_set_regions(authn, r, 2, &err) == KMS_OK, "%s", err.msg);
}

static void assert_region_node(const kms_peer *p, const char *id, const char *region,
			       uint64_t node)
{
	ck_assert_int_eq(p->kind, KMS_PEER_REGION);
	ck_assert_str_eq(p->id.id, id);
	ck_assert_str_eq(p->region, region);
	ck_assert(p->node_id == node);
}

static void assert_refused(const kms_peer *p)
{
	ck_assert_int_eq(p->kind, KMS_PEER_NONE);
	ck_assert_str_eq(p->region, "");
	ck_assert(p->node_id == 0);
}

START_TEST(test_region_node)
{
	kms_peer p;
	kms_err err = {0};

	read_region_cas();
	link_both();
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://eu.kmsd.dev/kmsd/node/4", &p, &err),
			 KMS_OK);
	assert_region_node(&p, "spiffe://eu.kmsd.dev/kmsd/node/4", "eu-west", 4);
	ck_assert_int_eq(identify_by(us_ca, us_key, "spiffe://us.kmsd.dev/kmsd/node/1", &p, &err),
			 KMS_OK);
	assert_region_node(&p, "spiffe://us.kmsd.dev/kmsd/node/1", "us-east", 1);
	/* Our own nodes and services are what they were. */
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/3", 1, &p, &err), KMS_OK);
	ck_assert_int_eq(p.kind, KMS_PEER_NODE);
	ck_assert_str_eq(p.region, "");
	ck_assert_int_eq(identify("spiffe://kmsd.dev/ns/demo/sa/app", 0, &p, &err), KMS_OK);
	ck_assert_int_eq(p.kind, KMS_PEER_SERVICE);
	free_region_cas();
}
END_TEST

/* One certificate of eu-west's node 4, before, while and after the link. */
START_TEST(test_region_link_and_unlink)
{
	kms_peer p;
	kms_err err = {0};
	size_t len;
	char *text = issue(eu_ca, eu_key, "spiffe://eu.kmsd.dev/kmsd/node/4", &len);

	read_region_cas();
	/* Not linked: another trust domain is nobody here (and the answer is
	 * cached). */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err),
				 KMS_ERR_UNAUTHENTICATED);
		ASSERT_MSG(err, "not in this cluster's trust domain");
		assert_refused(&p);
	}
	link_eu("eu.kmsd.dev");
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_OK);
		assert_region_node(&p, "spiffe://eu.kmsd.dev/kmsd/node/4", "eu-west", 4);
	}
	/* Another set in force: eu-west is no longer linked. */
	{
		kms_authn_region us = {"us-east", "us.kmsd.dev", us_pem, us_len};

		ck_assert_int_eq(kms_authn_set_regions(authn, &us, 1, &err), KMS_OK);
	}
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_ERR_UNAUTHENTICATED);
	assert_refused(&p);
	link_eu("eu.kmsd.dev");
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_OK);
	/* Unlinked: the cached answer is forgotten. */
	ck_assert_int_eq(kms_authn_set_regions(authn, NULL, 0, &err), KMS_OK);
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_ERR_UNAUTHENTICATED);
	assert_refused(&p);
	kms_free(text);
	free_region_cas();
}
END_TEST

/* A region whose nodes share our trust domain: its node CA alone tells its
 * nodes from ours, and never makes one of them ours. */
START_TEST(test_region_in_our_trust_domain)
{
	kms_peer p;
	kms_err err = {0};
	size_t len;
	char *text = issue(eu_ca, eu_key, "spiffe://kmsd.dev/kmsd/node/2", &len);

	read_region_cas();
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "not issued by the node CA");
	link_eu("kmsd.dev");
	ck_assert_int_eq(kms_authn_identify(authn, text, len, &p, &err), KMS_OK);
	assert_region_node(&p, "spiffe://kmsd.dev/kmsd/node/2", "eu-west", 2);
	/* Our node 2 is still ours, and eu-west's CA names no service. */
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/2", 1, &p, &err), KMS_OK);
	ck_assert_int_eq(p.kind, KMS_PEER_NODE);
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://kmsd.dev/ns/ops/sa/admin", &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "node CA of linked region 'eu-west'");
	assert_refused(&p);
	/* The client CA still cannot name a node in the shared trust domain. */
	ck_assert_int_eq(identify("spiffe://kmsd.dev/kmsd/node/2", 0, &p, &err),
			 KMS_ERR_PERMISSION);
	assert_refused(&p);
	kms_free(text);
	free_region_cas();
}
END_TEST

START_TEST(test_region_refusals)
{
	char twin_ca[PATH_MAX + 32], twin_key[PATH_MAX + 32];
	kms_peer p;
	kms_err err = {0};

	read_region_cas();
	link_both();
	/* A region's node CA names its own nodes only: not a service... */
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://eu.kmsd.dev/ns/ops/sa/admin", &p,
				     &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "the node CA of linked region 'eu-west' issued a certificate for");
	ASSERT_MSG(err, "spiffe://eu.kmsd.dev/kmsd/node/<id>");
	assert_refused(&p);
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://eu.kmsd.dev/kmsd/admin", &p, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://eu.kmsd.dev/kmsd/node/01", &p, &err),
			 KMS_ERR_PERMISSION);
	assert_refused(&p);
	/* ...not a node or a service of ours (its trust domain differs)... */
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://kmsd.dev/kmsd/node/4", &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "linked region 'eu-west'");
	assert_refused(&p);
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://kmsd.dev/ns/ops/sa/admin", &p, &err),
			 KMS_ERR_PERMISSION);
	assert_refused(&p);
	/* ...not a node of another linked region... */
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://us.kmsd.dev/kmsd/node/1", &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "linked region 'eu-west'");
	/* ...and nothing of an unlinked trust domain. */
	ck_assert_int_eq(identify_by(eu_ca, eu_key, "spiffe://evil.dev/kmsd/node/1", &p, &err),
			 KMS_ERR_PERMISSION);
	/* A region's node identity from any other CA is an impostor. */
	ck_assert_int_eq(identify("spiffe://eu.kmsd.dev/kmsd/node/4", 1, &p, &err),
			 KMS_ERR_UNAUTHENTICATED); /* our node CA: our rules, as before */
	assert_refused(&p);
	ck_assert_int_eq(identify("spiffe://eu.kmsd.dev/kmsd/node/4", 0, &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "not issued by that region's node CA");
	ASSERT_MSG(err, "'eu-west'");
	assert_refused(&p);
	ck_assert_int_eq(identify_by(us_ca, us_key, "spiffe://eu.kmsd.dev/kmsd/node/4", &p, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "linked region 'us-east'");
	/* A CA with eu-west's CA's name but another key is not eu-west's. */
	snprintf(twin_ca, sizeof(twin_ca), "%s/twin-ca.pem", tmp);
	snprintf(twin_key, sizeof(twin_key), "%s/twin-ca.key", tmp);
	kms_test_make_ca(twin_ca, twin_key, "eu-west node CA");
	ck_assert_int_eq(identify_by(twin_ca, twin_key, "spiffe://eu.kmsd.dev/kmsd/node/4", &p,
				     &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG(err, "not issued by that region's node CA");
	/* A service of a region's trust domain is nobody here. */
	ck_assert_int_eq(identify("spiffe://eu.kmsd.dev/ns/demo/sa/app", 0, &p, &err),
			 KMS_ERR_UNAUTHENTICATED);
	ASSERT_MSG(err, "not in this cluster's trust domain");
	free_region_cas();
}
END_TEST

/* A set refused leaves the one before in force. */
START_TEST(test_set_regions_refusals)
{
	const char *eu4 = "spiffe://eu.kmsd.dev/kmsd/node/4";
	char *node_pem;
	size_t node_len;
	kms_peer p;
	kms_err err = {0};
	struct {
		kms_authn_region r[2];
		size_t n;
		const char *needle;
	} bad[] = {
		{{{"us-east", "us.kmsd.dev", "junk", 4}},
		 1,
		 "the node CA of linked region 'us-east' holds no certificate"},
		{{{"us-east", "us.kmsd.dev", NULL, 0}}, 1, "region 'us-east' holds no certificate"},
		{{{"US-east", "us.kmsd.dev", NULL, 0}}, 1, "region name 'US-east'"},
		{{{"", "us.kmsd.dev", NULL, 0}}, 1, "a region needs a name"},
		{{{"us-east", "Bad TD!", NULL, 0}}, 1, "linked region 'us-east': 'Bad TD!'"},
		{{{"us-east", NULL, NULL, 0}}, 1, "linked region 'us-east'"},
		{{{"us-east", "us.kmsd.dev", NULL, 0}, {"us-east", "eu.kmsd.dev", NULL, 0}},
		 2,
		 "listed twice"},
		{{{"us-east", "us.kmsd.dev", NULL, 0}, {"eu-west", "eu.kmsd.dev", NULL, 0}},
		 2,
		 "have the same node CA"},
		{{{"us-east", "us.kmsd.dev", NULL, 0}}, 1, "is this cluster's node CA"},
		{{{"us-east", "us.kmsd.dev", NULL, 0}}, 1, "region 'us-east' holds a certificate that"},
	};
	char *cut;

	read_region_cas();
	node_pem = kms_test_read_file(node_ca, &node_len);
	/* The PEMs only known now. */
	for (size_t i = 0; i < 2; i++) {
		bad[6].r[i].node_ca_pem = us_pem;
		bad[6].r[i].node_ca_pem_len = us_len;
		bad[7].r[i].node_ca_pem = us_pem;
		bad[7].r[i].node_ca_pem_len = us_len;
	}
	bad[4].r[0].node_ca_pem = bad[5].r[0].node_ca_pem = us_pem;
	bad[4].r[0].node_ca_pem_len = bad[5].r[0].node_ca_pem_len = us_len;
	bad[8].r[0].node_ca_pem = node_pem;
	bad[8].r[0].node_ca_pem_len = node_len;
	/* us-east's CA, then a block cut short: gRPC would refuse the roots. */
	cut = kms_malloc(2 * us_len);
	ck_assert_ptr_nonnull(cut);
	memcpy(cut, us_pem, us_len);
	memcpy(cut + us_len, us_pem, us_len / 2);
	memcpy(cut + us_len + us_len / 2, "\n-----END CERTIFICATE-----\n", 27);
	bad[9].r[0].node_ca_pem = cut;
	bad[9].r[0].node_ca_pem_len = us_len + us_len / 2 + 27;
	link_eu("eu.kmsd.dev");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&err, 0, sizeof(err));
		ck_assert_msg(kms_authn_set_regions(authn, bad[i].r, bad[i].n, &err) ==
				      KMS_ERR_INVALID,
			      "bad set %zu taken", i);
		ASSERT_MSG(err, bad[i].needle);
		/* A fresh certificate each time, so no cached answer hides a
		 * change: eu-west is linked, us-east is not. */
		ck_assert_int_eq(identify_by(eu_ca, eu_key, eu4, &p, &err), KMS_OK);
		assert_region_node(&p, eu4, "eu-west", 4);
		ck_assert_int_eq(
			identify_by(us_ca, us_key, "spiffe://us.kmsd.dev/kmsd/node/1", &p, &err),
			KMS_ERR_UNAUTHENTICATED);
	}
	ck_assert_int_eq(kms_authn_set_regions(authn, NULL, 1, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(identify_by(eu_ca, eu_key, eu4, &p, &err), KMS_OK);
	kms_free(cut);
	kms_free(node_pem);
	free_region_cas();
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
	tcase_add_test(tc, test_region_node);
	tcase_add_test(tc, test_region_link_and_unlink);
	tcase_add_test(tc, test_region_in_our_trust_domain);
	tcase_add_test(tc, test_region_refusals);
	tcase_add_test(tc, test_set_regions_refusals);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
