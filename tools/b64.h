/* b64.h - strict base64 (RFC 4648, standard alphabet, padded) for kmsctl's inputs and outputs. */
#ifndef KMSCTL_B64_H
#define KMSCTL_B64_H

#include <stddef.h>
#include <stdint.h>

#include "kms/buf.h"

/* Why b64_decode refused its input. */
enum b64_status {
	B64_OK = 0,
	B64_LENGTH,   /* not a multiple of 4 characters */
	B64_ALPHABET, /* a character outside the alphabet, or misplaced '=' */
	B64_TOO_LONG, /* longer than the caller's bound */
	B64_NOMEM,
};

/*
 * The base64 of data as a NUL-terminated kms_malloc'd string of *cap bytes;
 * NULL when memory runs out or len is too large. The caller frees it
 * (kms_free_secret(s, *cap) when data was a secret).
 */
char *b64_encode(const uint8_t *data, size_t len, size_t *cap);

/*
 * Decodes the len characters at in (no NUL needed; no whitespace), at most
 * max_len of them. On B64_OK out->data is kms_malloc'd (the caller frees
 * it, kms_buf_free_secret for a secret); otherwise out is empty.
 */
enum b64_status b64_decode(const char *in, size_t len, size_t max_len,
			   kms_buf *out);

/* "is not valid base64 (length)" etc., for messages. */
const char *b64_status_text(enum b64_status st);

#endif
