/* buf.h - length-carrying byte ranges and bounded readers/writers for parsing and building blobs. */
#ifndef KMS_BUF_H
#define KMS_BUF_H

#include <stddef.h>
#include <stdint.h>

/* A byte range. Whether it owns data is said where it is handed over. */
typedef struct kms_buf {
	uint8_t *data;
	size_t len;
} kms_buf;

/* Frees an owned buffer (plain free) and zeroes the struct. */
void kms_buf_free(kms_buf *b);
/* Cleanses then frees an owned buffer that held a secret. */
void kms_buf_free_secret(kms_buf *b);

/*
 * A read cursor over borrowed bytes. Every read checks the remaining length
 * and fails with KMS_ERR_INVALID instead of reading past the end; a failed
 * read leaves the cursor where it was.
 */
typedef struct kms_reader {
	const uint8_t *data;
	size_t len;
	size_t pos;
} kms_reader;

void kms_reader_init(kms_reader *r, const uint8_t *data, size_t len);
size_t kms_reader_remaining(const kms_reader *r);
int kms_reader_u8(kms_reader *r, uint8_t *out);
int kms_reader_u32(kms_reader *r, uint32_t *out); /* big-endian */
/* Borrows n bytes: *out points into the reader's data. */
int kms_reader_bytes(kms_reader *r, size_t n, const uint8_t **out);

/*
 * A write cursor over a caller-owned array of fixed capacity. A write that
 * does not fit fails with KMS_ERR_INVALID and writes nothing.
 */
typedef struct kms_writer {
	uint8_t *data;
	size_t cap;
	size_t len;
} kms_writer;

void kms_writer_init(kms_writer *w, uint8_t *data, size_t cap);
int kms_writer_u8(kms_writer *w, uint8_t v);
int kms_writer_u32(kms_writer *w, uint32_t v); /* big-endian */
int kms_writer_bytes(kms_writer *w, const void *p, size_t n);

#endif
