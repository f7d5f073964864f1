/* line_reader.c - bounded line reading and line counting (line_reader.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "kms/alloc.h"
#include "line_reader.h"

#define READ_BLOCK (256 * 1024)

int line_reader_init(struct line_reader *lr, int fd, size_t max_line,
		     kms_err *err)
{
	memset(lr, 0, sizeof(*lr));
	lr->fd = fd;
	lr->max_line = max_line;
	lr->cap = READ_BLOCK;
	lr->buf = kms_malloc(lr->cap);
	lr->line_cap = 4096 < max_line + 1 ? 4096 : max_line + 1;
	lr->line = kms_malloc(lr->line_cap);
	if (lr->buf == NULL || lr->line == NULL) {
		line_reader_free(lr);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for the input buffer");
	}
	return KMS_OK;
}

void line_reader_free(struct line_reader *lr)
{
	kms_free(lr->buf);
	kms_free(lr->line);
	lr->buf = NULL;
	lr->line = NULL;
}

/* Appends n bytes to the current line, growing it up to max_line + 1. */
static int line_append(struct line_reader *lr, const uint8_t *p, size_t n, kms_err *err)
{
	if (lr->line_len + n > lr->max_line)
		return kms_errf(err, KMS_ERR_INVALID, "the line is longer than %zu bytes",
				lr->max_line);
	if (lr->line_len + n + 1 > lr->line_cap) {
		size_t cap = lr->line_cap;
		char *bigger;

		while (cap < lr->line_len + n + 1)
			cap *= 2;
		if (cap > lr->max_line + 1)
			cap = lr->max_line + 1;
		bigger = kms_malloc(cap);
		if (bigger == NULL)
			return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a line");
		memcpy(bigger, lr->line, lr->line_len);
		kms_free(lr->line);
		lr->line = bigger;
		lr->line_cap = cap;
	}
	memcpy(lr->line + lr->line_len, p, n);
	lr->line_len += n;
	return KMS_OK;
}

enum line_result line_reader_next(struct line_reader *lr, const char **line,
				  size_t *len, kms_err *err)
{
	/* A line interrupted by a signal goes on where it stopped. */
	for (;;) {
		uint8_t *nl;
		size_t n;
		ssize_t got;

		if (lr->pos < lr->end) {
			nl = memchr(lr->buf + lr->pos, '\n', lr->end - lr->pos);
			n = nl != NULL ? (size_t)(nl - (lr->buf + lr->pos)) + 1
				       : lr->end - lr->pos;
			if (line_append(lr, lr->buf + lr->pos, n, err) != KMS_OK)
				return LINE_ERROR;
			lr->pos += n;
			if (nl != NULL)
				break;
		}
		if (lr->eof) {
			if (lr->line_len == 0)
				return LINE_EOF;
			break;
		}
		got = read(lr->fd, lr->buf, lr->cap);
		if (got < 0 && errno == EINTR)
			return LINE_INTERRUPTED;
		if (got < 0) {
			kms_errf(err, KMS_ERR_IO, "cannot read the input: %s", strerror(errno));
			return LINE_ERROR;
		}
		lr->pos = 0;
		lr->end = (size_t)got;
		lr->eof = got == 0;
	}
	lr->line[lr->line_len] = '\0';
	*line = lr->line;
	*len = lr->line_len;
	lr->offset += lr->line_len;
	lr->line_len = 0;
	return LINE_OK;
}

int count_lines(int fd, uint64_t *n, kms_err *err)
{
	uint8_t *buf = kms_malloc(READ_BLOCK);
	off_t at = lseek(fd, 0, SEEK_CUR);
	uint64_t lines = 0;
	int last = '\n';

	if (buf == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory counting lines");
	if (at < 0) {
		kms_free(buf);
		return kms_errf(err, KMS_ERR_IO, "cannot count the input's lines: %s",
				strerror(errno));
	}
	for (;;) {
		ssize_t got = pread(fd, buf, READ_BLOCK, at);
		const uint8_t *p, *end;

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			kms_free(buf);
			return kms_errf(err, KMS_ERR_IO, "cannot count the input's lines: %s",
					strerror(errno));
		}
		if (got == 0)
			break;
		at += got;
		end = buf + got;
		for (p = buf; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
			lines++;
		last = buf[got - 1];
	}
	*n = lines + (last != '\n');
	kms_free(buf);
	return KMS_OK;
}
