/* test_keyring_lifecycle.c - Check suite for the key lifecycle in the key ring: versions and rotation, key states, encryption reservations, aliases, and their snapshots. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "kms/policy.h"
#include "kms/v1/state.pb-c.h"
#include "check_run.h"

#define WEB "spiffe://example.org/ns/app/sa/web"
#define STRANGER "spiffe://example.org/ns/other/sa/x"
#define ADMIN "spiffe://example.org/ns/ops/sa/admin"
#define T0 1700000000
#define DAY 86400

#define ENABLED KMS__V1__KEY_STATE__KEY_STATE_ENABLED
#define DISABLED KMS__V1__KEY_STATE__KEY_STATE_DISABLED
#define PENDING KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION
#define DESTROYED KMS__V1__KEY_STATE__KEY_STATE_DESTROYED
#define V_ENABLED KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED
#define V_EXHAUSTED KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED
#define V_DESTROYED KMS__V1__KEY_VERSION_STATE__KEY_VERSION_DESTROYED

#define ASSERT_MSG_HAS(err, s)                                                                    \
	ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' does not name '%s'",          \
		      (err).msg, (s))

/* --- fixture ------------------------------------------------------------- */

static kms_keyring *kr;

static struct {
	pthread_mutex_t mu;
	size_t n;
	unsigned long h[64];
} released = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_release(void *arg, unsigned long handle)
{
	(void)arg;
	pthread_mutex_lock(&released.mu);
	if (released.n < 64)
		released.h[released.n] = handle;
	released.n++;
	pthread_mutex_unlock(&released.mu);
}

static size_t times_released(unsigned long h)
{
	size_t k = 0;

	for (size_t i = 0; i < released.n && i < 64; i++)
		k += released.h[i] == h;
	return k;
}

static kms_keyring *ring_new(void)
{
	kms_keyring *k;
	kms_err err = {0};
	char *admins[] = {(char *)ADMIN};
	kms_buf b = {0};

	ck_assert_int_eq(kms_keyring_new(&k, &err), KMS_OK);
	kms_keyring_set_release(k, on_release, NULL);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(admins, 1, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_apply(k, b.data, b.len, &err), KMS_OK);
	kms_buf_free(&b);
	return k;
}

static void setup(void)
{
	released.n = 0;
	kms_alloc_fail_reset();
	kr = ring_new();
}

static void teardown(void)
{
	kms_alloc_fail_reset();
	kms_keyring_free(kr);
	kr = NULL;
}

/* --- helpers ------------------------------------------------------------- */

static char *all_ops[] = {"Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"};

/* A policy granting principal every operation. */
struct tpolicy {
	Kms__V1__KeyPolicy p;
	Kms__V1__Grant g;
	Kms__V1__Grant *gp[1];
};

static void tpolicy_for(struct tpolicy *t, const char *principal)
{
	Kms__V1__KeyPolicy p = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant g = KMS__V1__GRANT__INIT;

	t->p = p;
	t->g = g;
	t->g.principal = (char *)principal;
	t->g.operations = all_ops;
	t->g.n_operations = 4;
	t->gp[0] = &t->g;
	t->p.grants = t->gp;
	t->p.n_grants = 1;
}

static void fill_wrapped(uint8_t *w, size_t len, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		w[i] = (uint8_t)(seed + i * 7);
}

/* Applies a built command (freeing it) to k; the status. */
static int apply_to(kms_keyring *k, kms_buf *b, kms_err *err)
{
	int rc = kms_keyring_apply(k, b->data, b->len, err);

	kms_buf_free(b);
	return rc;
}

static kms_buf snapshot_of(kms_keyring *k)
{
	kms_err err = {0};
	kms_buf b = {0};

	ck_assert_msg(kms_keyring_snapshot(k, malloc, &b, &err) == KMS_OK, "%s", err.msg);
	return b;
}

static int same_bytes(const kms_buf *a, const kms_buf *b)
{
	return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

/*
 * Applies cmd expecting a refusal with code and a message holding what:
 * kms_keyring_check gives the same verdict first, and neither changes the
 * key ring (its snapshot stays byte for byte the same).
 */
static void refused(kms_buf *cmd, int code, const char *what)
{
	kms_buf before = snapshot_of(kr), after;
	kms_err e1 = {0}, e2 = {0};

	ck_assert_msg(kms_keyring_check(kr, cmd->data, cmd->len, &e1) == code,
		      "check: %d '%s', want %d", e1.code, e1.msg, code);
	ck_assert_msg(kms_keyring_apply(kr, cmd->data, cmd->len, &e2) == code,
		      "apply: %d '%s', want %d", e2.code, e2.msg, code);
	ck_assert_str_eq(e1.msg, e2.msg);
	ASSERT_MSG_HAS(e2, what);
	after = snapshot_of(kr);
	ck_assert_msg(same_bytes(&before, &after), "a refused command changed the key ring");
	free(before.data);
	free(after.data);
	kms_buf_free(cmd);
}

/* Applies cmd expecting success; kms_keyring_check agrees first. */
static void accepted(kms_buf *cmd)
{
	kms_err err = {0};

	ck_assert_msg(kms_keyring_check(kr, cmd->data, cmd->len, &err) == KMS_OK, "check: %s",
		      err.msg);
	ck_assert_msg(kms_keyring_apply(kr, cmd->data, cmd->len, &err) == KMS_OK, "apply: %s",
		      err.msg);
	kms_buf_free(cmd);
}

static void create_in(kms_keyring *k, const char *id, const char *grantee, uint8_t seed)
{
	struct tpolicy p;
	uint8_t w[40];
	kms_buf b = {0};
	kms_err err = {0};

	tpolicy_for(&p, grantee);
	fill_wrapped(w, sizeof(w), seed);
	ck_assert_msg(kms_keyring_cmd_create_key(id, "d", &p.p, ADMIN, T0, w, sizeof(w), &b,
						 &err) == KMS_OK,
		      "%s", err.msg);
	ck_assert_msg(apply_to(k, &b, &err) == KMS_OK, "create %s: %s", id, err.msg);
}

static void create(const char *id, uint8_t seed)
{
	create_in(kr, id, WEB, seed);
}

static kms_buf cmd_rotate(const char *id, uint32_t version, uint8_t seed, int64_t now)
{
	uint8_t w[40];
	kms_buf b = {0};
	kms_err err = {0};

	fill_wrapped(w, sizeof(w), seed);
	ck_assert_msg(kms_keyring_cmd_rotate_key(id, version, w, sizeof(w), now, &b, &err) ==
			      KMS_OK,
		      "%s", err.msg);
	return b;
}

static int rotate_in(kms_keyring *k, const char *id, uint32_t version, uint8_t seed,
		     int64_t now, kms_err *err)
{
	kms_buf b = cmd_rotate(id, version, seed, now);

	return apply_to(k, &b, err);
}

static void rotate(const char *id, uint32_t version, uint8_t seed)
{
	kms_err err = {0};

	ck_assert_msg(rotate_in(kr, id, version, seed, T0 + version, &err) == KMS_OK, "%s",
		      err.msg);
}

static kms_buf cmd_enabled(const char *id, int on)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled(id, on, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_schedule(const char *id, int64_t at)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_schedule_key_deletion(id, at, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_cancel(const char *id)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_cancel_key_deletion(id, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_destroy(const char *id, int64_t now)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_destroy_key(id, now, &b, &err), KMS_OK);
	return b;
}

static kms_buf cmd_rotation_policy(const char *id, uint64_t period, uint64_t max)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_msg(kms_keyring_cmd_set_rotation_policy(id, period, max, &b, &err) == KMS_OK,
		      "%s", err.msg);
	return b;
}

static kms_buf cmd_reserve(const char *id, uint32_t v, uint64_t count, uint64_t node,
			   uint64_t inc)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_msg(kms_keyring_cmd_reserve_encryptions(id, v, count, node, inc, &b, &err) ==
			      KMS_OK,
		      "%s", err.msg);
	return b;
}

static kms_buf cmd_alias(const char *name, const char *id, int update)
{
	kms_buf b = {0};
	kms_err err = {0};
	int rc = update ? kms_keyring_cmd_update_alias(name, id, T0 + 5, &b, &err)
			: kms_keyring_cmd_create_alias(name, id, T0, &b, &err);

	ck_assert_msg(rc == KMS_OK, "%s", err.msg);
	return b;
}

static kms_buf cmd_delete_alias(const char *name)
{
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_delete_alias(name, &b, &err), KMS_OK);
	return b;
}

/* Packs a raw Command (for commands no builder would make). */
static kms_buf pack_cmd(Kms__V1__Command *c)
{
	kms_buf b;

	b.len = kms__v1__command__get_packed_size(c);
	b.data = kms_malloc(b.len ? b.len : 1);
	ck_assert_ptr_nonnull(b.data);
	ck_assert_uint_eq(kms__v1__command__pack(c, b.data), b.len);
	return b;
}

static Kms__V1__KeyMetadata *describe(const char *name)
{
	Kms__V1__KeyMetadata *md = NULL;
	kms_err err = {0};

	ck_assert_msg(kms_keyring_describe(kr, name, ADMIN, 1, &md, &err) == KMS_OK, "%s",
		      err.msg);
	return md;
}

