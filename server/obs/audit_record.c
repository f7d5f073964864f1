/* audit_record.c - audit records as JSON lines: the encoding, the SHA-256 chain, signed checkpoints and the tail a writer continues from. */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kms/alloc.h"
#include "kms/audit.h"
#include "kms/fingerprint.h"

/* The longest line kms_audit_tail reads back: far more than any record. */
#define TAIL_MAX (64 * 1024)

void kms_audit_text_free(kms_audit_text *t)
{
	kms_free(t->data);
	memset(t, 0, sizeof(*t));
}

static int reserve(kms_audit_text *t, size_t more)
{
	size_t cap;
	char *p;

	if (t->cap - t->len >= more)
		return KMS_OK;
	cap = t->cap != 0 ? t->cap : 512;
	while (cap - t->len < more)
		cap *= 2;
	p = kms_realloc(t->data, cap);
	if (p == NULL)
		return KMS_ERR_NOMEM;
	t->data = p;
	t->cap = cap;
	return KMS_OK;
}

static int put(kms_audit_text *t, const char *s, size_t n)
{
	KMS_TRY(reserve(t, n));
	memcpy(t->data + t->len, s, n);
	t->len += n;
	return KMS_OK;
}

static int puts_(kms_audit_text *t, const char *s)
{
	return put(t, s, strlen(s));
}

static int putf(kms_audit_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int putf(kms_audit_text *t, const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return KMS_ERR_INTERNAL;
	return put(t, buf, (size_t)n);
}

/*
 * A JSON string of at most KMS_AUDIT_STR_MAX bytes of s. Only printable
 * ASCII is written as it is: anything else a request carried (control
 * bytes, bytes that are not UTF-8) becomes \u00XX, so every line parses.
 */
static int put_str(kms_audit_text *t, const char *s)
{
	size_t n = strlen(s),
	       cut = n > KMS_AUDIT_STR_MAX ? KMS_AUDIT_STR_MAX : n;

	/* At most 6 bytes per input byte, the quotes and the "..." mark. */
	KMS_TRY(reserve(t, cut * 6 + 8));
	t->data[t->len++] = '"';
	for (size_t i = 0; i < cut; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\') {
			t->data[t->len++] = '\\';
			t->data[t->len++] = (char)ch;
		} else if (ch < 0x20 || ch > 0x7e) {
			snprintf(t->data + t->len, 7, "\\u%04x", ch);
			t->len += 6;
		} else {
			t->data[t->len++] = (char)ch;
		}
	}
	if (cut < n) {
		memcpy(t->data + t->len, "...", 3);
		t->len += 3;
	}
	t->data[t->len++] = '"';
	return KMS_OK;
}

/* ,"name": (every call formats a dozen of these: no printf for them) */
static int put_name(kms_audit_text *t, const char *name)
{
	size_t n = strlen(name);

	KMS_TRY(reserve(t, n + 4));
	t->data[t->len++] = ',';
	t->data[t->len++] = '"';
	memcpy(t->data + t->len, name, n);
	t->len += n;
	t->data[t->len++] = '"';
	t->data[t->len++] = ':';
	return KMS_OK;
}

static int put_member(kms_audit_text *t, const char *name, const char *value)
{
	KMS_TRY(put_name(t, name));
	return put_str(t, value != NULL ? value : "");
}

static int put_digits(kms_audit_text *t, uint64_t v)
{
	char digits[20];
	size_t n = 0;

	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	KMS_TRY(reserve(t, n));
	while (n > 0)
		t->data[t->len++] = digits[--n];
	return KMS_OK;
}

static int put_uint(kms_audit_text *t, const char *name, uint64_t v)
{
	KMS_TRY(put_name(t, name));
	return put_digits(t, v);
}

/* RFC 3339 UTC with milliseconds: sorts as text, reads without a tool. */
static int put_time(kms_audit_text *t, int64_t ms)
{
	/* Each thread formats a second once: calls come thousands a second. */
	static __thread time_t last = -1;
	static __thread char buf[40];
	time_t s = (time_t)(ms / 1000);
	char frac[8];

	if (s != last) {
		struct tm tm;

		if (gmtime_r(&s, &tm) == NULL ||
		    strftime(buf, sizeof(buf), ",\"time\":\"%Y-%m-%dT%H:%M:%S.", &tm) == 0)
			return KMS_ERR_INTERNAL;
		last = s;
	}
	KMS_TRY(puts_(t, buf));
	snprintf(frac, sizeof(frac), "%03dZ\"", (int)(ms % 1000));
	return puts_(t, frac);
}

const char *kms_audit_decision(int grpc_code)
{
	/* 7 PERMISSION_DENIED, 16 UNAUTHENTICATED: the caller was refused. */
	if (grpc_code == 0)
		return "allow";
	if (grpc_code == 7 || grpc_code == 16)
		return "deny";
	return "error";
}

