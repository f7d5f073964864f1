/*
 * rewrap.c - kmsctl rewrap (rewrap.h).
 *
 * The main thread reads the input, parses a batch of lines and queues it;
 * `parallel` workers each send one batch at a time with BatchReEncrypt;
 * the main thread writes the batches back in input order. The output, the
 * errors file and the state advance together at a commit: both files are
 * fsync'd, then the state that says how many input lines they hold is
 * replaced atomically (rewrap_state.h). A resume truncates both files to
 * the committed lengths and starts after the committed lines, so no line
 * is written twice and none is lost, whatever stopped the run.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "b64.h"
#include "kms/alloc.h"
#include "kms/client_batch.h"
#include "kms/v1/kms.pb-c.h"
#include "kmsctl.h"
#include "line_reader.h"
#include "progress.h"
#include "proto_ctx.h"
#include "rewrap.h"
#include "rewrap_state.h"

/* At most this much work is redone after a crash (kill -9, power). */
#define COMMIT_INTERVAL_S 1.0
#define TICK_NS (100 * 1000 * 1000)
#define BAR_INTERVAL_S 0.2
#define JSON_INTERVAL_S 1.0
/* Retries of a call, or of its items, that failed for a passing reason. */
#define RETRIES 5
#define BACKOFF_FIRST_MS 200
/* A blob is under 5 KB (docs/FORMAT.md); its base64 under 7 KB. */
#define BLOB_B64_MAX (64 * 1024)
#define OUT_BUF (1024 * 1024)
#define ITEM_MSG 256

static volatile sig_atomic_t signal_count, signal_last;

static void on_signal(int sig)
{
	signal_last = sig;
	signal_count = signal_count + 1;
}

void rewrap_block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/*
 * A signal the process was started with ignored stays ignored (a shell
 * ignores SIGINT in the background jobs of a script: Ctrl-C is not theirs).
 */
static int install_handlers(void)
{
	static const int sigs[] = {SIGINT, SIGTERM};
	struct sigaction sa, old;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: a read of a quiet pipe must end on Ctrl-C. */
	sa.sa_flags = 0;
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		if (sigaction(sigs[i], NULL, &old) != 0)
			return -1;
		if (old.sa_handler != SIG_IGN && sigaction(sigs[i], &sa, NULL) != 0)
			return -1;
	}
	return 0;
}

static void unblock_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- output files ---- */

/* An append-only file written through a buffer; size counts what was put. */
struct outbuf {
	const char *path;
	int fd;
	char *buf;
	size_t len;
	uint64_t size;
};

