/* spiffe.h - the one SPIFFE ID parser of kmsd (SPIFFE ID standard) and the identity of an X.509 certificate (X509-SVID). */
#ifndef KMS_SPIFFE_H
#define KMS_SPIFFE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "kms/error.h"

#define KMS_SPIFFE_SCHEME "spiffe://"
/* SPIFFE ID standard, section 2.3: an ID is at most 2048 bytes. */
#define KMS_SPIFFE_ID_MAX 2048
/* Section 2.1: a trust domain name is at most 255 bytes. */
#define KMS_TRUST_DOMAIN_MAX 255
/* Paths under /kmsd/ are reserved for kmsd nodes; only the node CA issues them. */
#define KMS_NODE_PATH_PREFIX "/kmsd/"
#define KMS_NODE_PATH "/kmsd/node/"

/*
 * A parsed SPIFFE ID. id is the whole ID as text; the trust domain is
 * id[9 .. 9+td_len) and the path starts at id + path_off (it is "" for an ID
 * that names only a trust domain).
 */
typedef struct kms_spiffe_id {
	char id[KMS_SPIFFE_ID_MAX + 1];
	size_t len;
	size_t td_len;
	size_t path_off;
} kms_spiffe_id;

/*
 * Parses len bytes of s (not NUL-terminated; a NUL byte inside is an error)
 * as a SPIFFE ID with the rules of the SPIFFE ID standard (section 2):
 * scheme "spiffe://" in lower case; a trust domain of 1..255 characters of
 * [a-z0-9.-_]; a path of segments "/seg" where each segment is 1 or more of
 * [A-Za-z0-9.-_], never "." or "..", no percent-encoding, no trailing "/";
 * no query, fragment, port or user info; at most 2048 bytes in all.
 * need_path: an ID with an empty path (a trust domain alone) is refused.
 * KMS_OK, or KMS_ERR_INVALID with a message naming the rule broken (the
 * message quotes at most KMS_QUOTE_MAX bytes of s, made printable).
 */
int kms_spiffe_parse(const char *s, size_t len, int need_path, kms_spiffe_id *out,
		     kms_err *err);

/* The same for a NUL-terminated string. */
int kms_spiffe_parse_str(const char *s, int need_path, kms_spiffe_id *out, kms_err *err);

/* The path part ("/ns/a/sa/b", or ""). */
const char *kms_spiffe_path(const kms_spiffe_id *id);

/* True when id's trust domain is td (a bare name such as "kmsd.dev"). */
int kms_spiffe_in_trust_domain(const kms_spiffe_id *id, const char *td);

/*
 * Checks a trust domain name as [authz] trust_domain takes it: the bare
 * name ("kmsd.dev"), or "spiffe://kmsd.dev" which is reduced to the bare
 * name in out (cap bytes). KMS_OK or KMS_ERR_INVALID.
 */
int kms_trust_domain_parse(const char *s, char *out, size_t cap, kms_err *err);

/* True when the path is reserved for kmsd nodes (starts with /kmsd/). */
int kms_spiffe_is_node_path(const kms_spiffe_id *id);

/*
 * The node id of "spiffe://<td>/kmsd/node/<id>": decimal, no sign, no
 * leading zero, 1..2^64-1. KMS_OK with *node, or KMS_ERR_INVALID.
 */
int kms_spiffe_node_id(const kms_spiffe_id *id, uint64_t *node);

/* Writes "spiffe://<td>/kmsd/node/<id>" into out. KMS_ERR_INVALID if it
 * does not fit or td or id is not valid. */
int kms_spiffe_node_format(const char *td, uint64_t node, kms_spiffe_id *out, kms_err *err);

/*
 * The identity of a certificate by the X509-SVID rules (section 2): the
 * one URI SAN, which must be a valid SPIFFE ID with a path. DNS, e-mail and
 * IP SANs never count. KMS_ERR_UNAUTHENTICATED with a message that says
 * which rule failed: no URI SAN, several URI SANs, a NUL byte, not
 * spiffe://, or the parse error. The certificate itself is not verified
 * here: the TLS handshake did that.
 */
int kms_svid_from_x509(X509 *cert, kms_spiffe_id *out, kms_err *err);

/* The same for one PEM certificate of len bytes. A PEM that does not parse
 * is KMS_ERR_UNAUTHENTICATED too. */
int kms_svid_from_pem(const char *pem, size_t len, kms_spiffe_id *out, kms_err *err);

#endif
