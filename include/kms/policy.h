/* policy.h - every authorization decision of kmsd, as pure functions over the key policy and the caller's principal. */
#ifndef KMS_POLICY_H
#define KMS_POLICY_H

#include <stddef.h>

#include "kms/error.h"
#include "kms/v1/kms.pb-c.h"

enum kms_op {
	KMS_OP_ENCRYPT = 1,
	KMS_OP_DECRYPT,
	KMS_OP_GENERATE_DATA_KEY,
	KMS_OP_DESCRIBE_KEY,
};

#define KMS_POLICY_MAX_GRANTS 64
#define KMS_PRINCIPAL_MAX 512

/* "Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey". */
const char *kms_op_name(enum kms_op op);
/* KMS_OK and *op set, or KMS_ERR_INVALID naming the unknown operation. */
int kms_op_parse(const char *name, enum kms_op *op, kms_err *err);

/*
 * A principal is a SPIFFE ID: "spiffe://<trust domain>/<path>", at most
 * KMS_PRINCIPAL_MAX bytes, no whitespace or control characters.
 */
int kms_principal_check(const char *principal, kms_err *err);

/*
 * Checks a policy a caller submits: at most KMS_POLICY_MAX_GRANTS grants;
 * each principal a SPIFFE ID, or a prefix of one ending in '*' (a lone "*"
 * matches everyone); each operation one of the names above, at least one per
 * grant. KMS_OK or KMS_ERR_INVALID naming the grant and the problem.
 */
int kms_policy_check(const Kms__V1__KeyPolicy *policy, kms_err *err);

/*
 * Default deny: true only if a grant whose principal equals principal (or,
 * ending in '*', is a prefix of it) lists op. A NULL policy or principal
 * allows nothing.
 */
int kms_policy_allows(const Kms__V1__KeyPolicy *policy, const char *principal,
		      enum kms_op op);

/* True if principal is exactly one of the n administrators (no wildcards). */
int kms_is_admin(char *const *admins, size_t n, const char *principal);

#endif