static kms_key_status status(kms_keyring *k, const char *id)
{
	kms_key_status s;
	kms_err err = {0};

	ck_assert_msg(kms_keyring_key_status(k, id, &s, &err) == KMS_OK, "%s", err.msg);
	return s;
}

/* resolve as WEB; the use is released before returning. */
static int resolve_as(const char *name, uint32_t version, enum kms_op op, kms_key_use *out,
		      kms_err *err)
{
	kms_key_use use;
	int rc;

	memset(&use, 0, sizeof(use));
	rc = kms_keyring_resolve(kr, name, version, WEB, op, &use, err);
	if (out != NULL)
		*out = use;
	kms_keyring_use_release(&use);
	if (out != NULL) {
		out->ref = NULL;
		out->handle = 0;
	}
	return rc;
}

/* The snapshot's record of key id, unpacked (free with the snapshot). */
static Kms__V1__KeyRingSnapshot *unpack_snapshot(kms_keyring *k)
{
	kms_buf b = snapshot_of(k);
	Kms__V1__KeyRingSnapshot *s = kms__v1__key_ring_snapshot__unpack(NULL, b.len, b.data);

	ck_assert_ptr_nonnull(s);
	free(b.data);
	return s;
}

/* --- versions and rotation ----------------------------------------------- */

START_TEST(test_rotate_adds_primary_and_old_versions_decrypt)
{
	Kms__V1__KeyMetadata *md;
	kms_key_use use;
	kms_err err = {0};
	uint8_t w[40];
	kms_buf b;

	create("k", 1);
	rotate("k", 2, 2);
	rotate("k", 3, 3);
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.version, 3);
	ck_assert_str_eq(use.key_id, "k");
	fill_wrapped(w, sizeof(w), 3);
	ck_assert_mem_eq(use.wrapped, w, sizeof(w));
	/* Every older version still decrypts, with its own material. */
	for (uint32_t v = 1; v <= 3; v++) {
		ck_assert_int_eq(resolve_as("k", v, KMS_OP_DECRYPT, &use, &err), KMS_OK);
		ck_assert_uint_eq(use.version, v);
		fill_wrapped(w, sizeof(w), (uint8_t)v);
		ck_assert_mem_eq(use.wrapped, w, sizeof(w));
	}
	ck_assert_int_eq(resolve_as("k", 4, KMS_OP_DECRYPT, NULL, &err), KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "key 'k' has no version 4");

	md = describe("k");
	ck_assert_uint_eq(md->primary_version, 3);
	ck_assert_uint_eq(md->n_versions, 3);
	ck_assert_uint_eq(md->n_version_details, 3);
	for (size_t i = 0; i < 3; i++) {
		ck_assert_uint_eq(md->versions[i], i + 1);
		ck_assert_uint_eq(md->version_details[i]->version, i + 1);
		ck_assert_str_eq(md->version_details[i]->state, "Enabled");
		ck_assert_uint_eq(md->version_details[i]->encryptions, 0);
	}
	ck_assert_int_eq(md->version_details[0]->created_at_unix, T0);
	ck_assert_int_eq(md->version_details[2]->created_at_unix, T0 + 3);
	ck_assert_str_eq(md->key_state, "Enabled");
	ck_assert(md->enabled);
	kms_keyring_metadata_free(md);
	ck_assert_int_eq(status(kr, "k").last_rotated_at_unix, T0 + 3);
	ck_assert_uint_eq(status(kr, "k").last_version, 3);

	/* A second rotation to the same number came too late; one that skips
	 * a number is refused alike. Neither changes anything. */
	b = cmd_rotate("k", 3, 9, T0 + 10);
	refused(&b, KMS_ERR_PRECONDITION, "another rotation came first");
	b = cmd_rotate("k", 5, 9, T0 + 10);
	refused(&b, KMS_ERR_PRECONDITION, "its next version is 4, not 5");
	b = cmd_rotate("nope", 2, 9, T0 + 10);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");
}
END_TEST

START_TEST(test_rotate_builder_and_raw_refusals)
{
	Kms__V1__KeyVersionRecord v = KMS__V1__KEY_VERSION_RECORD__INIT;
	Kms__V1__RotateKeyCommand rk = KMS__V1__ROTATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	uint8_t w[KMS_WRAPPED_MAX + 1];
	kms_buf b = {0};
	kms_err err = {0};

	create("k", 1);
	fill_wrapped(w, sizeof(w), 1);
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("k", 1, w, 40, T0, &b, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "version 2 to");
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("k", 2, w, 0, T0, &b, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "wrapped material of 0 bytes");
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("k", 2, w, KMS_WRAPPED_MAX + 1, T0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("k", 2, NULL, 40, T0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("alias/k", 2, w, 40, T0, &b, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "is an alias");
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("bad id", 2, w, 40, T0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(b.data);

	/* What no builder makes, apply refuses: a version that starts used. */
	v.version = 2;
	v.wrapped_material.data = w;
	v.wrapped_material.len = 40;
	v.state = V_EXHAUSTED;
	rk.key_id = "k";
	rk.version = &v;
	c.cmd_case = KMS__V1__COMMAND__CMD_ROTATE_KEY;
	c.rotate_key = &rk;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "starts Enabled");
	v.state = V_ENABLED;
	v.reserved_encryptions = 5;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "starts Enabled");
	rk.version = NULL;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "holds no version");
	/* The positive twin. */
	v.reserved_encryptions = 0;
	rk.version = &v;
	b = pack_cmd(&c);
	accepted(&b);
	ck_assert_uint_eq(status(kr, "k").primary_version, 2);
}
END_TEST

/*
 * A key with 1,000 versions: each is found by its number (index v - 1,
 * never a scan), every one decrypts, and the record survives a snapshot.
 */
START_TEST(test_thousand_versions)
{
	kms_keyring *copy = ring_new();
	kms_buf s1, s2;
	kms_key_use use;
	kms_err err = {0};
	uint8_t w[40];

	create("many", 1);
	for (uint32_t v = 2; v <= 1000; v++)
		ck_assert_int_eq(rotate_in(kr, "many", v, (uint8_t)v, T0 + v, &err), KMS_OK);
	for (uint32_t v = 1; v <= 1000; v += 111) {
		ck_assert_int_eq(resolve_as("many", v, KMS_OP_DECRYPT, &use, &err), KMS_OK);
		fill_wrapped(w, sizeof(w), (uint8_t)v);
		ck_assert_mem_eq(use.wrapped, w, sizeof(w));
	}
	ck_assert_int_eq(resolve_as("many", 0, KMS_OP_ENCRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.version, 1000);
	s1 = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(copy, s1.data, s1.len, &err), KMS_OK);
	s2 = snapshot_of(copy);
	ck_assert(same_bytes(&s1, &s2));
	ck_assert_uint_eq(status(copy, "many").last_version, 1000);
	free(s1.data);
	free(s2.data);
	kms_keyring_free(copy);
}
END_TEST

