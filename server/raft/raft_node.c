/* raft_node.c - canonical/raft over libuv on a dedicated thread, with the key ring as its state machine. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "raft/raft_contact.h"
#include "raft/raft_node.h"

/* How often the loop checks whether this node became leader. */
#define LEADER_POLL_MS 50

struct submission {
	struct raft_apply req; /* must live until its callback (raft.h) */
	struct kms_raft *raft;
	uint8_t *cmd;
	size_t len;
	kms_raft_done_fn done;
	void *arg;
	struct submission *next;
};

struct kms_raft {
	kms_keyring *kr;
	kms_raft_opts opts;
	struct raft_change change; /* the one configuration change in flight */
	int change_pending;
	struct raft_transfer transfer; /* a removed leader's handover */
	int transfer_pending;
	int transfer_failed; /* its failure is logged once */
	pthread_mutex_t view_mu;
	pthread_cond_t view_cond;
	kms_raft_view view; /* under view_mu */
	uv_loop_t loop;
	uv_async_t wake;
	uv_timer_t poll;
	struct raft_uv_transport transport;
	struct raft_io io;
	struct raft_fsm fsm;
	struct raft raft;
	struct raft_barrier barrier;
	int barrier_pending;
	raft_term barrier_term;
	struct raft_barrier nudge; /* see nudge_followers */
	int nudge_pending;
	int nudge_again;
	atomic_int ready;
	/* When this node last heard from a leader (on_recv, on_poll). */
	kms_contact contact;
	int stale_logged; /* (Raft thread) what the log last said */
	int (*uv_start)(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
			raft_io_recv_cb recv);
	raft_io_recv_cb raft_recv; /* raft's own, called by on_recv */
	pthread_t thread;
	int thread_started;

	pthread_mutex_t mu;
	struct submission *head, *tail; /* under mu */
	int stopping;                   /* under mu */
	int stopped;                    /* under mu: the loop has ended */

	/* Start-up handshake with kms_raft_start. */
	pthread_cond_t cond;
	int start_done;
	int start_rc;
	kms_err start_err;

	/* Copies of the configuration the thread needs. */
	raft_id id;
	char *address;
	char *dir;
	unsigned snapshot_threshold, snapshot_trailing;
	unsigned election_timeout_ms, heartbeat_timeout_ms;
	unsigned max_staleness_s;
};

/*
 * Log entry framing. canonical/raft 0.15 pads entry payloads to 8 bytes when
 * it writes a segment but does not skip the padding when it loads one, so a
 * payload whose length is not a multiple of 8 makes every later entry of the
 * segment look corrupt after a restart, and acknowledged writes vanish (seen
 * here with kill -9). Every command is therefore framed as
 *   magic "KMSC" | uint32 BE payload length | payload | zero padding to 8
 * and apply checks the frame before the key ring sees the payload.
 */
#define FRAME_MAGIC "KMSC"
#define FRAME_HEADER 8

size_t kms_raft_frame_size(size_t payload_len)
{
	return (FRAME_HEADER + payload_len + 7) & ~(size_t)7;
}

void kms_raft_frame(const uint8_t *payload, size_t len, uint8_t *out)
{
	size_t total = kms_raft_frame_size(len);

	memcpy(out, FRAME_MAGIC, 4);
	out[4] = (uint8_t)(len >> 24);
	out[5] = (uint8_t)(len >> 16);
	out[6] = (uint8_t)(len >> 8);
	out[7] = (uint8_t)len;
	memcpy(out + FRAME_HEADER, payload, len);
	memset(out + FRAME_HEADER + len, 0, total - FRAME_HEADER - len);
}

int kms_raft_unframe(const uint8_t *buf, size_t len, const uint8_t **payload,
		     size_t *payload_len, kms_err *err)
{
	size_t n;

	if (len < FRAME_HEADER || memcmp(buf, FRAME_MAGIC, 4) != 0)
		return kms_errf(err, KMS_ERR_INVALID, "log entry is not a kmsd command frame");
	n = (size_t)buf[4] << 24 | (size_t)buf[5] << 16 | (size_t)buf[6] << 8 | buf[7];
	if (n > len - FRAME_HEADER || kms_raft_frame_size(n) != len)
		return kms_errf(err, KMS_ERR_INVALID, "log entry frame length %zu does not fit %zu bytes",
				n, len);
	/* One encoding per command: the padding must be zero, as written. */
	for (size_t i = FRAME_HEADER + n; i < len; i++)
		if (buf[i] != 0)
			return kms_errf(err, KMS_ERR_INVALID, "log entry frame padding is not zero");
	*payload = buf + FRAME_HEADER;
	*payload_len = n;
	return KMS_OK;
}

