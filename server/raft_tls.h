/* raft_tls.h - a canonical/raft transport that carries Raft peer traffic over
 * mutually authenticated TLS 1.3, with node identities bound to certificates.
 */
#ifndef KMS_RAFT_TLS_H
#define KMS_RAFT_TLS_H

#include <stddef.h>

#include <openssl/types.h>

#include "kms/error.h"

struct raft_uv_transport;
struct uv_loop_s;

/*
 * Decides whether the peer whose certificate carries spiffe_id may act as
 * Raft server raft_id: 1 = allowed, anything else = refused. Called on the
 * transport's own threads (never the loop thread), once per connection, so
 * it must be thread-safe and quick. On an accepted connection raft_id is the
 * id the peer claims in its preamble; on an outgoing one it is the id raft
 * asked to connect to.
 */
typedef int (*kms_raft_tls_authorize_fn)(void *arg, const char *spiffe_id,
					 unsigned long long raft_id);

typedef struct kms_raft_tls_opts {
	const char *ca_file;   /* PEM: peers must chain to it */
	const char *cert_file; /* PEM chain of this node */
	EVP_PKEY *key; /* this node's key; NOT owned (production: from the
			  HSM via kms_tls_engine_load_key in
			  server/tls_engine.h; tests: PEM) */
	kms_raft_tls_authorize_fn
	    authorize; /* called on bridge threads; 1 = allowed */
	void *authorize_arg;
} kms_raft_tls_opts;

/*
 * Fills t as a raft_uv_transport (the way raft_uv_tcp_init does; t->data is
 * kept) whose links are TLS 1.3 connections over TCP. Both ends present a
 * certificate chained to opts->ca_file, and each end passes the other's
 * SPIFFE ID (the certificate's single spiffe:// URI SAN) to
 * opts->authorize before any Raft byte flows.
 *
 * Wire protocol, inside TLS, before Raft's own messages:
 *   connecting side: "KMSR" | uint64 BE raft id | uint16 BE address length |
 *                    address (1..256 printable bytes)
 *   accepting side:  "KMSA" once it has authorized the preamble, so that a
 *                    refused peer sees a failed connect (and raft's retry
 *                    delay) instead of a link that dies after it is handed
 *                    over.
 * A plaintext client, a certificate from another CA, a certificate whose
 * SPIFFE ID is not the claimed member, or a preamble not complete within
 * 5 seconds is refused, with a warning that names the reason.
 *
 * Each established link is a socketpair: raft reads and writes one end as a
 * uv_pipe_t on loop, and a thread per link moves the bytes between the other
 * end and the TLS connection. The uv_pipe_t handed to raft is allocated with
 * raft_malloc; raft uv_close()s it and releases it with raft_free, as it
 * does with the TCP transport's handles.
 *
 * The callbacks raft passes to listen and connect run on the loop thread.
 * Call from the loop's thread, before or while the loop runs. The
 * certificate, key and CA are read now; opts->key gets its own reference
 * and the caller keeps (and frees) its own. opts->authorize_arg must stay
 * valid until kms_raft_tls_close. KMS_ERR_INVALID for missing options,
 * KMS_ERR_CONFIG naming the file or step that failed, KMS_ERR_IO or
 * KMS_ERR_NOMEM.
 */
int kms_raft_tls_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
		      const kms_raft_tls_opts *opts, kms_err *err);

/*
 * Releases what kms_raft_tls_init allocated. After raft has closed the
 * transport (like raft_uv_tcp_close): the close callback passed to
 * t->close must have fired, unless the transport never listened nor
 * connected. Called too early it logs an error and frees nothing, since
 * the loop may still reference its handle.
 */
void kms_raft_tls_close(struct raft_uv_transport *t);

/*
 * Writes the SPIFFE ID a node certificate carries for Raft server id:
 * "<trust_domain_uri>/kmsd/node/<id>", e.g. "spiffe://kmsd.dev/kmsd/node/2"
 * for trust_domain_uri "spiffe://kmsd.dev". KMS_ERR_INVALID (out set to "")
 * when id is 0, trust_domain_uri is not spiffe://<domain> or the result
 * does not fit in cap bytes.
 */
int kms_raft_tls_node_spiffe_id(char *out, size_t cap,
				const char *trust_domain_uri,
				unsigned long long id);

/*
 * The inverse: KMS_OK with *id when spiffe_id is exactly
 * "<trust_domain_uri>/kmsd/node/<decimal id>" (no sign, no leading zero,
 * non-zero, fits 64 bits); KMS_ERR_INVALID otherwise, *id untouched.
 */
int kms_raft_tls_parse_node_id(const char *spiffe_id,
			       const char *trust_domain_uri,
			       unsigned long long *id);

#endif
