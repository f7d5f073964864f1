/* line_reader.h - reads a file descriptor line by line through a fixed buffer, with a bound on a line's length, and counts the lines of a file. */
#ifndef KMSCTL_LINE_READER_H
#define KMSCTL_LINE_READER_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"

struct line_reader {
	int fd;		 /* borrowed: line_reader_free does not close it */
	size_t max_line; /* the longest line, its newline included */
	uint8_t *buf;	 /* read buffer */
	size_t cap, pos, end;
	char *line; /* the current line, NUL-terminated */
	size_t line_cap, line_len;
	int eof;
	uint64_t offset; /* bytes returned so far, newlines included */
};

enum line_result {
	LINE_OK,
	LINE_EOF,
	LINE_INTERRUPTED, /* read(2) was interrupted by a signal: call again */
	LINE_ERROR,
};

/* KMS_OK, or KMS_ERR_NOMEM. */
int line_reader_init(struct line_reader *lr, int fd, size_t max_line,
		     kms_err *err);
void line_reader_free(struct line_reader *lr);

/*
 * The next line: *line points to its bytes as read, the newline included
 * when there is one (the last line of a file may have none), and a NUL
 * after them; *len counts them. The line lives until the next call. A
 * line longer than max_line, or a read error, gives LINE_ERROR with err
 * saying which (the line number is the caller's to add).
 */
enum line_result line_reader_next(struct line_reader *lr, const char **line,
				  size_t *len, kms_err *err);

/*
 * The number of lines from fd's current offset to its end (a last line
 * without a newline counts), read with pread(2) in large blocks so that
 * the offset stays where it was: a million lines take a fraction of a
 * second. For regular files. KMS_OK, or KMS_ERR_IO.
 */
int count_lines(int fd, uint64_t *n, kms_err *err);

#endif