static int out_flush(struct outbuf *b, kms_err *err)
{
	size_t off = 0;

	while (off < b->len) {
		ssize_t n = write(b->fd, b->buf + off, b->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return kms_errf(err, KMS_ERR_IO, "cannot write '%s': %s", b->path,
					strerror(errno));
		off += (size_t)n;
	}
	b->len = 0;
	return KMS_OK;
}

static int out_put(struct outbuf *b, const void *p, size_t n, kms_err *err)
{
	if (b->len + n > OUT_BUF && out_flush(b, err) != KMS_OK)
		return err->code;
	if (n > OUT_BUF) {
		b->size += n;
		while (n > 0) {
			ssize_t w = write(b->fd, p, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return kms_errf(err, KMS_ERR_IO, "cannot write '%s': %s", b->path,
						strerror(errno));
			p = (const char *)p + w;
			n -= (size_t)w;
		}
		return KMS_OK;
	}
	memcpy(b->buf + b->len, p, n);
	b->len += n;
	b->size += n;
	return KMS_OK;
}

static int out_sync(struct outbuf *b, kms_err *err)
{
	if (out_flush(b, err) != KMS_OK)
		return err->code;
	while (fsync(b->fd) != 0)
		if (errno != EINTR)
			return kms_errf(err, KMS_ERR_IO, "cannot fsync '%s': %s", b->path,
					strerror(errno));
	return KMS_OK;
}

/*
 * Opens path for appending after its first keep bytes, dropping a tail
 * written after the last commit. With exclusive set, takes a lock that a
 * second rewrap of the same output cannot.
 */
static int out_open(struct outbuf *b, const char *path, uint64_t keep, int have_state,
		    const char *state_path, int exclusive, kms_err *err)
{
	struct stat st;

	memset(b, 0, sizeof(*b));
	b->path = path;
	b->fd = -1;
	b->buf = kms_malloc(OUT_BUF);
	if (b->buf == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for the output buffer");
	b->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (b->fd < 0)
		return kms_errf(err, KMS_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
	if (exclusive && flock(b->fd, LOCK_EX | LOCK_NB) != 0)
		return kms_errf(err, KMS_ERR_IO,
				"'%s' is locked: another kmsctl rewrap is writing it", path);
	if (fstat(b->fd, &st) != 0)
		return kms_errf(err, KMS_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
	if (!have_state && st.st_size != 0)
		return kms_errf(err, KMS_ERR_CONFIG,
				"'%s' is not empty and there is no state file '%s': not "
				"overwriting it (remove it, or give the --state of the job "
				"that wrote it)",
				path, state_path);
	if ((uint64_t)st.st_size < keep)
		return kms_errf(err, KMS_ERR_CONFIG,
				"'%s' holds %lld bytes but the state file '%s' says %llu are "
				"committed: it is not this job's file",
				path, (long long)st.st_size, state_path, (unsigned long long)keep);
	if ((uint64_t)st.st_size > keep && ftruncate(b->fd, (off_t)keep) != 0)
		return kms_errf(err, KMS_ERR_IO, "cannot truncate '%s': %s", path,
				strerror(errno));
	if (lseek(b->fd, 0, SEEK_END) < 0)
		return kms_errf(err, KMS_ERR_IO, "cannot seek '%s': %s", path, strerror(errno));
	b->size = keep;
	return KMS_OK;
}

static void out_close(struct outbuf *b)
{
	if (b->fd >= 0)
		close(b->fd);
	kms_free(b->buf);
	b->fd = -1;
	b->buf = NULL;
}

/* ---- batches ---- */

struct item {
	uint64_t line;	/* 1-based line number in the input */
	char *raw;	/* the line as read, its newline included when it has one */
	size_t raw_len;
	json_t *obj;	/* the parsed line; NULL when it is not an object */
	kms_buf blob;
	struct kv *ctx; /* borrowed from obj */
	size_t n_ctx;
	void **src, **dst; /* context map entries of the request */
	int code;	   /* -1 pending, 0 rewrapped, else a gRPC status */
	int local;	   /* the line itself is at fault, not the server */
	char msg[ITEM_MSG];
	const Kms__V1__ReEncryptResponse *resp; /* into the batch's answers */
};

struct batch {
	struct item *items;
	size_t n;
	Kms__V1__ReEncryptRequest *reqs;
	size_t *req_item; /* reqs[k] is for items[req_item[k]] */
	size_t n_reqs;
	Kms__V1__BatchReEncryptResponse *resps[RETRIES + 1];
	size_t n_resps;
	int started, done;
	int fatal;	    /* the batch failed as a whole: st says why */
	kms_rpc_status st;
	struct batch *next_work; /* the workers' queue */
	struct batch *next;	 /* batches in input order */
};

static void batch_free(struct batch *b)
{
	size_t i;

	if (b == NULL)
		return;
	for (i = 0; i < b->n; i++) {
		struct item *it = &b->items[i];

		kms_free(it->raw);
		json_decref(it->obj);
		kms_buf_free(&it->blob);
		ctx_entries_free(it->src, it->n_ctx);
		ctx_entries_free(it->dst, it->n_ctx);
		kms_free(it->ctx);
	}
	for (i = 0; i < b->n_resps; i++)
		kms_client_batch_reencrypt_free(b->resps[i]);
	kms_free(b->items);
	kms_free(b->reqs);
	kms_free(b->req_item);
	kms_free(b);
}

static void item_fail(struct item *it, int code, int local, const char *msg)
{
	size_t i;

	it->code = code;
	it->local = local;
	/* It goes into a JSON file: ASCII only, no control characters. */
	for (i = 0; msg[i] != '\0' && i + 1 < sizeof(it->msg); i++)
		it->msg[i] = (unsigned char)msg[i] < 0x20 || (unsigned char)msg[i] > 0x7e
				 ? '?'
				 : msg[i];
	it->msg[i] = '\0';
}

/* Parses one line: {"blob": base64, "context": {name: value, ...}}. */
static void item_parse(struct item *it)
{
	json_t *blob, *ctx, *v;
	json_error_t jerr;
	enum b64_status st;
	const char *k;
	char msg[ITEM_MSG];

	it->code = -1;
	it->obj = json_loadb(it->raw, it->raw_len, JSON_REJECT_DUPLICATES, &jerr);
	if (it->obj == NULL) {
		snprintf(msg, sizeof(msg), "the line is not JSON: %s", jerr.text);
		item_fail(it, GRPC_STATUS_INVALID_ARGUMENT, 1, msg);
		return;
	}
	blob = json_object_get(it->obj, "blob");
	if (!json_is_object(it->obj) || !json_is_string(blob)) {
		item_fail(it, GRPC_STATUS_INVALID_ARGUMENT, 1,
			  "the line is not an object with a \"blob\" string");
		return;
	}
	st = b64_decode(json_string_value(blob), json_string_length(blob), BLOB_B64_MAX,
			&it->blob);
	if (st != B64_OK) {
		snprintf(msg, sizeof(msg), "\"blob\" %s", b64_status_text(st));
		item_fail(it, GRPC_STATUS_INVALID_ARGUMENT, 1, msg);
		return;
	}
	ctx = json_object_get(it->obj, "context");
	if (ctx != NULL && !json_is_object(ctx)) {
		item_fail(it, GRPC_STATUS_INVALID_ARGUMENT, 1, "\"context\" is not an object");
		return;
	}
	it->ctx = kms_calloc(json_object_size(ctx) + 1, sizeof(*it->ctx));
	if (it->ctx == NULL) {
		item_fail(it, GRPC_STATUS_RESOURCE_EXHAUSTED, 1, "out of memory");
		return;
	}
	json_object_foreach(ctx, k, v)
	{
		if (!json_is_string(v)) {
			item_fail(it, GRPC_STATUS_INVALID_ARGUMENT, 1,
				  "a \"context\" value is not a string");
			return;
		}
		it->ctx[it->n_ctx].key = (char *)k;
		it->ctx[it->n_ctx].value = (char *)json_string_value(v);
		it->n_ctx++;
	}
	it->src = ctx_entries(
	    it->ctx, it->n_ctx,
	    &kms__v1__re_encrypt_request__source_encryption_context_entry__descriptor);
	it->dst = ctx_entries(
	    it->ctx, it->n_ctx,
	    &kms__v1__re_encrypt_request__destination_encryption_context_entry__descriptor);
	if (it->src == NULL || it->dst == NULL)
		item_fail(it, GRPC_STATUS_RESOURCE_EXHAUSTED, 1, "out of memory");
}

/* The requests of the items that parsed: the context goes along unchanged. */
static int batch_requests(struct batch *b, const char *to)
{
	size_t i;

	b->reqs = kms_calloc(b->n + 1, sizeof(*b->reqs));
	b->req_item = kms_calloc(b->n + 1, sizeof(*b->req_item));
	if (b->reqs == NULL || b->req_item == NULL)
		return -1;
	for (i = 0; i < b->n; i++) {
		struct item *it = &b->items[i];
		Kms__V1__ReEncryptRequest *r = &b->reqs[b->n_reqs];

		if (it->code != -1)
			continue;
		kms__v1__re_encrypt_request__init(r);
		r->ciphertext_blob.data = it->blob.data;
		r->ciphertext_blob.len = it->blob.len;
		r->n_source_encryption_context = it->n_ctx;
		r->source_encryption_context =
		    (Kms__V1__ReEncryptRequest__SourceEncryptionContextEntry **)it->src;
		r->destination_key_id = (char *)to;
		r->n_destination_encryption_context = it->n_ctx;
		r->destination_encryption_context =
		    (Kms__V1__ReEncryptRequest__DestinationEncryptionContextEntry **)it->dst;
		b->req_item[b->n_reqs++] = i;
	}
	return 0;
}

/* ---- the job ---- */

enum stop { STOP_NONE, STOP_SIGNAL, STOP_ERROR, STOP_ITEM, STOP_LOCAL };

struct job {
	kms_client *c;
	const struct rewrap_opts *o;
	const char *state_path, *errors_path;

	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv;
	struct batch *work_head, *work_tail; /* under mu */
	int quit;			     /* under mu */
	pthread_t workers[REWRAP_PARALLEL_MAX];
	unsigned n_workers;

	/* The main thread's. */
	int in_fd;
	struct line_reader lr;
	int in_eof;
	uint64_t lines_read;
	struct batch *fifo_head, *fifo_tail;
	unsigned in_flight;
	struct outbuf out, errs;
	EVP_MD_CTX *sha;	 /* over the input lines written */
	struct rewrap_state cur; /* what is written; committed at commit() */
	uint64_t base_lines;
	uint64_t total;
	uint64_t run_rewrapped, run_failed;
	double start, last_commit, last_progress;
	enum stop stop;
	int write_failed;  /* the files are behind what the job counts */
	int progress_mode; /* 0 none, 1 bar, 2 JSON lines */
	int warned_signal;
	json_free_t jfree;
};

static int retryable(int code)
{
	return code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_DEADLINE_EXCEEDED ||
	       code == GRPC_STATUS_ABORTED;
}

/* Sleeps before retry attempt n, in slices so that abandoning is prompt. */
static void backoff(unsigned attempt)
{
	long ms = BACKOFF_FIRST_MS << attempt;
	struct timespec slice = {0, 50 * 1000 * 1000};

	for (; ms > 0 && signal_count < 2; ms -= 50)
		nanosleep(&slice, NULL);
}

/*
 * Sends b's requests, and again those whose items failed for a passing
 * reason, up to RETRIES times. Items still failing that way, or a call
 * failing as a whole, make the batch fatal: the job stops, and a resume
 * redoes the batch later.
 */
static void run_batch(struct job *j, struct batch *b)
{
	Kms__V1__ReEncryptRequest **ptrs = kms_calloc(b->n_reqs + 1, sizeof(*ptrs));
	size_t *pending = kms_calloc(b->n_reqs + 1, sizeof(*pending));
	size_t n_pending = b->n_reqs, k;
	unsigned attempt;

	if (ptrs == NULL || pending == NULL) {
		b->fatal = 1;
		b->st.code = GRPC_STATUS_RESOURCE_EXHAUSTED;
		snprintf(b->st.details, sizeof(b->st.details), "out of memory for a batch");
		goto out;
	}
	for (k = 0; k < n_pending; k++)
		pending[k] = k;
	for (attempt = 0;; attempt++) {
		Kms__V1__BatchReEncryptRequest req = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
		Kms__V1__BatchReEncryptResponse *resp = NULL;
		kms_rpc_status st;
		size_t n_retry = 0;

		for (k = 0; k < n_pending; k++)
			ptrs[k] = &b->reqs[pending[k]];
		req.requests = ptrs;
		req.n_requests = n_pending;
		/* The answer comes checked: one result per item, each holding one thing. */
		if (kms_client_batch_reencrypt(j->c, &req, &resp, &st) != GRPC_STATUS_OK) {
			if (retryable(st.code) && attempt < RETRIES && signal_count < 2) {
				backoff(attempt);
				continue;
			}
			b->fatal = 1;
			b->st = st;
			break;
		}
		b->resps[b->n_resps++] = resp;
		for (k = 0; k < n_pending; k++) {
			const Kms__V1__BatchReEncryptResult *r = resp->results[k];
			struct item *it = &b->items[b->req_item[pending[k]]];

			if (r->result_case == KMS__V1__BATCH_RE_ENCRYPT_RESULT__RESULT_RESPONSE) {
				it->code = 0;
				it->resp = r->response;
			} else if (retryable((int)r->error->code)) {
				item_fail(it, (int)r->error->code, 0, r->error->message);
				pending[n_retry++] = pending[k];
			} else {
				item_fail(it, (int)r->error->code, 0, r->error->message);
			}
		}
		if (n_retry == 0)
			break;
		if (attempt >= RETRIES || signal_count >= 2) {
			struct item *it = &b->items[b->req_item[pending[0]]];

			b->fatal = 1;
			b->st.code = it->code;
			snprintf(b->st.details, sizeof(b->st.details),
				 "%zu items still failed after %d retries, line %llu: %s", n_retry,
				 RETRIES, (unsigned long long)it->line, it->msg);
			break;
		}
		n_pending = n_retry;
		backoff(attempt);
	}
out:
	kms_free(ptrs);
	kms_free(pending);
}

static void *worker_main(void *arg)
{
	struct job *j = arg;

	for (;;) {
		struct batch *b;

		pthread_mutex_lock(&j->mu);
		while (j->work_head == NULL && !j->quit)
			pthread_cond_wait(&j->work_cv, &j->mu);
		if (j->quit) {
			pthread_mutex_unlock(&j->mu);
			return NULL;
		}
		b = j->work_head;
		j->work_head = b->next_work;
		if (j->work_head == NULL)
			j->work_tail = NULL;
		b->started = 1;
		pthread_mutex_unlock(&j->mu);

		run_batch(j, b);

		pthread_mutex_lock(&j->mu);
		b->done = 1;
		pthread_cond_broadcast(&j->done_cv);
		pthread_mutex_unlock(&j->mu);
	}
}

static void enqueue(struct job *j, struct batch *b)
{
	pthread_mutex_lock(&j->mu);
	if (b->n_reqs == 0) {
		b->started = b->done = 1;
	} else {
		if (j->work_tail != NULL)
			j->work_tail->next_work = b;
		else
			j->work_head = b;
		j->work_tail = b;
		pthread_cond_signal(&j->work_cv);
	}
	pthread_mutex_unlock(&j->mu);
	if (j->fifo_tail != NULL)
		j->fifo_tail->next = b;
	else
		j->fifo_head = b;
	j->fifo_tail = b;
	j->in_flight++;
}

/* Drops the queued batches no worker took: after a fatal stop. */
static void drop_queue(struct job *j)
{
	pthread_mutex_lock(&j->mu);
	j->work_head = j->work_tail = NULL;
	pthread_mutex_unlock(&j->mu);
}

/* ---- progress ---- */

static void progress(struct job *j, int force)
{
	struct progress_sample s;
	char line[512];
	struct winsize ws;
	double t = now_s();

	if (j->progress_mode == 0)
		return;
	if (!force && t - j->last_progress < (j->progress_mode == 1 ? BAR_INTERVAL_S
								    : JSON_INTERVAL_S))
		return;
	j->last_progress = t;
	s.done = j->cur.lines;
	s.total = j->total;
	s.failed = j->cur.failed;
	s.done_run = j->cur.lines - j->base_lines;
	s.elapsed = t - j->start;
	if (j->progress_mode == 2) {
		progress_json(line, sizeof(line), &s);
		fputs(line, stderr);
		return;
	}
	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0)
		ws.ws_col = 80;
	/* One column short: a full last column wraps on some terminals. */
	progress_bar(line, sizeof(line), &s, ws.ws_col - 1u);
	fprintf(stderr, "\r%s\033[K", line);
}

static void progress_clear(struct job *j)
{
	if (j->progress_mode == 1)
		fputs("\r\033[K", stderr);
}

/* ---- reading ---- */

/*
 * Reads up to o->batch lines into a new batch (*out; empty at the end of
 * the input or when a signal came). KMS_OK, or the error that stops the
 * job (a line over REWRAP_LINE_MAX, a read error).
 */
static int read_batch(struct job *j, struct batch **out, kms_err *err)
{
	struct batch *b = kms_calloc(1, sizeof(*b));

	*out = NULL;
	if (b == NULL || (b->items = kms_calloc(j->o->batch, sizeof(*b->items))) == NULL) {
		kms_free(b);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a batch");
	}
	while (b->n < j->o->batch && !j->in_eof && signal_count == 0) {
		struct item *it = &b->items[b->n];
		const char *line;
		size_t len;

		switch (line_reader_next(&j->lr, &line, &len, err)) {
		case LINE_INTERRUPTED:
			continue;
		case LINE_EOF:
			j->in_eof = 1;
			continue;
		case LINE_ERROR: {
			char where[48];

			snprintf(where, sizeof(where), "input line %llu",
				 (unsigned long long)j->lines_read + 1);
			batch_free(b);
			return kms_err_prefix(err, where);
		}
		case LINE_OK:
			break;
		}
		it->raw = kms_malloc(len + 1);
		if (it->raw == NULL) {
			batch_free(b);
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a line");
		}
		memcpy(it->raw, line, len + 1);
		it->raw_len = len;
		it->line = ++j->lines_read;
		b->n++;
		item_parse(it);
	}
	if (batch_requests(b, j->o->to) != 0) {
		batch_free(b);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a batch");
	}
	*out = b;
	return KMS_OK;
}

/* ---- writing ---- */

static int write_error(struct job *j, const struct item *it, kms_err *err)
{
	json_t *o = json_object();
	char *text = NULL;
	int rc = KMS_OK;

	if (o == NULL || json_object_set_new(o, "line", json_integer((json_int_t)it->line)) ||
	    json_object_set_new(o, "code", json_string(kms_grpc_status_name(it->code))) ||
	    json_object_set_new(o, "message", json_string(it->msg)) ||
	    json_object_set_new(o, "source", json_string(it->local ? "input" : "server")) ||
	    (text = json_dumps(o, JSON_COMPACT)) == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory writing an error");
		goto out;
	}
	if (out_put(&j->errs, text, strlen(text), err) != KMS_OK ||
	    out_put(&j->errs, "\n", 1, err) != KMS_OK)
		rc = err->code;
out:
	if (text != NULL)
		j->jfree(text);
	json_decref(o);
	return rc;
}

/*
 * Where the line's blob value is written, quotes excluded, when its text is
 * the value itself (no escapes) and appears quoted exactly once: then the
 * rest of the line can stay byte for byte as it was. -1 otherwise.
 */
static ptrdiff_t blob_text_at(const struct item *it, const char *old, size_t old_len)
{
	const char *p = it->raw, *end = it->raw + it->raw_len, *found = NULL;

	while ((p = memmem(p, (size_t)(end - p), old, old_len)) != NULL) {
		if (p > it->raw && p[-1] == '"' && p + old_len < end && p[old_len] == '"') {
			if (found != NULL)
				return -1;
			found = p;
		}
		p++;
	}
	return found != NULL ? found - it->raw : -1;
}

/*
 * The line with its blob replaced by the new one. The rest of the line is
 * kept as it was written when the old blob's text can be found in it;
 * otherwise (an escaped '/' in the blob, say) the line is written again
 * from its parsed fields, all of them kept.
 */
static int write_rewrapped(struct job *j, struct item *it, kms_err *err)
{
	const ProtobufCBinaryData *nb = &it->resp->ciphertext_blob;
	json_t *old = json_object_get(it->obj, "blob");
	size_t cap = 0, tail;
	char *enc = b64_encode(nb->data, nb->len, &cap), *text = NULL;
	ptrdiff_t at;
	int rc = KMS_OK;

	if (enc == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory writing line %llu",
			      (unsigned long long)it->line);
		goto out;
	}
	at = blob_text_at(it, json_string_value(old), json_string_length(old));
	if (at >= 0) {
		tail = (size_t)at + json_string_length(old);
		if (out_put(&j->out, it->raw, (size_t)at, err) != KMS_OK ||
		    out_put(&j->out, enc, strlen(enc), err) != KMS_OK ||
		    out_put(&j->out, it->raw + tail, it->raw_len - tail, err) != KMS_OK ||
		    (it->raw[it->raw_len - 1] != '\n' && out_put(&j->out, "\n", 1, err) != KMS_OK))
			rc = err->code;
		goto out;
	}
	if (json_object_set_new(it->obj, "blob", json_string(enc)) != 0 ||
	    (text = json_dumps(it->obj, JSON_COMPACT)) == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory writing line %llu",
			      (unsigned long long)it->line);
		goto out;
	}
	if (out_put(&j->out, text, strlen(text), err) != KMS_OK ||
	    out_put(&j->out, "\n", 1, err) != KMS_OK)
		rc = err->code;
out:
	if (text != NULL)
		j->jfree(text);
	kms_free(enc);
	return rc;
}

/*
 * Writes the first n items of b: a rewrapped line, or the line as it was
 * with its error in the errors file.
 */
static int write_items(struct job *j, struct batch *b, size_t n, kms_err *err)
{
	size_t i;

	for (i = 0; i < n; i++) {
		struct item *it = &b->items[i];
		int rc;

		if (it->code == 0) {
			rc = write_rewrapped(j, it, err);
			j->cur.rewrapped++;
			j->run_rewrapped++;
		} else {
			rc = out_put(&j->out, it->raw, it->raw_len, err);
			if (rc == KMS_OK && (it->raw_len == 0 || it->raw[it->raw_len - 1] != '\n'))
				rc = out_put(&j->out, "\n", 1, err);
			if (rc == KMS_OK)
				rc = write_error(j, it, err);
			j->cur.failed++;
			j->run_failed++;
		}
		if (rc != KMS_OK)
			return rc;
		if (EVP_DigestUpdate(j->sha, it->raw, it->raw_len) != 1)
			return kms_errf(err, KMS_ERR_INTERNAL, "SHA-256 failed");
		j->cur.lines++;
		j->cur.input_bytes += it->raw_len;
	}
	return KMS_OK;
}

/* Makes what is written durable, then says so in the state. */
static int commit(struct job *j, int complete, kms_err *err)
{
	EVP_MD_CTX *copy = EVP_MD_CTX_new();
	int rc = KMS_OK;

	if (copy == NULL || EVP_MD_CTX_copy_ex(copy, j->sha) != 1 ||
	    EVP_DigestFinal_ex(copy, j->cur.input_sha256, NULL) != 1) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "SHA-256 failed");
		goto out;
	}
	if (out_sync(&j->out, err) != KMS_OK || out_sync(&j->errs, err) != KMS_OK) {
		rc = err->code;
		goto out;
	}
	j->cur.output_bytes = j->out.size;
	j->cur.errors_bytes = j->errs.size;
	j->cur.complete = complete;
	rc = rewrap_state_save(j->state_path, &j->cur, err);
	j->last_commit = now_s();
out:
	EVP_MD_CTX_free(copy);
	return rc;
}