/* raft_errmsg() is often empty and raft_strerror() often "unknown error":
 * prefer whichever says something. */
static const char *raft_message(struct raft *raft, int rv)
{
	const char *m = raft_errmsg(raft);

	return m != NULL && m[0] != '\0' ? m : raft_strerror(rv);
}

/* --- the view other threads read --- */

static void view_applied(kms_raft *r, uint64_t index)
{
	pthread_mutex_lock(&r->view_mu);
	if (index > r->view.applied_index)
		r->view.applied_index = index;
	/* Applied implies committed; the timer refresh may not have seen it yet,
	 * and a leader-commit read must cover every acknowledged write. */
	if (index > r->view.commit_index)
		r->view.commit_index = index;
	pthread_cond_broadcast(&r->view_cond);
	pthread_mutex_unlock(&r->view_mu);
}

/* Runs on the Raft thread: copies what other threads may ask about. */
static void view_refresh(kms_raft *r)
{
	kms_raft_view v;
	raft_id leader = 0;
	const char *addr = NULL;

	memset(&v, 0, sizeof(v));
	v.state = raft_state(&r->raft);
	raft_leader(&r->raft, &leader, &addr);
	v.leader_id = leader;
	v.term = r->raft.current_term;
	v.commit_index = r->raft.commit_index;
	v.applied_index = raft_last_applied(&r->raft);
	for (unsigned i = 0; i < r->raft.configuration.n && v.n_servers < KMS_RAFT_VIEW_MAX; i++) {
		v.servers[v.n_servers].id = r->raft.configuration.servers[i].id;
		v.servers[v.n_servers].role = r->raft.configuration.servers[i].role;
		v.n_servers++;
	}
	pthread_mutex_lock(&r->view_mu);
	if (r->view.applied_index > v.applied_index)
		v.applied_index = r->view.applied_index;
	if (v.applied_index > v.commit_index)
		v.commit_index = v.applied_index;
	r->view = v;
	pthread_cond_broadcast(&r->view_cond);
	pthread_mutex_unlock(&r->view_mu);
}

void kms_raft_view_get(kms_raft *r, kms_raft_view *out)
{
	pthread_mutex_lock(&r->view_mu);
	*out = r->view;
	pthread_mutex_unlock(&r->view_mu);
}

size_t kms_raft_configured(kms_raft *r)
{
	size_t n;

	pthread_mutex_lock(&r->view_mu);
	n = r->view.n_servers;
	pthread_mutex_unlock(&r->view_mu);
	return n;
}

int kms_raft_has_server(kms_raft *r, uint64_t id)
{
	int found = 0;

	pthread_mutex_lock(&r->view_mu);
	for (size_t i = 0; i < r->view.n_servers && !found; i++)
		found = r->view.servers[i].id == id;
	pthread_mutex_unlock(&r->view_mu);
	return found;
}

int kms_raft_wait_applied(kms_raft *r, uint64_t index, int timeout_ms)
{
	struct timespec until;
	int rc = KMS_OK;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&r->view_mu);
	while (r->view.applied_index < index) {
		if (pthread_cond_timedwait(&r->view_cond, &r->view_mu, &until) != 0) {
			rc = KMS_ERR_UNAVAILABLE;
			break;
		}
	}
	pthread_mutex_unlock(&r->view_mu);
	return rc;
}

const char *kms_raft_state_name(int state)
{
	switch (state) {
	case RAFT_LEADER:
		return "leader";
	case RAFT_FOLLOWER:
		return "follower";
	case RAFT_CANDIDATE:
		return "candidate";
	default:
		return "unavailable";
	}
}

const char *kms_raft_role_name(int role)
{
	switch (role) {
	case RAFT_VOTER:
		return "voter";
	case RAFT_STANDBY:
		return "standby";
	case RAFT_SPARE:
		return "spare";
	default:
		return "unknown";
	}
}

