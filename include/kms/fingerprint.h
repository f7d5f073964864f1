/* fingerprint.h - the SHA-256 fingerprint of an RSA public key (its DER SubjectPublicKeyInfo), and the hex that operators copy it as. */
#ifndef KMS_FINGERPRINT_H
#define KMS_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"

#define KMS_SHA256_LEN 32
#define KMS_SHA256_HEX_LEN 64

/*
 * SHA-256 over the DER SubjectPublicKeyInfo of the RSA key (modulus,
 * exponent: big-endian unsigned, leading zero bytes allowed), the value
 * `openssl pkey -pubin -outform DER | sha256sum` gives for the same key.
 * KMS_ERR_INVALID for an empty or oversized (over 8192-bit) modulus.
 */
int kms_rsa_public_sha256(const uint8_t *modulus, size_t modulus_len, const uint8_t *exponent,
			  size_t exponent_len, uint8_t out[KMS_SHA256_LEN], kms_err *err);

/* Lower-case hex of n bytes into out (2n + 1 bytes with the NUL). */
void kms_hex_encode(const uint8_t *in, size_t n, char *out);

/*
 * Exactly 2n hex digits (either case) into n bytes. KMS_ERR_INVALID naming
 * what (e.g. "transport_key_sha256") and the rule otherwise.
 */
int kms_hex_decode(const char *hex, uint8_t *out, size_t n, const char *what, kms_err *err);

#endif
