/* forward.c - a follower's writes: batched to the leader with no thread waiting, answered once applied on this node too. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/forward.h"
#include "node/node.h"

/* The longest a forward waits for the leader, whatever the caller's deadline. */
#define FORWARD_TIMEOUT_MS 10000
/* How long after the leader's answer this node may take to apply the write. */
#define READ_OWN_WRITE_TIMEOUT_MS 5000
/* How often the deadline watch looks at the time while it watches anything. */
#define WAIT_TICK_MS 50
/*
 * Batches on their way to the leader at once. A write taken while one is
 * out waits for it to come back, and leaves with everything taken
 * meanwhile: one call for many writes under load, and no wait at all for
 * a lone write. One at a time made the largest batches (about 10 writes
 * at c=32 against 3 with four out) and the fewest context switches and
 * least CPU per forwarded write on two shared cores, where CPU is what
 * bounds the rate; the leader pipelines the entries of successive
 * batches all the same.
 */
#define BATCHES_IN_FLIGHT 1
/* The commands of one batch at most (a lone larger one goes alone): well
 * under the 64 KiB a kmsd request may hold. */
#define BATCH_BYTES_MAX (32 * 1024)
/* Deadlines the watch answers per look (more wait for the next one). */
#define EXPIRED_PER_LOOK 64

static const char shutting_down[] = "kmsd is shutting down";

/* One write, from kms_forwarder_submit until its done has run. */
struct fwd {
	kms_forwarder *f;
	char *principal;
	uint8_t *cmd;
	size_t len;
	int64_t call_deadline; /* monotonic ms; INT64_MAX: none */
	int64_t send_deadline; /* the forward's own bound */
	int64_t apply_by;      /* the wait for this node's apply */
	uint64_t index;
	int sends;
	int claimed; /* (f->mu) its done has run or is running */
	char msg[KMS_ERRMSG_SIZE];
	kms_raft_done_fn done;
	void *arg;
	struct fwd *next;	   /* (f->mu) the queue, or the apply list */
	struct fwd *lprev, *lnext; /* (f->mu) the live list */
};

/* One ForwardBatch call. */
struct batch {
	kms_forwarder *f;
	uint64_t leader; /* the node asked */
	int64_t until;	 /* the call's deadline (monotonic ms) */
	int counted;	 /* one of BATCHES_IN_FLIGHT (a resend alone is not) */
	size_t n;
	struct fwd *items[KMS_FORWARD_BATCH_MAX];
	Kms__V1__ForwardRequest reqs[KMS_FORWARD_BATCH_MAX];
	Kms__V1__ForwardRequest *ptrs[KMS_FORWARD_BATCH_MAX];
};