/* ---- the run ---- */

static void say_interrupted(struct job *j)
{
	if (j->warned_signal || signal_count == 0)
		return;
	j->warned_signal = 1;
	progress_clear(j);
	errmsg("%s: finishing the %u batch%s in flight (again to abandon them)",
	       strsignal(signal_last), j->in_flight, j->in_flight == 1 ? "" : "es");
}

/* Waits for b; 0 when a second signal says to abandon it. */
static int wait_done(struct job *j, struct batch *b)
{
	pthread_mutex_lock(&j->mu);
	while (!b->done) {
		struct timespec until;

		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += TICK_NS;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&j->done_cv, &j->mu, &until);
		pthread_mutex_unlock(&j->mu);
		say_interrupted(j);
		if (signal_count >= 2)
			return 0;
		progress(j, 0);
		pthread_mutex_lock(&j->mu);
	}
	pthread_mutex_unlock(&j->mu);
	return 1;
}

/* The first item of b that failed, or b->n. */
static size_t first_failure(const struct batch *b)
{
	size_t i;

	for (i = 0; i < b->n && b->items[i].code == 0; i++)
		;
	return i;
}

/*
 * Takes the oldest batch in flight once it is done and writes it, or drops
 * it when the job is stopping for an error. 0, or -1 when abandoned.
 */
