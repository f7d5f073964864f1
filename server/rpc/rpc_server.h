/* rpc_server.h - the mutual-TLS gRPC core server: worker threads, unary call lifecycle, caller identity; local calls for tests and fuzzing. */
#ifndef KMS_RPC_SERVER_H
#define KMS_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "identity/authn.h"
#include "kms/error.h"
#include "tls/tls_files.h"

typedef struct kms_rpc_server kms_rpc_server;
typedef struct kms_call kms_call;
struct kms_audit_log;

/*
 * A unary method handler. It runs on a worker thread (or the thread of
 * kms_call_local_run) with the request bytes (valid only during the call)
 * and must finish the call exactly once, now or later from any thread, with
 * kms_call_reply, kms_call_reply_bytes or kms_call_fail*.
 */
typedef void (*kms_method_fn)(void *app, kms_call *call, const uint8_t *req,
			      size_t len);

/* Who may call a method: bits of (1 << enum kms_peer_kind). */
#define KMS_CALLERS_ANYONE (1u << KMS_PEER_NONE) /* no identity needed (health) */
#define KMS_CALLERS_SERVICES (1u << KMS_PEER_SERVICE)
#define KMS_CALLERS_NODES (1u << KMS_PEER_NODE)
#define KMS_CALLERS_REGIONS (1u << KMS_PEER_REGION) /* nodes of linked regions */

/*
 * The largest request a method takes unless it says otherwise: more than
 * any single call needs (4 KiB of plaintext, 8 KiB of context, a blob).
 */
#define KMS_RPC_MAX_REQUEST_DEFAULT (64 * 1024)

typedef struct kms_method {
	const char *path; /* "/kms.v1.KeyManagement/Encrypt" */
	kms_method_fn fn;
	unsigned callers; /* KMS_CALLERS_* */
	/* The request message: its string fields are checked for NUL bytes
	 * before the handler runs (server/rpc/wire_strings.h). NULL: the
	 * handler checks them itself (a batch, item by item). */
	const ProtobufCMessageDescriptor *request;
	/* The largest request in bytes; 0: KMS_RPC_MAX_REQUEST_DEFAULT. A
	 * larger one is refused with RESOURCE_EXHAUSTED before the handler.
	 * gRPC itself refuses anything over the largest limit of the table. */
	size_t max_request;
} kms_method;

/* m's request limit in bytes. */
size_t kms_method_max_request(const kms_method *m);

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
	 * must chain to (client CA and node CA together, and the extra roots
	 * of kms_rpc_server_set_extra_roots), and the client CRL.
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
	/* Where every call to a method not open to anyone leaves its record
	 * (not owned; it must outlive the server). NULL: no audit. */
	struct kms_audit_log *audit;
	unsigned node_id; /* the node the records name */
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

/*
 * More roots client certificates may chain to (any thread): the linked
 * regions' node CAs, PEM, appended to the client CA and node CA now and by
 * every later kms_rpc_server_set_tls. NULL or "": none. Whom they may name
 * is authn's to say (kms_authn_set_regions). Like kms_rpc_server_set_tls
 * it applies to new handshakes within a second. KMS_ERR_INVALID for a PEM
 * gRPC could not read (a block that does not parse, no certificate),
 * KMS_ERR_IO when the roots cannot be written; the roots before stay in
 * force then.
 */
int kms_rpc_server_set_extra_roots(kms_rpc_server *s, const char *pem, kms_err *err);

/* Stops accepting, cancels calls in flight, joins the workers, frees. */
void kms_rpc_server_stop(kms_rpc_server *s);

/* The caller's SPIFFE ID (the one URI SAN of its certificate); never NULL in
 * a handler of a method closed to anonymous callers. */
const char *kms_call_principal(const kms_call *call);

/* The caller as authentication found it (kind KMS_PEER_NONE for an
 * anonymous call). */
const kms_peer *kms_call_peer(const kms_call *call);

/* The name of the linked region whose node is calling; "" unless the caller
 * is KMS_PEER_REGION. Never NULL. */
