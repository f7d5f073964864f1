/* test_raft_tls.c - Raft peer links over mutual TLS: a real two-node
 * canonical/raft cluster on the transport; refusal of plaintext,
 * foreign-CA, non-node and lying peers; the listener's bounds and deadlines
 * under floods of idle connections; the message length cap; the preamble
 * and the stream parser as pure functions. Certificates are made at test
 * time. */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "test_net.h"
#include "kms/error.h"
#include "kms/spiffe.h"
#include "raft/raft_tls.h"
#include "check_run.h"

#define TD "spiffe://kmsd.dev"
#define N_ENTRIES 50

/* ---- a PKI made once per run (unchecked fixture, before the forks) ---- */

struct ident {
	EVP_PKEY *key;
	X509 *cert;
	char pem[320]; /* the certificate, PEM */
};

static char pki_dir[256];
static struct ident ca, other_ca;
static struct ident node[4]; /* node[1..3]: spiffe://kmsd.dev/kmsd/node/N */
static struct ident app; /* a service: .../ns/demo/sa/app, clientAuth only */
static struct ident foreign2; /* another CA's certificate for .../kmsd/node/2 */
static struct ident two_uris; /* node/2 plus a second URI SAN */
static long serial = 1;

static EVP_PKEY *new_key(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");

	ck_assert_ptr_nonnull(k);
	return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
	ck_assert_ptr_nonnull(ext);
	ck_assert_int_eq(X509_add_ext(cert, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

/* issuer NULL: a self-signed CA. */
static void make_ident(struct ident *id, const char *file, const char *cn,
		       const struct ident *issuer, const char *san,
		       const char *eku)
{
	X509 *x = X509_new();
	X509_NAME *name;
	FILE *f;

	ck_assert_ptr_nonnull(x);
	id->key = new_key();
	ck_assert_int_eq(X509_set_version(x, 2), 1);
	ck_assert_int_eq(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++),
			 1);
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notBefore(x), -300));
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
	ck_assert_int_eq(X509_set_pubkey(x, id->key), 1);
	name = X509_get_subject_name(x);
	ck_assert_int_eq(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						    (const unsigned char *)cn,
						    -1, -1, 0),
			 1);
	ck_assert_int_eq(
	    X509_set_issuer_name(
		x, issuer != NULL ? X509_get_subject_name(issuer->cert) : name),
	    1);
	if (issuer == NULL) {
		add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer->cert, NID_basic_constraints,
			"critical,CA:FALSE");
		add_ext(x, issuer->cert, NID_key_usage,
			"critical,digitalSignature");
		add_ext(x, issuer->cert, NID_ext_key_usage, eku);
		add_ext(x, issuer->cert, NID_subject_alt_name, san);
	}
	ck_assert_int_gt(
	    X509_sign(x, issuer != NULL ? issuer->key : id->key, EVP_sha256()),
	    0);
	id->cert = x;
	snprintf(id->pem, sizeof(id->pem), "%s/%s.pem", pki_dir, file);
	f = fopen(id->pem, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(PEM_write_X509(f, x), 1);
	ck_assert_int_eq(fclose(f), 0);
}

static void free_ident(struct ident *id)
{
	if (id->pem[0] != '\0')
		unlink(id->pem);
	X509_free(id->cert);
	EVP_PKEY_free(id->key);
	memset(id, 0, sizeof(*id));
}

