/* blob.c - the versioned ciphertext blob, its AAD and the encryption-context rules; layout in docs/FORMAT.md. */
#include <string.h>

#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/error.h"

/* version | key id length | key id | key version */
#define HEADER_FIXED_LEN (1 + 1 + 4)

/*
 * A blob carries at least one byte of ciphertext: Encrypt refuses an empty
 * plaintext and data keys are at least 16 bytes, so a blob holding only an
 * IV and a tag was never made by kmsd and is refused as truncated.
 */
#define CT_MIN_LEN (1 + KMS_GCM_TAG_LEN)
#define CT_MAX_LEN (KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN)


static int key_id_char_ok(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' ||
	       c == '-';
}

/*
 * Length-based so that a key id read from a blob is checked before it is
 * turned into a C string (an embedded NUL is just another bad character).
 */
static int key_id_check_n(const uint8_t *id, size_t n, kms_err *err)
{
	KMS_ENSURE(n > 0, err, KMS_ERR_INVALID, "key id is empty");
	KMS_ENSURE(n <= KMS_KEY_ID_MAX, err, KMS_ERR_INVALID,
		   "key id is longer than %d characters", KMS_KEY_ID_MAX);
	KMS_ENSURE(key_id_char_ok(id[0]) && id[0] != '.' && id[0] != '_' &&
		       id[0] != '/' && id[0] != '-',
		   err, KMS_ERR_INVALID,
		   "key id must start with a letter or a digit");
	for (size_t i = 1; i < n; i++)
		KMS_ENSURE(key_id_char_ok(id[i]), err, KMS_ERR_INVALID,
			   "key id has a character outside [A-Za-z0-9._/-] "
			   "at position %zu",
			   i + 1);
	return KMS_OK;
}

int kms_key_id_check(const char *key_id, kms_err *err)
{
	KMS_ENSURE(key_id != NULL, err, KMS_ERR_INVALID, "key id is missing");
	/* strnlen: never scan further than one byte past the longest id. */
	return key_id_check_n((const uint8_t *)key_id,
			      strnlen(key_id, KMS_KEY_ID_MAX + 1), err);
}

int kms_context_check(const kms_ctx_pair *pairs, size_t n, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	size_t total = 0;

	KMS_ENSURE(n <= KMS_CONTEXT_MAX_PAIRS, err, KMS_ERR_INVALID,
		   "encryption context has %zu pairs, more than %d", n,
		   KMS_CONTEXT_MAX_PAIRS);
	KMS_ENSURE(n == 0 || pairs != NULL, err, KMS_ERR_INVALID,
		   "encryption context pairs are missing");
	for (size_t i = 0; i < n; i++) {
		KMS_ENSURE(pairs[i].key != NULL && pairs[i].value != NULL, err,
			   KMS_ERR_INVALID,
			   "encryption context pair %zu has no key or value",
			   i + 1);
		KMS_ENSURE(pairs[i].key[0] != '\0', err, KMS_ERR_INVALID,
			   "encryption context has an empty key");
		/*
		 * Bounded scans: the running total never exceeds the limit
		 * by more than one string's worth of the limit.
		 */
		total += strnlen(pairs[i].key, KMS_CONTEXT_MAX_BYTES + 1);
		total += strnlen(pairs[i].value, KMS_CONTEXT_MAX_BYTES + 1);
		KMS_ENSURE(total <= KMS_CONTEXT_MAX_BYTES, err, KMS_ERR_INVALID,
			   "encryption context is larger than %d bytes",
			   KMS_CONTEXT_MAX_BYTES);
	}
	/* n <= 64: the quadratic scan is at most 2016 comparisons. */
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			KMS_ENSURE(strcmp(pairs[i].key, pairs[j].key) != 0, err,
				   KMS_ERR_INVALID,
				   "encryption context key '%s' appears twice",
				   kms_quote(pairs[i].key, q));
	return KMS_OK;
}

/* memcmp order over the key bytes; on a common prefix the shorter key first. */
static int key_cmp(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	int c = memcmp(a, b, la < lb ? la : lb);

	if (c != 0)
		return c;
	return la < lb ? -1 : la > lb ? 1 : 0;
}

