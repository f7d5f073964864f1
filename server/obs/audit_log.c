/* audit_log.c - the audit file of a node: group commit by the thread that finds no writer at work (one write(2) per group, answers after it), checkpoints, failing closed. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "obs/audit_log.h"

/* While writes fail, the writer tries again this often. */
#define RETRY_MS 1000
/* "audit log cannot be written: " and an error message. */
#define WHY_MAX (KMS_ERRMSG_SIZE + 64)

struct kms_audit_log {
	kms_audit_opts o;
	char *path;
	int fd;
	pthread_t thread;
	int started;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	kms_audit_entry *head, *tail; /* (mu) queued, oldest first */
	int stop;		      /* (mu) */
	/* (mu) a thread is the writer: it alone touches the chain and the
	 * file (the fields below), and it drains the queue before it stops */
	int writing;
	/* (mu) the background writer sleeps: BG_FOR_WRITER until the writer
	 * lets go, BG_IDLE with no time limit (nothing unsigned then) */
	enum { BG_AWAKE, BG_FOR_WRITER, BG_IDLE } bg_sleep;
	/* (mu) the reason writes fail, "" while they succeed */
	char failed_why[WHY_MAX];
	atomic_int failed;
	/* The writer's own (whoever holds writing; open's before the
	 * background writer starts). */
	uint64_t seq; /* of the next record */
	uint8_t prev[KMS_AUDIT_HASH_LEN];
	off_t good_size; /* the file up to its last whole record */
	unsigned since_checkpoint;
	int64_t
	    first_unsigned_ms; /* when the oldest unsigned record was written */
	int64_t failed_since_ms;
	int64_t sign_failed_ms; /* the last checkpoint that could not be signed;
				   0: none */
	unsigned long refused;	/* records not written since the failure */
	kms_audit_text buf;
};

/* For a sync write: done wakes the waiting thread. */
struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int finished, rc;
	char why[WHY_MAX];
};

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* All len bytes at the end of the file; -1 with errno (0: a short write). */
static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes log->buf as it is (whole lines). On failure the file is cut back to
 * its last whole record, so the next line starts on a line of its own. */
static int flush_buf(kms_audit_log *log, kms_err *err)
{
	if (log->buf.len == 0)
		return KMS_OK;
	if (write_all(log->fd, log->buf.data, log->buf.len) != 0) {
		int e = errno;

		if (ftruncate(log->fd, log->good_size) != 0)
			KMS_LOG_E("audit: cannot cut %s back to its last whole "
				  "record: %s",
				  log->path, strerror(errno));
		log->buf.len = 0;
		return kms_errf(err, KMS_ERR_IO, "%s: %s", log->path,
				strerror(e));
	}
	log->good_size += (off_t)log->buf.len;
	log->buf.len = 0;
	return KMS_OK;
}

/* Appends one record line of body to buf, advancing the chain. */
static int add_line(kms_audit_log *log, const char *body, size_t len,
		    kms_err *err)
{
	uint8_t hash[KMS_AUDIT_HASH_LEN];

	KMS_TRY(kms_audit_line(&log->buf, log->seq, log->prev, body, len, hash,
			       err));
	memcpy(log->prev, hash, sizeof(hash));
	log->seq++;
	return KMS_OK;
}

/* Appends a start/resume/recovered record. */
static int add_event(kms_audit_log *log, const char *type, const char *reason,
		     kms_err *err)
{
	kms_audit_text body = {0};
	int rc;

	if (kms_audit_event_body(&body, type, wall_ms(), log->o.node, reason) !=
	    KMS_OK)
		return kms_errf(err, KMS_ERR_NOMEM, "audit: out of memory");
	rc = add_line(log, body.data, body.len, err);
	kms_audit_text_free(&body);
	return rc;
}

static void note_written(kms_audit_log *log, unsigned n)
{
	if (n > 0 && log->since_checkpoint == 0)
		log->first_unsigned_ms = mono_ms();
	log->since_checkpoint += n;
}

/*
 * Signs the chain so far, then fsyncs: the checkpoint is the point up to
 * which the file is both signed and on disk. A checkpoint that cannot be
 * signed (HSM trouble) is logged and tried at the next one; records still
 * flow. One that cannot be written is a failed write like any other.
 */
static int checkpoint(kms_audit_log *log, kms_err *err)
{
	uint8_t hash[KMS_AUDIT_HASH_LEN];
	kms_err serr = {0};

	if (log->o.sign_key == NULL)
		return KMS_OK;
	if (kms_audit_checkpoint_line(&log->buf, log->seq, log->prev, wall_ms(),
				      log->o.node, log->o.sign_key, hash,
				      &serr) != KMS_OK) {
		KMS_LOG_E("audit: no checkpoint this time: %s", serr.msg);
		log->first_unsigned_ms = mono_ms();
		log->sign_failed_ms = log->first_unsigned_ms;
		return KMS_OK;
	}
	KMS_TRY(flush_buf(log, err));
	memcpy(log->prev, hash, sizeof(hash));
	log->seq++;
	log->since_checkpoint = 0;
	if (fdatasync(log->fd) != 0)
		return kms_errf(err, KMS_ERR_IO, "%s: fdatasync: %s", log->path,
				strerror(errno));
	return KMS_OK;
}

