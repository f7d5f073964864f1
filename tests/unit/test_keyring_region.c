/* test_keyring_region.c - Check suite for regions in the key ring: region names, the cluster's region in QuorumInit and snapshots, multi-region keys homed in their region, and the refusal of every change to a key homed elsewhere. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "kms/quorum.h"
#include "kms/region.h"
#include "kms/v1/state.pb-c.h"
#include "region/region_sync.h"
#include "check_run.h"
#include "test_pki.h"

#define ADMIN "spiffe://example.org/ns/ops/sa/admin"
#define NOW 1700000000

static const uint8_t CID[KMS_CLUSTER_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static kms_keyring *kr;

static void setup(void)
{
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
}

static void teardown(void)
{
	kms_keyring_free(kr);
}

static int apply(kms_keyring *k, kms_buf *cmd, kms_err *err)
{
	int rc = kms_keyring_apply(k, cmd->data, cmd->len, err);

	kms_buf_free(cmd);
	return rc;
}

/* QuorumInit with one operator and the region given (NULL: none). */
static void init_region(kms_keyring *k, const char *region)
{
	Kms__V1__OperatorRecord op = KMS__V1__OPERATOR_RECORD__INIT, *ops[1] = {&op};
	uint8_t pub[KMS_ED25519_PUB_LEN];
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(pub, 0x5a, sizeof(pub));
	op.name = "operator1";
	op.public_key.data = pub;
	op.public_key.len = sizeof(pub);
	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, ops, 1, 1, region, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(k, &cmd, &err) == KMS_OK, "%s", err.msg);
}

/* A CreateKey command for id; home: NULL for a regional key. */
static void create_cmd(const char *id, const char *home, kms_buf *cmd)
{
	uint8_t w[40];
	kms_err err = {0};

	memset(w, 0x11, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_create_key(id, "", NULL, ADMIN, NOW, w, sizeof(w), cmd,
						    &err),
			 KMS_OK);
	if (home != NULL)
		ck_assert_msg(kms_keyring_cmd_set_home_region(cmd, home, &err) == KMS_OK, "%s",
			      err.msg);
}

static Kms__V1__KeyMetadata *describe(kms_keyring *k, const char *id)
{
	Kms__V1__KeyMetadata *md = NULL;
	kms_err err = {0};

	ck_assert_msg(kms_keyring_describe(k, id, ADMIN, 1, &md, &err) == KMS_OK, "%s", err.msg);
	return md;
}

/* k's snapshot with its region field and its links replaced (kms_free
 * the result); link NULL: no link. */
static uint8_t *snapshot_with(kms_keyring *k, char *region, Kms__V1__RegionLinkRecord *link,
			      size_t *len)
{
	Kms__V1__KeyRingSnapshot *s;
	Kms__V1__RegionLinkRecord **own_links;
	size_t own_n;
	char *own_region;
	kms_buf snap = {0};
	uint8_t *out;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_snapshot(k, kms_malloc, &snap, &err), KMS_OK);
	s = kms__v1__key_ring_snapshot__unpack(NULL, snap.len, snap.data);
	ck_assert_ptr_nonnull(s);
	/* protobuf-c's own fields go back before it frees them. */
	own_region = s->region;
	own_links = s->region_links;
	own_n = s->n_region_links;
	s->region = region;
	s->region_links = link != NULL ? &link : NULL;
	s->n_region_links = link != NULL ? 1 : 0;
	*len = kms__v1__key_ring_snapshot__get_packed_size(s);
	out = kms_malloc(*len);
	ck_assert_ptr_nonnull(out);
	kms__v1__key_ring_snapshot__pack(s, out);
	s->region = own_region;
	s->region_links = own_links;
	s->n_region_links = own_n;
	kms__v1__key_ring_snapshot__free_unpacked(s, NULL);
	kms_buf_free(&snap);
	return out;
}

static uint8_t *snapshot_with_region(kms_keyring *k, char *region, size_t *len)
{
	return snapshot_with(k, region, NULL, len);
}

