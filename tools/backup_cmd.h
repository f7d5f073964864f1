/* backup_cmd.h - 'kmsctl backup': create (through the quorum), fetch, and a custodian's offline unseal-share. */
#ifndef KMSCTL_BACKUP_CMD_H
#define KMSCTL_BACKUP_CMD_H

#include "kms/client.h"

/*
 * Runs 'backup' with argv[0] = "backup" and its subcommand, operands and
 * options after it; copts: the global options and environment (unused by
 * unseal-share, which needs no server). Returns the exit status: 0, 1 a
 * usage or local error, 2 the server refused.
 */
int kmsctl_backup(int argc, char **argv, const kms_client_opts *copts);

/* The usage text of the command. */
extern const char kmsctl_backup_usage[];

#endif
