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
 * domain from cfg. */
int kms_peers_new(const kms_config *cfg, kms_peers **out, kms_err *err);
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

#endif