/* Records handle h for version v of id (material of seed), keeping no use. */
static void record_handle(const char *id, uint32_t v, uint8_t seed, unsigned long h)
{
	kms_key_use use;
	kms_err err = {0};

	memset(&use, 0, sizeof(use));
	use.version = v;
	use.wrapped_len = 40;
	fill_wrapped(use.wrapped, 40, seed);
	ck_assert_msg(kms_keyring_set_handle(kr, id, h, &use, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(use.handle, h);
	kms_keyring_use_release(&use);
}

/* What the rotated hook heard, in order. */
static struct {
	unsigned calls;
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t version;
	int64_t at;
} heard;

static void on_rotated(void *arg, const char *key_id, uint32_t version, int64_t at)
{
	ck_assert_ptr_eq(arg, &heard);
	heard.calls++;
	snprintf(heard.key_id, sizeof(heard.key_id), "%s", key_id);
	heard.version = version;
	heard.at = at;
}

/*
 * The rotated hook hears each applied rotation once, after it is in the
 * key ring, and nothing else: not a check, not a refused rotation, not a
 * snapshot restore.
 */
START_TEST(test_rotated_hook)
{
	kms_keyring *other;
	kms_buf b, snap;
	kms_err err = {0};
	kms_key_use use;

	memset(&heard, 0, sizeof(heard));
	kms_keyring_set_rotated(kr, on_rotated, &heard);
	create("k", 1);
	ck_assert_uint_eq(heard.calls, 0);
	b = cmd_rotate("k", 2, 9, T0 + 5);
	ck_assert_int_eq(kms_keyring_check(kr, b.data, b.len, &err), KMS_OK);
	ck_assert_uint_eq(heard.calls, 0);
	ck_assert_int_eq(apply_to(kr, &b, &err), KMS_OK);
	ck_assert_uint_eq(heard.calls, 1);
	ck_assert_str_eq(heard.key_id, "k");
	ck_assert_uint_eq(heard.version, 2);
	ck_assert_int_eq(heard.at, T0 + 5);
	/* What the hook's worker reads back: the new primary. */
	memset(&use, 0, sizeof(use));
	ck_assert_msg(kms_keyring_primary_use(kr, "k", 2, &use, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(use.version, 2);
	ck_assert_uint_eq(use.wrapped_len, 40);
	kms_keyring_use_release(&use);
	/* A stale version number: refused, not heard. */
	b = cmd_rotate("k", 2, 10, T0 + 6);
	refused(&b, KMS_ERR_PRECONDITION, "another rotation came first");
	ck_assert_uint_eq(heard.calls, 1);
	/* A restore brings versions without a rotation applied here. */
	ck_assert_int_eq(kms_keyring_new(&other, &err), KMS_OK);
	kms_keyring_set_rotated(other, on_rotated, &heard);
	snap = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(other, snap.data, snap.len, &err), KMS_OK);
	free(snap.data);
	ck_assert_uint_eq(heard.calls, 1);
	kms_keyring_free(other);
	kms_keyring_set_rotated(kr, NULL, NULL);
	rotate("k", 3, 11);
	ck_assert_uint_eq(heard.calls, 1);
}
END_TEST

/* primary_use gives the material of an Enabled key's Enabled primary, and
 * refuses every version the node has no reason to prepare. */
START_TEST(test_primary_use_refusals)
{
	kms_key_use use;
	kms_err err = {0};
	kms_buf b;

	memset(&use, 0, sizeof(use));
	create("k", 1);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "nope", 1, &use, &err), KMS_ERR_NOT_FOUND);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "k", 2, &use, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "version 2 is not its primary version (1)");
	rotate("k", 2, 2);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "k", 1, &use, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "version 1 is not its primary version (2)");
	ck_assert_str_eq(use.key_id, "");
	b = cmd_rotation_policy("k", 0, 100);
	accepted(&b);
	b = cmd_reserve("k", 2, 100, 1, 1);
	accepted(&b);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "k", 2, &use, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "version 2 is Exhausted");
	create("d", 3);
	b = cmd_enabled("d", 0);
	accepted(&b);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "d", 1, &use, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "key 'd' is disabled");
	create("p", 4);
	b = cmd_schedule("p", T0 + 86400);
	accepted(&b);
	ck_assert_int_eq(kms_keyring_primary_use(kr, "p", 1, &use, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "key 'p' is pending deletion");
	ck_assert_ptr_null(use.ref);
	ck_assert_uint_eq(use.handle, 0);
}
END_TEST

/*
 * The node-local handle slots grow with the versions; destruction drops
 * every one, released once each, a handle in use only once its call is
 * done.
 */
START_TEST(test_handles_follow_rotation_and_destruction)
{
	kms_key_use held, use;
	kms_err err = {0};
	kms_buf b;

	create("k", 1);
	record_handle("k", 1, 1, 0x101);
	rotate("k", 2, 2);
	record_handle("k", 2, 2, 0x102);
	rotate("k", 3, 3);
	memset(&held, 0, sizeof(held));
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 1, WEB, KMS_OP_DECRYPT, &held, &err),
			 KMS_OK);
	ck_assert_uint_eq(held.handle, 0x101);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 2, WEB, KMS_OP_DECRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.handle, 0x102);
	kms_keyring_use_release(&use);
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 0, WEB, KMS_OP_ENCRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.handle, 0); /* version 3: not unwrapped yet */
	ck_assert_uint_eq(released.n, 0);

	b = cmd_schedule("k", T0 + DAY);
	accepted(&b);
	b = cmd_destroy("k", T0 + DAY);
	accepted(&b);
	/* 0x102 had no user: released now; 0x101 waits for its holder. */
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(times_released(0x102), 1);
	ck_assert_uint_eq(held.handle, 0x101);
	kms_keyring_use_release(&held);
	ck_assert_uint_eq(released.n, 2);
	ck_assert_uint_eq(times_released(0x101), 1);
	/* A handle of destroyed material is never recorded. */
	memset(&use, 0, sizeof(use));
	use.version = 1;
	use.wrapped_len = 40;
	fill_wrapped(use.wrapped, 40, 1);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k", 0x103, &use, &err), KMS_OK);
	kms_keyring_use_release(&use);
	ck_assert_uint_eq(times_released(0x103), 1);
	kms_keyring_free(kr);
	kr = ring_new();
	ck_assert_uint_eq(released.n, 3);
}
END_TEST

/* A restore keeps the handles of versions a rotation left as they were. */
START_TEST(test_restore_keeps_handles_of_rotated_key)
{
	kms_keyring *src = ring_new();
	kms_buf snap;
	kms_key_use use;
	kms_err err = {0};

	create("k", 1);
	create_in(src, "k", WEB, 1);
	ck_assert_int_eq(rotate_in(src, "k", 2, 2, T0 + 2, &err), KMS_OK);
	record_handle("k", 1, 1, 0x201);
	snap = snapshot_of(src);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	ck_assert_uint_eq(released.n, 0);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 1, WEB, KMS_OP_DECRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.handle, 0x201);
	kms_keyring_use_release(&use);
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 0, WEB, KMS_OP_ENCRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.version, 2);
	ck_assert_uint_eq(use.handle, 0);
	free(snap.data);
	kms_keyring_free(src);
}
END_TEST

/* --- key states ---------------------------------------------------------- */

START_TEST(test_disable_and_enable)
{
	Kms__V1__KeyMetadata *md;
	kms_err err = {0};
	kms_buf b;

	create("k", 1);
	b = cmd_enabled("k", 0);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_ERR_PRECONDITION);
	ck_assert_str_eq(err.msg, "key 'k' is disabled");
	ck_assert_int_eq(resolve_as("k", 1, KMS_OP_DECRYPT, NULL, &err), KMS_ERR_PRECONDITION);
	ck_assert_str_eq(err.msg, "key 'k' is disabled");
	/* A stranger learns nothing of the state. */
	{
		kms_key_use use;

		memset(&use, 0, sizeof(use));
		ck_assert_int_eq(kms_keyring_resolve(kr, "k", 0, STRANGER, KMS_OP_ENCRYPT, &use,
						     &err),
				 KMS_ERR_PERMISSION);
	}
	md = describe("k");
	ck_assert_str_eq(md->key_state, "Disabled");
	ck_assert(!md->enabled);
	kms_keyring_metadata_free(md);
	/* The same state again changes nothing and is no error. */
	b = cmd_enabled("k", 0);
	accepted(&b);
	b = cmd_enabled("k", 1);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_OK);
	md = describe("k");
	ck_assert_str_eq(md->key_state, "Enabled");
	ck_assert(md->enabled);
	kms_keyring_metadata_free(md);
	b = cmd_enabled("nope", 1);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("alias/k", 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled(NULL, 1, &b, &err), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_deletion_schedule_cancel_destroy)
{
	Kms__V1__KeyMetadata *md;
	Kms__V1__KeyRingSnapshot *s;
	struct tpolicy p;
	kms_err err = {0};
	kms_buf b = {0};
	uint8_t w[40];
	const int64_t at = T0 + 7 * DAY;

	create("k", 1);
	rotate("k", 2, 2);
	b = cmd_schedule("k", at);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k", 1, KMS_OP_DECRYPT, NULL, &err), KMS_ERR_PRECONDITION);
	ck_assert_str_eq(err.msg, "key 'k' is pending deletion (on 2023-11-21T22:13:20Z)");
	md = describe("k");
	ck_assert_str_eq(md->key_state, "PendingDeletion");
	ck_assert_int_eq(md->deletion_date_unix, at);
	ck_assert(!md->enabled);
	kms_keyring_metadata_free(md);

	/* What a key pending deletion refuses, each changing nothing. */
	b = cmd_enabled("k", 1);
	refused(&b, KMS_ERR_PRECONDITION, "cancel the deletion first");
	b = cmd_enabled("k", 0);
	refused(&b, KMS_ERR_PRECONDITION, "pending deletion");
	b = cmd_schedule("k", at + DAY);
	refused(&b, KMS_ERR_PRECONDITION, "cancel it first");
	b = cmd_rotate("k", 3, 3, T0);
	refused(&b, KMS_ERR_PRECONDITION, "pending deletion");
	b = cmd_destroy("k", at - 1);
	refused(&b, KMS_ERR_PRECONDITION, "may be destroyed from 2023-11-21T22:13:20Z on");

	/* Cancel leaves it disabled, as AWS KMS does. */
	b = cmd_cancel("k");
	accepted(&b);
	ck_assert_int_eq(status(kr, "k").state, DISABLED);
	ck_assert_int_eq(status(kr, "k").deletion_at_unix, 0);
	b = cmd_cancel("k");
	refused(&b, KMS_ERR_PRECONDITION, "is not pending deletion (it is Disabled)");
	b = cmd_destroy("k", at);
	refused(&b, KMS_ERR_PRECONDITION, "not pending deletion: schedule its deletion first");

	/* Schedule from Disabled, then destroy when the date comes. */
	b = cmd_schedule("k", at);
	accepted(&b);
	b = cmd_destroy("k", at);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k", 1, KMS_OP_DECRYPT, NULL, &err), KMS_ERR_PRECONDITION);
	ck_assert_str_eq(err.msg, "key 'k' was destroyed");
	md = describe("k");
	ck_assert_str_eq(md->key_state, "Destroyed");
	ck_assert_int_eq(md->deletion_date_unix, 0);
	ck_assert_str_eq(md->version_details[0]->state, "Destroyed");
	ck_assert_str_eq(md->version_details[1]->state, "Destroyed");
	kms_keyring_metadata_free(md);
	/* The material is gone from the replicated state itself. */
	s = unpack_snapshot(kr);
	ck_assert_uint_eq(s->n_keys, 1);
	ck_assert_uint_eq(s->keys[0]->n_versions, 2);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_uint_eq(s->keys[0]->versions[i]->wrapped_material.len, 0);
		ck_assert_int_eq(s->keys[0]->versions[i]->state, V_DESTROYED);
	}
	ck_assert_int_eq(s->keys[0]->destroyed_at_unix, at);
	kms__v1__key_ring_snapshot__free_unpacked(s, NULL);

	/* Destroyed is final: everything is refused, nothing changes. */
	b = cmd_enabled("k", 1);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_schedule("k", at);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_cancel("k");
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_destroy("k", at + 1);
	refused(&b, KMS_ERR_PRECONDITION, "destroyed already");
	b = cmd_rotate("k", 3, 3, at);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_rotation_policy("k", 0, 0);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_reserve("k", 1, 10, 1, 1);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	tpolicy_for(&p, STRANGER);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k", &p.p, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	/* The id is a tombstone: no key of that id ever again. */
	tpolicy_for(&p, WEB);
	fill_wrapped(w, sizeof(w), 7);
	ck_assert_int_eq(kms_keyring_cmd_create_key("k", "", &p.p, ADMIN, T0, w, 40, &b, &err),
			 KMS_OK);
	refused(&b, KMS_ERR_EXISTS, "key 'k' already exists");
	ck_assert_int_eq(kms_keyring_cmd_schedule_key_deletion("k", 0, &b, &err), KMS_ERR_INVALID);
}
END_TEST

