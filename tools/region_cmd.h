/* region_cmd.h - 'kmsctl region': link (through the quorum) and status. */
#ifndef KMSCTL_REGION_CMD_H
#define KMSCTL_REGION_CMD_H

#include "kms/client.h"

/*
 * Runs 'region' with argv[0] = "region" and its subcommand and options
 * after it; copts: the global options and environment; json: --json was
 * given. Returns the exit status: 0, 1 a usage or local error, 2 the
 * server refused.
 */
int kmsctl_region(int argc, char **argv, const kms_client_opts *copts, int json);

/* The usage text of the command. */
extern const char kmsctl_region_usage[];

#endif