static int header_check(const kms_blob_header *h, kms_err *err)
{
	KMS_ENSURE(h != NULL, err, KMS_ERR_INVALID, "blob header is missing");
	KMS_TRY(kms_key_id_check(h->key_id, err));
	KMS_ENSURE(h->key_version >= 1, err, KMS_ERR_INVALID,
		   "key version must be at least 1");
	return KMS_OK;
}

static int write_header(kms_writer *w, const kms_blob_header *h)
{
	size_t id_len = strlen(h->key_id);

	KMS_TRY(kms_writer_u8(w, KMS_BLOB_VERSION));
	KMS_TRY(kms_writer_u8(w, (uint8_t)id_len));
	KMS_TRY(kms_writer_bytes(w, h->key_id, id_len));
	return kms_writer_u32(w, h->key_version);
}

int kms_blob_aad(const kms_blob_header *h, const kms_ctx_pair *pairs, size_t n,
		 kms_buf *aad, kms_err *err)
{
	size_t order[KMS_CONTEXT_MAX_PAIRS];
	size_t size;
	kms_writer w;
	uint8_t *data = NULL;
	int rc;

	KMS_ENSURE(aad != NULL, err, KMS_ERR_INVALID, "AAD output is missing");
	KMS_TRY(header_check(h, err));
	KMS_TRY(kms_context_check(pairs, n, err));

	/*
	 * Canonical order by insertion sort over indices: the caller's array
	 * stays as it was, and n <= 64 keeps this cheap. Keys are distinct
	 * (checked above), so the order is total and unique.
	 */
	size = HEADER_FIXED_LEN + strlen(h->key_id) + 4;
	for (size_t i = 0; i < n; i++) {
		size_t j = i;

		size += 4 + strlen(pairs[i].key) + 4 + strlen(pairs[i].value);
		while (j > 0 &&
		       key_cmp(pairs[order[j - 1]].key, pairs[i].key) > 0) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = i;
	}

	data = kms_malloc(size);
	if (data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM,
				"out of memory building AAD");
	kms_writer_init(&w, data, size);
	KMS_TRY_GOTO(rc, write_header(&w, h), overflow);
	KMS_TRY_GOTO(rc, kms_writer_u32(&w, (uint32_t)n), overflow);
	for (size_t i = 0; i < n; i++) {
		const kms_ctx_pair *p = &pairs[order[i]];
		size_t kl = strlen(p->key), vl = strlen(p->value);

		KMS_TRY_GOTO(rc, kms_writer_u32(&w, (uint32_t)kl), overflow);
		KMS_TRY_GOTO(rc, kms_writer_bytes(&w, p->key, kl), overflow);
		KMS_TRY_GOTO(rc, kms_writer_u32(&w, (uint32_t)vl), overflow);
		KMS_TRY_GOTO(rc, kms_writer_bytes(&w, p->value, vl), overflow);
	}
	if (w.len != size)
		goto overflow;
	aad->data = data;
	aad->len = size;
	return KMS_OK;

overflow:
	kms_free(data);
	return kms_errf(err, KMS_ERR_INTERNAL, "AAD size was miscomputed");
}

size_t kms_blob_encoded_size(const kms_blob_header *h, size_t ct_len)
{
	return HEADER_FIXED_LEN + strnlen(h->key_id, KMS_KEY_ID_MAX + 1) +
	       KMS_GCM_IV_LEN + ct_len;
}

