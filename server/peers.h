/* peers.h - calls from this node to other members, over mutual TLS with the node's own identity (its key stays in the HSM). */
#ifndef KMS_PEERS_H
#define KMS_PEERS_H

#include <protobuf-c/protobuf-c.h>

#include "kms/client.h"
#include "kms/config.h"
#include "kms/error.h"

typedef struct kms_peers kms_peers;

/* Remembers the CA, the node certificate and its key URI from cfg. */
int kms_peers_new(const kms_config *cfg, kms_peers **out, kms_err *err);
void kms_peers_free(kms_peers *p);

/*
 * One unary call to the member serving gRPC at address; one channel per
 * address is kept and shared by threads. Same contract as
 * kms_client_call_timeout: returns st->code, *resp the caller's on OK.
 */
int kms_peers_call(kms_peers *p, const char *address, const char *method,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp, int timeout_ms, kms_rpc_status *st);

#endif