/* A record from before key_state: its state reads from the enabled flag. */
START_TEST(test_record_rules)
{
	Kms__V1__KeyVersionRecord v1 = KMS__V1__KEY_VERSION_RECORD__INIT, v2;
	Kms__V1__KeyVersionRecord *vs[2] = {&v1, &v2};
	Kms__V1__KeyRecord rec = KMS__V1__KEY_RECORD__INIT;
	Kms__V1__CreateKeyCommand ck = KMS__V1__CREATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	uint8_t w[40];
	kms_buf b;

	fill_wrapped(w, sizeof(w), 4);
	v1.version = 1;
	v1.wrapped_material.data = w;
	v1.wrapped_material.len = 40;
	v2 = v1;
	v2.version = 2;
	rec.key_id = "old";
	rec.versions = vs;
	rec.n_versions = 1;
	rec.primary_version = 1;
	rec.enabled = 0;
	ck.key = &rec;
	c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_KEY;
	c.create_key = &ck;

	rec.key_state = ENABLED; /* enabled says otherwise */
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "enabled flag disagrees");
	rec.key_state = 9;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "unknown key state 9");
	rec.key_state = PENDING;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "without a deletion date");
	rec.key_state = DESTROYED;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "is destroyed but its version 1 is not");
	v1.state = V_DESTROYED;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "destroyed but holds wrapped material");
	rec.key_state = KMS__V1__KEY_STATE__KEY_STATE_UNSPECIFIED;
	rec.n_versions = 2;
	rec.primary_version = 1;
	v1.wrapped_material.len = 0;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "primary version 1 is destroyed");
	rec.primary_version = 3;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "primary version 3 is not one of its 2 versions");
	v1.state = 7;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "unknown state 7");
	v1.state = V_ENABLED;
	v1.wrapped_material.len = 40;
	v1.reserved_encryptions = KMS_ENCRYPTIONS_MAX + 1;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "reserved encryptions");
	v1.reserved_encryptions = 0;
	rec.primary_version = 2;
	rec.max_encryptions_per_version = KMS_ENCRYPTIONS_MAX + 1;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "above 2^32");
	rec.max_encryptions_per_version = KMS_ENCRYPTIONS_MAX;
	rec.rotation_period_seconds = KMS_ROTATION_PERIOD_MAX + 1;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "longer than 100 years");
	/* The positive twin: an old-style disabled record with two versions. */
	rec.rotation_period_seconds = 0;
	b = pack_cmd(&c);
	accepted(&b);
	ck_assert_int_eq(status(kr, "old").state, DISABLED);
	ck_assert_uint_eq(status(kr, "old").max_encryptions, KMS_ENCRYPTIONS_MAX);
}
END_TEST

/* --- policies ------------------------------------------------------------ */

START_TEST(test_put_key_policy)
{
	Kms__V1__PutKeyPolicyCommand pp = KMS__V1__PUT_KEY_POLICY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	Kms__V1__KeyMetadata *md;
	struct tpolicy p, bad;
	kms_key_use use;
	kms_err err = {0};
	kms_buf b = {0};

	create("k", 1);
	tpolicy_for(&p, STRANGER);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k", &p.p, &b, &err), KMS_OK);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_ERR_PERMISSION);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "k", 0, STRANGER, KMS_OP_ENCRYPT, &use, &err),
			 KMS_OK);
	md = describe("k");
	ck_assert_uint_eq(md->policy->n_grants, 1);
	ck_assert_str_eq(md->policy->grants[0]->principal, STRANGER);
	kms_keyring_metadata_free(md);

	tpolicy_for(&bad, "not a spiffe id");
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k", &bad.p, &b, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "grant 1");
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k", NULL, &b, &err), KMS_ERR_INVALID);
	/* What no builder makes, apply refuses the same way. */
	pp.key_id = "k";
	pp.policy = &bad.p;
	c.cmd_case = KMS__V1__COMMAND__CMD_PUT_KEY_POLICY;
	c.put_key_policy = &pp;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "grant 1");
	pp.policy = NULL;
	b = pack_cmd(&c);
	refused(&b, KMS_ERR_INVALID, "holds no policy");
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("nope", &p.p, &b, &err), KMS_OK);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");
}
END_TEST

/*
 * Keys with equal policies share one copy of it: a new policy on one key
 * leaves the others as they were, and a key ring freed or restored leaves
 * the copies other key rings use intact (ASan watches the rest).
 */
START_TEST(test_equal_policies_stay_separate_keys)
{
	kms_keyring *other;
	kms_key_use use;
	kms_err err = {0};
	kms_buf b = {0}, snap;
	struct tpolicy p, web;

	create("k1", 1);
	create("k2", 2);
	tpolicy_for(&p, STRANGER);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k1", &p.p, &b, &err), KMS_OK);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k1", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_ERR_PERMISSION);
	ck_assert_int_eq(resolve_as("k2", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_resolve(kr, "k2", 0, STRANGER, KMS_OP_ENCRYPT, &use, &err),
			 KMS_ERR_PERMISSION);

	/* Another key ring holds the same policies, then this one goes. */
	snap = snapshot_of(kr);
	other = ring_new();
	ck_assert_int_eq(kms_keyring_restore(other, snap.data, snap.len, &err), KMS_OK);
	kms_buf_free(&snap);
	tpolicy_for(&web, WEB);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("k1", &web.p, &b, &err), KMS_OK);
	accepted(&b);
	ck_assert_int_eq(resolve_as("k1", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_OK);
	kms_keyring_free(kr);
	kr = other;
	ck_assert_int_eq(resolve_as("k1", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_ERR_PERMISSION);
	ck_assert_int_eq(resolve_as("k2", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_OK);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 0, STRANGER, KMS_OP_ENCRYPT, &use, &err),
			 KMS_OK);
	kms_keyring_use_release(&use);
}
END_TEST

