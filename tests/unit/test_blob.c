/* test_blob.c - Check suite for the ciphertext blob, its AAD and the encryption-context rules (blob.c). */
#include <check.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "check_run.h"

static kms_err err;
static kms_blob_header hdr;
/* A ciphertext of 24 bytes: 8 bytes of "ciphertext" and a 16-byte "tag". */
static uint8_t ct[24];
static uint8_t blob[KMS_BLOB_MAX + 64];
static size_t blob_len;

static void set_header(kms_blob_header *h, const char *id, uint32_t version)
{
	memset(h, 0, sizeof(*h));
	strcpy(h->key_id, id);
	h->key_version = version;
	for (int i = 0; i < KMS_GCM_IV_LEN; i++)
		h->iv[i] = (uint8_t)(0xa0 + i);
}

static void setup(void)
{
	kms_err_clear(&err);
	kms_alloc_fail_reset();
	set_header(&hdr, "alias/app-1", 7);
	for (size_t i = 0; i < sizeof(ct); i++)
		ct[i] = (uint8_t)(i * 7 + 1);
	memset(blob, 0, sizeof(blob));
	ck_assert_int_eq(kms_blob_encode(&hdr, ct, sizeof(ct), blob,
					 sizeof(blob), &blob_len, &err),
			 KMS_OK);
}

static void teardown(void)
{
	kms_alloc_fail_reset();
}

/* Offset of the IV in a blob made from hdr. */
static size_t iv_offset(const kms_blob_header *h)
{
	return 1 + 1 + strlen(h->key_id) + 4;
}

static int header_eq(const kms_blob_header *a, const kms_blob_header *b)
{
	return strcmp(a->key_id, b->key_id) == 0 &&
	       a->key_version == b->key_version &&
	       memcmp(a->iv, b->iv, KMS_GCM_IV_LEN) == 0;
}

static int msg_has(const char *needle)
{
	return strstr(err.msg, needle) != NULL;
}

#define ASSERT_MSG(needle)                                                     \
	ck_assert_msg(msg_has(needle), "message '%s' lacks '%s'", err.msg,     \
		      needle)

/* --- key ids --- */

START_TEST(test_key_id_valid)
{
	char id[KMS_KEY_ID_MAX + 1];

	ck_assert_int_eq(kms_key_id_check("a", &err), KMS_OK);
	ck_assert_int_eq(kms_key_id_check("9lives", &err), KMS_OK);
	ck_assert_int_eq(kms_key_id_check("team.a/app_1-key", &err), KMS_OK);
	memset(id, 'k', KMS_KEY_ID_MAX);
	id[KMS_KEY_ID_MAX] = '\0';
	ck_assert_int_eq(kms_key_id_check(id, &err), KMS_OK);
}
END_TEST

START_TEST(test_key_id_invalid)
{
	char id[KMS_KEY_ID_MAX + 2];

	ck_assert_int_eq(kms_key_id_check(NULL, &err), KMS_ERR_INVALID);
	ASSERT_MSG("missing");
	ck_assert_int_eq(kms_key_id_check("", &err), KMS_ERR_INVALID);
	ASSERT_MSG("empty");
	memset(id, 'k', KMS_KEY_ID_MAX + 1);
	id[KMS_KEY_ID_MAX + 1] = '\0';
	ck_assert_int_eq(kms_key_id_check(id, &err), KMS_ERR_INVALID);
	ASSERT_MSG("longer than 128");
	ck_assert_int_eq(kms_key_id_check("-lead", &err), KMS_ERR_INVALID);
	ASSERT_MSG("start with a letter or a digit");
	ck_assert_int_eq(kms_key_id_check("/abs", &err), KMS_ERR_INVALID);
	ASSERT_MSG("start with a letter or a digit");
	ck_assert_int_eq(kms_key_id_check("ab cd", &err), KMS_ERR_INVALID);
	ASSERT_MSG("position 3");
	ck_assert_int_eq(kms_key_id_check("ab@", &err), KMS_ERR_INVALID);
	ASSERT_MSG("[A-Za-z0-9._/-]");
	ck_assert_int_eq(kms_key_id_check("k\xc3\xa9", &err), KMS_ERR_INVALID);
}
END_TEST