static void pki_setup(void)
{
	char san[128];

	snprintf(pki_dir, sizeof(pki_dir), "%s/kms-rafttls-pki.XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(pki_dir));
	make_ident(&ca, "ca", "kmsd.dev test CA", NULL, NULL, NULL);
	make_ident(&other_ca, "other-ca", "unrelated CA", NULL, NULL, NULL);
	for (int i = 1; i <= 3; i++) {
		char file[32], cn[32];

		snprintf(file, sizeof(file), "node%d", i);
		snprintf(cn, sizeof(cn), "node %d", i);
		snprintf(san, sizeof(san),
			 "URI:" TD "/kmsd/node/%d,IP:127.0.0.1", i);
		make_ident(&node[i], file, cn, &ca, san,
			   "serverAuth,clientAuth");
	}
	make_ident(&app, "app", "app", &ca, "URI:" TD "/ns/demo/sa/app",
		   "clientAuth");
	make_ident(&foreign2, "foreign2", "node 2 elsewhere", &other_ca,
		   "URI:" TD "/kmsd/node/2", "serverAuth,clientAuth");
	make_ident(&two_uris, "two-uris", "two uris", &ca,
		   "URI:" TD "/kmsd/node/2,URI:" TD "/kmsd/node/1",
		   "serverAuth,clientAuth");
}

static void pki_teardown(void)
{
	free_ident(&two_uris);
	free_ident(&foreign2);
	free_ident(&app);
	for (int i = 1; i <= 3; i++)
		free_ident(&node[i]);
	free_ident(&other_ca);
	free_ident(&ca);
	rmdir(pki_dir);
}

/* ---- per-test state: a loop on this thread, a temp dir, captured logs ---- */

static uv_loop_t loop;
static uv_timer_t tick;
static char dir[256];
static char log_path[300];
static int saved_stderr = -1;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* who may be which node */
struct members {
	unsigned long long ids[4];
	int n;
	atomic_int calls;
};

static struct members cluster123 = {.ids = {1, 2, 3}, .n = 3};
static struct members cluster12 = {.ids = {1, 2}, .n = 2};
/* Limits side_init gives its transport (zero: the defaults). */
static kms_raft_tls_opts limits;
static int applied_ok;	  /* raft_apply callbacks with status 0 */
static int n_writes_done; /* uv_write callbacks */

static void on_tick(uv_timer_t *t)
{
	(void)t;
}

/* Runs the loop until cond holds or ms pass; the tick timer keeps each
 * uv_run(UV_RUN_ONCE) short. */
#define WAIT_FOR(cond, ms)                                                     \
	do {                                                                   \
		int64_t d_ = now_ms() + (ms);                                  \
		while (!(cond) && now_ms() < d_)                               \
			uv_run(&loop, UV_RUN_ONCE);                            \
	} while (0)

static int rm_entry(const char *p, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void setup(void)
{
	int fd;

	snprintf(dir, sizeof(dir), "%s/kms-rafttls.XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(log_path, sizeof(log_path), "%s/log", dir);
	/* The transport's warnings go to stderr: keep them to check that a
	 * refusal names its reason. KMS_TEST_VERBOSE=1 leaves stderr alone. */
	if (getenv("KMS_TEST_VERBOSE") == NULL) {
		fd = open(log_path,
			  O_CREAT | O_WRONLY | O_TRUNC | O_APPEND | O_CLOEXEC,
			  0600);
		ck_assert_int_ge(fd, 0);
		saved_stderr = dup(2);
		ck_assert_int_ge(dup2(fd, 2), 0);
		close(fd);
	}
	/* Counters start at zero for every test, with or without fork. */
	atomic_store(&cluster123.calls, 0);
	atomic_store(&cluster12.calls, 0);
	applied_ok = 0;
	n_writes_done = 0;
	memset(&limits, 0, sizeof(limits));
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	ck_assert_int_eq(uv_timer_init(&loop, &tick), 0);
	ck_assert_int_eq(uv_timer_start(&tick, on_tick, 5, 5), 0);
}

static void teardown(void)
{
	int64_t deadline = now_ms() + 5000;

	uv_close((uv_handle_t *)&tick, NULL);
	/* Bounded: a failed test may leave a transport open (without fork). */
	while (uv_run(&loop, UV_RUN_NOWAIT) != 0 && now_ms() < deadline)
		usleep(1000);
	/* UV_EBUSY here means a handle (a stream handed to "raft") leaked. */
	ck_assert_int_eq(uv_loop_close(&loop), 0);
	if (saved_stderr >= 0) {
		dup2(saved_stderr, 2);
		close(saved_stderr);
		saved_stderr = -1;
	}
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int log_contains(const char *needle)
{
	char buf[65536];
	FILE *f;
	size_t n;

	if (saved_stderr < 0)
		return 1; /* KMS_TEST_VERBOSE: the log went to the terminal */
	f = fopen(log_path, "r");
	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, needle) != NULL;
}

static int log_count(const char *needle)
{
	char buf[65536];
	FILE *f = fopen(log_path, "r");
	size_t n;
	int count = 0;

	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (const char *p = buf; (p = strstr(p, needle)) != NULL; p++)
		count++;
	return count;
}

/* ---- canonical/raft messages as raft's uvClient writes them ---- */

static size_t put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return 8;
}

/* A preamble and a header of hdr_len zero bytes: 16 + hdr_len bytes. */
static size_t msg_start(uint8_t *out, uint64_t type, uint64_t hdr_len)
{
	put_le64(out, type);
	put_le64(out + 8, hdr_len);
	memset(out + 16, 0, (size_t)hdr_len);
	return 16 + (size_t)hdr_len;
}

/* RequestVote (type 3) with the flags word: 56 bytes, no payload. */
static size_t request_vote(uint8_t *out)
{
	size_t n = msg_start(out, RAFT_IO_REQUEST_VOTE, 40);

	put_le64(out + 16, 7);	/* term */
	put_le64(out + 24, 2);	/* candidate */
	return n;
}

/* An AppendEntries header announcing n entries of entry_len bytes each
 * (the payload is not included): 16 + 48 + 16 n bytes. */
static size_t append_entries_header(uint8_t *out, uint64_t n,
				    uint32_t entry_len)
{
	size_t len = msg_start(out, RAFT_IO_APPEND_ENTRIES, 48 + 16 * n);

	put_le64(out + 16 + 32, n);
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *e = out + 16 + 40 + 16 * i;

		put_le64(e, 7); /* term */
		e[8] = RAFT_COMMAND;
		for (int k = 0; k < 4; k++)
			e[12 + k] = (uint8_t)(entry_len >> (8 * k));
	}
	return len;
}

/* ---- who may be which node ---- */

static int authorize_member(void *arg, const char *spiffe_id,
			    unsigned long long raft_id)
{
	struct members *m = arg;
	kms_spiffe_id sid;
	uint64_t id = 0;

	atomic_fetch_add(&m->calls, 1);
	if (kms_spiffe_parse_str(spiffe_id, 1, &sid, NULL) != KMS_OK ||
	    !kms_spiffe_in_trust_domain(&sid, "kmsd.dev") ||
	    kms_spiffe_node_id(&sid, &id) != KMS_OK || id != raft_id)
		return 0;
	for (int i = 0; i < m->n; i++)
		if (m->ids[i] == id)
			return 1;
	return 0;
}

/* ---- a bare transport, driven the way raft drives it ---- */

struct reader {
	char buf[8192];
	size_t n;
	int eof;
};

struct side {
	struct raft_uv_transport t;
	kms_raft_tls_opts opts;
	char addr[64];
	int closed;
	int n_accepted;
	raft_id acc_id;
	char acc_addr[64];
	uv_stream_t *acc;
	struct reader acc_rd;
	struct reader acc_rd2; /* for more[0] */
	uv_stream_t *more[4]; /* later accepted streams */
	int n_more;
	/* one outgoing request */
	struct raft_uv_connect req;
	int connect_done;
	int connect_status;
	int close_seen_at_connect; /* the transport close cb had fired already
				    */
	uv_stream_t *out;
	struct reader out_rd;
};

static void on_accept(struct raft_uv_transport *t, raft_id id,
		      const char *address, uv_stream_t *s)
{
	struct side *sd = t->data;

	sd->n_accepted++;
	sd->acc_id = id;
	snprintf(sd->acc_addr, sizeof(sd->acc_addr), "%s", address);
	if (sd->acc != NULL && sd->n_more < 4) {
		sd->more[sd->n_more++] = s;
		return;
	}
	if (sd->acc != NULL) { /* close extras as raft would */
		uv_close((uv_handle_t *)s, (uv_close_cb)raft_free);
		return;
	}
	sd->acc = s;
}

static void on_connect(struct raft_uv_connect *req, uv_stream_t *s, int status)
{
	struct side *sd = req->data;

	sd->connect_done++;
	sd->connect_status = status;
	sd->close_seen_at_connect = sd->closed;
	sd->out = s;
	if (status == 0)
		ck_assert_ptr_nonnull(s);
	else
		ck_assert_ptr_null(s);
}

static void on_tclose(struct raft_uv_transport *t)
{
	struct side *sd = t->data;

	sd->closed = 1;
}

static void side_init(struct side *sd, raft_id id, const struct ident *who,
		      const char *ca_pem, struct members *m, int listen)
{
	kms_err err;

	memset(sd, 0, sizeof(*sd));
	snprintf(sd->addr, sizeof(sd->addr), "127.0.0.1:%d", kms_test_free_port());
	sd->opts.ca_file = ca_pem;
	sd->opts.cert_file = who->pem;
	sd->opts.key = who->key;
	sd->opts.authorize = authorize_member;
	sd->opts.authorize_arg = m;
	sd->opts.max_pending = limits.max_pending;
	sd->opts.max_pending_per_source = limits.max_pending_per_source;
	sd->opts.max_handshakes = limits.max_handshakes;
	sd->opts.hello_timeout_ms = limits.hello_timeout_ms;
	sd->opts.handshake_timeout_ms = limits.handshake_timeout_ms;
	sd->opts.max_message_bytes = limits.max_message_bytes;
	sd->t.data = sd;
	sd->req.data = sd;
	ck_assert_int_eq(kms_raft_tls_init(&sd->t, &loop, &sd->opts, &err),
			 KMS_OK);
	ck_assert_ptr_eq(sd->t.data, sd);
	ck_assert_int_eq(sd->t.init(&sd->t, id, sd->addr), 0);
	if (listen)
		ck_assert_msg(sd->t.listen(&sd->t, on_accept) == 0,
			      "listen: %s", sd->t.errmsg);
}

static void close_stream(uv_stream_t **s);

static void side_close(struct side *sd)
{
	for (int i = 0; i < sd->n_more; i++)
		close_stream(&sd->more[i]);
	sd->t.close(&sd->t, on_tclose);
	WAIT_FOR(sd->closed, 10000);
	ck_assert_int_eq(sd->closed, 1);
	kms_raft_tls_close(&sd->t);
}

static void close_stream(uv_stream_t **s)
{
	if (*s != NULL)
		uv_close((uv_handle_t *)*s, (uv_close_cb)raft_free);
	*s = NULL;
}

static void rd_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct reader *r = h->data;

	(void)suggested;
	buf->base = r->buf + r->n;
	buf->len = sizeof(r->buf) - 1 - r->n;
}

static void rd_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct reader *r = s->data;

	(void)buf;
	if (n > 0) {
		r->n += (size_t)n;
		r->buf[r->n] = '\0';
	} else if (n < 0) {
		r->eof = 1;
		uv_read_stop(s);
	}
}

static void start_reading(uv_stream_t *s, struct reader *r)
{
	memset(r, 0, sizeof(*r));
	s->data = r;
	ck_assert_int_eq(uv_read_start(s, rd_alloc, rd_read), 0);
}

static void on_write(uv_write_t *w, int status)
{
	ck_assert_int_eq(status, 0);
	n_writes_done++;
	free(w);
}

/* p must stay valid until the write callback has run. */
static void write_bytes(uv_stream_t *s, const void *p, size_t n)
{
	uv_write_t *w = malloc(sizeof(*w));
	uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);

	ck_assert_ptr_nonnull(w);
	ck_assert_int_eq(uv_write(w, s, &b, 1, on_write), 0);
}

static void write_str(uv_stream_t *s, const char *str)
{
	write_bytes(s, str, strlen(str));
}

/* ---- raw clients on their own thread ---- */

static int tcp_dial(const char *addr)
{
	struct sockaddr_in a;
	struct timeval tv = {.tv_sec = 8};
	const char *colon = strrchr(addr, ':');
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)atoi(colon + 1));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

struct client {
	const char *addr;
	const struct ident *who; /* NULL: plaintext */
	unsigned long long claim;
	const char *claim_addr;
	int exchange; /* after the acknowledgement: a RequestVote out, "pong"
		       back */
	const uint8_t *msg; /* or: after the acknowledgement, these bytes */
	size_t msg_len;
	/* results */
	int handshake_ok;
	int acked;
	int exchanged;
	int cut; /* the server ended the link after msg */
	int closed_by_server; /* plaintext: EOF or reset, not a timeout */
	atomic_int done;
	pthread_t th;
};

