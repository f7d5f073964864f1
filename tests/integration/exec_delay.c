/* exec_delay.c - LD_PRELOAD library that delays every execve(2) of a file
 * named "kmsd" by KMS_EXEC_DELAY_MS milliseconds.
 *
 * tests/integration/test_dev_cluster.sh preloads it into the bash that runs
 * ops/dev-cluster: the subshell that start_node forks then stays this long
 * between its fork and its exec of kmsd, as it can on a busy machine, so that
 * the start-up race the test guards against shows on every run instead of on
 * an unlucky one. Nothing else changes: every execve through it drops
 * LD_PRELOAD and KMS_EXEC_DELAY_MS from the new program's environment, so only
 * that bash and its subshells (which inherit the library through fork) carry
 * it; kmsd, kmsctl and every other program start as usual.
 *
 * Built by the test with the system compiler, without the sanitizers (bash
 * is not built with them). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*execve_fn)(const char *, char *const[], char *const[]);

static int is_ours(const char *var)
{
	return strncmp(var, "LD_PRELOAD=", 11) == 0 ||
	       strncmp(var, "KMS_EXEC_DELAY_MS=", 18) == 0;
}

__attribute__((visibility("default"))) int
execve(const char *path, char *const argv[], char *const envp[])
{
	const char *base = strrchr(path, '/');
	const char *v = getenv("KMS_EXEC_DELAY_MS");
	long ms = v != NULL ? strtol(v, NULL, 10) : 0;
	execve_fn real = (execve_fn)dlsym(RTLD_NEXT, "execve");
	char **env;
	size_t n = 0, k = 0;
	int rc;

	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	base = base != NULL ? base + 1 : path;
	if (ms > 0 && strcmp(base, "kmsd") == 0) {
		struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};

		while (nanosleep(&left, &left) != 0 && errno == EINTR)
			;
	}
	while (envp[n] != NULL)
		n++;
	env = calloc(n + 1, sizeof(*env));
	if (env == NULL)
		return real(path, argv, envp);
	for (size_t i = 0; i < n; i++) {
		if (!is_ours(envp[i]))
			env[k++] = envp[i];
	}
	rc = real(path, argv, env);
	free(env);
	return rc;
}
