/* tls_policy.c - kmsd's TLS version and cipher policy, put in force process-wide through OpenSSL's system_default configuration and gRPC's cipher variable, and proved on the running server by probing it. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/conf.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "kms/log.h"
#include "tls/tls_policy.h"

#define PROBE_TIMEOUT_S 5
/* The IANA value of our first TLS 1.2 suite (RFC 5289). */
#define SUITE_ECDHE_ECDSA_AES256_GCM 0xC02C

/*
 * Why this way. gRPC 1.51 builds its SSL_CTX itself (tsi), sets the minimum
 * version to TLS 1.2 with no C API to raise it (the C++ setters exist on the
 * SSL credentials, but its certificate-reload path ignores them, and the TLS
 * credentials have none in C), sets the cipher list from
 * GRPC_SSL_CIPHER_SUITES, and never sets server preference. What it does not
 * touch is what OpenSSL applies to every SSL_CTX at SSL_CTX_new: the
 * "system_default" section of the SSL configuration module (config(5)), a
 * documented OpenSSL interface. So the policy lives there, loaded from
 * memory (no file, no OPENSSL_CONF to get wrong), and the cipher list in
 * gRPC's own variable. "Protocol = -TLSv1.2" sets SSL_OP_NO_TLSv1_2, which
 * gRPC's later SSL_CTX_set_min_proto_version(TLS1_2) leaves alone;
 * "MinProtocol" would be overwritten by it. What could break it is a gRPC
 * that starts clearing options or stops reading the variable: the start-up
 * probe then fails and kmsd refuses to run, rather than serve with a weaker
 * policy than configured.
 */
static const char conf_head[] =
	"kmsd_init = kmsd_init_sect\n"
	"[kmsd_init_sect]\n"
	"ssl_conf = kmsd_ssl_sect\n"
	"[kmsd_ssl_sect]\n"
	"system_default = kmsd_tls_sect\n"
	"[kmsd_tls_sect]\n"
	"Options = ServerPreference\n"
	"MinProtocol = TLSv1.2\n"
	/* Debian's default security level, which this section replaces. */
	"CipherString = " KMS_TLS12_CIPHERS ":@SECLEVEL=2\n";

static int ssl_fail(kms_err *err, const char *step)
{
	char detail[160] = "";
	unsigned long e = ERR_get_error();

	if (e != 0)
		ERR_error_string_n(e, detail, sizeof(detail));
	ERR_clear_error();
	return kms_errf(err, KMS_ERR_CONFIG, "TLS policy: %s failed (%s)", step, detail);
}

int kms_tls_policy_apply(unsigned min_tls_version, kms_err *err)
{
	char text[sizeof(conf_head) + 64];
	CONF *conf = NULL;
	BIO *bio = NULL;
	long line = 0;
	int rc = KMS_OK;

	KMS_ENSURE(min_tls_version == 12 || min_tls_version == 13, err, KMS_ERR_CONFIG,
		   "TLS policy: min_tls_version must be 1.2 or 1.3");
	if (setenv("GRPC_SSL_CIPHER_SUITES", KMS_TLS12_CIPHERS, 1) != 0)
		return kms_errf(err, KMS_ERR_CONFIG, "TLS policy: setenv: %s", strerror(errno));
	/* OpenSSL's own configuration first, so that it cannot load later and
	 * put its system_default back over ours. */
	if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL) != 1)
		return ssl_fail(err, "initializing OpenSSL");
	snprintf(text, sizeof(text), "%s%s", conf_head,
		 min_tls_version == 13 ? "Protocol = -TLSv1.2\n" : "");
	conf = NCONF_new(NULL);
	bio = BIO_new_mem_buf(text, -1);
	if (conf == NULL || bio == NULL) {
		rc = ssl_fail(err, "allocating the SSL configuration");
		goto out;
	}
	if (NCONF_load_bio(conf, bio, &line) <= 0) {
		rc = ssl_fail(err, "parsing the SSL configuration");
		goto out;
	}
	if (CONF_modules_load(conf, "kmsd_init", 0) <= 0) {
		rc = ssl_fail(err, "loading the SSL configuration");
		goto out;
	}
	KMS_LOG_I("tls: TLS 1.3 preferred; %s", min_tls_version == 13
			  ? "TLS 1.2 off (min_tls_version = 1.3)"
			  : "TLS 1.2 with ECDHE and AEAD suites only, in the server's order");
out:
	ERR_clear_error();
	BIO_free(bio);
	NCONF_free(conf);
	return rc;
}

/* --- the probe --- */

struct probe {
	int server_hello; /* a ServerHello arrived */
	unsigned suite;   /* the suite it chose */
};

/* Sees the ServerHello: type 2, then length(3), version(2), random(32),
 * session id (1 + n), cipher suite(2) (RFC 5246 7.4.1.3, RFC 8446 4.1.3). */
static void probe_msg(int write_p, int version, int content_type, const void *buf, size_t len,
		      SSL *ssl, void *arg)
{
	const unsigned char *p = buf;
	struct probe *pr = SSL_get_app_data(ssl);

	(void)version;
	(void)arg;
	if (write_p || content_type != SSL3_RT_HANDSHAKE || len < 39 || p[0] != SSL3_MT_SERVER_HELLO ||
	    pr == NULL)
		return;
	pr->server_hello = 1;
	if (len >= (size_t)39 + p[38] + 2)
		pr->suite = (unsigned)p[39 + p[38]] << 8 | p[40 + p[38]];
}

