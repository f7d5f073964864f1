/* test_encryption_budget.c - Check suite for the encryption budget: block math, the low-water refill, one reservation in flight, fail-closed paths, and the bound held across three nodes. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "api/encryption_budget.h"
#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "check_run.h"

#define WEB "spiffe://example.org/ns/app/sa/web"
#define ADMIN "spiffe://example.org/ns/ops/sa/admin"
#define T0 1700000000
#define NODES 3

#define ASSERT_MSG_HAS(err, s)                                                                    \
	ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' does not name '%s'",          \
		      (err).msg, (s))

/*
 * A small stand-in for Raft, in the test only: one log applied in order to
 * the key ring of every node (real key rings, real commands), so that what
 * the budget asks for is decided by the real apply. It answers at once
 * (inline, as a stopped Raft does), or from its own thread (as a leader
 * does), or holds the writes until released (a commit in flight), or fails
 * every write (no quorum), or leaves node 1 behind: the others apply the
 * write and node 1 installs a snapshot of node 2's key ring instead (a
 * follower that missed the entry).
 */
enum raft_mode { RAFT_INLINE, RAFT_ASYNC, RAFT_HELD, RAFT_DOWN, RAFT_SKIP_FIRST };

struct pending {
	struct pending *next;
	kms_buf cmd;
	kms_raft_done_fn done;
	void *arg;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	enum raft_mode mode;
	kms_keyring *nodes[NODES];
	size_t n_nodes;
	struct pending *head, **tail;
	unsigned commits; /* writes proposed */
	uint64_t index;
	int stop;
	pthread_t thread;
} raft = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static kms_keyring *nodes[NODES];
static kms_budget *budgets[NODES];

/* Applies cmd to every node in one step (raft.mu held: one log order). */
static int apply_all(const kms_buf *cmd, kms_err *err)
{
	int rc = KMS_OK;

	for (size_t i = 0; i < raft.n_nodes; i++) {
		kms_err e = {0};
		int r = kms_keyring_apply(raft.nodes[i], cmd->data, cmd->len, &e);

		/* Deterministic apply: every node decides alike. */
		if (i == 0) {
			rc = r;
			*err = e;
		}
		ck_assert_int_eq(r, rc);
	}
	raft.index++;
	return rc;
}

static void *raft_main(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&raft.mu);
	for (;;) {
		struct pending *p;
		kms_err err = {0};
		int rc;

		while (!raft.stop && (raft.head == NULL || raft.mode == RAFT_HELD))
			pthread_cond_wait(&raft.cond, &raft.mu);
		if (raft.head == NULL)
			break;
		p = raft.head;
		raft.head = p->next;
		if (raft.head == NULL)
			raft.tail = &raft.head;
		rc = raft.mode == RAFT_DOWN ? KMS_ERR_UNAVAILABLE : apply_all(&p->cmd, &err);
		pthread_mutex_unlock(&raft.mu);
		/* Raft carries the status back, not apply's sentence. */
		p->done(p->arg, rc, rc == KMS_ERR_UNAVAILABLE ? "no quorum (test)" : NULL,
			raft.index);
		kms_buf_free(&p->cmd);
		kms_free(p);
		pthread_mutex_lock(&raft.mu);
	}
	pthread_mutex_unlock(&raft.mu);
	return NULL;
}

