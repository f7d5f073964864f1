/* region.h - region names (issue #7): the [region] name of a cluster, the home of its multi-region keys. */
#ifndef KMS_REGION_H
#define KMS_REGION_H

#include "kms/error.h"

#define KMS_REGION_NAME_MAX 63
/* What a node without [region] name is part of. */
#define KMS_REGION_DEFAULT "default"

/*
 * A region name: 1..63 of [a-z0-9-], starting with a letter and not ending
 * with '-' (a DNS label, so it can name hosts and SPIFFE paths as it is).
 * KMS_ERR_INVALID naming the rule.
 */
int kms_region_name_check(const char *name, kms_err *err);

#endif
