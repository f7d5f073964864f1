/* tls_policy.h - the process-wide TLS policy of kmsd (TLS 1.3 preferred, TLS 1.2 only with ECDHE and AEAD suites in the server's order, or TLS 1.3 only), and the start-up probe that proves the gRPC server enforces it. */
#ifndef KMS_TLS_POLICY_H
#define KMS_TLS_POLICY_H

#include "kms/error.h"

/* The TLS 1.2 suites, in the server's order of preference (RFC 8422 ECDHE,
 * AEAD only: GCM and ChaCha20-Poly1305). TLS 1.3's own suites are all AEAD
 * and stay OpenSSL's default. */
#define KMS_TLS12_CIPHERS                                                              \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"                 \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"                   \
	"ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256"

/*
 * Puts the policy in force for every TLS context the process creates from
 * now on (gRPC's server and channels, the Raft links). Call once, early,
 * before gRPC has built any credentials: min_tls_version is 12 or 13
 * ([grpc] min_tls_version). KMS_ERR_CONFIG when OpenSSL refuses it.
 *
 * How, since gRPC 1.51 offers no C setter for the TLS version or the
 * cipher order (see tls_policy.c for the reasons):
 *  - GRPC_SSL_CIPHER_SUITES, the environment variable gRPC reads once for
 *    the TLS 1.2 cipher list, is set to KMS_TLS12_CIPHERS (overriding any
 *    value the environment had);
 *  - OpenSSL's "system_default" SSL configuration, which OpenSSL applies to
 *    every new SSL_CTX (config(5)), is replaced by kmsd's: server preference,
 *    TLS 1.2 at least, and with min_tls_version 13 the TLS 1.2 protocol
 *    switched off as an option, which gRPC's own minimum-version call does
 *    not undo.
 */
int kms_tls_policy_apply(unsigned min_tls_version, kms_err *err);

/*
 * Proves the policy on the running gRPC server at listen (host:port or
 * unix:path) with a few ClientHellos that stop at the ServerHello: a TLS
 * 1.2 hello with a CBC suite is refused; a hello offering two AEAD suites
 * in the reverse of our order gets our first; with min_tls_version 13 a
 * TLS 1.2 hello is refused and a TLS 1.3 one answered. KMS_ERR_CONFIG
 * naming what is not enforced: kmsd then refuses to start (fail closed).
 */
int kms_tls_policy_probe(const char *listen, unsigned min_tls_version, kms_err *err);

#endif
