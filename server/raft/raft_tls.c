/* raft_tls.c - canonical/raft's raft_uv_transport over mutual TLS 1.3: a TCP
 * listener with bounds on pending connections, TLS handshakes, and one bridge
 * thread per link between a socketpair (raft's side) and the TLS connection,
 * which caps the length of raft's messages. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/log.h"
#include "kms/spiffe.h"
#include "raft/raft_tls.h"

#define PREAMBLE_MAGIC "KMSR"
#define ACK_MAGIC "KMSA"
#define MAGIC_LEN 4
#define ADDR_MAX KMS_RAFT_TLS_ADDRESS_MAX
#define PREAMBLE_FIXED KMS_RAFT_TLS_PREAMBLE_FIXED
/* Links of any kind; a 5-node cluster needs 8 plus handshakes. */
#define MAX_LINKS 64
/* Connections accepted per wake-up of the listener, so that first bytes
 * and deadlines are looked at between batches even under a flood. */
#define ACCEPT_BATCH 64
/* Refusals logged one by one per LOG_WINDOW_MS; the rest are counted, and
 * one summary line per window says what the listener closed. */
#define LOG_WINDOW_MS 10000
#define LOG_BURST 10
/* While a connection waits for a handshake thread, the listener looks
 * again this often. */
#define THREAD_WAIT_MS 20
/* canonical/raft's message preamble: type and header length, uint64 LE. */
#define RAFT_PREAMBLE 16
/* A cap below this could not pass an AppendEntries with one small entry. */
#define MIN_MESSAGE_CAP 1024
#define PUMP_BUF 16384

enum link_kind { LINK_IN, LINK_OUT };

/* Outcomes of a bounded TLS or socket wait. */
enum io_rc { IO_OK = 0, IO_FAIL, IO_TIMEOUT, IO_STOP, IO_EOF };

struct tls_transport;

/*
 * One thread and the connection it owns. Fields marked (mu) are shared with
 * the loop thread under tt->mu; the rest belong to the link's thread until
 * it has exited, then to the loop thread.
 */
struct link {
	struct tls_transport *tt;
	struct link *prev, *next; /* (mu) tt->links */
	enum link_kind kind;
	pthread_t thread;
	int tcp_fd;
	char peer[ADDR_MAX +
		  8]; /* "ip:port" or the address dialled, for log lines */

	/* Outgoing: what raft asked for. */
	struct raft_uv_connect *req;
	raft_id target_id;
	char target_addr[ADDR_MAX + 1];
	int cb_done; /* loop thread: req->cb has fired */

	/* The result for the loop thread. */
	int result_ready;  /* (mu) posted */
	int result_taken;  /* (mu) consumed by the loop */
	int result_status; /* 0 or RAFT_NOCONNECTION */
	int raft_fd;	   /* (mu) raft's end of the socketpair until taken */
	raft_id peer_id;
	char peer_addr[ADDR_MAX + 1];

	int authenticated; /* (mu) incoming: counted in n_pending_in until set
			    */
	int exited;	   /* (mu) the thread function has returned its work */

	/* Incoming, until authenticated: for the pending bounds. */
	int64_t accepted_ms; /* when the listener accepted it */
	char source[INET6_ADDRSTRLEN]; /* the peer's IP address */
	int evicted; /* (mu) the listener ended its handshake; tcp_fd shut */
};

/*
 * An accepted connection that has no thread yet: it waits in the listener
 * thread (which alone touches these) for its first byte, and then for a
 * handshake thread. See "Limits" in raft_tls.h.
 */
struct waiting {
	int fd;
	int ready;	/* its first byte has arrived */
	int64_t since; /* accepted */
	char source[INET6_ADDRSTRLEN];
	char peer[ADDR_MAX + 8];
};

/* What the listener closed in the current log window, and the refusals
 * not logged one by one ((mu)). */
struct log_window {
	int64_t start;
	unsigned lines;
	unsigned suppressed;
	unsigned evicted_source, evicted_all, silent, no_thread;
	char last_source[INET6_ADDRSTRLEN];
};

struct tls_transport {
	struct raft_uv_transport *t;
	uv_loop_t *loop;
	SSL_CTX *ctx; /* (mu) new links take it; kms_raft_tls_reload swaps it */
	kms_raft_tls_authorize_fn authorize;
	void *authorize_arg;

	raft_id id;
	char *address;
	raft_uv_accept_cb accept_cb;
	raft_uv_transport_close_cb close_cb;

	uv_async_t async; /* wakes the loop thread for results and reaping */
	int async_ready;
	int stop_fd; /* eventfd, readable once close begins: wakes every poll()
		      */
	int listen_fd;
	pthread_t listener;
	int listener_started;
	int close_started;
	int closed;

	/* Limits, from the options with their defaults filled in. */
	unsigned max_pending, max_per_source, max_handshakes;
	int64_t hello_ms, handshake_ms;
	uint64_t max_message;

	/* The listener thread's own: connections without a thread yet. */
	struct waiting *waiting; /* max_pending of them */
	unsigned n_waiting;
	struct pollfd *pfd; /* 2 + max_pending */

	pthread_mutex_t mu;
	struct link *links;    /* (mu) */
	unsigned n_links;      /* (mu) */
	unsigned n_pending_in; /* (mu) handshake threads not authenticated */
	int closing;	       /* (mu) */
	struct log_window log; /* (mu) */
};

/* ---- small helpers ---- */

static uint64_t or_default(uint64_t v, uint64_t def)
{
	return v != 0 ? v : def;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_errmsg(struct raft_uv_transport *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_errmsg(struct raft_uv_transport *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->errmsg, sizeof(t->errmsg), fmt, ap);
	va_end(ap);
}

static int set_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	return 0;
}

/* The last OpenSSL error of this thread, for a log line (never key bytes). */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

	return r != NULL ? r : "no detail";
}

/* The peer's address as "ip:port" into out, and its IP alone into source
 * (the key of the per-source bound). */
static void describe_peer(int fd, char *source, size_t scap, char *out,
			  size_t cap)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	unsigned port = 0;

	snprintf(out, cap, "unknown peer");
	snprintf(source, scap, "unknown");
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host)) ==
		    NULL)
			return;
		port = ntohs(in->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)) ==
		    NULL)
			return;
		port = ntohs(in6->sin6_port);
	} else {
		return;
	}
	snprintf(source, scap, "%s", host);
	snprintf(out, cap, "%s:%u", host, port);
}

/* Splits "host:port" or "[v6]:port" and resolves it. */
static int resolve(const char *address, int passive, struct addrinfo **out)
{
	char host[ADDR_MAX + 1];
	const char *colon = strrchr(address, ':');
	size_t hlen;
	struct addrinfo hints;

	if (colon == NULL || colon == address || colon[1] == '\0')
		return -1;
	hlen = (size_t)(colon - address);
	if (hlen >= sizeof(host))
		return -1;
	memcpy(host, address, hlen);
	host[hlen] = '\0';
	if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
		memmove(host, host + 1, hlen - 2);
		host[hlen - 2] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	return getaddrinfo(host, colon + 1, &hints, out) == 0 ? 0 : -1;
}

/* Creates a thread with every signal blocked: a write to a peer that reset
 * the connection (inside SSL_write) must not raise SIGPIPE in the process,
 * whatever its disposition, and process signals belong to the main thread. */
static int spawn(pthread_t *th, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(th, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

/*
 * Waits until fd is ready for events, the transport stops, or the deadline
 * passes (deadline < 0: none).
 */
static enum io_rc wait_fd(struct tls_transport *tt, int fd, short events,
			  int64_t deadline)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = events},
				      {.fd = tt->stop_fd, .events = POLLIN}};
		int timeout = -1, n;

		if (deadline >= 0) {
			int64_t left = deadline - now_ms();

			if (left <= 0)
				return IO_TIMEOUT;
			timeout = left > 60000 ? 60000 : (int)left;
		}
		n = poll(p, 2, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return IO_FAIL;
		if (p[1].revents != 0)
			return IO_STOP;
		if (p[0].revents != 0)
			return IO_OK;
	}
}