static int checkpoint_due(const kms_audit_log *log)
{
	if (log->o.sign_key == NULL)
		return 0;
	/* After a failed signature, the next try waits: the records keep
	 * flowing. */
	if (log->sign_failed_ms != 0 &&
	    mono_ms() - log->sign_failed_ms < RETRY_MS)
		return 0;
	return log->since_checkpoint > 0 &&
	       (log->since_checkpoint >= log->o.checkpoint_records ||
		mono_ms() - log->first_unsigned_ms >=
		    (int64_t)log->o.checkpoint_seconds * 1000);
}

static void set_failed(kms_audit_log *log, const kms_err *err)
{
	pthread_mutex_lock(&log->mu);
	snprintf(log->failed_why, sizeof(log->failed_why),
		 "audit log cannot be written: %s", err->msg);
	pthread_mutex_unlock(&log->mu);
	if (!atomic_exchange(&log->failed, 1)) {
		log->failed_since_ms = wall_ms();
		log->refused = 0;
		KMS_LOG_E("audit: %s: calls are refused until it can be "
			  "written again",
			  err->msg);
	}
}

/* While failed: a "recovered" record written is the test that writes work
 * again. */
static void try_recover(kms_audit_log *log)
{
	char reason[WHY_MAX + 160];
	uint64_t seq = log->seq;
	uint8_t prev[KMS_AUDIT_HASH_LEN];
	kms_err err = {0};
	time_t since = (time_t)(log->failed_since_ms / 1000);
	struct tm tm;
	char when[32] = "?";

	memcpy(prev, log->prev, sizeof(prev));
	if (gmtime_r(&since, &tm) != NULL)
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	pthread_mutex_lock(&log->mu);
	snprintf(reason, sizeof(reason),
		 "no record could be written from %s (%s); %lu records "
		 "were not written and their calls answered UNAVAILABLE",
		 when, log->failed_why, log->refused);
	pthread_mutex_unlock(&log->mu);
	if (add_event(log, "recovered", reason, &err) != KMS_OK ||
	    flush_buf(log, &err) != KMS_OK) {
		log->seq = seq;
		memcpy(log->prev, prev, sizeof(prev));
		return;
	}
	note_written(log, 1);
	pthread_mutex_lock(&log->mu);
	log->failed_why[0] = '\0';
	pthread_mutex_unlock(&log->mu);
	atomic_store(&log->failed, 0);
	KMS_LOG_I("audit: %s can be written again: calls are served",
		  log->path);
}

static void finish_all(kms_audit_entry *e, int rc, const char *why)
{
	while (e != NULL) {
		kms_audit_entry *next = e->next;

		e->done(e->arg, rc, why);
		e = next;
	}
}

/* Writes a group of queued records with one write(2), then answers them. */
static void write_group(kms_audit_log *log, kms_audit_entry *group)
{
	uint64_t seq = log->seq;
	uint8_t prev[KMS_AUDIT_HASH_LEN];
	kms_err err = {0};
	unsigned n = 0;
	int rc = KMS_OK;
	char why[WHY_MAX];

	memcpy(prev, log->prev, sizeof(prev));
	if (atomic_load(&log->failed))
		try_recover(log);
	if (atomic_load(&log->failed)) {
		rc = KMS_ERR_UNAVAILABLE;
	} else {
		for (kms_audit_entry *e = group; e != NULL && rc == KMS_OK;
		     e = e->next, n++)
			rc = add_line(log, e->body.data, e->body.len, &err);
		if (rc == KMS_OK)
			rc = flush_buf(log, &err);
		if (rc != KMS_OK) {
			log->buf.len = 0;
			log->seq = seq;
			memcpy(log->prev, prev, sizeof(prev));
			set_failed(log, &err);
		}
	}
	if (rc == KMS_OK) {
		note_written(log, n);
		finish_all(group, KMS_OK, "");
		return;
	}
	pthread_mutex_lock(&log->mu);
	snprintf(why, sizeof(why), "%s", log->failed_why);
	pthread_mutex_unlock(&log->mu);
	for (kms_audit_entry *e = group; e != NULL; e = e->next)
		log->refused++;
	finish_all(group, KMS_ERR_UNAVAILABLE, why);
}

