/* key_prefetch.c - after a rotation, every node reserves encryptions for the new primary version and unwraps it into its HSM in the background, so that the first encryption under it waits for neither. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "api/api.h"
#include "api/encryption_budget.h"
#include "api/key_ops.h"
#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "node/key_prefetch.h"
#include "node/node.h"
#include "node/prefetch_queue.h"

/* Dropped keys are logged at most this often. */
#define DROP_LOG_EVERY_S 10

struct kms_key_prefetch {
	kms_node *node;
	pthread_mutex_t mu;
	kms_prefetch_queue q;	 /* (mu) */
	void (*wake)(void *);	 /* (mu) */
	void *wake_arg;		 /* (mu) */
	uint64_t dropped;	 /* (mu) since start */
	int64_t drop_logged;	 /* (mu) */
	atomic_uint_fast64_t done; /* keys prefetched */
};

int kms_key_prefetch_new(kms_node *node, kms_key_prefetch **out, kms_err *err)
{
	kms_key_prefetch *p = kms_calloc(1, sizeof(*p));

	*out = NULL;
	if (p == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	p->node = node;
	pthread_mutex_init(&p->mu, NULL);
	kms_prefetch_queue_init(&p->q);
	*out = p;
	return KMS_OK;
}

void kms_key_prefetch_free(kms_key_prefetch *p)
{
	if (p == NULL)
		return;
	if (p->dropped > 0 || kms_prefetch_queue_len(&p->q) > 0)
		KMS_LOG_I("prefetch: %llu key version(s) prefetched since start, %llu dropped (the "
			  "queue was full), %zu still queued at stop",
			  (unsigned long long)atomic_load(&p->done),
			  (unsigned long long)p->dropped, kms_prefetch_queue_len(&p->q));
	pthread_mutex_destroy(&p->mu);
	kms_free(p);
}

/* A rotation this node replays or catches up on, not one just made. */
static int too_old(int64_t rotated_at_unix, int64_t now)
{
	/* Unsigned: the date is the proposer's clock, possibly ahead of ours. */
	return rotated_at_unix < now &&
	       (uint64_t)now - (uint64_t)rotated_at_unix > (uint64_t)KMS_PREFETCH_MAX_AGE_S;
}

void kms_key_prefetch_rotated(void *arg, const char *key_id, uint32_t version,
			      int64_t rotated_at_unix)
{
	kms_key_prefetch *p = arg;
	int64_t now = (int64_t)time(NULL);

	if (too_old(rotated_at_unix, now))
		return;
	pthread_mutex_lock(&p->mu);
	if (kms_prefetch_queue_push(&p->q, key_id, version, rotated_at_unix) ==
	    KMS_PREFETCH_DROPPED) {
		p->dropped++;
		if (now - p->drop_logged >= DROP_LOG_EVERY_S) {
			p->drop_logged = now;
			KMS_LOG_W("prefetch: %d keys already wait; key '%.128s' version %u is not "
				  "prefetched (its first encryption reserves and unwraps it)",
				  KMS_PREFETCH_QUEUE_MAX, key_id, version);
		}
	} else if (p->wake != NULL) {
		p->wake(p->wake_arg);
	}
	pthread_mutex_unlock(&p->mu);
}

void kms_key_prefetch_set_wake(kms_key_prefetch *p, void (*wake)(void *), void *wake_arg)
{
	pthread_mutex_lock(&p->mu);
	p->wake = wake;
	p->wake_arg = wake_arg;
	pthread_mutex_unlock(&p->mu);
}

/* Why this node cannot prefetch now (NULL: it can). */
static const char *not_ready(kms_node *node)
{
	kms_member self;

	if (kms_keyring_member(node->kr, node->cfg.node_id, &self) != KMS_OK)
		return "this node is not a member of the cluster yet";
	if (atomic_load(&node->domain_key) == 0 || !atomic_load(&node->probe_verified))
		return "this node has not received and verified the domain key yet";
	if (!kms_node_can_write(node))
		return "no Raft leader is known";
	return NULL;
}

static void prefetch_one(kms_key_prefetch *p, const kms_prefetch_item *it)
{
	kms_node *node = p->node;
	kms_key_use use = {0};
	kms_err err = {0};
	char reserved[KMS_ERRMSG_SIZE + 64], unwrapped[KMS_ERRMSG_SIZE + 64];
	int started = 0;

	/* A key disabled, deleted or rotated again since: nothing to prepare. */
	if (kms_keyring_primary_use(node->kr, it->key_id, it->version, &use, &err) != KMS_OK) {
		KMS_LOG_I("prefetch: key '%s' version %u skipped: %s", it->key_id, it->version,
			  err.msg);
		return;
	}
	if (kms_budget_prefetch(node->budget, it->key_id, it->version, &started, &err) != KMS_OK)
		snprintf(reserved, sizeof(reserved), "no reservation (%s)", err.msg);
	else
		snprintf(reserved, sizeof(reserved), "%s",
			 started ? "a block of encryptions being reserved"
				 : "encryptions reserved already");
	kms_err_clear(&err);
	if (use.handle != 0)
		snprintf(unwrapped, sizeof(unwrapped), "unwrapped already");
	else if (kms_key_ops_handle(node, it->key_id, &use, &err) != KMS_OK)
		snprintf(unwrapped, sizeof(unwrapped), "not unwrapped (%s)", err.msg);
	else
		snprintf(unwrapped, sizeof(unwrapped), "unwrapped into the HSM");
	kms_keyring_use_release(&use);
	atomic_fetch_add(&p->done, 1);
	KMS_LOG_I("prefetch: key '%s' version %u: %s, %s", it->key_id, it->version, reserved,
		  unwrapped);
}

int kms_key_prefetch_run(kms_key_prefetch *p)
{
	kms_prefetch_item it;
	int more;

	for (int i = 0; i < KMS_PREFETCH_QUEUE_MAX; i++) {
		const char *why;
		int got;

		pthread_mutex_lock(&p->mu);
		got = kms_prefetch_queue_pop(&p->q, &it);
		pthread_mutex_unlock(&p->mu);
		if (!got)
			return 0;
		why = not_ready(p->node);
		if (why != NULL && too_old(it.rotated_at_unix, (int64_t)time(NULL))) {
			KMS_LOG_D("prefetch: key '%s' version %u dropped: %s for %d s", it.key_id,
				  it.version, why, KMS_PREFETCH_MAX_AGE_S);
			continue;
		}
		/* Caught up, restarted or elected a moment ago: again at the next
		 * tick, in its turn behind what came since. */
		if (why != NULL) {
			pthread_mutex_lock(&p->mu);
			kms_prefetch_queue_push(&p->q, it.key_id, it.version, it.rotated_at_unix);
			pthread_mutex_unlock(&p->mu);
			return 0;
		}
		prefetch_one(p, &it);
	}
	pthread_mutex_lock(&p->mu);
	more = kms_prefetch_queue_len(&p->q) > 0;
	pthread_mutex_unlock(&p->mu);
	return more;
}
