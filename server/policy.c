/* policy.c - every authorization decision of kmsd: key policies (default deny) and the administrator list. */
#include <stdio.h>
#include <string.h>

#include "kms/error.h"
#include "kms/policy.h"

#define SPIFFE_SCHEME "spiffe://"
#define SPIFFE_SCHEME_LEN (sizeof(SPIFFE_SCHEME) - 1)


static const char *const op_names[] = {
    [KMS_OP_ENCRYPT] = "Encrypt",
    [KMS_OP_DECRYPT] = "Decrypt",
    [KMS_OP_GENERATE_DATA_KEY] = "GenerateDataKey",
    [KMS_OP_DESCRIBE_KEY] = "DescribeKey",
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

/*
 * The checks shared by exact principals and wildcard prefixes. len is the
 * number of bytes to look at (a prefix stops before its '*').
 */
static int principal_check_n(const char *p, size_t len, kms_err *err)
{
	size_t td_len;

	KMS_ENSURE(len > 0, err, KMS_ERR_INVALID, "principal is empty");
	KMS_ENSURE(len <= KMS_PRINCIPAL_MAX, err, KMS_ERR_INVALID,
		   "principal is longer than %d bytes", KMS_PRINCIPAL_MAX);
	KMS_ENSURE(len >= SPIFFE_SCHEME_LEN &&
		       memcmp(p, SPIFFE_SCHEME, SPIFFE_SCHEME_LEN) == 0,
		   err, KMS_ERR_INVALID,
		   "principal must be a SPIFFE ID starting with '" SPIFFE_SCHEME
		   "'");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];

		KMS_ENSURE(c > 0x20 && c != 0x7f, err, KMS_ERR_INVALID,
			   "principal has a space or control character at "
			   "position %zu",
			   i + 1);
		/* '*' is only a grant's trailing wildcard, never part of an ID.
		 */
		KMS_ENSURE(c != '*', err, KMS_ERR_INVALID,
			   "principal has '*' at position %zu; a wildcard may "
			   "only end a grant's principal",
			   i + 1);
	}
	for (td_len = 0; SPIFFE_SCHEME_LEN + td_len < len &&
			 p[SPIFFE_SCHEME_LEN + td_len] != '/';
	     td_len++)
		;
	KMS_ENSURE(td_len > 0, err, KMS_ERR_INVALID,
		   "principal has an empty SPIFFE trust domain");
	return KMS_OK;
}

int kms_principal_check(const char *principal, kms_err *err)
{
	KMS_ENSURE(principal != NULL, err, KMS_ERR_INVALID,
		   "principal is missing");
	return principal_check_n(
	    principal, strnlen(principal, KMS_PRINCIPAL_MAX + 1), err);
}

/*
 * A grant principal is "*" (everyone), an exact SPIFFE ID, or a SPIFFE ID
 * prefix ending in '*'. A prefix must reach past the trust domain
 * ("spiffe://prod/ns/" then '*', not "spiffe://prod" then '*'): otherwise
 * it would also match "spiffe://prod.attacker.example/...", a trust domain,
 * and so an issuing authority, that the policy author never meant to trust.
 */
static int grant_principal_check(const char *p, kms_err *err)
{
	size_t len = strnlen(p, KMS_PRINCIPAL_MAX + 1);
	const char *star = memchr(p, '*', len);

	if (len == 1 && p[0] == '*')
		return KMS_OK;
	if (star == NULL)
		return principal_check_n(p, len, err);
	KMS_ENSURE(star == p + len - 1, err, KMS_ERR_INVALID,
		   "principal has '*' at position %zu; a wildcard may only "
		   "end the principal",
		   (size_t)(star - p) + 1);
	KMS_TRY(principal_check_n(p, len - 1, err));
	KMS_ENSURE(memchr(p + SPIFFE_SCHEME_LEN, '/',
			  len - 1 - SPIFFE_SCHEME_LEN) != NULL,
		   err, KMS_ERR_INVALID,
		   "a wildcard principal must include the whole trust domain "
		   "and a '/' before the '*'");
	return KMS_OK;
}

static int grant_check(const Kms__V1__Grant *g, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	enum kms_op seen[OP_COUNT];

	KMS_ENSURE(g != NULL, err, KMS_ERR_INVALID, "missing");
	KMS_ENSURE(g->principal != NULL, err, KMS_ERR_INVALID,
		   "principal is empty");
	KMS_TRY(grant_principal_check(g->principal, err));
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

int kms_policy_check(const Kms__V1__KeyPolicy *policy, kms_err *err)
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

		if (grant_check(policy->grants[i], err) != KMS_OK) {
			snprintf(prefix, sizeof(prefix), "grant %zu", i + 1);
			return kms_err_prefix(err, prefix);
		}
	}
	return KMS_OK;
}

static int grant_matches(const char *gp, const char *principal)
{
	size_t len = strlen(gp);

	if (len > 0 && gp[len - 1] == '*')
		return strncmp(principal, gp, len - 1) == 0;
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
	/* An identity that is not a SPIFFE ID matches no grant, not even "*".
	 */
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