/* How long the writer may sleep with nothing queued. */
static int64_t wake_in_ms(const kms_audit_log *log)
{
	int64_t left;

	if (atomic_load(&log->failed))
		return RETRY_MS;
	if (log->since_checkpoint == 0 || log->o.sign_key == NULL)
		return -1;
	left = log->first_unsigned_ms +
	       (int64_t)log->o.checkpoint_seconds * 1000 - mono_ms();
	return left > 0 ? left : 0;
}

/*
 * Writes what is queued, as the one writer: mu is held on entry and on
 * return, and released while a group is written and answered. The writer
 * drains the queue before it lets go, so an entry queued while it writes is
 * never left behind.
 */
static void drain_locked(kms_audit_log *log)
{
	while (log->head != NULL) {
		kms_audit_entry *group = log->head;

		log->head = log->tail = NULL;
		pthread_mutex_unlock(&log->mu);
		write_group(log, group);
		pthread_mutex_lock(&log->mu);
	}
}

/*
 * The background writer: checkpoints when they are due by time, tries
 * again while writes fail, and writes the last checkpoint at close. The
 * records themselves are written by the threads that queue them
 * (kms_audit_log_submit); it takes the writer's part only when none holds it.
 */
static void *writer_main(void *arg)
{
	kms_audit_log *log = arg;
	int stopping = 0;

	pthread_mutex_lock(&log->mu);
	while (!stopping) {
		kms_err err = {0};

		for (;;) {
			int64_t ms;
			struct timespec ts;

			if (log->writing) {
				log->bg_sleep = BG_FOR_WRITER;
				pthread_cond_wait(&log->cond, &log->mu);
				continue;
			}
			/* The writer's state is read only while no one writes.
			 */
			ms = wake_in_ms(log);
			if (log->stop || log->head != NULL || ms == 0 ||
			    checkpoint_due(log))
				break;
			if (ms < 0) {
				log->bg_sleep = BG_IDLE;
				pthread_cond_wait(&log->cond, &log->mu);
				continue;
			}
			log->bg_sleep = BG_AWAKE;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += ms / 1000;
			ts.tv_nsec += (ms % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&log->cond, &log->mu, &ts);
		}
		log->bg_sleep = BG_AWAKE;
		stopping = log->stop;
		log->writing = 1;
		drain_locked(log);
		pthread_mutex_unlock(&log->mu);
		if (atomic_load(&log->failed))
			try_recover(log);
		if (!atomic_load(&log->failed) &&
		    (checkpoint_due(log) ||
		     (stopping && log->since_checkpoint > 0))) {
			if (checkpoint(log, &err) != KMS_OK)
				set_failed(log, &err);
		}
		pthread_mutex_lock(&log->mu);
		drain_locked(log);
		log->writing = 0;
	}
	pthread_mutex_unlock(&log->mu);
	return NULL;
}

/*
 * Group commit without a hand-off: the thread that finds no writer at work
 * becomes the writer and writes what is queued, its own record and those
 * that arrive meanwhile, with one write(2) per group; a thread that finds a
 * writer at work leaves its record to it and returns at once. So a lone
 * call costs no thread switch, and calls that finish together share a
 * write. Checkpoints by time, and retries after a failure, are the
 * background writer's.
 */
void kms_audit_log_submit(kms_audit_log *log, kms_audit_entry *e)
{
	e->next = NULL;
	pthread_mutex_lock(&log->mu);
	if (log->tail != NULL)
		log->tail->next = e;
	else
		log->head = e;
	log->tail = e;
	if (log->writing) {
		pthread_mutex_unlock(&log->mu);
		return;
	}
	log->writing = 1;
	drain_locked(log);
	log->writing = 0;
	/* The background writer has work: a checkpoint's time starts now, or
	 * is due, or writes fail, or it waits for the writer to let go. */
	if (log->bg_sleep == BG_FOR_WRITER ||
	    (log->bg_sleep == BG_IDLE && log->since_checkpoint > 0 &&
	     log->o.sign_key != NULL) ||
	    checkpoint_due(log) || atomic_load(&log->failed)) {
		log->bg_sleep = BG_AWAKE;
		pthread_cond_broadcast(&log->cond);
	}
	pthread_mutex_unlock(&log->mu);
}

static void waiter_done(void *arg, int rc, const char *why)
{
	struct waiter *w = arg;

	pthread_mutex_lock(&w->mu);
	w->rc = rc;
	snprintf(w->why, sizeof(w->why), "%s", why);
	w->finished = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

int kms_audit_log_write(kms_audit_log *log, kms_audit_entry *e, kms_err *err)
{
	struct waiter w;

	memset(&w, 0, sizeof(w));
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cond, NULL);
	e->done = waiter_done;
	e->arg = &w;
	kms_audit_log_submit(log, e);
	pthread_mutex_lock(&w.mu);
	while (!w.finished)
		pthread_cond_wait(&w.cond, &w.mu);
	pthread_mutex_unlock(&w.mu);
	pthread_mutex_destroy(&w.mu);
	pthread_cond_destroy(&w.cond);
	if (w.rc != KMS_OK)
		return kms_errf(err, w.rc, "%s", w.why);
	return KMS_OK;
}