START_TEST(test_rotation_policy)
{
	Kms__V1__KeyMetadata *md;
	kms_err err = {0};
	kms_buf b = {0};

	create("k", 1);
	md = describe("k");
	ck_assert_uint_eq(md->rotation_period_seconds, 0);
	ck_assert_uint_eq(md->max_encryptions_per_version, KMS_ENCRYPTIONS_DEFAULT);
	ck_assert_int_eq(md->next_rotation_unix, 0);
	kms_keyring_metadata_free(md);
	b = cmd_rotation_policy("k", 3600, KMS_ENCRYPTIONS_MAX);
	accepted(&b);
	md = describe("k");
	ck_assert_uint_eq(md->rotation_period_seconds, 3600);
	ck_assert_uint_eq(md->max_encryptions_per_version, KMS_ENCRYPTIONS_MAX);
	ck_assert_int_eq(md->next_rotation_unix, T0 + 3600);
	kms_keyring_metadata_free(md);
	rotate("k", 2, 2);
	md = describe("k");
	ck_assert_int_eq(md->next_rotation_unix, T0 + 2 + 3600);
	kms_keyring_metadata_free(md);
	/* A disabled key is not rotated by age. */
	b = cmd_enabled("k", 0);
	accepted(&b);
	md = describe("k");
	ck_assert_int_eq(md->next_rotation_unix, 0);
	kms_keyring_metadata_free(md);

	ck_assert_int_eq(kms_keyring_cmd_set_rotation_policy("k", 0, KMS_ENCRYPTIONS_MAX + 1, &b,
							     &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "above 2^32");
	ck_assert_int_eq(kms_keyring_cmd_set_rotation_policy("k", KMS_ROTATION_PERIOD_MAX + 1, 0,
							     &b, &err),
			 KMS_ERR_INVALID);
	{
		Kms__V1__SetRotationPolicyCommand rp = KMS__V1__SET_ROTATION_POLICY_COMMAND__INIT;
		Kms__V1__Command c = KMS__V1__COMMAND__INIT;

		rp.key_id = "k";
		rp.max_encryptions_per_version = KMS_ENCRYPTIONS_MAX + 1;
		c.cmd_case = KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY;
		c.set_rotation_policy = &rp;
		b = pack_cmd(&c);
		refused(&b, KMS_ERR_INVALID, "above 2^32");
	}
	b = cmd_rotation_policy("nope", 0, 0);
	refused(&b, KMS_ERR_NOT_FOUND, "not found");
}
END_TEST

/* --- encryption reservations --------------------------------------------- */

START_TEST(test_reservations_grant_credit_and_exhaust)
{
	Kms__V1__KeyMetadata *md;
	kms_key_use use;
	uint64_t left = 99;
	kms_err err = {0};
	kms_buf b;

	kms_keyring_set_self(kr, 1, 77);
	create("k", 1);
	b = cmd_rotation_policy("k", 0, 100);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 0);
	ck_assert_int_eq(kms_keyring_take_encryption(kr, "k", 1, &left, &err), KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "no reserved encryptions for key 'k' version 1");

	b = cmd_reserve("k", 1, 30, 1, 77);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 30);
	/* Another node's grant counts, but is not ours. */
	b = cmd_reserve("k", 1, 50, 2, 5);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 30);
	ck_assert_uint_eq(status(kr, "k").primary_reserved, 80);
	/* Our own id in an earlier life (a restart): counted, never credited;
	 * it gets only what is left below the maximum. */
	b = cmd_reserve("k", 1, 40, 1, 76);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 30);
	ck_assert_uint_eq(status(kr, "k").primary_reserved, 100);
	ck_assert_int_eq(status(kr, "k").primary_state, V_EXHAUSTED);
	/* Exhausted: a grant of 0, which is no error, and nothing changes. */
	b = cmd_reserve("k", 1, 10, 1, 77);
	accepted(&b);
	ck_assert_uint_eq(status(kr, "k").primary_reserved, 100);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 30);
	md = describe("k");
	ck_assert_str_eq(md->version_details[0]->state, "Exhausted");
	ck_assert_uint_eq(md->version_details[0]->encryptions, 100);
	kms_keyring_metadata_free(md);

	/* The exhausted primary still serves what this node reserved. */
	for (int i = 29; i >= 0; i--) {
		ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_take_encryption(kr, "k", 1, &left, &err), KMS_OK);
		ck_assert_uint_eq(left, (uint64_t)i);
	}
	ck_assert_int_eq(kms_keyring_take_encryption(kr, "k", 1, &left, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, NULL, &err), KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "key 'k' version 1 has made its maximum of 100 encryptions");
	ASSERT_MSG_HAS(err, "rotated");
	/* Decryption names its version: an exhausted one decrypts. */
	ck_assert_int_eq(resolve_as("k", 1, KMS_OP_DECRYPT, NULL, &err), KMS_OK);
	/* A rotation brings a fresh primary; its allowance starts at 0. */
	rotate("k", 2, 2);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(resolve_as("k", 0, KMS_OP_ENCRYPT, &use, &err), KMS_OK);
	ck_assert_uint_eq(use.version, 2);
	b = cmd_reserve("k", 2, 1000, 1, 77);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 2), 100);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 0);
	ck_assert_int_eq(status(kr, "k").primary_state, V_EXHAUSTED);
}
END_TEST

START_TEST(test_reservation_refusals)
{
	kms_err err = {0};
	kms_buf b = {0};

	kms_keyring_set_self(kr, 1, 1);
	create("k", 1);
	b = cmd_reserve("k", 2, 10, 1, 1);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'k' has no version 2");
	b = cmd_reserve("nope", 1, 10, 1, 1);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");
	b = cmd_enabled("k", 0);
	accepted(&b);
	b = cmd_reserve("k", 1, 10, 1, 1);
	refused(&b, KMS_ERR_PRECONDITION, "is disabled");
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 0);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("k", 1, 0, 1, 1, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("k", 1, KMS_ENCRYPTIONS_MAX + 1, 1,
							     1, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("k", 0, 1, 1, 1, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("k", 1, 1, 0, 1, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_reserve_encryptions("k", 1, 1, 1, 0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(b.data);
	{
		Kms__V1__ReserveEncryptionsCommand re = KMS__V1__RESERVE_ENCRYPTIONS_COMMAND__INIT;
		Kms__V1__Command c = KMS__V1__COMMAND__INIT;

		re.key_id = "k";
		re.version = 1;
		re.count = 5;
		re.node_id = 1;
		c.cmd_case = KMS__V1__COMMAND__CMD_RESERVE_ENCRYPTIONS;
		c.reserve_encryptions = &re;
		b = pack_cmd(&c);
		refused(&b, KMS_ERR_INVALID, "an incarnation");
	}
	/* No self set: nothing is ever credited. */
	kms_keyring_set_self(kr, 0, 0);
	b = cmd_enabled("k", 1);
	accepted(&b);
	b = cmd_reserve("k", 1, 10, 1, 1);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 0);
}
END_TEST

/*
 * Three nodes apply the same reservations, each its own key ring: each is
 * credited only its own grants, the sum of what they may use equals the
 * replicated count and never passes the maximum, and the three replicated
 * states are the same bytes.
 */
START_TEST(test_reservations_across_three_nodes)
{
	kms_keyring *n[3];
	kms_err err = {0};
	unsigned seed = 7;
	const uint64_t max = 5000;

	for (int i = 0; i < 3; i++) {
		kms_buf p = cmd_rotation_policy("k", 0, max);

		n[i] = ring_new();
		kms_keyring_set_self(n[i], (uint64_t)i + 1, 100 + (uint64_t)i);
		create_in(n[i], "k", WEB, 1);
		ck_assert_int_eq(apply_to(n[i], &p, &err), KMS_OK);
	}
	for (int round = 0; round < 200; round++) {
		uint64_t node = rand_r(&seed) % 3 + 1, count = rand_r(&seed) % 90 + 1;
		/* Now and then a node restarted: a stale incarnation. */
		uint64_t inc = 100 + node - 1 - (rand_r(&seed) % 10 == 0);
		kms_buf b = cmd_reserve("k", 1, count, node, inc);
		uint64_t sum = 0, reserved;

		for (int i = 0; i < 3; i++)
			ck_assert_int_eq(kms_keyring_apply(n[i], b.data, b.len, &err), KMS_OK);
		kms_buf_free(&b);
		reserved = status(n[0], "k").primary_reserved;
		for (int i = 0; i < 3; i++)
			sum += kms_keyring_allowance(n[i], "k", 1);
		ck_assert_uint_le(sum, reserved);
		ck_assert_uint_le(reserved, max);
	}
	ck_assert_uint_eq(status(n[0], "k").primary_reserved, max);
	ck_assert_int_eq(status(n[0], "k").primary_state, V_EXHAUSTED);
	{
		kms_buf s0 = snapshot_of(n[0]), s1 = snapshot_of(n[1]), s2 = snapshot_of(n[2]);

		ck_assert(same_bytes(&s0, &s1));
		ck_assert(same_bytes(&s0, &s2));
		free(s0.data);
		free(s1.data);
		free(s2.data);
	}
	for (int i = 0; i < 3; i++)
		kms_keyring_free(n[i]);
}
END_TEST

/*
 * The allowance is node-local: not in a snapshot, kept across the install
 * of a snapshot that holds its grant, gone on a new key ring (a restart).
 */
START_TEST(test_allowance_is_node_local)
{
	kms_keyring *fresh = ring_new();
	kms_buf snap, b;
	kms_err err = {0};

	kms_keyring_set_self(kr, 1, 9);
	kms_keyring_set_self(fresh, 1, 9);
	create("k", 1);
	b = cmd_reserve("k", 1, 64, 1, 9);
	accepted(&b);
	snap = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 64);
	ck_assert_int_eq(kms_keyring_restore(fresh, snap.data, snap.len, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_allowance(fresh, "k", 1), 0);
	ck_assert_uint_eq(status(fresh, "k").primary_reserved, 64);
	free(snap.data);
	kms_keyring_free(fresh);
}
END_TEST

/*
 * A grant whose log entry this node skipped by installing a snapshot: the
 * snapshot holds the reserved count, not the allowance; the proposer
 * credits it once, whole, and never a grant its apply credited, one that
 * was cut short, or one for a version older than its allowance's.
 */
START_TEST(test_skipped_grant_is_credited_once)
{
	kms_keyring *leader = ring_new();
	kms_buf b, snap;
	kms_err err = {0};
	uint64_t before;
	int credited = -1;

	kms_keyring_set_self(kr, 1, 9);
	kms_keyring_set_self(leader, 2, 5);
	create("k", 1);
	create_in(leader, "k", WEB, 1);
	before = kms_keyring_grants_credited(kr, "k");
	ck_assert_uint_eq(before, 0);
	/* Applied by the leader only; this node installs its snapshot. */
	b = cmd_reserve("k", 1, 64, 1, 9);
	ck_assert_int_eq(apply_to(leader, &b, &err), KMS_OK);
	snap = snapshot_of(leader);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	free(snap.data);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 0);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 1, 64, before, &credited, &err),
			 KMS_OK);
	ck_assert_int_eq(credited, 1);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 64);
	/* Once. */
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 1, 64, before, &credited, &err),
			 KMS_OK);
	ck_assert_int_eq(credited, 0);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 64);

	/* Applied here: the apply credited it, so nothing more. */
	before = kms_keyring_grants_credited(kr, "k");
	b = cmd_reserve("k", 1, 64, 1, 9);
	ck_assert_int_eq(kms_keyring_apply(leader, b.data, b.len, &err), KMS_OK);
	accepted(&b);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 1, 64, before, &credited, &err),
			 KMS_OK);
	ck_assert_int_eq(credited, 0);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 128);
	/* The count survives an install that changes nothing for it. */
	before = kms_keyring_grants_credited(kr, "k");
	snap = snapshot_of(leader);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	free(snap.data);
	ck_assert_uint_eq(kms_keyring_grants_credited(kr, "k"), before);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 128);

	/* Cut short: the version reached its maximum, so not credited. */
	b = cmd_rotation_policy("k", 0, 200);
	ck_assert_int_eq(kms_keyring_apply(leader, b.data, b.len, &err), KMS_OK);
	accepted(&b);
	before = kms_keyring_grants_credited(kr, "k");
	b = cmd_reserve("k", 1, 100, 1, 9);
	ck_assert_int_eq(apply_to(leader, &b, &err), KMS_OK);
	snap = snapshot_of(leader);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	free(snap.data);
	ck_assert_int_eq(status(kr, "k").primary_state, V_EXHAUSTED);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 1, 100, before, &credited, &err),
			 KMS_OK);
	ck_assert_int_eq(credited, 0);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "k", 1), 128);

	/* The allowance moved on to version 2: a grant for 1 is never credited. */
	create("m", 3);
	create_in(leader, "m", WEB, 3);
	ck_assert_int_eq(rotate_in(leader, "m", 2, 7, T0 + 2, &err), KMS_OK);
	rotate("m", 2, 7);
	b = cmd_reserve("m", 2, 10, 1, 9);
	ck_assert_int_eq(kms_keyring_apply(leader, b.data, b.len, &err), KMS_OK);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "m", 2), 10);
	before = kms_keyring_grants_credited(kr, "m");
	b = cmd_reserve("m", 1, 5, 1, 9);
	ck_assert_int_eq(kms_keyring_apply(leader, b.data, b.len, &err), KMS_OK);
	accepted(&b);
	ck_assert_uint_eq(status(kr, "m").primary_version, 2);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "m", 2), 10);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "m", 1), 0);
	ck_assert_uint_eq(kms_keyring_grants_credited(kr, "m"), before);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "m", 1, 5, before, &credited, &err),
			 KMS_OK);
	ck_assert_int_eq(credited, 0);
	ck_assert_uint_eq(kms_keyring_allowance(kr, "m", 2), 10);

	/* Bad input, and an unknown key. */
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 0, 5, before, &credited, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "k", 2, 0, before, &credited, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_credit_skipped_grant(kr, "nope", 2, 5, 0, &credited, &err),
			 KMS_ERR_NOT_FOUND);
	ck_assert_uint_eq(kms_keyring_grants_credited(kr, "nope"), 0);
	kms_keyring_free(leader);
}
END_TEST

