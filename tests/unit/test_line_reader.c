/* test_line_reader.c - Check suite for bounded line reading and line counting (tools/line_reader.c). */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tools/line_reader.h"
#include "check_run.h"
#include "kms/alloc.h"

/* A temporary file holding len bytes of data, opened for reading. */
static int file_of(const char *data, size_t len)
{
	char name[] = "/tmp/kms-lines.XXXXXX";
	int fd = mkstemp(name);

	ck_assert_int_ge(fd, 0);
	unlink(name);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

static void expect_line(struct line_reader *lr, const char *want)
{
	const char *line = NULL;
	size_t len = 0;
	kms_err err = {0};

	ck_assert_int_eq(line_reader_next(lr, &line, &len, &err), LINE_OK);
	ck_assert_uint_eq(len, strlen(want));
	ck_assert_mem_eq(line, want, len);
	ck_assert_int_eq(line[len], '\0');
}

START_TEST(lines_as_read)
{
	static const char data[] = "one\ntwo\r\n\nlast without newline";
	struct line_reader lr;
	const char *line;
	size_t len;
	kms_err err = {0};
	int fd = file_of(data, sizeof(data) - 1);

	ck_assert_int_eq(line_reader_init(&lr, fd, 100, &err), KMS_OK);
	expect_line(&lr, "one\n");
	ck_assert_uint_eq(lr.offset, 4);
	expect_line(&lr, "two\r\n");
	expect_line(&lr, "\n");
	expect_line(&lr, "last without newline");
	ck_assert_uint_eq(lr.offset, sizeof(data) - 1);
	ck_assert_int_eq(line_reader_next(&lr, &line, &len, &err), LINE_EOF);
	ck_assert_int_eq(line_reader_next(&lr, &line, &len, &err), LINE_EOF);
	line_reader_free(&lr);
	close(fd);
}
END_TEST

/* Lines that cross the read buffer's end, and a NUL inside a line. */
START_TEST(long_lines_and_nul)
{
	size_t n = 600 * 1024, i;
	char *data = malloc(n);
	struct line_reader lr;
	const char *line;
	size_t len, total = 0, count = 0;
	uint64_t lines;
	kms_err err = {0};
	int fd;

	ck_assert_ptr_nonnull(data);
	for (i = 0; i < n; i++)
		data[i] = (char)(i % 1000 == 999 ? '\n' : 'a' + i % 26);
	data[5] = '\0';
	fd = file_of(data, n);
	ck_assert_int_eq(count_lines(fd, &lines, &err), KMS_OK);
	ck_assert_uint_eq(lines, n / 1000 + 1); /* the last 400 bytes */
	ck_assert_int_eq(line_reader_init(&lr, fd, 1000, &err), KMS_OK);
	while (line_reader_next(&lr, &line, &len, &err) == LINE_OK) {
		ck_assert_uint_eq(len, total + 1000 <= n ? 1000 : n % 1000);
		ck_assert_int_eq(line[len - 1], len == 1000 ? '\n' : data[n - 1]);
		ck_assert_mem_eq(line, data + total, len);
		total += len;
		count++;
	}
	ck_assert_uint_eq(count, n / 1000 + 1);
	ck_assert_uint_eq(total, n);
	line_reader_free(&lr);
	close(fd);
	free(data);
}
END_TEST

START_TEST(a_line_over_the_bound_is_an_error)
{
	static const char data[] = "short\n0123456789ABC\n";
	struct line_reader lr;
	const char *line;
	size_t len;
	kms_err err = {0};
	int fd = file_of(data, sizeof(data) - 1);

	ck_assert_int_eq(line_reader_init(&lr, fd, 10, &err), KMS_OK);
	expect_line(&lr, "short\n");
	ck_assert_int_eq(line_reader_next(&lr, &line, &len, &err), LINE_ERROR);
	ck_assert_ptr_nonnull(strstr(err.msg, "longer than 10 bytes"));
	line_reader_free(&lr);
	close(fd);
}
END_TEST

START_TEST(exactly_the_bound_is_fine)
{
	static const char data[] = "012345678\n";
	struct line_reader lr;
	kms_err err = {0};
	int fd = file_of(data, sizeof(data) - 1);

	ck_assert_int_eq(line_reader_init(&lr, fd, 10, &err), KMS_OK);
	expect_line(&lr, "012345678\n");
	line_reader_free(&lr);
	close(fd);
}
END_TEST

START_TEST(read_error)
{
	struct line_reader lr;
	const char *line;
	size_t len;
	kms_err err = {0};
	int fd = open("/tmp", O_RDONLY | O_DIRECTORY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(line_reader_init(&lr, fd, 10, &err), KMS_OK);
	ck_assert_int_eq(line_reader_next(&lr, &line, &len, &err), LINE_ERROR);
	ck_assert_ptr_nonnull(strstr(err.msg, "cannot read the input"));
	line_reader_free(&lr);
	close(fd);
}
END_TEST

START_TEST(count)
{
	static const struct {
		const char *data;
		uint64_t lines;
	} cases[] = {{"", 0}, {"\n", 1}, {"a", 1}, {"a\nb", 2}, {"a\nb\n", 2}, {"\n\n\n", 3}};
	kms_err err = {0};
	uint64_t n;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int fd = file_of(cases[i].data, strlen(cases[i].data));

		ck_assert_int_eq(count_lines(fd, &n, &err), KMS_OK);
		ck_assert_uint_eq(n, cases[i].lines);
		/* The offset stays for the reader. */
		ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 0);
		close(fd);
	}
	ck_assert_int_eq(count_lines(-1, &n, &err), KMS_ERR_IO);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("line_reader");
	TCase *tc = tcase_create("lines");

	tcase_add_test(tc, lines_as_read);
	tcase_add_test(tc, long_lines_and_nul);
	tcase_add_test(tc, a_line_over_the_bound_is_an_error);
	tcase_add_test(tc, exactly_the_bound_is_fine);
	tcase_add_test(tc, read_error);
	tcase_add_test(tc, count);
	suite_add_tcase(s, tc);
	return kms_check_run(srunner_create(s));
}
