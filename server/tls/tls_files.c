/* tls_files.c - reads the node's TLS files as one checked set, stamps them for the poller, and checks client certificates against the client CA's CRL. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "kms/alloc.h"
#include "kms/spiffe.h"
#include "tls/tls_files.h"

/* PEM files are small; anything bigger is not a certificate bundle or CRL. */
#define TLS_FILE_MAX (1024 * 1024)

static int read_text(const char *path, const char *what, char **out, kms_err *err)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t n;
	int rc = KMS_OK;

	if (f == NULL)
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read the %s %s: %s", what, path,
				strerror(errno));
	buf = kms_malloc(TLS_FILE_MAX + 1);
	if (buf == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the %s", what);
		goto out;
	}
	n = fread(buf, 1, TLS_FILE_MAX + 1, f);
	if (ferror(f) || n > TLS_FILE_MAX || n == 0 || memchr(buf, '\0', n) != NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the %s %s is %s", what, path,
			      ferror(f) ? "unreadable" : n == 0 ? "empty"
			      : n > TLS_FILE_MAX ? "larger than 1 MiB" : "not PEM text (NUL byte)");
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	buf = NULL;
out:
	kms_free(buf);
	fclose(f);
	return rc;
}

int kms_tls_parse_certs(const char *pem, size_t len, const char *what, int code,
			STACK_OF(X509) **out, kms_err *err)
{
	BIO *bio = pem != NULL && len <= INT32_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
	STACK_OF(X509) *certs = sk_X509_new_null();
	X509 *c;
	unsigned long e;
	int rc = KMS_OK;

	if (pem == NULL || len > INT32_MAX) {
		rc = kms_errf(err, code, "the %s holds no certificate", what);
		goto out;
	}
	if (bio == NULL || certs == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the %s", what);
		goto out;
	}
	ERR_clear_error();
	while ((c = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		if (sk_X509_push(certs, c) <= 0) {
			X509_free(c);
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the %s", what);
			goto out;
		}
	}
	e = ERR_peek_last_error();
	if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
		rc = kms_errf(err, code, "the %s holds a certificate that does not parse: %s", what,
			      ERR_reason_error_string(e));
		goto out;
	}
	if (sk_X509_num(certs) == 0) {
		rc = kms_errf(err, code, "the %s holds no certificate", what);
		goto out;
	}
	if (out != NULL) {
		*out = certs;
		certs = NULL;
	}
out:
	ERR_clear_error();
	sk_X509_pop_free(certs, X509_free);
	BIO_free(bio);
	return rc;
}

/* The certificates of a file read into pem: KMS_ERR_CONFIG naming it. */
static int parse_certs(const char *pem, const char *what, const char *path,
		       STACK_OF(X509) **out, kms_err *err)
{
	char name[PATH_MAX + 64];

	snprintf(name, sizeof(name), "%s %s", what, path);
	return kms_tls_parse_certs(pem, strlen(pem), name, KMS_ERR_CONFIG, out, err);
}

static void asn1_time_text(const ASN1_TIME *t, char *out, size_t cap)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n = 0;

	out[0] = '\0';
	if (b != NULL && t != NULL && ASN1_TIME_print(b, t) == 1)
		n = BIO_read(b, out, (int)cap - 1);
	out[n > 0 ? n : 0] = '\0';
	BIO_free(b);
}

/* The node certificate: our key, our name, the node CA, valid now. */
static int check_node_cert(const kms_config *cfg, EVP_PKEY *node_key, STACK_OF(X509) *chain,
			   STACK_OF(X509) *node_cas, kms_err *err)
{
	X509 *leaf = sk_X509_value(chain, 0);
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	kms_spiffe_id have, want;
	kms_err sub = {0};
	char q[KMS_QUOTE_MAX + 4];
	int rc = KMS_OK;

	if (store == NULL || ctx == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory checking %s", cfg->cert_file);
		goto out;
	}
	if (node_key != NULL && X509_check_private_key(leaf, node_key) != 1) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the certificate %s is not for this node's key "
			      "in the HSM (%s)", cfg->cert_file, cfg->tls_key_uri);
		goto out;
	}
	if (kms_svid_from_x509(leaf, &have, &sub) != KMS_OK) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the certificate %s: %s", cfg->cert_file,
			      sub.msg);
		goto out;
	}
	KMS_TRY_GOTO(rc, kms_spiffe_node_format(cfg->trust_domain, cfg->node_id, &want, err), out);
	if (strcmp(have.id, want.id) != 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the certificate %s names '%s', not %s",
			      cfg->cert_file, kms_quote(have.id, q), want.id);
		goto out;
	}
	for (int i = 0; i < sk_X509_num(node_cas); i++)
		if (X509_STORE_add_cert(store, sk_X509_value(node_cas, i)) != 1) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory checking %s",
				      cfg->cert_file);
			goto out;
		}
	if (X509_STORE_CTX_init(ctx, store, leaf, chain) != 1) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory checking %s", cfg->cert_file);
		goto out;
	}
	if (X509_verify_cert(ctx) != 1) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the certificate %s does not verify against the "
			      "node CA %s: %s", cfg->cert_file, cfg->node_ca_file,
			      X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		goto out;
	}