static void commit(void *arg, const uint8_t *cmd, size_t len, kms_raft_done_fn done,
		   void *done_arg)
{
	struct pending *p;
	kms_err err = {0};
	int rc;

	(void)arg;
	pthread_mutex_lock(&raft.mu);
	raft.commits++;
	if (raft.mode == RAFT_INLINE) {
		rc = apply_all(&(kms_buf){.data = (uint8_t *)cmd, .len = len}, &err);
		pthread_mutex_unlock(&raft.mu);
		done(done_arg, rc, NULL, raft.index);
		return;
	}
	if (raft.mode == RAFT_SKIP_FIRST) {
		kms_buf snap = {0};

		for (size_t i = 1; i < raft.n_nodes; i++)
			ck_assert_int_eq(kms_keyring_apply(raft.nodes[i], cmd, len, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_snapshot(raft.nodes[1], malloc, &snap, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_restore(raft.nodes[0], snap.data, snap.len, &err),
				 KMS_OK);
		free(snap.data);
		raft.index++;
		pthread_mutex_unlock(&raft.mu);
		done(done_arg, KMS_OK, NULL, raft.index);
		return;
	}
	if (raft.mode == RAFT_DOWN) {
		pthread_mutex_unlock(&raft.mu);
		done(done_arg, KMS_ERR_UNAVAILABLE,
		     "no Raft leader is known: the cluster has no quorum now", 0);
		return;
	}
	p = kms_calloc(1, sizeof(*p));
	ck_assert_ptr_nonnull(p);
	p->cmd.data = kms_malloc(len);
	ck_assert_ptr_nonnull(p->cmd.data);
	memcpy(p->cmd.data, cmd, len);
	p->cmd.len = len;
	p->done = done;
	p->arg = done_arg;
	*raft.tail = p;
	raft.tail = &p->next;
	pthread_cond_broadcast(&raft.cond);
	pthread_mutex_unlock(&raft.mu);
}

static void raft_set_mode(enum raft_mode m)
{
	pthread_mutex_lock(&raft.mu);
	raft.mode = m;
	pthread_cond_broadcast(&raft.cond);
	pthread_mutex_unlock(&raft.mu);
}

static unsigned commits(void)
{
	unsigned n;

	pthread_mutex_lock(&raft.mu);
	n = raft.commits;
	pthread_mutex_unlock(&raft.mu);
	return n;
}

static unsigned queued(void)
{
	unsigned n = 0;

	pthread_mutex_lock(&raft.mu);
	for (struct pending *p = raft.head; p != NULL; p = p->next)
		n++;
	pthread_mutex_unlock(&raft.mu);
	return n;
}

/* A command applied on every node through the log, outside any budget. */
static void log_apply(kms_buf *b)
{
	kms_err err = {0};

	pthread_mutex_lock(&raft.mu);
	ck_assert_msg(apply_all(b, &err) == KMS_OK, "%s", err.msg);
	pthread_mutex_unlock(&raft.mu);
	kms_buf_free(b);
}

static void key_with_max(const char *id, uint64_t max)
{
	static char *ops[] = {"Encrypt"};
	Kms__V1__KeyPolicy p = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant g = KMS__V1__GRANT__INIT, *gp[1] = {&g};
	uint8_t w[40];
	kms_buf b = {0};
	kms_err err = {0};

	g.principal = (char *)WEB;
	g.operations = ops;
	g.n_operations = 1;
	p.grants = gp;
	p.n_grants = 1;
	memset(w, 0x5a, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_create_key(id, "", &p, ADMIN, T0, w, sizeof(w), &b, &err),
			 KMS_OK);
	log_apply(&b);
	if (max != 0) {
		ck_assert_int_eq(kms_keyring_cmd_set_rotation_policy(id, 0, max, &b, &err), KMS_OK);
		log_apply(&b);
	}
}

static uint64_t reserved(const char *id)
{
	kms_key_status s;
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_key_status(nodes[0], id, &s, &err), KMS_OK);
	return s.primary_reserved;
}

static void budget_for(int i, unsigned wait_ms, unsigned retry_ms)
{
	kms_budget_opts o = {0};
	kms_err err = {0};

	o.kr = nodes[i];
	o.node_id = (uint64_t)i + 1;
	o.incarnation = 1000 + (uint64_t)i;
	o.commit = commit;
	o.wait_ms = wait_ms;
	o.retry_ms = retry_ms;
	kms_budget_free(budgets[i]);
	ck_assert_msg(kms_budget_new(&o, &budgets[i], &err) == KMS_OK, "%s", err.msg);
}

static void setup(void)
{
	kms_err err = {0};

	raft.mode = RAFT_INLINE;
	raft.head = NULL;
	raft.tail = &raft.head;
	raft.commits = 0;
	raft.index = 0;
	raft.stop = 0;
	raft.n_nodes = NODES;
	for (int i = 0; i < NODES; i++) {
		char *admins[] = {(char *)ADMIN};
		kms_buf b = {0};

		ck_assert_int_eq(kms_keyring_new(&nodes[i], &err), KMS_OK);
		kms_keyring_set_self(nodes[i], (uint64_t)i + 1, 1000 + (uint64_t)i);
		ck_assert_int_eq(kms_keyring_cmd_set_administrators(admins, 1, &b, &err), KMS_OK);
		ck_assert_int_eq(kms_keyring_apply(nodes[i], b.data, b.len, &err), KMS_OK);
		kms_buf_free(&b);
		raft.nodes[i] = nodes[i];
		budgets[i] = NULL;
		budget_for(i, 300, 100);
	}
	ck_assert_int_eq(pthread_create(&raft.thread, NULL, raft_main, NULL), 0);
}

static void teardown(void)
{
	/* Whatever is still queued is answered before the budgets go. */
	raft_set_mode(RAFT_INLINE);
	pthread_mutex_lock(&raft.mu);
	raft.stop = 1;
	pthread_cond_broadcast(&raft.cond);
	pthread_mutex_unlock(&raft.mu);
	pthread_join(raft.thread, NULL);
	for (int i = 0; i < NODES; i++) {
		kms_budget_free(budgets[i]);
		budgets[i] = NULL;
		kms_keyring_free(nodes[i]);
		nodes[i] = NULL;
	}
}

static int64_t ms_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int take(int node, const char *id, uint32_t version, kms_err *err)
{
	return kms_budget_take(budgets[node], id, version, 10000, err);
}

/* --- block math ------------------------------------------------------------ */

START_TEST(test_block_size)
{
	ck_assert_uint_eq(kms_budget_block(KMS_ENCRYPTIONS_DEFAULT), KMS_BUDGET_BLOCK_MAX);
	ck_assert_uint_eq(kms_budget_block(KMS_ENCRYPTIONS_MAX), KMS_BUDGET_BLOCK_MAX);
	ck_assert_uint_eq(kms_budget_block(64 * (uint64_t)KMS_BUDGET_BLOCK_MAX),
			  KMS_BUDGET_BLOCK_MAX);
	ck_assert_uint_eq(kms_budget_block(64 * (uint64_t)KMS_BUDGET_BLOCK_MAX - 64),
			  KMS_BUDGET_BLOCK_MAX - 1);
	/* The integration test's bound: 15 a block, 66 blocks, several a node. */
	ck_assert_uint_eq(kms_budget_block(1000), 15);
	ck_assert_uint_eq(kms_budget_block(63), 1);
	ck_assert_uint_eq(kms_budget_block(1), 1);
	ck_assert_uint_eq(kms_budget_block(0), 1);
	ck_assert_uint_eq(kms_budget_low_water(KMS_BUDGET_BLOCK_MAX), KMS_BUDGET_BLOCK_MAX / 4);
	ck_assert_uint_eq(kms_budget_low_water(15), 3);
	ck_assert_uint_eq(kms_budget_low_water(1), 0);
}
END_TEST

START_TEST(test_new_refuses_missing_fields)
{
	kms_budget_opts o = {0};
	kms_budget *b = (kms_budget *)&o;
	kms_err err = {0};

	ck_assert_int_eq(kms_budget_new(NULL, &b, &err), KMS_ERR_INVALID);
	ck_assert_ptr_null(b);
	o.kr = nodes[0];
	o.commit = commit;
	o.node_id = 1;
	ck_assert_int_eq(kms_budget_new(&o, &b, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "incarnation");
	o.incarnation = 1;
	o.node_id = 0;
	ck_assert_int_eq(kms_budget_new(&o, &b, &err), KMS_ERR_INVALID);
	o.node_id = 1;
	o.commit = NULL;
	ck_assert_int_eq(kms_budget_new(&o, &b, &err), KMS_ERR_INVALID);
	kms_budget_free(NULL);
}
END_TEST

/* --- reserving and refilling ---------------------------------------------- */

/* The first take reserves one block through the log, and only one. */
START_TEST(test_first_take_reserves_one_block)
{
	kms_err err = {0};

	key_with_max("k", 6400); /* a block of 100 */
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 0);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(reserved("k"), 100);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 99);
	/* Credited to node 1 alone. */
	ck_assert_uint_eq(kms_keyring_allowance(nodes[1], "k", 1), 0);
	ck_assert_uint_eq(kms_budget_reservations(budgets[0]), 1);
	/* Without the reservation there is nothing to take (the test fails
	 * closed without the budget). */
	ck_assert_int_eq(kms_keyring_take_encryption(nodes[1], "k", 1, NULL, &err),
			 KMS_ERR_UNAVAILABLE);
}
END_TEST

