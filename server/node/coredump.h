/* coredump.h - keeps the process's memory (PIN, plaintext, key handles) out of core dumps and /proc. */
#ifndef KMS_COREDUMP_H
#define KMS_COREDUMP_H

#include "kms/error.h"

/*
 * Unless allow is set ([node] allow_core_dumps = true), sets RLIMIT_CORE to
 * 0 (soft and hard, so nothing in the process can raise it again) and
 * clears the dumpable flag (prctl PR_SET_DUMPABLE 0): no core file, and
 * /proc/PID/mem, environ and the like of this process are closed to other
 * processes of the same user (proc(5), ptrace(2) "Ptrace access mode
 * checking"). With allow set, both are left as they are. Call once at
 * start-up, before any secret is read. A failed call gives KMS_ERR_IO
 * naming it, and start-up must stop.
 */
int kms_coredump_policy(int allow, kms_err *err);

#endif
