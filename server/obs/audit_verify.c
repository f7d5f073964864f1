/* audit_verify.c - checks an audit file: the hash chain, the order of records, checkpoint signatures and a signed end. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "kms/alloc.h"
#include "kms/audit.h"
#include "kms/fingerprint.h"

/* Longer lines are not records kmsd writes. */
#define LINE_MAX_BYTES (1024 * 1024)
#define SIG_MARK ",\"sig\":\""

struct verify_state {
	kms_audit_verdict *v;
	EVP_PKEY *pub;
	uint8_t pub_id[KMS_AUDIT_HASH_LEN];
	int have_prev; /* a line before this one, in this segment */
	uint64_t prev_seq;
	uint8_t prev_hash[KMS_AUDIT_HASH_LEN];
};

static int bad(kms_audit_verdict *v, unsigned long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(kms_audit_verdict *v, unsigned long line, const char *fmt, ...)
{
	va_list ap;

	v->ok = 0;
	v->bad_line = line;
	va_start(ap, fmt);
	vsnprintf(v->why, sizeof(v->why), fmt, ap);
	va_end(ap);
	return -1;
}

static int verify_sig(EVP_PKEY *pub, const char *msg, size_t len,
		      const uint8_t *sig, size_t sig_len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok;

	if (ctx == NULL)
		return 0;
	ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
	     EVP_DigestVerifyUpdate(ctx, KMS_AUDIT_SIG_CONTEXT,
				    strlen(KMS_AUDIT_SIG_CONTEXT)) == 1 &&
	     EVP_DigestVerifyUpdate(ctx, msg, len) == 1 &&
	     EVP_DigestVerifyFinal(ctx, sig, sig_len) == 1;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

/* A checkpoint line: its key and signature (the last member, over the bytes
 * before it). */
static int check_checkpoint(struct verify_state *st, unsigned long no,
			    const char *line, size_t len, json_t *o)
{
	json_t *key = json_object_get(o, "key"),
	       *sig = json_object_get(o, "sig");
	const char *mark;
	uint8_t kid[KMS_AUDIT_HASH_LEN];
	uint8_t *raw = NULL;
	size_t raw_len;
	int rc = 0;

	if (!json_is_string(key) || !json_is_string(sig) ||
	    kms_hex_decode(json_string_value(key), kid, sizeof(kid), "key",
			   NULL) != KMS_OK)
		return bad(st->v, no,
			   "a checkpoint without a valid key and sig");
	mark = memmem(line, len, SIG_MARK, strlen(SIG_MARK));
	raw_len = json_string_length(sig) / 2;
	if (mark == NULL || json_string_length(sig) % 2 != 0 || raw_len == 0 ||
	    (size_t)(line + len - mark) !=
		strlen(SIG_MARK) + json_string_length(sig) + 2)
		return bad(st->v, no,
			   "the checkpoint's sig is not its last member");
	raw = kms_malloc(raw_len);
	if (raw == NULL)
		return bad(st->v, no, "out of memory");
	if (kms_hex_decode(json_string_value(sig), raw, raw_len, "sig", NULL) !=
	    KMS_OK) {
		rc = bad(st->v, no, "the checkpoint's sig is not hex");
		goto out;
	}
	if (st->pub != NULL) {
		if (memcmp(kid, st->pub_id, sizeof(kid)) != 0) {
			char want[2 * KMS_AUDIT_HASH_LEN + 1];

			kms_hex_encode(st->pub_id, sizeof(st->pub_id), want);
			rc = bad(st->v, no,
				 "checkpoint signed by key %.16s..., not the "
				 "key of the node "
				 "certificate (%.16s...)",
				 json_string_value(key), want);
			goto out;
		}
		if (!verify_sig(st->pub, line, (size_t)(mark - line), raw,
				raw_len)) {
			rc = bad(st->v, no,
				 "the checkpoint's signature does not verify: "
				 "the checkpoint or a "
				 "record it covers was forged");
			goto out;
		}
		st->v->checkpoints_checked++;
	}
out:
	kms_free(raw);
	return rc;
}

/* One line (len bytes without its "\n"), number no. 0, or -1 once v says why
 * not. */
static int check_line(struct verify_state *st, unsigned long no,
		      const char *line, size_t len)
{
	kms_audit_verdict *v = st->v;
	json_error_t je;
	json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	json_t *s, *p, *ty;
	uint8_t prev[KMS_AUDIT_HASH_LEN];
	static const uint8_t zero[KMS_AUDIT_HASH_LEN];
	uint64_t seq;
	const char *type;
	int rc = 0;

	if (o == NULL)
		return bad(v, no,
			   "not a JSON record (%s at column %d): a byte was "
			   "changed or "
			   "the line cut",
			   je.text, je.column);
	s = json_object_get(o, "seq");
	p = json_object_get(o, "prev");
	ty = json_object_get(o, "type");
	if (!json_is_integer(s) || json_integer_value(s) < 0 ||
	    !json_is_string(p) || !json_is_string(ty) ||
	    kms_hex_decode(json_string_value(p), prev, sizeof(prev), "prev",
			   NULL) != KMS_OK) {
		rc = bad(v, no, "the record has no valid seq, prev and type");
		goto out;
	}
	seq = (uint64_t)json_integer_value(s);
	type = json_string_value(ty);
	if (strcmp(type, "start") == 0) {
		if (seq != 0 || memcmp(prev, zero, sizeof(zero)) != 0) {
			rc = bad(
			    v, no,
			    "a start record must have seq 0 and a zero prev");
			goto out;
		}
		v->segments++;
	} else if (!st->have_prev) {
		rc = bad(v, no,
			 "the file does not begin with a start record: records "
			 "before "
			 "this one were removed");
		goto out;
	} else if (seq != st->prev_seq + 1) {
		rc = bad(v, no,
			 "seq %" PRIu64 " where %" PRIu64
			 " was expected: a record before this "
			 "one was removed, or this one was moved",
			 seq, st->prev_seq + 1);
		goto out;
	} else if (memcmp(prev, st->prev_hash, sizeof(prev)) != 0) {
		rc = bad(v, no - 1,
			 "its SHA-256 is not the prev of line %lu: this record "
			 "(or the prev of "
			 "the next) was changed",
			 no);
		goto out;
	}
	if (strcmp(type, "checkpoint") == 0) {
		if (check_checkpoint(st, no, line, len, o) != 0) {
			rc = -1;
			goto out;
		}
		v->checkpoints++;
		v->last_checkpoint_line = no;
		v->unsigned_tail = 0;
	} else {
		if (strcmp(type, "call") == 0)
			v->records++;
		v->unsigned_tail++;
	}
	if (kms_audit_sha256(line, len, st->prev_hash, NULL) != KMS_OK) {
		rc = bad(v, no, "SHA-256 failed");
		goto out;
	}
	st->prev_seq = seq;
	st->have_prev = 1;
out:
	json_decref(o);
	return rc;
}

int kms_audit_verify(FILE *f, EVP_PKEY *pub, unsigned flags,
		     kms_audit_verdict *v, kms_err *err)
{
	struct verify_state st;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = KMS_OK;

	memset(v, 0, sizeof(*v));
	memset(&st, 0, sizeof(st));
	v->ok = 1;
	st.v = v;
	st.pub = pub;
	if (pub != NULL)
		KMS_TRY(kms_audit_key_id(pub, st.pub_id, err));
	errno = 0;
	while ((n = getline(&line, &cap, f)) > 0) {
		size_t len = (size_t)n;

		v->lines++;
		if (line[len - 1] != '\n') {
			bad(v, v->lines,
			    "the record is cut short (no end of line): the "
			    "file was "
			    "truncated");
			break;
		}
		if (len - 1 > LINE_MAX_BYTES) {
			bad(v, v->lines,
			    "a line of %zu bytes is no record kmsd writes",
			    len - 1);
			break;
		}
		if (check_line(&st, v->lines, line, len - 1) != 0)
			break;
	}
	if (ferror(f))
		rc = kms_errf(err, KMS_ERR_IO, "cannot read the audit file: %s",
			      strerror(errno));
	free(line);
	if (rc != KMS_OK || !v->ok)
		return rc;
	if (v->lines == 0) {
		bad(v, 1, "the file is empty");
	} else if (v->unsigned_tail > 0 &&
		   !(flags & KMS_AUDIT_ALLOW_UNSIGNED_TAIL)) {
		if (v->last_checkpoint_line != 0)
			bad(v, v->lines,
			    "the %lu records after the last checkpoint (line "
			    "%lu) are not signed: "
			    "the file was cut after them, or its node is "
			    "running or stopped "
			    "without its last checkpoint "
			    "(--allow-unsigned-tail accepts that)",
			    v->unsigned_tail, v->last_checkpoint_line);
		else
			bad(v, v->lines,
			    "the file has no checkpoint: none of its %lu "
			    "records is signed "
			    "(--allow-unsigned-tail accepts that)",
			    v->unsigned_tail);
	}
	return KMS_OK;
}