/* After an SSL call returned ret <= 0: waits for what it wants. */
static enum io_rc ssl_wait(struct tls_transport *tt, SSL *ssl, int fd, int ret,
			   int64_t deadline)
{
	switch (SSL_get_error(ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		return wait_fd(tt, fd, POLLIN, deadline);
	case SSL_ERROR_WANT_WRITE:
		return wait_fd(tt, fd, POLLOUT, deadline);
	case SSL_ERROR_ZERO_RETURN:
		return IO_EOF;
	case SSL_ERROR_SYSCALL:
		return ERR_peek_last_error() == 0 ? IO_EOF : IO_FAIL;
	default:
		return IO_FAIL;
	}
}

static enum io_rc tls_handshake(struct tls_transport *tt, SSL *ssl, int fd,
				int64_t deadline)
{
	for (;;) {
		int ret;
		enum io_rc rc;

		ERR_clear_error();
		ret = SSL_do_handshake(ssl);
		if (ret == 1)
			return IO_OK;
		rc = ssl_wait(tt, ssl, fd, ret, deadline);
		if (rc != IO_OK)
			return rc == IO_EOF ? IO_FAIL : rc;
	}
}

static enum io_rc tls_read_full(struct tls_transport *tt, SSL *ssl, int fd,
				uint8_t *p, size_t n, int64_t deadline)
{
	size_t got = 0;

	while (got < n) {
		int ret;
		enum io_rc rc;

		ERR_clear_error();
		ret = SSL_read(ssl, p + got, (int)(n - got));
		if (ret > 0) {
			got += (size_t)ret;
			continue;
		}
		rc = ssl_wait(tt, ssl, fd, ret, deadline);
		if (rc != IO_OK)
			return rc;
	}
	return IO_OK;
}

static enum io_rc tls_write_full(struct tls_transport *tt, SSL *ssl, int fd,
				 const uint8_t *p, size_t n, int64_t deadline)
{
	size_t put = 0;

	while (put < n) {
		int ret;
		enum io_rc rc;

		ERR_clear_error();
		ret = SSL_write(ssl, p + put, (int)(n - put));
		if (ret > 0) {
			put += (size_t)ret;
			continue;
		}
		rc = ssl_wait(tt, ssl, fd, ret, deadline);
		if (rc != IO_OK)
			return rc == IO_EOF ? IO_FAIL : rc;
	}
	return IO_OK;
}

static const char *io_rc_name(enum io_rc rc)
{
	switch (rc) {
	case IO_OK:
		return "ok";
	case IO_TIMEOUT:
		return "timed out";
	case IO_STOP:
		return "transport closing";
	case IO_EOF:
		return "peer closed the connection";
	case IO_FAIL:
	default:
		return "failed";
	}
}

/*
 * The peer's SPIFFE ID by the X509-SVID rules (server/identity/spiffe.c, the one
 * parser): its one URI SAN. Returns 0 and fills out (KMS_SPIFFE_ID_MAX + 1
 * bytes), or -1.
 */
static int peer_spiffe_id(SSL *ssl, char *out)
{
	X509 *cert = SSL_get0_peer_certificate(ssl);
	kms_spiffe_id id;

	if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK ||
	    kms_svid_from_x509(cert, &id, NULL) != KMS_OK)
		return -1;
	memcpy(out, id.id, id.len + 1);
	return 0;
}

static int authorized(struct tls_transport *tt, const char *spiffe, raft_id id)
{
	return tt->authorize(tt->authorize_arg, spiffe, id) == 1;
}

/* ---- logging that a flood cannot flood ---- */

static int window_counted(const struct log_window *w)
{
	return w->evicted_source + w->evicted_all + w->silent + w->no_thread +
		   w->suppressed >
	       0;
}

/*
 * Ends the log window once LOG_WINDOW_MS have passed since it started: the
 * summary of what it counted goes to out ("" when nothing) and a new one
 * starts now. (mu)
 */
static void window_roll_locked(struct tls_transport *tt, int64_t now,
			       char *out, size_t cap)
{
	struct log_window *w = &tt->log;

	out[0] = '\0';
	if (now - w->start < LOG_WINDOW_MS)
		return;
	if (window_counted(w))
		snprintf(out, cap,
			 "raft-tls: closed %u pending connections over the "
			 "per-source bound of %u (last from %s), %u over the "
			 "bound of %u in all, %u silent for %lld ms, %u "
			 "waiting too long for a handshake thread; %u refusals "
			 "not logged (one such line per %d s at most)",
			 w->evicted_source, tt->max_per_source,
			 w->last_source[0] != '\0' ? w->last_source : "-",
			 w->evicted_all, tt->max_pending, w->silent,
			 (long long)tt->hello_ms, w->no_thread, w->suppressed,
			 LOG_WINDOW_MS / 1000);
	memset(w, 0, sizeof(*w));
	w->start = now;
}

/*
 * The listener, after each wake-up: writes the summary when something was
 * counted and the window has passed. A quiet listener leaves the window
 * alone, so the first event after a quiet spell is logged at once.
 */
static void log_flush(struct tls_transport *tt, int64_t now)
{
	char summary[512] = "";

	pthread_mutex_lock(&tt->mu);
	if (window_counted(&tt->log))
		window_roll_locked(tt, now, summary, sizeof(summary));
	pthread_mutex_unlock(&tt->mu);
	if (summary[0] != '\0')
		KMS_LOG_W("%s", summary);
}

/*
 * Whether a refusal of a pending connection (of link l; NULL: one with no
 * link yet) may be logged now: LOG_BURST lines per window, the rest
 * counted for the summary. Never for a link the listener evicted (the
 * summary counts those).
 */
static int refusal_log_ok(struct tls_transport *tt, const struct link *l)
{
	char summary[512];
	int ok = 0;

	pthread_mutex_lock(&tt->mu);
	window_roll_locked(tt, now_ms(), summary, sizeof(summary));
	if (l == NULL || !l->evicted) {
		ok = tt->log.lines < LOG_BURST;
		if (ok)
			tt->log.lines++;
		else
			tt->log.suppressed++;
	}
	pthread_mutex_unlock(&tt->mu);
	if (summary[0] != '\0')
		KMS_LOG_W("%s", summary);
	return ok;
}

#define REFUSED(l, ...)                                                        \
	do {                                                                   \
		if (refusal_log_ok((l)->tt, l))                                \
			KMS_LOG_W(__VA_ARGS__);                                \
	} while (0)

/* ---- links and the loop thread ---- */

static void wake_loop(struct tls_transport *tt)
{
	/* Only after uv_async_init, and never after close joined the threads
	 * and closed the handle (close joins every thread first). */
	if (tt->async_ready)
		uv_async_send(&tt->async);
}

/* Called by a link thread: hands raft_fd (or a failure) to the loop. */
static void post_result(struct link *l, int status, int raft_fd)
{
	struct tls_transport *tt = l->tt;

	pthread_mutex_lock(&tt->mu);
	l->result_status = status;
	l->raft_fd = raft_fd;
	l->result_ready = 1;
	pthread_mutex_unlock(&tt->mu);
	wake_loop(tt);
}

/* An incoming link leaves the pending set: from now on the listener no
 * longer evicts it, so its thread alone touches tcp_fd again. */
static void leave_pending(struct link *l)
{
	struct tls_transport *tt = l->tt;

	pthread_mutex_lock(&tt->mu);
	if (l->kind == LINK_IN && !l->authenticated) {
		l->authenticated = 1;
		tt->n_pending_in--;
	}
	pthread_mutex_unlock(&tt->mu);
}

