/* test_keyring.c - Check suite for the key ring: apply, snapshot/restore, the
 * resolve gate, describe/list, handles, concurrency. */
#include <pthread.h>
#include <stdatomic.h>
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
#define BATCH_PREFIX "spiffe://example.org/ns/batch/*"
#define BATCH_JOB "spiffe://example.org/ns/batch/sa/job"
#define STRANGER "spiffe://example.org/ns/other/sa/x"
#define ADMIN "spiffe://example.org/ns/ops/sa/admin"

/* --- fixture ------------------------------------------------------------- */

static kms_keyring *kr;

/*
 * Every handle the key ring hands back through the release callback. It
 * may run on any thread that drops a last reference, so it locks.
 */
static struct {
	pthread_mutex_t mu;
	size_t n;
	unsigned long h[64];
} released = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_release(void *arg, unsigned long handle)
{
	ck_assert_ptr_eq(arg, &released);
	pthread_mutex_lock(&released.mu);
	if (released.n < sizeof(released.h) / sizeof(released.h[0]))
		released.h[released.n] = handle;
	released.n++;
	pthread_mutex_unlock(&released.mu);
}

/* How many times handle h was released (each must be, exactly once). */
static size_t times_released(unsigned long h)
{
	size_t k = 0;

	for (size_t i = 0; i < released.n && i < 64; i++)
		k += released.h[i] == h;
	return k;
}

static void setup(void)
{
	kms_err err = {0};

	released.n = 0;
	memset(released.h, 0, sizeof(released.h));
	kms_alloc_fail_reset();
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	kms_keyring_set_release(kr, on_release, &released);
}

static void teardown(void)
{
	kms_alloc_fail_reset();
	kms_keyring_free(kr);
	kr = NULL;
}

/* --- builders ------------------------------------------------------------ */

/* A policy on the stack of the test; grants borrow the strings given. */
struct tpolicy {
	Kms__V1__KeyPolicy p;
	Kms__V1__Grant g[4];
	Kms__V1__Grant *gp[4];
};

static void tpolicy_init(struct tpolicy *t)
{
	Kms__V1__KeyPolicy p = KMS__V1__KEY_POLICY__INIT;

	memset(t, 0, sizeof(*t));
	t->p = p;
	t->p.grants = t->gp;
}

static void tpolicy_grant(struct tpolicy *t, const char *principal, char **ops,
			  size_t n_ops)
{
	Kms__V1__Grant g = KMS__V1__GRANT__INIT;
	size_t i = t->p.n_grants;

	ck_assert_uint_lt(i, 4);
	g.principal = (char *)principal;
	g.operations = ops;
	g.n_operations = n_ops;
	t->g[i] = g;
	t->gp[i] = &t->g[i];
	t->p.n_grants++;
}

static char *ops_web[] = {"Encrypt", "Decrypt", "DescribeKey"};
static char *ops_decrypt[] = {"Decrypt"};
static char *ops_describe[] = {"DescribeKey"};

/* web may Encrypt/Decrypt/DescribeKey; every batch principal may Decrypt. */
static void tpolicy_app(struct tpolicy *t)
{
	tpolicy_init(t);
	tpolicy_grant(t, WEB, ops_web, 3);
	tpolicy_grant(t, BATCH_PREFIX, ops_decrypt, 1);
}

static void fill_wrapped(uint8_t *w, size_t len, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		w[i] = (uint8_t)(seed + i * 7);
}

/* Builds the create command through the public builder and applies it. */
static int create_key(const char *id, const char *desc,
		      const Kms__V1__KeyPolicy *policy, uint8_t seed,
		      kms_err *err)
{
	uint8_t w[40];
	kms_buf cmd = {0};
	int rc;

	fill_wrapped(w, sizeof(w), seed);
	rc = kms_keyring_cmd_create_key(id, desc, policy, ADMIN, 1700000000, w,
					sizeof(w), &cmd, err);
	if (rc != KMS_OK)
		return rc;
	rc = kms_keyring_apply(kr, cmd.data, cmd.len, err);
	kms_buf_free(&cmd);
	return rc;
}

static void create_ok(const char *id, const Kms__V1__KeyPolicy *policy,
		      uint8_t seed)
{
	kms_err err = {0};

	ck_assert_msg(create_key(id, "test key", policy, seed, &err) == KMS_OK,
		      "create %s: %s", id, err.msg);
}

/*
 * What resolve gives for version 1 of a key created with seed before this
 * node unwrapped it: what a caller hands kms_keyring_set_handle.
 */
static kms_key_use use_of(uint8_t seed)
{
	kms_key_use use;

	memset(&use, 0, sizeof(use));
	use.version = 1;
	use.wrapped_len = 40;
	fill_wrapped(use.wrapped, use.wrapped_len, seed);
	return use;
}

