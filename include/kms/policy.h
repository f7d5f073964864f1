/* policy.h - every authorization decision of kmsd, as pure functions over the key policy and the caller's principal. */
#ifndef KMS_POLICY_H
#define KMS_POLICY_H

#include <stddef.h>

#include "kms/error.h"
#include "kms/spiffe.h"
#include "kms/v1/kms.pb-c.h"

enum kms_op {
	KMS_OP_ENCRYPT = 1,
	KMS_OP_DECRYPT,
	KMS_OP_GENERATE_DATA_KEY,
	KMS_OP_DESCRIBE_KEY,
	/* ReEncrypt needs both: From on the key of the blob it opens, To on
	 * the key it seals under (which may be the same key). */
	KMS_OP_REENCRYPT_FROM,
	KMS_OP_REENCRYPT_TO,
};

#define KMS_POLICY_MAX_GRANTS 64
/* A principal is a SPIFFE ID: at most KMS_SPIFFE_ID_MAX bytes. */
#define KMS_PRINCIPAL_MAX KMS_SPIFFE_ID_MAX

/* "Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", "ReEncryptFrom", "ReEncryptTo". */
const char *kms_op_name(enum kms_op op);
/* KMS_OK and *op set, or KMS_ERR_INVALID naming the unknown operation. */
int kms_op_parse(const char *name, enum kms_op *op, kms_err *err);

/*
 * A principal is a SPIFFE ID with a path, by the rules of kms_spiffe_parse
 * (include/kms/spiffe.h). KMS_OK or KMS_ERR_INVALID naming the rule.
 */
int kms_principal_check(const char *principal, kms_err *err);

/*
 * Which rules kms_policy_check applies. A policy a caller submits now
 * (KMS_POLICY_NEW) gets every rule below. A policy already in the key ring
 * (KMS_POLICY_STORED: Raft apply and snapshot restore) gets only the
 * structural ones, so that a log written by an earlier version replays to
 * the same key ring; a stored grant that the new rules would refuse simply
 * matches nobody (kms_policy_allows).
 */
enum kms_policy_rules { KMS_POLICY_NEW, KMS_POLICY_STORED };

/*
 * Checks a policy: at most KMS_POLICY_MAX_GRANTS grants, each with 1 to 6
 * distinct operations of the names above. Under KMS_POLICY_NEW each grant's
 * principal is "*" (every authenticated principal of the trust domain), a
 * SPIFFE ID, or a wildcard: a SPIFFE ID (or bare trust domain), then '/'
 * and '*' as the whole last segment, which matches the IDs below it on a
 * path-segment boundary ("spiffe://td/ns/pay/" + '*' matches
 * ".../ns/pay/sa/x", never ".../ns/payroll/sa/x"); a '*' anywhere else, a path under /kmsd/ (node
 * identities never use keys) or a trust domain other than td (when td is
 * not NULL) is refused. KMS_OK or KMS_ERR_INVALID naming the grant (from 1)
 * and the problem.
 */
int kms_policy_check(const Kms__V1__KeyPolicy *policy, enum kms_policy_rules rules,
		     const char *td, kms_err *err);

/*
 * Default deny: true only if a grant whose principal is principal, or "*",
 * or a wildcard above it, lists op. A NULL policy or principal allows
 * nothing. principal must already be an authenticated SPIFFE ID.
 */
int kms_policy_allows(const Kms__V1__KeyPolicy *policy, const char *principal,
		      enum kms_op op);

/* True if principal is exactly one of the n administrators (no wildcards). */
int kms_is_admin(char *const *admins, size_t n, const char *principal);

#endif