static void link_exit(struct link *l)
{
	struct tls_transport *tt = l->tt;

	leave_pending(l);
	pthread_mutex_lock(&tt->mu);
	l->exited = 1;
	pthread_mutex_unlock(&tt->mu);
	wake_loop(tt);
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* ---- canonical/raft's message stream, parsed for lengths (raft_tls.h) ---- */

enum frame_part { FR_PREAMBLE, FR_HEADER, FR_PAYLOAD };

/* Where the bytes raft reads from one link are in raft's messages. */
struct frame_rd {
	uint64_t cap;	 /* max_message_bytes */
	int write_only;	 /* a link this node dialled: raft reads nothing */
	enum frame_part part;
	uint64_t off;	 /* bytes of the current part seen */
	uint8_t pre[RAFT_PREAMBLE];
	uint64_t type, hdr_len;
	uint64_t n_entries, conf_len; /* AppendEntries, InstallSnapshot */
	uint64_t field;		      /* the integer being read, LE */
	uint64_t payload;	      /* announced so far */
	char why[160];		      /* set when frame_feed fails */
};

static void frame_init(struct frame_rd *fr, uint64_t cap, int write_only)
{
	memset(fr, 0, sizeof(*fr));
	fr->cap = cap;
	fr->write_only = write_only;
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* Whether raft can decode a header of h bytes of this type without reading
 * past it; -1 for a type raft does not know. (uv_encoding.c's decoders
 * read fixed fields without checking the length they were given.) */
static int header_len_ok(uint64_t type, uint64_t h)
{
	switch (type) {
	case RAFT_IO_APPEND_ENTRIES:
		return h >= 40; /* + 16 per entry, checked once n is known */
	case RAFT_IO_APPEND_ENTRIES_RESULT:
	case RAFT_IO_TIMEOUT_NOW:
		return h >= 24;
	case RAFT_IO_REQUEST_VOTE: /* v1 without flags, or with them */
		return h == 32 || h >= 40;
	case RAFT_IO_REQUEST_VOTE_RESULT:
		return h == 16 || h >= 24;
	case RAFT_IO_INSTALL_SNAPSHOT:
		return h >= 48; /* + the configuration, checked once known */
	default:
		return -1;
	}
}

/* The room left under the cap for payload bytes not yet announced. */
static uint64_t payload_room(const struct frame_rd *fr)
{
	return fr->cap - RAFT_PREAMBLE - fr->hdr_len - fr->payload;
}

static int frame_fail_size(struct frame_rd *fr, uint64_t more)
{
	uint64_t sure = RAFT_PREAMBLE + fr->hdr_len;

	/* Saturate: the sum only names a size in the log. */
	sure = sure + fr->payload < sure ? UINT64_MAX : sure + fr->payload;
	sure = sure + more < sure ? UINT64_MAX : sure + more;
	snprintf(fr->why, sizeof(fr->why),
		 "a message (type %llu) of at least %llu bytes, over the cap "
		 "of %llu",
		 (unsigned long long)fr->type, (unsigned long long)sure,
		 (unsigned long long)fr->cap);
	return -1;
}

/* The preamble is complete: check type and header length. */
static int frame_preamble_done(struct frame_rd *fr)
{
	int ok;

	fr->type = get_le64(fr->pre);
	fr->hdr_len = get_le64(fr->pre + 8);
	fr->n_entries = fr->conf_len = fr->field = fr->payload = 0;
	ok = header_len_ok(fr->type, fr->hdr_len);
	if (ok < 0) {
		snprintf(fr->why, sizeof(fr->why),
			 "a message of unknown type %llu",
			 (unsigned long long)fr->type);
		return -1;
	}
	if (fr->hdr_len > fr->cap - RAFT_PREAMBLE) {
		uint64_t h = fr->hdr_len;

		fr->hdr_len = 0;
		return frame_fail_size(fr, h);
	}
	if (!ok) {
		snprintf(fr->why, sizeof(fr->why),
			 "a message (type %llu) with a header of %llu bytes, "
			 "too short for its fields",
			 (unsigned long long)fr->type,
			 (unsigned long long)fr->hdr_len);
		return -1;
	}
	fr->part = FR_HEADER;
	fr->off = 0;
	return 0;
}

/* The next header offset, at or after off, that holds a byte of a field
 * the parser reads; hdr_len when there is none. */
static uint64_t next_field(const struct frame_rd *fr, uint64_t off)
{
	uint64_t rel;

	switch (fr->type) {
	case RAFT_IO_APPEND_ENTRIES: /* n at 32; entry i's length at
					40 + 16 i + 12 */
		if (off < 32)
			return 32;
		if (off < 40)
			return off;
		if (off >= 40 + 16 * fr->n_entries)
			return fr->hdr_len;
		rel = (off - 40) % 16;
		return rel >= 12 ? off : off + (12 - rel);
	case RAFT_IO_INSTALL_SNAPSHOT: /* C at 32; D at 40 + C */
		if (off < 32)
			return 32;
		if (off < 40)
			return off;
		if (off < 40 + fr->conf_len)
			return 40 + fr->conf_len;
		if (off < 48 + fr->conf_len)
			return off;
		return fr->hdr_len;
	default:
		return fr->hdr_len;
	}
}

/* One byte of a field, at header offset fr->off (a next_field offset). */
static int frame_field_byte(struct frame_rd *fr, uint8_t b)
{
	uint64_t off = fr->off, first = 0, last;

	if (off < 40) {
		first = 32;
	} else if (fr->type == RAFT_IO_APPEND_ENTRIES) {
		first = off - (off - 40) % 16 + 12;
	} else {
		first = 40 + fr->conf_len;
	}
	fr->field |= (uint64_t)b << (8 * (off - first));
	last = first + (off < 40 || fr->type == RAFT_IO_INSTALL_SNAPSHOT ? 7
									 : 3);
	if (off != last)
		return 0;
	if (off < 40) {
		int ae = fr->type == RAFT_IO_APPEND_ENTRIES;
		/* AppendEntries: the n entry headers must lie inside the
		 * header (and raft reads n as an unsigned int).
		 * InstallSnapshot: so must the configuration, and the
		 * snapshot's length after it. */
		int fits = ae ? fr->field <= (fr->hdr_len - 40) / 16 &&
				    fr->field <= UINT32_MAX
			      : fr->field <= fr->hdr_len - 48;

		if (!fits) {
			snprintf(fr->why, sizeof(fr->why),
				 "an %s header of %llu bytes announcing %llu %s",
				 ae ? "AppendEntries" : "InstallSnapshot",
				 (unsigned long long)fr->hdr_len,
				 (unsigned long long)fr->field,
				 ae ? "entries" : "bytes of configuration");
			return -1;
		}
		if (ae)
			fr->n_entries = fr->field;
		else
			fr->conf_len = fr->field;
	} else {
		/* An entry's length, or the snapshot's. */
		if (fr->field > payload_room(fr))
			return frame_fail_size(fr, fr->field);
		fr->payload += fr->field;
	}
	fr->field = 0;
	return 0;
}

/*
 * Follows n bytes that the peer sent for raft to read. 0, or -1 with
 * fr->why saying what crossed the line: the caller drops the link before
 * raft sees these bytes, so raft never allocates for such a message.
 */
static int frame_feed(struct frame_rd *fr, const uint8_t *p, size_t n)
{
	size_t i = 0;

	if (fr->write_only && n > 0) {
		snprintf(fr->why, sizeof(fr->why),
			 "%zu bytes on a link that carries only this node's "
			 "messages",
			 n);
		return -1;
	}
	while (i < n) {
		uint64_t take, next;

		switch (fr->part) {
		case FR_PREAMBLE:
			take = RAFT_PREAMBLE - fr->off;
			if (take > n - i)
				take = n - i;
			memcpy(fr->pre + fr->off, p + i, (size_t)take);
			fr->off += take;
			i += (size_t)take;
			if (fr->off == RAFT_PREAMBLE &&
			    frame_preamble_done(fr) != 0)
				return -1;
			break;
		case FR_HEADER:
			next = next_field(fr, fr->off);
			if (next > fr->off) {
				take = next - fr->off;
				if (take > n - i)
					take = n - i;
				fr->off += take;
				i += (size_t)take;
			} else {
				if (frame_field_byte(fr, p[i]) != 0)
					return -1;
				fr->off++;
				i++;
			}
			if (fr->off == fr->hdr_len) {
				fr->part =
				    fr->payload > 0 ? FR_PAYLOAD : FR_PREAMBLE;
				fr->off = 0;
			}
			break;
		case FR_PAYLOAD:
			take = fr->payload - fr->off;
			if (take > n - i)
				take = n - i;
			fr->off += take;
			i += (size_t)take;
			if (fr->off == fr->payload) {
				fr->part = FR_PREAMBLE;
				fr->off = 0;
			}
			break;
		}
	}
	return 0;
}

/* ---- the same parser, for tests and the fuzz target (raft_tls.h) ---- */

struct kms_raft_tls_stream {
	struct frame_rd fr;
	int failed; /* frame_feed refused: so is everything after */
};

int kms_raft_tls_stream_new(uint64_t max_message_bytes, int dialled,
			    kms_raft_tls_stream **out, kms_err *err)
{
	kms_raft_tls_stream *s;

	*out = NULL;
	/* The bound kms_raft_tls_init puts on the option. */
	if (max_message_bytes != 0 && max_message_bytes < MIN_MESSAGE_CAP)
		return kms_errf(err, KMS_ERR_INVALID,
				"raft-tls: max_message_bytes %llu is below %u",
				(unsigned long long)max_message_bytes,
				MIN_MESSAGE_CAP);
	s = kms_calloc(1, sizeof(*s));
	if (s == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "raft-tls: out of memory");
	frame_init(&s->fr,
		   or_default(max_message_bytes, KMS_RAFT_TLS_MAX_MESSAGE_BYTES),
		   dialled);
	*out = s;
	return KMS_OK;
}

int kms_raft_tls_stream_feed(kms_raft_tls_stream *s, const uint8_t *p,
			     size_t n, const char **why)
{
	*why = NULL;
	if (!s->failed && frame_feed(&s->fr, p, n) != 0)
		s->failed = 1;
	if (s->failed)
		*why = s->fr.why;
	return s->failed ? -1 : 0;
}

void kms_raft_tls_stream_free(kms_raft_tls_stream *s)
{
	kms_free(s);
}

/*
 * Moves bytes both ways between the TLS connection and our end of the
 * socketpair until either side closes or fails, or the transport stops;
 * then the caller closes both, so the other side sees the end too.
 * Both sockets are non-blocking: a thread blocked in SSL_read could not
 * forward raft's outgoing bytes meanwhile.
 */
static int bridge(struct link *l, SSL *ssl, int local_fd)
{
	struct tls_transport *tt = l->tt;
	uint8_t *in = kms_malloc(PUMP_BUF), *out = kms_malloc(PUMP_BUF);
	size_t in_off = 0, in_len = 0, out_off = 0, out_len = 0;
	int tls_eof = 0, local_eof = 0, tls_fatal = 0;
	const char *why = NULL;
	struct frame_rd fr;

	frame_init(&fr, tt->max_message, l->kind == LINK_OUT);
	if (in == NULL || out == NULL || set_nonblocking(local_fd) != 0) {
		why = "out of memory";
		goto out;
	}
	for (;;) {
		short tls_ev = 0, loc_ev = 0;
		int progressed = 0;

		/* TLS -> raft */
		if (in_len == 0 && !tls_eof) {
			int n;

			ERR_clear_error();
			n = SSL_read(ssl, in, PUMP_BUF);
			if (n > 0 && frame_feed(&fr, in, (size_t)n) != 0) {
				KMS_LOG_W("raft-tls: dropped the link %s raft "
					  "node %llu (%s): %s",
					  l->kind == LINK_IN ? "from" : "to",
					  l->kind == LINK_IN ? l->peer_id
							     : l->target_id,
					  l->peer, fr.why);
				goto out;
			}
			if (n > 0) {
				in_off = 0;
				in_len = (size_t)n;
				progressed = 1;
			} else {
				switch (SSL_get_error(ssl, n)) {
				case SSL_ERROR_WANT_READ:
					tls_ev |= POLLIN;
					break;
				case SSL_ERROR_WANT_WRITE:
					tls_ev |= POLLOUT;
					break;
				case SSL_ERROR_ZERO_RETURN:
					tls_eof = 1;
					break;
				case SSL_ERROR_SYSCALL:
					if (ERR_peek_last_error() == 0) {
						tls_eof = 1;
						break;
					}
					why = ssl_reason();
					tls_fatal = 1;
					goto out;
				default:
					why = ssl_reason();
					tls_fatal = 1;
					goto out;
				}
			}
		}
		if (in_len > 0) {
			ssize_t w = send(local_fd, in + in_off, in_len,
					 MSG_NOSIGNAL | MSG_DONTWAIT);

			if (w > 0) {
				in_off += (size_t)w;
				in_len -= (size_t)w;
				progressed = 1;
			} else if (w < 0 &&
				   (errno == EAGAIN || errno == EWOULDBLOCK)) {
				loc_ev |= POLLOUT;
			} else if (w < 0 && errno != EINTR) {
				goto out; /* raft closed its end */
			}
		}
		/* raft -> TLS */
		if (out_len == 0 && !local_eof) {
			ssize_t r = recv(local_fd, out, PUMP_BUF, MSG_DONTWAIT);

			if (r > 0) {
				out_off = 0;
				out_len = (size_t)r;
				progressed = 1;
			} else if (r == 0) {
				local_eof = 1;
			} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
				loc_ev |= POLLIN;
			} else if (errno != EINTR) {
				goto out;
			}
		}
		if (out_len > 0) {
			int w;

			ERR_clear_error();
			w = SSL_write(ssl, out + out_off, (int)out_len);
			if (w > 0) {
				out_off += (size_t)w;
				out_len -= (size_t)w;
				progressed = 1;
			} else {
				switch (SSL_get_error(ssl, w)) {
				case SSL_ERROR_WANT_READ:
					tls_ev |= POLLIN;
					break;
				case SSL_ERROR_WANT_WRITE:
					tls_ev |= POLLOUT;
					break;
				default:
					why = "TLS write failed";
					tls_fatal = 1;
					goto out;
				}
			}
		}
		/* Either side closed and what it sent is delivered: close both.
		 */
		if ((tls_eof && in_len == 0) || (local_eof && out_len == 0))
			goto out;
		if (progressed)
			continue;
		{
			/* A negative fd is ignored by poll(): a side we do not
			 * wait on must not wake us with POLLHUP over and over.
			 */
			struct pollfd p[3] = {
			    {.fd = tls_ev ? l->tcp_fd : -1, .events = tls_ev},
			    {.fd = loc_ev ? local_fd : -1, .events = loc_ev},
			    {.fd = tt->stop_fd, .events = POLLIN}};

			if (poll(p, 3, -1) < 0 && errno != EINTR) {
				why = "poll failed";
				goto out;
			}
			if (p[2].revents != 0)
				goto out;
		}
	}
out:
	if (why != NULL)
		KMS_LOG_D("raft-tls: link with %s ended: %s", l->peer, why);
	kms_free(in);
	kms_free(out);
	return tls_fatal ? 0 : 1;
}

/* Our end and raft's end of a link. */
static int make_pair(int *ours, int *raft_end)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	*ours = sv[0];
	*raft_end = sv[1];
	return 0;
}