static int retire_oldest(struct job *j, kms_err *err)
{
	struct batch *b = j->fifo_head;
	size_t n;

	/* Not taken by a worker: no answer will come. */
	if (!(j->stop >= STOP_ERROR && !b->started) && !wait_done(j, b))
		return -1;
	j->fifo_head = b->next;
	if (j->fifo_head == NULL)
		j->fifo_tail = NULL;
	j->in_flight--;
	if (j->stop >= STOP_ERROR)
		goto out;
	if (b->fatal) {
		progress_clear(j);
		errmsg("BatchReEncrypt (lines %llu to %llu): %s: %s",
		       (unsigned long long)b->items[0].line,
		       (unsigned long long)b->items[b->n - 1].line, kms_grpc_status_name(b->st.code),
		       b->st.details);
		j->stop = STOP_ERROR;
		drop_queue(j);
		goto out;
	}
	n = j->o->stop_on_error ? first_failure(b) : b->n;
	if (write_items(j, b, n, err) != KMS_OK) {
		progress_clear(j);
		errmsg("%s", err->msg);
		j->stop = STOP_LOCAL;
		j->write_failed = 1;
		drop_queue(j);
		goto out;
	}
	if (n < b->n) {
		const struct item *it = &b->items[n];

		progress_clear(j);
		errmsg("line %llu: %s: %s (--stop-on-error: a run with the same options "
		       "resumes at this line)",
		       (unsigned long long)it->line, kms_grpc_status_name(it->code), it->msg);
		j->stop = STOP_ITEM;
		drop_queue(j);
	}
out:
	batch_free(b);
	return 0;
}

