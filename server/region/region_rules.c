/* region_rules.c - the rules of region names and of link-region operations (issue #7). */
#include <stdint.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kms/hostport.h"
#include "kms/region.h"
#include "kms/spiffe.h"

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

const char *kms_region_role_name(Kms__V1__RegionRole role)
{
	switch (role) {
	case KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY:
		return "primary";
	case KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY:
		return "secondary";
	default:
		return "unspecified";
	}
}

const char *kms_region_mode_name(Kms__V1__RegionMode mode)
{
	switch (mode) {
	case KMS__V1__REGION_MODE__REGION_MODE_ASYNC:
		return "async";
	case KMS__V1__REGION_MODE__REGION_MODE_SYNC:
		return "sync";
	default:
		return "unspecified";
	}
}

/*
 * The number of certificates in pem, or -1 when a block does not parse:
 * as strict as the nodes' authn and gRPC's roots, so that no approved link
 * is one the nodes then refuse.
 */
static int count_certificates(const uint8_t *pem, size_t len)
{
	BIO *bio = len <= INT32_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
	unsigned long e;
	X509 *x;
	int n = 0;

	if (bio == NULL)
		return -1;
	ERR_clear_error();
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		X509_free(x);
		n++;
	}
	BIO_free(bio);
	/* The loop ends on "no more PEM"; any other error is a bad block. */
	e = ERR_peek_last_error();
	if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
		n = -1;
	ERR_clear_error();
	return n;
}

int kms_link_region_check(const Kms__V1__LinkRegionOperation *op, kms_err *err)
{
	char td[KMS_SPIFFE_ID_MAX + 1];
	kms_err sub;
	int n;

	KMS_ENSURE(op != NULL, err, KMS_ERR_INVALID, "link-region is empty");
	if (kms_region_name_check(op->peer_region, &sub) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID, "link-region: the peer region: %s", sub.msg);
	KMS_ENSURE(op->role == KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY ||
			   op->role == KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY,
		   err, KMS_ERR_INVALID, "link-region needs this region's role: primary or secondary");
	KMS_ENSURE(op->mode == KMS__V1__REGION_MODE__REGION_MODE_ASYNC ||
			   op->mode == KMS__V1__REGION_MODE__REGION_MODE_SYNC,
		   err, KMS_ERR_INVALID, "link-region mode %d is neither async nor sync", op->mode);
	KMS_ENSURE(op->n_peer_endpoints >= 1 && op->n_peer_endpoints <= KMS_REGION_ENDPOINTS_MAX,
		   err, KMS_ERR_INVALID, "link-region needs 1 to %d peer endpoints, not %zu",
		   KMS_REGION_ENDPOINTS_MAX, op->n_peer_endpoints);
	for (size_t i = 0; i < op->n_peer_endpoints; i++)
		KMS_TRY(kms_hostport_check(op->peer_endpoints[i], "a link-region peer endpoint",
					   err));
	if (kms_trust_domain_parse(op->peer_trust_domain != NULL ? op->peer_trust_domain : "", td,
				   sizeof(td), &sub) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID, "link-region: the peer trust domain: %s",
				sub.msg);
	KMS_ENSURE(op->peer_node_ca_pem.len > 0 && op->peer_node_ca_pem.len <= KMS_REGION_CA_PEM_MAX,
		   err, KMS_ERR_INVALID, "link-region needs the peer's node CA, 1 to %d bytes of PEM",
		   KMS_REGION_CA_PEM_MAX);
	n = count_certificates(op->peer_node_ca_pem.data, op->peer_node_ca_pem.len);
	KMS_ENSURE(n != 0, err, KMS_ERR_INVALID,
		   "link-region: the peer node CA holds no PEM certificate");
	KMS_ENSURE(n > 0, err, KMS_ERR_INVALID,
		   "link-region: the peer node CA holds a certificate that does not parse");
	return KMS_OK;
}