out:
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return rc;
}

/* The CRL: one, parsed, signed by a client CA certificate, not stale. */
static int load_crl(const char *path, STACK_OF(X509) *client_cas, X509_CRL **out,
		    kms_err *err)
{
	char *pem = NULL;
	BIO *bio = NULL;
	X509_CRL *crl = NULL;
	const ASN1_TIME *next;
	int rc = KMS_OK, signed_by_ca = 0;

	KMS_TRY(read_text(path, "CRL file", &pem, err));
	bio = BIO_new_mem_buf(pem, -1);
	if (bio == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the CRL");
		goto out;
	}
	crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
	if (crl == NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the CRL file %s holds no CRL that parses "
			      "(PEM \"X509 CRL\")", path);
		goto out;
	}
	for (int i = 0; i < sk_X509_num(client_cas) && !signed_by_ca; i++) {
		X509 *ca = sk_X509_value(client_cas, i);
		EVP_PKEY *pub = X509_get0_pubkey(ca);

		signed_by_ca = X509_NAME_cmp(X509_get_subject_name(ca),
					     X509_CRL_get_issuer(crl)) == 0 &&
			       pub != NULL && X509_CRL_verify(crl, pub) == 1;
	}
	if (!signed_by_ca) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "the CRL %s is not signed by the client CA "
			      "(ca_file)", path);
		goto out;
	}
	next = X509_CRL_get0_nextUpdate(crl);
	if (next != NULL && X509_cmp_current_time(next) <= 0) {
		char t[64];

		asn1_time_text(next, t, sizeof(t));
		rc = kms_errf(err, KMS_ERR_CONFIG, "the CRL %s is stale: its next update was due "
			      "%s (ops/pki crl issues a new one)", path, t);
		goto out;
	}
	*out = crl;
	crl = NULL;
out:
	ERR_clear_error();
	X509_CRL_free(crl);
	BIO_free(bio);
	kms_free(pem);
	return rc;
}

static void summarize(kms_tls_files *f, X509 *leaf)
{
	char serial[80] = "?", until[64], next[64] = "never";
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
	int n;

	if (hex != NULL)
		snprintf(serial, sizeof(serial), "%.64s", hex);
	OPENSSL_free(hex);
	BN_free(bn);
	asn1_time_text(X509_get0_notAfter(leaf), until, sizeof(until));
	n = snprintf(f->summary, sizeof(f->summary), "node certificate serial %s (not after %s)",
		     serial, until);
	if (f->crl != NULL && n > 0 && (size_t)n < sizeof(f->summary)) {
		STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(f->crl);

		if (X509_CRL_get0_nextUpdate(f->crl) != NULL)
			asn1_time_text(X509_CRL_get0_nextUpdate(f->crl), next, sizeof(next));
		snprintf(f->summary + n, sizeof(f->summary) - (size_t)n,
			 "; client CRL of %d revoked certificate(s) (next update %s)",
			 revoked != NULL ? sk_X509_REVOKED_num(revoked) : 0, next);
	}
}