/* Records handle h for key id (created with seed) in k, keeping no use. */
static void record_handle(kms_keyring *k, const char *id, uint8_t seed, unsigned long h)
{
	kms_key_use use = use_of(seed);
	kms_err err = {0};

	ck_assert_msg(kms_keyring_set_handle(k, id, h, &use, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(use.handle, h);
	ck_assert_ptr_nonnull(use.ref);
	kms_keyring_use_release(&use);
	ck_assert_uint_eq(use.handle, 0);
	ck_assert_ptr_null(use.ref);
}

/* Resolves id as WEB for Encrypt; the use may hold a reference. */
static kms_key_use resolved(const char *id)
{
	kms_key_use use;
	kms_err err = {0};

	memset(&use, 0, sizeof(use));
	ck_assert_msg(kms_keyring_resolve(kr, id, 0, WEB, KMS_OP_ENCRYPT, &use, &err) == KMS_OK,
		      "resolve %s: %s", id, err.msg);
	ck_assert((use.handle == 0) == (use.ref == NULL));
	return use;
}

/* A raw record the test can corrupt field by field. */
struct trec {
	Kms__V1__KeyRecord rec;
	Kms__V1__KeyVersionRecord v[2];
	Kms__V1__KeyVersionRecord *vp[2];
	uint8_t w[KMS_WRAPPED_MAX + 8];
};

static void trec_init(struct trec *t, const char *id,
		      const Kms__V1__KeyPolicy *policy)
{
	Kms__V1__KeyRecord rec = KMS__V1__KEY_RECORD__INIT;
	Kms__V1__KeyVersionRecord v = KMS__V1__KEY_VERSION_RECORD__INIT;

	memset(t, 0, sizeof(*t));
	fill_wrapped(t->w, sizeof(t->w), 0x40);
	t->v[0] = v;
	t->v[0].version = 1;
	t->v[0].wrapped_material.data = t->w;
	t->v[0].wrapped_material.len = 40;
	t->v[1] = t->v[0];
	t->v[1].version = 2;
	t->vp[0] = &t->v[0];
	t->vp[1] = &t->v[1];
	t->rec = rec;
	t->rec.key_id = (char *)id;
	t->rec.policy = (Kms__V1__KeyPolicy *)policy;
	t->rec.n_versions = 1;
	t->rec.versions = t->vp;
	t->rec.primary_version = 1;
	t->rec.enabled = 1;
	t->rec.created_by = ADMIN;
}

/* Packs a Command holding rec (NULL: a CreateKey with no record). */
static kms_buf pack_create(Kms__V1__KeyRecord *rec)
{
	Kms__V1__CreateKeyCommand ck = KMS__V1__CREATE_KEY_COMMAND__INIT;
	Kms__V1__Command c = KMS__V1__COMMAND__INIT;
	kms_buf b;

	ck.key = rec;
	c.cmd_case = KMS__V1__COMMAND__CMD_CREATE_KEY;
	c.create_key = &ck;
	b.len = kms__v1__command__get_packed_size(&c);
	b.data = kms_malloc(b.len);
	ck_assert_ptr_nonnull(b.data);
	ck_assert_uint_eq(kms__v1__command__pack(&c, b.data), b.len);
	return b;
}

static int apply_record(Kms__V1__KeyRecord *rec, kms_err *err)
{
	kms_buf b = pack_create(rec);
	int rc = kms_keyring_apply(kr, b.data, b.len, err);

	kms_buf_free(&b);
	return rc;
}

static kms_buf snapshot_of(kms_keyring *k)
{
	kms_err err = {0};
	kms_buf b = {0};

	ck_assert_msg(kms_keyring_snapshot(k, malloc, &b, &err) == KMS_OK,
		      "snapshot: %s", err.msg);
	return b;
}

static kms_buf pack_metadata(const Kms__V1__KeyMetadata *md)
{
	kms_buf b;

	b.len = kms__v1__key_metadata__get_packed_size(md);
	b.data = malloc(b.len ? b.len : 1);
	ck_assert_ptr_nonnull(b.data);
	ck_assert_uint_eq(kms__v1__key_metadata__pack(md, b.data), b.len);
	return b;
}

#define ASSERT_MSG_HAS(err, s)                                                 \
	ck_assert_msg(strstr((err).msg, (s)) != NULL,                          \
		      "message '%s' does not name '%s'", (err).msg, (s))

/* --- create, resolve, describe ------------------------------------------ */

START_TEST(test_create_then_resolve_describe_list)
{
	struct tpolicy p;
	kms_key_use use;
	kms_err err = {0};
	Kms__V1__KeyMetadata *md = NULL, **keys = NULL;
	uint8_t w[40];
	size_t n = 0;
	int more = -1;

	tpolicy_app(&p);
	ck_assert_int_eq(kms_keyring_count(kr), 0);
	ck_assert(!kms_keyring_has_key(kr, "orders/key-1"));
	create_ok("orders/key-1", &p.p, 9);
	ck_assert_int_eq(kms_keyring_count(kr), 1);
	ck_assert(kms_keyring_has_key(kr, "orders/key-1"));

	memset(&use, 0xAA, sizeof(use));
	ck_assert_int_eq(kms_keyring_resolve(kr, "orders/key-1", 0, WEB,
					     KMS_OP_ENCRYPT, &use, &err),
			 KMS_OK);
	fill_wrapped(w, sizeof(w), 9);
	ck_assert_uint_eq(use.version, 1);
	ck_assert_uint_eq(use.handle, 0);
	ck_assert_uint_eq(use.wrapped_len, sizeof(w));
	ck_assert_mem_eq(use.wrapped, w, sizeof(w));
	/* An explicit version 1 is the same as the primary. */
	ck_assert_int_eq(kms_keyring_resolve(kr, "orders/key-1", 1, WEB,
					     KMS_OP_DECRYPT, &use, &err),
			 KMS_OK);
	ck_assert_uint_eq(use.version, 1);

	ck_assert_int_eq(
	    kms_keyring_describe(kr, "orders/key-1", WEB, 0, &md, &err),
	    KMS_OK);
	ck_assert_str_eq(md->key_id, "orders/key-1");
	ck_assert_str_eq(md->description, "test key");
	ck_assert_str_eq(md->created_by, ADMIN);
	ck_assert_int_eq(md->created_at_unix, 1700000000);
	ck_assert(md->enabled);
	ck_assert_uint_eq(md->primary_version, 1);
	ck_assert_uint_eq(md->n_versions, 1);
	ck_assert_uint_eq(md->versions[0], 1);
	ck_assert_ptr_nonnull(md->policy);
	ck_assert_uint_eq(md->policy->n_grants, 2);
	ck_assert_str_eq(md->policy->grants[0]->principal, WEB);
	ck_assert_uint_eq(md->policy->grants[0]->n_operations, 3);
	ck_assert_str_eq(md->policy->grants[1]->principal, BATCH_PREFIX);
	kms_keyring_metadata_free(md);
	md = NULL;

	ck_assert_int_eq(
	    kms_keyring_list(kr, WEB, 0, "", 10, &keys, &n, &more, &err),
	    KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(more, 0);
	ck_assert_str_eq(keys[0]->key_id, "orders/key-1");
	kms_keyring_list_free(keys, n);
}
END_TEST

START_TEST(test_describe_refused)
{
	struct tpolicy p;
	kms_err err = {0};
	Kms__V1__KeyMetadata *md = NULL;

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);
	/* batch principals may Decrypt but not DescribeKey. */
	ck_assert_int_eq(
	    kms_keyring_describe(kr, "k1", BATCH_JOB, 0, &md, &err),
	    KMS_ERR_PERMISSION);
	ck_assert_ptr_null(md);
	ASSERT_MSG_HAS(err, BATCH_JOB);
	ASSERT_MSG_HAS(err, "DescribeKey");
	ASSERT_MSG_HAS(err, "'k1'");
	ck_assert_int_eq(kms_keyring_describe(kr, "k1", NULL, 0, &md, &err),
			 KMS_ERR_PERMISSION);
	/* An administrator needs no grant. */
	ck_assert_int_eq(kms_keyring_describe(kr, "k1", ADMIN, 1, &md, &err),
			 KMS_OK);
	ck_assert_str_eq(md->key_id, "k1");
	kms_keyring_metadata_free(md);
	md = NULL;
	ck_assert_int_eq(kms_keyring_describe(kr, "k2", ADMIN, 1, &md, &err),
			 KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "key 'k2' not found");
	ck_assert_ptr_null(md);
	ck_assert_int_eq(
	    kms_keyring_describe(kr, "bad id!", ADMIN, 1, &md, &err),
	    KMS_ERR_NOT_FOUND);
	ck_assert_ptr_null(strstr(err.msg, "bad id!"));
}
END_TEST

START_TEST(test_describe_copy_outlives_state)
{
	struct tpolicy p;
	kms_keyring *empty;
	kms_buf snap;
	kms_err err = {0};
	Kms__V1__KeyMetadata *md = NULL;

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);
	ck_assert_int_eq(kms_keyring_describe(kr, "k1", WEB, 0, &md, &err),
			 KMS_OK);
	/* Wipe the key ring: the metadata is a deep copy and stays valid. */
	ck_assert_int_eq(kms_keyring_new(&empty, &err), KMS_OK);
	snap = snapshot_of(empty);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err),
			 KMS_OK);
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	ck_assert_str_eq(md->key_id, "k1");
	ck_assert_str_eq(md->policy->grants[0]->principal, WEB);
	kms_keyring_metadata_free(md);
	free(snap.data);
	kms_keyring_free(empty);
}
END_TEST

START_TEST(test_duplicate_create)
{
	struct tpolicy p;
	kms_err err = {0};
	Kms__V1__KeyMetadata *md = NULL;

	tpolicy_app(&p);
	ck_assert_int_eq(create_key("dup", "first", &p.p, 1, &err), KMS_OK);
	ck_assert_int_eq(create_key("dup", "second", NULL, 2, &err),
			 KMS_ERR_EXISTS);
	ck_assert_str_eq(err.msg, "key 'dup' already exists");
	ck_assert_uint_eq(kms_keyring_count(kr), 1);
	ck_assert_int_eq(kms_keyring_describe(kr, "dup", ADMIN, 1, &md, &err),
			 KMS_OK);
	ck_assert_str_eq(md->description, "first");
	ck_assert_uint_eq(md->policy->n_grants, 2);
	kms_keyring_metadata_free(md);
}
END_TEST

/* --- refused commands change nothing ------------------------------------- */