static SSL *new_ssl(struct tls_transport *tt, int fd, int server)
{
	SSL *ssl;

	/* The SSL holds its own reference to the context: a reload that
	 * swaps tt->ctx meanwhile frees nothing this link uses. */
	pthread_mutex_lock(&tt->mu);
	ssl = SSL_new(tt->ctx);
	pthread_mutex_unlock(&tt->mu);
	if (ssl == NULL)
		return NULL;
	if (SSL_set_fd(ssl, fd) != 1) {
		SSL_free(ssl);
		return NULL;
	}
	if (server)
		SSL_set_accept_state(ssl);
	else
		SSL_set_connect_state(ssl);
	return ssl;
}

/* Sends close_notify once without waiting: the peer learns of a clean end
 * if the socket takes it, and the TCP close follows either way. */
static void ssl_end(SSL *ssl, int clean)
{
	if (ssl == NULL)
		return;
	ERR_clear_error();
	/* SSL_shutdown must not follow a fatal TLS error (SSL_shutdown(3)). */
	if (clean && SSL_is_init_finished(ssl))
		(void)SSL_shutdown(ssl);
	SSL_free(ssl);
	ERR_clear_error();
}

static int printable(uint8_t c)
{
	return c >= 0x21 && c <= 0x7e;
}

static int valid_address(const uint8_t *p, size_t n)
{
	if (n == 0 || n > ADDR_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!printable(p[i]))
			return 0;
	return 1;
}

/* ---- the preamble (raft_tls.h): pure, for in_main, out_main and tests ---- */

int kms_raft_tls_preamble_parse(const uint8_t *p, size_t n,
				kms_raft_tls_preamble *out, size_t *more,
				kms_err *err)
{
	kms_reader rd;
	const uint8_t *magic;
	uint32_t hi, lo;
	uint8_t l1, l2;
	unsigned long long id;
	size_t alen, whole;

	*more = 0;
	/* The magic as far as it has come: a plaintext client is told apart
	 * by its first byte. */
	if (n > 0 &&
	    memcmp(p, PREAMBLE_MAGIC, n < MAGIC_LEN ? n : MAGIC_LEN) != 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"it does not start with \"" PREAMBLE_MAGIC "\"");
	if (n < PREAMBLE_FIXED) {
		*more = PREAMBLE_FIXED - n;
		return KMS_OK;
	}
	kms_reader_init(&rd, p, n);
	if (kms_reader_bytes(&rd, MAGIC_LEN, &magic) != KMS_OK ||
	    kms_reader_u32(&rd, &hi) != KMS_OK ||
	    kms_reader_u32(&rd, &lo) != KMS_OK ||
	    kms_reader_u8(&rd, &l1) != KMS_OK ||
	    kms_reader_u8(&rd, &l2) != KMS_OK)
		return kms_errf(err, KMS_ERR_INTERNAL,
				"the fixed part cannot be read"); /* n >= 14 */
	id = ((unsigned long long)hi << 32) | lo;
	alen = ((size_t)l1 << 8) | l2;
	if (id == 0)
		return kms_errf(err, KMS_ERR_INVALID, "raft id 0");
	if (alen == 0 || alen > ADDR_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"raft id %llu, address length %zu (1 to %d)", id,
				alen, ADDR_MAX);
	whole = PREAMBLE_FIXED + alen;
	if (n > whole)
		return kms_errf(err, KMS_ERR_INVALID,
				"%zu bytes past its end", n - whole);
	for (size_t i = PREAMBLE_FIXED; i < n; i++)
		if (!printable(p[i]))
			return kms_errf(err, KMS_ERR_INVALID,
					"raft id %llu, address byte %zu is "
					"0x%02x, not printable ASCII",
					id, i - PREAMBLE_FIXED, p[i]);
	if (n < whole) {
		*more = whole - n;
		return KMS_OK;
	}
	out->id = id;
	memcpy(out->address, p + PREAMBLE_FIXED, alen);
	out->address[alen] = '\0';
	return KMS_OK;
}

int kms_raft_tls_preamble_write(unsigned long long id, const char *address,
				uint8_t *buf, size_t cap, size_t *len,
				kms_err *err)
{
	size_t alen = address != NULL ? strlen(address) : 0;
	kms_writer w;

	*len = 0;
	if (id == 0 || !valid_address((const uint8_t *)address, alen))
		return kms_errf(err, KMS_ERR_INVALID,
				"a preamble needs a raft id and an address of "
				"1 to %d printable bytes",
				ADDR_MAX);
	kms_writer_init(&w, buf, cap);
	if (kms_writer_bytes(&w, PREAMBLE_MAGIC, MAGIC_LEN) != KMS_OK ||
	    kms_writer_u32(&w, (uint32_t)(id >> 32)) != KMS_OK ||
	    kms_writer_u32(&w, (uint32_t)id) != KMS_OK ||
	    kms_writer_u8(&w, (uint8_t)(alen >> 8)) != KMS_OK ||
	    kms_writer_u8(&w, (uint8_t)alen) != KMS_OK ||
	    kms_writer_bytes(&w, address, alen) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID,
				"the preamble does not fit in %zu bytes", cap);
	*len = w.len;
	return KMS_OK;
}