/* --- the state machine: apply, snapshot, restore on the Raft thread --- */

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
	kms_raft *r = fsm->data;
	kms_err err = {0};
	const uint8_t *payload;
	size_t payload_len;
	int rc = kms_raft_unframe(buf->base, buf->len, &payload, &payload_len, &err);

	if (rc == KMS_OK)
		rc = kms_keyring_apply(r->kr, payload, payload_len, &err);

	if (rc != KMS_OK)
		KMS_LOG_D("raft: command refused: %s", err.msg);
	/* raft counts this entry as applied once we return. */
	view_applied(r, raft_last_applied(&r->raft) + 1);
	if (r->opts.applied != NULL)
		r->opts.applied(r->opts.applied_arg, raft_last_applied(&r->raft) + 1);
	/* The verdict travels as an integer in the result pointer: nothing is
	 * allocated, so followers (whose results nobody collects) leak nothing. */
	*result = (void *)(uintptr_t)rc;
	return 0;
}

static void *raft_malloc_fn(size_t n)
{
	return raft_malloc(n);
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
	kms_raft *r = fsm->data;
	kms_err err = {0};
	kms_buf snap = {0};

	*bufs = raft_malloc(sizeof(**bufs));
	if (*bufs == NULL)
		return RAFT_NOMEM;
	if (kms_keyring_snapshot(r->kr, raft_malloc_fn, &snap, &err) != KMS_OK) {
		KMS_LOG_E("raft: snapshot failed: %s", err.msg);
		raft_free(*bufs);
		*bufs = NULL;
		return RAFT_NOMEM;
	}
	(*bufs)[0].base = snap.data;
	(*bufs)[0].len = snap.len;
	*n_bufs = 1;
	return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
	kms_raft *r = fsm->data;
	kms_err err = {0};

	if (kms_keyring_restore(r->kr, buf->base, buf->len, &err) != KMS_OK) {
		KMS_LOG_E("raft: snapshot restore failed: %s", err.msg);
		return RAFT_CORRUPT;
	}
	raft_free(buf->base); /* restore owns the buffer on success (raft.h) */
	/*
	 * A snapshot installed on a running node (sent by the leader) frees
	 * the whole key ring it replaces, and glibc keeps those pages between
	 * live ones; hand them back (docs/PERFORMANCE.md, "Many keys"). It
	 * takes milliseconds.
	 */
	malloc_trim(0);
	KMS_LOG_I("raft: installed a snapshot of the key ring (%zu keys)", kms_keyring_count(r->kr));
	return 0;
}

/* --- submissions --- */

static void submission_finish(struct submission *s, int status, const char *msg,
			      uint64_t index)
{
	s->done(s->arg, status, msg, index);
	kms_free(s);
}

static void nudge_followers(kms_raft *r);

static void on_nudged(struct raft_barrier *req, int status)
{
	kms_raft *r = req->data;

	r->nudge_pending = 0;
	if (r->nudge_again && status == 0)
		nudge_followers(r);
}

/*
 * canonical/raft tells followers the new commit index only with its next
 * AppendEntries: the next write or a heartbeat, up to two heartbeat ticks
 * later. After commands apply on the leader it appends one barrier (at most
 * one in flight; applies meanwhile ask for another), whose AppendEntries
 * carries the commit index at once: followers apply a write within a round
 * trip, and a write forwarded by a follower is readable there without
 * waiting for a heartbeat.
 */
static void nudge_followers(kms_raft *r)
{
	if (r->nudge_pending) {
		r->nudge_again = 1;
		return;
	}
	r->nudge_again = 0;
	if (raft_state(&r->raft) != RAFT_LEADER || r->raft.configuration.n < 2)
		return;
	r->nudge.data = r;
	if (raft_barrier(&r->raft, &r->nudge, on_nudged) == 0)
		r->nudge_pending = 1;
}

static void on_applied(struct raft_apply *req, int status, void *result)
{
	struct submission *s = req->data;
	kms_raft *r = s->raft;

	if (status != 0) {
		char msg[160];

		snprintf(msg, sizeof(msg), "the write was not committed (%s): the cluster may "
			 "have no quorum", raft_strerror(status));
		submission_finish(s, KMS_ERR_UNAVAILABLE, msg, 0);
		return;
	}
	submission_finish(s, (int)(uintptr_t)result, NULL, req->index);
	nudge_followers(r);
}