static int run_loop(struct job *j, kms_err *err)
{
	for (;;) {
		while (j->stop == STOP_NONE && signal_count == 0 && !j->in_eof &&
		       j->in_flight < j->o->parallel) {
			struct batch *b;

			if (read_batch(j, &b, err) != KMS_OK) {
				progress_clear(j);
				errmsg("%s", err->msg);
				j->stop = STOP_LOCAL;
				drop_queue(j);
				break;
			}
			if (b->n == 0) {
				batch_free(b);
				break;
			}
			enqueue(j, b);
		}
		if (signal_count > 0 && j->stop == STOP_NONE)
			j->stop = STOP_SIGNAL;
		say_interrupted(j);
		if (j->in_flight == 0)
			return 0;
		if (retire_oldest(j, err) != 0)
			return -1;
		if (j->stop <= STOP_SIGNAL && now_s() - j->last_commit >= COMMIT_INTERVAL_S &&
		    commit(j, 0, err) != KMS_OK) {
			progress_clear(j);
			errmsg("%s", err->msg);
			j->stop = STOP_LOCAL;
			j->write_failed = 1;
			drop_queue(j);
		}
		progress(j, 0);
	}
}

static int start_workers(struct job *j, kms_err *err)
{
	pthread_condattr_t ca;
	unsigned i;

	if (pthread_mutex_init(&j->mu, NULL) != 0 || pthread_condattr_init(&ca) != 0 ||
	    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&j->done_cv, &ca) != 0 || pthread_cond_init(&j->work_cv, NULL) != 0)
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot set up the workers' locks");
	pthread_condattr_destroy(&ca);
	for (i = 0; i < j->o->parallel; i++) {
		int e = pthread_create(&j->workers[i], NULL, worker_main, j);

		if (e != 0)
			return kms_errf(err, KMS_ERR_INTERNAL, "cannot start a worker: %s",
					strerror(e));
		j->n_workers++;
	}
	return KMS_OK;
}

