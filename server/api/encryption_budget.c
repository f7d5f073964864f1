/* encryption_budget.c - takes one encryption from this node's reserved blocks, asking Raft for more before they run out. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/encryption_budget.h"
#include "kms/alloc.h"
#include "kms/log.h"

/* Failed reservations are logged at most this often, whatever the load. */
#define LOG_EVERY_MS 5000

/*
 * The reservations of one key version: the one in flight, if any, and the
 * outcome of the last one. It lives while an attempt is in flight, while a
 * call waits on it, or while a failure is remembered (retry_ms).
 */
struct reservation {
	struct reservation *next;
	kms_budget *b;
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t version;
	int in_flight;
	unsigned waiters;
	uint64_t finished; /* attempts finished: a waiter watches it move */
	int status;        /* of the last finished attempt */
	char reason[KMS_ERRMSG_SIZE];
	int64_t failed_at_ms; /* monotonic; 0 while the last attempt did not fail */
	kms_buf cmd;          /* the last attempt's command, to say why apply refused it */
	uint64_t count;       /* what the attempt in flight asks for */
	uint64_t credits;     /* kms_keyring_grants_credited before it was proposed */
};

struct kms_budget {
	kms_keyring *kr;
	uint64_t node_id, incarnation;
	kms_budget_commit_fn commit;
	void *commit_arg;
	unsigned wait_ms, retry_ms;
	pthread_mutex_t mu;
	pthread_cond_t cond; /* (mu) an attempt finished */
	struct reservation *head;
	size_t in_flight;
	int64_t logged_at_ms;
	atomic_uint_fast64_t committed;
};

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

uint64_t kms_budget_block(uint64_t max)
{
	uint64_t block = max / 64;

	if (block > KMS_BUDGET_BLOCK_MAX)
		return KMS_BUDGET_BLOCK_MAX;
	return block > 0 ? block : 1;
}

uint64_t kms_budget_low_water(uint64_t block)
{
	return block / 4;
}

int kms_budget_new(const kms_budget_opts *o, kms_budget **out, kms_err *err)
{
	pthread_condattr_t ca;
	kms_budget *b;

	*out = NULL;
	if (o == NULL || o->kr == NULL || o->commit == NULL || o->node_id == 0 ||
	    o->incarnation == 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"an encryption budget needs a key ring, a commit function, a node "
				"id and an incarnation");
	b = kms_calloc(1, sizeof(*b));
	if (b == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	b->kr = o->kr;
	b->node_id = o->node_id;
	b->incarnation = o->incarnation;
	b->commit = o->commit;
	b->commit_arg = o->commit_arg;
	b->wait_ms = o->wait_ms != 0 ? o->wait_ms : KMS_BUDGET_WAIT_MS;
	b->retry_ms = o->retry_ms != 0 ? o->retry_ms : KMS_BUDGET_RETRY_MS;
	pthread_mutex_init(&b->mu, NULL);
	/* Waits are measured on the monotonic clock: a clock step must not
	 * stretch one. */
	if (pthread_condattr_init(&ca) != 0 ||
	    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&b->cond, &ca) != 0) {
		pthread_mutex_destroy(&b->mu);
		kms_free(b);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot make a monotonic condition variable");
	}
	pthread_condattr_destroy(&ca);
	*out = b;
	return KMS_OK;
}