int kms_audit_call_body(kms_audit_text *t, const kms_audit_call *c)
{
	size_t start = t->len;
	int rc;

	rc = puts_(t, ",\"type\":\"call\"");
	if (rc == KMS_OK)
		rc = put_time(t, c->time_ms);
	if (rc == KMS_OK)
		rc = put_uint(t, "node", c->node);
	if (rc == KMS_OK)
		rc = put_member(t, "request_id", c->request_id);
	if (rc == KMS_OK)
		rc = put_member(t, "principal", c->principal);
	if (rc == KMS_OK)
		rc = put_member(t, "method", c->method);
	if (rc == KMS_OK && c->key_id != NULL)
		rc = put_member(t, "key_id", c->key_id);
	if (rc == KMS_OK && c->key_version != 0)
		rc = put_uint(t, "key_version", c->key_version);
	if (rc == KMS_OK)
		rc = put_member(t, "decision", kms_audit_decision(c->code));
	if (rc == KMS_OK)
		rc = c->code >= 0 ? put_uint(t, "code", (uint64_t)c->code)
				  : putf(t, ",\"code\":%d", c->code);
	if (rc == KMS_OK)
		rc = put_member(t, "peer", c->peer);
	if (rc == KMS_OK && c->items != 0)
		rc = put_uint(t, "items", c->items);
	if (rc == KMS_OK && c->on_behalf_of != NULL)
		rc = put_member(t, "on_behalf_of", c->on_behalf_of);
	if (rc == KMS_OK && c->proposal_id != NULL)
		rc = put_member(t, "proposal_id", c->proposal_id);
	if (rc == KMS_OK && c->n_approvers > 0) {
		rc = puts_(t, ",\"approvers\":[");
		for (size_t i = 0; rc == KMS_OK && i < c->n_approvers &&
				   i < KMS_AUDIT_APPROVERS_MAX;
		     i++) {
			if (i > 0)
				rc = puts_(t, ",");
			if (rc == KMS_OK)
				rc = put_str(t, c->approvers[i] != NULL
						    ? c->approvers[i]
						    : "");
		}
		if (rc == KMS_OK)
			rc = puts_(t, "]");
	}
	if (rc != KMS_OK)
		t->len = start;
	return rc;
}

int kms_audit_event_body(kms_audit_text *t, const char *type, int64_t time_ms,
			 unsigned node, const char *reason)
{
	size_t start = t->len;
	int rc = put_member(t, "type", type);

	if (rc == KMS_OK)
		rc = put_time(t, time_ms);
	if (rc == KMS_OK)
		rc = putf(t, ",\"node\":%u", node);
	if (rc == KMS_OK && reason != NULL)
		rc = put_member(t, "reason", reason);
	if (rc != KMS_OK)
		t->len = start;
	return rc;
}

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/* EVP_sha256() makes OpenSSL 3 look the provider's digest up on every
 * use: once is enough for a record per call. Kept for the process's life. */
static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int kms_audit_sha256(const void *p, size_t n, uint8_t out[KMS_AUDIT_HASH_LEN],
		     kms_err *err)
{
	unsigned int len = 0;
	const EVP_MD *md;

	pthread_once(&sha256_once, sha256_fetch);
	md = sha256_md != NULL ? sha256_md : EVP_sha256();
	if (EVP_Digest(p, n, out, &len, md, NULL) != 1 ||
	    len != KMS_AUDIT_HASH_LEN)
		return kms_errf(err, KMS_ERR_INTERNAL, "audit: SHA-256 failed");
	return KMS_OK;
}

/* Appends '{"seq":N,"prev":"<hex>"'. */
static int put_head(kms_audit_text *t, uint64_t seq,
		    const uint8_t prev[KMS_AUDIT_HASH_LEN])
{
	char hex[2 * KMS_AUDIT_HASH_LEN + 1];

	kms_hex_encode(prev, KMS_AUDIT_HASH_LEN, hex);
	KMS_TRY(puts_(t, "{\"seq\":"));
	KMS_TRY(put_digits(t, seq));
	KMS_TRY(puts_(t, ",\"prev\":\""));
	KMS_TRY(put(t, hex, 2 * KMS_AUDIT_HASH_LEN));
	return put(t, "\"", 1);
}