static int ssl_read_full(SSL *ssl, unsigned char *p, int n)
{
	int got = 0;

	while (got < n) {
		int r = SSL_read(ssl, p + got, n - got);

		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	int fd = -1;
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	unsigned char pre[4 + 8 + 2 + 256], ack[4], pong[4];
	size_t alen, n = 0;

	if (c->who == NULL) {
		fd = tcp_dial(c->addr);
		static const char req[] = "GET / HTTP/1.1\r\nHost: raft\r\n\r\n"
					  "\x00\x00\x00\x00\x00\x00\x00\x01";
		char buf[256];
		ssize_t r;

		if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0)
			goto out;
		do
			r = recv(fd, buf, sizeof(buf), 0);
		while (r > 0);
		/* 0: orderly close; ECONNRESET: closed with data unread. A
		 * timeout (EAGAIN) means the server kept the connection. */
		c->closed_by_server = r == 0 || errno == ECONNRESET;
		goto out;
	}
	/* Everything ready before the dial, as raft_tls's own client: its
	 * ClientHello follows the TCP connect at once. */
	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_load_verify_locations(ctx, ca.pem, NULL) != 1 ||
	    SSL_CTX_use_certificate_file(ctx, c->who->pem, SSL_FILETYPE_PEM) !=
		1 ||
	    SSL_CTX_use_PrivateKey(ctx, c->who->key) != 1)
		goto out;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	fd = tcp_dial(c->addr);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		goto out;
	c->handshake_ok = 1;
	alen = strlen(c->claim_addr);
	memcpy(pre, "KMSR", 4);
	n = 4;
	for (int i = 7; i >= 0; i--)
		pre[n++] = (unsigned char)(c->claim >> (8 * i));
	pre[n++] = (unsigned char)(alen >> 8);
	pre[n++] = (unsigned char)alen;
	memcpy(pre + n, c->claim_addr, alen);
	n += alen;
	if (SSL_write(ssl, pre, (int)n) != (int)n)
		goto out;
	if (ssl_read_full(ssl, ack, 4) != 0 || memcmp(ack, "KMSA", 4) != 0)
		goto out;
	c->acked = 1;
	if (c->exchange) {
		uint8_t rv[64];
		int n_rv = (int)request_vote(rv);

		if (SSL_write(ssl, rv, n_rv) != n_rv ||
		    ssl_read_full(ssl, pong, 4) != 0 ||
		    memcmp(pong, "pong", 4) != 0)
			goto out;
		c->exchanged = 1;
	}
	if (c->msg != NULL) {
		if (SSL_write(ssl, c->msg, (int)c->msg_len) != (int)c->msg_len)
			goto out;
		/* Nothing comes back on this link: a read ends only when the
		 * server closes it (or after SO_RCVTIMEO). */
		c->cut = SSL_read(ssl, pong, 1) <= 0 &&
			 SSL_get_error(ssl, 0) != SSL_ERROR_WANT_READ;
	}
out:
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	if (fd >= 0)
		close(fd);
	atomic_store(&c->done, 1);
	return NULL;
}

static void client_start(struct client *c)
{
	ck_assert_int_eq(pthread_create(&c->th, NULL, client_main, c), 0);
}

static void client_join(struct client *c)
{
	WAIT_FOR(atomic_load(&c->done), 15000);
	ck_assert_int_eq(atomic_load(&c->done), 1);
	pthread_join(c->th, NULL);
}

/* ---- tests on the bare transport ---- */

/* The positive twin of every refusal below: a member with its own id gets
 * through, raft sees its id and address, and bytes flow both ways. */
START_TEST(member_peer_is_accepted_and_bytes_flow)
{
	struct side s;
	struct client c = {.who = &node[2],
			   .claim = 2,
			   .claim_addr = "127.0.0.1:7002",
			   .exchange = 1};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	WAIT_FOR(s.acc != NULL, 10000);
	ck_assert_ptr_nonnull(s.acc);
	ck_assert_int_eq(s.n_accepted, 1);
	ck_assert_uint_eq(s.acc_id, 2);
	ck_assert_str_eq(s.acc_addr, "127.0.0.1:7002");
	start_reading(s.acc, &s.acc_rd);
	WAIT_FOR(s.acc_rd.n >= 56, 10000);
	{
		uint8_t rv[64];

		ck_assert_uint_eq(s.acc_rd.n, request_vote(rv));
		ck_assert(memcmp(s.acc_rd.buf, rv, 56) == 0);
	}
	write_str(s.acc, "pong");
	client_join(&c);
	ck_assert_int_eq(c.exchanged, 1);
	WAIT_FOR(s.acc_rd.eof, 10000); /* the peer left: raft's end sees it */
	ck_assert_int_eq(s.acc_rd.eof, 1);
	close_stream(&s.acc);
	side_close(&s);
}
END_TEST

START_TEST(plaintext_client_is_disconnected_and_never_reaches_raft)
{
	struct side s;
	struct client c = {0};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	client_join(&c);
	ck_assert_int_eq(c.closed_by_server, 1);
	WAIT_FOR(log_contains("TLS handshake failed"), 3000);
	ck_assert(log_contains("raft-tls: refused 127.0.0.1:"));
	ck_assert(log_contains("TLS handshake failed"));
	uv_run(&loop, UV_RUN_NOWAIT);
	ck_assert_int_eq(s.n_accepted, 0);
	ck_assert_int_eq(atomic_load(&cluster123.calls), 0);
	side_close(&s);
}
END_TEST

START_TEST(service_client_certificate_is_refused)
{
	struct side s;
	struct client c = {
	    .who = &app, .claim = 2, .claim_addr = "127.0.0.1:7002"};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	client_join(&c);
	ck_assert_int_eq(c.handshake_ok,
			 1);	      /* a valid certificate of our CA... */
	ck_assert_int_eq(c.acked, 0); /* ...but not a node: refused */
	WAIT_FOR(log_contains("is not authorized"), 3000);
	ck_assert(
	    log_contains("certificate spiffe://kmsd.dev/ns/demo/sa/app is not "
			 "authorized as raft node 2"));
	uv_run(&loop, UV_RUN_NOWAIT);
	ck_assert_int_eq(s.n_accepted, 0);
	side_close(&s);
}
END_TEST

START_TEST(node_claiming_another_id_is_refused)
{
	struct side s;
	struct client c = {
	    .who = &node[3], .claim = 2, .claim_addr = "127.0.0.1:7002"};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	client_join(&c);
	ck_assert_int_eq(c.handshake_ok, 1);
	ck_assert_int_eq(c.acked, 0);
	WAIT_FOR(log_contains("is not authorized"), 3000);
	ck_assert(log_contains(
	    "certificate spiffe://kmsd.dev/kmsd/node/3 is not authorized "
	    "as raft node 2"));
	uv_run(&loop, UV_RUN_NOWAIT);
	ck_assert_int_eq(s.n_accepted, 0);
	side_close(&s);
}
END_TEST

START_TEST(certificate_with_two_uris_is_refused)
{
	struct side s;
	struct client c = {
	    .who = &two_uris, .claim = 2, .claim_addr = "127.0.0.1:7002"};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	client_join(&c);
	ck_assert_int_eq(c.acked, 0);
	WAIT_FOR(log_contains("exactly one SPIFFE ID"), 3000);
	ck_assert(
	    log_contains("certificate does not carry exactly one SPIFFE ID"));
	ck_assert_int_eq(s.n_accepted, 0);
	ck_assert_int_eq(atomic_load(&cluster123.calls), 0);
	side_close(&s);
}
END_TEST

