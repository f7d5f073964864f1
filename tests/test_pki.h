/* test_pki.h - certificates with arbitrary subjectAltNames, made at test time with OpenSSL, for identity tests. */
#ifndef KMS_TEST_PKI_H
#define KMS_TEST_PKI_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

enum kms_test_san_type {
	KMS_TEST_SAN_URI,
	KMS_TEST_SAN_DNS,
	KMS_TEST_SAN_EMAIL,
	KMS_TEST_SAN_IP, /* value is a dotted IPv4 address */
};

/* One subjectAltName entry. len counts the value's bytes, so that a value
 * may hold a NUL; 0 means strlen(value). */
typedef struct kms_test_san {
	enum kms_test_san_type type;
	const char *value;
	size_t len;
} kms_test_san;

/*
 * Issues a client certificate: a fresh EC P-256 key in out_key (PEM, 0600)
 * and a certificate in out_pem signed by ca_pem/ca_key, with exactly the n
 * SANs given (none if n is 0), extendedKeyUsage clientAuth and serverAuth,
 * valid from an hour ago for `hours` hours. Fails the running Check test on
 * any OpenSSL error.
 */
void kms_test_issue_cert(const char *ca_pem, const char *ca_key, const char *out_pem,
			 const char *out_key, const kms_test_san *sans, size_t n, int hours);

/*
 * A node certificate for node id of trust domain td ("spiffe://example.org")
 * from pki/node-ca.pem, with its key in a file: pki/who.pem, pki/who.key.
 */
void kms_test_issue_node_cert(const char *pki, const char *td, uint64_t id, const char *who);

/* A self-signed EC P-256 CA (pathlen 0) in out_pem/out_key, named cn. */
void kms_test_make_ca(const char *out_pem, const char *out_key, const char *cn);

/* A PEM private key or certificate from a file; fails the running test
 * when it cannot be read. The caller frees it. */
EVP_PKEY *kms_test_read_key(const char *path);
X509 *kms_test_read_cert(const char *path);

/* Reads a whole (small) file into a kms_malloc'd, NUL-terminated string;
 * *len gets its length. Fails the running test on error. */
char *kms_test_read_file(const char *path, size_t *len);

/* A new CA's certificate as PEM text (kms_malloc'd, *len its length),
 * made in a temporary directory that is removed again. */
char *kms_test_ca_pem(const char *cn, size_t *len);

#endif