/* --- encryption context --- */

START_TEST(test_context_limits_ok)
{
	static char keys[KMS_CONTEXT_MAX_PAIRS][16];
	kms_ctx_pair pairs[KMS_CONTEXT_MAX_PAIRS];
	char *big = kms_malloc(KMS_CONTEXT_MAX_BYTES);
	kms_ctx_pair one;

	for (int i = 0; i < KMS_CONTEXT_MAX_PAIRS; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k%d", i);
		pairs[i].key = keys[i];
		pairs[i].value = "";
	}
	ck_assert_int_eq(kms_context_check(pairs, KMS_CONTEXT_MAX_PAIRS, &err),
			 KMS_OK);
	ck_assert_int_eq(kms_context_check(NULL, 0, &err), KMS_OK);
	/* Exactly KMS_CONTEXT_MAX_BYTES of key and value is allowed. */
	memset(big, 'v', KMS_CONTEXT_MAX_BYTES - 2);
	big[KMS_CONTEXT_MAX_BYTES - 2] = '\0';
	one.key = "kk";
	one.value = big;
	ck_assert_int_eq(kms_context_check(&one, 1, &err), KMS_OK);
	kms_free(big);
}
END_TEST

START_TEST(test_context_too_many_pairs)
{
	static char keys[KMS_CONTEXT_MAX_PAIRS + 1][16];
	kms_ctx_pair pairs[KMS_CONTEXT_MAX_PAIRS + 1];

	for (int i = 0; i <= KMS_CONTEXT_MAX_PAIRS; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k%d", i);
		pairs[i].key = keys[i];
		pairs[i].value = "v";
	}
	ck_assert_int_eq(
	    kms_context_check(pairs, KMS_CONTEXT_MAX_PAIRS + 1, &err),
	    KMS_ERR_INVALID);
	ASSERT_MSG("65 pairs, more than 64");
}
END_TEST

START_TEST(test_context_oversized)
{
	char *big = kms_malloc(KMS_CONTEXT_MAX_BYTES + 1);
	kms_ctx_pair pairs[2];

	/* One byte over the limit, spread over two pairs. */
	memset(big, 'v', KMS_CONTEXT_MAX_BYTES);
	big[KMS_CONTEXT_MAX_BYTES - 2] = '\0';
	pairs[0].key = "a";
	pairs[0].value = big;
	pairs[1].key = "b";
	pairs[1].value = "";
	ck_assert_int_eq(kms_context_check(pairs, 2, &err), KMS_OK);
	pairs[1].key = "bc";
	ck_assert_int_eq(kms_context_check(pairs, 2, &err), KMS_ERR_INVALID);
	ASSERT_MSG("larger than 8192 bytes");
	kms_free(big);
}
END_TEST