int kms_audit_line(kms_audit_text *t, uint64_t seq,
		   const uint8_t prev[KMS_AUDIT_HASH_LEN], const char *body,
		   size_t len, uint8_t hash[KMS_AUDIT_HASH_LEN], kms_err *err)
{
	size_t start = t->len;

	if (put_head(t, seq, prev) != KMS_OK || put(t, body, len) != KMS_OK ||
	    put(t, "}", 1) != KMS_OK) {
		t->len = start;
		return kms_errf(err, KMS_ERR_NOMEM,
				"audit: out of memory for a record");
	}
	if (kms_audit_sha256(t->data + start, t->len - start, hash, err) !=
		KMS_OK ||
	    put(t, "\n", 1) != KMS_OK) {
		t->len = start;
		return err != NULL && err->code != KMS_OK
			   ? err->code
			   : kms_errf(err, KMS_ERR_NOMEM,
				      "audit: out of memory for a record");
	}
	return KMS_OK;
}

int kms_audit_key_id(EVP_PKEY *key, uint8_t out[KMS_AUDIT_HASH_LEN],
		     kms_err *err)
{
	unsigned char *der = NULL;
	int n = i2d_PUBKEY(key, &der);
	int rc;

	if (n <= 0)
		return kms_errf(err, KMS_ERR_INTERNAL,
				"audit: cannot encode the public key");
	rc = kms_audit_sha256(der, (size_t)n, out, err);
	OPENSSL_free(der);
	return rc;
}

/* The signature over KMS_AUDIT_SIG_CONTEXT || msg, DER, OPENSSL_malloc'd. */
static int sign(EVP_PKEY *key, const char *msg, size_t len, unsigned char **sig,
		size_t *sig_len, kms_err *err)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = KMS_OK;

	*sig = NULL;
	if (ctx == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"audit: out of memory signing a checkpoint");
	if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSignUpdate(ctx, KMS_AUDIT_SIG_CONTEXT,
				 strlen(KMS_AUDIT_SIG_CONTEXT)) != 1 ||
	    EVP_DigestSignUpdate(ctx, msg, len) != 1 ||
	    EVP_DigestSignFinal(ctx, NULL, sig_len) != 1) {
		rc = KMS_ERR_HSM;
		goto out;
	}
	*sig = OPENSSL_malloc(*sig_len);
	if (*sig == NULL || EVP_DigestSignFinal(ctx, *sig, sig_len) != 1)
		rc = KMS_ERR_HSM;
out:
	if (rc != KMS_OK) {
		unsigned long e = ERR_get_error();

		OPENSSL_free(*sig);
		*sig = NULL;
		kms_errf(err, rc, "audit: cannot sign a checkpoint: %s",
			 e != 0 ? ERR_reason_error_string(e)
				: "unknown reason");
		ERR_clear_error();
	}
	EVP_MD_CTX_free(ctx);
	return rc;
}

int kms_audit_checkpoint_line(kms_audit_text *t, uint64_t seq,
			      const uint8_t prev[KMS_AUDIT_HASH_LEN],
			      int64_t time_ms, unsigned node, EVP_PKEY *key,
			      uint8_t hash[KMS_AUDIT_HASH_LEN], kms_err *err)
{
	size_t start = t->len;
	uint8_t kid[KMS_AUDIT_HASH_LEN];
	char kid_hex[2 * KMS_AUDIT_HASH_LEN + 1];
	unsigned char *sig = NULL;
	size_t sig_len = 0;
	char *sig_hex = NULL;
	int rc;

	KMS_TRY(kms_audit_key_id(key, kid, err));
	kms_hex_encode(kid, sizeof(kid), kid_hex);
	if (put_head(t, seq, prev) != KMS_OK ||
	    kms_audit_event_body(t, "checkpoint", time_ms, node, NULL) !=
		KMS_OK ||
	    putf(t, ",\"key\":\"%s\"", kid_hex) != KMS_OK) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "audit: out of memory for a checkpoint");
		goto out;
	}
	KMS_TRY_GOTO(
	    rc, sign(key, t->data + start, t->len - start, &sig, &sig_len, err),
	    out);
	sig_hex = kms_malloc(2 * sig_len + 1);
	if (sig_hex == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "audit: out of memory for a checkpoint");
		goto out;
	}
	kms_hex_encode(sig, sig_len, sig_hex);
	if (puts_(t, ",\"sig\":\"") != KMS_OK || puts_(t, sig_hex) != KMS_OK ||
	    puts_(t, "\"}") != KMS_OK) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "audit: out of memory for a checkpoint");
		goto out;
	}
	KMS_TRY_GOTO(
	    rc, kms_audit_sha256(t->data + start, t->len - start, hash, err),
	    out);
	if (put(t, "\n", 1) != KMS_OK)
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "audit: out of memory for a checkpoint");
out:
	if (rc != KMS_OK)
		t->len = start;
	OPENSSL_free(sig);
	kms_free(sig_hex);
	return rc;
}

/* seq and prev of a line (len bytes, no "\n"); KMS_ERR_INVALID naming why not.
 */
