/* rpc_server.h - the mutual-TLS gRPC core server: worker threads, unary call lifecycle, caller identity. */
#ifndef KMS_RPC_SERVER_H
#define KMS_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "authn.h"
#include "kms/error.h"

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

typedef struct kms_rpc_server_opts {
	const char *listen;       /* host:port */
	const char *ca_file;      /* PEM roots of the client CA (services, operators) */
	const char *node_ca_file; /* PEM roots of the node CA; client certificates must
				     chain to one of the two */
	const char *cert_file;    /* PEM chain of this node */
	const char *private_key;  /* what gRPC takes: PEM or "engine:pkcs11:<uri>" */
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