/* The accepting side: handshake, identity, preamble, then the bridge. */
static void *in_main(void *arg)
{
	struct link *l = arg;
	struct tls_transport *tt = l->tt;
	int64_t deadline = l->accepted_ms + tt->handshake_ms;
	uint8_t pre[KMS_RAFT_TLS_PREAMBLE_MAX];
	kms_raft_tls_preamble preamble;
	kms_err perr = {0};
	size_t alen = 0;
	char spiffe[KMS_SPIFFE_ID_MAX + 1];
	char q[KMS_QUOTE_MAX + 4];
	raft_id claimed;
	int local_fd = -1, raft_fd = -1, clean = 0;
	enum io_rc rc;
	SSL *ssl = NULL;

	ssl = new_ssl(tt, l->tcp_fd, 1);
	if (ssl == NULL) {
		REFUSED(l, "raft-tls: refused %s: cannot set up TLS: %s",
			  l->peer, ssl_reason());
		goto out;
	}
	rc = tls_handshake(tt, ssl, l->tcp_fd, deadline);
	if (rc != IO_OK) {
		long v = SSL_get_verify_result(ssl);

		if (rc == IO_STOP)
			goto out;
		if (rc == IO_TIMEOUT)
			REFUSED(l, "raft-tls: refused %s: TLS handshake timed out",
			    l->peer);
		else if (v != X509_V_OK)
			REFUSED(l, "raft-tls: refused %s: TLS handshake failed: "
				  "certificate "
				  "verify failed: %s",
				  l->peer, X509_verify_cert_error_string(v));
		else
			REFUSED(l, 
			    "raft-tls: refused %s: TLS handshake failed: %s",
			    l->peer, ssl_reason());
		goto out;
	}
	if (peer_spiffe_id(ssl, spiffe) != 0) {
		REFUSED(l, "raft-tls: refused %s: certificate does not carry "
			  "exactly one "
			  "SPIFFE ID",
			  l->peer);
		goto out;
	}
	/* The fixed part first: an address whose length is not checked yet is
	 * never read. */
	rc = tls_read_full(tt, ssl, l->tcp_fd, pre, PREAMBLE_FIXED, deadline);
	if (rc != IO_OK) {
		if (rc != IO_STOP)
			REFUSED(l, "raft-tls: refused %s (%s): reading the "
				  "preamble: %s%s%s",
				  l->peer, kms_quote(spiffe, q), io_rc_name(rc),
				  rc == IO_FAIL ? ": " : "",
				  rc == IO_FAIL ? ssl_reason() : "");
		goto out;
	}
	if (kms_raft_tls_preamble_parse(pre, PREAMBLE_FIXED, &preamble, &alen,
					&perr) != KMS_OK) {
		REFUSED(l, "raft-tls: refused %s (%s): malformed preamble: %s",
			l->peer, kms_quote(spiffe, q), perr.msg);
		goto out;
	}
	rc = tls_read_full(tt, ssl, l->tcp_fd, pre + PREAMBLE_FIXED, alen,
			   deadline);
	if (rc != IO_OK) {
		if (rc != IO_STOP)
			REFUSED(l, "raft-tls: refused %s (%s): bad preamble "
				  "address: %s",
				  l->peer, kms_quote(spiffe, q), io_rc_name(rc));
		goto out;
	}
	if (kms_raft_tls_preamble_parse(pre, PREAMBLE_FIXED + alen, &preamble,
					&alen, &perr) != KMS_OK ||
	    alen != 0) {
		REFUSED(l, "raft-tls: refused %s (%s): malformed preamble: %s",
			l->peer, kms_quote(spiffe, q),
			alen != 0 ? "cut short" : perr.msg);
		goto out;
	}
	claimed = preamble.id;
	if (!authorized(tt, spiffe, claimed)) {
		REFUSED(l, "raft-tls: refused %s: certificate %s is not "
			  "authorized as raft "
			  "node %llu",
			  l->peer, kms_quote(spiffe, q), claimed);
		goto out;
	}
	rc = tls_write_full(tt, ssl, l->tcp_fd, (const uint8_t *)ACK_MAGIC,
			    MAGIC_LEN, deadline);
	if (rc != IO_OK) {
		if (rc != IO_STOP)
			REFUSED(l, "raft-tls: dropped %s (raft node %llu): "
				  "acknowledging: %s",
				  l->peer, claimed, io_rc_name(rc));
		goto out;
	}
	if (make_pair(&local_fd, &raft_fd) != 0) {
		REFUSED(l, 
		    "raft-tls: dropped %s (raft node %llu): socketpair: %s",
		    l->peer, claimed, strerror(errno));
		goto out;
	}
	l->peer_id = claimed;
	snprintf(l->peer_addr, sizeof(l->peer_addr), "%s", preamble.address);
	leave_pending(l);
	KMS_LOG_D("raft-tls: accepted raft node %llu from %s", claimed,
		  l->peer);
	post_result(l, 0, raft_fd);
	clean = bridge(l, ssl, local_fd);
out:
	ssl_end(ssl, clean);
	close_fd(&local_fd);
	leave_pending(l); /* before tcp_fd closes: see evict_one */
	close_fd(&l->tcp_fd);
	link_exit(l);
	return NULL;
}

/* Non-blocking TCP connect to one of address's addresses, bounded. */
static int tcp_connect(struct link *l, int64_t deadline, const char **why)
{
	struct tls_transport *tt = l->tt;
	struct addrinfo *ai = NULL;
	int fd = -1;

	*why = "cannot resolve the address";
	if (resolve(l->target_addr, 0, &ai) != 0)
		return -1;
	*why = "connection failed";
	for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
		int soerr = 0, one = 1;
		socklen_t len = sizeof(soerr);
		enum io_rc rc;

		fd = socket(a->ai_family,
			    a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 &&
		    errno != EINPROGRESS) {
			*why = strerror(errno);
			close_fd(&fd);
			continue;
		}
		rc = wait_fd(tt, fd, POLLOUT, deadline);
		if (rc == IO_OK &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
		    soerr == 0) {
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
					 sizeof(one));
			break;
		}
		*why = rc == IO_OK ? strerror(soerr) : io_rc_name(rc);
		close_fd(&fd);
		if (rc == IO_STOP || rc == IO_TIMEOUT)
			break;
	}
	freeaddrinfo(ai);
	return fd;
}

/* The connecting side: TCP, handshake, the server's identity, preamble,
 * acknowledgement, then the bridge. */
static void *out_main(void *arg)
{
	struct link *l = arg;
	struct tls_transport *tt = l->tt;
	int64_t deadline = now_ms() + tt->handshake_ms;
	uint8_t pre[KMS_RAFT_TLS_PREAMBLE_MAX];
	uint8_t ack[MAGIC_LEN];
	char spiffe[KMS_SPIFFE_ID_MAX + 1];
	char q[KMS_QUOTE_MAX + 4];
	size_t pre_len = 0;
	kms_err perr = {0};
	int local_fd = -1, raft_fd = -1, clean = 0;
	const char *why = NULL;
	enum io_rc rc;
	SSL *ssl = NULL;

	l->tcp_fd = tcp_connect(l, deadline, &why);
	if (l->tcp_fd < 0)
		goto fail;
	ssl = new_ssl(tt, l->tcp_fd, 0);
	if (ssl == NULL) {
		why = ssl_reason();
		goto fail;
	}
	rc = tls_handshake(tt, ssl, l->tcp_fd, deadline);
	if (rc != IO_OK) {
		long v = SSL_get_verify_result(ssl);

		why = rc != IO_FAIL    ? io_rc_name(rc)
		      : v != X509_V_OK ? X509_verify_cert_error_string(v)
				       : ssl_reason();
		if (rc != IO_STOP)
			KMS_LOG_W("raft-tls: connect to raft node %llu at %s: "
				  "TLS handshake "
				  "failed: %s",
				  l->target_id, l->target_addr, why);
		goto fail;
	}
	if (peer_spiffe_id(ssl, spiffe) != 0) {
		why = "no single SPIFFE ID";
		KMS_LOG_W("raft-tls: connect to raft node %llu at %s: server "
			  "certificate "
			  "does not carry exactly one SPIFFE ID",
			  l->target_id, l->target_addr);
		goto fail;
	}
	if (!authorized(tt, spiffe, l->target_id)) {
		why = "not authorized";
		KMS_LOG_W("raft-tls: connect to raft node %llu at %s: server "
			  "certificate %s "
			  "is not authorized as that node",
			  l->target_id, l->target_addr, kms_quote(spiffe, q));
		goto fail;
	}
	if (kms_raft_tls_preamble_write(tt->id, tt->address, pre, sizeof(pre),
					&pre_len, &perr) != KMS_OK) {
		why = perr.msg;
		goto fail;
	}
	rc = tls_write_full(tt, ssl, l->tcp_fd, pre, pre_len, deadline);
	if (rc == IO_OK)
		rc = tls_read_full(tt, ssl, l->tcp_fd, ack, sizeof(ack),
				   deadline);
	if (rc != IO_OK || memcmp(ack, ACK_MAGIC, MAGIC_LEN) != 0) {
		/* In TLS 1.3 the server checks our certificate after our side
		 * of the handshake is done: a refusal shows up here. */
		why = rc == IO_OK     ? "bad acknowledgement"
		      : rc == IO_FAIL ? ssl_reason()
				      : io_rc_name(rc);
		if (rc != IO_STOP)
			KMS_LOG_W("raft-tls: connect to raft node %llu at %s: "
				  "refused by the "
				  "peer: %s",
				  l->target_id, l->target_addr, why);
		goto fail;
	}
	if (make_pair(&local_fd, &raft_fd) != 0) {
		why = strerror(errno);
		goto fail;
	}
	post_result(l, 0, raft_fd);
	clean = bridge(l, ssl, local_fd);
	goto out;
fail:
	KMS_LOG_D("raft-tls: connect to raft node %llu at %s failed: %s",
		  l->target_id, l->target_addr, why != NULL ? why : "unknown");
	post_result(l, RAFT_NOCONNECTION, -1);
out:
	ssl_end(ssl, clean);
	close_fd(&local_fd);
	close_fd(&l->tcp_fd);
	link_exit(l);
	return NULL;
}

