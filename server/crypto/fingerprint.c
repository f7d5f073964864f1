/* fingerprint.c - SHA-256 of an RSA SubjectPublicKeyInfo (DER written here), and hex. */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "kms/buf.h"
#include "kms/fingerprint.h"

/* The largest modulus a transport key may have (hsm.c allows 8192 bits). */
#define MODULUS_MAX_BYTES 1024
#define EXPONENT_MAX_BYTES 8
/* SPKI of the largest key: a few dozen bytes of DER around n and e. */
#define SPKI_MAX (MODULUS_MAX_BYTES + EXPONENT_MAX_BYTES + 64)

/* AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL } (RFC 8017 A.1). */
static const uint8_t rsa_algorithm[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
					0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};

/* Bytes a DER length takes (X.690 8.1.3). */
static size_t len_size(size_t n)
{
	return n < 0x80 ? 1 : n < 0x100 ? 2 : 3;
}

static int put_header(kms_writer *w, uint8_t tag, size_t n)
{
	KMS_TRY(kms_writer_u8(w, tag));
	if (n >= 0x100) {
		KMS_TRY(kms_writer_u8(w, 0x82));
		KMS_TRY(kms_writer_u8(w, (uint8_t)(n >> 8)));
	} else if (n >= 0x80) {
		KMS_TRY(kms_writer_u8(w, 0x81));
	}
	return kms_writer_u8(w, (uint8_t)n);
}

/* A positive INTEGER: no leading zero bytes, one 0x00 if the top bit is set. */
static size_t int_body(const uint8_t **p, size_t *n)
{
	while (*n > 1 && (*p)[0] == 0) {
		(*p)++;
		(*n)--;
	}
	return *n + ((*p)[0] & 0x80 ? 1 : 0);
}

static int put_int(kms_writer *w, const uint8_t *p, size_t n, size_t body)
{
	KMS_TRY(put_header(w, 0x02, body));
	if (body > n)
		KMS_TRY(kms_writer_u8(w, 0));
	return kms_writer_bytes(w, p, n);
}

/*
 * The DER SubjectPublicKeyInfo is written here rather than through an
 * EVP_PKEY: gRPC makes libp11's engine OpenSSL's default for RSA in this
 * process, and building an RSA key object then goes through the engine.
 * The encoding is fixed (RFC 5280 4.1, RFC 8017 A.1.1), so both ends of a
 * join compute the same bytes.
 */
int kms_rsa_public_sha256(const uint8_t *modulus, size_t modulus_len, const uint8_t *exponent,
			  size_t exponent_len, uint8_t out[KMS_SHA256_LEN], kms_err *err)
{
	uint8_t der[SPKI_MAX];
	size_t nb, eb, seq, bits, spki;
	unsigned int md_len = 0;
	EVP_MD *sha256 = NULL;
	kms_writer w;
	int rc = KMS_OK;

	if (modulus == NULL || modulus_len == 0 || modulus_len > MODULUS_MAX_BYTES + 1 ||
	    exponent == NULL || exponent_len == 0 || exponent_len > EXPONENT_MAX_BYTES)
		return kms_errf(err, KMS_ERR_INVALID,
				"an RSA public key needs a modulus of 1..%d bytes and an exponent "
				"of 1..%d bytes",
				MODULUS_MAX_BYTES, EXPONENT_MAX_BYTES);
	nb = int_body(&modulus, &modulus_len);
	eb = int_body(&exponent, &exponent_len);
	seq = 1 + len_size(nb) + nb + 1 + len_size(eb) + eb;  /* RSAPublicKey */
	bits = 1 + 1 + len_size(seq) + seq;                     /* BIT STRING body */
	spki = sizeof(rsa_algorithm) + 1 + len_size(bits) + bits;
	kms_writer_init(&w, der, sizeof(der));
	if (put_header(&w, 0x30, spki) != KMS_OK ||
	    kms_writer_bytes(&w, rsa_algorithm, sizeof(rsa_algorithm)) != KMS_OK ||
	    put_header(&w, 0x03, bits) != KMS_OK || kms_writer_u8(&w, 0) != KMS_OK ||
	    put_header(&w, 0x30, seq) != KMS_OK ||
	    put_int(&w, modulus, modulus_len, nb) != KMS_OK ||
	    put_int(&w, exponent, exponent_len, eb) != KMS_OK)
		return kms_errf(err, KMS_ERR_INTERNAL, "an RSA public key does not fit its encoding");
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (sha256 == NULL || EVP_Digest(der, w.len, out, &md_len, sha256, NULL) != 1 ||
	    md_len != KMS_SHA256_LEN)
		rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot hash the RSA public key");
	EVP_MD_free(sha256);
	ERR_clear_error();
	return rc;
}

void kms_hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kms_hex_decode(const char *hex, uint8_t *out, size_t n, const char *what, kms_err *err)
{
	if (hex == NULL || strnlen(hex, 2 * n + 1) != 2 * n)
		return kms_errf(err, KMS_ERR_INVALID, "%s must be %zu hex digits", what, 2 * n);
	for (size_t i = 0; i < n; i++) {
		int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return kms_errf(err, KMS_ERR_INVALID,
					"%s has a character that is not a hex digit at position "
					"%zu",
					what, 2 * i + (hi < 0 ? 1 : 2));
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return KMS_OK;
}
