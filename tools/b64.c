/* b64.c - strict base64 (RFC 4648 section 4) over OpenSSL's block coder. */
#include <limits.h>
#include <string.h>

#include <openssl/evp.h>

#include "b64.h"
#include "kms/alloc.h"

char *b64_encode(const uint8_t *data, size_t len, size_t *cap)
{
	char *out;

	if (len > (size_t)INT_MAX / 2)
		return NULL;
	*cap = 4 * ((len + 2) / 3) + 1;
	out = kms_malloc(*cap);
	if (out == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

static int in_alphabet(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/*
 * EVP_DecodeBlock skips blanks and counts padding as zero bytes: the
 * checks here make the input exactly one encoding of one byte string.
 */
enum b64_status b64_decode(const char *in, size_t len, size_t max_len,
			   kms_buf *out)
{
	size_t pad = 0, i;
	int n;

	out->data = NULL;
	out->len = 0;
	if (len > max_len || len > (size_t)INT_MAX)
		return B64_TOO_LONG;
	if (len % 4 != 0)
		return B64_LENGTH;
	if (len > 0 && in[len - 1] == '=')
		pad++;
	if (len > 1 && in[len - 2] == '=')
		pad++;
	for (i = 0; i < len - pad; i++)
		if (!in_alphabet((unsigned char)in[i]))
			return B64_ALPHABET;
	out->data = kms_malloc(len / 4 * 3 + 1);
	if (out->data == NULL)
		return B64_NOMEM;
	n = EVP_DecodeBlock(out->data, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad) {
		kms_buf_free_secret(out);
		return B64_ALPHABET;
	}
	out->len = (size_t)n - pad;
	return B64_OK;
}

const char *b64_status_text(enum b64_status st)
{
	switch (st) {
	case B64_OK:
		return "is valid base64";
	case B64_LENGTH:
		return "is not valid base64 (length)";
	case B64_ALPHABET:
		return "is not valid base64";
	case B64_TOO_LONG:
		return "is too long";
	case B64_NOMEM:
		return "cannot be decoded: out of memory";
	}
	return "is not valid base64";
}
