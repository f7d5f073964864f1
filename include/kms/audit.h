/* audit.h - audit records as JSON lines in a SHA-256 hash chain with signed checkpoints: encoding, chaining, signing and verifying a file. */
#ifndef KMS_AUDIT_H
#define KMS_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/types.h>

#include "kms/error.h"

/*
 * The format (docs/OPERATIONS.md, "Audit log"): one JSON object per line,
 * always starting with the same three members, in this order:
 *
 *   {"seq":N,"prev":"<64 hex>","type":"<type>",...}
 *
 * prev is the SHA-256 of the previous line's bytes (without its "\n"); a
 * "start" line begins a segment: seq 0 and prev of 64 zeros. Types:
 *   start       a new file, or a new segment after a tail that did not
 *               verify ("reason" says which)
 *   resume      the node started again and continues the chain
 *   call        one call that reached a handler
 *   checkpoint  signed: "key" is the SHA-256 of the signer's DER
 *               SubjectPublicKeyInfo, "sig" (always the last member) the
 *               hex of the DER ECDSA (SHA-256) signature of
 * KMS_AUDIT_SIG_CONTEXT followed by the line's bytes before ',"sig":' recovered
 * writes succeed again after a failure ("reason") A string never holds a byte
 * outside printable ASCII: others are written as \u00XX, so a line is valid
 * JSON whatever bytes a request carried.
 */
#define KMS_AUDIT_SIG_CONTEXT "kmsd audit checkpoint v1\n"
#define KMS_AUDIT_HASH_LEN 32
/* The longest string member written; a longer value is cut (ending "...") */
#define KMS_AUDIT_STR_MAX 512
/* Approvers a record names at most. */
#define KMS_AUDIT_APPROVERS_MAX 16

/* The decision of a call, from its gRPC status code. */
const char *kms_audit_decision(int grpc_code); /* "allow", "deny" or "error" */

/* What a "call" record says. Strings may be NULL (left out, or "" for the
 * ones always written: request_id, principal, method, peer). */
typedef struct kms_audit_call {
	int64_t time_ms; /* Unix time in milliseconds */
	unsigned node;
	const char *request_id;
	const char *principal; /* NULL: the caller was not identified */
	const char *method;    /* "/kms.v1.KeyManagement/Decrypt" */
	const char *key_id;    /* NULL: the call names no key */
	uint64_t key_version;  /* 0: none */
	int code;	       /* the gRPC status code answered */
	const char *peer;      /* gRPC's peer string, "ipv4:127.0.0.1:40312" */
	unsigned items;	       /* a batch's item count; 0: not a batch */
	const char *on_behalf_of; /* a forwarded write's original caller */
	const char *proposal_id;  /* a root operation's proposal */
	const char *approvers[KMS_AUDIT_APPROVERS_MAX];
	size_t n_approvers;
} kms_audit_call;

/*
 * A growing text buffer. The functions that append to it return KMS_OK or
 * KMS_ERR_NOMEM (and then leave len as it was). data is kms_malloc'd, freed
 * with kms_audit_text_free; it is not NUL-terminated.
 */
typedef struct kms_audit_text {
	char *data;
	size_t len, cap;
} kms_audit_text;

void kms_audit_text_free(kms_audit_text *t);

/*
 * Appends the members of a call record after the common three, starting
 * with ',"type":"call"' and without the closing brace: the writer of the
 * chain puts {"seq":..,"prev":".." before and "}" after
 * (kms_audit_line).
 */
int kms_audit_call_body(kms_audit_text *t, const kms_audit_call *c);

/*
 * Appends the body of a start, resume or recovered record (time, node and,
 * if not NULL, reason) the same way.
 */
int kms_audit_event_body(kms_audit_text *t, const char *type, int64_t time_ms,
			 unsigned node, const char *reason);

/*
 * Appends one whole line, "\n" included: {"seq":seq,"prev":"<hex of
 * prev>" followed by body (len bytes, as the functions above make it) and
 * "}". hash gets the SHA-256 of the line without its "\n", the next
 * line's prev. KMS_ERR_NOMEM or KMS_ERR_INTERNAL (OpenSSL).
 */
int kms_audit_line(kms_audit_text *t, uint64_t seq,
		   const uint8_t prev[KMS_AUDIT_HASH_LEN], const char *body,
		   size_t len, uint8_t hash[KMS_AUDIT_HASH_LEN], kms_err *err);

/*
 * Appends a checkpoint line signed with key (an EC key; one in the HSM
 * through libp11's engine signs there), like kms_audit_line. KMS_ERR_HSM
 * naming OpenSSL's reason when the signature fails.
 */
int kms_audit_checkpoint_line(kms_audit_text *t, uint64_t seq,
			      const uint8_t prev[KMS_AUDIT_HASH_LEN],
			      int64_t time_ms, unsigned node, EVP_PKEY *key,
			      uint8_t hash[KMS_AUDIT_HASH_LEN], kms_err *err);

/* The SHA-256 of n bytes at p (KMS_ERR_INTERNAL if OpenSSL fails). */
int kms_audit_sha256(const void *p, size_t n, uint8_t out[KMS_AUDIT_HASH_LEN],
		     kms_err *err);

/* The SHA-256 of key's DER SubjectPublicKeyInfo, as a checkpoint's "key". */
int kms_audit_key_id(EVP_PKEY *key, uint8_t out[KMS_AUDIT_HASH_LEN],
		     kms_err *err);

/*
 * What the chain of a file ends with, for a writer that continues it:
 * kms_audit_tail reads the last two lines of the file open at fd (len
 * bytes long) and checks that the last one ends with "\n", parses, and
 * carries the SHA-256 of the one before as prev (a one-line file: a start
 * line). KMS_OK with *seq and hash of the last line; KMS_ERR_INVALID with
 * the reason the tail does not verify; KMS_ERR_IO when it cannot be read.
 * An empty file is KMS_ERR_NOT_FOUND.
 */
int kms_audit_tail(int fd, uint64_t *seq, uint8_t hash[KMS_AUDIT_HASH_LEN],
		   kms_err *err);

/* The outcome of kms_audit_verify. */
typedef struct kms_audit_verdict {
	int ok;
	unsigned long bad_line; /* 1-based; 0 when ok */
	char why[512];		/* why bad_line is bad */
	unsigned long lines, records, checkpoints, segments;
	unsigned long
	    checkpoints_checked; /* signatures verified against a key */
	unsigned long last_checkpoint_line; /* 0: none */
	unsigned long unsigned_tail; /* records after the last checkpoint */
} kms_audit_verdict;

/* Ways kms_audit_verify may be relaxed. */
#define KMS_AUDIT_ALLOW_UNSIGNED_TAIL                                          \
	1u /* a running node's file: its tail is not signed yet */

/*
 * Verifies the audit file read from f: every line ends with "\n" and
 * parses; every seq follows the one before and every prev is the SHA-256 of
 * the line before (within a segment); every checkpoint's signature
 * verifies under pub when pub is not NULL (and names pub's key); and the
 * file ends with a checkpoint unless flags allow an unsigned tail. The
 * first bad line and why go to v. KMS_OK whether the file verifies or not
 * (v->ok says); KMS_ERR_IO or KMS_ERR_NOMEM when it cannot be read.
 */
int kms_audit_verify(FILE *f, EVP_PKEY *pub, unsigned flags,
		     kms_audit_verdict *v, kms_err *err);

#endif
