/* test_pki.c - issues test certificates with hand-picked SANs (embedded NULs, DNS or e-mail names that look like SPIFFE IDs) that ops/pki deliberately cannot make. */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "kms/alloc.h"
#include "test_pki.h"

EVP_PKEY *kms_test_read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	ck_assert_msg(k != NULL, "cannot read the key %s", path);
	return k;
}

X509 *kms_test_read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *c;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	c = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	ck_assert_msg(c != NULL, "cannot read the certificate %s", path);
	return c;
}

static GENERAL_NAME *make_name(const kms_test_san *s)
{
	GENERAL_NAME *g = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5;
	size_t len = s->len != 0 ? s->len : strlen(s->value);

	ck_assert_ptr_nonnull(g);
	if (s->type == KMS_TEST_SAN_IP) {
		unsigned char ip[4];
		ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();

		ck_assert_int_eq(inet_pton(AF_INET, s->value, ip), 1);
		ck_assert_int_eq(ASN1_OCTET_STRING_set(os, ip, sizeof(ip)), 1);
		GENERAL_NAME_set0_value(g, GEN_IPADD, os);
		return g;
	}
	/* ASN1_STRING_set takes the length as given: a NUL stays in. */
	ia5 = ASN1_IA5STRING_new();
	ck_assert_int_eq(ASN1_STRING_set(ia5, s->value, (int)len), 1);
	GENERAL_NAME_set0_value(g,
				s->type == KMS_TEST_SAN_URI   ? GEN_URI
				: s->type == KMS_TEST_SAN_DNS ? GEN_DNS
							      : GEN_EMAIL,
				ia5);
	return g;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	ck_assert_msg(ext != NULL, "extension %d=%s", nid, value);
	ck_assert_int_eq(X509_add_ext(cert, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

static void write_pem(const char *path, int is_key, void *obj)
{
	FILE *f;

	if (is_key) {
		int fd;

		umask(077);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		ck_assert_int_ge(fd, 0);
		f = fdopen(fd, "w");
	} else {
		f = fopen(path, "w");
	}
	ck_assert_msg(f != NULL, "cannot write %s", path);
	ck_assert_int_eq(is_key ? PEM_write_PrivateKey(f, obj, NULL, NULL, 0, NULL, NULL)
				: PEM_write_X509(f, obj),
			 1);
	ck_assert_int_eq(fclose(f), 0);
}

void kms_test_issue_cert(const char *ca_pem, const char *ca_key, const char *out_pem,
			 const char *out_key, const kms_test_san *sans, size_t n, int hours)
{
	EVP_PKEY *ca_pkey = kms_test_read_key(ca_key), *key = EVP_EC_gen("P-256");
	X509 *ca = kms_test_read_cert(ca_pem), *cert = X509_new();
	X509_NAME *subject = X509_NAME_new();
	unsigned char serial[16];
	BIGNUM *bn;

	ck_assert_ptr_nonnull(key);
	ck_assert_ptr_nonnull(cert);
	ck_assert_int_eq(X509_set_version(cert, 2), 1);
	ck_assert_int_eq(RAND_bytes(serial, sizeof(serial)), 1);
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	ck_assert_ptr_nonnull(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)));
	BN_free(bn);
	ck_assert_int_eq(X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
						    (const unsigned char *)"kmsd test client", -1,
						    -1, 0),
			 1);
	ck_assert_int_eq(X509_set_subject_name(cert, subject), 1);
	ck_assert_int_eq(X509_set_issuer_name(cert, X509_get_subject_name(ca)), 1);
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notBefore(cert), -3600));
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notAfter(cert), (long)hours * 3600));
	ck_assert_int_eq(X509_set_pubkey(cert, key), 1);
	add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE");
	add_ext(cert, ca, NID_key_usage, "critical,digitalSignature");
	add_ext(cert, ca, NID_ext_key_usage, "clientAuth,serverAuth");
	add_ext(cert, ca, NID_authority_key_identifier, "keyid");
	if (n > 0) {
		GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();

		for (size_t i = 0; i < n; i++)
			ck_assert_int_gt(sk_GENERAL_NAME_push(names, make_name(&sans[i])), 0);
		ck_assert_int_eq(X509_add1_ext_i2d(cert, NID_subject_alt_name, names, 0, 0), 1);
		GENERAL_NAMES_free(names);
	}
	ck_assert_int_gt(X509_sign(cert, ca_pkey, EVP_sha256()), 0);
	write_pem(out_key, 1, key);
	write_pem(out_pem, 0, cert);
	X509_NAME_free(subject);
	X509_free(cert);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(ca_pkey);
}