static void assert_apply_invalid(const uint8_t *b, size_t len, const char *what)
{
	kms_err err = {0};
	size_t before = kms_keyring_count(kr);

	ck_assert_int_eq(kms_keyring_apply(kr, b, len, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(err.code, KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, what);
	ck_assert_uint_eq(kms_keyring_count(kr), before);
}

static void assert_record_invalid(struct trec *t, const char *what)
{
	kms_buf b = pack_create(&t->rec);

	assert_apply_invalid(b.data, b.len, what);
	kms_buf_free(&b);
}

START_TEST(test_apply_malformed)
{
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
	/* A command a newer node might send: field 200 (none yet), length 0. */
	static const uint8_t unknown_cmd[] = {0xc2, 0x0c, 0x00};
	/* Field 1 (CreateKey) with no key record inside. */
	static const uint8_t no_record[] = {0x0a, 0x00};
	struct tpolicy p;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("existing", &p.p, 1);
	assert_apply_invalid(garbage, sizeof(garbage),
			     "not a valid kms.v1.Command");
	assert_apply_invalid((const uint8_t *)"", 0, "no operation");
	assert_apply_invalid(unknown_cmd, sizeof(unknown_cmd), "no operation");
	assert_apply_invalid(no_record, sizeof(no_record), "no key record");
	ck_assert_int_eq(kms_keyring_apply(kr, NULL, 5, &err), KMS_ERR_INVALID);
	ck_assert_uint_eq(kms_keyring_count(kr), 1);
}
END_TEST

START_TEST(test_apply_invalid_records)
{
	struct tpolicy p, bad;
	struct trec t;
	char desc[1026];
	char *ops_bogus[] = {"Encrypt", "Frobnicate"};
	kms_err err = {0};

	tpolicy_app(&p);

	/* The positive twin: the raw record as built is accepted. */
	trec_init(&t, "raw-ok", &p.p);
	ck_assert_int_eq(apply_record(&t.rec, &err), KMS_OK);

	trec_init(&t, "-starts-with-dash", &p.p);
	assert_record_invalid(&t, "key id");
	trec_init(&t, "", &p.p);
	assert_record_invalid(&t, "key id");

	tpolicy_init(&bad);
	tpolicy_grant(&bad, "not a spiffe id", ops_web, 3);
	trec_init(&t, "k-bad-policy", &bad.p);
	assert_record_invalid(&t, "grant 1");
	/* A grant an earlier version accepted (a wildcard inside a segment)
	 * still replays: the key ring stays the same on every version. */
	tpolicy_init(&bad);
	tpolicy_grant(&bad, "spiffe://td/ns/pay*", ops_web, 3);
	trec_init(&t, "k-legacy-wildcard", &bad.p);
	ck_assert_int_eq(apply_record(&t.rec, &err), KMS_OK);
	tpolicy_init(&bad);
	tpolicy_grant(&bad, WEB, ops_bogus, 2);
	trec_init(&t, "k-bad-op", &bad.p);
	assert_record_invalid(&t, "Frobnicate");

	trec_init(&t, "k-long-wrap", &p.p);
	t.v[0].wrapped_material.len = KMS_WRAPPED_MAX + 1;
	assert_record_invalid(&t, "wrapped material of 65 bytes");
	trec_init(&t, "k-empty-wrap", &p.p);
	t.v[0].wrapped_material.len = 0;
	assert_record_invalid(&t, "wrapped material of 0 bytes");

	trec_init(&t, "k-v2", &p.p);
	t.v[0].version = 2;
	assert_record_invalid(&t, "must be 1, not 2");
	trec_init(&t, "k-gap", &p.p);
	t.rec.n_versions = 2;
	t.v[1].version = 3;
	assert_record_invalid(&t, "without gaps");
	trec_init(&t, "k-no-versions", &p.p);
	t.rec.n_versions = 0;
	assert_record_invalid(&t, "1 to 100000 versions");
	trec_init(&t, "k-primary", &p.p);
	t.rec.primary_version = 2;
	assert_record_invalid(&t, "primary version");

	memset(desc, 'd', sizeof(desc) - 1);
	desc[sizeof(desc) - 1] = '\0';
	trec_init(&t, "k-long-desc", &p.p);
	t.rec.description = desc;
	assert_record_invalid(&t, "description");
	/* Exactly 1024 bytes is allowed. */
	desc[1024] = '\0';
	ck_assert_int_eq(apply_record(&t.rec, &err), KMS_OK);

	ck_assert_uint_eq(kms_keyring_count(kr), 3);
	ck_assert(!kms_keyring_has_key(kr, "k-v2"));
}
END_TEST

START_TEST(test_cmd_create_key_validates)
{
	struct tpolicy p, bad;
	uint8_t w[KMS_WRAPPED_MAX + 1];
	char desc[1026];
	kms_buf cmd = {0};
	kms_err err = {0};

	tpolicy_app(&p);
	fill_wrapped(w, sizeof(w), 3);
	/* Positive: NULL policy is an empty policy, NULL description is "". */
	ck_assert_int_eq(kms_keyring_cmd_create_key("ok", NULL, NULL, NULL, 1,
						    w, 32, &cmd, &err),
			 KMS_OK);
	ck_assert_uint_gt(cmd.len, 0);
	ck_assert_int_eq(kms_keyring_apply(kr, cmd.data, cmd.len, &err),
			 KMS_OK);
	kms_buf_free(&cmd);

	ck_assert_int_eq(kms_keyring_cmd_create_key(NULL, "", &p.p, ADMIN, 1, w,
						    32, &cmd, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(cmd.data);
	ck_assert_int_eq(kms_keyring_cmd_create_key("a b", "", &p.p, ADMIN, 1,
						    w, 32, &cmd, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(cmd.data);
	ASSERT_MSG_HAS(err, "key id");

	memset(desc, 'x', sizeof(desc) - 1);
	desc[sizeof(desc) - 1] = '\0';
	ck_assert_int_eq(kms_keyring_cmd_create_key("k", desc, &p.p, ADMIN, 1,
						    w, 32, &cmd, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "description");
	ck_assert_ptr_null(cmd.data);

	tpolicy_init(&bad);
	tpolicy_grant(&bad, WEB, ops_web, 0);
	ck_assert_int_eq(kms_keyring_cmd_create_key("k", "", &bad.p, ADMIN, 1,
						    w, 32, &cmd, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "grant 1");
	ck_assert_ptr_null(cmd.data);

	ck_assert_int_eq(kms_keyring_cmd_create_key("k", "", &p.p, ADMIN, 1, w,
						    0, &cmd, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "wrapped material");
	ck_assert_int_eq(kms_keyring_cmd_create_key("k", "", &p.p, ADMIN, 1, w,
						    KMS_WRAPPED_MAX + 1, &cmd,
						    &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "wrapped material");
	ck_assert_int_eq(kms_keyring_cmd_create_key("k", "", &p.p, ADMIN, 1,
						    NULL, 16, &cmd, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(cmd.data);
	ck_assert_uint_eq(kms_keyring_count(kr), 1);
}
END_TEST

/* --- the resolve gate ---------------------------------------------------- */

START_TEST(test_resolve_refusals)
{
	struct tpolicy p;
	struct trec t;
	kms_key_use use;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);

	/* An unknown key reads like a key the caller may not use... */
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "nope", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
	    KMS_ERR_PERMISSION);
	ck_assert_str_eq(err.msg, "principal '" WEB "' may not Encrypt with key 'nope'");
	/* ...except to an administrator, who may list every key anyway. */
	{
		char *admins[] = {(char *)ADMIN};
		kms_buf b = {0};

		ck_assert_int_eq(kms_keyring_cmd_set_administrators(admins, 1, &b, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_apply(kr, b.data, b.len, &err), KMS_OK);
		kms_buf_free(&b);
	}
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "nope", 0, ADMIN, KMS_OP_ENCRYPT, &use, &err),
	    KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "key 'nope' not found");
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "k1", 0, ADMIN, KMS_OP_ENCRYPT, &use, &err),
	    KMS_ERR_PERMISSION);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "k1", 2, WEB, KMS_OP_DECRYPT, &use, &err),
	    KMS_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "key 'k1' has no version 2");
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 0, STRANGER,
					     KMS_OP_ENCRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_str_eq(err.msg, "principal '" STRANGER
				  "' may not Encrypt with key 'k1'");
	/* A stranger learns nothing about versions: permission comes first. */
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 7, STRANGER,
					     KMS_OP_DECRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "k1", 0, NULL, KMS_OP_DECRYPT, &use, &err),
	    KMS_ERR_PERMISSION);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, NULL, 0, WEB, KMS_OP_DECRYPT, &use, &err),
	    KMS_ERR_NOT_FOUND);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "k1\n", 0, WEB, KMS_OP_DECRYPT, &use, &err),
	    KMS_ERR_NOT_FOUND);

	/* The prefix grant lets every batch principal Decrypt, nothing else. */
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 0, BATCH_JOB,
					     KMS_OP_DECRYPT, &use, &err),
			 KMS_OK);
	ck_assert_uint_eq(use.version, 1);
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 0, BATCH_JOB,
					     KMS_OP_ENCRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, BATCH_JOB);
	ASSERT_MSG_HAS(err, "Encrypt");
	ck_assert_int_eq(kms_keyring_resolve(
			     kr, "k1", 0, "spiffe://example.org/ns/batchX/sa/j",
			     KMS_OP_DECRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_int_eq(kms_keyring_resolve(kr, "k1", 0, WEB,
					     KMS_OP_GENERATE_DATA_KEY, &use,
					     &err),
			 KMS_ERR_PERMISSION);
	ASSERT_MSG_HAS(err, "GenerateDataKey");

	/* A disabled key as an earlier version wrote it: the enabled flag alone. */
	trec_init(&t, "off", &p.p);
	t.rec.enabled = 0;
	ck_assert_int_eq(apply_record(&t.rec, &err), KMS_OK);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "off", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
	    KMS_ERR_PRECONDITION);
	ck_assert_str_eq(err.msg, "key 'off' is disabled");
	ck_assert_int_eq(kms_keyring_resolve(kr, "off", 0, STRANGER,
					     KMS_OP_ENCRYPT, &use, &err),
			 KMS_ERR_PERMISSION);
}
END_TEST

START_TEST(test_set_handle_first_wins)
{
	struct tpolicy p;
	kms_key_use u1 = use_of(1), u2 = use_of(1), r;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x11, &u1, &err), KMS_OK);
	ck_assert_uint_eq(u1.handle, 0x11);
	/* The loser of the race gets the winner's handle; its own goes at once. */
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x22, &u2, &err), KMS_OK);
	ck_assert_uint_eq(u2.handle, 0x11);
	ck_assert_ptr_eq(u2.ref, u1.ref);
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(times_released(0x22), 1);
	r = resolved("k1");
	ck_assert_uint_eq(r.handle, 0x11);
	kms_keyring_use_release(&r);
	kms_keyring_use_release(&u1);
	kms_keyring_use_release(&u2);
	kms_keyring_use_release(&u2); /* a second release does nothing */
	/* The key ring still holds it. */
	r = resolved("k1");
	ck_assert_uint_eq(r.handle, 0x11);
	kms_keyring_use_release(&r);
	ck_assert_uint_eq(released.n, 1);
}
END_TEST

/*
 * A handle unwrapped from material the key ring no longer holds for that
 * version (a snapshot install since the resolve) serves its call alone: it
 * is never recorded, so no later call uses it, and it goes with the use.
 */
START_TEST(test_set_handle_of_gone_or_changed_material)
{
	struct tpolicy p;
	kms_key_use gone = use_of(1), v2 = use_of(1), changed = use_of(2), r;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k2", 0x33, &gone, &err), KMS_OK);
	ck_assert_uint_eq(gone.handle, 0x33);
	v2.version = 2;
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x34, &v2, &err), KMS_OK);
	ck_assert_uint_eq(v2.handle, 0x34);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x35, &changed, &err), KMS_OK);
	ck_assert_uint_eq(changed.handle, 0x35);
	r = resolved("k1");
	ck_assert_uint_eq(r.handle, 0);
	ck_assert_uint_eq(released.n, 0);
	kms_keyring_use_release(&gone);
	kms_keyring_use_release(&v2);
	kms_keyring_use_release(&changed);
	ck_assert_uint_eq(released.n, 3);
	ck_assert_uint_eq(times_released(0x33), 1);
	ck_assert_uint_eq(times_released(0x34), 1);
	ck_assert_uint_eq(times_released(0x35), 1);
}
END_TEST