START_TEST(certificate_from_another_ca_is_refused_at_the_handshake)
{
	struct side s;
	struct client c = {
	    .who = &foreign2, .claim = 2, .claim_addr = "127.0.0.1:7002"};

	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	c.addr = s.addr;
	client_start(&c);
	client_join(&c);
	ck_assert_int_eq(c.acked, 0);
	WAIT_FOR(log_contains("certificate verify failed"), 3000);
	ck_assert(
	    log_contains("TLS handshake failed: certificate verify failed"));
	uv_run(&loop, UV_RUN_NOWAIT);
	ck_assert_int_eq(s.n_accepted, 0);
	/* Refused before any identity check. */
	ck_assert_int_eq(atomic_load(&cluster123.calls), 0);
	side_close(&s);
}
END_TEST

/* The other direction: our node dials a server whose certificate chains
 * to another CA. */
START_TEST(server_from_another_ca_is_refused_by_connect)
{
	struct side a, b;
	struct members m2 = {.ids = {1, 2}, .n = 2};

	side_init(&b, 2, &foreign2, other_ca.pem, &m2, 1);
	side_init(&a, 1, &node[1], ca.pem, &m2, 0);
	ck_assert_int_eq(a.t.connect(&a.t, &a.req, 2, b.addr, on_connect), 0);
	WAIT_FOR(a.connect_done, 10000);
	ck_assert_int_eq(a.connect_done, 1);
	ck_assert_int_eq(a.connect_status, RAFT_NOCONNECTION);
	ck_assert(log_contains("TLS handshake failed"));
	ck_assert_int_eq(b.n_accepted, 0);
	side_close(&a);
	side_close(&b);
}
END_TEST

/* Whether the server closed fd within ms (EOF or reset); 0 if it is
 * still open then. */
