/* backup_store.c - the backup files a node made, kept in <data_dir>/backups until a later backup replaces them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "node/backup_store.h"

#define SUFFIX ".kbk"
#define TMP_SUFFIX ".kbk.tmp"

static int dir_path(const char *data_dir, char *out, size_t cap, kms_err *err)
{
	if ((size_t)snprintf(out, cap, "%s/backups", data_dir) >= cap)
		return kms_errf(err, KMS_ERR_CONFIG, "data_dir %s is too long for a backup path",
				data_dir);
	return KMS_OK;
}

static int file_path(const char *data_dir, const uint8_t id[KMS_BACKUP_ID_LEN], const char *sfx,
		     char *out, size_t cap, kms_err *err)
{
	char hex[2 * KMS_BACKUP_ID_LEN + 1];

	kms_backup_id_hex(id, hex);
	if ((size_t)snprintf(out, cap, "%s/backups/%s%s", data_dir, hex, sfx) >= cap)
		return kms_errf(err, KMS_ERR_CONFIG, "data_dir %s is too long for a backup path",
				data_dir);
	return KMS_OK;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A rename is durable once the directory holding it is. */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

int kms_backup_store_put(const char *data_dir, const uint8_t id[KMS_BACKUP_ID_LEN],
			 const uint8_t *file, size_t len, kms_backup_ref *ref, kms_err *err)
{
	char dir[PATH_MAX], tmp[PATH_MAX], path[PATH_MAX];
	int fd;

	KMS_TRY(dir_path(data_dir, dir, sizeof(dir), err));
	KMS_TRY(file_path(data_dir, id, TMP_SUFFIX, tmp, sizeof(tmp), err));
	KMS_TRY(file_path(data_dir, id, SUFFIX, path, sizeof(path), err));
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return kms_errf(err, KMS_ERR_IO, "cannot make %s: %s", dir, strerror(errno));
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return kms_errf(err, KMS_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
	if (write_all(fd, file, len) != 0 || fsync(fd) != 0) {
		int e = errno;

		close(fd);
		unlink(tmp);
		return kms_errf(err, KMS_ERR_IO, "cannot write %s: %s", tmp, strerror(e));
	}
	if (close(fd) != 0 || rename(tmp, path) != 0 || sync_dir(dir) != 0) {
		int e = errno;

		unlink(tmp);
		return kms_errf(err, KMS_ERR_IO, "cannot put the backup file in place as %s: %s",
				path, strerror(e));
	}
	memcpy(ref->backup_id, id, KMS_BACKUP_ID_LEN);
	ref->size = len;
	SHA256(file, len, ref->sha256);
	return KMS_OK;
}

int kms_backup_store_read(const char *data_dir, const kms_backup_ref *ref, uint64_t offset,
			  uint32_t max_bytes, kms_buf *out, kms_err *err)
{
	char path[PATH_MAX], hex[2 * KMS_BACKUP_ID_LEN + 1];
	struct stat sb;
	size_t want, got = 0;
	int fd, rc = KMS_OK;

	out->data = NULL;
	out->len = 0;
	KMS_ENSURE(max_bytes >= 1 && max_bytes <= KMS_BACKUP_PIECE_MAX, err, KMS_ERR_INVALID,
		   "max_bytes %u is not in 1..%u", max_bytes, KMS_BACKUP_PIECE_MAX);
	KMS_ENSURE(offset <= ref->size, err, KMS_ERR_INVALID,
		   "offset %llu is past the end of the backup file (%llu bytes)",
		   (unsigned long long)offset, (unsigned long long)ref->size);
	KMS_TRY(file_path(data_dir, ref->backup_id, SUFFIX, path, sizeof(path), err));
	kms_backup_id_hex(ref->backup_id, hex);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return kms_errf(err, KMS_ERR_NOT_FOUND,
				"this node (%llu) no longer has the file of backup %s in its data "
				"directory: make a new backup",
				(unsigned long long)ref->holder_node_id, hex);
	if (fd < 0)
		return kms_errf(err, KMS_ERR_IO, "cannot open the file of backup %s: %s", hex,
				strerror(errno));
	if (fstat(fd, &sb) != 0) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot read the file of backup %s: %s", hex,
			      strerror(errno));
		goto out;
	}
	if ((uint64_t)sb.st_size != ref->size) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "the file of backup %s on this node is %lld bytes, not the %llu the "
			      "cluster recorded: it was changed or cut short; make a new backup",
			      hex, (long long)sb.st_size, (unsigned long long)ref->size);
		goto out;
	}
	want = ref->size - offset < max_bytes ? (size_t)(ref->size - offset) : max_bytes;
	out->data = kms_malloc(want > 0 ? want : 1);
	if (out->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading a backup file");
		goto out;
	}
	while (got < want) {
		ssize_t n = pread(fd, out->data + got, want - got, (off_t)(offset + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = kms_errf(err, KMS_ERR_IO, "cannot read the file of backup %s: %s", hex,
				      n == 0 ? "it ended early" : strerror(errno));
			kms_buf_free(out);
			goto out;
		}
		got += (size_t)n;
	}
	out->len = want;
out:
	close(fd);
	return rc;
}

/* Names this store writes: 32 hex digits and one of the suffixes. */
static int ours(const char *name, const char *keep_hex)
{
	size_t hl = 2 * KMS_BACKUP_ID_LEN;

	if (strlen(name) <= hl || strspn(name, "0123456789abcdef") != hl)
		return 0;
	if (strcmp(name + hl, SUFFIX) != 0 && strcmp(name + hl, TMP_SUFFIX) != 0)
		return 0;
	return keep_hex == NULL || strcmp(name + hl, SUFFIX) != 0 ||
	       strncmp(name, keep_hex, hl) != 0;
}

int kms_backup_store_prune(const char *data_dir, const uint8_t *keep)
{
	char dir[PATH_MAX], path[PATH_MAX], keep_hex[2 * KMS_BACKUP_ID_LEN + 1];
	struct dirent *e;
	kms_err err = {0};
	int removed = 0;
	DIR *d;

	if (dir_path(data_dir, dir, sizeof(dir), &err) != KMS_OK)
		return 0;
	d = opendir(dir);
	if (d == NULL)
		return 0;
	if (keep != NULL)
		kms_backup_id_hex(keep, keep_hex);
	while ((e = readdir(d)) != NULL) {
		if (!ours(e->d_name, keep != NULL ? keep_hex : NULL))
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
			continue;
		if (unlink(path) == 0)
			removed++;
		else
			KMS_LOG_W("backup: cannot remove %s, which a later backup replaced: %s",
				  path, strerror(errno));
	}
	closedir(d);
	return removed;
}