/* The key ring owns the handle it is given even when it refuses it. */
START_TEST(test_set_handle_refusals_release_the_handle)
{
	struct tpolicy p;
	kms_key_use u = use_of(1), held;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("k1", &p.p, 1);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0, &u, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "handle 0");
	ck_assert_ptr_null(u.ref);
	ck_assert_int_eq(kms_keyring_set_handle(kr, NULL, 0x41, &u, &err), KMS_ERR_INVALID);
	ck_assert_uint_eq(times_released(0x41), 1);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x42, &u, &err), KMS_OK);
	held = u;
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x43, &u, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "holds a handle already");
	ck_assert_uint_eq(times_released(0x43), 1);
	ck_assert_ptr_eq(u.ref, held.ref); /* untouched */
	kms_keyring_use_release(&u);

	/* Out of memory for the record: the handle goes, nothing is held. */
	u = use_of(1);
	kms_keyring_free(kr);
	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
	kms_keyring_set_release(kr, on_release, &released);
	create_ok("k1", &p.p, 1);
	kms_alloc_fail_after(0);
	ck_assert_int_eq(kms_keyring_set_handle(kr, "k1", 0x44, &u, &err), KMS_ERR_NOMEM);
	kms_alloc_fail_reset();
	ck_assert_uint_eq(times_released(0x44), 1);
	ck_assert_ptr_null(u.ref);
	ck_assert_uint_eq(u.handle, 0);
	ck_assert_uint_eq(resolved("k1").handle, 0);
	ck_assert_uint_eq(released.n, 4); /* 0x41, 0x43, 0x42 at free, 0x44 */
}
END_TEST

/* --- snapshot and restore ------------------------------------------------ */

static const char *const snap_ids[] = {"a", "b/1", "b/2", "zeta", "Z-upper"};

static void populate_five(void)
{
	struct tpolicy p, q;

	tpolicy_app(&p);
	tpolicy_init(&q);
	tpolicy_grant(&q, STRANGER, ops_describe, 1);
	for (size_t i = 0; i < 5; i++)
		create_ok(snap_ids[i], i % 2 ? &q.p : &p.p, (uint8_t)(i * 13));
}

START_TEST(test_snapshot_restore_roundtrip)
{
	kms_keyring *copy;
	kms_buf s1, s2;
	kms_key_use use;
	kms_err err = {0};

	populate_five();
	record_handle(kr, "a", 0, 0x77);
	s1 = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_new(&copy, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_restore(copy, s1.data, s1.len, &err),
			 KMS_OK);
	ck_assert_uint_eq(kms_keyring_count(copy), 5);

	for (size_t i = 0; i < 5; i++) {
		Kms__V1__KeyMetadata *m1 = NULL, *m2 = NULL;
		kms_buf b1, b2;

		ck_assert_int_eq(
		    kms_keyring_describe(kr, snap_ids[i], ADMIN, 1, &m1, &err),
		    KMS_OK);
		ck_assert_int_eq(kms_keyring_describe(copy, snap_ids[i], ADMIN,
						      1, &m2, &err),
				 KMS_OK);
		b1 = pack_metadata(m1);
		b2 = pack_metadata(m2);
		ck_assert_uint_eq(b1.len, b2.len);
		ck_assert_mem_eq(b1.data, b2.data, b1.len);
		free(b1.data);
		free(b2.data);
		kms_keyring_metadata_free(m1);
		kms_keyring_metadata_free(m2);
	}
	s2 = snapshot_of(copy);
	ck_assert_uint_eq(s1.len, s2.len);
	ck_assert_mem_eq(s1.data, s2.data, s1.len);

	/* Handles are node-local: the restored ring has none yet. */
	ck_assert_int_eq(
	    kms_keyring_resolve(copy, "a", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
	    KMS_OK);
	ck_assert_uint_eq(use.handle, 0);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "a", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
	    KMS_OK);
	ck_assert_uint_eq(use.handle, 0x77);
	kms_keyring_use_release(&use);

	free(s1.data);
	free(s2.data);
	kms_keyring_free(copy);
	ck_assert_uint_eq(released.n, 0);
}
END_TEST

/* Packs a snapshot of the given raw records with the given format. */
static kms_buf pack_snapshot(uint32_t format, Kms__V1__KeyRecord **recs,
			     size_t n)
{
	Kms__V1__KeyRingSnapshot s = KMS__V1__KEY_RING_SNAPSHOT__INIT;
	kms_buf b;

	s.format = format;
	s.keys = recs;
	s.n_keys = n;
	b.len = kms__v1__key_ring_snapshot__get_packed_size(&s);
	b.data = malloc(b.len ? b.len : 1);
	ck_assert_ptr_nonnull(b.data);
	ck_assert_uint_eq(kms__v1__key_ring_snapshot__pack(&s, b.data), b.len);
	return b;
}

static void assert_restore_invalid(const uint8_t *b, size_t len,
				   const char *what, const kms_buf *before)
{
	kms_err err = {0};
	kms_buf now;

	ck_assert_int_eq(kms_keyring_restore(kr, b, len, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, what);
	now = snapshot_of(kr);
	ck_assert_uint_eq(now.len, before->len);
	ck_assert_mem_eq(now.data, before->data, now.len);
	free(now.data);
}

START_TEST(test_restore_invalid_keeps_state)
{
	static const uint8_t garbage[] = {0x08, 0x01, 0x12, 0x7f, 0x01};
	struct tpolicy p;
	struct trec t1, t2;
	Kms__V1__KeyRecord *recs[2];
	kms_buf before, b;
	kms_key_use use;
	kms_err err = {0};

	populate_five();
	record_handle(kr, "a", 0, 0x99);
	before = snapshot_of(kr);

	assert_restore_invalid(before.data, before.len - 1, "not a valid",
			       &before);
	assert_restore_invalid(before.data, before.len / 2, "not a valid",
			       &before);
	assert_restore_invalid(garbage, sizeof(garbage), "not a valid",
			       &before);
	assert_restore_invalid((const uint8_t *)"", 0, "format 0", &before);

	tpolicy_app(&p);
	trec_init(&t1, "m", &p.p);
	trec_init(&t2, "n", &p.p);

	recs[0] = &t1.rec;
	recs[1] = &t2.rec;
	b = pack_snapshot(2, recs, 2);
	assert_restore_invalid(b.data, b.len, "format 2", &before);
	free(b.data);

	recs[0] = &t2.rec;
	recs[1] = &t1.rec;
	b = pack_snapshot(1, recs, 2);
	assert_restore_invalid(b.data, b.len, "out of order", &before);
	free(b.data);

	recs[0] = &t1.rec;
	recs[1] = &t1.rec;
	b = pack_snapshot(1, recs, 2);
	assert_restore_invalid(b.data, b.len, "repeated at key 'm'", &before);
	free(b.data);

	/* One bad record spoils the whole snapshot. */
	t2.v[0].wrapped_material.len = 0;
	recs[0] = &t1.rec;
	recs[1] = &t2.rec;
	b = pack_snapshot(1, recs, 2);
	assert_restore_invalid(b.data, b.len, "wrapped material", &before);
	free(b.data);

	/* The positive twin: the same records, corrected, restore. */
	t2.v[0].wrapped_material.len = 40;
	b = pack_snapshot(1, recs, 2);
	ck_assert_int_eq(kms_keyring_restore(kr, b.data, b.len, &err), KMS_OK);
	free(b.data);
	ck_assert_uint_eq(kms_keyring_count(kr), 2);
	ck_assert(kms_keyring_has_key(kr, "m"));
	ck_assert(!kms_keyring_has_key(kr, "a"));
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(released.h[0], 0x99);
	ck_assert_int_eq(
	    kms_keyring_resolve(kr, "n", 0, WEB, KMS_OP_ENCRYPT, &use, &err),
	    KMS_OK);
	free(before.data);
}
END_TEST

/*
 * Restore walks the snapshot's wire form itself, one key record at a time:
 * every framing fault is refused with the byte it is at, and nothing
 * changes; what protobuf allows (fields in any order, unknown fields) is
 * accepted, and a record's unknown fields survive into the next snapshot.
 */
struct raw {
	uint8_t b[4096];
	size_t n;
};

static void raw_put(struct raw *r, const void *p, size_t len)
{
	if (len == 0)
		return;
	ck_assert_uint_le(r->n + len, sizeof(r->b));
	memcpy(r->b + r->n, p, len);
	r->n += len;
}

static void raw_varint(struct raw *r, uint64_t v)
{
	uint8_t c;

	do {
		c = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v != 0)
			c |= 0x80;
		raw_put(r, &c, 1);
	} while (v != 0);
}

