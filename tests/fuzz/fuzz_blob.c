/* fuzz_blob.c - libFuzzer target for the ciphertext blob parser and the encryption-context/AAD rules (docs/FORMAT.md). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * One past the context limit, so that the "too many pairs" refusal is
 * reached as well as everything below it.
 */
#define FUZZ_MAX_PAIRS (KMS_CONTEXT_MAX_PAIRS + 2)

/*
 * The blob is the one input kmsd takes from a client and parses before any
 * authentication (Decrypt reads the key id out of it to find the key), so
 * decode must refuse everything malformed without reading out of bounds, and
 * what it accepts must be exactly what encode writes: a second encoding of
 * the same header and ciphertext would let two different blobs name one
 * GCM message.
 */
static void fuzz_decode(const uint8_t *data, size_t size)
{
	static uint8_t out[KMS_BLOB_MAX];
	kms_blob_header h;
	const uint8_t *ct = NULL;
	size_t ct_len = 0, written = 0;
	kms_err err = {0};

	if (kms_blob_decode(data, size, &h, &ct, &ct_len, &err) != KMS_OK) {
		/* A refusal always says why. */
		if (err.code == KMS_OK || err.msg[0] == '\0')
			abort();
		return;
	}
	if (ct == NULL || ct < data || ct + ct_len != data + size)
		abort();
	if (kms_blob_encoded_size(&h, ct_len) != size)
		abort();
	if (kms_blob_encode(&h, ct, ct_len, out, sizeof(out), &written,
			    &err) != KMS_OK)
		abort();
	if (written != size || memcmp(out, data, size) != 0)
		abort();
}

/* Pairs (key, value) from consecutive NUL-terminated strings of text. */
static size_t split_pairs(char *text, size_t len, kms_ctx_pair *pairs,
			  size_t cap)
{
	size_t n = 0, pos = 0;

	while (n < cap && pos < len) {
		const char *k = text + pos;

		pos += strlen(k) + 1;
		if (pos > len)
			break;
		pairs[n].key = k;
		pairs[n].value = text + pos;
		pos += strlen(text + pos) + 1;
		n++;
	}
	return n;
}

/*
 * The context rules and the AAD must agree: a context that passes the check
 * gives an AAD under a valid header, one that does not is refused by both,
 * and the AAD does not depend on the order the caller sent the pairs in.
 */
static void fuzz_context(const uint8_t *data, size_t size)
{
	kms_ctx_pair pairs[FUZZ_MAX_PAIRS], reversed[FUZZ_MAX_PAIRS];
	kms_blob_header h;
	kms_buf aad = {0}, aad2 = {0};
	kms_err err = {0};
	char *text;
	size_t n;
	int check_rc, aad_rc;

	/* Room for a terminating NUL after the last (maybe unterminated) string. */
	text = malloc(size + 2);
	if (text == NULL)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	text[size + 1] = '\0';
	n = split_pairs(text, size + 1, pairs, FUZZ_MAX_PAIRS);

	memset(&h, 0, sizeof(h));
	memcpy(h.key_id, "fuzz/key-1", sizeof("fuzz/key-1"));
	h.key_version = 3;

	check_rc = kms_context_check(pairs, n, &err);
	aad_rc = kms_blob_aad(&h, pairs, n, &aad, &err);
	if (check_rc != aad_rc)
		abort();
	if (aad_rc != KMS_OK) {
		if (aad.data != NULL || err.msg[0] == '\0')
			abort();
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		reversed[i] = pairs[n - 1 - i];
	if (kms_blob_aad(&h, reversed, n, &aad2, &err) != KMS_OK)
		abort();
	if (aad.len != aad2.len || memcmp(aad.data, aad2.data, aad.len) != 0)
		abort();
out:
	kms_buf_free(&aad);
	kms_buf_free(&aad2);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_decode(data, size);
	fuzz_context(data, size);
	return 0;
}
