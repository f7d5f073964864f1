/* fuzz_config.c - libFuzzer target for the node configuration parser (strict INI through libinih). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/config.h"
#include "kms/error.h"
#include "kms/log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * kms_config_load reads a path, so every input is written to one temporary
 * file made once per process and rewritten in place (a file per input would
 * spend the run in the file system). The file lives in $TMPDIR: ops/fuzz
 * points that into its work directory so a crashed run leaves nothing in
 * /tmp.
 */
static char conf_path[4096];
static int conf_fd = -1;

static void conf_remove(void)
{
	if (conf_fd >= 0) {
		close(conf_fd);
		unlink(conf_path);
		conf_fd = -1;
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");

	(void)argc;
	(void)argv;
	if (tmp == NULL || tmp[0] == '\0')
		tmp = "/tmp";
	if (snprintf(conf_path, sizeof(conf_path), "%s/fuzz-config-XXXXXX",
		     tmp) >= (int)sizeof(conf_path))
		abort();
	conf_fd = mkstemp(conf_path);
	if (conf_fd < 0) {
		fprintf(stderr, "fuzz_config: mkstemp %s: %s\n", conf_path,
			strerror(errno));
		abort();
	}
	atexit(conf_remove);
	/*
	 * The parser only records the variable's name; these make sure that a
	 * pin_env naming them could never find a real PIN here. The target
	 * never calls kms_config_read_pin.
	 */
	setenv("KMSD_PIN", "fuzz-not-a-pin", 1);
	setenv("KMS_PIN", "fuzz-not-a-pin", 1);
	/* Warnings about the input are expected; keep the fuzzer's log readable. */
	kms_log_set_level(KMS_LOG_ERROR);
	return 0;
}

static void conf_write(const uint8_t *data, size_t size)
{
	size_t off = 0;

	if (ftruncate(conf_fd, 0) != 0)
		abort();
	while (off < size) {
		ssize_t n = pwrite(conf_fd, data + off, size - off, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			abort();
		off += (size_t)n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	kms_config cfg;
	kms_err err = {0};

	conf_write(data, size);
	if (kms_config_load(conf_path, &cfg, &err) != KMS_OK) {
		/* Refused: says why, and (header) leaves nothing to free. */
		if (err.code != KMS_ERR_CONFIG && err.code != KMS_ERR_NOMEM)
			abort();
		if (err.msg[0] == '\0')
			abort();
		return 0;
	}
	/* What load accepted satisfies the promises of config.h. */
	if (cfg.node_id < 1 || cfg.data_dir == NULL ||
	    cfg.grpc_listen == NULL || cfg.raft_listen == NULL ||
	    cfg.hsm_module == NULL || cfg.hsm_token_label == NULL ||
	    (cfg.hsm_pin_file == NULL) == (cfg.hsm_pin_env == NULL) ||
	    (cfg.n_admins > 0 && cfg.admins == NULL))
		abort();
	kms_config_free(&cfg);
	return 0;
}