/* Field 2 of KeyRingSnapshot: rec packed, then `tail` raw bytes inside it. */
static void raw_key(struct raw *r, const Kms__V1__KeyRecord *rec, const uint8_t *tail,
		    size_t tail_len)
{
	uint8_t buf[1024];
	size_t len = kms__v1__key_record__get_packed_size(rec);

	ck_assert_uint_le(len, sizeof(buf));
	ck_assert_uint_eq(kms__v1__key_record__pack(rec, buf), len);
	raw_varint(r, (2 << 3) | 2);
	raw_varint(r, len + tail_len);
	raw_put(r, buf, len);
	raw_put(r, tail, tail_len);
}

static const uint8_t format_1[] = {0x08, 0x01};

/* A good snapshot of m and n, then `bad` appended. */
static void assert_tail_invalid(struct trec *m, struct trec *n, const uint8_t *bad, size_t len,
				const char *what, const kms_buf *before)
{
	struct raw r = {.n = 0};

	raw_put(&r, format_1, sizeof(format_1));
	raw_key(&r, &m->rec, NULL, 0);
	raw_key(&r, &n->rec, NULL, 0);
	raw_put(&r, bad, len);
	assert_restore_invalid(r.b, r.n, what, before);
}

START_TEST(test_restore_wire_form)
{
	static const uint8_t tag_zero[] = {0x00};
	static const uint8_t group[] = {(7 << 3) | 3, 0x00};
	static const uint8_t key_varint[] = {(2 << 3) | 0, 0x01};
	static const uint8_t key_fixed32[] = {(2 << 3) | 5, 1, 2, 3, 4};
	static const uint8_t open_varint[] = {0x08, 0x80};
	static const uint8_t long_tag[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
	static const uint8_t short_fixed64[] = {(9 << 3) | 1, 1, 2, 3};
	static const uint8_t past_end[] = {(6 << 3) | 2, 0x05, 'a'};
	/* A key record whose key_id claims 5 bytes and holds 1. */
	static const uint8_t bad_record[] = {(2 << 3) | 2, 0x03, 0x0a, 0x05, 'a'};
	/* Field 99 of a KeyRecord, a varint: unknown to this version. */
	static const uint8_t unknown[] = {0x98, 0x06, 0x2a};
	static const uint8_t top_unknown[] = {(15 << 3) | 0, 0x07};
	struct tpolicy p;
	struct trec m, n;
	struct raw r = {.n = 0};
	kms_buf before, after;
	kms_err err = {0};

	populate_five();
	before = snapshot_of(kr);
	tpolicy_app(&p);
	trec_init(&m, "m", &p.p);
	trec_init(&n, "n", &p.p);

	assert_tail_invalid(&m, &n, tag_zero, sizeof(tag_zero), "malformed field tag at byte",
			    &before);
	assert_tail_invalid(&m, &n, long_tag, sizeof(long_tag), "malformed field tag", &before);
	assert_tail_invalid(&m, &n, group, sizeof(group), "unknown wire type", &before);
	assert_tail_invalid(&m, &n, key_varint, sizeof(key_varint), "not length-delimited",
			    &before);
	assert_tail_invalid(&m, &n, key_fixed32, sizeof(key_fixed32), "not length-delimited",
			    &before);
	assert_tail_invalid(&m, &n, open_varint, sizeof(open_varint), "truncated varint", &before);
	assert_tail_invalid(&m, &n, short_fixed64, sizeof(short_fixed64), "truncated fixed-size",
			    &before);
	assert_tail_invalid(&m, &n, past_end, sizeof(past_end), "runs past the end", &before);
	/* The third record is the bad one, after two that were built. */
	assert_tail_invalid(&m, &n, bad_record, sizeof(bad_record), "key record 3 is malformed",
			    &before);
	/* A bad member among good keys: nothing is built either. */
	{
		static const uint8_t bad_member[] = {(3 << 3) | 2, 0x02, 0x08, 0x00};

		assert_tail_invalid(&m, &n, bad_member, sizeof(bad_member), "member", &before);
	}

	/* The positive twin: format last, an unknown top-level field, an
	 * unknown field in a record; all restore, and the record's unknown
	 * field is kept. */
	raw_key(&r, &m.rec, unknown, sizeof(unknown));
	raw_put(&r, top_unknown, sizeof(top_unknown));
	raw_key(&r, &n.rec, NULL, 0);
	raw_put(&r, format_1, sizeof(format_1));
	ck_assert_int_eq(kms_keyring_restore(kr, r.b, r.n, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_count(kr), 2);
	ck_assert(kms_keyring_has_key(kr, "m"));
	ck_assert(kms_keyring_has_key(kr, "n"));
	after = snapshot_of(kr);
	ck_assert_ptr_nonnull(memmem(after.data, after.len, unknown, sizeof(unknown)));
	free(after.data);
	free(before.data);
}
END_TEST

START_TEST(test_restore_releases_old_handles)
{
	kms_keyring *empty;
	kms_buf snap;
	kms_key_use lost = use_of(0);
	kms_err err = {0};

	populate_five();
	record_handle(kr, "a", 0, 101);
	record_handle(kr, "zeta", 3 * 13, 102);
	/* A lost race: 103 is released at once, not again at restore. */
	ck_assert_int_eq(kms_keyring_set_handle(kr, "a", 103, &lost, &err), KMS_OK);
	ck_assert_uint_eq(lost.handle, 101);
	kms_keyring_use_release(&lost);
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(times_released(103), 1);

	ck_assert_int_eq(kms_keyring_new(&empty, &err), KMS_OK);
	snap = snapshot_of(empty);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err),
			 KMS_OK);
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	ck_assert_uint_eq(released.n, 3);
	ck_assert_uint_eq(times_released(101), 1);
	ck_assert_uint_eq(times_released(102), 1);

	/* The ring works after a restore. */
	create_ok("again", NULL, 1);
	ck_assert_uint_eq(kms_keyring_count(kr), 1);
	free(snap.data);
	kms_keyring_free(empty);
}
END_TEST

/*
 * A restore while a call holds a handle releases nothing until the call is
 * done: the HSM object outlives every operation that uses it.
 */
START_TEST(test_restore_waits_for_the_holder)
{
	kms_keyring *empty;
	kms_buf snap;
	kms_key_use held, again;
	kms_err err = {0};

	populate_five();
	record_handle(kr, "a", 0, 201);
	held = resolved("a");
	ck_assert_uint_eq(held.handle, 201);
	ck_assert_int_eq(kms_keyring_new(&empty, &err), KMS_OK);
	snap = snapshot_of(empty);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_resolve(kr, "a", 0, WEB, KMS_OP_ENCRYPT, &again, &err),
			 KMS_ERR_PERMISSION);
	ck_assert_ptr_null(again.ref);
	kms_keyring_use_release(&again); /* nothing held: a no-op */
	ck_assert_uint_eq(released.n, 0);
	ck_assert_uint_eq(held.handle, 201); /* still the caller's to use */
	kms_keyring_use_release(&held);
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(times_released(201), 1);
	kms_keyring_use_release(&held);
	ck_assert_uint_eq(released.n, 1);
	free(snap.data);
	kms_keyring_free(empty);
}
END_TEST

/* Sets t's material to what create_ok(id, policy, seed) gives. */
static void trec_material(struct trec *t, const char *id, const Kms__V1__KeyPolicy *policy,
			  uint8_t seed)
{
	trec_init(t, id, policy);
	fill_wrapped(t->w, 40, seed);
}

/*
 * A snapshot install keeps the handles of the versions it does not change
 * (same key id, version and wrapped material); those of changed or removed
 * versions are released, each exactly once, when their last user is done.
 */
START_TEST(test_restore_keeps_unchanged_handles)
{
	struct tpolicy p;
	struct trec ta, tb, td;
	Kms__V1__KeyRecord *recs[3] = {&ta.rec, &tb.rec, &td.rec};
	kms_key_use held_b, u;
	kms_buf snap, same;
	kms_err err = {0};

	tpolicy_app(&p);
	create_ok("a", &p.p, 1);
	create_ok("b", &p.p, 2);
	create_ok("c", &p.p, 3);
	record_handle(kr, "a", 1, 301);
	record_handle(kr, "b", 2, 302);
	record_handle(kr, "c", 3, 303);
	held_b = resolved("b");
	/* a as it was, b with other material, c gone, d new. */
	trec_material(&ta, "a", &p.p, 1);
	trec_material(&tb, "b", &p.p, 9);
	trec_material(&td, "d", &p.p, 4);
	snap = pack_snapshot(1, recs, 3);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	/* c had no user: released now; b waits for its holder. */
	ck_assert_uint_eq(released.n, 1);
	ck_assert_uint_eq(times_released(303), 1);
	u = resolved("a");
	ck_assert_uint_eq(u.handle, 301);
	kms_keyring_use_release(&u);
	u = resolved("b");
	ck_assert_uint_eq(u.handle, 0); /* new material: unwrapped anew */
	ck_assert_uint_eq(resolved("d").handle, 0);
	kms_keyring_use_release(&held_b);
	ck_assert_uint_eq(released.n, 2);
	ck_assert_uint_eq(times_released(302), 1);

	/* Installing the same state again changes no handle. */
	record_handle(kr, "b", 9, 304);
	same = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_restore(kr, same.data, same.len, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_restore(kr, snap.data, snap.len, &err), KMS_OK);
	ck_assert_uint_eq(released.n, 2);
	u = resolved("a");
	ck_assert_uint_eq(u.handle, 301);
	kms_keyring_use_release(&u);
	u = resolved("b");
	ck_assert_uint_eq(u.handle, 304);
	kms_keyring_use_release(&u);

	/* Free releases what the key ring still holds, once each. */
	kms_keyring_free(kr);
	kr = NULL;
	ck_assert_uint_eq(released.n, 4);
	ck_assert_uint_eq(times_released(301), 1);
	ck_assert_uint_eq(times_released(304), 1);
	free(snap.data);
	free(same.data);
}
END_TEST