START_TEST(region_names)
{
	static const char *const good[] = {"a", "eu-west-1", "us1", "r0-9"};
	static const char *const bad[] = {"", "Eu", "1eu", "eu-", "eu_west", "eu.west",
					  "-eu", "eu west"};
	char longest[KMS_REGION_NAME_MAX + 2];
	kms_err err = {0};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(kms_region_name_check(good[i], &err) == KMS_OK, "%s: %s", good[i],
			      err.msg);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(kms_region_name_check(bad[i], &err) == KMS_ERR_INVALID, "%s", bad[i]);
		ck_assert_msg(strstr(err.msg, "region") != NULL, "%s", err.msg);
	}
	ck_assert_int_eq(kms_region_name_check(NULL, &err), KMS_ERR_INVALID);
	memset(longest, 'a', sizeof(longest));
	longest[KMS_REGION_NAME_MAX] = '\0';
	ck_assert_int_eq(kms_region_name_check(longest, &err), KMS_OK);
	longest[KMS_REGION_NAME_MAX] = 'a';
	longest[KMS_REGION_NAME_MAX + 1] = '\0';
	ck_assert_int_eq(kms_region_name_check(longest, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "longer than 63") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(the_region_is_recorded_and_snapshotted)
{
	kms_keyring *again = NULL;
	char region[KMS_REGION_NAME_MAX + 1];
	kms_buf snap = {0}, cmd = {0};
	kms_err err = {0};

	kms_keyring_region(kr, region);
	ck_assert_str_eq(region, "");
	init_region(kr, "eu-west");
	kms_keyring_region(kr, region);
	ck_assert_str_eq(region, "eu-west");
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&again, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(again, snap.data, snap.len, &err) == KMS_OK, "%s",
		      err.msg);
	kms_keyring_region(again, region);
	ck_assert_str_eq(region, "eu-west");
	kms_keyring_free(again);
	kms_buf_free(&snap);
	/* A bad name never reaches the state. */
	ck_assert_int_eq(kms_keyring_cmd_quorum_init(CID, NULL, 0, 1, "Bad_Region", &cmd, &err),
			 KMS_ERR_INVALID);
}
END_TEST

START_TEST(a_snapshot_with_a_bad_region_is_refused)
{
	uint8_t *bad;
	size_t len;
	char region[KMS_REGION_NAME_MAX + 1];
	kms_err err = {0};

	init_region(kr, "eu-west");
	bad = snapshot_with_region(kr, "EU WEST", &len);
	kms_keyring_free(kr);
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	init_region(kr, "us-east");
	ck_assert_int_eq(kms_keyring_restore(kr, bad, len, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "region") != NULL, "%s", err.msg);
	kms_keyring_region(kr, region);
	ck_assert_str_eq(region, "us-east");
	kms_free(bad);
}
END_TEST

