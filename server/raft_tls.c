/* raft_tls.c - canonical/raft's raft_uv_transport over mutual TLS 1.3: a TCP
 * listener, TLS handshakes and one bridge thread per link between a socketpair
 * (raft's side) and the TLS connection. */
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
#include "raft_tls.h"

#define PREAMBLE_MAGIC "KMSR"
#define ACK_MAGIC "KMSA"
#define MAGIC_LEN 4
#define ADDR_MAX 256
#define PREAMBLE_FIXED (MAGIC_LEN + 8 + 2)
/* Accept to authorized preamble, and connect to acknowledgement. */
#define HANDSHAKE_MS 5000
/* Unauthenticated incoming connections in handshake at once; beyond that a
 * new one is closed at once, so a flood cannot exhaust threads. */
#define MAX_PENDING_IN 16
/* Links of any kind; a 5-node cluster needs 8. */
#define MAX_LINKS 64
#define PUMP_BUF 16384
#define NODE_PATH "/kmsd/node/"
#define SPIFFE_PREFIX "spiffe://"
#define SPIFFE_MAX 2048

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
};

struct tls_transport {
	struct raft_uv_transport *t;
	uv_loop_t *loop;
	SSL_CTX *ctx;
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

	pthread_mutex_t mu;
	struct link *links;    /* (mu) */
	unsigned n_links;      /* (mu) */
	unsigned n_pending_in; /* (mu) */
	int closing;	       /* (mu) */
};

/* ---- small helpers ---- */

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

static void describe_peer(int fd, char *out, size_t cap)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	unsigned port = 0;

	snprintf(out, cap, "unknown peer");
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
	} else {
		return;
	}
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
 * The peer's SPIFFE ID: the certificate's only spiffe:// URI SAN (the
 * X509-SVID rule: exactly one URI SAN). Returns 0 and fills out, or -1.
 */
static int peer_spiffe_id(SSL *ssl, char *out, size_t cap)
{
	X509 *cert = SSL_get0_peer_certificate(ssl);
	GENERAL_NAMES *names;
	int n_uri = 0, found = 0;

	if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
		return -1;
	names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	if (names == NULL)
		return -1;
	for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
		const unsigned char *s;
		int len;

		if (gn->type != GEN_URI)
			continue;
		n_uri++;
		s = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
		len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
		if (len <= (int)strlen(SPIFFE_PREFIX) || (size_t)len >= cap ||
		    memchr(s, '\0', (size_t)len) != NULL ||
		    strncmp((const char *)s, SPIFFE_PREFIX,
			    strlen(SPIFFE_PREFIX)) != 0)
			continue;
		memcpy(out, s, (size_t)len);
		out[len] = '\0';
		found = 1;
	}
	GENERAL_NAMES_free(names);
	return (found && n_uri == 1) ? 0 : -1;
}

static int authorized(struct tls_transport *tt, const char *spiffe, raft_id id)
{
	return tt->authorize(tt->authorize_arg, spiffe, id) == 1;
}

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