static void reservation_unlink(kms_budget *b, struct reservation *r)
{
	for (struct reservation **p = &b->head; *p != NULL; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
	kms_buf_free(&r->cmd);
	kms_free(r);
}

/* Whether nothing needs r any more: not in flight, nobody waiting, and no
 * failure to remember. */
static int reservation_idle(const kms_budget *b, const struct reservation *r, int64_t now)
{
	return !r->in_flight && r->waiters == 0 &&
	       (r->failed_at_ms == 0 || now - r->failed_at_ms >= (int64_t)b->retry_ms);
}

/* The entry of key_id's version (mu held), dropping idle ones on the way;
 * NULL if there is none. */
static struct reservation *reservation_find(kms_budget *b, const char *key_id, uint32_t version)
{
	struct reservation **p = &b->head, *found = NULL;
	int64_t now = now_ms();

	while (*p != NULL) {
		struct reservation *r = *p;

		if (r->version == version && strcmp(r->key_id, key_id) == 0) {
			found = r;
			p = &r->next;
		} else if (reservation_idle(b, r, now)) {
			*p = r->next;
			kms_buf_free(&r->cmd);
			kms_free(r);
		} else {
			p = &r->next;
		}
	}
	return found;
}

void kms_budget_free(kms_budget *b)
{
	if (b == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	while (b->in_flight > 0)
		pthread_cond_wait(&b->cond, &b->mu);
	while (b->head != NULL)
		reservation_unlink(b, b->head);
	pthread_mutex_unlock(&b->mu);
	KMS_LOG_I("encryption budget: %llu reservation(s) committed since start",
		  (unsigned long long)atomic_load(&b->committed));
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->mu);
	kms_free(b);
}

uint64_t kms_budget_reservations(kms_budget *b)
{
	return atomic_load(&b->committed);
}

static void reserve_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct reservation *r = arg;
	kms_budget *b = r->b;
	kms_err why = {0};
	int64_t now = now_ms();

	(void)index;
	/*
	 * Raft brings back the status of a refused apply, not its sentence;
	 * the state that refused it gives the same one again.
	 */
	if (status != KMS_OK && msg == NULL &&
	    kms_keyring_check(b->kr, r->cmd.data, r->cmd.len, &why) == status)
		msg = why.msg;
	/* Committed, and this node is past it: applied here, or in a snapshot. */
	if (status == KMS_OK) {
		int credited = 0;

		if (kms_keyring_credit_skipped_grant(b->kr, r->key_id, r->version, r->count,
						     r->credits, &credited, &why) != KMS_OK)
			KMS_LOG_D("encryption budget: %s", why.msg);
		else if (credited)
			KMS_LOG_I("encryption budget: the grant of %llu encryptions for key "
				  "'%.128s' version %u came with a snapshot install; credited",
				  (unsigned long long)r->count, r->key_id, r->version);
	}
	pthread_mutex_lock(&b->mu);
	r->in_flight = 0;
	r->finished++;
	r->status = status;
	snprintf(r->reason, sizeof(r->reason), "%s", msg != NULL ? msg : kms_strerror(status));
	r->failed_at_ms = status == KMS_OK ? 0 : now;
	if (status == KMS_OK)
		atomic_fetch_add(&b->committed, 1);
	if (status != KMS_OK && now - b->logged_at_ms >= LOG_EVERY_MS) {
		b->logged_at_ms = now;
		KMS_LOG_W("encryption budget: reserving encryptions for key '%.128s' version %u "
			  "failed (encryptions under it fail closed once this node's allowance "
			  "is used up): %s",
			  r->key_id, r->version, r->reason);
	} else if (status == KMS_OK) {
		KMS_LOG_D("encryption budget: reserved encryptions for key '%.128s' version %u",
			  r->key_id, r->version);
	}
	b->in_flight--;
	pthread_cond_broadcast(&b->cond);
	if (reservation_idle(b, r, now))
		reservation_unlink(b, r);
	pthread_mutex_unlock(&b->mu);
}

/* The refusal of a call after r's last attempt failed (mu held). */
static int failed(const struct reservation *r, kms_err *err)
{
	/* The key changed under the call: apply's own answer. */
	int code = r->status == KMS_ERR_PRECONDITION || r->status == KMS_ERR_NOT_FOUND
			   ? r->status
			   : KMS_ERR_UNAVAILABLE;

	return kms_errf(err, code,
			"no reserved encryptions left for key '%.128s' version %u and none could "
			"be reserved: %.100s%s",
			r->key_id, r->version, r->reason,
			code == KMS_ERR_UNAVAILABLE ? " (no Raft quorum?)" : "");
}

