/* api.h - the gRPC method tables of kmsd (KeyManagement and its batch calls, Operator, Internal, Health) and what handlers share. */
#ifndef KMS_API_H
#define KMS_API_H

#include <stddef.h>

#include "kms/buf.h"
#include "kms/v1/state.pb-c.h"
#include "rpc/rpc_server.h"

struct kms_node;

extern const kms_method kms_api_keymgmt_methods[];
extern const size_t kms_api_keymgmt_n_methods;
extern const kms_method kms_api_keyadmin_methods[];
extern const size_t kms_api_keyadmin_n_methods;
/* BatchDecrypt, BatchGenerateDataKey, BatchReEncrypt (kms.v1.KeyManagement). */
extern const kms_method kms_api_batch_methods[];
extern const size_t kms_api_batch_n_methods;
extern const kms_method kms_api_health_methods[];
extern const size_t kms_api_health_n_methods;
extern const kms_method kms_api_operator_methods[];
extern const size_t kms_api_operator_n_methods;
/* The quorum calls of kms.v1.Operator (api_quorum.c). */
extern const kms_method kms_api_quorum_methods[];
extern const size_t kms_api_quorum_n_methods;
extern const kms_method kms_api_internal_methods[];
extern const size_t kms_api_internal_n_methods;
/* DomainKeyStatus (Operator) and FetchRotationDomainKey (Internal). */
extern const kms_method kms_api_domain_key_methods[];
extern const size_t kms_api_domain_key_n_methods;
/* A link-region operation against this node: KMS_ERR_INVALID when the peer
 * node CA is this region's own (api_region.c). */
int kms_api_link_region_check(struct kms_node *node, const Kms__V1__LinkRegionOperation *op,
			      kms_err *err);
/* RegionStatus (Operator) and RegionPull (Internal), api_region.c. */
extern const kms_method kms_api_region_methods[];
extern const size_t kms_api_region_n_methods;

/* FetchBackup (Operator) and FetchBackupPiece (Internal), api_backup.c. */
extern const kms_method kms_api_backup_methods[];
extern const size_t kms_api_backup_n_methods;
/* The method tables let only node identities (node CA) in; this asks
 * whether that node is a member: its id, or 0 (and the call failed). */
uint64_t kms_api_require_member_node(struct kms_node *node, kms_call *call);

/* KMS_OK when this node can take a write now (kms_node_can_write), else
 * KMS_ERR_UNAVAILABLE saying why not. */
int kms_api_can_write(struct kms_node *node, kms_err *err);

/* Worker-thread set-up for the gRPC server: each worker's HSM session. */
int kms_api_worker_init(void *app, void **wctx, kms_err *err);
void kms_api_worker_fini(void *app, void *wctx);

/*
 * An Operator call that runs on the leader only (membership, the
 * administrators list): request bytes in, packed response (kms_malloc'd,
 * the caller's) or a status with err out, for principal, which fn checks
 * itself. A follower relays the call (Internal/Relay) and the leader runs
 * the same fn.
 */
typedef struct kms_leader_op {
	const char *method;
	int (*fn)(struct kms_node *node, const char *principal, const uint8_t *req, size_t len,
		  kms_buf *out, kms_err *err);
	const ProtobufCMessageDescriptor *request;
} kms_leader_op;

/* KMS_OK for an administrator of the replicated list, else KMS_ERR_PERMISSION
 * "principal '<p>' is not an administrator". */
int kms_api_admin_check(struct kms_node *node, const char *principal, kms_err *err);
/* RotateDomainKey's leader operation (api_domain_key.c). */
int kms_api_op_rotate_domain_key(struct kms_node *node, const char *principal,
				 const uint8_t *data, size_t len, kms_buf *out, kms_err *err);

/* The leader operation for method ("/kms.v1.Operator/AddMember"), or NULL. */
const kms_leader_op *kms_api_leader_op(const char *method);
/* The quorum's leader operations alone (api_quorum.c); kms_api_leader_op
 * finds them too. */
const kms_leader_op *kms_api_quorum_leader_op(const char *method);

/*
 * Answers call with the leader operation of method: run here when this
 * node leads, else relayed to the leader with the caller's principal. The
 * caller must be an administrator (checked here first).
 */
void kms_api_run_on_leader(struct kms_node *node, kms_call *call, const char *method,
			   const uint8_t *data, size_t len);

/* True if c is one of the key administration commands of api_keyadmin.c. */
int kms_api_keyadmin_command(const Kms__V1__Command *c);

/*
 * The leader's gate for such a command forwarded by a follower (cmd, len
 * its bytes): the handler's rules again, for principal, on the leader's
 * state, ending with kms_keyring_check. KMS_OK, or the refusal that
 * travels back to the follower with its sentence.
 */
int kms_api_keyadmin_gate(struct kms_node *node, const char *principal,
			  const Kms__V1__Command *c, const uint8_t *cmd, size_t len,
			  kms_err *err);

#endif
