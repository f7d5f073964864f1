/* kmsctl.h - what kmsctl's modules share: exit statuses and the error printer. */
#ifndef KMSCTL_H
#define KMSCTL_H

/*
 * EXIT_NO_LEADER: 'cluster status' succeeded but no member leads. A
 * command stopped by signal N exits 128 + N.
 */
enum exit_code {
	EXIT_OK = 0,
	EXIT_LOCAL = 1,
	EXIT_SERVER = 2,
	EXIT_NO_LEADER = 3
};

/* "kmsctl: <message>\n" on stderr. */
void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
