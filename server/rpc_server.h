/* rpc_server.h - the mutual-TLS gRPC core server: worker threads, unary call lifecycle, caller identity. */
#ifndef KMS_RPC_SERVER_H
#define KMS_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "authn.h"
#include "kms/error.h"
#include "tls_files.h"

typedef struct kms_rpc_server kms_rpc_server;
typedef struct kms_call kms_call;

/*
 * A unary method handler. It runs on a worker thread with the request bytes
 * (valid only during the call) and must finish the call exactly once, now or
 * later from any thread, with kms_call_reply or kms_call_fail.
 */
typedef void (*kms_method_fn)(void *app, kms_call *call, const uint8_t *req,
			      size_t len);

/* Who may call a method: bits of (1 << enum kms_peer_kind). */
#define KMS_CALLERS_ANYONE (1u << KMS_PEER_NONE) /* no identity needed (health) */
#define KMS_CALLERS_SERVICES (1u << KMS_PEER_SERVICE)
#define KMS_CALLERS_NODES (1u << KMS_PEER_NODE)

typedef struct kms_method {
	const char *path; /* "/kms.v1.KeyManagement/Encrypt" */
	kms_method_fn fn;
	unsigned callers; /* KMS_CALLERS_* */
	/* The request message: its string fields are checked for NUL bytes
	 * before the handler runs (server/wire_strings.h). */
	const ProtobufCMessageDescriptor *request;
} kms_method;

/* The limits of the server, in seconds ([grpc] in docs/OPERATIONS.md). */
typedef struct kms_rpc_limits {
	unsigned max_concurrent_streams; /* per connection */
	unsigned handshake_timeout_s;
	unsigned keepalive_time_s, keepalive_timeout_s;
	unsigned min_ping_interval_s;	 /* clients pinging more often are cut off */
	unsigned max_connection_idle_s;
	unsigned max_connection_age_s, max_connection_age_grace_s;
	unsigned request_timeout_s;	 /* the request message must arrive within */
} kms_rpc_limits;

typedef struct kms_rpc_server_opts {
	const char *listen;       /* host:port */
	/* The first TLS set: the node's chain, the roots client certificates
	 * must chain to (client CA and node CA together), and the client CRL.
	 * Read during kms_rpc_server_start only (kms_rpc_server_set_tls
	 * replaces it later), like private_key. */
	const kms_tls_files *tls;
	const char *private_key;  /* what gRPC takes: PEM or "engine:pkcs11:<uri>" */
	kms_rpc_limits limits;    /* 0 fields are refused */
	unsigned workers;
	const kms_method *methods;
	size_t n_methods;
	void *app;
	kms_authn *authn;         /* tells services from nodes; not owned */
	/* Runs on each worker thread before it serves; *wctx is what
	 * kms_call_worker returns there (the thread's HSM session). */
	int (*worker_init)(void *app, void **wctx, kms_err *err);
	void (*worker_fini)(void *app, void *wctx);
} kms_rpc_server_opts;

/*
 * Binds, starts the workers and returns. A certificate or key gRPC cannot
 * use (bad PEM, wrong PIN, key not in the token), a port it cannot bind, or
 * a worker_init failure gives KMS_ERR_CONFIG naming the problem.
 */
int kms_rpc_server_start(const kms_rpc_server_opts *opts, kms_rpc_server **out,
			 kms_err *err);

/*
 * Puts a new TLS set in force for new handshakes (any thread): the chain
 * and roots go to the files gRPC's certificate provider watches, which it
 * reads within a second; the CRL applies to the next handshake at once.
 * Connections already up keep the set they were made with. KMS_ERR_IO when
 * the files cannot be written (the old set stays in force).
 */
int kms_rpc_server_set_tls(kms_rpc_server *s, const kms_tls_files *tls, kms_err *err);

/* Stops accepting, cancels calls in flight, joins the workers, frees. */
void kms_rpc_server_stop(kms_rpc_server *s);

/* The caller's SPIFFE ID (the one URI SAN of its certificate); never NULL in
 * a handler of a method closed to anonymous callers. */
const char *kms_call_principal(const kms_call *call);

/* The caller as authentication found it (kind KMS_PEER_NONE for an
 * anonymous call). */
const kms_peer *kms_call_peer(const kms_call *call);

/* The value of request metadata key (lowercase), or NULL; *len gets its
 * length (not NUL-terminated). Valid during the handler. */
const char *kms_call_metadata(const kms_call *call, const char *key, size_t *len);

/* Milliseconds left until the call's deadline (LONG_MAX when it has none;
 * 0 or less once it has passed). */
long kms_call_deadline_ms(const kms_call *call);

/* The worker context of the thread running the handler. Only valid inside
 * the handler, on its thread. */
void *kms_call_worker(const kms_call *call);

/*
 * Finishes the call with OK and resp packed (any thread). If secret is set,
 * the packed bytes are cleansed when gRPC releases them.
 */
void kms_call_reply(kms_call *call, const ProtobufCMessage *resp, int secret);

/* Finishes the call with OK and len bytes of an already packed response. */
void kms_call_reply_bytes(kms_call *call, const uint8_t *resp, size_t len);

/* Finishes the call with the gRPC status for kms_status and msg (any thread). */
void kms_call_fail(kms_call *call, int kms_status, const char *msg);

/* Finishes the call with an explicit gRPC status (any thread). */
void kms_call_fail_grpc(kms_call *call, grpc_status_code code, const char *msg);

#endif