int kms_audit_log_status(kms_audit_log *log, kms_err *err)
{
	int rc = KMS_OK;

	if (!atomic_load(&log->failed))
		return KMS_OK;
	pthread_mutex_lock(&log->mu);
	if (log->failed_why[0] != '\0')
		rc = kms_errf(err, KMS_ERR_UNAVAILABLE, "%s", log->failed_why);
	pthread_mutex_unlock(&log->mu);
	return rc;
}

/* The first records of this run: continue the chain, or begin a segment. */
static int begin(kms_audit_log *log, kms_err *err)
{
	kms_err terr = {0};
	struct stat sb;
	int rc;
	char reason[KMS_ERRMSG_SIZE + 96];

	if (fstat(log->fd, &sb) != 0)
		return kms_errf(err, KMS_ERR_IO, "%s: %s", log->path,
				strerror(errno));
	log->good_size = sb.st_size;
	rc = kms_audit_tail(log->fd, &log->seq, log->prev, &terr);
	if (rc == KMS_OK) {
		log->seq++;
		KMS_TRY(add_event(log, "resume", NULL, err));
		KMS_LOG_I("audit: %s continues its chain at record %llu",
			  log->path, (unsigned long long)log->seq - 1);
	} else if (rc == KMS_ERR_NOT_FOUND || rc == KMS_ERR_INVALID) {
		memset(log->prev, 0, sizeof(log->prev));
		log->seq = 0;
		if (rc == KMS_ERR_INVALID) {
			uint8_t last = '\n';

			snprintf(reason, sizeof(reason),
				 "the tail of the file did not verify (%s): a "
				 "new segment starts here",
				 terr.msg);
			KMS_LOG_W("audit: %s: %s", log->path, reason);
			/* A line cut short stays, on its own line: the verifier
			 * names it. */
			if (pread(log->fd, &last, 1, sb.st_size - 1) == 1 &&
			    last != '\n') {
				if (write_all(log->fd, "\n", 1) != 0)
					return kms_errf(err, KMS_ERR_IO,
							"%s: %s", log->path,
							strerror(errno));
				log->good_size++;
			}
		}
		KMS_TRY(add_event(log, "start",
				  rc == KMS_ERR_INVALID ? reason : "a new file",
				  err));
	} else {
		return kms_errf(err, rc, "%s", terr.msg);
	}
	KMS_TRY(flush_buf(log, err));
	note_written(log, 1);
	return checkpoint(log, err);
}

int kms_audit_log_open(const kms_audit_opts *o, kms_audit_log **out,
		       kms_err *err)
{
	kms_audit_log *log;
	int rc;

	KMS_ENSURE(o->path != NULL && o->checkpoint_records > 0 &&
		       o->checkpoint_seconds > 0,
		   err, KMS_ERR_CONFIG,
		   "audit: a path and non-zero checkpoint limits are needed");
	log = kms_calloc(1, sizeof(*log));
	if (log == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory opening the audit log");
	log->o = *o;
	log->fd = -1;
	pthread_mutex_init(&log->mu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&log->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	log->path = kms_strdup(o->path);
	if (log->path == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory opening the audit log");
		goto fail;
	}
	log->o.path = log->path;
	log->fd = open(o->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (log->fd < 0) {
		rc = kms_errf(err, KMS_ERR_IO,
			      "cannot open the audit log %s: %s", o->path,
			      strerror(errno));
		goto fail;
	}
	rc = begin(log, err);
	if (rc != KMS_OK) {
		kms_err_prefix(err, "cannot write the audit log");
		goto fail;
	}
	if (pthread_create(&log->thread, NULL, writer_main, log) != 0) {
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "cannot start the audit writer thread");
		goto fail;
	}
	log->started = 1;
	*out = log;
	return KMS_OK;
fail:
	kms_audit_log_close(log);
	return rc;
}

void kms_audit_log_close(kms_audit_log *log)
{
	if (log == NULL)
		return;
	if (log->started) {
		pthread_mutex_lock(&log->mu);
		log->stop = 1;
		pthread_cond_broadcast(&log->cond);
		pthread_mutex_unlock(&log->mu);
		pthread_join(log->thread, NULL);
	}
	if (log->fd >= 0) {
		if (fsync(log->fd) != 0)
			KMS_LOG_E("audit: fsync %s: %s", log->path,
				  strerror(errno));
		close(log->fd);
	}
	kms_audit_text_free(&log->buf);
	pthread_mutex_destroy(&log->mu);
	pthread_cond_destroy(&log->cond);
	kms_free(log->path);
	kms_free(log);
}