START_TEST(a_multi_region_key_is_homed_in_its_region)
{
	Kms__V1__KeyMetadata *md;
	kms_buf cmd = {0};
	kms_err err = {0};

	init_region(kr, "eu-west");
	create_cmd("mr", "eu-west", &cmd);
	ck_assert_int_eq(kms_keyring_check(kr, cmd.data, cmd.len, &err), KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	create_cmd("local", NULL, &cmd);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	md = describe(kr, "mr");
	ck_assert(md->multi_region);
	ck_assert_str_eq(md->home_region, "eu-west");
	kms_keyring_metadata_free(md);
	md = describe(kr, "local");
	ck_assert(!md->multi_region);
	ck_assert_str_eq(md->home_region, "");
	kms_keyring_metadata_free(md);
	/* Changes to a key homed here work as for any key. */
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr", 0, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
}
END_TEST

/* Its twin: a home that is not this region, or a cluster with no region. */
START_TEST(a_key_homed_elsewhere_is_not_created)
{
	kms_keyring *old = NULL;
	kms_buf cmd = {0};
	kms_err err = {0};

	init_region(kr, "eu-west");
	create_cmd("mr", "us-east", &cmd);
	ck_assert_int_eq(kms_keyring_check(kr, cmd.data, cmd.len, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(apply(kr, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "'us-east'") != NULL && strstr(err.msg, "'eu-west'") != NULL,
		      "%s", err.msg);
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	/* A cluster whose state names no region makes regional keys only. */
	ck_assert_int_eq(kms_keyring_new(&old, &err), KMS_OK);
	init_region(old, NULL);
	create_cmd("mr", "eu-west", &cmd);
	ck_assert_int_eq(apply(old, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "names no region") != NULL, "%s", err.msg);
	ck_assert_uint_eq(kms_keyring_count(old), 0);
	kms_keyring_free(old);
	/* Only CreateKey takes a home, and only a valid region name. */
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr", 0, &cmd, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_set_home_region(&cmd, "eu-west", &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "only CreateKey") != NULL, "%s", err.msg);
	kms_buf_free(&cmd);
	create_cmd("mr", NULL, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_set_home_region(&cmd, "EU", &err), KMS_ERR_INVALID);
	kms_buf_free(&cmd);
}
END_TEST

/* A record that breaks the scope rules never enters the state. */
START_TEST(scope_rules_of_a_record)
{
	Kms__V1__Command *c;
	kms_buf cmd = {0}, bad = {0};
	kms_err err = {0};

	init_region(kr, "eu-west");
	for (int i = 0; i < 2; i++) {
		create_cmd("k", NULL, &cmd);
		c = kms__v1__command__unpack(NULL, cmd.len, cmd.data);
		ck_assert_ptr_nonnull(c);
		if (i == 0) {
			/* Regional, yet naming a home. */
			c->create_key->key->home_region = "eu-west";
		} else {
			/* Multi-region, with no valid home. */
			c->create_key->key->multi_region = 1;
			c->create_key->key->home_region = "";
		}
		bad.len = kms__v1__command__get_packed_size(c);
		bad.data = kms_malloc(bad.len);
		kms__v1__command__pack(c, bad.data);
		c->create_key->key->home_region = NULL;
		kms__v1__command__free_unpacked(c, NULL);
		ck_assert_int_eq(apply(kr, &bad, &err), KMS_ERR_INVALID);
		ck_assert_msg(strstr(err.msg, "region") != NULL, "%s", err.msg);
		kms_buf_free(&cmd);
	}
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
}
END_TEST

/*
 * A secondary's view: the state holds a multi-region key homed in us-east
 * while this cluster is eu-west (made here by restoring a us-east
 * snapshot whose region is changed). Every change is refused and names the
 * primary; reads and encryption reservations go on.
 */
static void become_secondary_of_us_east(void)
{
	kms_buf cmd = {0};
	uint8_t *moved;
	size_t len;
	kms_err err = {0};

	init_region(kr, "us-east");
	create_cmd("mr", "us-east", &cmd);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	create_cmd("other", "us-east", &cmd);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/mr", "mr", NOW, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	create_cmd("local", NULL, &cmd);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	moved = snapshot_with_region(kr, "eu-west", &len);
	ck_assert_msg(kms_keyring_restore(kr, moved, len, &err) == KMS_OK, "%s", err.msg);
	kms_free(moved);
}

static void assert_refused_naming_the_primary(kms_buf *cmd)
{
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_check(kr, cmd->data, cmd->len, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(apply(kr, cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "multi-region key of primary region 'us-east'") != NULL &&
			  strstr(err.msg, "this is region 'eu-west'") != NULL,
		      "%s", err.msg);
}

START_TEST(a_key_homed_elsewhere_refuses_every_change)
{
	Kms__V1__KeyPolicy empty = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__KeyMetadata *md;
	uint8_t w[40];
	kms_buf cmd = {0}, before = {0}, after = {0};
	kms_err err = {0};

	become_secondary_of_us_east();
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &before, &err), KMS_OK);
	memset(w, 0x42, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("mr", 2, w, sizeof(w), NOW, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr", 0, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_schedule_key_deletion("mr", NOW + 86400 * 7, &cmd, &err),
			 KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_cancel_key_deletion("mr", &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_destroy_key("mr", NOW, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("mr", &empty, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_set_rotation_policy("mr", 86400, 0, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	/* Aliases: none made to point at it, none of its moved or deleted. */
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/new", "mr", NOW, &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_update_alias("alias/mr", "local", NOW, &cmd, &err),
			 KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	ck_assert_int_eq(kms_keyring_cmd_delete_alias("alias/mr", &cmd, &err), KMS_OK);
	assert_refused_naming_the_primary(&cmd);
	/* Nothing changed. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &after, &err), KMS_OK);
	ck_assert_uint_eq(before.len, after.len);
	ck_assert(memcmp(before.data, after.data, before.len) == 0);
	/* Reads and this region's own keys go on. */
	md = describe(kr, "mr");
	ck_assert_str_eq(md->home_region, "us-east");
	kms_keyring_metadata_free(md);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("mr", 1, 1000, 1, 1, &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("local", 0, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/local", "local", NOW, &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(kr, &cmd, &err) == KMS_OK, "%s", err.msg);
	kms_buf_free(&before);
	kms_buf_free(&after);
}
END_TEST


/* --- the stream --- */

static char ca_pem[4096];
static char *endpoints[1] = {"10.1.0.1:7401"};

/* A real certificate: the check parses it. */
static void make_ca_pem(void)
{
	size_t len;
	char *text = kms_test_ca_pem("us-east node CA", &len);

	ck_assert_uint_lt(len, sizeof(ca_pem));
	memcpy(ca_pem, text, len + 1);
	kms_free(text);
}

/* Makes kr region eu-west, linked to us-east with this role at epoch 1. */
static void link_to_us_east(Kms__V1__RegionRole role)
{
	Kms__V1__RegionLinkRecord l = KMS__V1__REGION_LINK_RECORD__INIT;
	uint8_t *snap;
	size_t len;
	kms_err err = {0};

	make_ca_pem();
	l.peer_region = "us-east";
	l.role = role;
	l.mode = KMS__V1__REGION_MODE__REGION_MODE_ASYNC;
	l.peer_endpoints = endpoints;
	l.n_peer_endpoints = 1;
	l.peer_trust_domain = "us-east.example";
	l.peer_node_ca_pem.data = (uint8_t *)ca_pem;
	l.peer_node_ca_pem.len = strlen(ca_pem);
	l.epoch = 1;
	init_region(kr, "eu-west");
	snap = snapshot_with(kr, "eu-west", &l, &len);
	ck_assert_msg(kms_keyring_restore(kr, snap, len, &err) == KMS_OK, "%s", err.msg);
	kms_free(snap);
}

static Kms__V1__RegionLinkRecord *the_link(kms_keyring *k)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	Kms__V1__RegionLinkRecord *l;
	size_t n = 0;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_region_links(k, &links, &n, NULL, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	l = links[0];
	kms_free(links);
	return l;
}

static void apply_ok(kms_keyring *k, kms_buf *cmd)
{
	kms_err err = {0};

	ck_assert_msg(apply(k, cmd, &err) == KMS_OK, "%s", err.msg);
}

static void rotate(kms_keyring *k, const char *id, uint32_t v)
{
	uint8_t w[40];
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(w, 0x20 + (int)v, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_rotate_key(id, v, w, sizeof(w), NOW + v, &cmd, &err),
			 KMS_OK);
	apply_ok(k, &cmd);
}

/* The changes after after_rev: n and head checked, the records returned. */
static Kms__V1__KeyRecord **changes(kms_keyring *k, uint64_t after, size_t max, size_t want_n,
				    uint64_t want_head)
{
	Kms__V1__KeyRecord **recs = NULL;
	uint64_t head = 0;
	size_t n = 99;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_region_changes(k, after, max, &recs, &n, &head, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, want_n);
	ck_assert_uint_eq(head, want_head);
	return recs;
}

START_TEST(changes_of_multi_region_keys_get_a_region_rev)
{
	Kms__V1__KeyRecord **recs;
	kms_keyring *again = NULL;
	kms_buf cmd = {0}, snap = {0};
	kms_err err = {0};

	init_region(kr, "us-east");
	create_cmd("mr1", "us-east", &cmd);
	apply_ok(kr, &cmd);
	create_cmd("local", NULL, &cmd);
	apply_ok(kr, &cmd);
	create_cmd("mr2", "us-east", &cmd);
	apply_ok(kr, &cmd);
	recs = changes(kr, 0, 256, 2, 2);
	ck_assert_str_eq(recs[0]->key_id, "mr1");
	ck_assert_uint_eq(recs[0]->region_rev, 1);
	ck_assert_str_eq(recs[1]->key_id, "mr2");
	kms_keyring_records_free(recs, 2);
	/* A change moves a key to the end; regional keys and reservations
	 * are not changes of the stream. */
	rotate(kr, "mr1", 2);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("mr2", 1, 10, 1, 1, &cmd, &err),
			 KMS_OK);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("local", 0, &cmd, &err), KMS_OK);
	apply_ok(kr, &cmd);
	recs = changes(kr, 2, 256, 1, 3);
	ck_assert_str_eq(recs[0]->key_id, "mr1");
	ck_assert_uint_eq(recs[0]->n_versions, 2);
	kms_keyring_records_free(recs, 1);
	recs = changes(kr, 0, 1, 1, 3);
	ck_assert_str_eq(recs[0]->key_id, "mr2");
	kms_keyring_records_free(recs, 1);
	recs = changes(kr, 3, 256, 0, 3);
	ck_assert_ptr_null(recs);
	/* Twin: a cursor past the head is not "nothing new" (the changes up
	 * to it would never be sent). */
	{
		uint64_t head = 0;
		size_t n = 99;

		recs = NULL;
		ck_assert_int_eq(kms_keyring_region_changes(kr, 4, 256, &recs, &n, &head, &err),
				 KMS_ERR_UNAVAILABLE);
		ck_assert_msg(strstr(err.msg, "cursor 4 is past region 'us-east''s changes") != NULL &&
				      strstr(err.msg, "(up to 3)") != NULL,
			      "%s", err.msg);
		ck_assert_ptr_null(recs);
		ck_assert_uint_eq(n, 0);
	}
	/* A snapshot keeps the revs, and the next change goes on from them. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&again, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(again, snap.data, snap.len, &err) == KMS_OK, "%s",
		      err.msg);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr2", 0, &cmd, &err), KMS_OK);
	apply_ok(again, &cmd);
	recs = changes(again, 3, 256, 1, 4);
	ck_assert_str_eq(recs[0]->key_id, "mr2");
	kms_keyring_records_free(recs, 1);
	kms_keyring_free(again);
	kms_buf_free(&snap);
}
END_TEST

/* The primary us-east's mr1 at two versions, as a pull would carry it. */
static Kms__V1__KeyRecord **pulled_from_us_east(size_t *n, uint64_t *head)
{
	kms_keyring *primary = NULL;
	Kms__V1__KeyRecord **recs = NULL;
	kms_buf cmd = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&primary, &err), KMS_OK);
	init_region(primary, "us-east");
	create_cmd("mr1", "us-east", &cmd);
	apply_ok(primary, &cmd);
	rotate(primary, "mr1", 2);
	ck_assert_int_eq(kms_keyring_region_changes(primary, 0, 256, &recs, n, head, &err), KMS_OK);
	kms_keyring_free(primary);
	return recs;
}

static int region_apply(Kms__V1__KeyRecord **recs, size_t n, uint64_t epoch, uint64_t cursor,
			uint32_t gen, kms_err *err)
{
	kms_buf cmd = {0};

	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", epoch, recs, n, NULL, 0, cursor, cursor,
						      NOW + 100, gen, &cmd, err),
			 KMS_OK);
	return apply(kr, &cmd, err);
}

START_TEST(region_apply_adds_and_replaces_keys)
{
	Kms__V1__KeyRecord **recs;
	Kms__V1__KeyMetadata *md;
	Kms__V1__RegionLinkRecord *l;
	kms_buf cmd = {0};
	uint64_t head = 0;
	size_t n = 0;
	uint32_t two = 2;
	kms_err err = {0};

	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	recs = pulled_from_us_east(&n, &head);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_OK);
	md = describe(kr, "mr1");
	ck_assert_str_eq(md->home_region, "us-east");
	ck_assert_uint_eq(md->n_versions, 2);
	ck_assert_uint_eq(md->primary_version, 2);
	kms_keyring_metadata_free(md);
	l = the_link(kr);
	ck_assert_uint_eq(l->cursor, head);
	ck_assert_int_eq(l->applied_at_unix, NOW + 100);
	kms__v1__region_link_record__free_unpacked(l, NULL);
	/* This region reserves its own encryptions; a second apply of the same
	 * changes keeps them, and changes nothing else. */
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("mr1", 2, 500, 1, 1, &cmd, &err),
			 KMS_OK);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_OK);
	md = describe(kr, "mr1");
	ck_assert_uint_eq(md->version_details[1]->encryptions, 500);
	kms_keyring_metadata_free(md);
	/* An older copy (a lower region_rev, one version) changes nothing. */
	recs[0]->n_versions = 1;
	recs[0]->primary_version = 1;
	recs[0]->region_rev--;
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_OK);
	recs[0]->n_versions = two;
	md = describe(kr, "mr1");
	ck_assert_uint_eq(md->n_versions, 2);
	ck_assert_uint_eq(md->primary_version, 2);
	kms_keyring_metadata_free(md);
	kms_keyring_records_free(recs, n);
}
END_TEST

/* The upkeep of a secondary's leader leaves a replicated key to its home:
 * no rotation due there, whatever its policy says. */
START_TEST(upkeep_leaves_replicated_keys_to_their_home)
{
	Kms__V1__KeyRecord **recs;
	uint64_t head = 0;
	size_t n = 0, due = 9;
	char **ids = NULL;
	kms_err err = {0};

	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	recs = pulled_from_us_east(&n, &head);
	recs[0]->rotation_period_seconds = 60;
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_due_rotations(kr, NOW + 86400, 900, 16, &ids, &due, &err),
			 KMS_OK);
	ck_assert_uint_eq(due, 0);
	kms_keyring_ids_free(ids, due);
	kms_keyring_records_free(recs, n);
}
END_TEST