/* At the low water a take asks for the next block, ahead of need. */
START_TEST(test_low_water_refills_ahead)
{
	kms_err err = {0};

	key_with_max("k", 6400);
	for (int i = 0; i < 74; i++)
		ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	/* 26 left: above the low water of 25. */
	ck_assert_uint_eq(commits(), 1);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 2);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 125);
	ck_assert_uint_eq(reserved("k"), 200);
}
END_TEST

/*
 * One reservation in flight per key version: takes below the low water
 * while it is in flight ask for nothing more, and nobody waits for it.
 */
START_TEST(test_one_reservation_in_flight)
{
	kms_err err = {0};

	key_with_max("k", 6400);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	raft_set_mode(RAFT_HELD);
	for (int i = 0; i < 90; i++)
		ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 2);
	ck_assert_uint_eq(queued(), 1);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 9);
	raft_set_mode(RAFT_INLINE);
	while (queued() > 0)
		;
	/* The grant lands once its done has run. */
	for (int64_t until = ms_now() + 2000;
	     kms_keyring_allowance(nodes[0], "k", 1) != 109 && ms_now() < until;)
		;
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 109);
}
END_TEST

struct taker {
	int node;
	const char *id;
	int ok, refused;
	kms_err last;
};

static void *take_until_refused(void *p)
{
	struct taker *t = p;
	kms_err err = {0};

	for (;;) {
		if (take(t->node, t->id, 1, &err) == KMS_OK) {
			t->ok++;
			continue;
		}
		t->last = err;
		t->refused++;
		return NULL;
	}
}