static void link_unlink(struct tls_transport *tt, struct link *l)
{
	if (l->prev != NULL)
		l->prev->next = l->next;
	else
		tt->links = l->next;
	if (l->next != NULL)
		l->next->prev = l->prev;
	l->prev = l->next = NULL;
	tt->n_links--;
}

static void link_push(struct tls_transport *tt, struct link *l)
{
	l->prev = NULL;
	l->next = tt->links;
	if (tt->links != NULL)
		tt->links->prev = l;
	tt->links = l;
	tt->n_links++;
}

static void free_handle(uv_handle_t *h)
{
	raft_free(h);
}

/* Wraps raft's end of a link as a uv_pipe_t that raft will own. */
static uv_stream_t *wrap_fd(struct tls_transport *tt, int fd)
{
	uv_pipe_t *p = raft_malloc(sizeof(*p));

	if (p == NULL) {
		close(fd);
		return NULL;
	}
	if (uv_pipe_init(tt->loop, p, 0) != 0) {
		raft_free(p);
		close(fd);
		return NULL;
	}
	if (uv_pipe_open(p, fd) != 0) {
		close(fd);
		uv_close((uv_handle_t *)p, free_handle);
		return NULL;
	}
	return (uv_stream_t *)p;
}

/* Hands one posted result to raft, on the loop thread. */
static void deliver(struct tls_transport *tt, struct link *l, int raft_fd)
{
	uv_stream_t *s = NULL;

	if (raft_fd >= 0) {
		s = wrap_fd(tt, raft_fd);
		if (s == NULL)
			KMS_LOG_W("raft-tls: link with %s dropped: cannot open "
				  "its pipe",
				  l->peer);
	}
	if (l->kind == LINK_OUT) {
		l->cb_done = 1;
		l->req->cb(l->req, s, s != NULL ? 0 : RAFT_NOCONNECTION);
		return;
	}
	if (s != NULL)
		tt->accept_cb(tt->t, l->peer_id, l->peer_addr, s);
}

/* Delivers posted results and reaps finished threads. */
static void on_async(uv_async_t *h)
{
	struct tls_transport *tt = h->data;

	while (!tt->close_started) {
		struct link *pick = NULL, *l;
		int raft_fd = -1, reap = 0;

		pthread_mutex_lock(&tt->mu);
		for (l = tt->links; l != NULL; l = l->next) {
			if (l->result_ready && !l->result_taken) {
				l->result_taken = 1;
				raft_fd = l->raft_fd;
				l->raft_fd = -1;
				pick = l;
				break;
			}
			if (l->exited &&
			    (!l->result_ready || l->result_taken)) {
				link_unlink(tt, l);
				pick = l;
				reap = 1;
				break;
			}
		}
		pthread_mutex_unlock(&tt->mu);
		if (pick == NULL)
			break;
		if (reap) {
			pthread_join(pick->thread, NULL);
			kms_free(pick);
		} else {
			deliver(tt, pick, raft_fd);
		}
	}
}

static int ensure_async(struct tls_transport *tt)
{
	if (tt->async_ready)
		return 0;
	if (uv_async_init(tt->loop, &tt->async, on_async) != 0)
		return -1;
	tt->async.data = tt;
	tt->async_ready = 1;
	return 0;
}

/* ---- the listener: pending connections and their bounds (raft_tls.h) ---- */

/* 1: bytes wait on fd; 0: nothing yet; -1: the peer left or it failed. */
static int peek_state(int fd)
{
	uint8_t b;
	ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

	if (r > 0)
		return 1;
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	return -1;
}

static void waiting_remove(struct tls_transport *tt, unsigned i)
{
	close_fd(&tt->waiting[i].fd);
	memmove(&tt->waiting[i], &tt->waiting[i + 1],
		(tt->n_waiting - i - 1) * sizeof(tt->waiting[0]));
	tt->n_waiting--;
}

static int source_matches(const char *source, const char *want)
{
	return want == NULL || strcmp(source, want) == 0;
}

/* Pending connections of source (NULL: all): waiting ones and handshakes
 * the listener has not ended. */
static unsigned count_pending(struct tls_transport *tt, const char *source)
{
	unsigned n = 0;

	for (unsigned i = 0; i < tt->n_waiting; i++)
		n += source_matches(tt->waiting[i].source, source);
	pthread_mutex_lock(&tt->mu);
	for (struct link *l = tt->links; l != NULL; l = l->next)
		n += l->kind == LINK_IN && !l->authenticated && !l->evicted &&
		     source_matches(l->source, source);
	pthread_mutex_unlock(&tt->mu);
	return n;
}

/* Ends the oldest handshake in progress of source (NULL: of all). The
 * link's thread closes tcp_fd only after leave_pending, under mu: shutting
 * it down here is safe, and wakes the thread's poll(). */
