/* audit_cmd.h - 'kmsctl audit verify': an audit file checked offline, without a server. */
#ifndef KMSCTL_AUDIT_CMD_H
#define KMSCTL_AUDIT_CMD_H

/*
 * Runs 'audit' with argv[0] = "audit" and its operands and options after
 * it; json: --json was given before the command. Returns the exit status:
 * 0 the file verifies, 2 it does not (the first bad line and why are
 * printed), 1 a usage error or a file that cannot be read.
 */
int kmsctl_audit(int argc, char **argv, int json);

/* The usage text of the command. */
extern const char kmsctl_audit_usage[];

#endif