static int closed_within(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char b;

	if (poll(&p, 1, ms) != 1)
		return 0;
	return recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

/* A connection that sends nothing is closed at the hello deadline, and
 * the summary line counts it. */
START_TEST(silent_connection_is_closed_at_the_hello_deadline)
{
	struct side s;
	int fd;
	int64_t t0;

	limits.hello_timeout_ms = 300;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	fd = tcp_dial(s.addr);
	t0 = now_ms();
	ck_assert(closed_within(fd, 5000));
	ck_assert_int_ge(now_ms() - t0, 250);
	ck_assert_int_lt(now_ms() - t0, 2000);
	close(fd);
	WAIT_FOR(log_contains("1 silent for 300 ms"), 3000);
	ck_assert(log_contains("1 silent for 300 ms"));
	ck_assert_int_eq(s.n_accepted, 0);
	side_close(&s);
}
END_TEST

/* The twin: a client that starts its handshake (its first bytes arrive in
 * time) and then stalls is closed at the handshake deadline instead. */
START_TEST(stalled_handshake_is_closed_at_the_handshake_deadline)
{
	struct side s;
	/* A TLS record header announcing a ClientHello that never comes. */
	static const uint8_t partial[] = {0x16, 0x03, 0x01, 0x02, 0x00};
	int fd;
	int64_t t0;

	limits.hello_timeout_ms = 300;
	limits.handshake_timeout_ms = 1500;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	fd = tcp_dial(s.addr);
	t0 = now_ms();
	ck_assert_int_eq(send(fd, partial, sizeof(partial), MSG_NOSIGNAL),
			 (ssize_t)sizeof(partial));
	ck_assert(closed_within(fd, 5000));
	ck_assert_int_ge(now_ms() - t0, 1300);
	close(fd);
	WAIT_FOR(log_contains("TLS handshake timed out"), 3000);
	ck_assert(log_contains("raft-tls: refused 127.0.0.1:"));
	ck_assert(log_contains("TLS handshake timed out"));
	ck_assert(!log_contains("silent for"));
	ck_assert_int_eq(s.n_accepted, 0);
	side_close(&s);
}
END_TEST

/* With one handshake thread, a client stalled in its handshake keeps it
 * while nobody else needs it; when a peer's ClientHello arrives, the
 * stalled handshake is ended and the peer served at once, not at the
 * stalled one's deadline. */
START_TEST(stalled_handshake_gives_way_to_a_peer)
{
	static const uint8_t partial[] = {0x16, 0x03, 0x01, 0x02, 0x00};
	struct side s;
	struct client c = {.who = &node[2],
			   .claim = 2,
			   .claim_addr = "127.0.0.1:7002"};
	int fd;
	int64_t t0;

	limits.max_handshakes = 1;
	limits.handshake_timeout_ms = 10000;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	fd = tcp_dial(s.addr);
	ck_assert_int_eq(send(fd, partial, sizeof(partial), MSG_NOSIGNAL),
			 (ssize_t)sizeof(partial));
	ck_assert(!closed_within(fd, 500)); /* alone, it keeps its thread */
	c.addr = s.addr;
	t0 = now_ms();
	client_start(&c);
	WAIT_FOR(s.acc != NULL, 10000);
	ck_assert_ptr_nonnull(s.acc);
	ck_assert_int_lt(now_ms() - t0, 3000);
	ck_assert(closed_within(fd, 1000));
	client_join(&c);
	ck_assert_int_eq(c.acked, 1);
	ck_assert(!log_contains("TLS handshake timed out"));
	close(fd);
	close_stream(&s.acc);
	side_close(&s);
}
END_TEST

/* Three idle connections from one address fit the per-source bound of
 * three; the fourth evicts the oldest, not itself, and a peer arriving
 * last still gets in. */
START_TEST(oldest_pending_connection_of_a_source_is_evicted)
{
	struct side s;
	struct client c = {.who = &node[2],
			   .claim = 2,
			   .claim_addr = "127.0.0.1:7002",
			   .exchange = 1};
	int fd[4];

	limits.max_pending_per_source = 3;
	limits.hello_timeout_ms = 20000; /* only the bound closes them */
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	for (int i = 0; i < 3; i++)
		fd[i] = tcp_dial(s.addr);
	/* At the bound: nothing is closed. */
	for (int i = 0; i < 3; i++)
		ck_assert_msg(!closed_within(fd[i], i == 0 ? 300 : 0),
			      "connection %d closed under the bound", i);
	fd[3] = tcp_dial(s.addr);
	ck_assert(closed_within(fd[0], 3000));
	for (int i = 1; i < 4; i++)
		ck_assert_msg(!closed_within(fd[i], 100),
			      "connection %d closed instead of the oldest", i);
	WAIT_FOR(log_contains("over the per-source bound of 3"), 3000);
	ck_assert(log_contains("closed 1 pending connections over the "
			       "per-source bound of 3 (last from 127.0.0.1)"));
	/* A peer arriving now evicts the next oldest and is served. */
	c.addr = s.addr;
	client_start(&c);
	WAIT_FOR(s.acc != NULL, 10000);
	ck_assert_ptr_nonnull(s.acc);
	write_str(s.acc, "pong");
	client_join(&c);
	ck_assert_int_eq(c.exchanged, 1);
	ck_assert(closed_within(fd[1], 3000));
	for (int i = 0; i < 4; i++)
		close(fd[i]);
	close_stream(&s.acc);
	side_close(&s);
}
END_TEST

/* The bound in all counts every source: here a single one, under a
 * per-source bound it never reaches. */
START_TEST(oldest_pending_connection_overall_is_evicted)
{
	struct side s;
	int fd[3];

	limits.max_pending = 2;
	limits.max_pending_per_source = 10;
	limits.hello_timeout_ms = 20000;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	fd[0] = tcp_dial(s.addr);
	fd[1] = tcp_dial(s.addr);
	ck_assert(!closed_within(fd[0], 300));
	ck_assert(!closed_within(fd[1], 0));
	fd[2] = tcp_dial(s.addr);
	ck_assert(closed_within(fd[0], 3000));
	ck_assert(!closed_within(fd[1], 100));
	ck_assert(!closed_within(fd[2], 0));
	WAIT_FOR(log_contains("1 over the bound of 2 in all"), 3000);
	ck_assert(log_contains("1 over the bound of 2 in all"));
	for (int i = 0; i < 3; i++)
		close(fd[i]);
	side_close(&s);
}
END_TEST

/*
 * 32 idle connections from the peer's own address, re-opened whenever the
 * listener closes one, against a per-source bound of 4: the flood churns
 * (each eviction brings a new connection, which evicts the next oldest),
 * yet a member gets its link, again and again, within a second each time.
 * Its connection is out of the flood's reach once its ClientHello has
 * arrived; before that it survives 4 newer arrivals, so now and then an
 * attempt is evicted and, as raft does, the peer dials again. None of the
 * flood reaches raft or the authorize callback, and the log holds a few
 * summary lines, not a line per connection.
 */
START_TEST(peer_gets_through_a_flood_of_idle_connections)
{
	struct side s;
	kms_test_flood *flood;
	kms_test_flood_stats fs;
	int port, worst = 0, attempts = 0;
	int64_t t_flood;

	limits.max_pending_per_source = 4;
	limits.max_pending = 16;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	port = atoi(strrchr(s.addr, ':') + 1);
	flood = kms_test_flood_start(&port, 1, 32);
	ck_assert(kms_test_flood_established(flood, 10000));
	t_flood = now_ms();
	for (int round = 0; round < 5; round++) {
		int64_t t0 = now_ms();
		int n0 = s.n_accepted;

		while (s.n_accepted == n0 && now_ms() - t0 < 10000) {
			struct client c = {.who = &node[2],
					   .claim = 2,
					   .claim_addr = "127.0.0.1:7002"};

			c.addr = s.addr;
			attempts++;
			client_start(&c);
			client_join(&c);
			WAIT_FOR(s.n_accepted > n0, c.acked ? 5000 : 0);
		}
		ck_assert_msg(s.n_accepted > n0, "round %d: the peer never got in",
			      round);
		if (now_ms() - t0 > worst)
			worst = (int)(now_ms() - t0);
	}
	kms_test_flood_stop(flood, &fs);
	printf("raft-tls flood: 5 links through 32 idle connections in %d "
	       "attempts, slowest %d ms; flood: %lu opened, %lu closed by the "
	       "server in %lld ms\n",
	       attempts, worst, fs.opened, fs.closed_by_server,
	       (long long)(now_ms() - t_flood));
	ck_assert_int_lt(worst, 1000);
	ck_assert_uint_gt(fs.closed_by_server, 0); /* the bound was hit */
	ck_assert_int_eq(s.n_accepted, 5);
	ck_assert_int_eq(atomic_load(&cluster123.calls), 5);
	ck_assert_int_le(log_count("raft-tls: closed "), 3);
	close_stream(&s.acc);
	side_close(&s);
}
END_TEST

/* ---- the message length cap ---- */

/*
 * A member (node 2) announces an AppendEntries of 16 + 64 + 8192 bytes
 * under a cap of 4096: its link is cut before raft reads a byte of it,
 * with a line naming the peer and the size. The twin: node 3's link, up
 * before and after, carries a message of exactly 4096 bytes intact.
 */
START_TEST(oversized_message_drops_only_that_link)
{
	static uint8_t big[128], exact[4096], rv[64];
	struct side s, g;
	struct client c = {.who = &node[2],
			   .claim = 2,
			   .claim_addr = "127.0.0.1:7002"};
	size_t hdr;

	limits.max_message_bytes = 4096;
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	memset(&limits, 0, sizeof(limits));
	side_init(&g, 3, &node[3], ca.pem, &cluster123, 0);
	ck_assert_int_eq(g.t.connect(&g.t, &g.req, 1, s.addr, on_connect), 0);
	WAIT_FOR(g.connect_done && s.acc != NULL, 10000);
	ck_assert_int_eq(g.connect_status, 0);
	ck_assert_uint_eq(s.acc_id, 3);
	start_reading(s.acc, &s.acc_rd);
	/* One entry whose message totals the cap exactly. */
	hdr = append_entries_header(exact, 1, 4096 - 16 - 64);
	ck_assert_uint_eq(hdr, 16 + 64);
	memset(exact + hdr, 0xab, sizeof(exact) - hdr);
	write_bytes(g.out, exact, sizeof(exact));
	WAIT_FOR(s.acc_rd.n >= sizeof(exact), 10000);
	ck_assert_uint_eq(s.acc_rd.n, sizeof(exact));
	ck_assert(memcmp(s.acc_rd.buf, exact, sizeof(exact)) == 0);

	c.addr = s.addr;
	c.msg = big;
	c.msg_len = append_entries_header(big, 1, 8192);
	client_start(&c);
	WAIT_FOR(s.n_more == 1, 10000);
	ck_assert_int_eq(s.n_more, 1);
	start_reading(s.more[0], &s.acc_rd2);
	client_join(&c);
	ck_assert_int_eq(c.acked, 1);
	ck_assert_int_eq(c.cut, 1);
	WAIT_FOR(s.acc_rd2.eof, 5000);
	ck_assert_int_eq(s.acc_rd2.eof, 1);
	ck_assert_uint_eq(s.acc_rd2.n, 0); /* raft read nothing of it */
	ck_assert(log_contains("raft-tls: dropped the link from raft node 2 "
			       "(127.0.0.1:"));
	ck_assert(log_contains("a message (type 1) of at least 8272 bytes, "
			       "over the cap of 4096"));

	/* The other link carries on. */
	s.acc_rd.n = 0;
	write_bytes(g.out, rv, request_vote(rv));
	WAIT_FOR(s.acc_rd.n >= 56, 10000);
	ck_assert_uint_eq(s.acc_rd.n, 56);
	ck_assert(!s.acc_rd.eof);
	close_stream(&g.out);
	close_stream(&s.acc);
	side_close(&g);
	side_close(&s);
}
END_TEST

/* Headers raft would read past, and types it does not know, cut the link
 * too (each its own connection), with the reason in the log. */
START_TEST(malformed_message_headers_drop_the_link)
{
	static uint8_t m[3][128];
	static const char *const why[3] = {
	    "a message of unknown type 0",
	    "a message (type 3) with a header of 8 bytes, too short",
	    "an AppendEntries header of 48 bytes announcing 2 entries"};
	size_t len[3];
	struct side s;

	len[0] = msg_start(m[0], 0, 40);
	len[1] = msg_start(m[1], RAFT_IO_REQUEST_VOTE, 8);
	len[2] = msg_start(m[2], RAFT_IO_APPEND_ENTRIES, 48);
	put_le64(m[2] + 16 + 32, 2);
	side_init(&s, 1, &node[1], ca.pem, &cluster123, 1);
	for (int i = 0; i < 3; i++) {
		struct client c = {.who = &node[2],
				   .claim = 2,
				   .claim_addr = "127.0.0.1:7002",
				   .msg = m[i],
				   .msg_len = len[i]};

		c.addr = s.addr;
		client_start(&c);
		client_join(&c);
		ck_assert_int_eq(c.acked, 1);
		ck_assert_msg(c.cut == 1, "message %d was not cut", i);
		WAIT_FOR(log_contains(why[i]), 3000);
		ck_assert_msg(log_contains(why[i]), "no line: %s", why[i]);
	}
	WAIT_FOR(s.acc != NULL && s.n_more == 2, 3000);
	close_stream(&s.acc);
	side_close(&s);
}
END_TEST

/* Node 1 (a) dials node 2 (b): both ends of the link up and read. */
static void link_up(struct side *a, struct side *b)
{
	side_init(b, 2, &node[2], ca.pem, &cluster123, 1);
	side_init(a, 1, &node[1], ca.pem, &cluster123, 0);
	ck_assert_int_eq(a->t.connect(&a->t, &a->req, 2, b->addr, on_connect),
			 0);
	WAIT_FOR(a->connect_done && b->acc != NULL, 10000);
	ck_assert_int_eq(a->connect_status, 0);
	ck_assert_ptr_nonnull(b->acc);
	ck_assert_uint_eq(b->acc_id, 1);
	ck_assert_str_eq(b->acc_addr, a->addr);
	start_reading(b->acc, &b->acc_rd);
	start_reading(a->out, &a->out_rd);
}

/* raft's client never reads what it dialled: a server writing on such a
 * link gets it cut. */
START_TEST(bytes_on_a_dialled_link_drop_it)
{
	struct side a, b;

	link_up(&a, &b);
	write_str(b.acc, "reply-1");
	WAIT_FOR(a.out_rd.eof && b.acc_rd.eof, 10000);
	ck_assert_int_eq(a.out_rd.eof, 1);
	ck_assert_uint_eq(a.out_rd.n, 0);
	ck_assert(log_contains("raft-tls: dropped the link to raft node 2"));
	ck_assert(log_contains(
	    "7 bytes on a link that carries only this node's messages"));
	close_stream(&a.out);
	close_stream(&b.acc);
	side_close(&a);
	side_close(&b);
}
END_TEST

START_TEST(connect_where_nothing_listens_fails)
{
	struct side a;
	char addr[64];

	side_init(&a, 1, &node[1], ca.pem, &cluster123, 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", kms_test_free_port());
	ck_assert_int_eq(a.t.connect(&a.t, &a.req, 2, addr, on_connect), 0);
	WAIT_FOR(a.connect_done, 10000);
	ck_assert_int_eq(a.connect_done, 1);
	ck_assert_int_eq(a.connect_status, RAFT_NOCONNECTION);
	ck_assert_ptr_null(a.out);
	/* A malformed address fails synchronously and never calls back. */
	ck_assert_int_ne(a.t.connect(&a.t, &a.req, 2, "", on_connect), 0);
	side_close(&a);
	ck_assert_int_eq(a.connect_done, 1);
}
END_TEST

/* The server is a member, but not the one raft asked for. */
START_TEST(connect_to_the_wrong_node_fails)
{
	struct side a, b;

	side_init(&b, 2, &node[2], ca.pem, &cluster123, 1);
	side_init(&a, 1, &node[1], ca.pem, &cluster123, 0);
	ck_assert_int_eq(a.t.connect(&a.t, &a.req, 3, b.addr, on_connect), 0);
	WAIT_FOR(a.connect_done, 10000);
	ck_assert_int_eq(a.connect_status, RAFT_NOCONNECTION);
	ck_assert(log_contains(
	    "server certificate spiffe://kmsd.dev/kmsd/node/2 is not "
	    "authorized as that node"));
	ck_assert_int_eq(b.n_accepted, 0);
	side_close(&a);
	side_close(&b);
}
END_TEST

/* Links up and carrying data when both transports close: the bridges stop,
 * raft's ends see EOF, and everything is freed (run under ASan). */
START_TEST(close_with_links_up_is_clean)
{
	static uint8_t rv[64];
	struct side a, b;

	link_up(&a, &b);
	write_bytes(a.out, rv, request_vote(rv));
	WAIT_FOR(b.acc_rd.n >= 56, 10000);
	ck_assert_uint_eq(b.acc_rd.n, 56);
	ck_assert(memcmp(b.acc_rd.buf, rv, 56) == 0);

	a.t.close(&a.t, on_tclose);
	b.t.close(&b.t, on_tclose);
	WAIT_FOR(a.closed && b.closed && a.out_rd.eof && b.acc_rd.eof, 10000);
	ck_assert(a.closed && b.closed);
	ck_assert_int_eq(a.out_rd.eof, 1);
	ck_assert_int_eq(b.acc_rd.eof, 1);
	close_stream(&a.out);
	close_stream(&b.acc);
	kms_raft_tls_close(&a.t);
	kms_raft_tls_close(&b.t);
}
END_TEST

/* A connect stuck in its handshake is canceled at close, and its callback
 * fires before the transport's close callback (as with raft's TCP one). */
START_TEST(connect_in_flight_is_canceled_at_close)
{
	struct side a;
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	char addr[64];
	int lfd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 4),
			 0); /* accepts in the kernel, never answers */
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sa.sin_port));

	side_init(&a, 1, &node[1], ca.pem, &cluster123, 0);
	ck_assert_int_eq(a.t.connect(&a.t, &a.req, 2, addr, on_connect), 0);
	WAIT_FOR(0, 300);
	ck_assert_int_eq(a.connect_done, 0);
	side_close(&a);
	ck_assert_int_eq(a.connect_done, 1);
	ck_assert_int_eq(a.connect_status, RAFT_CANCELED);
	ck_assert_int_eq(a.close_seen_at_connect, 0);
	close(lfd);
}
END_TEST

