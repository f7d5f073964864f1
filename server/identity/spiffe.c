/* spiffe.c - SPIFFE IDs by the SPIFFE ID standard and X509-SVID: the only place kmsd reads one. */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "kms/spiffe.h"

#define SCHEME_LEN (sizeof(KMS_SPIFFE_SCHEME) - 1)

/* A printable, bounded quote of len bytes that may hold anything. */
static const char *quote_n(const char *s, size_t len, char out[KMS_QUOTE_MAX + 4])
{
	char tmp[KMS_QUOTE_MAX + 2];
	size_t n = len < sizeof(tmp) - 1 ? len : sizeof(tmp) - 1;

	for (size_t i = 0; i < n; i++)
		tmp[i] = s[i] == '\0' ? '?' : s[i];
	tmp[n] = '\0';
	return kms_quote(tmp, out);
}

/* SPIFFE ID standard 2.1: trust domain characters. */
static int td_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
	       c == '_';
}

/* 2.2: path segment characters. */
static int path_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '-' || c == '_';
}

static int bad(kms_err *err, const char *s, size_t len, const char *why)
{
	char q[KMS_QUOTE_MAX + 4];

	return kms_errf(err, KMS_ERR_INVALID, "'%s' is not a SPIFFE ID: %s", quote_n(s, len, q),
			why);
}

/* Checks the trust domain of len bytes; a reason, or NULL. */
static const char *td_problem(const char *td, size_t len)
{
	if (len == 0)
		return "the trust domain is empty";
	if (len > KMS_TRUST_DOMAIN_MAX)
		return "the trust domain is longer than 255 bytes";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)td[i];

		if (c >= 'A' && c <= 'Z')
			return "the trust domain has an upper-case letter (it must be lower case)";
		if (c == ':')
			return "the trust domain has a port (':'), which SPIFFE IDs never carry";
		if (c == '@')
			return "the trust domain has user info ('@')";
		if (!td_char(c))
			return "the trust domain has a character outside [a-z0-9.-_]";
	}
	return NULL;
}

static const char *path_problem(const char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t start;

		/* p[i] == '/' here: the caller starts at a '/' and each segment
		 * ends at one. */
		i++;
		start = i;
		while (i < len && p[i] != '/') {
			unsigned char c = (unsigned char)p[i];

			if (c == '%')
				return "the path is percent-encoded ('%'), which SPIFFE IDs never are";
			if (c == '?' || c == '#')
				return "a SPIFFE ID has no query or fragment";
			if (!path_char(c))
				return "the path has a character outside [A-Za-z0-9.-_]";
			i++;
		}
		if (i == start)
			return i == len ? "the path ends with '/'" : "the path has an empty segment ('//')";
		if ((i - start == 1 && p[start] == '.') ||
		    (i - start == 2 && p[start] == '.' && p[start + 1] == '.'))
			return "the path has a '.' or '..' segment";
	}
	return NULL;
}

int kms_spiffe_parse(const char *s, size_t len, int need_path, kms_spiffe_id *out,
		     kms_err *err)
{
	const char *td, *slash, *why;
	size_t td_len, rest;

	if (s == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "the SPIFFE ID is missing");
	if (len == 0)
		return kms_errf(err, KMS_ERR_INVALID, "the SPIFFE ID is empty");
	if (memchr(s, '\0', len) != NULL)
		return bad(err, s, len, "it holds a NUL byte");
	if (len > KMS_SPIFFE_ID_MAX)
		return kms_errf(err, KMS_ERR_INVALID,
				"the SPIFFE ID is %zu bytes, longer than the %d allowed", len,
				KMS_SPIFFE_ID_MAX);
	if (len < SCHEME_LEN || memcmp(s, KMS_SPIFFE_SCHEME, SCHEME_LEN) != 0)
		return bad(err, s, len, "it does not start with spiffe:// (in lower case)");
	td = s + SCHEME_LEN;
	rest = len - SCHEME_LEN;
	slash = memchr(td, '/', rest);
	td_len = slash != NULL ? (size_t)(slash - td) : rest;
	why = td_problem(td, td_len);
	if (why == NULL && slash != NULL)
		why = path_problem(slash, rest - td_len);
	if (why == NULL && need_path && slash == NULL)
		why = "it names a trust domain but no workload (the path is empty)";
	if (why != NULL)
		return bad(err, s, len, why);
	if (out != NULL) {
		memcpy(out->id, s, len);
		out->id[len] = '\0';
		out->len = len;
		out->td_len = td_len;
		out->path_off = SCHEME_LEN + td_len;
	}
	return KMS_OK;
}

int kms_spiffe_parse_str(const char *s, int need_path, kms_spiffe_id *out, kms_err *err)
{
	if (s == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "the SPIFFE ID is missing");
	return kms_spiffe_parse(s, strnlen(s, KMS_SPIFFE_ID_MAX + 1), need_path, out, err);
}

