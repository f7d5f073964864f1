/* softhsm_fixture.c - throw-away SoftHSM tokens in a temporary directory, for unit and integration tests. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "softhsm_fixture.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

extern char **environ;

static int fail(const char *what, const char *detail)
{
	fprintf(stderr, "softhsm fixture: %s: %s\n", what, detail);
	return -1;
}

static int path_join(char *out, size_t cap, const char *dir, const char *name)
{
	int n = snprintf(out, cap, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= cap)
		return fail("path too long", name);
	return 0;
}

static int random_hex(char *out, size_t hex_len)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char raw[KMS_TEST_PIN_HEX / 2];

	if (hex_len / 2 > sizeof(raw) ||
	    RAND_bytes(raw, (int)(hex_len / 2)) != 1)
		return fail("RAND_bytes", "no random bytes for a PIN");
	for (size_t i = 0; i < hex_len / 2; i++) {
		out[2 * i] = digits[raw[i] >> 4];
		out[2 * i + 1] = digits[raw[i] & 0xf];
	}
	out[hex_len] = '\0';
	OPENSSL_cleanse(raw, sizeof(raw));
	return 0;
}

/* Writes all of data to a new file of mode 0600 (O_EXCL: never reuse one). */
static int write_file(const char *path, const char *data)
{
	size_t len = strlen(data), off = 0;
	int fd, rc = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return fail(path, strerror(errno));
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = fail(path, strerror(errno));
			break;
		}
		off += (size_t)n;
	}
	if (close(fd) != 0 && rc == 0)
		rc = fail(path, strerror(errno));
	return rc;
}

/*
 * softhsm2-util --init-token --free: the token lands in the first free slot,
 * under a slot number SoftHSM picks at random (STACK-NOTES). The util takes
 * PINs only as arguments, so they show in `ps` while it runs: acceptable for
 * test tokens with random throw-away PINs, never for real ones. No shell is
 * involved (posix_spawnp), so nothing is re-parsed.
 */
static int init_token(const struct kms_test_token *t, const char *label)
{
	char *argv[] = {
	    "softhsm2-util", "--init-token", "--free",		"--label",
	    (char *)label,   "--so-pin",     (char *)t->so_pin, "--pin",
	    (char *)t->pin,  NULL,
	};
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int status, rc;

	/* Keep its "token initialized and reassigned to slot N" off stdout. */
	if (posix_spawn_file_actions_init(&fa) != 0)
		return fail("posix_spawn_file_actions_init", "failed");
	if (posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null",
					     O_WRONLY, 0) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		return fail("posix_spawn_file_actions_addopen", "failed");
	}
	rc = posix_spawnp(&pid, "softhsm2-util", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		return fail("cannot run softhsm2-util", strerror(rc));
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return fail("waitpid softhsm2-util", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return fail("softhsm2-util --init-token failed for label",
			    label);
	return 0;
}

int kms_test_token_add(struct kms_test_token *t, const char *label)
{
	if (label == NULL || label[0] == '\0' ||
	    strlen(label) > KMS_TEST_LABEL_MAX)
		return fail("bad token label", label ? label : "(null)");
	if (t->conf[0] == '\0')
		return fail("kms_test_token_add", "no token directory");
	/* softhsm2-util finds the directory through SOFTHSM2_CONF. */
	if (setenv("SOFTHSM2_CONF", t->conf, 1) != 0)
		return fail("setenv SOFTHSM2_CONF", strerror(errno));
	return init_token(t, label);
}

int kms_test_token_create(struct kms_test_token *t, const char *label)
{
	char tokens[PATH_MAX];
	char conf_text[PATH_MAX + 128];
	const char *tmp = getenv("TMPDIR");
	const char *module = getenv("KMS_PKCS11_MODULE");
	int n;

	memset(t, 0, sizeof(*t));
	if (label == NULL || label[0] == '\0' ||
	    strlen(label) > KMS_TEST_LABEL_MAX)
		return fail("bad token label", label ? label : "(null)");
	if (tmp == NULL || tmp[0] == '\0')
		tmp = "/tmp";
	n = snprintf(t->dir, sizeof(t->dir), "%s/kms-token-XXXXXX", tmp);
	if (n < 0 || (size_t)n >= sizeof(t->dir)) {
		t->dir[0] = '\0';
		return fail("TMPDIR too long", tmp);
	}
	if (mkdtemp(t->dir) == NULL) {
		fail("mkdtemp", strerror(errno));
		t->dir[0] = '\0';
		return -1;
	}
	snprintf(t->module, sizeof(t->module), "%s",
		 module != NULL && module[0] != '\0' ? module : DEFAULT_MODULE);
	snprintf(t->label, sizeof(t->label), "%s", label);

	if (path_join(tokens, sizeof(tokens), t->dir, "tokens") != 0 ||
	    path_join(t->conf, sizeof(t->conf), t->dir, "softhsm2.conf") != 0 ||
	    path_join(t->pin_path, sizeof(t->pin_path), t->dir, "pin") != 0)
		goto fail;
	if (mkdir(tokens, 0700) != 0) {
		fail(tokens, strerror(errno));
		goto fail;
	}
	snprintf(conf_text, sizeof(conf_text),
		 "directories.tokendir = %s\n"
		 "objectstore.backend = file\n"
		 "log.level = ERROR\n"
		 "slots.removable = false\n",
		 tokens);
	if (write_file(t->conf, conf_text) != 0)
		goto fail;
	if (setenv("SOFTHSM2_CONF", t->conf, 1) != 0) {
		fail("setenv SOFTHSM2_CONF", strerror(errno));
		goto fail;
	}
	if (random_hex(t->pin, KMS_TEST_PIN_HEX) != 0 ||
	    random_hex(t->so_pin, KMS_TEST_PIN_HEX) != 0)
		goto fail;
	/* No trailing newline: libp11's pin-source=file: keeps it
	 * (STACK-NOTES). */
	if (write_file(t->pin_path, t->pin) != 0)
		goto fail;
	if (init_token(t, label) != 0)
		goto fail;
	return 0;
fail:
	kms_test_token_destroy(t);
	return -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	if (remove(path) != 0)
		fprintf(stderr, "softhsm fixture: cannot remove %s: %s\n", path,
			strerror(errno));
	/* Keep going: remove as much as possible. */
	return 0;
}

void kms_test_rmtree(const char *dir)
{
	/* FTW_DEPTH: contents before their directory; FTW_PHYS: no symlinks. */
	if (dir != NULL && dir[0] != '\0' &&
	    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
		fprintf(stderr, "softhsm fixture: cannot walk %s: %s\n", dir,
			strerror(errno));
}

void kms_test_token_destroy(struct kms_test_token *t)
{
	const char *conf = getenv("SOFTHSM2_CONF");

	if (t == NULL)
		return;
	if (t->conf[0] != '\0' && conf != NULL && strcmp(conf, t->conf) == 0)
		unsetenv("SOFTHSM2_CONF");
	kms_test_rmtree(t->dir);
	OPENSSL_cleanse(t->pin, sizeof(t->pin));
	OPENSSL_cleanse(t->so_pin, sizeof(t->so_pin));
	memset(t, 0, sizeof(*t));
}