static void link_exit(struct link *l)
{
	struct tls_transport *tt = l->tt;

	pthread_mutex_lock(&tt->mu);
	if (l->kind == LINK_IN && !l->authenticated) {
		l->authenticated = 1;
		tt->n_pending_in--;
	}
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
	SSL *ssl = SSL_new(tt->ctx);

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

static int valid_address(const uint8_t *p, size_t n)
{
	if (n == 0 || n > ADDR_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (p[i] < 0x21 || p[i] > 0x7e)
			return 0;
	return 1;
}

/* The accepting side: handshake, identity, preamble, then the bridge. */
static void *in_main(void *arg)
{
	struct link *l = arg;
	struct tls_transport *tt = l->tt;
	int64_t deadline = now_ms() + HANDSHAKE_MS;
	uint8_t fixed[PREAMBLE_FIXED];
	uint8_t addr[ADDR_MAX];
	char spiffe[SPIFFE_MAX];
	char q[KMS_QUOTE_MAX + 4];
	kms_reader rd;
	const uint8_t *magic;
	uint32_t hi, lo;
	uint8_t l1, l2;
	size_t alen;
	raft_id claimed;
	int local_fd = -1, raft_fd = -1, clean = 0;
	enum io_rc rc;
	SSL *ssl = NULL;

	ssl = new_ssl(tt, l->tcp_fd, 1);
	if (ssl == NULL) {
		KMS_LOG_W("raft-tls: refused %s: cannot set up TLS: %s",
			  l->peer, ssl_reason());
		goto out;
	}
	rc = tls_handshake(tt, ssl, l->tcp_fd, deadline);
	if (rc != IO_OK) {
		long v = SSL_get_verify_result(ssl);

		if (rc == IO_STOP)
			goto out;
		if (rc == IO_TIMEOUT)
			KMS_LOG_W(
			    "raft-tls: refused %s: TLS handshake timed out",
			    l->peer);
		else if (v != X509_V_OK)
			KMS_LOG_W("raft-tls: refused %s: TLS handshake failed: "
				  "certificate "
				  "verify failed: %s",
				  l->peer, X509_verify_cert_error_string(v));
		else
			KMS_LOG_W(
			    "raft-tls: refused %s: TLS handshake failed: %s",
			    l->peer, ssl_reason());
		goto out;
	}
	if (peer_spiffe_id(ssl, spiffe, sizeof(spiffe)) != 0) {
		KMS_LOG_W("raft-tls: refused %s: certificate does not carry "
			  "exactly one "
			  "SPIFFE ID",
			  l->peer);
		goto out;
	}
	rc = tls_read_full(tt, ssl, l->tcp_fd, fixed, sizeof(fixed), deadline);
	if (rc != IO_OK) {
		if (rc != IO_STOP)
			KMS_LOG_W("raft-tls: refused %s (%s): reading the "
				  "preamble: %s%s%s",
				  l->peer, kms_quote(spiffe, q), io_rc_name(rc),
				  rc == IO_FAIL ? ": " : "",
				  rc == IO_FAIL ? ssl_reason() : "");
		goto out;
	}
	kms_reader_init(&rd, fixed, sizeof(fixed));
	if (kms_reader_bytes(&rd, MAGIC_LEN, &magic) != KMS_OK ||
	    memcmp(magic, PREAMBLE_MAGIC, MAGIC_LEN) != 0 ||
	    kms_reader_u32(&rd, &hi) != KMS_OK ||
	    kms_reader_u32(&rd, &lo) != KMS_OK ||
	    kms_reader_u8(&rd, &l1) != KMS_OK ||
	    kms_reader_u8(&rd, &l2) != KMS_OK) {
		KMS_LOG_W("raft-tls: refused %s (%s): malformed preamble",
			  l->peer, kms_quote(spiffe, q));
		goto out;
	}
	claimed = ((raft_id)hi << 32) | lo;
	alen = ((size_t)l1 << 8) | l2;
	if (claimed == 0 || alen == 0 || alen > ADDR_MAX) {
		KMS_LOG_W("raft-tls: refused %s (%s): malformed preamble (id "
			  "%llu, address "
			  "length %zu)",
			  l->peer, kms_quote(spiffe, q), claimed, alen);
		goto out;
	}
	rc = tls_read_full(tt, ssl, l->tcp_fd, addr, alen, deadline);
	if (rc != IO_OK || !valid_address(addr, alen)) {
		if (rc != IO_STOP)
			KMS_LOG_W("raft-tls: refused %s (%s): bad preamble "
				  "address: %s",
				  l->peer, kms_quote(spiffe, q),
				  rc == IO_OK ? "not printable"
					      : io_rc_name(rc));
		goto out;
	}
	if (!authorized(tt, spiffe, claimed)) {
		KMS_LOG_W("raft-tls: refused %s: certificate %s is not "
			  "authorized as raft "
			  "node %llu",
			  l->peer, kms_quote(spiffe, q), claimed);
		goto out;
	}
	rc = tls_write_full(tt, ssl, l->tcp_fd, (const uint8_t *)ACK_MAGIC,
			    MAGIC_LEN, deadline);
	if (rc != IO_OK) {
		if (rc != IO_STOP)
			KMS_LOG_W("raft-tls: dropped %s (raft node %llu): "
				  "acknowledging: %s",
				  l->peer, claimed, io_rc_name(rc));
		goto out;
	}
	if (make_pair(&local_fd, &raft_fd) != 0) {
		KMS_LOG_W(
		    "raft-tls: dropped %s (raft node %llu): socketpair: %s",
		    l->peer, claimed, strerror(errno));
		goto out;
	}
	pthread_mutex_lock(&tt->mu);
	l->authenticated = 1;
	tt->n_pending_in--;
	l->peer_id = claimed;
	memcpy(l->peer_addr, addr, alen);
	l->peer_addr[alen] = '\0';
	pthread_mutex_unlock(&tt->mu);
	KMS_LOG_D("raft-tls: accepted raft node %llu from %s", claimed,
		  l->peer);
	post_result(l, 0, raft_fd);
	clean = bridge(l, ssl, local_fd);
out:
	ssl_end(ssl, clean);
	close_fd(&local_fd);
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
	int64_t deadline = now_ms() + HANDSHAKE_MS;
	uint8_t pre[PREAMBLE_FIXED + ADDR_MAX];
	uint8_t ack[MAGIC_LEN];
	char spiffe[SPIFFE_MAX];
	char q[KMS_QUOTE_MAX + 4];
	size_t alen = strlen(tt->address);
	kms_writer w;
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
	if (peer_spiffe_id(ssl, spiffe, sizeof(spiffe)) != 0) {
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
	kms_writer_init(&w, pre, sizeof(pre));
	if (kms_writer_bytes(&w, PREAMBLE_MAGIC, MAGIC_LEN) != KMS_OK ||
	    kms_writer_u32(&w, (uint32_t)(tt->id >> 32)) != KMS_OK ||
	    kms_writer_u32(&w, (uint32_t)tt->id) != KMS_OK ||
	    kms_writer_u8(&w, (uint8_t)(alen >> 8)) != KMS_OK ||
	    kms_writer_u8(&w, (uint8_t)alen) != KMS_OK ||
	    kms_writer_bytes(&w, tt->address, alen) != KMS_OK) {
		why = "preamble does not fit";
		goto fail;
	}
	rc = tls_write_full(tt, ssl, l->tcp_fd, pre, w.len, deadline);
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

/* ---- the listener ---- */

static void *listen_main(void *arg)
{
	struct tls_transport *tt = arg;

	for (;;) {
		struct link *l;
		int fd, one = 1;
		char peer[64];

		if (wait_fd(tt, tt->listen_fd, POLLIN, -1) != IO_OK)
			break;
		fd = accept4(tt->listen_fd, NULL, NULL,
			     SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM)
				usleep(100000); /* let descriptors free up */
			continue;
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		describe_peer(fd, peer, sizeof(peer));
		l = kms_calloc(1, sizeof(*l));
		if (l == NULL) {
			KMS_LOG_W("raft-tls: refused %s: out of memory", peer);
			close(fd);
			continue;
		}
		l->tt = tt;
		l->kind = LINK_IN;
		l->tcp_fd = fd;
		l->raft_fd = -1;
		snprintf(l->peer, sizeof(l->peer), "%s", peer);
		pthread_mutex_lock(&tt->mu);
		if (tt->closing || tt->n_pending_in >= MAX_PENDING_IN ||
		    tt->n_links >= MAX_LINKS) {
			int closing = tt->closing;

			pthread_mutex_unlock(&tt->mu);
			if (!closing)
				KMS_LOG_W("raft-tls: refused %s: too many "
					  "connections",
					  peer);
			close(fd);
			kms_free(l);
			continue;
		}
		link_push(tt, l);
		tt->n_pending_in++;
		if (spawn(&l->thread, in_main, l) != 0) {
			link_unlink(tt, l);
			tt->n_pending_in--;
			pthread_mutex_unlock(&tt->mu);
			KMS_LOG_W("raft-tls: refused %s: cannot start a thread",
				  peer);
			close(fd);
			kms_free(l);
			continue;
		}
		pthread_mutex_unlock(&tt->mu);
	}
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
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 &&
		    listen(fd, 16) == 0)
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

static int load_ctx(struct tls_transport *tt, const kms_raft_tls_opts *opts,
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
	tt->ctx = ctx;
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
	tt = kms_calloc(1, sizeof(*tt));
	if (tt == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "raft-tls: out of memory");
	tt->t = t;
	tt->loop = loop;
	tt->authorize = opts->authorize;
	tt->authorize_arg = opts->authorize_arg;
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
	KMS_TRY_GOTO(rc, load_ctx(tt, opts, err), fail_mu);

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
	SSL_CTX_free(tt->ctx);
	close(tt->stop_fd);
	pthread_mutex_destroy(&tt->mu);
	kms_free(tt->address);
	kms_free(tt);
	t->impl = NULL;
}

static int trust_domain_ok(const char *td, size_t *len)
{
	size_t n;

	if (td == NULL ||
	    strncmp(td, SPIFFE_PREFIX, strlen(SPIFFE_PREFIX)) != 0)
		return 0;
	n = strlen(td);
	/* A trailing slash is tolerated: "spiffe://kmsd.dev/". */
	if (n > 0 && td[n - 1] == '/')
		n--;
	if (n <= strlen(SPIFFE_PREFIX) ||
	    memchr(td + strlen(SPIFFE_PREFIX), '/',
		   n - strlen(SPIFFE_PREFIX)) != NULL)
		return 0;
	*len = n;
	return 1;
}

int kms_raft_tls_node_spiffe_id(char *out, size_t cap,
				const char *trust_domain_uri,
				unsigned long long id)
{
	size_t tdlen;
	int n;

	if (out == NULL || cap == 0)
		return KMS_ERR_INVALID;
	out[0] = '\0';
	if (id == 0 || !trust_domain_ok(trust_domain_uri, &tdlen))
		return KMS_ERR_INVALID;
	n = snprintf(out, cap, "%.*s%s%llu", (int)tdlen, trust_domain_uri,
		     NODE_PATH, id);
	if (n < 0 || (size_t)n >= cap) {
		out[0] = '\0';
		return KMS_ERR_INVALID;
	}
	return KMS_OK;
}

int kms_raft_tls_parse_node_id(const char *spiffe_id,
			       const char *trust_domain_uri,
			       unsigned long long *id)
{
	size_t tdlen, plen = strlen(NODE_PATH);
	unsigned long long v = 0;
	const char *p;

	if (spiffe_id == NULL || id == NULL ||
	    !trust_domain_ok(trust_domain_uri, &tdlen))
		return KMS_ERR_INVALID;
	if (strncmp(spiffe_id, trust_domain_uri, tdlen) != 0 ||
	    strncmp(spiffe_id + tdlen, NODE_PATH, plen) != 0)
		return KMS_ERR_INVALID;
	p = spiffe_id + tdlen + plen;
	if (*p < '1' || *p > '9')
		return KMS_ERR_INVALID;
	for (; *p != '\0'; p++) {
		unsigned d;

		if (*p < '0' || *p > '9')
			return KMS_ERR_INVALID;
		d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return KMS_ERR_INVALID;
		v = v * 10 + d;
	}
	*id = v;
	return KMS_OK;
}
