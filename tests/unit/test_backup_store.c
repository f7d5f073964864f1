/* test_backup_store.c - Check suite for the backup files a node keeps in its data directory: written durably and privately, read in pieces, refused when changed, cut short or gone, and pruned to the last one. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>
#include <openssl/sha.h>

#include "kms/alloc.h"
#include "node/backup_store.h"
#include "check_run.h"

static char dir[] = "/tmp/kms-backup-store-XXXXXX";
static uint8_t file[100000];

static void setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(dir));
	for (size_t i = 0; i < sizeof(file); i++)
		file[i] = (uint8_t)(i * 7 + 3);
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
	strcpy(dir, "/tmp/kms-backup-store-XXXXXX");
}

static void id_of(uint8_t id[KMS_BACKUP_ID_LEN], uint8_t b)
{
	memset(id, b, KMS_BACKUP_ID_LEN);
}

static void path_of(const uint8_t id[KMS_BACKUP_ID_LEN], char *out, size_t cap)
{
	char hex[2 * KMS_BACKUP_ID_LEN + 1];

	kms_backup_id_hex(id, hex);
	ck_assert_int_lt(snprintf(out, cap, "%s/backups/%s.kbk", dir, hex), (int)cap);
}

static int files_in_store(void)
{
	char d[300];
	DIR *dp;
	struct dirent *e;
	int n = 0;

	snprintf(d, sizeof(d), "%s/backups", dir);
	dp = opendir(d);
	if (dp == NULL)
		return 0;
	while ((e = readdir(dp)) != NULL)
		n += e->d_name[0] != '.';
	closedir(dp);
	return n;
}

START_TEST(a_file_is_kept_private_and_read_back_in_pieces)
{
	uint8_t id[KMS_BACKUP_ID_LEN], sum[SHA256_DIGEST_LENGTH];
	kms_backup_ref ref;
	kms_buf piece = {0}, whole = {0};
	char path[300];
	struct stat sb;
	kms_err err = {0};

	id_of(id, 0xab);
	ck_assert_msg(kms_backup_store_put(dir, id, file, sizeof(file), &ref, &err) == KMS_OK,
		      "%s", err.msg);
	ck_assert_mem_eq(ref.backup_id, id, KMS_BACKUP_ID_LEN);
	ck_assert_uint_eq(ref.size, sizeof(file));
	SHA256(file, sizeof(file), sum);
	ck_assert_mem_eq(ref.sha256, sum, sizeof(sum));
	path_of(id, path, sizeof(path));
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/backups", dir);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0700);
	ref.holder_node_id = 1;
	/* Pieces of 30,000 bytes: the last is short, then nothing at the end. */
	whole.data = kms_malloc(sizeof(file));
	ck_assert_ptr_nonnull(whole.data);
	while (whole.len < sizeof(file)) {
		ck_assert_msg(kms_backup_store_read(dir, &ref, whole.len, 30000, &piece, &err) ==
				      KMS_OK,
			      "%s", err.msg);
		ck_assert_uint_gt(piece.len, 0);
		memcpy(whole.data + whole.len, piece.data, piece.len);
		whole.len += piece.len;
		kms_buf_free(&piece);
	}
	ck_assert_mem_eq(whole.data, file, sizeof(file));
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, sizeof(file), 30000, &piece, &err),
			 KMS_OK);
	ck_assert_uint_eq(piece.len, 0);
	kms_buf_free(&piece);
	kms_buf_free(&whole);
}
END_TEST

START_TEST(bad_reads_are_refused)
{
	uint8_t id[KMS_BACKUP_ID_LEN], other[KMS_BACKUP_ID_LEN];
	kms_backup_ref ref, gone;
	kms_buf piece = {0};
	char path[300];
	FILE *f;
	kms_err err = {0};

	id_of(id, 0x01);
	ck_assert_int_eq(kms_backup_store_put(dir, id, file, sizeof(file), &ref, &err), KMS_OK);
	ref.holder_node_id = 3;
	/* past the end, no bytes, too many bytes */
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, sizeof(file) + 1, 10, &piece, &err),
			 KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "past the end") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, 0, 0, &piece, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, 0, KMS_BACKUP_PIECE_MAX + 1, &piece,
					       &err),
			 KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "max_bytes") != NULL, "%s", err.msg);
	/* a file this node never made */
	gone = ref;
	id_of(other, 0x02);
	memcpy(gone.backup_id, other, KMS_BACKUP_ID_LEN);
	ck_assert_int_eq(kms_backup_store_read(dir, &gone, 0, 10, &piece, &err), KMS_ERR_NOT_FOUND);
	ck_assert_msg(strstr(err.msg, "no longer has the file of backup 0202") != NULL, "%s",
		      err.msg);
	/* cut short, then grown: not the size the state recorded */
	path_of(id, path, sizeof(path));
	ck_assert_int_eq(truncate(path, 500), 0);
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, 0, 10, &piece, &err),
			 KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "is 500 bytes, not the 100000") != NULL, "%s", err.msg);
	f = fopen(path, "ab");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	for (int i = 0; i < 200000; i++)
		fputc('x', f);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(kms_backup_store_read(dir, &ref, 0, 10, &piece, &err),
			 KMS_ERR_PRECONDITION);
	ck_assert_ptr_null(piece.data);
	/* a data directory that cannot hold a backups directory */
	ck_assert_int_eq(kms_backup_store_put("/proc/no-such-dir", id, file, 10, &ref, &err),
			 KMS_ERR_IO);
	ck_assert_msg(strstr(err.msg, "cannot make") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(prune_keeps_the_last_and_leaves_other_files)
{
	uint8_t a[KMS_BACKUP_ID_LEN], b[KMS_BACKUP_ID_LEN];
	kms_backup_ref ref;
	kms_err err = {0};
	char path[300];
	FILE *f;

	ck_assert_int_eq(kms_backup_store_prune(dir, NULL), 0); /* no directory yet */
	id_of(a, 0xaa);
	id_of(b, 0xbb);
	ck_assert_int_eq(kms_backup_store_put(dir, a, file, 10, &ref, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_store_put(dir, b, file, 20, &ref, &err), KMS_OK);
	/* what a write cut short leaves, and a file that is none of ours */
	path_of(a, path, sizeof(path));
	strcat(path, ".tmp");
	f = fopen(path, "wb");
	ck_assert(f != NULL && fclose(f) == 0);
	snprintf(path, sizeof(path), "%s/backups/notes.txt", dir);
	f = fopen(path, "wb");
	ck_assert(f != NULL && fclose(f) == 0);
	ck_assert_int_eq(files_in_store(), 4);
	ck_assert_int_eq(kms_backup_store_prune(dir, b), 2);
	ck_assert_int_eq(files_in_store(), 2);
	path_of(b, path, sizeof(path));
	ck_assert_int_eq(access(path, F_OK), 0);
	ck_assert_int_eq(kms_backup_store_prune(dir, b), 0);
	ck_assert_int_eq(kms_backup_store_prune(dir, NULL), 1);
	ck_assert_int_eq(files_in_store(), 1); /* notes.txt */
}
END_TEST

static Suite *backup_store_suite(void)
{
	Suite *s = suite_create("backup_store");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, a_file_is_kept_private_and_read_back_in_pieces);
	tcase_add_test(tc, bad_reads_are_refused);
	tcase_add_test(tc, prune_keeps_the_last_and_leaves_other_files);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(backup_store_suite()));
}