START_TEST(region_apply_refusals_change_nothing)
{
	Kms__V1__KeyRecord **recs;
	Kms__V1__RegionLinkRecord *l;
	kms_buf before = {0}, after = {0}, cmd = {0};
	uint64_t head = 0;
	size_t n = 0;
	char *home;
	kms_err err = {0};

	recs = pulled_from_us_east(&n, &head);
	/* Not linked at all. */
	init_region(kr, "eu-west");
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "not linked as a secondary of region 'us-east'") != NULL,
		      "%s", err.msg);
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	kms_keyring_free(kr);
	/* Linked, but as its primary. */
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY);
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_ERR_PRECONDITION);
	kms_keyring_free(kr);
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &before, &err), KMS_OK);
	/* Another epoch: a promotion happened since the pull. */
	ck_assert_int_eq(region_apply(recs, n, 2, head, 1, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "epoch 2") != NULL, "%s", err.msg);
	/* Material under another domain-key generation than this cluster's. */
	ck_assert_int_eq(region_apply(recs, n, 1, head, 2, &err), KMS_ERR_PRECONDITION);
	/* A key of a third region is not us-east's to send. */
	home = recs[0]->home_region;
	recs[0]->home_region = "ap-south";
	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", 1, recs, n, NULL, 0, head, head, NOW, 1,
						      &cmd, &err),
			 KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "not a multi-region key of region 'us-east'") != NULL, "%s",
		      err.msg);
	recs[0]->home_region = home;
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &after, &err), KMS_OK);
	ck_assert_uint_eq(before.len, after.len);
	ck_assert(memcmp(before.data, after.data, before.len) == 0);
	kms_buf_free(&before);
	kms_buf_free(&after);
	/* A regional key of this region holds the id: it stays, counted. */
	create_cmd("mr1", NULL, &cmd);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_OK);
	l = the_link(kr);
	ck_assert_uint_eq(l->conflicts, 1);
	ck_assert_str_eq(l->last_conflict, "mr1");
	ck_assert_uint_eq(l->cursor, head);
	kms__v1__region_link_record__free_unpacked(l, NULL);
	{
		Kms__V1__KeyMetadata *md = describe(kr, "mr1");

		ck_assert(!md->multi_region);
		ck_assert_uint_eq(md->n_versions, 1);
		kms_keyring_metadata_free(md);
	}
	kms_keyring_records_free(recs, n);
}
END_TEST