START_TEST(test_free_releases_handles)
{
	kms_keyring *k;
	kms_keyring *saved = kr;
	kms_key_use held = use_of(2);
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&k, &err), KMS_OK);
	kms_keyring_set_release(k, on_release, &released);
	kr = k; /* create_ok works on the fixture's pointer */
	create_ok("x1", NULL, 1);
	create_ok("x2", NULL, 2);
	create_ok("x3", NULL, 3);
	kr = saved;
	record_handle(k, "x1", 1, 7);
	record_handle(k, "x3", 3, 9);
	ck_assert_int_eq(kms_keyring_set_handle(k, "x2", 11, &held, &err), KMS_OK);
	kms_keyring_free(k);
	ck_assert_uint_eq(released.n, 2);
	ck_assert_uint_eq(times_released(7), 1);
	ck_assert_uint_eq(times_released(9), 1);
	/* A use the owner failed to release first still releases its handle. */
	kms_keyring_use_release(&held);
	ck_assert_uint_eq(released.n, 3);
	ck_assert_uint_eq(times_released(11), 1);
}
END_TEST

static void *failing_alloc(size_t n)
{
	(void)n;
	return NULL;
}

START_TEST(test_snapshot_alloc_failure)
{
	kms_buf b = {(uint8_t *)1, 1};
	kms_err err = {0};

	populate_five();
	ck_assert_int_eq(kms_keyring_snapshot(kr, failing_alloc, &b, &err),
			 KMS_ERR_NOMEM);
	ck_assert_ptr_null(b.data);
	ck_assert_uint_eq(b.len, 0);
	ASSERT_MSG_HAS(err, "out of memory");
}
END_TEST

/* --- list ---------------------------------------------------------------- */

static void populate_25(void)
{
	struct tpolicy even, odd;
	char id[16];

	tpolicy_init(&even);
	tpolicy_grant(&even, WEB, ops_describe, 1);
	tpolicy_init(&odd);
	tpolicy_grant(&odd, STRANGER, ops_describe, 1);
	/* Created out of order, to exercise the sorted insert. */
	for (int i = 24; i >= 0; i -= 2) {
		snprintf(id, sizeof(id), "key-%02d", i);
		create_ok(id, &even.p, (uint8_t)i);
	}
	for (int i = 1; i < 25; i += 2) {
		snprintf(id, sizeof(id), "key-%02d", i);
		create_ok(id, &odd.p, (uint8_t)i);
	}
	ck_assert_uint_eq(kms_keyring_count(kr), 25);
}

static void list_page(const char *principal, int admin, const char *after,
		      size_t page, size_t want_n, int want_more,
		      const int *want_ids)
{
	Kms__V1__KeyMetadata **keys = NULL;
	size_t n = 99;
	int more = -1;
	kms_err err = {0};
	char id[16];

	ck_assert_msg(kms_keyring_list(kr, principal, admin, after, page, &keys,
				       &n, &more, &err) == KMS_OK,
		      "list: %s", err.msg);
	ck_assert_uint_eq(n, want_n);
	ck_assert_int_eq(more, want_more);
	for (size_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "key-%02d", want_ids[i]);
		ck_assert_str_eq(keys[i]->key_id, id);
	}
	kms_keyring_list_free(keys, n);
}

START_TEST(test_list_pages)
{
	int ids[25];

	populate_25();
	for (int i = 0; i < 25; i++)
		ids[i] = i;
	list_page(ADMIN, 1, "", 10, 10, 1, ids);
	list_page(ADMIN, 1, "key-09", 10, 10, 1, ids + 10);
	list_page(ADMIN, 1, "key-19", 10, 5, 0, ids + 20);
	/* A page that ends exactly at the last key has no more. */
	list_page(ADMIN, 1, "key-14", 10, 10, 0, ids + 15);
	/* A cursor between ids starts at the next one; NULL is the start. */
	list_page(ADMIN, 1, "key-05x", 3, 3, 1, ids + 6);
	list_page(ADMIN, 1, NULL, 1000, 25, 0, ids);
	list_page(ADMIN, 1, "key-24", 10, 0, 0, ids);
	list_page(ADMIN, 1, "zzz", 10, 0, 0, ids);
}
END_TEST

START_TEST(test_list_filters_by_principal)
{
	int even[13], odd[12];

	populate_25();
	for (int i = 0; i < 13; i++)
		even[i] = 2 * i;
	for (int i = 0; i < 12; i++)
		odd[i] = 2 * i + 1;
	list_page(WEB, 0, "", 10, 10, 1, even);
	list_page(WEB, 0, "key-18", 10, 3, 0, even + 10);
	list_page(STRANGER, 0, "", 10, 10, 1, odd);
	list_page(STRANGER, 0, "key-19", 10, 2, 0, odd + 10);
	/* Only invisible keys follow: no more. */
	list_page(STRANGER, 0, "key-23", 10, 0, 0, odd);
	list_page(BATCH_JOB, 0, "", 10, 0, 0, odd);
	list_page(NULL, 0, "", 10, 0, 0, odd);
	/* The admin flag, not the principal, grants everything. */
	list_page(BATCH_JOB, 1, "", 25, 25, 0,
		  (int[25]){0,	1,  2,	3,  4,	5,  6,	7,  8,	9,  10, 11, 12,
			    13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24});
}
END_TEST