static void end_handshake(struct tls_transport *tt, const char *source)
{
	struct link *oldest = NULL;

	pthread_mutex_lock(&tt->mu);
	for (struct link *l = tt->links; l != NULL; l = l->next)
		if (l->kind == LINK_IN && !l->authenticated && !l->evicted &&
		    source_matches(l->source, source) &&
		    (oldest == NULL || l->accepted_ms < oldest->accepted_ms))
			oldest = l;
	if (oldest != NULL) {
		oldest->evicted = 1;
		(void)shutdown(oldest->tcp_fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&tt->mu);
}

/*
 * Closes the oldest pending connection of source (NULL: of all), in this
 * order: one that has sent nothing, one waiting for a thread, a handshake
 * in progress. The waiting array is in order of arrival.
 */
static void evict_one(struct tls_transport *tt, const char *source)
{
	for (unsigned i = 0; i < tt->n_waiting; i++) {
		struct waiting *w = &tt->waiting[i];
		int st;

		if (w->ready || !source_matches(w->source, source))
			continue;
		/* Its ClientHello may have arrived since the last poll. */
		st = peek_state(w->fd);
		if (st > 0) {
			w->ready = 1;
			continue;
		}
		waiting_remove(tt, i);
		return;
	}
	for (unsigned i = 0; i < tt->n_waiting; i++) {
		if (source_matches(tt->waiting[i].source, source)) {
			waiting_remove(tt, i);
			return;
		}
	}
	end_handshake(tt, source);
}

/* Takes a new connection in, making room under both bounds first. */
static void admit(struct tls_transport *tt, int fd, int64_t now)
{
	struct waiting *w;
	char source[INET6_ADDRSTRLEN], peer[ADDR_MAX + 8];

	describe_peer(fd, source, sizeof(source), peer, sizeof(peer));
	if (count_pending(tt, source) >= tt->max_per_source) {
		evict_one(tt, source);
		pthread_mutex_lock(&tt->mu);
		tt->log.evicted_source++;
		snprintf(tt->log.last_source, sizeof(tt->log.last_source), "%s",
			 source);
		pthread_mutex_unlock(&tt->mu);
	}
	if (count_pending(tt, NULL) >= tt->max_pending) {
		evict_one(tt, NULL);
		pthread_mutex_lock(&tt->mu);
		tt->log.evicted_all++;
		pthread_mutex_unlock(&tt->mu);
	}
	if (tt->n_waiting >= tt->max_pending) { /* not reached: see above */
		close(fd);
		return;
	}
	w = &tt->waiting[tt->n_waiting++];
	w->fd = fd;
	/* A peer's ClientHello has often arrived by the time it is accepted. */
	w->ready = peek_state(fd) > 0;
	w->since = now;
	memcpy(w->source, source, sizeof(w->source));
	memcpy(w->peer, peer, sizeof(w->peer));
}

/* Gives waiting connection i a handshake thread; it leaves the array. */
static void start_handshake(struct tls_transport *tt, unsigned i)
{
	struct waiting *w = &tt->waiting[i];
	struct link *l = kms_calloc(1, sizeof(*l));
	const char *why = NULL;

	if (l == NULL) {
		why = "out of memory";
		goto refuse;
	}
	l->tt = tt;
	l->kind = LINK_IN;
	l->tcp_fd = w->fd;
	l->raft_fd = -1;
	l->accepted_ms = w->since;
	memcpy(l->source, w->source, sizeof(l->source));
	snprintf(l->peer, sizeof(l->peer), "%s", w->peer);
	pthread_mutex_lock(&tt->mu);
	if (tt->closing || tt->n_links >= MAX_LINKS) {
		pthread_mutex_unlock(&tt->mu);
		why = "too many links";
		goto refuse;
	}
	link_push(tt, l);
	tt->n_pending_in++;
	if (spawn(&l->thread, in_main, l) != 0) {
		link_unlink(tt, l);
		tt->n_pending_in--;
		pthread_mutex_unlock(&tt->mu);
		why = "cannot start a thread";
		goto refuse;
	}
	pthread_mutex_unlock(&tt->mu);
	/* The thread owns the descriptor now. */
	w->fd = -1;
	waiting_remove(tt, i);
	return;
refuse:
	if (!tt->closing && refusal_log_ok(tt, NULL))
		KMS_LOG_W("raft-tls: refused %s: %s", w->peer, why);
	kms_free(l);
	waiting_remove(tt, i);
}

/*
 * Gives the connections whose first byte arrived a handshake thread, oldest
 * first, while fewer than max_handshakes run. When all run, the oldest
 * handshake is ended (once: not while one is still ending), so a peer does
 * not wait long behind clients that stall their handshake.
 */
static void start_handshakes(struct tls_transport *tt)
{
	for (unsigned i = 0; i < tt->n_waiting;) {
		unsigned running, ending = 0;

		if (!tt->waiting[i].ready) {
			i++;
			continue;
		}
		pthread_mutex_lock(&tt->mu);
		running = tt->n_pending_in;
		for (struct link *l = tt->links; l != NULL; l = l->next)
			ending += l->kind == LINK_IN && !l->authenticated &&
				  l->evicted;
		pthread_mutex_unlock(&tt->mu);
		if (running < tt->max_handshakes) {
			start_handshake(tt, i); /* i now names the next */
			continue;
		}
		if (ending == 0)
			end_handshake(tt, NULL);
		return;
	}
}

/* Closes what waited past its deadline: hello_ms without a byte, or the
 * whole handshake deadline without a thread. */
static void expire_waiting(struct tls_transport *tt, int64_t now)
{
	for (unsigned i = 0; i < tt->n_waiting;) {
		struct waiting *w = &tt->waiting[i];
		int64_t limit = w->ready ? tt->handshake_ms : tt->hello_ms;

		if (now - w->since < limit) {
			i++;
			continue;
		}
		pthread_mutex_lock(&tt->mu);
		if (w->ready)
			tt->log.no_thread++;
		else
			tt->log.silent++;
		pthread_mutex_unlock(&tt->mu);
		waiting_remove(tt, i);
	}
}

/* How long the listener may sleep: until the next deadline, the end of a
 * log window with something to say, or a thread slot (polled). */
static int listener_timeout(struct tls_transport *tt, int64_t now)
{
	int64_t next = -1, t;
	int pending_log;

	for (unsigned i = 0; i < tt->n_waiting; i++) {
		const struct waiting *w = &tt->waiting[i];

		t = w->since + (w->ready ? tt->handshake_ms : tt->hello_ms);
		if (next < 0 || t < next)
			next = t;
		if (w->ready && (next < 0 || now + THREAD_WAIT_MS < next))
			next = now + THREAD_WAIT_MS;
	}
	pthread_mutex_lock(&tt->mu);
	pending_log = window_counted(&tt->log);
	t = tt->log.start + LOG_WINDOW_MS;
	pthread_mutex_unlock(&tt->mu);
	if (pending_log && (next < 0 || t < next))
		next = t;
	if (next < 0)
		return -1;
	if (next <= now)
		return 0;
	return next - now > 60000 ? 60000 : (int)(next - now);
}

static void accept_batch(struct tls_transport *tt, int64_t now)
{
	for (int k = 0; k < ACCEPT_BATCH; k++) {
		int one = 1;
		int fd = accept4(tt->listen_fd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: the oldest pending
				 * connection gives its up. */
				KMS_LOG_W("raft-tls: accept: %s",
					  strerror(errno));
				if (count_pending(tt, NULL) > 0)
					evict_one(tt, NULL);
				else
					usleep(100000);
			}
			return;
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		admit(tt, fd, now);
	}
}

/*
 * The listener thread: accepts, keeps connections that have not sent a
 * byte (no thread, no TLS state), starts handshakes, enforces the bounds
 * and deadlines, and writes the summary lines.
 */
static void *listen_main(void *arg)
{
	struct tls_transport *tt = arg;
	struct pollfd *p = tt->pfd;

	for (;;) {
		int64_t now = now_ms();
		int timeout = listener_timeout(tt, now), n;
		unsigned nw = tt->n_waiting;

		p[0] = (struct pollfd){.fd = tt->stop_fd, .events = POLLIN};
		p[1] = (struct pollfd){.fd = tt->listen_fd, .events = POLLIN};
		/* A connection waiting for a thread is readable already: not
		 * polled (its thread will see a hang-up). */
		for (unsigned i = 0; i < nw; i++)
			p[2 + i] = (struct pollfd){
			    .fd = tt->waiting[i].ready ? -1 : tt->waiting[i].fd,
			    .events = POLLIN};
		n = poll(p, 2 + nw, timeout);
		if (n < 0 && errno != EINTR) {
			KMS_LOG_E("raft-tls: listener: poll: %s",
				  strerror(errno));
			usleep(100000);
			continue;
		}
		if (n > 0 && p[0].revents != 0)
			break;
		now = now_ms();
		/* First bytes, and peers that left; backwards, as removal
		 * shifts the entries after i. */
		for (unsigned i = nw; n > 0 && i-- > 0;) {
			int st;

			if (p[2 + i].revents == 0)
				continue;
			st = peek_state(tt->waiting[i].fd);
			if (st > 0)
				tt->waiting[i].ready = 1;
			else if (st < 0)
				waiting_remove(tt, i);
		}
		expire_waiting(tt, now);
		start_handshakes(tt);
		if (n > 0 && p[1].revents != 0)
			accept_batch(tt, now);
		log_flush(tt, now);
	}
	while (tt->n_waiting > 0)
		waiting_remove(tt, tt->n_waiting - 1);
	return NULL;
}

/* ---- raft_uv_transport methods (loop thread) ---- */

static int tt_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
	struct tls_transport *tt = t->impl;
	char *copy;

	if (id == 0 || address == NULL || strlen(address) == 0 ||
	    !valid_address((const uint8_t *)address, strlen(address))) {
		set_errmsg(t, "raft-tls: invalid server address");
		return RAFT_INVALID;
	}
	copy = kms_strdup(address);
	if (copy == NULL)
		return RAFT_NOMEM;
	kms_free(tt->address);
	tt->address = copy;
	tt->id = id;
	return 0;
}

static int tt_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
	struct tls_transport *tt = t->impl;
	struct addrinfo *ai = NULL;
	int fd = -1, rv = RAFT_IOERR;
	const char *why = "cannot resolve the address";

	if (tt->address == NULL || tt->listen_fd >= 0)
		return RAFT_INVALID;
	if (ensure_async(tt) != 0) {
		set_errmsg(t, "raft-tls: uv_async_init failed");
		return RAFT_IOERR;
	}
	if (tt->waiting == NULL) {
		tt->waiting = kms_calloc(tt->max_pending, sizeof(*tt->waiting));
		tt->pfd = kms_calloc(2 + (size_t)tt->max_pending,
				     sizeof(*tt->pfd));
		if (tt->waiting == NULL || tt->pfd == NULL) {
			set_errmsg(t, "raft-tls: out of memory");
			return RAFT_NOMEM;
		}
	}
	tt->accept_cb = cb;
	if (resolve(tt->address, 1, &ai) != 0)
		goto fail;
	for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
		int one = 1;

		fd = socket(a->ai_family,
			    a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    a->ai_protocol);
		if (fd < 0) {
			why = strerror(errno);
			continue;
		}
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof(one));
		/* A deep backlog: under a flood, a peer's SYN must not be
		 * dropped before the listener gets to accept it. */
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 &&
		    listen(fd, SOMAXCONN) == 0)
			break;
		why = strerror(errno);
		close_fd(&fd);
	}
	freeaddrinfo(ai);
	ai = NULL;
	if (fd < 0)
		goto fail;
	tt->listen_fd = fd;
	if (spawn(&tt->listener, listen_main, tt) != 0) {
		why = "cannot start the listener thread";
		close_fd(&tt->listen_fd);
		goto fail;
	}
	tt->listener_started = 1;
	return 0;
fail:
	set_errmsg(t, "raft-tls: listen on %s: %s", tt->address, why);
	return rv;
}

static int tt_connect(struct raft_uv_transport *t, struct raft_uv_connect *req,
		      raft_id id, const char *address, raft_uv_connect_cb cb)
{
	struct tls_transport *tt = t->impl;
	struct link *l;
	size_t alen = address != NULL ? strlen(address) : 0;

	if (tt->close_started || tt->address == NULL)
		return RAFT_CANCELED;
	if (alen == 0 || alen > ADDR_MAX) {
		set_errmsg(t, "raft-tls: connect: bad address");
		return RAFT_NOCONNECTION;
	}
	if (ensure_async(tt) != 0) {
		set_errmsg(t, "raft-tls: uv_async_init failed");
		return RAFT_IOERR;
	}
	l = kms_calloc(1, sizeof(*l));
	if (l == NULL) {
		set_errmsg(t, "raft-tls: out of memory");
		return RAFT_NOMEM;
	}
	l->tt = tt;
	l->kind = LINK_OUT;
	l->tcp_fd = -1;
	l->raft_fd = -1;
	l->req = req;
	l->target_id = id;
	memcpy(l->target_addr, address, alen + 1);
	snprintf(l->peer, sizeof(l->peer), "%s", address);
	req->cb = cb;

	pthread_mutex_lock(&tt->mu);
	if (tt->n_links >= MAX_LINKS) {
		pthread_mutex_unlock(&tt->mu);
		kms_free(l);
		set_errmsg(t, "raft-tls: too many links");
		return RAFT_NOCONNECTION;
	}
	link_push(tt, l);
	if (spawn(&l->thread, out_main, l) != 0) {
		link_unlink(tt, l);
		pthread_mutex_unlock(&tt->mu);
		kms_free(l);
		set_errmsg(t, "raft-tls: cannot start a thread");
		return RAFT_NOCONNECTION;
	}
	pthread_mutex_unlock(&tt->mu);
	return 0;
}

