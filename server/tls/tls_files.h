/* tls_files.h - the node's TLS files (certificate chain, client CA, node CA, client CRL) read and checked as one set, their change stamps, and the CRL check of a client certificate. */
#ifndef KMS_TLS_FILES_H
#define KMS_TLS_FILES_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/types.h>
#include <openssl/x509.h>

#include "kms/config.h"
#include "kms/error.h"

/*
 * One consistent set of the TLS files a node serves with. Everything is
 * owned by the set (kms_tls_files_free). Nothing here is secret: the node's
 * private key stays in the HSM and only its pkcs11: URI is configured.
 */
typedef struct kms_tls_files {
	char *cert_chain; /* PEM of [grpc] cert_file */
	char *client_ca;  /* PEM of [grpc] ca_file */
	char *node_ca;    /* PEM of [cluster] node_ca_file */
	X509_CRL *crl;    /* [grpc] crl_file, NULL when none is configured */
	/* For the log: "certificate serial S (not after T); CRL of N entries
	 * (next update U)". */
	char summary[320];
} kms_tls_files;

/*
 * Reads the four files of cfg and checks them together, so that a set that
 * passes can be put in force as a whole:
 *  - each CA file holds at least one certificate, and nothing else that
 *    fails to parse;
 *  - cert_file's first certificate matches node_key (the key in the HSM),
 *    names spiffe://<trust domain>/kmsd/node/<node id>, chains to the node
 *    CA and is valid now;
 *  - crl_file, when set, holds one CRL, signed by a certificate of the
 *    client CA, whose nextUpdate has not passed.
 * KMS_ERR_CONFIG naming the file and the rule; *out untouched then.
 */
int kms_tls_files_load(const kms_config *cfg, EVP_PKEY *node_key, kms_tls_files *out,
		       kms_err *err);
void kms_tls_files_free(kms_tls_files *f);

/*
 * Every certificate of a PEM text of len bytes, as gRPC and OpenSSL will
 * read it: a block that does not parse, or no certificate at all, is code
 * with a message naming what ("node CA file /etc/kmsd/node-ca.pem"). *out
 * (kms_tls_parse_certs's stack, the caller's to free) unless out is NULL.
 */
int kms_tls_parse_certs(const char *pem, size_t len, const char *what, int code,
			STACK_OF(X509) **out, kms_err *err);

/* What the poller compares: the identity and change time of each file (a
 * file renamed over, rewritten in place or replaced behind a symlink all
 * change it). */
typedef struct kms_tls_stamp {
	struct {
		dev_t dev;
		ino_t ino;
		off_t size;
		struct timespec mtime, ctime;
		int missing;
	} f[4];
} kms_tls_stamp;

void kms_tls_files_stamp(const kms_config *cfg, kms_tls_stamp *out);
int kms_tls_stamp_equal(const kms_tls_stamp *a, const kms_tls_stamp *b);

/*
 * The revocation check of a client certificate that the TLS handshake has
 * verified (leaf_pem, len bytes). crl NULL: nothing to check, KMS_OK. A
 * certificate whose issuer is the CRL's issuer and whose serial the CRL
 * lists is KMS_ERR_UNAUTHENTICATED ("revoked"); so is every such
 * certificate once the CRL's nextUpdate has passed (fail closed: a stale
 * CRL cannot vouch for anything). Certificates of other issuers (the node
 * CA) pass. Thread-safe for a CRL nobody modifies.
 */
int kms_tls_crl_check(X509_CRL *crl, const char *leaf_pem, size_t len, kms_err *err);

#endif