START_TEST(test_list_page_size_bounds)
{
	Kms__V1__KeyMetadata **keys = (Kms__V1__KeyMetadata **)1;
	size_t n = 5;
	int more = 1;
	kms_err err = {0};

	populate_25();
	ck_assert_int_eq(
	    kms_keyring_list(kr, ADMIN, 1, "", 0, &keys, &n, &more, &err),
	    KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "page size 0");
	ck_assert_ptr_null(keys);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(more, 0);
	ck_assert_int_eq(
	    kms_keyring_list(kr, ADMIN, 1, "", 1001, &keys, &n, &more, &err),
	    KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "page size 1001");
	ck_assert_int_eq(
	    kms_keyring_list(kr, ADMIN, 1, "", 1, &keys, &n, &more, &err),
	    KMS_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(more, 1);
	kms_keyring_list_free(keys, n);
}
END_TEST

/* --- concurrency --------------------------------------------------------- */

#define CONC_KEYS 500

static atomic_int conc_done;
static atomic_long conc_bad;
static atomic_long conc_found;
static atomic_long conc_recorded;

static void *conc_writer(void *arg)
{
	struct tpolicy p;
	char id[32];
	kms_err err = {0};

	(void)arg;
	tpolicy_app(&p);
	for (int i = 0; i < CONC_KEYS; i++) {
		snprintf(id, sizeof(id), "conc-%03d", i);
		if (create_key(id, "c", &p.p, (uint8_t)i, &err) != KMS_OK)
			atomic_fetch_add(&conc_bad, 1);
	}
	atomic_store(&conc_done, 1);
	return NULL;
}

static void *conc_reader(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	char id[32];
	uint8_t w[40];
	long iter = 0;

	while (!atomic_load(&conc_done) || iter < 200) {
		kms_key_use use;
		kms_err err = {0};
		int i = (int)(rand_r(&seed) % CONC_KEYS);
		int rc;

		iter++;
		snprintf(id, sizeof(id), "conc-%03d", i);
		rc = kms_keyring_resolve(kr, id, 0, WEB, KMS_OP_ENCRYPT, &use,
					 &err);
		if (rc == KMS_OK) {
			fill_wrapped(w, sizeof(w), (uint8_t)i);
			if (use.wrapped_len != sizeof(w) ||
			    memcmp(use.wrapped, w, sizeof(w)) != 0)
				atomic_fetch_add(&conc_bad, 1);
			atomic_fetch_add(&conc_found, 1);
			if (use.handle == 0) {
				atomic_fetch_add(&conc_recorded, 1);
				if (kms_keyring_set_handle(kr, id, (unsigned long)i + 1, &use,
							   &err) != KMS_OK)
					atomic_fetch_add(&conc_bad, 1);
			}
			if (use.handle != (unsigned long)i + 1)
				atomic_fetch_add(&conc_bad, 1);
			kms_keyring_use_release(&use);
		} else if (rc != KMS_ERR_PERMISSION) {
			/* Not created yet: refused like a key without a grant. */
			atomic_fetch_add(&conc_bad, 1);
		}
		if (iter % 64 == 0) {
			Kms__V1__KeyMetadata **keys = NULL;
			size_t n = 0;
			int more = 0;

			if (kms_keyring_list(kr, WEB, 0, "conc-1", 20, &keys,
					     &n, &more, &err) != KMS_OK)
				atomic_fetch_add(&conc_bad, 1);
			for (size_t j = 1; j < n; j++)
				if (strcmp(keys[j - 1]->key_id,
					   keys[j]->key_id) >= 0)
					atomic_fetch_add(&conc_bad, 1);
			kms_keyring_list_free(keys, n);
		}
	}
	return NULL;
}

START_TEST(test_concurrent_apply_and_resolve)
{
	pthread_t w, r[3];

	atomic_store(&conc_done, 0);
	atomic_store(&conc_bad, 0);
	atomic_store(&conc_found, 0);
	atomic_store(&conc_recorded, 0);
	ck_assert_int_eq(pthread_create(&w, NULL, conc_writer, NULL), 0);
	for (uintptr_t i = 0; i < 3; i++)
		ck_assert_int_eq(
		    pthread_create(&r[i], NULL, conc_reader, (void *)(i + 1)),
		    0);
	ck_assert_int_eq(pthread_join(w, NULL), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(pthread_join(r[i], NULL), 0);
	ck_assert_int_eq(atomic_load(&conc_bad), 0);
	ck_assert_int_gt(atomic_load(&conc_found), 0);
	ck_assert_uint_eq(kms_keyring_count(kr), CONC_KEYS);
	/* Each handle a reader handed over is released once: a lost race's at
	 * once, a recorded one at free. */
	kms_keyring_free(kr);
	kr = NULL;
	ck_assert_uint_eq(released.n, (size_t)atomic_load(&conc_recorded));
	ck_assert_uint_gt(released.n, 0);
}
END_TEST

/* --- allocation failure -------------------------------------------------- */

START_TEST(test_apply_alloc_failure)
{
	struct tpolicy p;
	uint8_t w[40];
	kms_buf cmd = {0}, before;
	kms_err err = {0};
	unsigned n;
	int rc = KMS_ERR_NOMEM;

	tpolicy_app(&p);
	/* Enough keys that the entry array has to grow under injection too. */
	for (int i = 0; i < 16; i++) {
		char id[16];

		snprintf(id, sizeof(id), "pre-%02d", i);
		create_ok(id, &p.p, (uint8_t)i);
	}
	before = snapshot_of(kr);
	fill_wrapped(w, sizeof(w), 5);
	ck_assert_int_eq(kms_keyring_cmd_create_key("late", "d", &p.p, ADMIN, 1,
						    w, sizeof(w), &cmd, &err),
			 KMS_OK);
	for (n = 0; n < 500 && rc != KMS_OK; n++) {
		kms_buf now;

		kms_alloc_fail_after(n);
		rc = kms_keyring_apply(kr, cmd.data, cmd.len, &err);
		kms_alloc_fail_reset();
		if (rc == KMS_OK)
			break;
		ck_assert_int_eq(rc, KMS_ERR_NOMEM);
		ASSERT_MSG_HAS(err, "out of memory");
		now = snapshot_of(kr);
		ck_assert_uint_eq(now.len, before.len);
		ck_assert_mem_eq(now.data, before.data, now.len);
		free(now.data);
	}
	ck_assert_int_eq(rc, KMS_OK);
	ck_assert_uint_gt(n, 3); /* several distinct allocations were failed */
	ck_assert(kms_keyring_has_key(kr, "late"));
	ck_assert_uint_eq(kms_keyring_count(kr), 17);
	kms_buf_free(&cmd);
	free(before.data);
}
END_TEST

START_TEST(test_restore_and_describe_alloc_failure)
{
	kms_keyring *src;
	kms_buf snap, before;
	kms_err err = {0};
	Kms__V1__KeyMetadata *md;
	unsigned n;
	int rc = KMS_ERR_NOMEM;

	populate_five();
	before = snapshot_of(kr);
	ck_assert_int_eq(kms_keyring_new(&src, &err), KMS_OK);
	{
		kms_keyring *saved = kr;

		kr = src;
		create_ok("other", NULL, 1);
		kr = saved;
	}
	snap = snapshot_of(src);
	for (n = 0; n < 500; n++) {
		kms_buf now;

		kms_alloc_fail_after(n);
		rc = kms_keyring_restore(kr, snap.data, snap.len, &err);
		kms_alloc_fail_reset();
		if (rc == KMS_OK)
			break;
		ck_assert_int_eq(rc, KMS_ERR_NOMEM);
		now = snapshot_of(kr);
		ck_assert_uint_eq(now.len, before.len);
		ck_assert_mem_eq(now.data, before.data, before.len);
		free(now.data);
	}
	ck_assert_int_eq(rc, KMS_OK);
	ck_assert(kms_keyring_has_key(kr, "other"));

	for (n = 0; n < 500; n++) {
		md = (Kms__V1__KeyMetadata *)1;
		kms_alloc_fail_after(n);
		rc = kms_keyring_describe(kr, "other", ADMIN, 1, &md, &err);
		kms_alloc_fail_reset();
		if (rc == KMS_OK)
			break;
		ck_assert_int_eq(rc, KMS_ERR_NOMEM);
		ck_assert_ptr_null(md);
	}
	ck_assert_int_eq(rc, KMS_OK);
	ck_assert_str_eq(md->key_id, "other");
	kms_keyring_metadata_free(md);
	free(snap.data);
	free(before.data);
	kms_keyring_free(src);
}
END_TEST

/* --- members and the domain-key probe ------------------------------------ */

static int apply_buf(kms_buf *b, kms_err *err)
{
	int rc = kms_keyring_apply(kr, b->data, b->len, err);

	kms_buf_free(b);
	return rc;
}

START_TEST(test_members_add_update_remove)
{
	kms_member m[KMS_MEMBERS_MAX], one;
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "127.0.0.1:7502", "127.0.0.1:7402", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_add_member(1, "127.0.0.1:7501", "127.0.0.1:7401", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_members(kr, m, KMS_MEMBERS_MAX), 2);
	ck_assert_uint_eq(m[0].id, 1); /* kept in id order */
	ck_assert_str_eq(m[1].grpc_address, "127.0.0.1:7402");
	/* A re-sent join updates the addresses instead of failing. */
	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "10.0.0.2:7502", "10.0.0.2:7402", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_member(kr, 2, &one), KMS_OK);
	ck_assert_str_eq(one.raft_address, "10.0.0.2:7502");
	ck_assert_uint_eq(kms_keyring_members(kr, m, KMS_MEMBERS_MAX), 2);
	ck_assert_int_eq(kms_keyring_cmd_remove_member(1, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_member(kr, 1, &one), KMS_ERR_NOT_FOUND);
	ck_assert_uint_eq(kms_keyring_members(kr, m, KMS_MEMBERS_MAX), 1);
}
END_TEST

START_TEST(test_members_refusals_change_nothing)
{
	kms_member m[KMS_MEMBERS_MAX];
	kms_buf b = {0};
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_cmd_add_member(0, "h:1", "h:2", NULL, &b, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "id") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_add_member(3, "no-port", "h:2", NULL, &b, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "raft_address") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_add_member(3, "h:1", "h: 2", NULL, &b, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "grpc_address") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_add_member(3, "h:1", "h:x", NULL, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_remove_member(0, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_remove_member(9, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_ERR_NOT_FOUND);
	ck_assert_msg(strstr(err.msg, "node 9") != NULL, "%s", err.msg);
	for (uint64_t id = 1; id <= KMS_MEMBERS_MAX; id++) {
		ck_assert_int_eq(kms_keyring_cmd_add_member(id, "h:1", "h:2", NULL, &b, &err), KMS_OK);
		ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	}
	ck_assert_int_eq(kms_keyring_cmd_add_member(99, "h:1", "h:2", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_ERR_PRECONDITION);
	ck_assert_uint_eq(kms_keyring_members(kr, m, KMS_MEMBERS_MAX), KMS_MEMBERS_MAX);
}
END_TEST

START_TEST(test_probe_set_once_and_snapshotted)
{
	static const uint8_t probe[40] = {9, 8, 7};
	uint8_t got[KMS_WRAPPED_MAX];
	kms_keyring *copy = NULL;
	kms_buf b = {0}, snap = {0};
	kms_err err = {0};

	ck_assert_uint_eq(kms_keyring_domain_key_probe(kr, got), 0);
	ck_assert_int_eq(kms_keyring_cmd_domain_key_check(probe, 0, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_domain_key_check(probe, sizeof(probe), &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_domain_key_check(probe, 8, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_ERR_EXISTS);
	ck_assert_uint_eq(kms_keyring_domain_key_probe(kr, got), sizeof(probe));
	ck_assert(memcmp(got, probe, sizeof(probe)) == 0);
	ck_assert_int_eq(kms_keyring_cmd_add_member(4, "h:1", "h:2", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	/* Members and the probe travel in snapshots. */
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&copy, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_restore(copy, snap.data, snap.len, &err), KMS_OK);
	ck_assert_uint_eq(kms_keyring_domain_key_probe(copy, got), sizeof(probe));
	ck_assert_int_eq(kms_keyring_member(copy, 4, &(kms_member){0}), KMS_OK);
	kms_buf_free(&snap);
	kms_keyring_free(copy);
}
END_TEST

/* --- join grants and the administrators --------------------------------- */

static kms_join_grant grant_for(uint8_t fill, int64_t expires)
{
	kms_join_grant g;

	memset(&g, 0, sizeof(g));
	g.present = 1;
	memset(g.transport_key_sha256, fill, sizeof(g.transport_key_sha256));
	g.expires_at_unix = expires;
	return g;
}

static int consume(uint64_t id, uint8_t fill, int64_t now, kms_err *err)
{
	uint8_t fp[KMS_FINGERPRINT_LEN];
	kms_buf b = {0};

	memset(fp, fill, sizeof(fp));
	ck_assert_int_eq(kms_keyring_cmd_consume_join_grant(id, fp, now, &b, err), KMS_OK);
	return apply_buf(&b, err);
}

START_TEST(test_join_grant_used_once)
{
	kms_join_grant g = grant_for(0xaa, 1000);
	uint8_t fp[KMS_FINGERPRINT_LEN];
	kms_member m;
	kms_buf b = {0};
	kms_err err = {0};

	/* The founder: no grant, nothing to use. */
	ck_assert_int_eq(kms_keyring_cmd_add_member(1, "h:1", "h:2", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(consume(1, 0xaa, 10, &err), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(err.msg, "holds no join grant") != NULL, "%s", err.msg);
	/* Not admitted. */
	ck_assert_int_eq(consume(2, 0xaa, 10, &err), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(err.msg, "has not been admitted") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "h:3", "h:4", &g, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	memset(fp, 0xaa, sizeof(fp));
	ck_assert_int_eq(kms_keyring_join_grant_check(kr, 2, fp, 10, &err), KMS_OK);
	/* Another key, and the end of its life (the proposer's clock decides). */
	ck_assert_int_eq(consume(2, 0xbb, 10, &err), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(err.msg, "another transport key") != NULL, "%s", err.msg);
	ck_assert_int_eq(consume(2, 0xaa, 1000, &err), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(err.msg, "expired") != NULL, "%s", err.msg);
	/* Re-admitted before it joined: the new grant replaces the old one. */
	g = grant_for(0xcc, 2000);
	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "h:3", "h:4", &g, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(consume(2, 0xaa, 10, &err), KMS_ERR_PERMISSION);
	ck_assert_int_eq(consume(2, 0xcc, 10, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_member(kr, 2, &m), KMS_OK);
	ck_assert(kms_member_joined(&m));
	/* Once. */
	ck_assert_int_eq(consume(2, 0xcc, 11, &err), KMS_ERR_PERMISSION);
	ck_assert_msg(strstr(err.msg, "used already") != NULL, "%s", err.msg);
	memset(fp, 0xcc, sizeof(fp));
	ck_assert_int_eq(kms_keyring_join_grant_check(kr, 2, fp, 10, &err), KMS_ERR_PERMISSION);
	/* A joined member, or the founder, gets no new grant. */
	g = grant_for(0xdd, 3000);
	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "h:3", "h:4", &g, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_keyring_cmd_add_member(1, "h:1", "h:2", &g, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_ERR_PRECONDITION);
	/* An address update (no grant) keeps the grant's state. */
	ck_assert_int_eq(kms_keyring_cmd_add_member(2, "h:5", "h:6", NULL, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_member(kr, 2, &m), KMS_OK);
	ck_assert(m.grant.present && m.grant.used);
	ck_assert_str_eq(m.raft_address, "h:5");
	/* Removed, the grant is gone with the member. */
	ck_assert_int_eq(kms_keyring_cmd_remove_member(2, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert_int_eq(consume(2, 0xcc, 10, &err), KMS_ERR_PERMISSION);
}
END_TEST

START_TEST(test_join_grant_malformed)
{
	kms_join_grant g = grant_for(0xaa, 0);
	kms_buf b = {0};
	kms_err err = {0};
	static const uint8_t short_consume[] = {0x2a, 0x04, 0x08, 0x02, 0x12, 0x00};

	ck_assert_int_eq(kms_keyring_cmd_add_member(3, "h:1", "h:2", &g, &b, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "expiry") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_consume_join_grant(0, g.transport_key_sha256, 1, &b, &err),
			 KMS_ERR_INVALID);
	/* ConsumeJoinGrant{node_id 2, fingerprint of 0 bytes}, as raw bytes. */
	ck_assert_int_eq(kms_keyring_apply(kr, short_consume, sizeof(short_consume), &err),
			 KMS_ERR_INVALID);
	ck_assert_uint_eq(kms_keyring_members(kr, NULL, 0), 0);
}
END_TEST

START_TEST(test_administrators)
{
	char *two[] = {(char *)ADMIN, (char *)WEB};
	char *bad_id[] = {(char *)"spiffe://td/a/../b"};
	char *node_id[] = {(char *)"spiffe://td/kmsd/node/1"};
	char *dup[] = {(char *)ADMIN, (char *)ADMIN};
	char **got = NULL;
	size_t n = 0;
	kms_keyring *copy = NULL;
	kms_buf b = {0}, snap = {0};
	kms_err err = {0};

	ck_assert_uint_eq(kms_keyring_admin_count(kr), 0);
	ck_assert(!kms_keyring_is_admin(kr, ADMIN));
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(two, 0, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(bad_id, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(node_id, 1, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(dup, 2, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_keyring_cmd_set_administrators(two, 2, &b, &err), KMS_OK);
	ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	ck_assert(kms_keyring_is_admin(kr, ADMIN));
	ck_assert(kms_keyring_is_admin(kr, WEB));
	ck_assert(!kms_keyring_is_admin(kr, "spiffe://td/other"));
	ck_assert_int_eq(kms_keyring_admins(kr, &got, &n, &err), KMS_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(got[1], WEB);
	kms_keyring_admins_free(got, n);
	/* In snapshots, grants and all. */
	{
		kms_join_grant g = grant_for(0x11, 99);

		ck_assert_int_eq(kms_keyring_cmd_add_member(4, "h:1", "h:2", &g, &b, &err), KMS_OK);
		ck_assert_int_eq(apply_buf(&b, &err), KMS_OK);
	}
	ck_assert_int_eq(kms_keyring_snapshot(kr, kms_malloc, &snap, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_new(&copy, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_restore(copy, snap.data, snap.len, &err), KMS_OK);
	ck_assert(kms_keyring_is_admin(copy, WEB));
	{
		uint8_t fp[KMS_FINGERPRINT_LEN];

		memset(fp, 0x11, sizeof(fp));
		ck_assert_int_eq(kms_keyring_join_grant_check(copy, 4, fp, 98, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_join_grant_check(copy, 4, fp, 99, &err),
				 KMS_ERR_PERMISSION);
	}
	kms_buf_free(&snap);
	kms_keyring_free(copy);
}
END_TEST

static Suite *keyring_suite(void)
{
	Suite *s = suite_create("keyring");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_create_then_resolve_describe_list);
	tcase_add_test(tc, test_describe_refused);
	tcase_add_test(tc, test_describe_copy_outlives_state);
	tcase_add_test(tc, test_duplicate_create);
	tcase_add_test(tc, test_apply_malformed);
	tcase_add_test(tc, test_apply_invalid_records);
	tcase_add_test(tc, test_cmd_create_key_validates);
	tcase_add_test(tc, test_resolve_refusals);
	tcase_add_test(tc, test_set_handle_first_wins);
	tcase_add_test(tc, test_set_handle_of_gone_or_changed_material);
	tcase_add_test(tc, test_set_handle_refusals_release_the_handle);
	tcase_add_test(tc, test_snapshot_restore_roundtrip);
	tcase_add_test(tc, test_restore_invalid_keeps_state);
	tcase_add_test(tc, test_restore_wire_form);
	tcase_add_test(tc, test_restore_releases_old_handles);
	tcase_add_test(tc, test_restore_waits_for_the_holder);
	tcase_add_test(tc, test_restore_keeps_unchanged_handles);
	tcase_add_test(tc, test_free_releases_handles);
	tcase_add_test(tc, test_snapshot_alloc_failure);
	tcase_add_test(tc, test_list_pages);
	tcase_add_test(tc, test_list_filters_by_principal);
	tcase_add_test(tc, test_list_page_size_bounds);
	tcase_add_test(tc, test_concurrent_apply_and_resolve);
	tcase_add_test(tc, test_apply_alloc_failure);
	tcase_add_test(tc, test_restore_and_describe_alloc_failure);
	tcase_add_test(tc, test_members_add_update_remove);
	tcase_add_test(tc, test_members_refusals_change_nothing);
	tcase_add_test(tc, test_join_grant_used_once);
	tcase_add_test(tc, test_join_grant_malformed);
	tcase_add_test(tc, test_administrators);
	tcase_add_test(tc, test_probe_set_once_and_snapshotted);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(keyring_suite());

	return kms_check_run(sr);
}
