/* policy.c - every authorization decision of kmsd: key policies (default deny) and the administrator list. */
#include <stdio.h>
#include <string.h>

#include "kms/error.h"
#include "kms/policy.h"


static const char *const op_names[] = {
    [KMS_OP_ENCRYPT] = "Encrypt",
    [KMS_OP_DECRYPT] = "Decrypt",
    [KMS_OP_GENERATE_DATA_KEY] = "GenerateDataKey",
    [KMS_OP_DESCRIBE_KEY] = "DescribeKey",
    [KMS_OP_REENCRYPT_FROM] = "ReEncryptFrom",
    [KMS_OP_REENCRYPT_TO] = "ReEncryptTo",
};
#define OP_COUNT (sizeof(op_names) / sizeof(op_names[0]))

const char *kms_op_name(enum kms_op op)
{
	if ((size_t)op >= OP_COUNT || op_names[op] == NULL)
		return "unknown";
	return op_names[op];
}

int kms_op_parse(const char *name, enum kms_op *op, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	KMS_ENSURE(name != NULL, err, KMS_ERR_INVALID, "operation is missing");
	/* Exact, case-sensitive names: "encrypt" is not an operation. */
	for (size_t i = 0; i < OP_COUNT; i++) {
		if (op_names[i] != NULL && strcmp(name, op_names[i]) == 0) {
			if (op != NULL)
				*op = (enum kms_op)i;
			return KMS_OK;
		}
	}
	return kms_errf(err, KMS_ERR_INVALID, "unknown operation '%s'",
			kms_quote(name, q));
}

int kms_principal_check(const char *principal, kms_err *err)
{
	return kms_spiffe_parse_str(principal, 1, NULL, err);
}

/* The last two bytes of a wildcard grant: a slash and a star. */
#define WILDCARD_TAIL "/*"
#define WILDCARD_TAIL_LEN 2

static int is_wildcard(const char *p, size_t len)
{
	return len > WILDCARD_TAIL_LEN && memcmp(p + len - WILDCARD_TAIL_LEN, WILDCARD_TAIL,
						 WILDCARD_TAIL_LEN) == 0;
}

/*
 * A grant principal as a caller submits it (KMS_POLICY_NEW): "*", a SPIFFE
 * ID, or a SPIFFE ID (or bare trust domain) and WILDCARD_TAIL. A wildcard
 * that ends inside a segment ("spiffe://td/ns/pay*") would match
 * "spiffe://td/ns/payroll/..." too: a principal the author never named.
 */
static int grant_principal_check(const char *p, const char *td, kms_err *err)
{
	size_t len = strnlen(p, KMS_PRINCIPAL_MAX + 3);
	const char *star = memchr(p, '*', len);
	kms_spiffe_id id;
	char q[KMS_QUOTE_MAX + 4];

	if (len == 1 && p[0] == '*')
		return KMS_OK;
	if (star != NULL && !(is_wildcard(p, len) && star == p + len - 1))
		return kms_errf(err, KMS_ERR_INVALID,
				"principal '%s' has a '*' that is not a whole last path segment: "
				"a wildcard is written '.../ns/pay/*' and matches on a segment "
				"boundary ('.../ns/pay*' would also match '.../ns/payroll')",
				kms_quote(p, q));
	if (star != NULL)
		KMS_TRY(kms_spiffe_parse(p, len - WILDCARD_TAIL_LEN, 0, &id, err));
	else
		KMS_TRY(kms_spiffe_parse(p, len, 1, &id, err));
	if (kms_spiffe_is_node_path(&id))
		return kms_errf(err, KMS_ERR_INVALID,
				"principal '%s' is under " KMS_NODE_PATH_PREFIX
				", which only kmsd nodes use; nodes never use keys",
				kms_quote(p, q));
	if (td != NULL && !kms_spiffe_in_trust_domain(&id, td))
		return kms_errf(err, KMS_ERR_INVALID,
				"principal '%s' is not in this cluster's trust domain '%s'",
				kms_quote(p, q), td);
	return KMS_OK;
}

/* What a stored grant needs to be kept (KMS_POLICY_STORED): bounded text. */
static int grant_principal_stored(const char *p, kms_err *err)
{
	size_t len = strnlen(p, KMS_PRINCIPAL_MAX + 3);

	KMS_ENSURE(len > 0, err, KMS_ERR_INVALID, "principal is empty");
	KMS_ENSURE(len <= KMS_PRINCIPAL_MAX + WILDCARD_TAIL_LEN, err, KMS_ERR_INVALID,
		   "principal is longer than %d bytes", KMS_PRINCIPAL_MAX);
	for (size_t i = 0; i < len; i++)
		KMS_ENSURE((unsigned char)p[i] > 0x20 && p[i] != 0x7f, err, KMS_ERR_INVALID,
			   "principal has a space or control character at position %zu", i + 1);
	return KMS_OK;
}