/*
 * Callers with nothing left wait for the one reservation in flight, and
 * go on once it commits.
 */
START_TEST(test_empty_allowance_waits_for_the_reservation)
{
	struct taker t = {.node = 0, .id = "k"};
	pthread_t th;
	kms_err err = {0};

	budget_for(0, 5000, 100);
	key_with_max("k", 640); /* a block of 10 */
	raft_set_mode(RAFT_HELD);
	ck_assert_int_eq(pthread_create(&th, NULL, take_until_refused, &t), 0);
	for (int64_t until = ms_now() + 2000; queued() == 0 && ms_now() < until;)
		;
	ck_assert_uint_eq(queued(), 1);
	ck_assert_int_eq(t.ok, 0);
	raft_set_mode(RAFT_INLINE);
	pthread_join(th, NULL);
	/* It went on through the whole bound, then was refused. */
	ck_assert_int_eq(t.ok, 640);
	ck_assert_int_eq(t.last.code, KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(t.last, "has made its maximum of 640 encryptions");
	ASSERT_MSG_HAS(t.last, "rotation");
	ck_assert_uint_eq(reserved("k"), 640);
	ck_assert_int_eq(take(0, "k", 1, &err), KMS_ERR_UNAVAILABLE);
}
END_TEST

/*
 * A follower that skipped its own reservation's entry by installing a
 * snapshot (which carries the reserved count, not its allowance) still
 * gets the block, once; the bound holds.
 */
START_TEST(test_grant_in_a_snapshot_is_credited)
{
	kms_err err = {0};

	key_with_max("k", 6400);
	raft_set_mode(RAFT_SKIP_FIRST);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(reserved("k"), 100);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 99);
	for (int i = 0; i < 99; i++)
		ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%d: %s", i, err.msg);
	/* The low water asked for one more block, skipped and credited too. */
	ck_assert_uint_eq(commits(), 2);
	ck_assert_uint_eq(reserved("k"), 200);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 100);
}
END_TEST

/* --- failing closed ---------------------------------------------------------- */

/* No quorum: the call says so, with Raft's reason, and takes nothing. */
START_TEST(test_no_quorum_fails_closed)
{
	kms_err err = {0};
	unsigned before;

	int n = 0;

	key_with_max("k", 640);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	raft_set_mode(RAFT_DOWN);
	/* What the node holds is spent, then nothing more. */
	while (take(0, "k", 1, &err) == KMS_OK)
		n++;
	ck_assert_int_eq(n, 9);
	ck_assert_int_eq(err.code, KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "no reserved encryptions left for key 'k' version 1 and none could "
			    "be reserved");
	ASSERT_MSG_HAS(err, "no quorum");
	before = commits();
	/* A fresh failure answers the next calls without another write... */
	ck_assert_int_eq(take(0, "k", 1, &err), KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "no quorum");
	ck_assert_uint_eq(commits(), before);
	/* ...and once it is old, the next call tries again. */
	usleep(150 * 1000);
	raft_set_mode(RAFT_INLINE);
	ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), before + 1);
	ck_assert_uint_eq(reserved("k"), 20);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 9);
}
END_TEST

/* A reservation that never commits ends the wait at wait_ms, or at the
 * call's own deadline when that comes first. */