/*
 * Last step of close, from the async handle's close callback (or directly
 * when there is no handle): every thread has been joined. Mirrors
 * canonical/raft's TCP transport: pending connect requests fire with
 * RAFT_CANCELED before the transport's close callback; links raft has not
 * received are closed; the accept callback never runs again.
 */
static void finish_close(struct tls_transport *tt)
{
	struct link *l;

	while ((l = tt->links) != NULL) {
		link_unlink(tt, l);
		if (l->raft_fd >= 0)
			close(l->raft_fd);
		if (l->kind == LINK_OUT && !l->cb_done) {
			l->cb_done = 1;
			l->req->cb(l->req, NULL, RAFT_CANCELED);
		}
		kms_free(l);
	}
	tt->closed = 1;
	if (tt->close_cb != NULL)
		tt->close_cb(tt->t);
}

static void on_async_closed(uv_handle_t *h)
{
	finish_close(h->data);
}

static void tt_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
	struct tls_transport *tt = t->impl;
	uint64_t one = 1;

	if (tt->close_started)
		return;
	tt->close_started = 1;
	tt->close_cb = cb;
	pthread_mutex_lock(&tt->mu);
	tt->closing = 1;
	pthread_mutex_unlock(&tt->mu);
	/* The eventfd stays readable: every poll() of every thread returns,
	 * handshakes and bridges end, and nothing new starts. */
	if (write(tt->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		KMS_LOG_E("raft-tls: cannot signal the transport threads: %s",
			  strerror(errno));
	if (tt->listener_started) {
		pthread_join(tt->listener, NULL);
		tt->listener_started = 0;
	}
	close_fd(&tt->listen_fd);
	/* No thread starts after the listener ended and close_started is set
	 * (connect refuses), so the list is stable; each thread exits promptly
	 * since it only ever blocks in poll() with stop_fd. */
	for (struct link *l = tt->links; l != NULL; l = l->next)
		pthread_join(l->thread, NULL);
	if (tt->async_ready) {
		uv_close((uv_handle_t *)&tt->async, on_async_closed);
		return;
	}
	finish_close(tt);
}

/* ---- public ---- */

/* The options' limits, 0 taking the default (raft_tls.h). */
static void set_limits(struct tls_transport *tt,
		       const kms_raft_tls_opts *opts)
{
	tt->max_pending = (unsigned)or_default(opts->max_pending,
					       KMS_RAFT_TLS_MAX_PENDING);
	tt->max_per_source = (unsigned)or_default(
	    opts->max_pending_per_source, KMS_RAFT_TLS_MAX_PENDING_PER_SOURCE);
	tt->max_handshakes = (unsigned)or_default(opts->max_handshakes,
						  KMS_RAFT_TLS_MAX_HANDSHAKES);
	tt->hello_ms = (int64_t)or_default(opts->hello_timeout_ms,
					   KMS_RAFT_TLS_HELLO_TIMEOUT_MS);
	tt->handshake_ms = (int64_t)or_default(
	    opts->handshake_timeout_ms, KMS_RAFT_TLS_HANDSHAKE_TIMEOUT_MS);
	tt->max_message =
	    or_default(opts->max_message_bytes, KMS_RAFT_TLS_MAX_MESSAGE_BYTES);
}

static int load_ctx(SSL_CTX **out, const kms_raft_tls_opts *opts,
		    kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	int rc = KMS_ERR_CONFIG;

	ERR_clear_error();
	if (ctx == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "raft-tls: SSL_CTX_new: %s",
				ssl_reason());
	/* TLS 1.3 only (RFC 8446): no legacy suites, the certificate is
	 * encrypted in the handshake, and the server's is signed over the
	 * transcript. */
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
		kms_errf(err, KMS_ERR_CONFIG,
			 "raft-tls: cannot require TLS 1.3: %s", ssl_reason());
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, opts->ca_file, NULL) != 1) {
		kms_errf(err, KMS_ERR_CONFIG,
			 "raft-tls: cannot load CA file %s: %s",
			 kms_quote(opts->ca_file, q), ssl_reason());
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, opts->cert_file) != 1) {
		kms_errf(err, KMS_ERR_CONFIG,
			 "raft-tls: cannot load certificate chain %s: %s",
			 kms_quote(opts->cert_file, q), ssl_reason());
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey(ctx, opts->key) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		kms_errf(
		    err, KMS_ERR_CONFIG,
		    "raft-tls: the node key does not match certificate %s: %s",
		    kms_quote(opts->cert_file, q), ssl_reason());
		goto fail;
	}
	/* Both ends present a certificate chained to the cluster CA. */
	SSL_CTX_set_verify(
	    ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	/* Every link authenticates in full: no session resumption, no
	 * tickets (whose arrival would also wake a bridge for nothing). */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	if (SSL_CTX_set_num_tickets(ctx, 0) != 1) {
		kms_errf(err, KMS_ERR_CONFIG,
			 "raft-tls: cannot disable session tickets");
		goto fail;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
				  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	*out = ctx;
	ERR_clear_error();
	return KMS_OK;
fail:
	ERR_clear_error();
	SSL_CTX_free(ctx);
	return rc;
}

int kms_raft_tls_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
		      const kms_raft_tls_opts *opts, kms_err *err)
{
	struct tls_transport *tt;
	void *data;
	int rc;

	if (t == NULL || loop == NULL || opts == NULL ||
	    opts->ca_file == NULL || opts->cert_file == NULL ||
	    opts->key == NULL || opts->authorize == NULL)
		return kms_errf(
		    err, KMS_ERR_INVALID,
		    "raft-tls: transport, loop, CA file, certificate, key and "
		    "authorize callback are all required");
	if (opts->max_message_bytes != 0 &&
	    opts->max_message_bytes < MIN_MESSAGE_CAP)
		return kms_errf(err, KMS_ERR_INVALID,
				"raft-tls: max_message_bytes %llu is below %u "
				"(0 takes the default)",
				(unsigned long long)opts->max_message_bytes,
				MIN_MESSAGE_CAP);
	tt = kms_calloc(1, sizeof(*tt));
	if (tt == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "raft-tls: out of memory");
	tt->t = t;
	tt->loop = loop;
	tt->authorize = opts->authorize;
	tt->authorize_arg = opts->authorize_arg;
	set_limits(tt, opts);
	tt->listen_fd = -1;
	tt->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (tt->stop_fd < 0) {
		rc = kms_errf(err, KMS_ERR_IO, "raft-tls: eventfd: %s",
			      strerror(errno));
		goto fail;
	}
	if (pthread_mutex_init(&tt->mu, NULL) != 0) {
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "raft-tls: pthread_mutex_init failed");
		goto fail_fd;
	}
	KMS_TRY_GOTO(rc, load_ctx(&tt->ctx, opts, err), fail_mu);

	data = t->data;
	memset(t, 0, sizeof(*t));
	t->data = data;
	t->impl = tt;
	t->init = tt_init;
	t->listen = tt_listen;
	t->connect = tt_connect;
	t->close = tt_close;
	return KMS_OK;
fail_mu:
	pthread_mutex_destroy(&tt->mu);
fail_fd:
	close(tt->stop_fd);
fail:
	kms_free(tt);
	return rc;
}

int kms_raft_tls_reload(struct raft_uv_transport *t,
			const kms_raft_tls_opts *opts, kms_err *err)
{
	struct tls_transport *tt;
	SSL_CTX *ctx = NULL, *old;

	if (t == NULL || t->impl == NULL || opts == NULL ||
	    opts->ca_file == NULL || opts->cert_file == NULL ||
	    opts->key == NULL)
		return kms_errf(err, KMS_ERR_INVALID,
				"raft-tls: reload needs the transport, CA file, "
				"certificate and key");
	tt = t->impl;
	KMS_TRY(load_ctx(&ctx, opts, err));
	pthread_mutex_lock(&tt->mu);
	old = tt->ctx;
	tt->ctx = ctx;
	pthread_mutex_unlock(&tt->mu);
	SSL_CTX_free(old); /* links up keep theirs through their SSL */
	return KMS_OK;
}

void kms_raft_tls_close(struct raft_uv_transport *t)
{
	struct tls_transport *tt;

	if (t == NULL || t->impl == NULL)
		return;
	tt = t->impl;
	if (tt->async_ready && !tt->closed) {
		KMS_LOG_E("raft-tls: kms_raft_tls_close before the transport "
			  "was closed; "
			  "leaking it rather than freeing memory the loop "
			  "still uses");
		return;
	}
	close_fd(&tt->listen_fd);
	kms_free(tt->waiting);
	kms_free(tt->pfd);
	SSL_CTX_free(tt->ctx);
	close(tt->stop_fd);
	pthread_mutex_destroy(&tt->mu);
	kms_free(tt->address);
	kms_free(tt);
	t->impl = NULL;
}
