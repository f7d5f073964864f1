/* coredump.c - core dumps off and the process not dumpable, unless the configuration allows them. */
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "node/coredump.h"
#include "kms/log.h"

int kms_coredump_policy(int allow, kms_err *err)
{
	const struct rlimit none = {0, 0};

	if (allow) {
		KMS_LOG_W("[node] allow_core_dumps = true: a core dump of kmsd holds the HSM "
			  "PIN and request plaintext; keep it off in production");
		return KMS_OK;
	}
	/* The hard limit too: a library calling setrlimit later cannot undo it. */
	if (setrlimit(RLIMIT_CORE, &none) != 0)
		return kms_errf(err, KMS_ERR_IO,
				"cannot turn core dumps off (setrlimit RLIMIT_CORE 0): %s",
				strerror(errno));
	/*
	 * RLIMIT_CORE does not stop a core_pattern pipe (systemd-coredump), nor
	 * a process of the same user reading /proc/PID/mem. A process that is
	 * not dumpable is dumped only where fs.suid_dumpable = 2 says so (for
	 * root alone), and passes no ptrace access check of its user
	 * (core(5), proc(5), ptrace(2)).
	 */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return kms_errf(err, KMS_ERR_IO,
				"cannot make the process non-dumpable (prctl PR_SET_DUMPABLE 0): %s",
				strerror(errno));
	KMS_LOG_D("core dumps off: RLIMIT_CORE 0, not dumpable");
	return KMS_OK;
}
