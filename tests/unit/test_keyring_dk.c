/* test_keyring_dk.c - Check suite for the domain key's replicated state: the rotation commands, their rules, snapshots and bad input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "kms/keyring_dk.h"
#include "kms/v1/state.pb-c.h"
#include "check_run.h"

#define ADMIN "spiffe://example.org/ns/ops/sa/admin"

static kms_keyring *kr;
static kms_err err;
static const uint8_t fp2[KMS_FINGERPRINT_LEN] = {2, 2, 2};
static const uint8_t fp3[KMS_FINGERPRINT_LEN] = {3, 3, 3};
static const uint8_t probe2[40] = {0x22, 0x22};

static void apply_ok(kms_buf *b)
{
	int rc = kms_keyring_apply(kr, b->data, b->len, &err);

	ck_assert_msg(rc == KMS_OK, "apply: %s", err.msg);
	kms_buf_free(b);
}

/* The snapshot's bytes: the whole replicated state. */
static kms_buf snap(void)
{
	kms_buf s = {0};

	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &s, &err), KMS_OK);
	return s;
}

/* Refused with code and a message naming needle, dry and applied, and nothing changes. */
static void refused(kms_buf *b, int code, const char *needle)
{
	kms_buf before = snap(), after;
	int rc = kms_keyring_check(kr, b->data, b->len, &err);

	ck_assert_msg(rc == code, "check: %d, want %d: %s", rc, code, err.msg);
	rc = kms_keyring_apply(kr, b->data, b->len, &err);
	ck_assert_msg(rc == code, "apply: %d, want %d: %s", rc, code, err.msg);
	ck_assert_msg(strstr(err.msg, needle) != NULL, "'%s' does not name '%s'", err.msg, needle);
	after = snap();
	ck_assert_uint_eq(before.len, after.len);
	ck_assert(memcmp(before.data, after.data, before.len) == 0);
	kms_buf_free(&before);
	kms_buf_free(&after);
	kms_buf_free(b);
}

static void add_member(uint64_t id)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_add_member(id, "h:1", "h:2", NULL, &b, &err), KMS_OK);
	apply_ok(&b);
}

static void create_key(const char *id, uint8_t seed, uint32_t gen)
{
	uint8_t w[40];
	kms_buf b = {0};

	memset(w, seed, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_create_key(id, "", NULL, ADMIN, 1700000000, w, sizeof(w),
						    &b, &err),
			 KMS_OK);
	if (gen != 0)
		ck_assert_int_eq(kms_keyring_cmd_set_dk_generation(&b, gen, &err), KMS_OK);
	apply_ok(&b);
}

static void rotate_key(const char *id, uint32_t version, uint8_t seed)
{
	uint8_t w[40];
	kms_buf b = {0};

	memset(w, seed, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_rotate_key(id, version, w, sizeof(w), 1700000100, &b, &err),
			 KMS_OK);
	apply_ok(&b);
}

static void setup(void)
{
	kms_err_clear(&err);
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	add_member(1);
	add_member(2);
	add_member(3);
	create_key("a", 0xa1, 0);
	rotate_key("a", 2, 0xa2);
	create_key("b", 0xb1, 0);
}

static void teardown(void)
{
	kms_keyring_free(kr);
	kr = NULL;
}

static void begin(uint32_t gen, uint64_t by)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_dk_begin(gen, probe2, sizeof(probe2), by, 1700001000, &b,
						  &err),
			 KMS_OK);
	apply_ok(&b);
}

static kms_buf cmd_grant(uint64_t id, uint32_t gen, const uint8_t *fp)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_dk_grant(id, gen, fp, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_consume(uint64_t id, uint32_t gen, const uint8_t *fp)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_dk_consume(id, gen, fp, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_confirm(uint64_t id, uint32_t gen, int stage)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_dk_confirm(id, gen, stage, &b, &err), KMS_OK);
	return b;
}

/* Node id receives the key: grant, consume, confirm. */
static void hand_over(uint64_t id, uint32_t gen, const uint8_t *fp)
{
	kms_buf b = cmd_grant(id, gen, fp);

	apply_ok(&b);
	b = cmd_consume(id, gen, fp);
	apply_ok(&b);
	b = cmd_confirm(id, gen, KMS_DK_INSTALLED);
	apply_ok(&b);
}

/* Every version, its material replaced by one byte pattern. */
static kms_buf cmd_switch(uint32_t gen, uint8_t fill, size_t drop)
{
	kms_wrapped_version *v = NULL;
	size_t n = 0;
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_wrapped_versions(kr, &v, &n, &err), KMS_OK);
	for (size_t i = 0; i < n; i++)
		memset(v[i].wrapped, fill, v[i].len);
	ck_assert_uint_ge(n, drop);
	ck_assert_int_eq(kms_keyring_cmd_dk_switch(gen, v, n - drop, 1700002000, &b, &err), KMS_OK);
	kms_free(v);
	return b;
}