/*
 * Makes sure a reservation of one block for key_id's version is in flight:
 * the one already in flight, or a new one, unless the last one failed less
 * than retry_ms ago (its refusal is the answer then). With wait, the
 * caller becomes a waiter of *out (it decrements waiters) and *seen is
 * the count of finished attempts to wait past, both taken before the
 * commit: done may run on this thread, before commit returns. mu is held
 * on entry and on return, and released while committing.
 */
static int reserve_locked(kms_budget *b, const char *key_id, uint32_t version, int wait,
			  struct reservation **out, uint64_t *seen, kms_err *err)
{
	struct reservation *r = reservation_find(b, key_id, version);
	kms_key_status s;
	kms_buf cmd = {0};
	uint64_t count = 0, credits = 0;

	*out = NULL;
	if (r != NULL && !r->in_flight && r->failed_at_ms != 0 &&
	    now_ms() - r->failed_at_ms < (int64_t)b->retry_ms)
		return failed(r, err);
	if (r == NULL || !r->in_flight) {
		KMS_TRY(kms_keyring_key_status(b->kr, key_id, &s, err));
		count = kms_budget_block(s.max_encryptions);
		/* Before the proposal: its own apply would count as a credit. */
		credits = kms_keyring_grants_credited(b->kr, key_id);
		KMS_TRY(kms_keyring_cmd_reserve_encryptions(key_id, version, count, b->node_id,
							    b->incarnation, &cmd, err));
	}
	if (r == NULL) {
		r = kms_calloc(1, sizeof(*r));
		if (r == NULL) {
			kms_buf_free(&cmd);
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory reserving encryptions");
		}
		r->b = b;
		snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
		r->version = version;
		r->next = b->head;
		b->head = r;
	}
	if (wait) {
		r->waiters++;
		*seen = r->finished;
		*out = r;
	}
	if (r->in_flight)
		return KMS_OK;
	r->in_flight = 1;
	r->failed_at_ms = 0;
	/* Kept until the next attempt: commit may still read it when done runs. */
	kms_buf_free(&r->cmd);
	r->cmd = cmd;
	r->count = count;
	r->credits = credits;
	b->in_flight++;
	/* In flight, r is never unlinked before its done runs. */
	pthread_mutex_unlock(&b->mu);
	b->commit(b->commit_arg, cmd.data, cmd.len, reserve_done, r);
	pthread_mutex_lock(&b->mu);
	return KMS_OK;
}

/*
 * Asks for the next block of key_id's version in the background when left
 * (what this node may still take) is at or below the low water and the
 * version is the key's Enabled primary; *started says whether this call
 * proposed it (not when one was in flight already). Nobody waits for it.
 */
static int reserve_ahead(kms_budget *b, const char *key_id, uint32_t version, uint64_t left,
			 int *started, kms_err *err)
{
	struct reservation *r;
	kms_key_status s;
	uint64_t seen;
	int rc, was_in_flight;

	*started = 0;
	KMS_TRY(kms_keyring_key_status(b->kr, key_id, &s, err));
	if (s.state != KMS__V1__KEY_STATE__KEY_STATE_ENABLED || s.primary_version != version ||
	    s.primary_state != KMS__V1__KEY_VERSION_STATE__KEY_VERSION_ENABLED)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"key '%.128s' version %u is not the key's enabled primary any more "
				"(key %s, primary version %u %s)",
				key_id, version, kms_key_state_name(s.state), s.primary_version,
				kms_key_version_state_name(s.primary_state));
	if (left > kms_budget_low_water(kms_budget_block(s.max_encryptions)))
		return KMS_OK;
	pthread_mutex_lock(&b->mu);
	r = reservation_find(b, key_id, version);
	was_in_flight = r != NULL && r->in_flight;
	rc = reserve_locked(b, key_id, version, 0, &r, &seen, err);
	*started = rc == KMS_OK && !was_in_flight;
	pthread_mutex_unlock(&b->mu);
	return rc;
}