void kms_test_make_ca(const char *out_pem, const char *out_key, const char *cn)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *cert = X509_new();
	X509_NAME *name = X509_NAME_new();
	unsigned char serial[16];
	BIGNUM *bn;

	ck_assert_ptr_nonnull(key);
	ck_assert_int_eq(X509_set_version(cert, 2), 1);
	ck_assert_int_eq(RAND_bytes(serial, sizeof(serial)), 1);
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	ck_assert_ptr_nonnull(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)));
	BN_free(bn);
	ck_assert_int_eq(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						    (const unsigned char *)cn, -1, -1, 0),
			 1);
	ck_assert_int_eq(X509_set_subject_name(cert, name), 1);
	ck_assert_int_eq(X509_set_issuer_name(cert, name), 1);
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notBefore(cert), -3600));
	ck_assert_ptr_nonnull(X509_gmtime_adj(X509_getm_notAfter(cert), 24L * 3600));
	ck_assert_int_eq(X509_set_pubkey(cert, key), 1);
	add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
	add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
	add_ext(cert, cert, NID_subject_key_identifier, "hash");
	ck_assert_int_gt(X509_sign(cert, key, EVP_sha256()), 0);
	write_pem(out_key, 1, key);
	write_pem(out_pem, 0, cert);
	X509_NAME_free(name);
	X509_free(cert);
	EVP_PKEY_free(key);
}

char *kms_test_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	char *buf = kms_malloc(65536);
	size_t n;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	ck_assert_ptr_nonnull(buf);
	n = fread(buf, 1, 65535, f);
	fclose(f);
	buf[n] = '\0';
	*len = n;
	return buf;
}

char *kms_test_ca_pem(const char *cn, size_t *len)
{
	char dir[] = "/tmp/kms-test-ca-XXXXXX", pem[64], key[64];
	char *text;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(pem, sizeof(pem), "%s/ca.pem", dir);
	snprintf(key, sizeof(key), "%s/ca.key", dir);
	kms_test_make_ca(pem, key, cn);
	text = kms_test_read_file(pem, len);
	unlink(pem);
	unlink(key);
	rmdir(dir);
	return text;
}

void kms_test_issue_node_cert(const char *pki, const char *td, uint64_t id, const char *who)
{
	char uri[300], ca[PATH_MAX], ca_key[PATH_MAX], pem[PATH_MAX], key[PATH_MAX];
	kms_test_san san = {KMS_TEST_SAN_URI, uri, 0};

	ck_assert_int_lt(snprintf(uri, sizeof(uri), "%s/kmsd/node/%llu", td,
				  (unsigned long long)id),
			 (int)sizeof(uri));
	ck_assert_int_lt(snprintf(ca, sizeof(ca), "%s/node-ca.pem", pki), (int)sizeof(ca));
	ck_assert_int_lt(snprintf(ca_key, sizeof(ca_key), "%s/node-ca.key", pki),
			 (int)sizeof(ca_key));
	ck_assert_int_lt(snprintf(pem, sizeof(pem), "%s/%s.pem", pki, who), (int)sizeof(pem));
	ck_assert_int_lt(snprintf(key, sizeof(key), "%s/%s.key", pki, who), (int)sizeof(key));
	kms_test_issue_cert(ca, ca_key, pem, key, &san, 1, 1);
}