struct kms_forwarder {
	kms_node *node;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct fwd *qhead, *qtail; /* (mu) taken, not sent yet */
	unsigned in_flight;	   /* (mu) counted batches out */
	/* (mu) taken and not answered by the leader yet (queued or sent): the
	 * deadline watch answers those whose caller's deadline passes. An entry
	 * stays here, claimed, until its batch is back. */
	struct fwd *live;
	struct fwd *waiting; /* (mu) answered by the leader, not applied here yet */
	int stopping;	     /* (mu) */
	pthread_t thread;
	int thread_started;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fwd_free(struct fwd *w)
{
	kms_free(w->principal);
	kms_free(w->cmd);
	kms_free(w);
}

static void finish(struct fwd *w, int status, const char *msg, uint64_t index)
{
	w->done(w->arg, status, msg, index);
	fwd_free(w);
}

/* One line for the writes answered at their caller's deadline at once. */
static void log_deadlines(size_t n, const char *when)
{
	if (n > 0)
		KMS_LOG_W("forward: %zu forwarded write(s) answered DEADLINE_EXCEEDED: the "
			  "callers' deadlines passed %s",
			  n, when);
}

static uint64_t applied_index(kms_forwarder *f)
{
	kms_raft_view v;

	kms_raft_view_get(f->node->raft, &v);
	return v.applied_index;
}

/* The live list (caller holds mu). */
static void live_add(kms_forwarder *f, struct fwd *w)
{
	w->lprev = NULL;
	w->lnext = f->live;
	if (f->live != NULL)
		f->live->lprev = w;
	f->live = w;
}

static void live_remove(kms_forwarder *f, struct fwd *w)
{
	if (w->lprev != NULL)
		w->lprev->lnext = w->lnext;
	else
		f->live = w->lnext;
	if (w->lnext != NULL)
		w->lnext->lprev = w->lprev;
	w->lprev = w->lnext = NULL;
}

/*
 * Ends w after its batch came back: the caller's if the deadline did not
 * answer it already (then 1, and w is claimed), else freed (0).
 */
static int take_back(struct fwd *w)
{
	kms_forwarder *f = w->f;
	int claimed;

	pthread_mutex_lock(&f->mu);
	live_remove(f, w);
	claimed = w->claimed;
	w->claimed = 1;
	pthread_mutex_unlock(&f->mu);
	if (claimed)
		fwd_free(w);
	return !claimed;
}

/* --- waiting for this node's own apply (read your writes here) --- */

/*
 * Answered by the leader: answered here too once this node has applied the
 * write. The applied index is read under mu, and kms_forwarder_applied
 * takes mu after the index moved: either it sees this entry, or this look
 * sees its index.
 */
static void wait_applied(struct fwd *w)
{
	kms_forwarder *f = w->f;

	w->apply_by = now_ms() + READ_OWN_WRITE_TIMEOUT_MS;
	if (w->call_deadline < w->apply_by)
		w->apply_by = w->call_deadline;
	pthread_mutex_lock(&f->mu);
	if (!f->stopping && applied_index(f) < w->index) {
		/* The deadline watch keeps time only while it has something. */
		if (f->waiting == NULL && f->live == NULL)
			pthread_cond_signal(&f->cond);
		w->next = f->waiting;
		f->waiting = w;
		pthread_mutex_unlock(&f->mu);
		return;
	}
	pthread_mutex_unlock(&f->mu);
	if (applied_index(f) >= w->index)
		finish(w, KMS_OK, w->msg[0] != '\0' ? w->msg : NULL, w->index);
	else
		finish(w, KMS_ERR_UNAVAILABLE, shutting_down, 0);
}

/* Takes from the waiting list (caller holds mu) the writes applied up to
 * index, or past their time (now; INT64_MIN: never). */
static struct fwd *take_applied(kms_forwarder *f, uint64_t index, int64_t now)
{
	struct fwd *ready = NULL, **pp = &f->waiting;