const char *kms_spiffe_path(const kms_spiffe_id *id)
{
	return id->id + id->path_off;
}

int kms_spiffe_in_trust_domain(const kms_spiffe_id *id, const char *td)
{
	return td != NULL && strlen(td) == id->td_len &&
	       memcmp(id->id + SCHEME_LEN, td, id->td_len) == 0;
}

int kms_trust_domain_parse(const char *s, char *out, size_t cap, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	const char *why;
	size_t len;

	if (s == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "the trust domain is missing");
	if (strncmp(s, KMS_SPIFFE_SCHEME, SCHEME_LEN) == 0)
		s += SCHEME_LEN;
	len = strnlen(s, KMS_TRUST_DOMAIN_MAX + 1);
	why = td_problem(s, len);
	if (why == NULL && len >= cap)
		why = "the trust domain is too long";
	if (why != NULL)
		return kms_errf(err, KMS_ERR_INVALID, "'%s' is not a trust domain: %s",
				kms_quote(s, q), why);
	memcpy(out, s, len);
	out[len] = '\0';
	return KMS_OK;
}

int kms_spiffe_is_node_path(const kms_spiffe_id *id)
{
	return strncmp(kms_spiffe_path(id), KMS_NODE_PATH_PREFIX,
		       sizeof(KMS_NODE_PATH_PREFIX) - 1) == 0;
}

int kms_spiffe_node_id(const kms_spiffe_id *id, uint64_t *node)
{
	const char *p = kms_spiffe_path(id);
	uint64_t v = 0;

	if (strncmp(p, KMS_NODE_PATH, sizeof(KMS_NODE_PATH) - 1) != 0)
		return KMS_ERR_INVALID;
	p += sizeof(KMS_NODE_PATH) - 1;
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
	*node = v;
	return KMS_OK;
}

int kms_spiffe_node_format(const char *td, uint64_t node, kms_spiffe_id *out, kms_err *err)
{
	char buf[KMS_SPIFFE_ID_MAX + 1];
	int n;

	if (node == 0)
		return kms_errf(err, KMS_ERR_INVALID, "node id 0 names no node");
	n = snprintf(buf, sizeof(buf), KMS_SPIFFE_SCHEME "%s" KMS_NODE_PATH "%llu",
		     td != NULL ? td : "", (unsigned long long)node);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return kms_errf(err, KMS_ERR_INVALID, "a node SPIFFE ID does not fit");
	return kms_spiffe_parse(buf, (size_t)n, 1, out, err);
}

/* --- X509-SVID --- */

int kms_svid_from_x509(X509 *cert, kms_spiffe_id *out, kms_err *err)
{
	GENERAL_NAMES *names = NULL;
	const GENERAL_NAME *uri = NULL;
	int n_uri = 0, rc;
	kms_err sub = {0};
	const char *s;
	int len;

	if (cert == NULL)
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "no client certificate");
	names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);

		if (g->type == GEN_URI) {
			n_uri++;
			uri = g;
		}
	}
	if (n_uri == 0) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the certificate has no URI SAN: the caller's identity is the one "
			      "spiffe:// URI SAN (DNS, e-mail and IP SANs never name a principal)");
		goto out;
	}
	if (n_uri > 1) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the certificate has %d URI SANs; an X509-SVID has exactly one", n_uri);
		goto out;
	}
	s = (const char *)ASN1_STRING_get0_data(uri->d.uniformResourceIdentifier);
	len = ASN1_STRING_length(uri->d.uniformResourceIdentifier);
	if (len <= 0 || s == NULL) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the certificate's URI SAN is empty");
		goto out;
	}
	if (memchr(s, '\0', (size_t)len) != NULL) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the certificate's URI SAN holds a NUL byte");
		goto out;
	}
	if ((size_t)len < SCHEME_LEN || strncmp(s, KMS_SPIFFE_SCHEME, SCHEME_LEN) != 0) {
		char q[KMS_QUOTE_MAX + 4];

		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the certificate's URI SAN '%s' is not a spiffe:// ID",
			      quote_n(s, (size_t)len, q));
		goto out;
	}
	rc = kms_spiffe_parse(s, (size_t)len, 1, out, &sub);
	if (rc != KMS_OK)
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the certificate's URI SAN: %s",
			      sub.msg);
out:
	GENERAL_NAMES_free(names);
	return rc;
}

int kms_svid_from_pem(const char *pem, size_t len, kms_spiffe_id *out, kms_err *err)
{
	BIO *bio;
	X509 *cert;
	int rc;

	if (pem == NULL || len == 0 || len > INT32_MAX)
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "no client certificate");
	bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading a certificate");
	cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (cert == NULL) {
		ERR_clear_error();
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the peer certificate does not parse");
	}
	rc = kms_svid_from_x509(cert, out, err);
	X509_free(cert);
	return rc;
}