static void propose(kms_raft *r, struct submission *s)
{
	struct raft_buffer buf;
	int rv;

	if (raft_state(&r->raft) != RAFT_LEADER) {
		submission_finish(s, KMS_ERR_UNAVAILABLE,
				  "this node is not the Raft leader; retry shortly", 0);
		return;
	}
	buf.len = kms_raft_frame_size(s->len);
	buf.base = raft_malloc(buf.len);
	if (buf.base == NULL) {
		submission_finish(s, KMS_ERR_NOMEM, "out of memory proposing a write", 0);
		return;
	}
	kms_raft_frame(s->cmd, s->len, buf.base);
	s->req.data = s;
	s->raft = r;
	rv = raft_apply(&r->raft, &s->req, &buf, 1, on_applied);
	if (rv != 0) {
		char msg[200];

		raft_free(buf.base); /* still ours when raft_apply fails */
		snprintf(msg, sizeof(msg), "the write could not be proposed: %s",
			 raft_errmsg(&r->raft));
		submission_finish(s, KMS_ERR_UNAVAILABLE, msg, 0);
	}
}

static struct submission *take_queue(kms_raft *r)
{
	struct submission *q;

	pthread_mutex_lock(&r->mu);
	q = r->head;
	r->head = r->tail = NULL;
	pthread_mutex_unlock(&r->mu);
	return q;
}

static void on_close(struct raft *raft)
{
	kms_raft *r = raft->data;

	raft_uv_close(&r->io);
	if (r->opts.transport_close != NULL)
		r->opts.transport_close(r->opts.transport_arg, &r->transport);
	else
		raft_uv_tcp_close(&r->transport);
	uv_close((uv_handle_t *)&r->wake, NULL);
	uv_close((uv_handle_t *)&r->poll, NULL);
}

static void on_wake(uv_async_t *h)
{
	kms_raft *r = h->data;
	struct submission *s;
	int stopping;

	/* Wake-ups coalesce: drain everything queued so far. */
	s = take_queue(r);
	while (s != NULL) {
		struct submission *next = s->next;

		propose(r, s);
		s = next;
	}
	pthread_mutex_lock(&r->mu);
	stopping = r->stopping;
	pthread_mutex_unlock(&r->mu);
	if (stopping && !uv_is_closing((uv_handle_t *)&r->wake)) {
		uv_timer_stop(&r->poll);
		raft_close(&r->raft, on_close);
	}
}

static void on_barrier(struct raft_barrier *req, int status)
{
	kms_raft *r = req->data;

	r->barrier_pending = 0;
	if (status == 0) {
		atomic_store(&r->ready, 1);
		KMS_LOG_I("raft: leader of term %llu, %llu entries applied; serving writes",
			  (unsigned long long)r->barrier_term,
			  (unsigned long long)raft_last_applied(&r->raft));
	}
}

/*
 * Raft 0.15 has no leadership callback, so the loop polls: a new leader
 * appends a barrier, and once it applies, every entry of earlier terms is in
 * the key ring (Raft thesis 6.4) and the node is ready.
 */
static void on_change(struct raft_change *req, int status)
{
	kms_raft *r = req->data;

	r->change_pending = 0;
	if (status != 0)
		KMS_LOG_W("raft: configuration change failed: %s", raft_strerror(status));
}

static void on_transfer(struct raft_transfer *req)
{
	kms_raft *r = req->data;

	r->transfer_pending = 0;
	if (raft_state(&r->raft) == RAFT_LEADER)
		KMS_LOG_W("raft: no follower took over leadership in time; trying again");
}

/*
 * A leader that applied its own removal cannot take itself out of Raft's
 * configuration (reconcile leaves the last say to a listed node, and the
 * removal may have been approved while another node led): it hands
 * leadership to a voting follower, whose reconcile then removes it.
 */