/*
 * The old primary learns of a promotion: its keys are homed in the new
 * primary, its link turns secondary at the new epoch, and the new
 * primary's copies replace its own, version by version.
 */
START_TEST(a_fenced_primary_becomes_a_secondary)
{
	Kms__V1__KeyRecord **recs;
	Kms__V1__RegionLinkRecord *l;
	Kms__V1__KeyMetadata *md;
	kms_buf cmd = {0}, before = {0}, after = {0};
	uint64_t head = 0;
	size_t n = 0;
	kms_err err = {0};

	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY);
	create_cmd("mr1", "eu-west", &cmd);
	apply_ok(kr, &cmd);
	rotate(kr, "mr1", 2);
	rotate(kr, "mr1", 3);
	create_cmd("local", NULL, &cmd);
	apply_ok(kr, &cmd);
	/* Twins first: an epoch not above the link's, another region. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &before, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_fence_region("us-east", 1, NOW, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(kr, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "nothing to fence") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_fence_region("ap-south", 2, NOW, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(kr, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_keyring_cmd_fence_region("Bad", 2, NOW, &cmd, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &after, &err), KMS_OK);
	ck_assert_uint_eq(before.len, after.len);
	ck_assert(memcmp(before.data, after.data, before.len) == 0);
	kms_buf_free(&before);
	kms_buf_free(&after);
	/* The fence. */
	ck_assert_int_eq(kms_keyring_cmd_fence_region("us-east", 2, NOW + 5, &cmd, &err), KMS_OK);
	apply_ok(kr, &cmd);
	l = the_link(kr);
	ck_assert_int_eq(l->role, KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	ck_assert_uint_eq(l->epoch, 2);
	ck_assert_uint_eq(l->cursor, 0);
	kms__v1__region_link_record__free_unpacked(l, NULL);
	md = describe(kr, "mr1");
	ck_assert_str_eq(md->home_region, "us-east");
	kms_keyring_metadata_free(md);
	md = describe(kr, "local");
	ck_assert(!md->multi_region);
	kms_keyring_metadata_free(md);
	/* Writes to it are refused here now, naming the new primary. */
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("mr1", 0, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(kr, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "primary region 'us-east'") != NULL, "%s", err.msg);
	/* The new primary had the key at two versions when it was promoted:
	 * its copy replaces ours; our third version stays until it makes its
	 * own third. The apply is at the new epoch only. */
	recs = pulled_from_us_east(&n, &head);
	ck_assert_int_eq(region_apply(recs, n, 1, head, 1, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(region_apply(recs, n, 2, head, 1, &err), KMS_OK);
	md = describe(kr, "mr1");
	ck_assert_uint_eq(md->n_versions, 3);
	ck_assert_uint_eq(md->primary_version, 2);
	kms_keyring_metadata_free(md);
	kms_keyring_records_free(recs, n);
}
END_TEST

/* A multi-region key's aliases travel with it: the secondary's aliases of
 * the key become the primary's, and a name of the secondary's own stays. */
START_TEST(aliases_travel_with_their_key)
{
	kms_keyring *east = NULL;
	Kms__V1__KeyRecord **recs = NULL;
	Kms__V1__AliasRecord **al = NULL;
	Kms__V1__RegionLinkRecord *l;
	kms_alias found;
	kms_buf cmd = {0};
	uint64_t head = 0, rev_before;
	size_t n = 0, n_al = 0;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&east, &err), KMS_OK);
	init_region(east, "us-east");
	create_cmd("mr1", "us-east", &cmd);
	apply_ok(east, &cmd);
	create_cmd("east-local", NULL, &cmd);
	apply_ok(east, &cmd);
	ck_assert_uint_eq(kms_keyring_stream_rev(east, "mr1", &rev_before), 1);
	/* An alias made, moved in and out: each a change of mr1. */
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/orders", "mr1", NOW, &cmd, &err),
			 KMS_OK);
	apply_ok(east, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/shared", "mr1", NOW, &cmd, &err),
			 KMS_OK);
	apply_ok(east, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/moved", "east-local", NOW, &cmd, &err),
			 KMS_OK);
	apply_ok(east, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_update_alias("alias/moved", "mr1", NOW, &cmd, &err),
			 KMS_OK);
	apply_ok(east, &cmd);
	ck_assert_int_eq(kms_keyring_stream_rev(east, "mr1", &head), 1);
	ck_assert_uint_eq(head, rev_before + 3);
	/* The secondary holds its own alias/shared, on its own key. */
	link_to_us_east(KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY);
	create_cmd("west-local", NULL, &cmd);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/shared", "west-local", NOW, &cmd, &err),
			 KMS_OK);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(kms_keyring_region_changes(east, 0, 256, &recs, &n, &head, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(kms_keyring_aliases_of_keys(east, recs, n, &al, &n_al, &err), KMS_OK);
	ck_assert_uint_eq(n_al, 3);
	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", 1, recs, n, al, n_al, head, head,
						      NOW, 1, &cmd, &err),
			 KMS_OK);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/orders", &found, &err), KMS_OK);
	ck_assert_str_eq(found.key_id, "mr1");
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/moved", &found, &err), KMS_OK);
	ck_assert_str_eq(found.key_id, "mr1");
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/shared", &found, &err), KMS_OK);
	ck_assert_str_eq(found.key_id, "west-local");
	l = the_link(kr);
	ck_assert_uint_eq(l->conflicts, 1);
	ck_assert_str_eq(l->last_conflict, "alias/shared");
	kms__v1__region_link_record__free_unpacked(l, NULL);
	kms_keyring_aliases_free(al, n_al);
	kms_keyring_records_free(recs, n);
	/* Deleted at the primary: gone here at the next apply. */
	ck_assert_int_eq(kms_keyring_cmd_delete_alias("alias/orders", &cmd, &err), KMS_OK);
	apply_ok(east, &cmd);
	ck_assert_int_eq(kms_keyring_region_changes(east, head, 256, &recs, &n, &head, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(kms_keyring_aliases_of_keys(east, recs, n, &al, &n_al, &err), KMS_OK);
	ck_assert_uint_eq(n_al, 2);
	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", 1, recs, n, al, n_al, head, head,
						      NOW, 1, &cmd, &err),
			 KMS_OK);
	apply_ok(kr, &cmd);
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/orders", &found, &err), KMS_ERR_NOT_FOUND);
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/moved", &found, &err), KMS_OK);
	/* Twin: an alias naming a key the command does not hold. */
	al[0]->key_id[0] = 'x';
	ck_assert_int_eq(kms_keyring_cmd_region_apply("us-east", 1, recs, n, al, n_al, head, head,
						      NOW, 1, &cmd, &err),
			 KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "which it does not hold") != NULL, "%s", err.msg);
	kms_keyring_aliases_free(al, n_al);
	kms_keyring_records_free(recs, n);
	kms_keyring_free(east);
}
END_TEST