START_TEST(init_rejects_bad_options)
{
	struct raft_uv_transport t;
	kms_raft_tls_opts o = {.ca_file = ca.pem,
			       .cert_file = node[1].pem,
			       .key = node[1].key,
			       .authorize = authorize_member,
			       .authorize_arg = &cluster123};
	kms_raft_tls_opts bad;
	char missing[300];
	kms_err err;

	memset(&t, 0, sizeof(t));
	bad = o;
	bad.key = NULL;
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &bad, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "key"));
	ck_assert_ptr_null(t.impl);
	bad = o;
	bad.authorize = NULL;
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &bad, &err),
			 KMS_ERR_INVALID);

	snprintf(missing, sizeof(missing), "%s/none.pem", dir);
	bad = o;
	bad.cert_file = missing;
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &bad, &err),
			 KMS_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "certificate chain"));
	ck_assert_ptr_nonnull(strstr(err.msg, "none.pem"));
	bad = o;
	bad.ca_file = missing;
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &bad, &err),
			 KMS_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "CA file"));
	bad = o;
	bad.key = node[2].key; /* someone else's key */
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &bad, &err),
			 KMS_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not match"));
	ck_assert_ptr_null(t.impl);

	/* The good options work, and a transport never used closes at once. */
	ck_assert_int_eq(kms_raft_tls_init(&t, &loop, &o, &err), KMS_OK);
	ck_assert_ptr_nonnull(t.impl);
	kms_raft_tls_close(&t);
	ck_assert_ptr_null(t.impl);
}
END_TEST

/* ---- two real raft servers over the transport ---- */

struct rnode {
	struct raft raft;
	struct raft_io io;
	struct raft_fsm fsm;
	struct raft_uv_transport t;
	kms_raft_tls_opts opts;
	char dir[300];
	char addr[64];
	raft_id id;
	uint64_t applied, last;
	int order_ok;
	int closed;
};

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf,
		     void **result)
{
	struct rnode *n = fsm->data;
	uint64_t v = 0;

	*result = NULL;
	if (buf->len != 8)
		return RAFT_MALFORMED;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | ((const uint8_t *)buf->base)[i];
	if (v != n->last + 1)
		n->order_ok = 0;
	n->last = v;
	n->applied++;
	return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[],
			unsigned *n_bufs)
{
	struct rnode *n = fsm->data;

	*bufs = raft_malloc(sizeof(**bufs));
	if (*bufs == NULL)
		return RAFT_NOMEM;
	(*bufs)[0].base = raft_malloc(8);
	if ((*bufs)[0].base == NULL) {
		raft_free(*bufs);
		return RAFT_NOMEM;
	}
	(*bufs)[0].len = 8;
	memcpy((*bufs)[0].base, &n->last, 8);
	*n_bufs = 1;
	return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
	struct rnode *n = fsm->data;

	if (buf->len == 8)
		memcpy(&n->last, buf->base, 8);
	raft_free(buf->base);
	return 0;
}

static void on_raft_close(struct raft *r)
{
	struct rnode *n = r->data;

	raft_uv_close(&n->io);
	kms_raft_tls_close(&n->t);
	n->closed = 1;
}

static void on_apply(struct raft_apply *req, int status, void *result)
{
	(void)req;
	(void)result;
	if (status == 0)
		applied_ok++;
}

static void rnode_start(struct rnode *n, raft_id id,
			const struct raft_configuration *conf)
{
	kms_err err;
	int rv;

	n->opts.ca_file = ca.pem;
	n->opts.cert_file = node[id].pem;
	n->opts.key = node[id].key;
	n->opts.authorize = authorize_member;
	n->opts.authorize_arg = &cluster12;
	ck_assert_int_eq(kms_raft_tls_init(&n->t, &loop, &n->opts, &err),
			 KMS_OK);
	ck_assert_int_eq(raft_uv_init(&n->io, &loop, n->dir, &n->t), 0);
	n->fsm.version = 1;
	n->fsm.data = n;
	n->fsm.apply = fsm_apply;
	n->fsm.snapshot = fsm_snapshot;
	n->fsm.restore = fsm_restore;
	rv = raft_init(&n->raft, &n->io, &n->fsm, id, n->addr);
	ck_assert_msg(rv == 0, "raft_init: %s", raft_errmsg(&n->raft));
	n->raft.data = n;
	raft_set_election_timeout(&n->raft, 400);
	raft_set_heartbeat_timeout(&n->raft, 50);
	rv = raft_bootstrap(&n->raft, conf);
	ck_assert_msg(rv == 0, "raft_bootstrap: %s", raft_errmsg(&n->raft));
	rv = raft_start(&n->raft);
	ck_assert_msg(rv == 0, "raft_start: %s", raft_errmsg(&n->raft));
}