static int parse_head(const char *line, size_t len, uint64_t *seq,
		      uint8_t prev[KMS_AUDIT_HASH_LEN], char *type,
		      size_t type_cap, kms_err *err)
{
	json_error_t je;
	json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	json_t *s, *p, *ty;
	int rc = KMS_OK;

	if (o == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "not a JSON record (%s)",
				je.text);
	s = json_object_get(o, "seq");
	p = json_object_get(o, "prev");
	ty = json_object_get(o, "type");
	if (!json_is_integer(s) || json_integer_value(s) < 0 ||
	    !json_is_string(p) ||
	    json_string_length(p) != 2 * KMS_AUDIT_HASH_LEN ||
	    !json_is_string(ty)) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "the record lacks seq, prev or type");
		goto out;
	}
	*seq = (uint64_t)json_integer_value(s);
	if (kms_hex_decode(json_string_value(p), prev, KMS_AUDIT_HASH_LEN,
			   "prev", err) != KMS_OK) {
		rc = KMS_ERR_INVALID;
		goto out;
	}
	snprintf(type, type_cap, "%s", json_string_value(ty));
out:
	json_decref(o);
	return rc;
}

int kms_audit_tail(int fd, uint64_t *seq, uint8_t hash[KMS_AUDIT_HASH_LEN],
		   kms_err *err)
{
	struct stat sb;
	size_t n, last, prev_start;
	off_t off;
	char *buf;
	ssize_t got;
	uint64_t s, ps;
	uint8_t prev[KMS_AUDIT_HASH_LEN], h[KMS_AUDIT_HASH_LEN],
	    pp[KMS_AUDIT_HASH_LEN];
	char type[32], ltype[32];
	int rc = KMS_OK;

	if (fstat(fd, &sb) != 0)
		return kms_errf(err, KMS_ERR_IO,
				"cannot stat the audit file: %s",
				strerror(errno));
	if (sb.st_size == 0)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"the audit file is empty");
	n = sb.st_size > 2 * TAIL_MAX ? 2 * TAIL_MAX : (size_t)sb.st_size;
	off = sb.st_size - (off_t)n;
	buf = kms_malloc(n);
	if (buf == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory reading the audit file");
	got = pread(fd, buf, n, off);
	if (got != (ssize_t)n) {
		rc = kms_errf(err, KMS_ERR_IO,
			      "cannot read the tail of the audit file: %s",
			      got < 0 ? strerror(errno) : "short read");
		goto out;
	}
	if (buf[n - 1] != '\n') {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "the last record is cut short (no end of line)");
		goto out;
	}
	/* last: the start of the last line; prev_start: of the one before. */
	last = n - 1;
	while (last > 0 && buf[last - 1] != '\n')
		last--;
	if (last == 0 && off != 0) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "the last record is longer than %d bytes",
			      TAIL_MAX);
		goto out;
	}
	rc = parse_head(buf + last, n - 1 - last, &s, prev, type, sizeof(type),
			err);
	if (rc != KMS_OK) {
		kms_err_prefix(err, "the last record");
		goto out;
	}
	snprintf(ltype, sizeof(ltype), "%s", type);
	if (last == 0) {
		if (strcmp(ltype, "start") != 0 || s != 0) {
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "the only record of the file is not a "
				      "start record");
			goto out;
		}
	} else {
		prev_start = last - 1;
		while (prev_start > 0 && buf[prev_start - 1] != '\n')
			prev_start--;
		if (prev_start == 0 && off != 0) {
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "a record is longer than %d bytes",
				      TAIL_MAX);
			goto out;
		}
		KMS_TRY_GOTO(rc,
			     kms_audit_sha256(buf + prev_start,
					      last - 1 - prev_start, pp, err),
			     out);
		if (parse_head(buf + prev_start, last - 1 - prev_start, &ps, h,
			       type, sizeof(type), err) != KMS_OK) {
			rc = kms_err_prefix(err, "the record before the last");
			goto out;
		}
		if (strcmp(ltype, "start") == 0 && s == 0) {
			/* ...a start line after it begins a segment of its own.
			 */
		} else if (s != ps + 1 ||
			   memcmp(prev, pp, KMS_AUDIT_HASH_LEN) != 0) {
			rc = kms_errf(err, KMS_ERR_INVALID,
				      "the last record does not follow the one "
				      "before it (seq "
				      "%" PRIu64 " after %" PRIu64
				      ", or prev is not its SHA-256)",
				      s, ps);
			goto out;
		}
	}
	KMS_TRY_GOTO(rc, kms_audit_sha256(buf + last, n - 1 - last, hash, err),
		     out);
	*seq = s;
out:
	kms_free(buf);
	return rc;
}