static void hand_over(kms_raft *r)
{
	int rv;

	if (r->transfer_pending)
		return;
	r->transfer.data = r;
	rv = raft_transfer(&r->raft, &r->transfer, 0, on_transfer);
	if (rv == 0) {
		r->transfer_pending = 1;
		KMS_LOG_W("raft: node %llu was removed from the member list while it led; handing "
			  "leadership over so that the next leader takes it out of the Raft "
			  "configuration",
			  (unsigned long long)r->id);
	} else if (!r->transfer_failed) {
		r->transfer_failed = 1;
		KMS_LOG_W("raft: node %llu was removed from the member list while it led, and "
			  "cannot hand leadership over (tried again every poll): %s",
			  (unsigned long long)r->id, raft_message(&r->raft, rv));
	}
}

static int config_index(const struct raft_configuration *c, raft_id id)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->servers[i].id == id)
			return (int)i;
	return -1;
}

/*
 * The leader moves Raft's configuration one step toward the member list of
 * the key ring (Raft thesis 4.1: one server change at a time). The list is
 * replicated state, so whichever node leads next carries on from it.
 */
static void reconcile(kms_raft *r)
{
	kms_member m[KMS_MEMBERS_MAX];
	const struct raft_configuration *c = &r->raft.configuration;
	size_t n = kms_keyring_members(r->kr, m, KMS_MEMBERS_MAX);
	int self_listed = 0, rv = 0;
	const char *what = NULL;
	raft_id who = 0;

	for (size_t i = 0; i < n; i++)
		self_listed |= m[i].id == r->id;
	if (r->change_pending)
		return;
	/* Until this node's own record is in, the list is not the truth yet;
	 * a list of others without it is its removal. */
	if (!self_listed) {
		if (n > 0)
			hand_over(r);
		return;
	}
	r->change.data = r;
	for (size_t i = 0; i < n && what == NULL; i++) {
		int at = config_index(c, m[i].id);

		who = m[i].id;
		if (at < 0) {
			what = "add";
			rv = raft_add(&r->raft, &r->change, m[i].id, m[i].raft_address, on_change);
		} else if (c->servers[at].role != RAFT_VOTER) {
			what = "promote";
			rv = raft_assign(&r->raft, &r->change, m[i].id, RAFT_VOTER, on_change);
		}
	}
	for (unsigned i = 0; i < c->n && what == NULL; i++) {
		int listed = 0;

		for (size_t j = 0; j < n; j++)
			listed |= m[j].id == c->servers[i].id;
		if (!listed && c->servers[i].id != r->id) {
			who = c->servers[i].id;
			what = "remove";
			rv = raft_remove(&r->raft, &r->change, who, on_change);
		}
	}
	if (what == NULL)
		return;
	if (rv == 0) {
		r->change_pending = 1;
		KMS_LOG_I("raft: configuration change: %s node %llu", what, (unsigned long long)who);
	} else if (rv != RAFT_CANTCHANGE) {
		KMS_LOG_W("raft: cannot %s node %llu: %s", what, (unsigned long long)who,
			  raft_message(&r->raft, rv));
	}
}

/* --- contact with the leader: the staleness bound (raft_contact.h) --- */

/* The voting configuration; returns how many voters, ids in out. */
static size_t voters(kms_raft *r, uint64_t out[KMS_CONTACT_MAX_SERVERS])
{
	const struct raft_configuration *c = &r->raft.configuration;
	size_t n = 0;

	for (unsigned i = 0; i < c->n && n < KMS_CONTACT_MAX_SERVERS; i++)
		if (c->servers[i].role == RAFT_VOTER)
			out[n++] = c->servers[i].id;
	return n;
}

static void leader_majority(kms_raft *r, uint64_t now)
{
	uint64_t v[KMS_CONTACT_MAX_SERVERS];
	size_t n = voters(r, v);

	kms_contact_majority(&r->contact, r->id, v, n, now);
}

/*
 * What a message raft has just handled says about contact (raft_contact.h):
 * the state raft is in after handling it tells whether its sender is this
 * node's leader of the current term, or, leading, a voter answering in it.
 */
