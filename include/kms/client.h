/* client.h - a blocking mutual-TLS gRPC client for kms.v1 (gRPC core + protobuf-c), used by kmsctl, kms-bench and the tests. */
#ifndef KMS_CLIENT_H
#define KMS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "kms/buf.h"
#include "kms/error.h"

typedef struct kms_client_opts {
	const char *target;      /* "host:port" */
	const char *ca_file;     /* PEM roots the server must chain to */
	const char *cert_file;   /* client certificate (PEM); NULL: no client certificate */
	const char *key_file;    /* client private key (PEM) */
	const char *key_string;  /* instead of key_file: what gRPC takes as a key,
				    e.g. "engine:pkcs11:<uri>" for a key in an HSM */
	const char *server_name; /* TLS name override; NULL: the target host */
	/* When set, the server's certificate must also carry this SPIFFE ID
	 * (its one URI SAN), or, when it ends in '/', an ID below it
	 * ("spiffe://td/kmsd/node/" is any node): node-to-node calls check
	 * they reached the member they meant, not just someone the CA signed. */
	const char *server_spiffe_id;
	int timeout_ms;          /* per call; 0 means 10000 */
	/* Sent with every call as the kms-consistency metadata when set:
	 * "leader-commit" asks the serving node to apply everything the leader
	 * has committed before it answers (docs/CONSISTENCY.md). */
	const char *consistency;
} kms_client_opts;

#define KMS_CONSISTENCY_HEADER "kms-consistency"
#define KMS_CONSISTENCY_LEADER_COMMIT "leader-commit"

typedef struct kms_client kms_client;

/*
 * Reads the PEM files and creates the channel (calls grpc_init; the
 * matching grpc_shutdown is in kms_client_close). A missing or unreadable
 * file gives KMS_ERR_CONFIG naming it.
 */
int kms_client_open(const kms_client_opts *opts, kms_client **out,
		    kms_err *err);
void kms_client_close(kms_client *c);

/* The channel, for callers that run their own asynchronous calls. */
grpc_channel *kms_client_channel(kms_client *c);
int kms_client_timeout_ms(const kms_client *c);

/* The outcome of one call as the server sent it. */
typedef struct kms_rpc_status {
	int code;           /* grpc_status_code; 0 is OK */
	char details[512];  /* the server's message, truncated */
} kms_rpc_status;

/*
 * One unary call of method ("/kms.v1.KeyManagement/Encrypt") with req
 * packed. On status OK, *resp is unpacked with resp_desc and owned by the
 * caller (protobuf_c_message_free_unpacked(*resp, NULL)); otherwise *resp is
 * NULL. Returns st->code. A response that does not parse gives
 * GRPC_STATUS_INTERNAL with details saying so.
 */
int kms_client_call(kms_client *c, const char *method,
		    const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc,
		    ProtobufCMessage **resp, kms_rpc_status *st);

/* The same with its own deadline instead of the client's. */
int kms_client_call_timeout(kms_client *c, const char *method,
			    const ProtobufCMessage *req,
			    const ProtobufCMessageDescriptor *resp_desc,
			    ProtobufCMessage **resp, int timeout_ms,
			    kms_rpc_status *st);

/*
 * The same with raw request bytes (for tests that send garbage). On OK,
 * resp->data is kms_malloc'd (kms_buf_free); otherwise resp is empty.
 */
int kms_client_call_raw(kms_client *c, const char *method, const uint8_t *req,
			size_t len, kms_buf *resp, kms_rpc_status *st);

/* "NOT_FOUND" etc. for a grpc_status_code; "UNKNOWN_STATUS" out of range. */
const char *kms_grpc_status_name(int grpc_status);

#endif
