/* region_name.c - the rules of a region name. */
#include <string.h>

#include "kms/region.h"

int kms_region_name_check(const char *name, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	size_t n;

	KMS_ENSURE(name != NULL && name[0] != '\0', err, KMS_ERR_INVALID, "a region needs a name");
	n = strlen(name);
	KMS_ENSURE(n <= KMS_REGION_NAME_MAX, err, KMS_ERR_INVALID,
		   "region name '%s' is longer than %d bytes", kms_quote(name, q),
		   KMS_REGION_NAME_MAX);
	KMS_ENSURE(name[0] >= 'a' && name[0] <= 'z' && name[n - 1] != '-', err, KMS_ERR_INVALID,
		   "region name '%s' must start with a-z and not end with '-'", kms_quote(name, q));
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		KMS_ENSURE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-', err,
			   KMS_ERR_INVALID, "region name '%s' may hold only a-z, 0-9 and '-'",
			   kms_quote(name, q));
	}
	return KMS_OK;
}