static void stop_workers(struct job *j)
{
	unsigned i;

	if (j->n_workers == 0)
		return;
	pthread_mutex_lock(&j->mu);
	j->quit = 1;
	pthread_cond_broadcast(&j->work_cv);
	pthread_mutex_unlock(&j->mu);
	for (i = 0; i < j->n_workers; i++)
		pthread_join(j->workers[i], NULL);
	j->n_workers = 0;
}

/*
 * Skips the input lines the state says are done, checking that they are
 * the lines the job started with (their length and SHA-256).
 */
static int skip_done(struct job *j, const struct rewrap_state *st, kms_err *err)
{
	uint8_t digest[REWRAP_SHA256_LEN];
	EVP_MD_CTX *copy;
	int same;

	while (j->lines_read < st->lines) {
		const char *line;
		size_t len;

		switch (line_reader_next(&j->lr, &line, &len, err)) {
		case LINE_INTERRUPTED:
			if (signal_count > 0)
				return kms_errf(err, KMS_ERR_UNAVAILABLE, "interrupted");
			continue;
		case LINE_EOF:
			return kms_errf(err, KMS_ERR_CONFIG,
					"the input has %llu lines but the state file '%s' "
					"says %llu are done: it is not this job's input",
					(unsigned long long)j->lines_read, j->state_path,
					(unsigned long long)st->lines);
		case LINE_ERROR:
			return kms_err_prefix(err, "the input");
		case LINE_OK:
			break;
		}
		if (EVP_DigestUpdate(j->sha, line, len) != 1)
			return kms_errf(err, KMS_ERR_INTERNAL, "SHA-256 failed");
		j->lines_read++;
	}
	copy = EVP_MD_CTX_new();
	if (copy == NULL || EVP_MD_CTX_copy_ex(copy, j->sha) != 1 ||
	    EVP_DigestFinal_ex(copy, digest, NULL) != 1) {
		EVP_MD_CTX_free(copy);
		return kms_errf(err, KMS_ERR_INTERNAL, "SHA-256 failed");
	}
	EVP_MD_CTX_free(copy);
	same = j->lr.offset == st->input_bytes &&
	       memcmp(digest, st->input_sha256, sizeof(digest)) == 0;
	if (!same)
		return kms_errf(err, KMS_ERR_CONFIG,
				"the first %llu lines of the input differ from those the state "
				"file '%s' recorded (length or SHA-256): it is not this job's "
				"input",
				(unsigned long long)st->lines, j->state_path);
	return KMS_OK;
}

