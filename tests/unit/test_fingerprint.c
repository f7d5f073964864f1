/* test_fingerprint.c - Check suite for the RSA public-key fingerprint and hex (fingerprint.c), against OpenSSL's own DER encoding. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kms/fingerprint.h"
#include "check_run.h"

/* SHA-256 of OpenSSL's DER SubjectPublicKeyInfo of k: what `openssl pkey
 * -pubin -outform DER | sha256sum` prints. */
static void reference(EVP_PKEY *k, uint8_t out[KMS_SHA256_LEN])
{
	unsigned char *der = NULL;
	unsigned int n = 0;
	int len = i2d_PUBKEY(k, &der);

	ck_assert_int_gt(len, 0);
	ck_assert_int_eq(EVP_Digest(der, (size_t)len, out, &n, EVP_sha256(), NULL), 1);
	OPENSSL_free(der);
}

static void check_key(unsigned bits)
{
	EVP_PKEY *k = EVP_RSA_gen(bits);
	BIGNUM *n = NULL, *e = NULL;
	uint8_t nb[1024 + 1], eb[8], want[KMS_SHA256_LEN], got[KMS_SHA256_LEN];
	size_t nl, el;
	kms_err err = {0};

	ck_assert_ptr_nonnull(k);
	ck_assert_int_eq(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n), 1);
	ck_assert_int_eq(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, &e), 1);
	nl = (size_t)BN_bn2bin(n, nb);
	el = (size_t)BN_bn2bin(e, eb);
	reference(k, want);
	ck_assert_int_eq(kms_rsa_public_sha256(nb, nl, eb, el, got, &err), KMS_OK);
	ck_assert_mem_eq(got, want, KMS_SHA256_LEN);
	/* A PKCS#11 module may hand the modulus over with a leading zero byte. */
	memmove(nb + 1, nb, nl);
	nb[0] = 0;
	ck_assert_int_eq(kms_rsa_public_sha256(nb, nl + 1, eb, el, got, &err), KMS_OK);
	ck_assert_mem_eq(got, want, KMS_SHA256_LEN);
	/* Another key, another fingerprint. */
	nb[nl] ^= 2;
	ck_assert_int_eq(kms_rsa_public_sha256(nb, nl + 1, eb, el, got, &err), KMS_OK);
	ck_assert(memcmp(got, want, KMS_SHA256_LEN) != 0);
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(k);
}

START_TEST(test_matches_openssl)
{
	check_key(3072); /* the transport key size, and the long DER length form */
	check_key(1024); /* a two-byte length, the short one for the exponent */
}
END_TEST

START_TEST(test_refusals)
{
	uint8_t big[1100] = {1}, e[9] = {1, 0, 1}, out[KMS_SHA256_LEN];
	kms_err err = {0};

	ck_assert_int_eq(kms_rsa_public_sha256(NULL, 0, e, 3, out, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_rsa_public_sha256(big, sizeof(big), e, 3, out, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_rsa_public_sha256(big, 256, e, 0, out, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_rsa_public_sha256(big, 256, e, 9, out, &err), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "exponent"));
}
END_TEST

START_TEST(test_hex)
{
	static const uint8_t bytes[] = {0x00, 0x9f, 0xa0, 0xff};
	uint8_t back[4];
	char hex[9];
	kms_err err = {0};

	kms_hex_encode(bytes, sizeof(bytes), hex);
	ck_assert_str_eq(hex, "009fa0ff");
	ck_assert_int_eq(kms_hex_decode("009FA0ff", back, 4, "x", &err), KMS_OK);
	ck_assert_mem_eq(back, bytes, 4);
	ck_assert_int_eq(kms_hex_decode("009fa0f", back, 4, "fp", &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "fp must be 8 hex digits");
	ck_assert_int_eq(kms_hex_decode("009fa0ff0", back, 4, "fp", &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_hex_decode("009fa0fg", back, 4, "fp", &err), KMS_ERR_INVALID);
	ck_assert_str_eq(err.msg, "fp has a character that is not a hex digit at position 8");
	ck_assert_int_eq(kms_hex_decode(NULL, back, 4, "fp", &err), KMS_ERR_INVALID);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("fingerprint");
	TCase *tc = tcase_create("fingerprint");
	SRunner *sr;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_matches_openssl);
	tcase_add_test(tc, test_refusals);
	tcase_add_test(tc, test_hex);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