static void note_contact(kms_raft *r, unsigned short type, raft_id from, raft_term term,
			 int was_leader)
{
	int state = raft_state(&r->raft);
	uint64_t now = kms_contact_now_ms();
	raft_id leader = 0;
	const char *addr = NULL;

	if (state == RAFT_LEADER) {
		/* Elected: a majority voted for this node just now. */
		if (!was_leader)
			kms_contact_heard(&r->contact, now);
		if (type == RAFT_IO_APPEND_ENTRIES_RESULT && term == r->raft.current_term) {
			kms_contact_ack(&r->contact, term, from, now);
			leader_majority(r, now);
		}
		return;
	}
	if (state != RAFT_FOLLOWER ||
	    (type != RAFT_IO_APPEND_ENTRIES && type != RAFT_IO_INSTALL_SNAPSHOT) ||
	    term != r->raft.current_term)
		return;
	raft_leader(&r->raft, &leader, &addr);
	if (leader == from)
		kms_contact_heard(&r->contact, now);
}

/*
 * Every message raft receives comes through here: raft handles it, then
 * note_contact reads what it meant. The fields are read first because raft
 * takes what the message owns.
 */
static void on_recv(struct raft_io *io, struct raft_message *msg)
{
	kms_raft *r = (kms_raft *)(void *)((char *)io - offsetof(kms_raft, io));
	unsigned short type = msg->type;
	raft_id from = msg->server_id;
	raft_term term = 0;
	int was_leader = raft_state(&r->raft) == RAFT_LEADER;

	if (type == RAFT_IO_APPEND_ENTRIES)
		term = msg->append_entries.term;
	else if (type == RAFT_IO_INSTALL_SNAPSHOT)
		term = msg->install_snapshot.term;
	else if (type == RAFT_IO_APPEND_ENTRIES_RESULT)
		term = msg->append_entries_result.term;
	r->raft_recv(io, msg);
	note_contact(r, type, from, term, was_leader);
}

/* Put in place of raft_uv's start (setup), so that on_recv sees what raft
 * receives: canonical/raft 0.15 tells nothing of its contacts otherwise. */
static int io_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
		    raft_io_recv_cb recv)
{
	kms_raft *r = (kms_raft *)(void *)((char *)io - offsetof(kms_raft, io));

	r->raft_recv = recv;
	return r->uv_start(io, msecs, tick, on_recv);
}

/* On the poll timer: who votes may have changed, and the log says when
 * this node starts or stops refusing crypto calls. */
static void contact_poll(kms_raft *r)
{
	uint64_t v[KMS_CONTACT_MAX_SERVERS], now = kms_contact_now_ms();
	size_t n = voters(r, v);
	kms_err err = {0};
	int stale;

	kms_contact_set_sole_voter(&r->contact, n == 1 && v[0] == r->id);
	if (raft_state(&r->raft) == RAFT_LEADER)
		leader_majority(r, now);
	stale = kms_contact_check(&r->contact, (unsigned)r->id, r->max_staleness_s, now, &err) !=
		KMS_OK;
	if (stale == r->stale_logged)
		return;
	r->stale_logged = stale;
	if (stale)
		KMS_LOG_W("raft: %s", err.msg);
	else
		KMS_LOG_I("raft: in touch with a Raft leader (max_staleness %u s): serving crypto "
			  "calls", r->max_staleness_s);
}

int kms_raft_check_fresh(kms_raft *r, kms_err *err)
{
	return kms_contact_check(&r->contact, (unsigned)r->id, r->max_staleness_s,
				 kms_contact_now_ms(), err);
}

static void on_poll(uv_timer_t *t)
{
	kms_raft *r = t->data;

	view_refresh(r);
	contact_poll(r);
	if (raft_state(&r->raft) != RAFT_LEADER) {
		atomic_store(&r->ready, 0);
		return;
	}
	if (atomic_load(&r->ready)) {
		reconcile(r);
		return;
	}
	if (r->barrier_pending)
		return;
	r->barrier.data = r;
	r->barrier_term = r->raft.current_term;
	if (raft_barrier(&r->raft, &r->barrier, on_barrier) == 0)
		r->barrier_pending = 1;
}

/* --- the Raft thread --- */