/* The stream's answer for every cursor, in pages of 1 and 4: the keys
 * whose newest rev is past the cursor, in rev order. */
static void stream_is(kms_keyring *k, const char *const *ids, const uint64_t *revs, size_t n_ids,
		      uint64_t head)
{
	for (uint64_t after = 0; after <= head; after++)
		for (size_t max = 1; max <= 4; max += 3) {
			Kms__V1__KeyRecord **recs;
			const char *want[4];
			uint64_t want_rev[4];
			size_t n = 0;

			/* The model: each rev past the cursor, lowest first. */
			for (uint64_t r = after + 1; r <= head && n < max; r++)
				for (size_t i = 0; i < n_ids; i++)
					if (revs[i] == r) {
						want[n] = ids[i];
						want_rev[n++] = r;
					}
			recs = changes(k, after, max, n, head);
			for (size_t i = 0; i < n; i++) {
				ck_assert_str_eq(recs[i]->key_id, want[i]);
				ck_assert_uint_eq(recs[i]->region_rev, want_rev[i]);
			}
			kms_keyring_records_free(recs, n);
		}
}

/*
 * The latest revs are read from the keys they name, older ones and a
 * restored state's by a scan: the same stream either way, a key changed
 * again only at its newest rev, a regional key never.
 */
START_TEST(the_stream_is_the_same_from_the_latest_revs_and_from_a_scan)
{
	static const char *const ids[] = {"mr0", "mr1", "mr2", "mr3", "mr4", "local"};
	uint64_t revs[] = {1, 2, 3, 4, 5, 0};
	kms_keyring *again = NULL;
	kms_buf cmd = {0}, snap = {0};
	kms_err err = {0};
	char id[32];

	init_region(kr, "us-east");
	for (size_t i = 0; i < 6; i++) {
		create_cmd(ids[i], i < 5 ? "us-east" : NULL, &cmd);
		apply_ok(kr, &cmd);
	}
	rotate(kr, "mr1", 2);
	rotate(kr, "mr3", 2);
	rotate(kr, "mr1", 3);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("local", 0, &cmd, &err), KMS_OK);
	apply_ok(kr, &cmd);
	revs[3] = 7;
	revs[1] = 8;
	stream_is(kr, ids, revs, 6, 8);
	/* Restored: no rev is known from here, the scan answers. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&again, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(again, snap.data, snap.len, &err) == KMS_OK, "%s",
		      err.msg);
	stream_is(again, ids, revs, 6, 8);
	/* One change later: the revs before it are the scan's, the rest the ring's. */
	rotate(again, "mr0", 2);
	revs[0] = 9;
	stream_is(again, ids, revs, 6, 9);
	kms_keyring_free(again);
	kms_buf_free(&snap);
	/* Restored over a state that knew its revs, from another history
	 * (the same head, other keys at each rev): they are forgotten. */
	ck_assert_int_eq(kms_keyring_new(&again, &err), KMS_OK);
	init_region(again, "us-east");
	for (size_t i = 5; i-- > 0;) {
		create_cmd(ids[i], "us-east", &cmd);
		apply_ok(again, &cmd);
	}
	create_cmd("local", NULL, &cmd);
	apply_ok(again, &cmd);
	rotate(again, "mr0", 2);
	rotate(again, "mr2", 2);
	rotate(again, "mr0", 3);
	ck_assert_int_eq(kms_keyring_snapshot(again, kms_malloc, &snap, &err), KMS_OK);
	kms_keyring_free(again);
	ck_assert_msg(kms_keyring_restore(kr, snap.data, snap.len, &err) == KMS_OK, "%s",
		      err.msg);
	kms_buf_free(&snap);
	{
		const uint64_t other[] = {8, 4, 7, 2, 1, 0};

		stream_is(kr, ids, other, 6, 8);
	}
	/* Further behind than the latest revs reach: the scan, in pages. */
	for (int i = 0; i < 4200; i++) {
		snprintf(id, sizeof(id), "bulk-%04d", i);
		create_cmd(id, "us-east", &cmd);
		apply_ok(kr, &cmd);
	}
	{
		Kms__V1__KeyRecord **recs = changes(kr, 8, 256, 256, 8 + 4200);

		ck_assert_str_eq(recs[0]->key_id, "bulk-0000");
		ck_assert_str_eq(recs[255]->key_id, "bulk-0255");
		kms_keyring_records_free(recs, 256);
		recs = changes(kr, 8 + 4198, 256, 2, 8 + 4200);
		ck_assert_str_eq(recs[0]->key_id, "bulk-4198");
		ck_assert_str_eq(recs[1]->key_id, "bulk-4199");
		kms_keyring_records_free(recs, 2);
	}
}
END_TEST