static char *path_with(const char *base, const char *suffix)
{
	size_t n = strlen(base) + strlen(suffix) + 1;
	char *p = kms_malloc(n);

	if (p != NULL)
		snprintf(p, n, "%s%s", base, suffix);
	return p;
}

/* Opens the input, the output, the errors file and the state; checks a resume. */
static int open_job(struct job *j, int *done_already, kms_err *err)
{
	const struct rewrap_opts *o = j->o;
	struct stat in_st, out_st;
	int found = 0, rc;

	*done_already = 0;
	rc = rewrap_state_load(j->state_path, &j->cur, &found, err);
	if (rc != KMS_OK)
		return rc;
	if (found && strcmp(j->cur.to, o->to) != 0)
		return kms_errf(err, KMS_ERR_CONFIG,
				"the state file '%s' is of a job to '%s', not to '%s': give "
				"--to '%s' to resume it, or remove it and the output to start "
				"again",
				j->state_path, j->cur.to, o->to, j->cur.to);
	if (found && j->cur.complete) {
		*done_already = 1;
		return KMS_OK;
	}
	if (o->in_path == NULL || strcmp(o->in_path, "-") == 0) {
		j->in_fd = STDIN_FILENO;
	} else {
		j->in_fd = open(o->in_path, O_RDONLY | O_CLOEXEC);
		if (j->in_fd < 0)
			return kms_errf(err, KMS_ERR_IO, "cannot read '%s': %s", o->in_path,
					strerror(errno));
	}
	if (fstat(j->in_fd, &in_st) != 0)
		return kms_errf(err, KMS_ERR_IO, "cannot stat the input: %s", strerror(errno));
	if (stat(o->out_path, &out_st) == 0 && out_st.st_dev == in_st.st_dev &&
	    out_st.st_ino == in_st.st_ino)
		return kms_errf(err, KMS_ERR_CONFIG, "the output is the input");
	rc = out_open(&j->out, o->out_path, j->cur.output_bytes, found, j->state_path, 1, err);
	if (rc == KMS_OK)
		rc = out_open(&j->errs, j->errors_path, j->cur.errors_bytes, found, j->state_path,
			      0, err);
	if (rc != KMS_OK)
		return rc;
	if (S_ISREG(in_st.st_mode) && count_lines(j->in_fd, &j->total, err) != KMS_OK)
		return err->code;
	rc = line_reader_init(&j->lr, j->in_fd, REWRAP_LINE_MAX, err);
	if (rc != KMS_OK)
		return rc;
	j->sha = EVP_MD_CTX_new();
	if (j->sha == NULL || EVP_DigestInit_ex(j->sha, EVP_sha256(), NULL) != 1)
		return kms_errf(err, KMS_ERR_INTERNAL, "SHA-256 failed");
	if (!found) {
		j->cur.to = kms_strdup(o->to);
		if (j->cur.to == NULL)
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
		/* From here on a stopped run is always resumable. */
		return commit(j, 0, err);
	}
	return KMS_OK;
}