/* --- aliases ------------------------------------------------------------- */

START_TEST(test_alias_names)
{
	char long_name[KMS_ALIAS_NAME_MAX + 2];
	kms_err err = {0};
	kms_buf b = {0};

	ck_assert_int_eq(kms_alias_name_check("alias/orders", &err), KMS_OK);
	ck_assert_int_eq(kms_alias_name_check("alias/a.b_c/d-e", &err), KMS_OK);
	ck_assert_int_eq(kms_alias_name_check("orders", &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "starts with \"alias/\"");
	ck_assert_int_eq(kms_alias_name_check("alias/", &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "nothing after");
	ck_assert_int_eq(kms_alias_name_check("alias/a b", &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "position 8");
	ck_assert_int_eq(kms_alias_name_check("", &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_alias_name_check(NULL, &err), KMS_ERR_INVALID);
	memset(long_name, 'x', sizeof(long_name));
	memcpy(long_name, "alias/", 6);
	long_name[KMS_ALIAS_NAME_MAX] = '\0';
	ck_assert_int_eq(kms_alias_name_check(long_name, &err), KMS_OK);
	long_name[KMS_ALIAS_NAME_MAX] = 'x';
	long_name[KMS_ALIAS_NAME_MAX + 1] = '\0';
	ck_assert_int_eq(kms_alias_name_check(long_name, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "longer than 250");

	ck_assert_int_eq(kms_keyring_new_key_id_check("alias/x", &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "prefix names aliases");
	ck_assert_int_eq(kms_keyring_new_key_id_check("orders", &err), KMS_OK);
	{
		uint8_t w[40];

		fill_wrapped(w, 40, 1);
		ck_assert_int_eq(kms_keyring_cmd_create_key("alias/x", "", NULL, ADMIN, T0, w, 40,
							    &b, &err),
				 KMS_ERR_INVALID);
	}
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/a", "alias/b", T0, &b, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "not at another alias");
	ck_assert_int_eq(kms_keyring_cmd_create_alias("nope", "k", T0, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/a", "bad id", T0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/a", "", T0, &b, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_delete_alias("alias", &b, &err), KMS_ERR_INVALID);
	ck_assert_ptr_null(b.data);
}
END_TEST

START_TEST(test_alias_table)
{
	Kms__V1__KeyMetadata *md;
	kms_alias a, *page = NULL;
	kms_key_use use;
	size_t n = 0;
	int more = 0;
	kms_err err = {0};
	kms_buf b;
	char real[KMS_KEY_ID_MAX + 1];

	create("k1", 1);
	create("k2", 2);
	b = cmd_alias("alias/web", "k1", 0);
	accepted(&b);
	b = cmd_alias("alias/api", "k1", 0);
	accepted(&b);
	b = cmd_alias("alias/z", "k2", 0);
	accepted(&b);
	ck_assert_uint_eq(kms_keyring_alias_count(kr), 3);
	b = cmd_alias("alias/web", "k2", 0);
	refused(&b, KMS_ERR_EXISTS, "alias 'alias/web' already exists");
	b = cmd_alias("alias/new", "nope", 0);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");
	{
		Kms__V1__CreateAliasCommand ca = KMS__V1__CREATE_ALIAS_COMMAND__INIT;
		Kms__V1__Command c = KMS__V1__COMMAND__INIT;

		ca.alias_name = "alias/loop";
		ca.key_id = "alias/web";
		c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_ALIAS;
		c.create_alias = &ca;
		b = pack_cmd(&c);
		refused(&b, KMS_ERR_INVALID, "not at another alias");
	}

	/* Every lookup takes the alias and answers with the real key id. */
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/web", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
			 KMS_OK);
	ck_assert_str_eq(use.key_id, "k1");
	kms_keyring_use_release(&use);
	ck_assert_int_eq(kms_keyring_authorize(kr, "alias/z", WEB, KMS_OP_DECRYPT, &err), KMS_OK);
	md = describe("alias/api");
	ck_assert_str_eq(md->key_id, "k1");
	ck_assert_uint_eq(md->n_aliases, 2);
	ck_assert_str_eq(md->aliases[0], "alias/api");
	ck_assert_str_eq(md->aliases[1], "alias/web");
	kms_keyring_metadata_free(md);
	ck_assert_int_eq(kms_keyring_real_key_id(kr, "alias/z", real, &err), KMS_OK);
	ck_assert_str_eq(real, "k2");
	ck_assert_int_eq(kms_keyring_real_key_id(kr, "k1", real, &err), KMS_OK);
	ck_assert_str_eq(real, "k1");
	ck_assert_int_eq(kms_keyring_real_key_id(kr, "alias/none", real, &err), KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "alias 'alias/none' not found");
	ck_assert_int_eq(kms_keyring_real_key_id(kr, "bad id", real, &err), KMS_ERR_INVALID);

	/* An unknown alias reads like a key the caller may not use... */
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/none", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_str_eq(err.msg, "principal '" WEB "' may not Encrypt with key 'alias/none'");
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/web", 0, STRANGER, KMS_OP_ENCRYPT, &use,
					     &err),
			 KMS_ERR_PERMISSION);
	ck_assert_str_eq(err.msg,
			 "principal '" STRANGER "' may not Encrypt with key 'alias/web'");
	/* ...except to an administrator. */
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/none", 0, ADMIN, KMS_OP_ENCRYPT, &use,
					     &err),
			 KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "alias 'alias/none' not found");
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/a b", 0, ADMIN, KMS_OP_ENCRYPT, &use,
					     &err),
			 KMS_ERR_NOT_FOUND);
	ASSERT_MSG_HAS(err, "malformed");

	/* Listing: by name, in pages; and the aliases of one key. */
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "", "", 2, &page, &n, &more, &err), KMS_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert(more);
	ck_assert_str_eq(page[0].name, "alias/api");
	ck_assert_str_eq(page[1].name, "alias/web");
	ck_assert_str_eq(page[1].key_id, "k1");
	ck_assert_int_eq(page[1].created_at_unix, T0);
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "", "alias/web", 2, &page, &n, &more, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert(!more);
	ck_assert_str_eq(page[0].name, "alias/z");
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "k1", "", 1, &page, &n, &more, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert(more);
	ck_assert_str_eq(page[0].name, "alias/api");
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "k1", "alias/api", 5, &page, &n, &more,
						  &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert(!more);
	ck_assert_str_eq(page[0].name, "alias/web");
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "k2", "", 5, &page, &n, &more, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "nope", "", 5, &page, &n, &more, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 0);
	kms_free(page);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "", "", 0, &page, &n, &more, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_list_aliases(kr, "", "", 1001, &page, &n, &more, &err),
			 KMS_ERR_INVALID);

	/* Update moves an alias to another key. */
	b = cmd_alias("alias/web", "k2", 1);
	accepted(&b);
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/web", &a, &err), KMS_OK);
	ck_assert_str_eq(a.key_id, "k2");
	ck_assert_int_eq(a.created_at_unix, T0);
	ck_assert_int_eq(a.updated_at_unix, T0 + 5);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/web", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
			 KMS_OK);
	ck_assert_str_eq(use.key_id, "k2");
	kms_keyring_use_release(&use);
	md = describe("k2");
	ck_assert_uint_eq(md->n_aliases, 2);
	kms_keyring_metadata_free(md);
	b = cmd_alias("alias/none", "k2", 1);
	refused(&b, KMS_ERR_NOT_FOUND, "alias 'alias/none' not found");
	b = cmd_alias("alias/web", "nope", 1);
	refused(&b, KMS_ERR_NOT_FOUND, "key 'nope' not found");

	/* Delete. */
	b = cmd_delete_alias("alias/web");
	accepted(&b);
	ck_assert_int_eq(kms_keyring_alias(kr, "alias/web", &a, &err), KMS_ERR_NOT_FOUND);
	b = cmd_delete_alias("alias/web");
	refused(&b, KMS_ERR_NOT_FOUND, "alias 'alias/web' not found");
	ck_assert_uint_eq(kms_keyring_alias_count(kr), 2);
}
END_TEST

