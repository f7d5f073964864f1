/* buf.c - bounded readers and writers: every parse and build of a blob goes through these. */
#include <string.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"

void kms_buf_free(kms_buf *b)
{
	if (b == NULL)
		return;
	kms_free(b->data);
	b->data = NULL;
	b->len = 0;
}

void kms_buf_free_secret(kms_buf *b)
{
	if (b == NULL)
		return;
	kms_free_secret(b->data, b->len);
	b->data = NULL;
	b->len = 0;
}

void kms_reader_init(kms_reader *r, const uint8_t *data, size_t len)
{
	r->data = data;
	r->len = data == NULL ? 0 : len;
	r->pos = 0;
}

size_t kms_reader_remaining(const kms_reader *r)
{
	return r->len - r->pos;
}

int kms_reader_bytes(kms_reader *r, size_t n, const uint8_t **out)
{
	if (n > kms_reader_remaining(r))
		return KMS_ERR_INVALID;
	*out = r->data + r->pos;
	r->pos += n;
	return KMS_OK;
}

int kms_reader_u8(kms_reader *r, uint8_t *out)
{
	const uint8_t *p;

	KMS_TRY(kms_reader_bytes(r, 1, &p));
	*out = p[0];
	return KMS_OK;
}

int kms_reader_u32(kms_reader *r, uint32_t *out)
{
	const uint8_t *p;

	KMS_TRY(kms_reader_bytes(r, 4, &p));
	*out = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
	return KMS_OK;
}

void kms_writer_init(kms_writer *w, uint8_t *data, size_t cap)
{
	w->data = data;
	w->cap = data == NULL ? 0 : cap;
	w->len = 0;
}

int kms_writer_bytes(kms_writer *w, const void *p, size_t n)
{
	if (n > w->cap - w->len)
		return KMS_ERR_INVALID;
	if (n > 0)
		memcpy(w->data + w->len, p, n);
	w->len += n;
	return KMS_OK;
}

int kms_writer_u8(kms_writer *w, uint8_t v)
{
	return kms_writer_bytes(w, &v, 1);
}

int kms_writer_u32(kms_writer *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8),
			(uint8_t)v};

	return kms_writer_bytes(w, b, sizeof(b));
}