static void state(kms_dk_state *s)
{
	kms_keyring_dk_state(kr, s);
}

START_TEST(test_fresh_state)
{
	kms_dk_state s;

	state(&s);
	ck_assert_uint_eq(s.generation, 1);
	ck_assert_uint_eq(s.highest, 1);
	ck_assert_int_eq(s.rotating, 0);
}
END_TEST

START_TEST(test_full_rotation)
{
	kms_dk_state s;
	kms_wrapped_version *v = NULL;
	uint8_t probe[KMS_WRAPPED_MAX];
	size_t n = 0;
	kms_buf b;

	begin(2, 1);
	state(&s);
	ck_assert(s.rotating && s.rot_generation == 2 && s.highest == 2 && s.generation == 1);
	ck_assert_uint_eq(s.n_installed, 1);
	ck_assert_uint_eq(s.installed[0], 1);
	/* Not before every member holds it. */
	hand_over(2, 2, fp2);
	b = cmd_switch(2, 0xee, 0);
	refused(&b, KMS_ERR_PRECONDITION, "member 3 does not hold");
	hand_over(3, 2, fp3);
	/* A list that misses a version, or is of another key ring. */
	b = cmd_switch(2, 0xee, 1);
	refused(&b, KMS_ERR_PRECONDITION, "key 'b' version 1");
	b = cmd_switch(3, 0xee, 0);
	refused(&b, KMS_ERR_PRECONDITION, "rotation in progress is to generation 2");
	/* The old key is needed until the switch. */
	b = cmd_confirm(1, 2, KMS_DK_OLD_DESTROYED);
	refused(&b, KMS_ERR_PRECONDITION, "has not switched");
	b = cmd_switch(2, 0xee, 0);
	apply_ok(&b);
	state(&s);
	ck_assert(s.rotating && s.switched && s.generation == 2);
	ck_assert_uint_eq(kms_keyring_domain_key_probe(kr, probe), sizeof(probe2));
	ck_assert(memcmp(probe, probe2, sizeof(probe2)) == 0);
	ck_assert_int_eq(kms_keyring_wrapped_versions(kr, &v, &n, &err), KMS_OK);
	ck_assert_uint_eq(n, 3);
	for (size_t i = 0; i < n; i++)
		ck_assert_uint_eq(v[i].wrapped[0], 0xee);
	kms_free(v);
	/* Too late for the steps before the switch. */
	b = cmd_grant(2, 2, fp2);
	refused(&b, KMS_ERR_PRECONDITION, "already switched");
	b = (kms_buf){0};
	ck_assert_int_eq(kms_keyring_cmd_dk_abort(2, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "already switched");
	/* Each member drops the old key; the last one ends the rotation. */
	b = cmd_confirm(1, 2, KMS_DK_OLD_DESTROYED);
	apply_ok(&b);
	b = cmd_confirm(1, 2, KMS_DK_OLD_DESTROYED);
	refused(&b, KMS_ERR_EXISTS, "already destroyed");
	b = cmd_confirm(3, 2, KMS_DK_OLD_DESTROYED);
	apply_ok(&b);
	state(&s);
	ck_assert(s.rotating);
	b = cmd_confirm(2, 2, KMS_DK_OLD_DESTROYED);
	apply_ok(&b);
	state(&s);
	ck_assert(!s.rotating && s.generation == 2 && s.highest == 2);
	ck_assert_int_eq(s.last_rotated_at_unix, 1700002000);
}
END_TEST

/* The one-time grant: only its key, only once; a grant is replaced only before install. */
START_TEST(test_grant_rules)
{
	kms_buf b;

	begin(2, 1);
	b = cmd_consume(2, 2, fp2);
	refused(&b, KMS_ERR_PERMISSION, "holds no rotation grant");
	b = cmd_grant(2, 2, fp2);
	apply_ok(&b);
	b = cmd_consume(2, 2, fp3);
	refused(&b, KMS_ERR_PERMISSION, "another transport key");
	b = cmd_confirm(2, 2, KMS_DK_INSTALLED);
	refused(&b, KMS_ERR_PRECONDITION, "has not received");
	b = cmd_consume(2, 2, fp2);
	apply_ok(&b);
	b = cmd_consume(2, 2, fp2);
	refused(&b, KMS_ERR_PERMISSION, "is used");
	/* Restarted before installing: a new grant for a new transport key. */
	b = cmd_grant(2, 2, fp3);
	apply_ok(&b);
	b = cmd_consume(2, 2, fp2);
	refused(&b, KMS_ERR_PERMISSION, "another transport key");
	b = cmd_consume(2, 2, fp3);
	apply_ok(&b);
	b = cmd_confirm(2, 2, KMS_DK_INSTALLED);
	apply_ok(&b);
	b = cmd_confirm(2, 2, KMS_DK_INSTALLED);
	refused(&b, KMS_ERR_EXISTS, "already confirmed");
	b = cmd_grant(2, 2, fp2);
	refused(&b, KMS_ERR_PRECONDITION, "already holds");
	/* The starter holds it; strangers and other generations get nothing. */
	b = cmd_grant(1, 2, fp2);
	refused(&b, KMS_ERR_PRECONDITION, "already holds");
	b = cmd_grant(9, 2, fp2);
	refused(&b, KMS_ERR_PRECONDITION, "node 9 is not a member");
	b = cmd_grant(3, 3, fp3);
	refused(&b, KMS_ERR_PRECONDITION, "names domain-key generation 3");
}
END_TEST

/* A second rotation, or one from a stranger or of a wrong generation, changes nothing. */
START_TEST(test_begin_refused)
{
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_cmd_dk_begin(3, probe2, sizeof(probe2), 1, 1, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "the next generation is 2");
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(2, probe2, sizeof(probe2), 9, 1, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "node 9 is not a member");
	b = cmd_grant(2, 2, fp2);
	refused(&b, KMS_ERR_PRECONDITION, "no domain-key rotation is in progress");
	begin(2, 1);
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(3, probe2, sizeof(probe2), 2, 1, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "already in progress");
}
END_TEST

/* An aborted generation is never reused; its key is gone from the state. */
START_TEST(test_abort)
{
	kms_dk_state s;
	kms_buf b = {0};

	begin(2, 1);
	hand_over(2, 2, fp2);
	ck_assert_int_eq(kms_keyring_cmd_dk_abort(3, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "generation 3");
	ck_assert_int_eq(kms_keyring_cmd_dk_abort(2, &b, &err), KMS_OK);
	apply_ok(&b);
	state(&s);
	ck_assert(!s.rotating && s.generation == 1 && s.highest == 2);
	ck_assert_int_eq(kms_keyring_cmd_dk_abort(2, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "no domain-key rotation");
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(2, probe2, sizeof(probe2), 1, 1, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "the next generation is 3");
	begin(3, 2);
}
END_TEST

/* Material made under an old key never lands after the switch, nor new before it. */
START_TEST(test_material_generation)
{
	uint8_t w[40] = {0};
	kms_buf b = {0};

	create_key("c", 0xc1, 1);
	ck_assert_int_eq(kms_keyring_cmd_create_key("d", "", NULL, ADMIN, 1, w, sizeof(w), &b, &err),
			 KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_set_dk_generation(&b, 2, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "generation 2, but the cluster's is generation 1");
	begin(2, 1);
	hand_over(2, 2, fp2);
	hand_over(3, 2, fp3);
	b = cmd_switch(2, 0xee, 0);
	apply_ok(&b);
	/* An old command (no generation) after the switch. */
	ck_assert_int_eq(kms_keyring_cmd_create_key("d", "", NULL, ADMIN, 1, w, sizeof(w), &b, &err),
			 KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "generation 1, but the cluster's is generation 2");
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("a", 3, w, sizeof(w), 1, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "generation 1");
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("a", 3, w, sizeof(w), 1, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_set_dk_generation(&b, 2, &err), KMS_OK);
	apply_ok(&b);
	create_key("d", 0xd1, 2);
	/* Only those two commands carry one. */
	b = cmd_grant(2, 2, fp2);
	ck_assert_int_eq(kms_keyring_cmd_set_dk_generation(&b, 2, &err), KMS_ERR_INVALID);
	kms_buf_free(&b);
}
END_TEST

/* Mid-rotation, a snapshot restores the same state; a malformed one changes nothing. */
START_TEST(test_snapshot_round_trip)
{
	kms_dk_state s1, s2;
	kms_keyring *other;
	kms_buf b, s;

	begin(2, 1);
	hand_over(2, 2, fp2);
	b = cmd_grant(3, 2, fp3);
	apply_ok(&b);
	state(&s1);
	s = snap();
	ck_assert_int_eq(kms_keyring_new(&other, &err), KMS_OK);
	ck_assert_msg(kms_keyring_restore(other, s.data, s.len, &err) == KMS_OK, "restore: %s",
		      err.msg);
	kms_keyring_dk_state(other, &s2);
	ck_assert(memcmp(&s1, &s2, sizeof(s1)) == 0);
	/* The restored ring goes on where this one stands. */
	b = cmd_consume(3, 2, fp3);
	ck_assert_int_eq(kms_keyring_apply(other, b.data, b.len, &err), KMS_OK);
	kms_buf_free(&b);
	kms_keyring_free(other);
	kms_buf_free(&s);
}
END_TEST

static kms_buf snapshot_with(Kms__V1__DomainKeyState *dk)
{
	Kms__V1__KeyRingSnapshot m = KMS__V1__KEY_RING_SNAPSHOT__INIT;
	kms_buf b;

	m.format = 1;
	m.domain_key = dk;
	b.len = kms__v1__key_ring_snapshot__get_packed_size(&m);
	b.data = kms_malloc(b.len);
	kms__v1__key_ring_snapshot__pack(&m, b.data);
	return b;
}

START_TEST(test_snapshot_bad)
{
	Kms__V1__DomainKeyState dk = KMS__V1__DOMAIN_KEY_STATE__INIT;
	Kms__V1__DomainKeyRotation r = KMS__V1__DOMAIN_KEY_ROTATION__INIT;
	uint64_t ids[2] = {3, 2};
	kms_dk_state before, after;
	kms_buf b;

	state(&before);
	dk.generation = 3;
	dk.highest_generation = 2;
	b = snapshot_with(&dk);
	ck_assert_int_eq(kms_keyring_restore(kr, b.data, b.len, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "above the highest"));
	kms_buf_free(&b);
	dk.generation = 1;
	dk.highest_generation = 2;
	dk.rotation = &r;
	r.generation = 3;
	r.wrapped_probe.data = (uint8_t *)probe2;
	r.wrapped_probe.len = sizeof(probe2);
	b = snapshot_with(&dk);
	ck_assert_int_eq(kms_keyring_restore(kr, b.data, b.len, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not fit"));
	kms_buf_free(&b);
	r.generation = 2;
	r.installed = ids;
	r.n_installed = 2;
	b = snapshot_with(&dk);
	ck_assert_int_eq(kms_keyring_restore(kr, b.data, b.len, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of order"));
	kms_buf_free(&b);
	r.n_installed = 0;
	r.wrapped_probe.len = 0;
	b = snapshot_with(&dk);
	ck_assert_int_eq(kms_keyring_restore(kr, b.data, b.len, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "probe"));
	kms_buf_free(&b);
	state(&after);
	ck_assert(memcmp(&before, &after, sizeof(before)) == 0);
	ck_assert(kms_keyring_has_key(kr, "a"));
}
END_TEST

/* Builders refuse what apply would; a malformed command is no command. */
START_TEST(test_bad_input)
{
	kms_buf b = {0};
	Kms__V1__ConfirmDomainKeyCommand k = KMS__V1__CONFIRM_DOMAIN_KEY_COMMAND__INIT;
	Kms__V1__GrantDomainKeyRotationCommand g = KMS__V1__GRANT_DOMAIN_KEY_ROTATION_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	uint8_t short_fp[5] = {1};

	ck_assert_int_eq(kms_keyring_cmd_dk_begin(2, probe2, 0, 1, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(2, probe2, 65, 1, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(1, probe2, 40, 1, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_dk_begin(2, probe2, 40, 0, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_dk_grant(0, 2, fp2, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_dk_confirm(2, 2, 7, &b, &err), KMS_ERR_INVALID);
	ck_assert_ptr_null(b.data);
	begin(2, 1);
	/* By hand: a stage no node knows, a fingerprint of the wrong size. */
	k.node_id = 2;
	k.generation = 2;
	k.stage = 9;
	c.cmd_case = KMS__V1__COMMAND__CMD_CONFIRM_DOMAIN_KEY;
	c.confirm_domain_key = &k;
	b.len = kms__v1__command__get_packed_size(&c);
	b.data = kms_malloc(b.len);
	kms__v1__command__pack(&c, b.data);
	refused(&b, KMS_ERR_INVALID, "unknown stage");
	g.node_id = 2;
	g.generation = 2;
	g.transport_key_sha256.data = short_fp;
	g.transport_key_sha256.len = sizeof(short_fp);
	c.cmd_case = KMS__V1__COMMAND__CMD_GRANT_DOMAIN_KEY_ROTATION;
	c.grant_domain_key_rotation = &g;
	b.len = kms__v1__command__get_packed_size(&c);
	b.data = kms_malloc(b.len);
	kms__v1__command__pack(&c, b.data);
	refused(&b, KMS_ERR_INVALID, "32 bytes, not 5");
}
END_TEST

static Suite *dk_suite(void)
{
	Suite *s = suite_create("keyring_dk");
	TCase *t = tcase_create("rotation");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, test_fresh_state);
	tcase_add_test(t, test_full_rotation);
	tcase_add_test(t, test_grant_rules);
	tcase_add_test(t, test_begin_refused);
	tcase_add_test(t, test_abort);
	tcase_add_test(t, test_material_generation);
	tcase_add_test(t, test_snapshot_round_trip);
	tcase_add_test(t, test_snapshot_bad);
	tcase_add_test(t, test_bad_input);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(dk_suite()));
}
