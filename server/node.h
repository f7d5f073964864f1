/* node.h - one kmsd node: configuration, HSM, key ring, Raft and gRPC server, started and stopped in order. */
#ifndef KMS_NODE_H
#define KMS_NODE_H

#include "kms/config.h"
#include "kms/error.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "raft_node.h"
#include "rpc_server.h"

/* The one server context, passed to every handler (no request state in globals). */
typedef struct kms_node {
	kms_config cfg;
	kms_hsm *hsm;
	kms_hsm_key domain_key;
	kms_keyring *kr;
	kms_raft *raft;
	kms_rpc_server *rpc;
} kms_node;

/*
 * Loads the configuration at path and brings the node up: PIN, TLS engine,
 * HSM, domain key (created only when the data directory is new), key ring,
 * Raft, gRPC. Every failure names the step and the cause.
 */
int kms_node_start(const char *config_path, kms_node **out, kms_err *err);

/* Stops serving, then Raft, then releases the HSM. */
void kms_node_stop(kms_node *node);

#endif