static void summarize(struct job *j, struct rewrap_summary *s)
{
	double t = now_s() - j->start;
	static const char *const why[] = {"", "interrupted", "error", "stop-on-error", "error"};

	memset(s, 0, sizeof(*s));
	s->input = j->o->in_path != NULL ? j->o->in_path : "-";
	s->output = j->o->out_path;
	s->to = j->o->to;
	s->state = j->state_path;
	s->errors = j->errors_path;
	s->lines_done = j->cur.lines;
	s->lines_total = j->total;
	s->resumed_at = j->base_lines;
	s->rewrapped = j->run_rewrapped;
	s->failed = j->run_failed;
	s->failed_total = j->cur.failed;
	s->elapsed_seconds = t;
	s->items_per_second = t > 0 ? (double)(j->cur.lines - j->base_lines) / t : 0;
	s->complete = j->cur.complete;
	s->stopped = why[j->stop];
}

static int exit_status(const struct job *j)
{
	switch (j->stop) {
	case STOP_NONE:
		return j->cur.failed > 0 ? EXIT_SERVER : EXIT_OK;
	case STOP_SIGNAL:
		return 128 + (int)signal_last;
	case STOP_ERROR:
	case STOP_ITEM:
		return EXIT_SERVER;
	case STOP_LOCAL:
		return EXIT_LOCAL;
	}
	return EXIT_LOCAL;
}

int rewrap_run(kms_client *c, const struct rewrap_opts *o, rewrap_report_fn report, void *arg)
{
	struct rewrap_summary sum;
	struct job j;
	kms_err err = {0};
	int rc = EXIT_LOCAL, done_already = 0, abandoned = 0;

	memset(&j, 0, sizeof(j));
	j.c = c;
	j.o = o;
	j.in_fd = -1;
	j.out.fd = j.errs.fd = -1;
	j.start = j.last_commit = now_s();
	json_get_alloc_funcs(NULL, &j.jfree);
	j.state_path = o->state_path != NULL ? o->state_path : path_with(o->out_path, ".rewrap-state");
	j.errors_path =
	    o->errors_path != NULL ? o->errors_path : path_with(o->out_path, ".rewrap-errors");
	if (j.state_path == NULL || j.errors_path == NULL) {
		errmsg("out of memory");
		goto out;
	}
	if (install_handlers() != 0) {
		errmsg("cannot handle SIGINT and SIGTERM: %s", strerror(errno));
		goto out;
	}
	if (open_job(&j, &done_already, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		goto out;
	}
	if (done_already) {
		j.base_lines = j.cur.lines;
		goto report;
	}
	if (start_workers(&j, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		goto out;
	}
	unblock_signals();
	if (skip_done(&j, &j.cur, &err) != KMS_OK) {
		if (signal_count > 0) {
			rc = 128 + (int)signal_last;
			goto out;
		}
		errmsg("%s", err.msg);
		goto out;
	}
	j.base_lines = j.cur.lines;
	if (isatty(STDERR_FILENO) && !o->json)
		j.progress_mode = 1;
	else if (o->json)
		j.progress_mode = 2;
	j.start = now_s();
	abandoned = run_loop(&j, &err) != 0;
	if (!j.write_failed && commit(&j, j.stop == STOP_NONE && !abandoned, &err) != KMS_OK) {
		progress_clear(&j);
		errmsg("%s", err.msg);
		j.stop = STOP_LOCAL;
	}
	progress(&j, 1);
	progress_clear(&j);
	if (abandoned) {
		/* Workers wait on calls in flight; their answers are not wanted. */
		summarize(&j, &sum);
		sum.stopped = "abandoned";
		report(&sum, arg);
		fflush(stdout);
		fflush(stderr);
		_exit(128 + (int)signal_last);
	}
	stop_workers(&j);
report:
	summarize(&j, &sum);
	report(&sum, arg);
	rc = exit_status(&j);
	if (rc == EXIT_SERVER && j.stop == STOP_NONE)
		errmsg("%llu line%s failed and went through unchanged: see '%s'",
		       (unsigned long long)j.cur.failed, j.cur.failed == 1 ? "" : "s",
		       j.errors_path);
out:
	stop_workers(&j);
	while (j.fifo_head != NULL) {
		struct batch *b = j.fifo_head;

		j.fifo_head = b->next;
		batch_free(b);
	}
	line_reader_free(&j.lr);
	EVP_MD_CTX_free(j.sha);
	out_close(&j.out);
	out_close(&j.errs);
	if (j.in_fd > STDIN_FILENO)
		close(j.in_fd);
	rewrap_state_free(&j.cur);
	if (j.state_path != o->state_path)
		kms_free((char *)j.state_path);
	if (j.errors_path != o->errors_path)
		kms_free((char *)j.errors_path);
	return rc;
}