/* The low-water refill of a take. */
static void refill(kms_budget *b, const char *key_id, uint32_t version, uint64_t left)
{
	kms_err err = {0};
	int started;

	if (reserve_ahead(b, key_id, version, left, &started, &err) != KMS_OK &&
	    err.code != KMS_ERR_PRECONDITION)
		KMS_LOG_D("encryption budget: no refill for key '%.128s' version %u: %s", key_id,
			  version, err.msg);
}

int kms_budget_prefetch(kms_budget *b, const char *key_id, uint32_t version, int *started,
			kms_err *err)
{
	return reserve_ahead(b, key_id, version, kms_keyring_allowance(b->kr, key_id, version),
			     started, err);
}

/* The sentence of a take that found nothing, once the reservation came
 * back without an encryption for this call. */
static int exhausted(kms_budget *b, const char *key_id, uint32_t version, kms_err *err)
{
	kms_key_status s;

	if (kms_keyring_key_status(b->kr, key_id, &s, err) != KMS_OK)
		return err->code;
	if (s.primary_version == version &&
	    s.primary_state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"key '%.128s' version %u has made its maximum of %llu encryptions: "
				"a rotation is pending (the leader rotates the key, which needs a "
				"Raft quorum); retry shortly",
				key_id, version, (unsigned long long)s.max_encryptions);
	if (s.primary_version != version)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"key '%.128s' was rotated to version %u while this call waited for "
				"encryptions of version %u; retry",
				key_id, s.primary_version, version);
	return KMS_OK;
}

int kms_budget_take(kms_budget *b, const char *key_id, uint32_t version, long deadline_ms,
		    kms_err *err)
{
	struct reservation *r = NULL;
	uint64_t left = 0, seen = 0;
	long wait = deadline_ms < (long)b->wait_ms ? deadline_ms : (long)b->wait_ms;
	int64_t until = now_ms() + (wait > 0 ? wait : 0);
	struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (long)(until % 1000) * 1000000L};
	int rc = KMS_OK;

	if (kms_keyring_take_encryption(b->kr, key_id, version, &left, NULL) == KMS_OK) {
		/* Cheap above the largest low water: no look at the key at all. */
		if (left <= kms_budget_low_water(KMS_BUDGET_BLOCK_MAX))
			refill(b, key_id, version, left);
		return KMS_OK;
	}
	pthread_mutex_lock(&b->mu);
	for (;;) {
		KMS_TRY_GOTO(rc, reserve_locked(b, key_id, version, 1, &r, &seen, err), out);
		while (r->finished == seen && now_ms() < until)
			if (pthread_cond_timedwait(&b->cond, &b->mu, &ts) == ETIMEDOUT)
				break;
		r->waiters--;
		if (r->finished == seen) {
			rc = kms_errf(err, KMS_ERR_UNAVAILABLE,
				      "no reserved encryptions left for key '%.128s' version %u and "
				      "none could be reserved: %s (no Raft quorum?)",
				      key_id, version,
				      wait > 0 ? "the reservation did not commit in time"
					       : "the call's deadline passed");
			goto out;
		}
		if (r->status != KMS_OK) {
			rc = failed(r, err);
			goto out;
		}
		pthread_mutex_unlock(&b->mu);
		if (kms_keyring_take_encryption(b->kr, key_id, version, &left, NULL) == KMS_OK)
			return KMS_OK;
		rc = exhausted(b, key_id, version, err);
		pthread_mutex_lock(&b->mu);
		if (rc != KMS_OK)
			goto out;
		/* Other calls took this block first: ask again while time is left. */
		if (now_ms() >= until) {
			rc = kms_errf(err, KMS_ERR_UNAVAILABLE,
				      "no reserved encryptions left for key '%.128s' version %u: "
				      "the blocks reserved while this call waited were all taken "
				      "by other calls; retry",
				      key_id, version);
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&b->mu);
	return rc;
}
