/* kmsctl.h - what kmsctl's modules share: exit statuses and the error printer. */
#ifndef KMSCTL_H
#define KMSCTL_H

#include <stdint.h>

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

struct kms_rpc_status;
/* Prints the server's status and message; EXIT_SERVER. */
int kmsctl_server_error(const struct kms_rpc_status *st);

struct kms_client;
struct Kms__V1__RootOperation;
struct Kms__V1__Proposal;
/*
 * ProposeOperation of op (ttl_s 0: the server's default): EXIT_OK with the
 * proposal in *out (protobuf_c_message_free_unpacked), or the exit status
 * after saying why.
 */
int kmsctl_propose(struct kms_client *c, const struct Kms__V1__RootOperation *op, uint32_t ttl_s,
		   struct Kms__V1__Proposal **out);

#endif
