/* hostport.h - the one host:port validator of kmsd, for listen addresses, member addresses and join seeds. */
#ifndef KMS_HOSTPORT_H
#define KMS_HOSTPORT_H

#include "kms/error.h"

/* The longest host:port kmsd stores (a member record's address fields). */
#define KMS_HOSTPORT_MAX 255

/*
 * Checks "HOST:PORT": HOST a DNS name or IPv4 address (letters, digits,
 * '-', '.', '_'), or an IPv6 address in brackets (RFC 3986 section 3.2.2);
 * PORT a decimal number from 1 to 65535 with no sign or leading zero; at
 * most KMS_HOSTPORT_MAX bytes, no spaces or control characters. what names
 * the field in the message ("'listen' in [raft]", "raft_address").
 * KMS_OK or KMS_ERR_INVALID with a message that says which rule failed.
 */
int kms_hostport_check(const char *s, const char *what, kms_err *err);

/*
 * The same, plus "unix:PATH" (a Unix socket path of 1..107 bytes), which
 * the gRPC listener takes.
 */
int kms_hostport_check_listen(const char *s, const char *what, kms_err *err);

#endif