static int setup(kms_raft *r, kms_err *err)
{
	struct raft_configuration conf;
	int rv;

	if (mkdir(r->dir, 0700) != 0 && errno != EEXIST)
		return kms_errf(err, KMS_ERR_IO, "cannot create Raft directory %s: %m", r->dir);
	rv = uv_loop_init(&r->loop);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "uv_loop_init: %s", uv_strerror(rv));
	rv = uv_async_init(&r->loop, &r->wake, on_wake);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "uv_async_init: %s", uv_strerror(rv));
	r->wake.data = r;
	rv = uv_timer_init(&r->loop, &r->poll);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "uv_timer_init: %s", uv_strerror(rv));
	r->poll.data = r;
	if (r->opts.transport_init != NULL) {
		KMS_TRY(r->opts.transport_init(r->opts.transport_arg, &r->transport, &r->loop, err));
	} else {
		rv = raft_uv_tcp_init(&r->transport, &r->loop);
		if (rv != 0)
			return kms_errf(err, KMS_ERR_INTERNAL, "raft_uv_tcp_init: %s",
					raft_strerror(rv));
	}
	rv = raft_uv_init(&r->io, &r->loop, r->dir, &r->transport);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_IO, "raft_uv_init(%s): %s", r->dir,
				r->io.errmsg);
	r->uv_start = r->io.start;
	r->io.start = io_start;
	r->fsm.version = 1;
	r->fsm.data = r;
	r->fsm.apply = fsm_apply;
	r->fsm.snapshot = fsm_snapshot;
	r->fsm.restore = fsm_restore;
	rv = raft_init(&r->raft, &r->io, &r->fsm, r->id, r->address);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "raft_init: %s", raft_message(&r->raft, rv));
	r->raft.data = r;
	raft_set_snapshot_threshold(&r->raft, r->snapshot_threshold);
	raft_set_snapshot_trailing(&r->raft, r->snapshot_trailing);
	raft_set_election_timeout(&r->raft, r->election_timeout_ms);
	raft_set_heartbeat_timeout(&r->raft, r->heartbeat_timeout_ms);
	/* Pre-vote (Raft thesis, section 9.6): a node that lost touch with
	 * the leader first asks whether it could win, and raises its term only
	 * if a majority would vote for it. Without it, a node cut off from the
	 * others (a restart into a flooded listener, a one-way partition)
	 * raises its term at every election timeout, and on reconnecting forces
	 * a healthy leader to step down and the cluster to elect again. */
	raft_set_pre_vote(&r->raft, true);

	raft_configuration_init(&conf);
	rv = r->opts.bootstrap ? raft_configuration_add(&conf, r->id, r->address, RAFT_VOTER)
			       : RAFT_CANTBOOTSTRAP;
	if (rv == 0) {
		rv = raft_bootstrap(&r->raft, &conf);
		/* An existing directory already holds a configuration. */
		if (rv == RAFT_CANTBOOTSTRAP)
			rv = 0;
		else if (rv == 0)
			KMS_LOG_I("raft: bootstrapped a new one-node cluster in %s", r->dir);
	} else if (rv == RAFT_CANTBOOTSTRAP) {
		rv = 0; /* joining: the leader sends the configuration */
	}
	raft_configuration_close(&conf);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_IO, "raft_bootstrap: %s", raft_message(&r->raft, rv));
	rv = raft_start(&r->raft);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_IO, "raft_start on %s: %s", r->address,
				raft_message(&r->raft, rv));
	/* raft_start loaded the configuration: peers are authorized against it
	 * at once, not after the first timer tick. */
	view_refresh(r);
	rv = uv_timer_start(&r->poll, on_poll, 0, LEADER_POLL_MS);
	if (rv != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "uv_timer_start: %s", uv_strerror(rv));
	return KMS_OK;
}

static void fail_pending(kms_raft *r)
{
	struct submission *s = take_queue(r);

	while (s != NULL) {
		struct submission *next = s->next;

		submission_finish(s, KMS_ERR_UNAVAILABLE, "kmsd is shutting down", 0);
		s = next;
	}
}

static void *raft_thread(void *arg)
{
	kms_raft *r = arg;
	kms_err err = {0};
	int rc = setup(r, &err);

	pthread_mutex_lock(&r->mu);
	r->start_rc = rc;
	r->start_err = err;
	r->start_done = 1;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->mu);
	if (rc != KMS_OK)
		return NULL; /* kms_raft_start reports it; the partial loop is abandoned */
	uv_run(&r->loop, UV_RUN_DEFAULT);
	pthread_mutex_lock(&r->mu);
	r->stopped = 1;
	pthread_mutex_unlock(&r->mu);
	fail_pending(r);
	if (uv_loop_close(&r->loop) != 0)
		KMS_LOG_W("raft: the libuv loop still had handles at shutdown");
	return NULL;
}