START_TEST(two_raft_servers_commit_over_mutual_tls)
{
	static struct rnode n[2];
	static struct raft_apply reqs[N_ENTRIES];
	struct raft_configuration conf;
	struct rnode *leader = NULL;

	memset(n, 0, sizeof(n));
	raft_configuration_init(&conf);
	for (int i = 0; i < 2; i++) {
		n[i].id = (raft_id)(i + 1);
		n[i].order_ok = 1;
		snprintf(n[i].addr, sizeof(n[i].addr), "127.0.0.1:%d",
			 kms_test_free_port());
		snprintf(n[i].dir, sizeof(n[i].dir), "%s/node%d", dir, i + 1);
		ck_assert_int_eq(mkdir(n[i].dir, 0700), 0);
		ck_assert_int_eq(raft_configuration_add(&conf, n[i].id,
							n[i].addr, RAFT_VOTER),
				 0);
	}
	for (int i = 0; i < 2; i++)
		rnode_start(&n[i], n[i].id, &conf);
	raft_configuration_close(&conf);

	WAIT_FOR(raft_state(&n[0].raft) == RAFT_LEADER ||
		     raft_state(&n[1].raft) == RAFT_LEADER,
		 20000);
	leader = raft_state(&n[0].raft) == RAFT_LEADER	 ? &n[0]
		 : raft_state(&n[1].raft) == RAFT_LEADER ? &n[1]
							 : NULL;
	ck_assert_msg(leader != NULL,
		      "no leader elected over the TLS transport");

	for (int i = 0; i < N_ENTRIES; i++) {
		struct raft_buffer b = {.base = raft_malloc(8), .len = 8};
		uint64_t v = (uint64_t)i + 1;

		ck_assert_ptr_nonnull(b.base);
		for (int k = 0; k < 8; k++)
			((uint8_t *)b.base)[k] = (uint8_t)(v >> (56 - 8 * k));
		ck_assert_int_eq(
		    raft_apply(&leader->raft, &reqs[i], &b, 1, on_apply), 0);
	}
	WAIT_FOR(n[0].applied == N_ENTRIES && n[1].applied == N_ENTRIES, 20000);
	ck_assert_int_eq(applied_ok, N_ENTRIES);
	for (int i = 0; i < 2; i++) {
		ck_assert_uint_eq(n[i].applied, N_ENTRIES);
		ck_assert_uint_eq(n[i].last, N_ENTRIES);
		ck_assert_int_eq(n[i].order_ok, 1);
	}
	/* Both peers authenticated each other: nothing was refused. */
	ck_assert(saved_stderr < 0 || !log_contains("raft-tls: refused"));
	ck_assert_int_gt(atomic_load(&cluster12.calls), 0);

	/* Close with the links up. */
	raft_close(&n[0].raft, on_raft_close);
	raft_close(&n[1].raft, on_raft_close);
	WAIT_FOR(n[0].closed && n[1].closed, 10000);
	ck_assert(n[0].closed && n[1].closed);
}
END_TEST

/* ---- the preamble and the stream parser, without sockets ---- */

/* A valid preamble for raft node 3 at address, in out: its length. */
static size_t good_preamble(uint8_t *out, const char *address)
{
	size_t len = 0;
	kms_err err = {0};

	ck_assert_msg(kms_raft_tls_preamble_write(3, address, out,
						  KMS_RAFT_TLS_PREAMBLE_MAX,
						  &len, &err) == KMS_OK,
		      "%s", err.msg);
	return len;
}

/* parse's verdict on n bytes; *more as parse says. */
static int parse(const uint8_t *p, size_t n, kms_raft_tls_preamble *out,
		 size_t *more, kms_err *err)
{
	memset(out, 0, sizeof(*out));
	memset(err, 0, sizeof(*err));
	return kms_raft_tls_preamble_parse(p, n, out, more, err);
}

START_TEST(preamble_round_trips_and_arrives_in_two_reads)
{
	uint8_t p[KMS_RAFT_TLS_PREAMBLE_MAX];
	size_t len = good_preamble(p, "127.0.0.1:7003"), more = 99;
	kms_raft_tls_preamble pre;
	kms_err err;

	ck_assert_uint_eq(len, 14 + 14);
	ck_assert(memcmp(p, "KMSR\0\0\0\0\0\0\0\3\0\x0e", 14) == 0);
	/* As in_main reads it: the fixed part says how much follows. */
	ck_assert_int_eq(parse(p, KMS_RAFT_TLS_PREAMBLE_FIXED, &pre, &more, &err),
			 KMS_OK);
	ck_assert_uint_eq(more, 14);
	ck_assert_int_eq(parse(p, len, &pre, &more, &err), KMS_OK);
	ck_assert_uint_eq(more, 0);
	ck_assert_uint_eq(pre.id, 3);
	ck_assert_str_eq(pre.address, "127.0.0.1:7003");
	/* Every shorter input is a good start that asks for the rest. */
	for (size_t n = 0; n < len; n++) {
		ck_assert_int_eq(parse(p, n, &pre, &more, &err), KMS_OK);
		ck_assert_uint_ge(more, 1);
		if (n >= KMS_RAFT_TLS_PREAMBLE_FIXED)
			ck_assert_uint_eq(more, len - n);
	}
}
END_TEST

START_TEST(preamble_with_the_longest_address_is_read)
{
	uint8_t p[KMS_RAFT_TLS_PREAMBLE_MAX];
	char addr[KMS_RAFT_TLS_ADDRESS_MAX + 1];
	kms_raft_tls_preamble pre;
	size_t more, len;
	kms_err err;

	memset(addr, 'a', KMS_RAFT_TLS_ADDRESS_MAX);
	addr[KMS_RAFT_TLS_ADDRESS_MAX] = '\0';
	len = good_preamble(p, addr);
	ck_assert_uint_eq(len, KMS_RAFT_TLS_PREAMBLE_MAX);
	ck_assert_int_eq(parse(p, len, &pre, &more, &err), KMS_OK);
	ck_assert_uint_eq(more, 0);
	ck_assert_str_eq(pre.address, addr);
}
END_TEST

/* Each bad preamble is refused, with the reason, as soon as the byte that
 * spoils it is in. */
START_TEST(bad_preambles_are_refused_saying_why)
{
	static const struct {
		const char *name;
		size_t at;   /* the byte that spoils it */
		uint8_t to;  /* its new value */
		size_t keep; /* bytes given (0: all) */
		const char *why;
	} bad[] = {
	    {"plaintext", 0, 'G', 1, "does not start with \"KMSR\""},
	    {"magic", 3, 'A', 0, "does not start with \"KMSR\""},
	    {"id 0", 11, 0, 14, "raft id 0"},
	    {"no address", 13, 0, 14, "address length 0 (1 to 256)"},
	    {"long address", 12, 1, 14, "address length 270 (1 to 256)"},
	    {"space", 16, ' ', 17, "address byte 2 is 0x20"},
	    {"DEL", 27, 0x7f, 0, "address byte 13 is 0x7f"},
	};
	uint8_t p[KMS_RAFT_TLS_PREAMBLE_MAX + 1];
	kms_raft_tls_preamble pre;
	size_t len, more;
	kms_err err;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		len = good_preamble(p, "127.0.0.1:7003");
		p[bad[i].at] = bad[i].to;
		if (bad[i].keep != 0)
			len = bad[i].keep;
		ck_assert_msg(parse(p, len, &pre, &more, &err) ==
				  KMS_ERR_INVALID,
			      "%s was not refused", bad[i].name);
		ck_assert_msg(strstr(err.msg, bad[i].why) != NULL,
			      "%s: '%s'", bad[i].name, err.msg);
		ck_assert_uint_eq(more, 0);
		ck_assert_uint_eq(pre.id, 0);
	}
	/* A byte past the end is not taken as the start of the next. */
	len = good_preamble(p, "127.0.0.1:7003");
	p[len] = 'x';
	ck_assert_int_eq(parse(p, len + 1, &pre, &more, &err),
			 KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "1 bytes past its end");
}
END_TEST