int kms_blob_encode(const kms_blob_header *h, const uint8_t *ct, size_t ct_len,
		    uint8_t *out, size_t out_cap, size_t *written, kms_err *err)
{
	kms_writer w;
	size_t need;

	KMS_TRY(header_check(h, err));
	KMS_ENSURE(ct != NULL && ct_len >= CT_MIN_LEN, err, KMS_ERR_INVALID,
		   "ciphertext must hold at least one byte and a %d-byte tag",
		   KMS_GCM_TAG_LEN);
	KMS_ENSURE(ct_len <= CT_MAX_LEN, err, KMS_ERR_INVALID,
		   "ciphertext is longer than %d bytes", CT_MAX_LEN);
	need = kms_blob_encoded_size(h, ct_len);
	KMS_ENSURE(out != NULL && out_cap >= need, err, KMS_ERR_INVALID,
		   "blob needs %zu bytes, the buffer holds %zu", need,
		   out == NULL ? (size_t)0 : out_cap);

	kms_writer_init(&w, out, out_cap);
	if (write_header(&w, h) != KMS_OK ||
	    kms_writer_bytes(&w, h->iv, KMS_GCM_IV_LEN) != KMS_OK ||
	    kms_writer_bytes(&w, ct, ct_len) != KMS_OK || w.len != need)
		return kms_errf(err, KMS_ERR_INTERNAL,
				"blob size was miscomputed");
	if (written != NULL)
		*written = w.len;
	return KMS_OK;
}

int kms_blob_decode(const uint8_t *blob, size_t len, kms_blob_header *h,
		    const uint8_t **ct, size_t *ct_len, kms_err *err)
{
	kms_blob_header tmp;
	kms_reader r;
	const uint8_t *id, *iv, *body;
	uint8_t version, id_len;
	size_t body_len;
	int rc;

	KMS_ENSURE(blob != NULL && len > 0, err, KMS_ERR_INVALID,
		   "ciphertext blob is empty");
	KMS_ENSURE(len <= KMS_BLOB_MAX, err, KMS_ERR_INVALID,
		   "ciphertext blob is %zu bytes, more than the %d allowed",
		   len, KMS_BLOB_MAX);
	kms_reader_init(&r, blob, len);

	/* len > 0, so the version byte is there. */
	KMS_TRY_GOTO(rc, kms_reader_u8(&r, &version), truncated);
	KMS_ENSURE(version == KMS_BLOB_VERSION, err, KMS_ERR_INVALID,
		   "unsupported ciphertext blob version %u", (unsigned)version);
	KMS_TRY_GOTO(rc, kms_reader_u8(&r, &id_len), truncated);
	KMS_ENSURE(id_len > 0, err, KMS_ERR_INVALID,
		   "ciphertext blob has an empty key id");
	KMS_ENSURE(id_len <= KMS_KEY_ID_MAX, err, KMS_ERR_INVALID,
		   "ciphertext blob key id length %u is more than %d",
		   (unsigned)id_len, KMS_KEY_ID_MAX);
	KMS_TRY_GOTO(rc, kms_reader_bytes(&r, id_len, &id), truncated);
	rc = key_id_check_n(id, id_len, err);
	if (rc != KMS_OK)
		return kms_err_prefix(err, "ciphertext blob");
	memcpy(tmp.key_id, id, id_len);
	tmp.key_id[id_len] = '\0';
	KMS_TRY_GOTO(rc, kms_reader_u32(&r, &tmp.key_version), truncated);
	KMS_ENSURE(tmp.key_version >= 1, err, KMS_ERR_INVALID,
		   "ciphertext blob has key version 0");
	KMS_TRY_GOTO(rc, kms_reader_bytes(&r, KMS_GCM_IV_LEN, &iv), truncated);
	body_len = kms_reader_remaining(&r);
	if (body_len < CT_MIN_LEN)
		goto truncated;
	KMS_ENSURE(body_len <= CT_MAX_LEN, err, KMS_ERR_INVALID,
		   "ciphertext blob holds more than %d bytes of ciphertext",
		   KMS_PLAINTEXT_MAX);
	KMS_TRY_GOTO(rc, kms_reader_bytes(&r, body_len, &body), truncated);
	memcpy(tmp.iv, iv, KMS_GCM_IV_LEN);

	/* Only a fully parsed blob touches the caller's outputs. */
	if (h != NULL)
		*h = tmp;
	if (ct != NULL)
		*ct = body;
	if (ct_len != NULL)
		*ct_len = body_len;
	return KMS_OK;

truncated:
	return kms_errf(err, KMS_ERR_INVALID, "ciphertext blob is truncated");
}