static int grant_check(const Kms__V1__Grant *g, enum kms_policy_rules rules, const char *td,
		       kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	enum kms_op seen[OP_COUNT];

	KMS_ENSURE(g != NULL, err, KMS_ERR_INVALID, "missing");
	KMS_ENSURE(g->principal != NULL, err, KMS_ERR_INVALID,
		   "principal is empty");
	KMS_TRY(rules == KMS_POLICY_NEW ? grant_principal_check(g->principal, td, err)
					: grant_principal_stored(g->principal, err));
	KMS_ENSURE(g->n_operations > 0, err, KMS_ERR_INVALID,
		   "no operations listed");
	KMS_ENSURE(g->n_operations < OP_COUNT, err, KMS_ERR_INVALID,
		   "%zu operations listed; there are only %zu", g->n_operations,
		   OP_COUNT - 1);
	for (size_t i = 0; i < g->n_operations; i++) {
		KMS_TRY(kms_op_parse(g->operations[i], &seen[i], err));
		for (size_t j = 0; j < i; j++)
			KMS_ENSURE(seen[j] != seen[i], err, KMS_ERR_INVALID,
				   "operation '%s' is listed twice",
				   kms_quote(g->operations[i], q));
	}
	return KMS_OK;
}

int kms_policy_check(const Kms__V1__KeyPolicy *policy, enum kms_policy_rules rules,
		     const char *td, kms_err *err)
{
	KMS_ENSURE(policy != NULL, err, KMS_ERR_INVALID, "policy is missing");
	KMS_ENSURE(policy->n_grants <= KMS_POLICY_MAX_GRANTS, err,
		   KMS_ERR_INVALID, "policy has %zu grants, more than %d",
		   policy->n_grants, KMS_POLICY_MAX_GRANTS);
	KMS_ENSURE(policy->n_grants == 0 || policy->grants != NULL, err,
		   KMS_ERR_INVALID, "policy grants are missing");
	/* Grants are numbered from 1 in messages, as a person counts them. */
	for (size_t i = 0; i < policy->n_grants; i++) {
		char prefix[32];

		if (grant_check(policy->grants[i], rules, td, err) != KMS_OK) {
			snprintf(prefix, sizeof(prefix), "grant %zu", i + 1);
			return kms_err_prefix(err, prefix);
		}
	}
	return KMS_OK;
}

/*
 * A wildcard matches on a segment boundary only: the principal starts with
 * everything before the '*', which ends in '/'. A stored grant with a '*'
 * anywhere else (accepted by an earlier version) matches nobody.
 */
static int grant_matches(const char *gp, const char *principal)
{
	size_t len = strlen(gp);

	if (len == 1 && gp[0] == '*')
		return 1;
	if (is_wildcard(gp, len))
		return strlen(principal) > len - 1 &&
		       strncmp(principal, gp, len - 1) == 0;
	if (memchr(gp, '*', len) != NULL)
		return 0;
	return strcmp(principal, gp) == 0;
}

static int grant_lists(const Kms__V1__Grant *g, const char *op_name)
{
	for (size_t i = 0; i < g->n_operations; i++)
		if (g->operations[i] != NULL &&
		    strcmp(g->operations[i], op_name) == 0)
			return 1;
	return 0;
}

int kms_policy_allows(const Kms__V1__KeyPolicy *policy, const char *principal,
		      enum kms_op op)
{
	const char *name;

	/* Default deny: anything missing or malformed allows nothing. */
	if (policy == NULL || principal == NULL || policy->grants == NULL)
		return 0;
	if ((size_t)op >= OP_COUNT || op_names[op] == NULL)
		return 0;
	/* An identity that is not a SPIFFE ID matches no grant, not even "*". */
	if (kms_principal_check(principal, NULL) != KMS_OK)
		return 0;
	name = op_names[op];
	for (size_t i = 0; i < policy->n_grants; i++) {
		const Kms__V1__Grant *g = policy->grants[i];

		if (g == NULL || g->principal == NULL)
			continue;
		if (grant_matches(g->principal, principal) &&
		    grant_lists(g, name))
			return 1;
	}
	return 0;
}

int kms_is_admin(char *const *admins, size_t n, const char *principal)
{
	if (admins == NULL || principal == NULL || principal[0] == '\0')
		return 0;
	/* Exact comparison only: an administrator list has no wildcards. */
	for (size_t i = 0; i < n; i++)
		if (admins[i] != NULL && strcmp(admins[i], principal) == 0)
			return 1;
	return 0;
}