/* A connected socket to listen in *out, with bounded reads and writes. */
static int probe_connect(const char *listen, int *out, kms_err *err)
{
	struct timeval tv = {PROBE_TIMEOUT_S, 0};
	char host[300], *port;
	struct addrinfo hints, *ai = NULL;
	int fd = -1;

	if (strncmp(listen, "unix:", 5) == 0) {
		struct sockaddr_un sun;

		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", listen + 5);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
			close(fd);
			fd = -1;
		}
	} else {
		snprintf(host, sizeof(host), "%s", listen);
		port = strrchr(host, ':');
		if (port == NULL)
			return kms_errf(err, KMS_ERR_CONFIG, "TLS policy probe: bad address %s",
					listen);
		*port++ = '\0';
		/* A wildcard listener is reached on loopback. */
		if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "127.0.0.1");
		else if (strcmp(host, "[::]") == 0)
			snprintf(host, sizeof(host), "::1");
		else if (host[0] == '[' && host[strlen(host) - 1] == ']') {
			host[strlen(host) - 1] = '\0';
			memmove(host, host + 1, strlen(host));
		}
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		if (getaddrinfo(host, port, &hints, &ai) != 0)
			return kms_errf(err, KMS_ERR_CONFIG, "TLS policy probe: cannot resolve %s",
					listen);
		for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next) {
			fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
			if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
				close(fd);
				fd = -1;
			}
		}
		freeaddrinfo(ai);
	}
	if (fd < 0)
		return kms_errf(err, KMS_ERR_CONFIG, "TLS policy probe: cannot connect to %s: %s",
				listen, strerror(errno));
	/* Bounded: a server that never answers must not hang the start-up. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
		int e = errno;

		close(fd);
		return kms_errf(err, KMS_ERR_CONFIG, "TLS policy probe: setsockopt: %s",
				strerror(e));
	}
	*out = fd;
	return KMS_OK;
}

/* One ClientHello of version max_version offering ciphers; fills *pr. */
static int probe_once(const char *listen, int max_version, const char *ciphers, struct probe *pr,
		      kms_err *err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = NULL;
	int fd = -1, rc = KMS_OK;

	memset(pr, 0, sizeof(*pr));
	if (ctx == NULL) {
		rc = ssl_fail(err, "creating the probe's TLS context");
		goto out;
	}
	/* The probe gets the process policy too: undo what would stop it from
	 * offering what it tests. It verifies nothing and never completes. */
	SSL_CTX_clear_options(ctx, SSL_OP_NO_TLSv1_2);
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, max_version) != 1 ||
	    (ciphers != NULL && SSL_CTX_set_cipher_list(ctx, ciphers) != 1)) {
		rc = ssl_fail(err, "setting up the probe");
		goto out;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_msg_callback(ctx, probe_msg);
	KMS_TRY_GOTO(rc, probe_connect(listen, &fd, err), out);
	ssl = SSL_new(ctx);
	if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_set_app_data(ssl, pr) != 1) {
		rc = ssl_fail(err, "setting up the probe connection");
		goto out;
	}
	/* Fails in any case (we send no certificate, or the server refuses
	 * the hello): what matters is what the ServerHello said. */
	(void)SSL_connect(ssl);
out:
	ERR_clear_error();
	SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	SSL_CTX_free(ctx);
	return rc;
}

int kms_tls_policy_probe(const char *listen, unsigned min_tls_version, kms_err *err)
{
	struct probe pr;

	KMS_LOG_I("tls: probing the TLS policy on %s (gRPC logs the handshakes it refuses)",
		  listen);
	if (min_tls_version == 13) {
		KMS_TRY(probe_once(listen, TLS1_3_VERSION, NULL, &pr, err));
		KMS_ENSURE(pr.server_hello, err, KMS_ERR_CONFIG,
			   "TLS policy probe: %s does not answer a TLS 1.3 ClientHello", listen);
		KMS_TRY(probe_once(listen, TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", &pr,
				   err));
		KMS_ENSURE(!pr.server_hello, err, KMS_ERR_CONFIG,
			   "min_tls_version = 1.3 is not enforced: %s answered a TLS 1.2 "
			   "ClientHello (did gRPC or OpenSSL change how it builds TLS contexts? "
			   "see server/tls/tls_policy.c)",
			   listen);
		return KMS_OK;
	}
	KMS_TRY(probe_once(listen, TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA", &pr, err));
	KMS_ENSURE(!pr.server_hello, err, KMS_ERR_CONFIG,
		   "the TLS 1.2 cipher policy is not enforced: %s accepted a CBC suite "
		   "(GRPC_SSL_CIPHER_SUITES not read by gRPC? see server/tls/tls_policy.c)",
		   listen);
	KMS_TRY(probe_once(listen, TLS1_2_VERSION,
			   "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384", &pr, err));
	KMS_ENSURE(pr.server_hello, err, KMS_ERR_CONFIG,
		   "TLS policy probe: %s does not answer a TLS 1.2 ClientHello with an ECDHE "
		   "AEAD suite",
		   listen);
	KMS_ENSURE(pr.suite == SUITE_ECDHE_ECDSA_AES256_GCM, err, KMS_ERR_CONFIG,
		   "the server's cipher order is not enforced: %s chose suite 0x%04X, not "
		   "ECDHE-ECDSA-AES256-GCM-SHA384 (see server/tls/tls_policy.c)",
		   listen, pr.suite);
	return KMS_OK;
}