START_TEST(test_wait_is_bounded)
{
	kms_err err = {0};
	int64_t t0;

	key_with_max("k", 640);
	raft_set_mode(RAFT_HELD);
	t0 = ms_now();
	ck_assert_int_eq(take(0, "k", 1, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_int_ge(ms_now() - t0, 290);
	ASSERT_MSG_HAS(err, "the reservation did not commit in time");
	t0 = ms_now();
	ck_assert_int_eq(kms_budget_take(budgets[0], "k", 1, 50, &err), KMS_ERR_UNAVAILABLE);
	ck_assert_int_lt(ms_now() - t0, 290);
	ck_assert_int_eq(kms_budget_take(budgets[0], "k", 1, 0, &err), KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "the call's deadline passed");
	/* Still the one reservation. */
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 1), 0);
}
END_TEST

/* A key disabled under the call: apply's refusal and sentence. */
START_TEST(test_key_changed_meanwhile)
{
	kms_buf b = {0};
	kms_err err = {0};

	key_with_max("k", 640);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("k", 0, &b, &err), KMS_OK);
	log_apply(&b);
	ck_assert_int_eq(take(0, "k", 1, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "key 'k' is disabled");
	ck_assert_int_eq(take(0, "nope", 1, &err), KMS_ERR_NOT_FOUND);
	ck_assert_uint_eq(reserved("k"), 0);
}
END_TEST

/* A rotation while a call waited: the call says so rather than use the
 * grant of another version. */
START_TEST(test_rotated_while_waiting)
{
	uint8_t w[40];
	kms_buf b = {0};
	kms_err err = {0};

	key_with_max("k", 640);
	for (int i = 0; i < 640; i++)
		ck_assert_msg(take(0, "k", 1, &err) == KMS_OK, "%d: %s", i, err.msg);
	memset(w, 0x33, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_rotate_key("k", 2, w, sizeof(w), T0 + 1, &b, &err),
			 KMS_OK);
	log_apply(&b);
	ck_assert_int_eq(take(0, "k", 1, &err), KMS_ERR_UNAVAILABLE);
	ASSERT_MSG_HAS(err, "rotated to version 2");
	ck_assert_msg(take(0, "k", 2, &err) == KMS_OK, "%s", err.msg);
}
END_TEST

/* --- the prefetch after a rotation ---------------------------------------- */

static void rotate(const char *id, uint32_t version)
{
	uint8_t w[40];
	kms_buf b = {0};
	kms_err err = {0};

	memset(w, 0x40 + (int)version, sizeof(w));
	ck_assert_int_eq(kms_keyring_cmd_rotate_key(id, version, w, sizeof(w), T0 + version, &b,
						    &err),
			 KMS_OK);
	log_apply(&b);
}

/* A new primary: one block reserved ahead, so the first take commits
 * nothing; a second prefetch asks for nothing more. */
