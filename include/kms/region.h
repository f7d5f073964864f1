/* region.h - region names (issue #7): the [region] name of a cluster, the home of its multi-region keys. */
#ifndef KMS_REGION_H
#define KMS_REGION_H

#include "kms/error.h"
#include "kms/v1/state.pb-c.h"

#define KMS_REGION_NAME_MAX 63
/* What a node without [region] name is part of. */
#define KMS_REGION_DEFAULT "default"

/*
 * A region name: 1..63 of [a-z0-9-], starting with a letter and not ending
 * with '-' (a DNS label, so it can name hosts and SPIFFE paths as it is).
 * KMS_ERR_INVALID naming the rule.
 */
int kms_region_name_check(const char *name, kms_err *err);

/* Links a region keeps at once, and the peer endpoints one link names. */
#define KMS_REGION_LINKS_MAX 8
#define KMS_REGION_ENDPOINTS_MAX 7
/* Keys one pull answers and one RegionApply carries, and the aliases of
 * each key that travel with it (more stay behind, counted as conflicts). */
#define KMS_REGION_APPLY_MAX 256
#define KMS_REGION_ALIASES_PER_KEY 64
/* The largest peer node CA a link carries (a few certificates). */
#define KMS_REGION_CA_PEM_MAX 16384

/*
 * The rules of a link-region operation: a valid peer region name, a role
 * (primary or secondary) and a mode, 1..7 peer endpoints (host:port), a
 * valid trust domain, and a PEM holding 1 or more certificates, at most
 * 16 KiB. KMS_ERR_INVALID naming the rule.
 */
int kms_link_region_check(const Kms__V1__LinkRegionOperation *op, kms_err *err);
/* "primary", "secondary", "async", "sync" ("unspecified" otherwise). */
const char *kms_region_role_name(Kms__V1__RegionRole role);
const char *kms_region_mode_name(Kms__V1__RegionMode mode);

#endif