START_TEST(preamble_write_refuses_what_parse_would)
{
	uint8_t p[KMS_RAFT_TLS_PREAMBLE_MAX];
	char addr[KMS_RAFT_TLS_ADDRESS_MAX + 2];
	size_t len = 1;
	kms_err err = {0};

	memset(addr, 'a', sizeof(addr) - 1);
	addr[sizeof(addr) - 1] = '\0';
	ck_assert_int_eq(kms_raft_tls_preamble_write(0, "h:1", p, sizeof(p),
						     &len, &err),
			 KMS_ERR_INVALID);
	ck_assert_uint_eq(len, 0);
	ck_assert_int_eq(kms_raft_tls_preamble_write(1, "", p, sizeof(p), &len,
						     &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_raft_tls_preamble_write(1, "h 1:2", p, sizeof(p),
						     &len, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_raft_tls_preamble_write(1, addr, p, sizeof(p),
						     &len, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_raft_tls_preamble_write(1, "h:1", p, 16, &len,
						     &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_raft_tls_preamble_write(1, "h:1", p, 17, &len,
						     &err),
			 KMS_OK);
	ck_assert_uint_eq(len, 17);
}
END_TEST

/* Feeds n bytes whole, then byte by byte to a second parser: both must
 * give the same verdict, and the same reason (but on a dialled link,
 * whose reason counts the bytes of the piece that arrived). Returns the
 * verdict; why gets the reason of the whole feed. */
static int feed_both(uint64_t cap, int dialled, const uint8_t *p, size_t n,
		     char *why, size_t why_cap)
{
	kms_raft_tls_stream *whole = NULL, *bytes = NULL;
	const char *w1 = NULL, *w2 = NULL;
	kms_err err = {0};
	int r1, r2 = 0;

	ck_assert_int_eq(kms_raft_tls_stream_new(cap, dialled, &whole, &err),
			 KMS_OK);
	ck_assert_int_eq(kms_raft_tls_stream_new(cap, dialled, &bytes, &err),
			 KMS_OK);
	r1 = kms_raft_tls_stream_feed(whole, p, n, &w1);
	for (size_t i = 0; i < n && r2 == 0; i++)
		r2 = kms_raft_tls_stream_feed(bytes, p + i, 1, &w2);
	ck_assert_int_eq(r1, r2);
	ck_assert_int_eq(w1 == NULL, r1 == 0);
	if (r1 != 0) {
		if (!dialled)
			ck_assert_str_eq(w1, w2);
		snprintf(why, why_cap, "%s", w1);
		/* Refused once, refused from then on. */
		ck_assert_int_eq(kms_raft_tls_stream_feed(whole, p, 0, &w1), -1);
	}
	kms_raft_tls_stream_free(whole);
	kms_raft_tls_stream_free(bytes);
	return r1;
}

START_TEST(stream_parser_follows_messages_in_any_pieces)
{
	static uint8_t m[2048];
	char why[160] = "";
	size_t n = request_vote(m);

	/* RequestVote, then AppendEntries with two entries of 5 bytes and
	 * their 10 bytes of payload, then another RequestVote. */
	n += append_entries_header(m + n, 2, 5);
	memset(m + n, 0xee, 10);
	n += 10;
	n += request_vote(m + n);
	ck_assert_int_eq(feed_both(0, 0, m, n, why, sizeof(why)), 0);
	ck_assert_int_eq(feed_both(1024, 0, m, n, why, sizeof(why)), 0);
}
END_TEST

START_TEST(stream_parser_refuses_what_the_bridge_drops)
{
	static uint8_t m[2048];
	char why[160] = "";
	kms_raft_tls_stream *s = NULL;
	kms_err err = {0};
	size_t n;

	n = msg_start(m, 0, 40);
	ck_assert_int_eq(feed_both(0, 0, m, n, why, sizeof(why)), -1);
	ck_assert_str_eq(why, "a message of unknown type 0");
	n = msg_start(m, RAFT_IO_REQUEST_VOTE, 8);
	ck_assert_int_eq(feed_both(0, 0, m, n, why, sizeof(why)), -1);
	ck_assert_msg(strstr(why, "too short for its fields") != NULL, "%s", why);
	n = msg_start(m, RAFT_IO_APPEND_ENTRIES, 48);
	put_le64(m + 16 + 32, 2);
	ck_assert_int_eq(feed_both(0, 0, m, n, why, sizeof(why)), -1);
	ck_assert_msg(strstr(why, "announcing 2 entries") != NULL, "%s", why);
	/* One entry of 2000 bytes under a cap of 1024. */
	n = append_entries_header(m, 1, 2000);
	ck_assert_int_eq(feed_both(0, 0, m, n, why, sizeof(why)), 0);
	ck_assert_int_eq(feed_both(1024, 0, m, n, why, sizeof(why)), -1);
	ck_assert_msg(strstr(why, "over the cap of 1024") != NULL, "%s", why);
	/* Any byte on a link this node dialled. */
	n = request_vote(m);
	ck_assert_int_eq(feed_both(0, 1, m, n, why, sizeof(why)), -1);
	ck_assert_msg(strstr(why, "carries only this node's messages") != NULL,
		      "%s", why);
	/* The cap has the floor kms_raft_tls_init puts on it. */
	ck_assert_int_eq(kms_raft_tls_stream_new(1023, 0, &s, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_null(s);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("raft_tls");
	TCase *tc = tcase_create("raft_tls");
	TCase *pure = tcase_create("preamble and stream");
	SRunner *sr;

	/* kmsd ignores SIGPIPE; so does this test process. */
	signal(SIGPIPE, SIG_IGN);
	tcase_add_unchecked_fixture(tc, pki_setup, pki_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, init_rejects_bad_options);
	tcase_add_test(tc, member_peer_is_accepted_and_bytes_flow);
	tcase_add_test(tc,
		       plaintext_client_is_disconnected_and_never_reaches_raft);
	tcase_add_test(tc, service_client_certificate_is_refused);
	tcase_add_test(tc, node_claiming_another_id_is_refused);
	tcase_add_test(tc, certificate_with_two_uris_is_refused);
	tcase_add_test(tc,
		       certificate_from_another_ca_is_refused_at_the_handshake);
	tcase_add_test(tc, server_from_another_ca_is_refused_by_connect);
	tcase_add_test(tc, silent_connection_is_closed_at_the_hello_deadline);
	tcase_add_test(tc,
		       stalled_handshake_is_closed_at_the_handshake_deadline);
	tcase_add_test(tc, stalled_handshake_gives_way_to_a_peer);
	tcase_add_test(tc, oldest_pending_connection_of_a_source_is_evicted);
	tcase_add_test(tc, oldest_pending_connection_overall_is_evicted);
	tcase_add_test(tc, peer_gets_through_a_flood_of_idle_connections);
	tcase_add_test(tc, oversized_message_drops_only_that_link);
	tcase_add_test(tc, malformed_message_headers_drop_the_link);
	tcase_add_test(tc, bytes_on_a_dialled_link_drop_it);
	tcase_add_test(tc, connect_where_nothing_listens_fails);
	tcase_add_test(tc, connect_to_the_wrong_node_fails);
	tcase_add_test(tc, close_with_links_up_is_clean);
	tcase_add_test(tc, connect_in_flight_is_canceled_at_close);
	tcase_add_test(tc, two_raft_servers_commit_over_mutual_tls);
	suite_add_tcase(s, tc);
	tcase_add_test(pure, preamble_round_trips_and_arrives_in_two_reads);
	tcase_add_test(pure, preamble_with_the_longest_address_is_read);
	tcase_add_test(pure, bad_preambles_are_refused_saying_why);
	tcase_add_test(pure, preamble_write_refuses_what_parse_would);
	tcase_add_test(pure, stream_parser_follows_messages_in_any_pieces);
	tcase_add_test(pure, stream_parser_refuses_what_the_bridge_drops);
	suite_add_tcase(s, pure);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