START_TEST(test_aliases_of_a_destroyed_key)
{
	kms_buf b;

	create("k", 1);
	create("other", 2);
	b = cmd_alias("alias/k", "k", 0);
	accepted(&b);
	b = cmd_schedule("k", T0);
	accepted(&b);
	b = cmd_destroy("k", T0);
	accepted(&b);
	b = cmd_alias("alias/k2", "k", 0);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	b = cmd_alias("alias/o", "other", 0);
	accepted(&b);
	b = cmd_alias("alias/o", "k", 1);
	refused(&b, KMS_ERR_PRECONDITION, "was destroyed");
	/* Its aliases may still go. */
	b = cmd_delete_alias("alias/k");
	accepted(&b);
}
END_TEST

/*
 * A key id that starts with "alias/", made by an earlier version, still
 * replays, is still found by its id, and no alias can take its name.
 */
START_TEST(test_legacy_key_named_like_an_alias)
{
	Kms__V1__KeyVersionRecord v = KMS__V1__KEY_VERSION_RECORD__INIT, *vs[1] = {&v};
	Kms__V1__KeyRecord rec = KMS__V1__KEY_RECORD__INIT;
	Kms__V1__CreateKeyCommand ck = KMS__V1__CREATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	struct tpolicy p;
	kms_key_use use;
	kms_err err = {0};
	uint8_t w[40];
	kms_buf b;

	tpolicy_for(&p, WEB);
	fill_wrapped(w, sizeof(w), 3);
	v.version = 1;
	v.wrapped_material.data = w;
	v.wrapped_material.len = 40;
	rec.key_id = "alias/legacy";
	rec.policy = &p.p;
	rec.versions = vs;
	rec.n_versions = 1;
	rec.primary_version = 1;
	rec.enabled = 1;
	ck.key = &rec;
	c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_KEY;
	c.create_key = &ck;
	b = pack_cmd(&c);
	accepted(&b);
	memset(&use, 0, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "alias/legacy", 0, WEB, KMS_OP_ENCRYPT, &use,
					     &err),
			 KMS_OK);
	ck_assert_str_eq(use.key_id, "alias/legacy");
	kms_keyring_use_release(&use);
	create("k", 1);
	b = cmd_alias("alias/legacy", "k", 0);
	refused(&b, KMS_ERR_EXISTS, "a key named 'alias/legacy' already exists");
}
END_TEST