START_TEST(test_context_bad_pairs)
{
	kms_ctx_pair dup[3] = {
	    {"purpose", "a"}, {"tenant", "t1"}, {"purpose", "b"}};
	kms_ctx_pair empty[1] = {{"", "x"}};
	kms_ctx_pair nul[1] = {{"k", NULL}};

	ck_assert_int_eq(kms_context_check(dup, 3, &err), KMS_ERR_INVALID);
	ASSERT_MSG("key 'purpose' appears twice");
	ck_assert_int_eq(kms_context_check(empty, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG("empty key");
	ck_assert_int_eq(kms_context_check(nul, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG("pair 1 has no key or value");
	ck_assert_int_eq(kms_context_check(NULL, 2, &err), KMS_ERR_INVALID);
}
END_TEST

/* --- AAD --- */

START_TEST(test_aad_exact_bytes)
{
	/* The worked example of docs/FORMAT.md. */
	static const uint8_t want[] = {
	    0x01, 0x02, 'k',  '1',  0x00, 0x00, 0x00, 0x02, /* header */
	    0x00, 0x00, 0x00, 0x02,			    /* 2 pairs */
	    0x00, 0x00, 0x00, 0x01, 'a',  0x00, 0x00, 0x00, 0x01, '1',
	    0x00, 0x00, 0x00, 0x01, 'b',  0x00, 0x00, 0x00, 0x01, '2',
	};
	kms_ctx_pair pairs[2] = {{"b", "2"}, {"a", "1"}};
	kms_blob_header h;
	kms_buf aad = {0};

	set_header(&h, "k1", 2);
	ck_assert_int_eq(kms_blob_aad(&h, pairs, 2, &aad, &err), KMS_OK);
	ck_assert_uint_eq(aad.len, sizeof(want));
	ck_assert_mem_eq(aad.data, want, sizeof(want));
	/* The caller's array is not reordered. */
	ck_assert_str_eq(pairs[0].key, "b");
	ck_assert_str_eq(pairs[1].key, "a");
	kms_buf_free(&aad);
}
END_TEST

START_TEST(test_aad_empty_context)
{
	static const uint8_t want[] = {0x01, 0x01, 'x',	 0x00, 0x00, 0x00,
				       0x01, 0x00, 0x00, 0x00, 0x00};
	kms_blob_header h;
	kms_buf aad = {0};

	set_header(&h, "x", 1);
	ck_assert_int_eq(kms_blob_aad(&h, NULL, 0, &aad, &err), KMS_OK);
	ck_assert_uint_eq(aad.len, sizeof(want));
	ck_assert_mem_eq(aad.data, want, sizeof(want));
	kms_buf_free(&aad);
}
END_TEST

static void aad_of(const kms_blob_header *h, const kms_ctx_pair *pairs,
		   size_t n, kms_buf *out)
{
	ck_assert_int_eq(kms_blob_aad(h, pairs, n, out, &err), KMS_OK);
}

static int buf_eq(const kms_buf *a, const kms_buf *b)
{
	return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

START_TEST(test_aad_order_independent)
{
	kms_ctx_pair base[5] = {{"tenant", "acme"},
				{"a", "1"},
				{"ab", "2"},
				{"\xff", "hi"},
				{"B", "3"}};
	static const int perms[][5] = {
	    {4, 3, 2, 1, 0}, {1, 2, 0, 4, 3}, {3, 0, 4, 2, 1}, {2, 4, 1, 3, 0}};
	kms_buf ref = {0};

	aad_of(&hdr, base, 5, &ref);
	for (size_t p = 0; p < sizeof(perms) / sizeof(perms[0]); p++) {
		kms_ctx_pair shuffled[5];
		kms_buf other = {0};

		for (int i = 0; i < 5; i++)
			shuffled[i] = base[perms[p][i]];
		aad_of(&hdr, shuffled, 5, &other);
		ck_assert(buf_eq(&ref, &other));
		kms_buf_free(&other);
	}
	kms_buf_free(&ref);
}
END_TEST

START_TEST(test_aad_sort_order)
{
	/* memcmp order: "B" (0x42) < "a" < "ab" (shorter first) < "\xff". */
	kms_ctx_pair pairs[4] = {
	    {"\xff", ""}, {"ab", ""}, {"a", ""}, {"B", ""}};
	static const char *const want[] = {"B", "a", "ab", "\xff"};
	kms_buf aad = {0};
	kms_reader r;
	const uint8_t *p;
	uint32_t n, len;

	aad_of(&hdr, pairs, 4, &aad);
	kms_reader_init(&r, aad.data, aad.len);
	ck_assert_int_eq(kms_reader_bytes(&r, iv_offset(&hdr), &p), KMS_OK);
	ck_assert_int_eq(kms_reader_u32(&r, &n), KMS_OK);
	ck_assert_uint_eq(n, 4);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(kms_reader_u32(&r, &len), KMS_OK);
		ck_assert_uint_eq(len, strlen(want[i]));
		ck_assert_int_eq(kms_reader_bytes(&r, len, &p), KMS_OK);
		ck_assert_mem_eq(p, want[i], len);
		ck_assert_int_eq(kms_reader_u32(&r, &len), KMS_OK);
		ck_assert_uint_eq(len, 0);
	}
	ck_assert_uint_eq(kms_reader_remaining(&r), 0);
	kms_buf_free(&aad);
}
END_TEST

START_TEST(test_aad_changes)
{
	kms_ctx_pair base[2] = {{"tenant", "acme"}, {"purpose", "db"}};
	kms_ctx_pair changed_value[2] = {{"tenant", "acmf"}, {"purpose", "db"}};
	kms_ctx_pair changed_key[2] = {{"tenanu", "acme"}, {"purpose", "db"}};
	/* Length prefixes keep ("ab","c") apart from ("a","bc"). */
	kms_ctx_pair split1[1] = {{"ab", "c"}};
	kms_ctx_pair split2[1] = {{"a", "bc"}};
	kms_blob_header h2;
	kms_buf ref = {0}, other = {0};

	aad_of(&hdr, base, 2, &ref);
	aad_of(&hdr, changed_value, 2, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&other);
	aad_of(&hdr, changed_key, 2, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&other);
	aad_of(&hdr, base, 1, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&other);

	h2 = hdr;
	h2.key_version = 8;
	aad_of(&h2, base, 2, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&other);

	h2 = hdr;
	h2.key_id[0] = 'b';
	aad_of(&h2, base, 2, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&other);

	/* The IV is GCM's own input, not part of the AAD. */
	h2 = hdr;
	h2.iv[0] ^= 1;
	aad_of(&h2, base, 2, &other);
	ck_assert(buf_eq(&ref, &other));
	kms_buf_free(&other);
	kms_buf_free(&ref);

	aad_of(&hdr, split1, 1, &ref);
	aad_of(&hdr, split2, 1, &other);
	ck_assert(!buf_eq(&ref, &other));
	kms_buf_free(&ref);
	kms_buf_free(&other);
}
END_TEST

START_TEST(test_aad_rejects)
{
	kms_ctx_pair dup[2] = {{"k", "1"}, {"k", "2"}};
	kms_ctx_pair ok[1] = {{"k", "1"}};
	static uint8_t marker[9] = "untouched";
	kms_blob_header h = hdr;
	kms_buf aad = {marker, 9};

	ck_assert_int_eq(kms_blob_aad(&hdr, dup, 2, &aad, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("appears twice");
	ck_assert_uint_eq(aad.len, 9);
	h.key_version = 0;
	ck_assert_int_eq(kms_blob_aad(&h, ok, 1, &aad, &err), KMS_ERR_INVALID);
	ASSERT_MSG("key version");
	h = hdr;
	strcpy(h.key_id, "bad id");
	ck_assert_int_eq(kms_blob_aad(&h, ok, 1, &aad, &err), KMS_ERR_INVALID);
	ASSERT_MSG("key id");
	ck_assert_int_eq(kms_blob_aad(NULL, ok, 1, &aad, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_blob_aad(&hdr, ok, 1, NULL, &err),
			 KMS_ERR_INVALID);
	ck_assert_ptr_eq(aad.data, marker);
	ck_assert_uint_eq(aad.len, 9);
}
END_TEST

START_TEST(test_aad_nomem)
{
	kms_ctx_pair ok[1] = {{"k", "1"}};
	kms_buf aad = {0};

	kms_alloc_fail_after(0);
	ck_assert_int_eq(kms_blob_aad(&hdr, ok, 1, &aad, &err), KMS_ERR_NOMEM);
	ck_assert_ptr_null(aad.data);
	kms_alloc_fail_reset();
}
END_TEST

/* --- encode / decode --- */

START_TEST(test_roundtrip)
{
	kms_blob_header out;
	const uint8_t *body = NULL;
	size_t body_len = 0;

	ck_assert_uint_eq(blob_len, kms_blob_encoded_size(&hdr, sizeof(ct)));
	ck_assert_int_eq(
	    kms_blob_decode(blob, blob_len, &out, &body, &body_len, &err),
	    KMS_OK);
	ck_assert(header_eq(&out, &hdr));
	ck_assert_uint_eq(body_len, sizeof(ct));
	/* The ciphertext is borrowed from the blob, not copied. */
	ck_assert_ptr_eq(body, blob + iv_offset(&hdr) + KMS_GCM_IV_LEN);
	ck_assert_mem_eq(body, ct, sizeof(ct));
}
END_TEST

START_TEST(test_encoded_size_exact)
{
	/* The worked example of docs/FORMAT.md: id "k1", version 2, 17 bytes.
	 */
	static const uint8_t want[] = {
	    0x01, 0x02, 'k',  '1',  0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
	    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
	    0xc7, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
	    0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff};
	uint8_t body[17], out[64];
	kms_blob_header h;
	size_t written = 0;
	char id[KMS_KEY_ID_MAX + 1];

	set_header(&h, "k1", 2);
	for (int i = 0; i < KMS_GCM_IV_LEN; i++)
		h.iv[i] = (uint8_t)i;
	body[0] = 0xc7;
	for (int i = 0; i < 16; i++)
		body[1 + i] = (uint8_t)(0xf0 + i);
	ck_assert_uint_eq(kms_blob_encoded_size(&h, 17), 37);
	ck_assert_int_eq(
	    kms_blob_encode(&h, body, 17, out, sizeof(out), &written, &err),
	    KMS_OK);
	ck_assert_uint_eq(written, sizeof(want));
	ck_assert_mem_eq(out, want, sizeof(want));

	/* The largest blob is exactly KMS_BLOB_MAX. */
	memset(id, 'z', KMS_KEY_ID_MAX);
	id[KMS_KEY_ID_MAX] = '\0';
	set_header(&h, id, 0xffffffffu);
	ck_assert_uint_eq(
	    kms_blob_encoded_size(&h, KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN),
	    KMS_BLOB_MAX);
}
END_TEST

START_TEST(test_max_blob_roundtrip)
{
	uint8_t *big = kms_calloc(1, KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN);
	uint8_t *out = kms_malloc(KMS_BLOB_MAX);
	char id[KMS_KEY_ID_MAX + 1];
	kms_blob_header h, back;
	const uint8_t *body;
	size_t written, body_len;

	memset(id, 'z', KMS_KEY_ID_MAX);
	id[KMS_KEY_ID_MAX] = '\0';
	set_header(&h, id, 0xffffffffu);
	ck_assert_int_eq(kms_blob_encode(&h, big,
					 KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN,
					 out, KMS_BLOB_MAX, &written, &err),
			 KMS_OK);
	ck_assert_uint_eq(written, KMS_BLOB_MAX);
	ck_assert_int_eq(
	    kms_blob_decode(out, written, &back, &body, &body_len, &err),
	    KMS_OK);
	ck_assert(header_eq(&h, &back));
	ck_assert_uint_eq(back.key_version, 0xffffffffu);
	ck_assert_uint_eq(body_len, KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN);
	kms_free(big);
	kms_free(out);
}
END_TEST

START_TEST(test_encode_rejects)
{
	kms_blob_header h = hdr;
	uint8_t out[64], *big;
	size_t written = 12345;

	memset(out, 0xee, sizeof(out));
	/* No room for the blob: nothing written, *written untouched. */
	ck_assert_int_eq(kms_blob_encode(&hdr, ct, sizeof(ct), out,
					 blob_len - 1, &written, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("needs");
	ck_assert_uint_eq(written, 12345);
	ck_assert_uint_eq(out[0], 0xee);
	/* A tag alone is not a ciphertext. */
	ck_assert_int_eq(kms_blob_encode(&hdr, ct, KMS_GCM_TAG_LEN, out,
					 sizeof(out), &written, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("at least one byte");
	ck_assert_int_eq(
	    kms_blob_encode(&hdr, NULL, 20, out, sizeof(out), &written, &err),
	    KMS_ERR_INVALID);
	big = kms_calloc(1, KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN + 1);
	ck_assert_int_eq(
	    kms_blob_encode(&hdr, big, KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN + 1,
			    blob, sizeof(blob), &written, &err),
	    KMS_ERR_INVALID);
	ASSERT_MSG("longer than");
	kms_free(big);
	h.key_version = 0;
	ck_assert_int_eq(kms_blob_encode(&h, ct, sizeof(ct), out, sizeof(out),
					 &written, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("key version");
	h = hdr;
	strcpy(h.key_id, "sp ace");
	ck_assert_int_eq(kms_blob_encode(&h, ct, sizeof(ct), out, sizeof(out),
					 &written, &err),
			 KMS_ERR_INVALID);
	ASSERT_MSG("key id");
	ck_assert_uint_eq(written, 12345);
}
END_TEST

/* Decodes and checks the exact code, the message, and untouched outputs. */
static void assert_decode_fails(const uint8_t *b, size_t len,
				const char *needle)
{
	kms_blob_header out;
	static const uint8_t sentinel[1];
	const uint8_t *body = sentinel;
	size_t body_len = 999;

	memset(&out, 0x5c, sizeof(out));
	ck_assert_int_eq(kms_blob_decode(b, len, &out, &body, &body_len, &err),
			 KMS_ERR_INVALID);
	ck_assert_msg(msg_has(needle), "len %zu: message '%s' lacks '%s'", len,
		      err.msg, needle);
	ck_assert_ptr_eq(body, sentinel);
	ck_assert_uint_eq(body_len, 999);
	for (size_t i = 0; i < sizeof(out); i++)
		ck_assert_uint_eq(((uint8_t *)&out)[i], 0x5c);
}

START_TEST(test_decode_empty)
{
	assert_decode_fails(blob, 0, "ciphertext blob is empty");
	assert_decode_fails(NULL, 10, "ciphertext blob is empty");
}
END_TEST

START_TEST(test_decode_version)
{
	blob[0] = 7;
	assert_decode_fails(blob, blob_len,
			    "unsupported ciphertext blob version 7");
	blob[0] = 0;
	assert_decode_fails(blob, blob_len,
			    "unsupported ciphertext blob version 0");
}
END_TEST

START_TEST(test_decode_id_length)
{
	blob[1] = 0;
	assert_decode_fails(blob, blob_len, "empty key id");
	blob[1] = 200;
	assert_decode_fails(blob, blob_len,
			    "key id length 200 is more than 128");
	blob[1] = 129;
	assert_decode_fails(blob, blob_len, "key id length 129");
}
END_TEST

START_TEST(test_decode_id_chars)
{
	blob[2 + 3] = ' ';
	assert_decode_fails(blob, blob_len,
			    "ciphertext blob: key id has a character");
	blob[2 + 3] = '\0';
	assert_decode_fails(blob, blob_len, "position 4");
	blob[2 + 3] = 's';
	blob[2] = '.';
	assert_decode_fails(blob, blob_len, "start with a letter or a digit");
}
END_TEST

START_TEST(test_decode_key_version_zero)
{
	size_t v = iv_offset(&hdr) - 4;

	memset(blob + v, 0, 4);
	assert_decode_fails(blob, blob_len, "key version 0");
}
END_TEST

START_TEST(test_decode_truncated_everywhere)
{
	/* Every proper prefix of a valid blob is refused, never over-read. */
	for (size_t len = 1; len < blob_len - (sizeof(ct) - 17); len++) {
		uint8_t *copy = kms_malloc(len);

		/* An exact-size heap copy lets ASan catch any over-read. */
		memcpy(copy, blob, len);
		assert_decode_fails(copy, len, "ciphertext blob is truncated");
		kms_free(copy);
	}
}
END_TEST

START_TEST(test_decode_no_ciphertext)
{
	/* IV and a tag but no ciphertext byte: kmsd never makes these. */
	size_t iv_and_tag = iv_offset(&hdr) + KMS_GCM_IV_LEN + KMS_GCM_TAG_LEN;
	kms_blob_header out;
	const uint8_t *body;
	size_t body_len;

	assert_decode_fails(blob, iv_and_tag, "ciphertext blob is truncated");
	ck_assert_int_eq(
	    kms_blob_decode(blob, iv_and_tag + 1, &out, &body, &body_len, &err),
	    KMS_OK);
	ck_assert_uint_eq(body_len, 17);
}
END_TEST

START_TEST(test_decode_oversized)
{
	uint8_t *big = kms_calloc(1, KMS_BLOB_MAX + 1);

	memcpy(big, blob, blob_len);
	assert_decode_fails(big, KMS_BLOB_MAX + 1, "more than the");
	/* Under KMS_BLOB_MAX overall, but more ciphertext than a plaintext
	 * allows. */
	assert_decode_fails(big,
			    iv_offset(&hdr) + KMS_GCM_IV_LEN +
				KMS_PLAINTEXT_MAX + KMS_GCM_TAG_LEN + 1,
			    "more than 4096 bytes of ciphertext");
	kms_free(big);
}
END_TEST

START_TEST(test_decode_flip_every_header_byte)
{
	size_t header_len = iv_offset(&hdr) + KMS_GCM_IV_LEN;

	for (size_t i = 0; i < header_len; i++) {
		for (unsigned x = 1; x < 256; x++) {
			uint8_t *copy = kms_malloc(blob_len);
			kms_blob_header out;
			const uint8_t *body;
			size_t body_len;
			int rc;

			memcpy(copy, blob, blob_len);
			copy[i] ^= (uint8_t)x;
			rc = kms_blob_decode(copy, blob_len, &out, &body,
					     &body_len, &err);
			if (rc == KMS_OK)
				ck_assert_msg(!header_eq(&out, &hdr),
					      "byte %zu ^ %u decodes to the "
					      "same header",
					      i, x);
			else
				ck_assert_int_eq(rc, KMS_ERR_INVALID);
			kms_free(copy);
		}
	}
}
END_TEST

static Suite *blob_suite(void)
{
	Suite *s = suite_create("blob");
	TCase *tc;

	tc = tcase_create("key_id");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_key_id_valid);
	tcase_add_test(tc, test_key_id_invalid);
	suite_add_tcase(s, tc);

	tc = tcase_create("context");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_context_limits_ok);
	tcase_add_test(tc, test_context_too_many_pairs);
	tcase_add_test(tc, test_context_oversized);
	tcase_add_test(tc, test_context_bad_pairs);
	suite_add_tcase(s, tc);

	tc = tcase_create("aad");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_aad_exact_bytes);
	tcase_add_test(tc, test_aad_empty_context);
	tcase_add_test(tc, test_aad_order_independent);
	tcase_add_test(tc, test_aad_sort_order);
	tcase_add_test(tc, test_aad_changes);
	tcase_add_test(tc, test_aad_rejects);
	tcase_add_test(tc, test_aad_nomem);
	suite_add_tcase(s, tc);

	tc = tcase_create("codec");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_roundtrip);
	tcase_add_test(tc, test_encoded_size_exact);
	tcase_add_test(tc, test_max_blob_roundtrip);
	tcase_add_test(tc, test_encode_rejects);
	tcase_add_test(tc, test_decode_empty);
	tcase_add_test(tc, test_decode_version);
	tcase_add_test(tc, test_decode_id_length);
	tcase_add_test(tc, test_decode_id_chars);
	tcase_add_test(tc, test_decode_key_version_zero);
	tcase_add_test(tc, test_decode_truncated_everywhere);
	tcase_add_test(tc, test_decode_no_ciphertext);
	tcase_add_test(tc, test_decode_oversized);
	tcase_add_test(tc, test_decode_flip_every_header_byte);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(blob_suite());

	return kms_check_run(sr);
}
