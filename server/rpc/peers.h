/* peers.h - calls from this node to other members, over mutual TLS with the node's own identity (its key stays in the HSM). */
#ifndef KMS_PEERS_H
#define KMS_PEERS_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "kms/client.h"
#include "kms/config.h"
#include "kms/error.h"

typedef struct kms_peers kms_peers;

/* Remembers the node CA, the node certificate, its key URI and the trust
 * domain from cfg, and starts the thread that finishes asynchronous calls. */
int kms_peers_new(const kms_config *cfg, kms_peers **out, kms_err *err);
/*
 * The same for the nodes of a linked region: the node certificate and key
 * of cfg, but servers must chain to ca_file (the peer's node CA) and be
 * named spiffe://trust_domain/kmsd/node/<id>.
 */
int kms_peers_new_region(const kms_config *cfg, const char *trust_domain, const char *ca_file,
			 kms_peers **out, kms_err *err);
/* Stops the asynchronous calls (kms_peers_stop_calls), then frees. */
void kms_peers_free(kms_peers *p);

/*
 * Forgets every cached channel (certificate reload): calls made from now on
 * open new channels, which read the node CA and the node certificate
 * again. A channel stays open until the calls using it return.
 */
void kms_peers_reset(kms_peers *p);

/*
 * One unary call to member node_id serving gRPC at address. The server must
 * present a node-CA certificate naming that node (node_id 0: any node of the
 * trust domain, for a joining node that knows its seeds by address only).
 * One channel per (address, node) is kept and shared by threads. Same
 * contract as kms_client_call_timeout: returns st->code, *resp the caller's
 * on OK.
 */
int kms_peers_call(kms_peers *p, const char *address, uint64_t node_id, const char *method,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp, int timeout_ms, kms_rpc_status *st);

/*
 * The outcome of kms_peers_call_async: st as kms_peers_call reports it and,
 * on OK, resp unpacked with the descriptor given, owned by the callee
 * (protobuf_c_message_free_unpacked(resp, NULL)); NULL otherwise.
 */
typedef void (*kms_peers_done_fn)(void *arg, const kms_rpc_status *st, ProtobufCMessage *resp);

/*
 * The same call without a waiting thread: req is packed before this
 * returns, and done runs exactly once with the outcome, on the thread that
 * finishes asynchronous calls (it must not block: every other call's
 * outcome waits behind it), or on this thread before the function returns
 * when the call cannot start (no channel, after kms_peers_stop_calls). The
 * call ends by timeout_ms with DEADLINE_EXCEEDED. done may start another
 * call.
 */
void kms_peers_call_async(kms_peers *p, const char *address, uint64_t node_id,
			  const char *method, const ProtobufCMessage *req,
			  const ProtobufCMessageDescriptor *resp_desc, long timeout_ms,
			  kms_peers_done_fn done, void *arg);

/*
 * Cancels the asynchronous calls in flight (each done runs, with CANCELLED
 * and "kmsd is shutting down") and refuses new ones (UNAVAILABLE); returns
 * once every done has run. Blocking calls are not affected. Any thread but
 * the one that finishes asynchronous calls.
 */
void kms_peers_stop_calls(kms_peers *p);

#endif