START_TEST(test_prefetch_reserves_ahead)
{
	kms_err err = {0};
	int started = 0;

	key_with_max("k", 6400);
	rotate("k", 2);
	ck_assert_msg(kms_budget_prefetch(budgets[0], "k", 2, &started, &err) == KMS_OK, "%s",
		      err.msg);
	ck_assert_int_eq(started, 1);
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(reserved("k"), 100);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 2), 100);
	ck_assert_msg(kms_budget_prefetch(budgets[0], "k", 2, &started, &err) == KMS_OK, "%s",
		      err.msg);
	ck_assert_int_eq(started, 0);
	ck_assert_msg(take(0, "k", 2, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(kms_keyring_allowance(nodes[0], "k", 2), 99);
}
END_TEST

/* One in flight: the prefetch does not add a second, and a take that
 * comes meanwhile waits for that one rather than proposing its own. */
START_TEST(test_prefetch_shares_the_reservation_in_flight)
{
	kms_err err = {0};
	int started = 0;

	key_with_max("k", 6400);
	raft_set_mode(RAFT_HELD);
	ck_assert_int_eq(kms_budget_prefetch(budgets[1], "k", 1, &started, &err), KMS_OK);
	ck_assert_int_eq(started, 1);
	ck_assert_int_eq(kms_budget_prefetch(budgets[1], "k", 1, &started, &err), KMS_OK);
	ck_assert_int_eq(started, 0);
	ck_assert_uint_eq(queued(), 1);
	raft_set_mode(RAFT_ASYNC);
	ck_assert_msg(take(1, "k", 1, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(commits(), 1);
	ck_assert_uint_eq(reserved("k"), 100);
}
END_TEST

/*
 * Nothing is reserved for a version that is no longer worth it: an old
 * primary, a disabled key, a key pending deletion, an unknown key. The
 * refusal says why and nothing is proposed.
 */
START_TEST(test_prefetch_refuses_what_cannot_encrypt)
{
	kms_buf b = {0};
	kms_err err = {0};
	int started = 1;

	key_with_max("k", 6400);
	rotate("k", 2);
	ck_assert_int_eq(kms_budget_prefetch(budgets[0], "k", 1, &started, &err),
			 KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "version 1 is not the key's enabled primary");
	ck_assert_int_eq(started, 0);
	ck_assert_int_eq(kms_keyring_cmd_set_key_enabled("k", 0, &b, &err), KMS_OK);
	log_apply(&b);
	ck_assert_int_eq(kms_budget_prefetch(budgets[0], "k", 2, &started, &err),
			 KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "Disabled");
	key_with_max("gone", 6400);
	ck_assert_int_eq(kms_keyring_cmd_schedule_key_deletion("gone", T0 + 86400, &b, &err),
			 KMS_OK);
	log_apply(&b);
	ck_assert_int_eq(kms_budget_prefetch(budgets[0], "gone", 1, &started, &err),
			 KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "PendingDeletion");
	ck_assert_int_eq(kms_budget_prefetch(budgets[0], "nope", 1, &started, &err),
			 KMS_ERR_NOT_FOUND);
	ck_assert_uint_eq(commits(), 0);
	ck_assert_uint_eq(reserved("k"), 0);
	ck_assert_uint_eq(reserved("gone"), 0);
}
END_TEST

/* --- the bound across nodes ------------------------------------------------ */

/*
 * Three nodes, two callers each, taking until refused, with Raft answering
 * from its own thread: together they make exactly the bound, never more,
 * and the version is exhausted.
 */
START_TEST(test_bound_holds_across_three_nodes)
{
	struct taker t[2 * NODES];
	pthread_t th[2 * NODES];
	int sum = 0;

	for (int i = 0; i < NODES; i++)
		budget_for(i, 5000, 100);
	key_with_max("k", 1000);
	/* Answers from the Raft thread: calls wait for one another's blocks. */
	raft_set_mode(RAFT_ASYNC);
	for (int i = 0; i < 2 * NODES; i++) {
		memset(&t[i], 0, sizeof(t[i]));
		t[i].node = i % NODES;
		t[i].id = "k";
		ck_assert_int_eq(pthread_create(&th[i], NULL, take_until_refused, &t[i]), 0);
	}
	for (int i = 0; i < 2 * NODES; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 2 * NODES; i++) {
		sum += t[i].ok;
		ck_assert_msg(t[i].last.code == KMS_ERR_UNAVAILABLE, "%s", t[i].last.msg);
	}
	ck_assert_int_eq(sum, 1000);
	ck_assert_uint_eq(reserved("k"), 1000);
	for (int i = 0; i < NODES; i++)
		ck_assert_uint_eq(kms_keyring_allowance(nodes[i], "k", 1), 0);
}
END_TEST

static Suite *budget_suite(void)
{
	Suite *s = suite_create("encryption budget");
	TCase *tc = tcase_create("budget");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_block_size);
	tcase_add_test(tc, test_new_refuses_missing_fields);
	tcase_add_test(tc, test_first_take_reserves_one_block);
	tcase_add_test(tc, test_low_water_refills_ahead);
	tcase_add_test(tc, test_one_reservation_in_flight);
	tcase_add_test(tc, test_empty_allowance_waits_for_the_reservation);
	tcase_add_test(tc, test_grant_in_a_snapshot_is_credited);
	tcase_add_test(tc, test_no_quorum_fails_closed);
	tcase_add_test(tc, test_wait_is_bounded);
	tcase_add_test(tc, test_key_changed_meanwhile);
	tcase_add_test(tc, test_rotated_while_waiting);
	tcase_add_test(tc, test_bound_holds_across_three_nodes);
	tcase_add_test(tc, test_prefetch_reserves_ahead);
	tcase_add_test(tc, test_prefetch_shares_the_reservation_in_flight);
	tcase_add_test(tc, test_prefetch_refuses_what_cannot_encrypt);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(budget_suite()));
}