/* A secondary pulls again at once while its primary has more than a page,
 * soon while changes keep coming, and at the interval when nothing does. */
START_TEST(the_next_pull_follows_the_changes)
{
	ck_assert_int_eq(kms_region_pull_wait_ms(0, KMS_REGION_APPLY_MAX), 0);
	ck_assert_int_eq(kms_region_pull_wait_ms(1, 1), KMS_REGION_PULL_BUSY_MS);
	ck_assert_int_eq(kms_region_pull_wait_ms(1, 0), KMS_REGION_PULL_INTERVAL_MS);
	ck_assert_int_lt(KMS_REGION_PULL_BUSY_MS, KMS_REGION_PULL_INTERVAL_MS);
}
END_TEST

static Suite *region_suite(void)
{
	Suite *s = suite_create("keyring_region");
	TCase *tc = tcase_create("regions");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, region_names);
	tcase_add_test(tc, the_region_is_recorded_and_snapshotted);
	tcase_add_test(tc, a_snapshot_with_a_bad_region_is_refused);
	tcase_add_test(tc, a_multi_region_key_is_homed_in_its_region);
	tcase_add_test(tc, a_key_homed_elsewhere_is_not_created);
	tcase_add_test(tc, scope_rules_of_a_record);
	tcase_add_test(tc, a_key_homed_elsewhere_refuses_every_change);
	tcase_add_test(tc, changes_of_multi_region_keys_get_a_region_rev);
	tcase_add_test(tc, region_apply_adds_and_replaces_keys);
	tcase_add_test(tc, region_apply_refusals_change_nothing);
	tcase_add_test(tc, upkeep_leaves_replicated_keys_to_their_home);
	tcase_add_test(tc, a_fenced_primary_becomes_a_secondary);
	tcase_add_test(tc, aliases_travel_with_their_key);
	tcase_add_test(tc, the_next_pull_follows_the_changes);
	tcase_add_test(tc, the_stream_is_the_same_from_the_latest_revs_and_from_a_scan);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(region_suite()));
}