const char *kms_call_peer_region(const kms_call *call);

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
 * The audit record of a call (obs/audit_log.h). With an audit log, a call
 * to a method not open to anyone is answered only once its record is in
 * the file: the kms_call_reply and kms_call_fail functions below hand the
 * answer to the audit writer, which sends it after write(2) has returned,
 * or sends UNAVAILABLE ("audit log cannot be written: ...") instead when
 * the record cannot be written. While the log cannot be written, such
 * calls are refused with that status before their handler runs.
 *
 * Handlers add what only they know, before they finish the call (the
 * strings are copied; a later call replaces an earlier one):
 * the key and version the call used (version 0: none known), the items of
 * a batch, the caller a node forwarded the call for, and a root
 * operation's proposal and its approvers (at most KMS_AUDIT_APPROVERS_MAX).
 */
void kms_call_audit_key(kms_call *call, const char *key_id, uint64_t version);
void kms_call_audit_items(kms_call *call, unsigned n);
void kms_call_audit_on_behalf_of(kms_call *call, const char *principal);
void kms_call_audit_proposal(kms_call *call, const char *proposal_id,
			     const char *const *approvers, size_t n_approvers);

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

/*
 * Local calls: a method's handler run in this process without gRPC or a
 * socket (the handler fuzz target, tests), with the checks a call from the
 * network passes before its handler, in the same order:
 *  - who may call: a method not open to anyone (KMS_CALLERS_ANYONE) refuses
 *    an anonymous peer (UNAUTHENTICATED) and a peer whose kind is not in
 *    m->callers (PERMISSION_DENIED). A method open to anyone sees an
 *    anonymous caller whatever peer was given, as it does over the
 *    network, where that caller's certificate is never read;
 *  - the request is no larger than kms_method_max_request(m)
 *    (RESOURCE_EXHAUSTED);
 *  - no string field of the request holds a NUL byte (INVALID_ARGUMENT).
 * Every kms_call_* accessor and finisher above works on a local call.
 *
 * The outcome reaches done exactly once: on the thread that finishes the
 * call (the caller of kms_call_local_run for most handlers; the Raft thread
 * for a write answered once applied; any thread a handler hands the call
 * to), after kms_call_local_run has returned or before. code is the gRPC
 * status, msg its details ("" for OK, never NULL), resp and len the packed
 * response (NULL and 0 unless OK). All three are valid only during done;
 * the call frees itself when done returns, so done must not use it.
 */
typedef void (*kms_call_done_fn)(void *arg, grpc_status_code code, const char *msg,
				 const uint8_t *resp, size_t len);

/*
 * A local call from peer (copied; NULL: anonymous) whose handler finds
 * worker_ctx with kms_call_worker (an HSM session from kms_api_worker_init,
 * owned by the caller and used on the handler's thread only) and
 * deadline_ms milliseconds left from now with kms_call_deadline_ms
 * (LONG_MAX: no deadline; 0 or less: already passed). NULL when done is
 * NULL or memory runs out. The call belongs to the caller until it passes
 * it to kms_call_local_run, which always ends it through done; a call never
 * run leaks.
 */
kms_call *kms_call_local_new(const kms_peer *peer, void *worker_ctx, long deadline_ms,
			     kms_call_done_fn done, void *arg);

/*
 * Adds request metadata that kms_call_metadata finds (key lowercase, as
 * gRPC delivers it; value len bytes, copied with key). Before
 * kms_call_local_run only. KMS_ERR_INVALID on a call from the network or
 * past four entries, KMS_ERR_NOMEM.
 */
int kms_call_local_metadata(kms_call *call, const char *key, const char *value, size_t len,
			    kms_err *err);

/*
 * Makes a local call leave an audit record in log, naming node, as a call
 * from the network would (its peer is "local"); its outcome then reaches
 * done once the record is written (or as UNAVAILABLE when it cannot be).
 * Before kms_call_local_run only.
 */
void kms_call_local_audit(kms_call *call, struct kms_audit_log *log, unsigned node);

/*
 * Runs method m of app (what the server passes its handlers) on call with
 * the len request bytes at req, which the caller keeps (the handler reads a
 * copy that is wiped and freed when it returns). Returns when the handler
 * does; the outcome may reach done later. Call it once per call, on the
 * thread that may use the call's worker_ctx.
 */
void kms_call_local_run(const kms_method *m, void *app, kms_call *call, const uint8_t *req,
			size_t len);

#endif