int kms_raft_start(const kms_config *cfg, kms_keyring *kr, const kms_raft_opts *opts,
		   kms_raft **out, kms_err *err)
{
	kms_raft *r = kms_calloc(1, sizeof(*r));
	int rc;

	if (r == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting Raft");
	r->kr = kr;
	if (opts != NULL)
		r->opts = *opts;
	pthread_mutex_init(&r->view_mu, NULL);
	pthread_cond_init(&r->view_cond, NULL);
	r->id = cfg->node_id;
	r->address = kms_strdup(cfg->raft_listen);
	r->dir = kms_strdup(cfg->data_dir);
	r->snapshot_threshold = cfg->snapshot_threshold;
	r->snapshot_trailing = cfg->snapshot_trailing;
	r->election_timeout_ms = cfg->election_timeout_ms;
	r->heartbeat_timeout_ms = cfg->heartbeat_timeout_ms;
	r->max_staleness_s = cfg->max_staleness_s;
	kms_contact_init(&r->contact);
	/* Silent until the first contact: every start begins without one. */
	r->stale_logged = 1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cond, NULL);
	if (r->address == NULL || r->dir == NULL) {
		kms_raft_free(r);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting Raft");
	}
	*out = r;
	if (pthread_create(&r->thread, NULL, raft_thread, r) != 0) {
		*out = NULL;
		kms_raft_free(r);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot start the Raft thread");
	}
	r->thread_started = 1;
	pthread_mutex_lock(&r->mu);
	while (!r->start_done)
		pthread_cond_wait(&r->cond, &r->mu);
	rc = r->start_rc;
	pthread_mutex_unlock(&r->mu);
	if (rc != KMS_OK) {
		*out = NULL;
		if (err != NULL)
			*err = r->start_err;
		pthread_join(r->thread, NULL);
		r->thread_started = 0;
		/* The thread abandoned a half-built loop; it cannot be torn down
		 * cleanly, and the process is about to exit on this error. */
		kms_free(r->address);
		kms_free(r->dir);
		pthread_mutex_destroy(&r->view_mu);
		pthread_cond_destroy(&r->view_cond);
		kms_free(r);
		return rc;
	}
	return KMS_OK;
}

void kms_raft_submit(kms_raft *r, const uint8_t *cmd, size_t len, kms_raft_done_fn done,
		     void *arg)
{
	struct submission *s = kms_calloc(1, sizeof(*s) + len);
	int refused;

	if (s == NULL) {
		done(arg, KMS_ERR_NOMEM, "out of memory queueing a write", 0);
		return;
	}
	s->cmd = (uint8_t *)(s + 1);
	memcpy(s->cmd, cmd, len);
	s->len = len;
	s->done = done;
	s->arg = arg;
	pthread_mutex_lock(&r->mu);
	refused = r->stopping || r->stopped;
	if (!refused) {
		if (r->tail != NULL)
			r->tail->next = s;
		else
			r->head = s;
		r->tail = s;
	}
	pthread_mutex_unlock(&r->mu);
	if (refused) {
		submission_finish(s, KMS_ERR_UNAVAILABLE, "kmsd is shutting down", 0);
		return;
	}
	uv_async_send(&r->wake);
}

int kms_raft_ready(kms_raft *r)
{
	return atomic_load(&r->ready);
}

void kms_raft_stop(kms_raft *r)
{
	if (r == NULL || !r->thread_started)
		return;
	pthread_mutex_lock(&r->mu);
	r->stopping = 1;
	pthread_mutex_unlock(&r->mu);
	uv_async_send(&r->wake);
	pthread_join(r->thread, NULL);
	r->thread_started = 0;
	atomic_store(&r->ready, 0);
}

void kms_raft_free(kms_raft *r)
{
	if (r == NULL)
		return;
	kms_raft_stop(r);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->view_mu);
	pthread_cond_destroy(&r->view_cond);
	kms_free(r->address);
	kms_free(r->dir);
	kms_free(r);
}