	while (*pp != NULL) {
		struct fwd *w = *pp;

		if (w->index <= index || now >= w->apply_by) {
			*pp = w->next;
			w->next = ready;
			ready = w;
		} else {
			pp = &w->next;
		}
	}
	return ready;
}

static void finish_taken(struct fwd *ready, uint64_t index, int64_t now)
{
	while (ready != NULL) {
		struct fwd *w = ready;

		ready = w->next;
		if (w->index <= index)
			finish(w, KMS_OK, w->msg[0] != '\0' ? w->msg : NULL, w->index);
		else if (now >= w->call_deadline)
			finish(w, KMS_ERR_DEADLINE,
			       "the leader applied the write, but this node had not when the "
			       "call's deadline passed",
			       w->index);
		else
			finish(w, KMS_ERR_UNAVAILABLE,
			       "the leader applied the write, but this node has not caught up yet",
			       w->index);
	}
}

void kms_forwarder_applied(void *arg, uint64_t index)
{
	kms_forwarder *f = arg;
	struct fwd *ready = NULL;

	pthread_mutex_lock(&f->mu);
	if (f->waiting != NULL)
		ready = take_applied(f, index, INT64_MIN);
	pthread_mutex_unlock(&f->mu);
	finish_taken(ready, index, INT64_MIN);
}

/*
 * The clock of the forwarder: answers the writes whose caller's deadline
 * passed before the leader answered, and those this node has not applied
 * in time (or has, through a snapshot install, which calls no hook). It
 * wakes every WAIT_TICK_MS while it watches anything, and sleeps otherwise.
 */
static void *deadline_watch(void *arg)
{
	kms_forwarder *f = arg;

	pthread_mutex_lock(&f->mu);
	for (;;) {
		struct {
			kms_raft_done_fn done;
			void *arg;
		} expired[EXPIRED_PER_LOOK];
		struct fwd *ready;
		struct timespec until;
		size_t n_expired = 0;
		uint64_t applied;
		int64_t now;

		while (!f->stopping && f->waiting == NULL && f->live == NULL)
			pthread_cond_wait(&f->cond, &f->mu);
		if (f->stopping)
			break;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += WAIT_TICK_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		(void)pthread_cond_timedwait(&f->cond, &f->mu, &until);
		if (f->stopping)
			break;
		applied = applied_index(f);
		now = now_ms();
		ready = take_applied(f, applied, now);
		for (struct fwd *w = f->live; w != NULL && n_expired < EXPIRED_PER_LOOK;
		     w = w->lnext) {
			if (w->claimed || now < w->call_deadline)
				continue;
			/* Its batch frees it when it comes back. */
			w->claimed = 1;
			expired[n_expired].done = w->done;
			expired[n_expired].arg = w->arg;
			n_expired++;
		}
		pthread_mutex_unlock(&f->mu);
		finish_taken(ready, applied, now);
		log_deadlines(n_expired, "before the leader answered");
		for (size_t i = 0; i < n_expired; i++)
			expired[i].done(expired[i].arg, KMS_ERR_DEADLINE,
					"the call's deadline passed before the leader answered the "
					"forwarded write; it may still be applied",
					0);
		pthread_mutex_lock(&f->mu);
	}
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

/* --- batches to the leader --- */

/*
 * Fills b from the queue (caller holds mu): at most KMS_FORWARD_BATCH_MAX
 * writes and BATCH_BYTES_MAX bytes of commands, at least one. Writes the
 * deadline answered already are dropped. Returns how many it took.
 */
static size_t take_batch(kms_forwarder *f, struct batch *b)
{
	size_t bytes = 0;

	b->n = 0;
	while (f->qhead != NULL && b->n < KMS_FORWARD_BATCH_MAX) {
		struct fwd *w = f->qhead;

		if (w->claimed) {
			f->qhead = w->next;
			live_remove(f, w);
			fwd_free(w);
			continue;
		}
		if (b->n > 0 && bytes + w->len > BATCH_BYTES_MAX)
			break;
		f->qhead = w->next;
		bytes += w->len;
		b->items[b->n++] = w;
	}
	if (f->qhead == NULL)
		f->qtail = NULL;
	return b->n;
}

static void send_batch(struct batch *b, uint64_t leader_id);

/*
 * A batch is done with: a counted one carries on with what queued
 * meanwhile (reusing b), or makes room for the next.
 */
static void batch_end(struct batch *b)
{
	kms_forwarder *f = b->f;
	size_t n = 0;

	if (!b->counted) {
		kms_free(b);
		return;
	}
	pthread_mutex_lock(&f->mu);
	if (!f->stopping)
		n = take_batch(f, b);
	if (n == 0)
		f->in_flight--;
	pthread_mutex_unlock(&f->mu);
	if (n > 0)
		send_batch(b, 0);
	else
		kms_free(b);
}

/* Ends every write of b with status and msg (caller's), then b. */
static void batch_fail(struct batch *b, int status, const char *msg)
{
	for (size_t i = 0; i < b->n; i++)
		if (take_back(b->items[i]))
			finish(b->items[i], status, msg, 0);
	batch_end(b);
}

/*
 * A write the node asked said it does not lead goes once more, alone, to
 * the leader that node named or this one knows now, if that is another
 * node: the node asked did not submit it. 1 if it went.
 */
static int resend(struct fwd *w, uint64_t asked, uint64_t named)
{
	kms_forwarder *f = w->f;
	uint64_t next = named;
	struct batch *b;
	kms_raft_view v;

	if (next == 0) {
		kms_raft_view_get(f->node->raft, &v);
		next = v.leader_id;
	}
	if (w->sends != 1 || next == 0 || next == asked)
		return 0;
	b = kms_calloc(1, sizeof(*b));
	if (b == NULL)
		return 0;
	pthread_mutex_lock(&f->mu);
	if (f->stopping) {
		pthread_mutex_unlock(&f->mu);
		kms_free(b);
		return 0;
	}
	w->claimed = 0;
	live_add(f, w);
	pthread_mutex_unlock(&f->mu);
	KMS_LOG_D("forward: node %llu no longer leads; sending the write to node %llu",
		  (unsigned long long)asked, (unsigned long long)next);
	b->f = f;
	b->items[0] = w;
	b->n = 1;
	send_batch(b, next);
	return 1;
}

/* The leader's answer to a batch (or why there is none). */
static void on_batch_reply(void *arg, const kms_rpc_status *st, ProtobufCMessage *msg)
{
	struct batch *b = arg;
	Kms__V1__ForwardBatchResponse *resp = (Kms__V1__ForwardBatchResponse *)msg;
	int64_t now = now_ms();
	char text[KMS_ERRMSG_SIZE];
	size_t expired = 0;

	if (st->code == GRPC_STATUS_CANCELLED)
		snprintf(text, sizeof(text), "%.150s; the forwarded write may still be applied",
			 st->details);
	else if (st->code != GRPC_STATUS_OK)
		snprintf(text, sizeof(text),
			 "forwarding the write to the leader (node %llu) failed (no quorum?): %.150s",
			 (unsigned long long)b->leader, st->details);
	else if (resp->n_results != b->n)
		snprintf(text, sizeof(text), "the leader (node %llu) answered %zu results for %zu "
			 "forwarded writes",
			 (unsigned long long)b->leader, resp->n_results, b->n);
	for (size_t i = 0; i < b->n; i++) {
		struct fwd *w = b->items[i];
		const Kms__V1__ForwardResponse *r;
		int status;

		if (!take_back(w))
			continue;
		/* gRPC's clock may end the call a hair before ours reaches the
		 * deadline it was given: the write's own deadline, if no later. */
		if (st->code == GRPC_STATUS_DEADLINE_EXCEEDED &&
		    (now >= w->call_deadline || w->call_deadline <= b->until)) {
			finish(w, KMS_ERR_DEADLINE,
			       "the call's deadline passed before the leader answered the forwarded "
			       "write; it may still be applied",
			       0);
			expired++;
			continue;
		}
		if (st->code != GRPC_STATUS_OK) {
			finish(w, KMS_ERR_UNAVAILABLE, text, 0);
			continue;
		}
		if (resp->n_results != b->n) {
			finish(w, KMS_ERR_INTERNAL, text, 0);
			continue;
		}
		r = resp->results[i];
		status = r->status < KMS_STATUS_COUNT ? (int)r->status : KMS_ERR_INTERNAL;
		snprintf(w->msg, sizeof(w->msg), "%s", r->message);
		w->index = r->index;
		if (r->not_leader && resend(w, b->leader, r->leader_id))
			continue;
		if (status == KMS_OK)
			wait_applied(w);
		else
			finish(w, status, w->msg[0] != '\0' ? w->msg : NULL, 0);
	}
	if (msg != NULL)
		protobuf_c_message_free_unpacked(msg, NULL);
	log_deadlines(expired, "before the leader answered");
	batch_end(b);
}

/* Sends b to leader_id (0: the leader this node knows). */
static void send_batch(struct batch *b, uint64_t leader_id)
{
	kms_node *node = b->f->node;
	Kms__V1__ForwardBatchRequest req = KMS__V1__FORWARD_BATCH_REQUEST__INIT;
	kms_member leader;
	kms_err err = {0};
	int64_t now = now_ms(), until = 0;
	size_t n = 0, expired = 0;

	if (leader_id == 0) {
		if (kms_node_leader(node, &leader, &err) != KMS_OK) {
			batch_fail(b, err.code, err.msg);
			return;
		}
	} else if (kms_keyring_member(node->kr, leader_id, &leader) != KMS_OK) {
		kms_errf(&err, KMS_ERR_UNAVAILABLE,
			 "the leader (node %llu) is not in the member list yet",
			 (unsigned long long)leader_id);
		batch_fail(b, err.code, err.msg);
		return;
	}
	b->leader = leader.id;
	/* The call lasts as long as its latest write may wait; the watch
	 * answers the others at their own deadline. */
	for (size_t i = 0; i < b->n; i++) {
		struct fwd *w = b->items[i];

		if (now >= w->send_deadline) {
			if (take_back(w)) {
				expired += now >= w->call_deadline;
				finish(w, now >= w->call_deadline ? KMS_ERR_DEADLINE
								 : KMS_ERR_UNAVAILABLE,
				       "the forwarded write did not reach the leader in time", 0);
			}
			continue;
		}
		if (w->send_deadline > until)
			until = w->send_deadline;
		w->sends++;
		b->items[n] = w;
		kms__v1__forward_request__init(&b->reqs[n]);
		b->reqs[n].command.data = w->cmd;
		b->reqs[n].command.len = w->len;
		b->reqs[n].principal = w->principal;
		b->ptrs[n] = &b->reqs[n];
		n++;
	}
	b->n = n;
	b->until = until;
	log_deadlines(expired, "before the write left for the leader");
	if (n == 0) {
		batch_end(b);
		return;
	}
	req.writes = b->ptrs;
	req.n_writes = n;
	kms_peers_call_async(node->peers, leader.grpc_address, leader.id,
			     "/kms.v1.Internal/ForwardBatch", &req.base,
			     &kms__v1__forward_batch_response__descriptor, (long)(until - now),
			     on_batch_reply, b);
}

void kms_forwarder_submit(kms_forwarder *f, const char *principal, long deadline_ms,
			  const uint8_t *cmd, size_t len, kms_raft_done_fn done, void *arg)
{
	struct fwd *w = kms_calloc(1, sizeof(*w));
	struct batch *b = NULL;
	int64_t now = now_ms();
	size_t n = 0;

	if (w == NULL) {
		done(arg, KMS_ERR_NOMEM, "out of memory forwarding a write", 0);
		return;
	}
	w->f = f;
	w->done = done;
	w->arg = arg;
	w->principal = kms_strdup(principal != NULL ? principal : "");
	w->cmd = kms_malloc(len > 0 ? len : 1);
	if (w->principal == NULL || w->cmd == NULL) {
		finish(w, KMS_ERR_NOMEM, "out of memory forwarding a write", 0);
		return;
	}
	memcpy(w->cmd, cmd, len);
	w->len = len;
	w->call_deadline = deadline_ms == LONG_MAX || deadline_ms > INT64_MAX - now
				   ? INT64_MAX
				   : now + deadline_ms;
	w->send_deadline = now + FORWARD_TIMEOUT_MS;
	if (w->call_deadline < w->send_deadline)
		w->send_deadline = w->call_deadline;
	pthread_mutex_lock(&f->mu);
	if (f->stopping) {
		pthread_mutex_unlock(&f->mu);
		finish(w, KMS_ERR_UNAVAILABLE, shutting_down, 0);
		return;
	}
	/* The watch sleeps without a timeout only when it watches nothing. */
	if (f->live == NULL && f->waiting == NULL)
		pthread_cond_signal(&f->cond);
	live_add(f, w);
	if (f->qtail != NULL)
		f->qtail->next = w;
	else
		f->qhead = w;
	f->qtail = w;
	/* Else the write leaves with the next batch that comes back (or, out
	 * of memory, is answered at its deadline). */
	if (f->in_flight < BATCHES_IN_FLIGHT && (b = kms_calloc(1, sizeof(*b))) != NULL) {
		b->f = f;
		b->counted = 1;
		n = take_batch(f, b);
		if (n > 0)
			f->in_flight++;
	}
	pthread_mutex_unlock(&f->mu);
	if (n > 0)
		send_batch(b, 0);
	else
		kms_free(b);
}

/* --- life cycle --- */

int kms_forwarder_new(kms_node *node, kms_forwarder **out, kms_err *err)
{
	kms_forwarder *f = kms_calloc(1, sizeof(*f));

	if (f == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the forwarder");
	f->node = node;
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cond, NULL);
	if (pthread_create(&f->thread, NULL, deadline_watch, f) != 0) {
		pthread_mutex_destroy(&f->mu);
		pthread_cond_destroy(&f->cond);
		kms_free(f);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot start the forwarder's thread");
	}
	f->thread_started = 1;
	*out = f;
	return KMS_OK;
}

void kms_forwarder_stop(kms_forwarder *f)
{
	struct fwd *queued, *waiting;

	if (f == NULL)
		return;
	pthread_mutex_lock(&f->mu);
	f->stopping = 1;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->mu);
	/* Batches in flight come back cancelled; their writes are answered,
	 * and none is taken from the queue any more. */
	kms_peers_stop_calls(f->node->peers);
	if (f->thread_started) {
		pthread_join(f->thread, NULL);
		f->thread_started = 0;
	}
	pthread_mutex_lock(&f->mu);
	queued = f->qhead;
	waiting = f->waiting;
	f->qhead = f->qtail = NULL;
	f->waiting = NULL;
	for (struct fwd *w = queued; w != NULL; w = w->next)
		live_remove(f, w);
	pthread_mutex_unlock(&f->mu);
	while (queued != NULL) {
		struct fwd *w = queued;

		queued = w->next;
		if (w->claimed)
			fwd_free(w);
		else
			finish(w, KMS_ERR_UNAVAILABLE, shutting_down, 0);
	}
	while (waiting != NULL) {
		struct fwd *w = waiting;

		waiting = w->next;
		if (applied_index(f) >= w->index)
			finish(w, KMS_OK, w->msg[0] != '\0' ? w->msg : NULL, w->index);
		else
			finish(w, KMS_ERR_UNAVAILABLE, shutting_down, 0);
	}
}

void kms_forwarder_free(kms_forwarder *f)
{
	if (f == NULL)
		return;
	kms_forwarder_stop(f);
	pthread_mutex_destroy(&f->mu);
	pthread_cond_destroy(&f->cond);
	kms_free(f);
}
