/* quorum.h - root operations approved by M of N operators: names, the canonical encoding and digest of a proposal, Ed25519 signatures; no I/O but key files. */
#ifndef KMS_QUORUM_H
#define KMS_QUORUM_H

#include <stddef.h>
#include <stdint.h>

#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/v1/state.pb-c.h"

#define KMS_QUORUM_DIGEST_LEN 32     /* SHA-256 */
#define KMS_ED25519_PUB_LEN 32       /* RFC 8032 */
#define KMS_ED25519_SIG_LEN 64
#define KMS_CLUSTER_ID_LEN 16
#define KMS_PROPOSAL_ID_HEX 32       /* 16 random bytes, lowercase hex */
#define KMS_OPERATOR_NAME_MAX 64
#define KMS_OPERATORS_MAX 32
#define KMS_PROPOSAL_TTL_DEFAULT 3600
#define KMS_PROPOSAL_TTL_MAX 86400
/* Proposals the state keeps; finished and expired ones make room first. */
#define KMS_PROPOSALS_MAX 256
#define KMS_GRANT_TTL_MAX 86400

/* The domain separation tag that starts every encoding (docs/FORMAT.md). */
#define KMS_QUORUM_TAG "kmsd quorum proposal v1"

/* An operator name: 1..64 of [a-z0-9._-]. KMS_ERR_INVALID naming the rule. */
int kms_operator_name_check(const char *name, kms_err *err);

/* A proposal id: exactly 32 lowercase hex digits. */
int kms_proposal_id_check(const char *id, kms_err *err);

/*
 * The rules of an operator set: 1..KMS_OPERATORS_MAX operators with valid,
 * distinct names and distinct 32-byte keys, and 1 <= threshold <= n (the
 * set can reach its own threshold). KMS_ERR_INVALID otherwise.
 */
int kms_operator_set_check(Kms__V1__OperatorRecord *const *ops, size_t n, uint32_t threshold,
			   kms_err *err);

/*
 * The rules of a root operation taken alone (the state's checks, such as
 * whether a member or key exists, come at execution). KMS_ERR_INVALID
 * naming the problem.
 */
int kms_root_operation_check(const Kms__V1__RootOperation *op, kms_err *err);

/* The command-line name of an operation ("set-administrators"), or "unknown". */
const char *kms_root_operation_name(const Kms__V1__RootOperation *op);

/*
 * True for an operation that changes only the replicated state: it runs
 * inside the Raft apply of the approval that reaches the threshold, on
 * every node alike. The others (the domain-key rotation) are run by the
 * leader once the proposal is approved.
 */
int kms_root_operation_in_state(const Kms__V1__RootOperation *op);

/*
 * The rules of a backup-export: 1..16 custodians with valid, distinct names
 * and distinct 32-byte X25519 keys, 1 <= threshold <= n. out (may be NULL)
 * gets the custodians, borrowing their names from b.
 */
int kms_backup_export_check(const Kms__V1__BackupExportOperation *b,
			    kms_backup_custodian out[KMS_BACKUP_CUSTODIANS_MAX], kms_err *err);

/*
 * The canonical encoding of a proposal (docs/FORMAT.md "Quorum digests"):
 * the tag, the cluster id, the proposal id, the expiry and the operation,
 * each field length-prefixed, integers big-endian. Deterministic: it does
 * not depend on how protobuf serializes. out->data is kms_malloc'd, the
 * caller's. The operation must pass kms_root_operation_check.
 */
int kms_quorum_encode(const uint8_t *cluster_id, size_t cluster_id_len, const char *proposal_id,
		      int64_t expires_at_unix, const Kms__V1__RootOperation *op, kms_buf *out,
		      kms_err *err);

/* SHA-256 of kms_quorum_encode: what operators sign. */
int kms_quorum_digest(const uint8_t *cluster_id, size_t cluster_id_len, const char *proposal_id,
		      int64_t expires_at_unix, const Kms__V1__RootOperation *op,
		      uint8_t out[KMS_QUORUM_DIGEST_LEN], kms_err *err);

/*
 * KMS_OK when sig is pub's Ed25519 signature (RFC 8032, pure) of the
 * 32-byte digest; KMS_ERR_PERMISSION otherwise (a wrong length included).
 */
int kms_ed25519_verify(const uint8_t pub[KMS_ED25519_PUB_LEN],
		       const uint8_t digest[KMS_QUORUM_DIGEST_LEN], const uint8_t *sig,
		       size_t sig_len, kms_err *err);

/* The raw 32-byte key of an Ed25519 public key PEM file (SubjectPublicKeyInfo). */
int kms_ed25519_public_from_file(const char *path, uint8_t pub[KMS_ED25519_PUB_LEN],
				 kms_err *err);

/*
 * Signs the digest with the Ed25519 private key in a PEM file (PKCS#8, as
 * `openssl genpkey -algorithm ED25519` writes). The key is freed before
 * the return; pub, if not NULL, receives its public half.
 */
int kms_ed25519_sign_file(const char *path, const uint8_t digest[KMS_QUORUM_DIGEST_LEN],
			  uint8_t sig[KMS_ED25519_SIG_LEN], uint8_t pub[KMS_ED25519_PUB_LEN],
			  kms_err *err);

#endif