int kms_tls_files_load(const kms_config *cfg, EVP_PKEY *node_key, kms_tls_files *out,
		       kms_err *err)
{
	kms_tls_files f;
	STACK_OF(X509) *chain = NULL, *client_cas = NULL, *node_cas = NULL;
	int rc;

	memset(&f, 0, sizeof(f));
	KMS_TRY_GOTO(rc, read_text(cfg->cert_file, "certificate file", &f.cert_chain, err), fail);
	KMS_TRY_GOTO(rc, read_text(cfg->ca_file, "client CA file", &f.client_ca, err), fail);
	KMS_TRY_GOTO(rc, read_text(cfg->node_ca_file, "node CA file", &f.node_ca, err), fail);
	KMS_TRY_GOTO(rc, parse_certs(f.cert_chain, "certificate file", cfg->cert_file, &chain, err),
		     fail);
	KMS_TRY_GOTO(rc, parse_certs(f.client_ca, "client CA file", cfg->ca_file, &client_cas, err),
		     fail);
	KMS_TRY_GOTO(rc, parse_certs(f.node_ca, "node CA file", cfg->node_ca_file, &node_cas, err),
		     fail);
	KMS_TRY_GOTO(rc, check_node_cert(cfg, node_key, chain, node_cas, err), fail);
	if (cfg->crl_file != NULL)
		KMS_TRY_GOTO(rc, load_crl(cfg->crl_file, client_cas, &f.crl, err), fail);
	summarize(&f, sk_X509_value(chain, 0));
	sk_X509_pop_free(chain, X509_free);
	sk_X509_pop_free(client_cas, X509_free);
	sk_X509_pop_free(node_cas, X509_free);
	*out = f;
	return KMS_OK;
fail:
	sk_X509_pop_free(chain, X509_free);
	sk_X509_pop_free(client_cas, X509_free);
	sk_X509_pop_free(node_cas, X509_free);
	kms_tls_files_free(&f);
	return rc;
}

void kms_tls_files_free(kms_tls_files *f)
{
	if (f == NULL)
		return;
	kms_free(f->cert_chain);
	kms_free(f->client_ca);
	kms_free(f->node_ca);
	X509_CRL_free(f->crl);
	memset(f, 0, sizeof(*f));
}

void kms_tls_files_stamp(const kms_config *cfg, kms_tls_stamp *out)
{
	const char *paths[4] = {cfg->cert_file, cfg->ca_file, cfg->node_ca_file, cfg->crl_file};

	memset(out, 0, sizeof(*out));
	for (int i = 0; i < 4; i++) {
		struct stat sb;

		/* stat follows symlinks: a swapped link target is a change. */
		if (paths[i] == NULL || stat(paths[i], &sb) != 0) {
			out->f[i].missing = 1;
			continue;
		}
		out->f[i].dev = sb.st_dev;
		out->f[i].ino = sb.st_ino;
		out->f[i].size = sb.st_size;
		out->f[i].mtime = sb.st_mtim;
		out->f[i].ctime = sb.st_ctim;
	}
}

int kms_tls_stamp_equal(const kms_tls_stamp *a, const kms_tls_stamp *b)
{
	for (int i = 0; i < 4; i++) {
		if (a->f[i].missing != b->f[i].missing || a->f[i].dev != b->f[i].dev ||
		    a->f[i].ino != b->f[i].ino || a->f[i].size != b->f[i].size ||
		    a->f[i].mtime.tv_sec != b->f[i].mtime.tv_sec ||
		    a->f[i].mtime.tv_nsec != b->f[i].mtime.tv_nsec ||
		    a->f[i].ctime.tv_sec != b->f[i].ctime.tv_sec ||
		    a->f[i].ctime.tv_nsec != b->f[i].ctime.tv_nsec)
			return 0;
	}
	return 1;
}

int kms_tls_crl_check(X509_CRL *crl, const char *leaf_pem, size_t len, kms_err *err)
{
	BIO *bio;
	X509 *leaf;
	X509_REVOKED *rev = NULL;
	const ASN1_TIME *next;
	int rc = KMS_OK;

	if (crl == NULL)
		return KMS_OK;
	if (leaf_pem == NULL || len == 0 || len > INT32_MAX)
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "no client certificate");
	bio = BIO_new_mem_buf(leaf_pem, (int)len);
	leaf = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	if (leaf == NULL) {
		ERR_clear_error();
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the client certificate does not parse");
	}
	if (X509_NAME_cmp(X509_get_issuer_name(leaf), X509_CRL_get_issuer(crl)) != 0)
		goto out; /* not the client CA's: the node CA issued it */
	next = X509_CRL_get0_nextUpdate(crl);
	if (next != NULL && X509_cmp_current_time(next) <= 0) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the client CA's CRL is stale (its next update has passed): no "
			      "client certificate is accepted until a fresh CRL is loaded");
		goto out;
	}
	/* 1: listed; 2: listed as removeFromCRL (RFC 5280 5.3.1), i.e. not revoked. */
	if (X509_CRL_get0_by_cert(crl, &rev, leaf) == 1)
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the client certificate is revoked");
out:
	ERR_clear_error();
	X509_free(leaf);
	return rc;
}
