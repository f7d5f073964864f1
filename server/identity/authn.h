/* authn.h - who is calling: a verified TLS peer certificate turned into a principal (X509-SVID), with node identities kept apart from service identities and from the nodes of linked regions. */
#ifndef KMS_AUTHN_H
#define KMS_AUTHN_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"
#include "kms/region.h"
#include "kms/spiffe.h"

enum kms_peer_kind {
	KMS_PEER_NONE = 0,
	KMS_PEER_SERVICE = 1, /* a service or an operator: any path but /kmsd/..., client CA */
	KMS_PEER_NODE = 2,    /* a kmsd node: /kmsd/node/<id>, from the node CA only */
	/* A node of a linked region (another kmsd cluster): /kmsd/node/<id>
	 * in that region's trust domain, from that region's node CA only. */
	KMS_PEER_REGION = 3,
};

typedef struct kms_peer {
	enum kms_peer_kind kind;
	kms_spiffe_id id;
	uint64_t node_id; /* KMS_PEER_NODE and KMS_PEER_REGION */
	char region[KMS_REGION_NAME_MAX + 1]; /* KMS_PEER_REGION only; "" otherwise */
} kms_peer;

typedef struct kms_authn kms_authn;

/*
 * trust_domain: the bare name every accepted ID must be in. node_ca_file:
 * the PEM certificate(s) of the node CA. KMS_ERR_CONFIG when the file holds
 * no certificate. *out is thread-safe; free with kms_authn_free.
 */
int kms_authn_new(const char *trust_domain, const char *node_ca_file, kms_authn **out,
		  kms_err *err);
void kms_authn_free(kms_authn *a);

/*
 * Reads node_ca_file again (certificate rotation). On failure the old node
 * CA stays in force. Answers for certificates seen before are forgotten.
 */
int kms_authn_reload(kms_authn *a, const char *node_ca_file, kms_err *err);

/* A linked region as authn needs it (the link itself is a quorum-approved
 * root operation, kept elsewhere). */
typedef struct kms_authn_region {
	const char *name;	  /* kms_region_name_check */
	const char *trust_domain; /* its nodes' trust domain (kms_trust_domain_parse) */
	const char *node_ca_pem;  /* its node CA: PEM certificate(s), node_ca_pem_len bytes */
	size_t node_ca_pem_len;
} kms_authn_region;

/*
 * Puts the n linked regions r in force in place of the ones before, as a
 * whole (n = 0: no region is linked). Everything is copied. KMS_ERR_INVALID
 * naming the region for a bad name, a bad trust domain, a PEM that holds no
 * certificate, a name listed twice, or a node CA that is this cluster's own
 * or another region's (its certificates could not be told apart); the old
 * set stays in force then. Answers for certificates seen before are
 * forgotten.
 */
int kms_authn_set_regions(kms_authn *a, const kms_authn_region *r, size_t n, kms_err *err);

/*
 * Identifies the peer of a TLS connection from its leaf certificate (PEM,
 * len bytes), which the handshake has already verified against the
 * client CA, the node CA and the linked regions' node CAs together. In
 * order:
 *  - its X509-SVID (kms_svid_from_x509): KMS_ERR_UNAUTHENTICATED naming the
 *    rule (no URI SAN, several, a NUL byte, not spiffe://, a bad ID);
 *  - a certificate this cluster's node CA did not sign, but a linked
 *    region's node CA did, is KMS_PEER_REGION when it names
 *    spiffe://<that region's trust domain>/kmsd/node/<id>, else
 *    KMS_ERR_PERMISSION naming the region;
 *  - a certificate no CA of a linked region signed that claims a path
 *    under /kmsd/ in a linked region's trust domain (not this cluster's):
 *    KMS_ERR_PERMISSION naming the region;
 *  - in this cluster's trust domain: else KMS_ERR_UNAUTHENTICATED;
 *  - a path under /kmsd/ only from a certificate the node CA signed, and a
 *    node-CA certificate only for /kmsd/node/<id>: else KMS_ERR_PERMISSION.
 * Answers are cached per thread by certificate, so the common case is a
 * memcmp. Thread-safe.
 */
int kms_authn_identify(kms_authn *a, const char *pem, size_t len, kms_peer *out, kms_err *err);

#endif
