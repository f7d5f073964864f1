/* rewrap_state.c - a rewrap job's state file as one JSON object, replaced atomically (rewrap_state.h). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "kms/alloc.h"
#include "rewrap_state.h"

/* A state is a few hundred bytes; anything far larger is another file. */
#define STATE_MAX_BYTES (64 * 1024)

static const char hexdigits[] = "0123456789abcdef";

static void hex_encode(const uint8_t *in, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = hexdigits[in[i] >> 4];
		out[2 * i + 1] = hexdigits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_decode(const char *in, uint8_t *out, size_t n)
{
	size_t i;

	if (strlen(in) != 2 * n)
		return -1;
	for (i = 0; i < 2 * n; i++) {
		const char *d = strchr(hexdigits, in[i]);

		if (in[i] == '\0' || d == NULL)
			return -1;
		if (i % 2 == 0)
			out[i / 2] = (uint8_t)((d - hexdigits) << 4);
		else
			out[i / 2] |= (uint8_t)(d - hexdigits);
	}
	return 0;
}

void rewrap_state_free(struct rewrap_state *st)
{
	kms_free(st->to);
	memset(st, 0, sizeof(*st));
}

static int get_u64(const char *path, json_t *o, const char *name, uint64_t *out, kms_err *err)
{
	json_t *v = json_object_get(o, name);

	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return kms_errf(err, KMS_ERR_INVALID,
				"state file '%s': \"%s\" is not a whole number", path, name);
	*out = (uint64_t)json_integer_value(v);
	return KMS_OK;
}

static int read_all(const char *path, char *buf, size_t cap, size_t *len, int *found,
		    kms_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t n = 0;

	*found = fd >= 0;
	if (fd < 0 && errno == ENOENT)
		return KMS_OK;
	if (fd < 0)
		return kms_errf(err, KMS_ERR_IO, "cannot read the state file '%s': %s", path,
				strerror(errno));
	while (n < cap) {
		ssize_t got = read(fd, buf + n, cap - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			close(fd);
			return kms_errf(err, KMS_ERR_IO, "cannot read the state file '%s': %s",
					path, strerror(errno));
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	if (n == cap)
		return kms_errf(err, KMS_ERR_INVALID,
				"'%s' is larger than a state file can be", path);
	*len = n;
	return KMS_OK;
}

int rewrap_state_load(const char *path, struct rewrap_state *st, int *found, kms_err *err)
{
	char *buf = kms_malloc(STATE_MAX_BYTES);
	json_t *o = NULL, *v;
	json_error_t jerr;
	uint64_t version = 0, complete = 0;
	size_t len = 0;
	int rc;

	memset(st, 0, sizeof(*st));
	if (buf == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading '%s'", path);
	rc = read_all(path, buf, STATE_MAX_BYTES, &len, found, err);
	if (rc != KMS_OK || !*found)
		goto out;
	o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(o)) {
		rc = kms_errf(err, KMS_ERR_INVALID, "'%s' is not a rewrap state file (%s)", path,
			      o == NULL ? jerr.text : "not a JSON object");
		goto out;
	}
	rc = get_u64(path, o, "version", &version, err);
	if (rc == KMS_OK && version != REWRAP_STATE_VERSION)
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "state file '%s' is of version %llu; this kmsctl reads %d", path,
			      (unsigned long long)version, REWRAP_STATE_VERSION);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "lines", &st->lines, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "input_bytes", &st->input_bytes, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "output_bytes", &st->output_bytes, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "errors_bytes", &st->errors_bytes, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "rewrapped", &st->rewrapped, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "failed", &st->failed, err);
	if (rc == KMS_OK)
		rc = get_u64(path, o, "complete", &complete, err);
	if (rc != KMS_OK)
		goto out;
	st->complete = complete != 0;
	v = json_object_get(o, "input_sha256");
	if (!json_is_string(v) ||
	    hex_decode(json_string_value(v), st->input_sha256, REWRAP_SHA256_LEN) != 0) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "state file '%s': \"input_sha256\" is not 64 hex digits", path);
		goto out;
	}
	v = json_object_get(o, "to");
	if (!json_is_string(v) || json_string_length(v) == 0) {
		rc = kms_errf(err, KMS_ERR_INVALID, "state file '%s': \"to\" is not a key", path);
		goto out;
	}
	if (st->rewrapped + st->failed != st->lines) {
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "state file '%s': rewrapped and failed do not add up to lines", path);
		goto out;
	}
	st->to = kms_strdup(json_string_value(v));
	if (st->to == NULL)
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading '%s'", path);
out:
	if (rc != KMS_OK)
		rewrap_state_free(st);
	json_decref(o);
	kms_free(buf);
	return rc;
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The rename is durable only once the directory holding the name is. */
static int sync_dir_of(const char *path)
{
	char copy[PATH_MAX];
	int fd, rc;

	if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

static json_t *state_json(const struct rewrap_state *st)
{
	char hex[2 * REWRAP_SHA256_LEN + 1];
	json_t *o = json_object();

	hex_encode(st->input_sha256, REWRAP_SHA256_LEN, hex);
	if (o == NULL ||
	    json_object_set_new(o, "version", json_integer(REWRAP_STATE_VERSION)) ||
	    json_object_set_new(o, "to", json_string(st->to)) ||
	    json_object_set_new(o, "lines", json_integer((json_int_t)st->lines)) ||
	    json_object_set_new(o, "input_bytes", json_integer((json_int_t)st->input_bytes)) ||
	    json_object_set_new(o, "input_sha256", json_string(hex)) ||
	    json_object_set_new(o, "output_bytes", json_integer((json_int_t)st->output_bytes)) ||
	    json_object_set_new(o, "errors_bytes", json_integer((json_int_t)st->errors_bytes)) ||
	    json_object_set_new(o, "rewrapped", json_integer((json_int_t)st->rewrapped)) ||
	    json_object_set_new(o, "failed", json_integer((json_int_t)st->failed)) ||
	    json_object_set_new(o, "complete", json_integer(st->complete ? 1 : 0))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

int rewrap_state_save(const char *path, const struct rewrap_state *st, kms_err *err)
{
	char tmp[PATH_MAX];
	json_t *o = state_json(st);
	char *text = NULL;
	json_free_t jfree;
	int fd = -1, rc = KMS_OK;

	if (o == NULL || (text = json_dumps(o, JSON_COMPACT)) == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory writing the state");
		goto out;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		rc = kms_errf(err, KMS_ERR_IO, "the state file name '%s' is too long", path);
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write_all(fd, text, strlen(text)) != 0 || write_all(fd, "\n", 1) != 0 ||
	    fsync(fd) != 0) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot write the state file '%s': %s", tmp,
			      strerror(errno));
		goto out;
	}
	if (close(fd) != 0) {
		fd = -1;
		rc = kms_errf(err, KMS_ERR_IO, "cannot write the state file '%s': %s", tmp,
			      strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0 || sync_dir_of(path) != 0)
		rc = kms_errf(err, KMS_ERR_IO, "cannot replace the state file '%s': %s", path,
			      strerror(errno));
out:
	if (fd >= 0)
		close(fd);
	/* json_dumps allocates with jansson's functions (kmsctl sets its own). */
	json_get_alloc_funcs(NULL, &jfree);
	if (text != NULL)
		jfree(text);
	json_decref(o);
	return rc;
}