START_TEST(test_alias_snapshot_and_restore_rules)
{
	Kms__V1__KeyRingSnapshot *s;
	kms_keyring *copy = ring_new();
	kms_buf s1, s2, bad, b;
	kms_err err = {0};
	Kms__V1__AliasRecord *keep;

	create("k1", 1);
	create("k2", 2);
	b = cmd_alias("alias/b", "k2", 0);
	accepted(&b);
	b = cmd_alias("alias/a", "k1", 0);
	accepted(&b);
	s1 = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(copy, s1.data, s1.len, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_alias_count(copy), 2);
	s2 = snapshot_of(copy);
	ck_assert(same_bytes(&s1, &s2));
	free(s2.data);

	/* A snapshot whose aliases are out of order, or point at a key it
	 * does not hold, is refused whole. */
	s = kms__v1__key_ring_snapshot__unpack(NULL, s1.len, s1.data);
	ck_assert_uint_eq(s->n_aliases, 2);
	ck_assert_str_eq(s->aliases[0]->alias_name, "alias/a");
	keep = s->aliases[0];
	s->aliases[0] = s->aliases[1];
	s->aliases[1] = keep;
	bad.len = kms__v1__key_ring_snapshot__get_packed_size(s);
	bad.data = malloc(bad.len);
	kms__v1__key_ring_snapshot__pack(s, bad.data);
	ck_assert_int_eq(kms_keyring_restore(copy, bad.data, bad.len, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "out of order");
	free(bad.data);
	s->aliases[1] = s->aliases[0];
	s->aliases[0] = keep;
	s->n_keys = 1; /* k2 gone: alias/b points nowhere */
	bad.len = kms__v1__key_ring_snapshot__get_packed_size(s);
	bad.data = malloc(bad.len);
	kms__v1__key_ring_snapshot__pack(s, bad.data);
	s->n_keys = 2;
	ck_assert_int_eq(kms_keyring_restore(copy, bad.data, bad.len, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "does not hold");
	ck_assert_uint_eq(kms_keyring_alias_count(copy), 2);
	free(bad.data);
	kms__v1__key_ring_snapshot__free_unpacked(s, NULL);
	free(s1.data);
	kms_keyring_free(copy);
}
END_TEST

/* --- the whole state: snapshots and determinism -------------------------- */

/* The same commands, with every kind and refusals among them. */
static void script(kms_keyring *k)
{
	const char *ids[] = {"a", "b", "c", "d"};
	kms_err err = {0};
	kms_buf b;
	struct tpolicy p;

	for (int i = 0; i < 4; i++)
		create_in(k, ids[i], WEB, (uint8_t)(i + 1));
	ck_assert_int_eq(rotate_in(k, "a", 2, 9, T0 + 50, &err), KMS_OK);
	ck_assert_int_eq(rotate_in(k, "a", 2, 9, T0 + 51, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(rotate_in(k, "a", 3, 10, T0 + 52, &err), KMS_OK);
	b = cmd_enabled("b", 0);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_schedule("c", T0 + 30 * DAY);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_schedule("d", T0 + 7 * DAY);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_destroy("d", T0 + 7 * DAY);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_rotation_policy("a", 86400, 5000);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_reserve("a", 3, 1200, 1, 11);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_reserve("a", 3, 4000, 2, 12);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_reserve("b", 1, 10, 2, 12);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_ERR_PRECONDITION);
	tpolicy_for(&p, STRANGER);
	ck_assert_int_eq(kms_keyring_cmd_put_key_policy("b", &p.p, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_alias("alias/a", "a", 0);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_alias("alias/b", "b", 0);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_alias("alias/b", "a", 1);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_OK);
	b = cmd_alias("alias/d", "d", 0);
	ck_assert_int_eq(apply_to(k, &b, &err), KMS_ERR_PRECONDITION);
}

START_TEST(test_snapshot_roundtrip_all_fields)
{
	kms_keyring *copy = ring_new();
	kms_buf s1, s2;
	kms_err err = {0};
	const char *names[] = {"a", "b", "c", "d", "alias/a", "alias/b"};

	script(kr);
	s1 = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(copy, s1.data, s1.len, &err), KMS_OK);
	s2 = snapshot_of(copy);
	ck_assert(same_bytes(&s1, &s2));
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		Kms__V1__KeyMetadata *m1 = NULL, *m2 = NULL;
		uint8_t b1[8192], b2[8192];
		size_t l1, l2;

		ck_assert_int_eq(kms_keyring_describe(kr, names[i], ADMIN, 1, &m1, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_describe(copy, names[i], ADMIN, 1, &m2, &err), KMS_OK);
		l1 = kms__v1__key_metadata__get_packed_size(m1);
		l2 = kms__v1__key_metadata__get_packed_size(m2);
		ck_assert_uint_eq(l1, l2);
		ck_assert_uint_le(l1, sizeof(b1));
		kms__v1__key_metadata__pack(m1, b1);
		kms__v1__key_metadata__pack(m2, b2);
		ck_assert_mem_eq(b1, b2, l1);
		kms_keyring_metadata_free(m1);
		kms_keyring_metadata_free(m2);
	}
	{
		kms_key_status a = status(copy, "a");

		ck_assert_uint_eq(a.primary_version, 3);
		ck_assert_uint_eq(a.primary_reserved, 5000);
		ck_assert_int_eq(a.primary_state, V_EXHAUSTED);
		ck_assert_uint_eq(a.max_encryptions, 5000);
		ck_assert_uint_eq(a.rotation_period_seconds, 86400);
		ck_assert_int_eq(status(copy, "b").state, DISABLED);
		ck_assert_int_eq(status(copy, "c").state, PENDING);
		ck_assert_int_eq(status(copy, "c").deletion_at_unix, T0 + 30 * DAY);
		ck_assert_int_eq(status(copy, "d").state, DESTROYED);
	}
	free(s1.data);
	free(s2.data);
	kms_keyring_free(copy);
}
END_TEST

/*
 * Apply is deterministic: two key rings given the same commands (refusals
 * included) hold the same bytes; a third that installs the first's
 * snapshot half way and applies the rest holds them too.
 */
START_TEST(test_apply_is_deterministic)
{
	kms_keyring *other = ring_new(), *late = ring_new();
	kms_buf s1, s2, s3, mid;
	kms_err err = {0};

	kms_keyring_set_self(kr, 1, 11);
	kms_keyring_set_self(other, 2, 12);
	script(kr);
	script(other);
	s1 = snapshot_of(kr);
	s2 = snapshot_of(other);
	ck_assert(same_bytes(&s1, &s2));
	/* Node-local allowances differ; the replicated state does not. */
	ck_assert_uint_eq(kms_keyring_allowance(kr, "a", 3), 1200);
	ck_assert_uint_eq(kms_keyring_allowance(other, "a", 3), 3800);

	mid = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(late, mid.data, mid.len, &err), KMS_OK);
	ck_assert_int_eq(rotate_in(kr, "a", 4, 4, T0 + 99, &err), KMS_OK);
	ck_assert_int_eq(rotate_in(late, "a", 4, 4, T0 + 99, &err), KMS_OK);
	free(s1.data);
	s1 = snapshot_of(kr);
	s3 = snapshot_of(late);
	ck_assert(same_bytes(&s1, &s3));
	free(s1.data);
	free(s2.data);
	free(s3.data);
	free(mid.data);
	kms_keyring_free(other);
	kms_keyring_free(late);
}
END_TEST

/* --- what the supervisor reads ------------------------------------------- */

static int ids_hold(char **ids, size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(ids[i], id) == 0)
			return 1;
	return 0;
}

START_TEST(test_due_rotations_and_destructions)
{
	char **ids = NULL;
	size_t n = 0;
	kms_err err = {0};
	kms_buf b;

	create("aged", 1);
	create("busy", 2);
	create("fresh", 3);
	create("off", 4);
	create("doomed", 5);
	b = cmd_rotation_policy("aged", 3600, 0);
	accepted(&b);
	b = cmd_rotation_policy("off", 60, 0);
	accepted(&b);
	b = cmd_enabled("off", 0);
	accepted(&b);
	b = cmd_rotation_policy("busy", 0, 1000);
	accepted(&b);
	b = cmd_reserve("busy", 1, 900, 1, 1);
	accepted(&b);
	b = cmd_schedule("doomed", T0 + 7 * DAY);
	accepted(&b);

	ck_assert_int_eq(kms_keyring_due_rotations(kr, T0 + 3599, 900, 10, &ids, &n, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ids[0], "busy");
	kms_keyring_ids_free(ids, n);
	ck_assert_int_eq(kms_keyring_due_rotations(kr, T0 + 3600, 901, 10, &ids, &n, &err), KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ids[0], "aged");
	kms_keyring_ids_free(ids, n);
	ck_assert_int_eq(kms_keyring_due_rotations(kr, T0 + 3600, 900, 1, &ids, &n, &err), KMS_OK);
	ck_assert_uint_eq(n, 1); /* at most max_n */
	kms_keyring_ids_free(ids, n);
	ck_assert_int_eq(kms_keyring_due_rotations(kr, T0 + 3600, 0, 10, &ids, &n, &err),
			 KMS_ERR_INVALID);
	/* A rotation resets the age. */
	rotate("aged", 2, 2);
	ck_assert_int_eq(kms_keyring_due_rotations(kr, T0 + 3601, 901, 10, &ids, &n, &err), KMS_OK);
	ck_assert(!ids_hold(ids, n, "aged"));
	ck_assert(!ids_hold(ids, n, "off"));
	kms_keyring_ids_free(ids, n);

	ck_assert_int_eq(kms_keyring_due_destructions(kr, T0 + 7 * DAY - 1, 10, &ids, &n, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 0);
	kms_keyring_ids_free(ids, n);
	ck_assert_int_eq(kms_keyring_due_destructions(kr, T0 + 7 * DAY, 10, &ids, &n, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ids[0], "doomed");
	b = cmd_destroy(ids[0], T0 + 7 * DAY);
	accepted(&b);
	kms_keyring_ids_free(ids, n);
	ck_assert_int_eq(kms_keyring_due_destructions(kr, T0 + 8 * DAY, 10, &ids, &n, &err),
			 KMS_OK);
	ck_assert_uint_eq(n, 0);
	kms_keyring_ids_free(ids, n);
}
END_TEST

/* Out of memory during a rotation: refused, and the key ring as it was. */
START_TEST(test_rotate_alloc_failure)
{
	kms_buf cmd = cmd_rotate("k", 2, 2, T0), before, now;
	kms_err err = {0};
	int rc = KMS_ERR_NOMEM;
	unsigned n;

	create("k", 1);
	before = snapshot_of(kr);
	for (n = 0; n < 100 && rc != KMS_OK; n++) {
		kms_alloc_fail_after(n);
		rc = kms_keyring_apply(kr, cmd.data, cmd.len, &err);
		kms_alloc_fail_reset();
		if (rc == KMS_OK)
			break;
		ck_assert_int_eq(rc, KMS_ERR_NOMEM);
		now = snapshot_of(kr);
		ck_assert(same_bytes(&before, &now));
		free(now.data);
	}
	ck_assert_int_eq(rc, KMS_OK);
	ck_assert_uint_gt(n, 2);
	ck_assert_uint_eq(status(kr, "k").primary_version, 2);
	kms_buf_free(&cmd);
	free(before.data);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("keyring lifecycle");
	TCase *tc = tcase_create("core");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_rotate_adds_primary_and_old_versions_decrypt);
	tcase_add_test(tc, test_rotate_builder_and_raw_refusals);
	tcase_add_test(tc, test_thousand_versions);
	tcase_add_test(tc, test_handles_follow_rotation_and_destruction);
	tcase_add_test(tc, test_rotated_hook);
	tcase_add_test(tc, test_primary_use_refusals);
	tcase_add_test(tc, test_restore_keeps_handles_of_rotated_key);
	tcase_add_test(tc, test_disable_and_enable);
	tcase_add_test(tc, test_deletion_schedule_cancel_destroy);
	tcase_add_test(tc, test_record_rules);
	tcase_add_test(tc, test_put_key_policy);
	tcase_add_test(tc, test_equal_policies_stay_separate_keys);
	tcase_add_test(tc, test_rotation_policy);
	tcase_add_test(tc, test_reservations_grant_credit_and_exhaust);
	tcase_add_test(tc, test_reservation_refusals);
	tcase_add_test(tc, test_reservations_across_three_nodes);
	tcase_add_test(tc, test_allowance_is_node_local);
	tcase_add_test(tc, test_skipped_grant_is_credited_once);
	tcase_add_test(tc, test_alias_names);
	tcase_add_test(tc, test_alias_table);
	tcase_add_test(tc, test_aliases_of_a_destroyed_key);
	tcase_add_test(tc, test_legacy_key_named_like_an_alias);
	tcase_add_test(tc, test_alias_snapshot_and_restore_rules);
	tcase_add_test(tc, test_snapshot_roundtrip_all_fields);
	tcase_add_test(tc, test_apply_is_deterministic);
	tcase_add_test(tc, test_due_rotations_and_destructions);
	tcase_add_test(tc, test_rotate_alloc_failure);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
