/* authn.h - who is calling: a verified TLS peer certificate turned into a principal (X509-SVID), with node identities kept apart from service identities. */
#ifndef KMS_AUTHN_H
#define KMS_AUTHN_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"
#include "kms/spiffe.h"

enum kms_peer_kind {
	KMS_PEER_NONE = 0,
	KMS_PEER_SERVICE = 1, /* a service or an operator: any path but /kmsd/..., client CA */
	KMS_PEER_NODE = 2,    /* a kmsd node: /kmsd/node/<id>, from the node CA only */
};

typedef struct kms_peer {
	enum kms_peer_kind kind;
	kms_spiffe_id id;
	uint64_t node_id; /* KMS_PEER_NODE only */
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

/*
 * Identifies the peer of a TLS connection from its leaf certificate (PEM,
 * len bytes), which the handshake has already verified against the
 * client CA and the node CA together. In order:
 *  - its X509-SVID (kms_svid_from_x509): KMS_ERR_UNAUTHENTICATED naming the
 *    rule (no URI SAN, several, a NUL byte, not spiffe://, a bad ID);
 *  - in the trust domain: else KMS_ERR_UNAUTHENTICATED;
 *  - a path under /kmsd/ only from a certificate the node CA signed, and a
 *    node-CA certificate only for /kmsd/node/<id>: else KMS_ERR_PERMISSION.
 * Answers are cached per thread by certificate, so the common case is a
 * memcmp. Thread-safe.
 */
int kms_authn_identify(kms_authn *a, const char *pem, size_t len, kms_peer *out, kms_err *err);

#endif
