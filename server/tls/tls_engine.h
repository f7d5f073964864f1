/* tls_engine.h - readies libp11's PKCS#11 OpenSSL engine so gRPC can use the node's TLS key inside the HSM. */
#ifndef KMS_TLS_ENGINE_H
#define KMS_TLS_ENGINE_H

#include <openssl/types.h>

#include "kms/error.h"

/*
 * Loads libp11's "pkcs11" engine into OpenSSL's engine list with the module
 * path and PIN, and keeps a functional reference for the life of the
 * process. gRPC then finds that same engine when it meets the private key
 * string "engine:pkcs11:<pkcs11 URI>", and never prompts for a PIN. Holding
 * the reference also stops the engine from unloading (and finalizing) the
 * PKCS#11 module that kms_hsm shares. KMS_ERR_CONFIG naming the step that
 * failed. The PIN is copied by the engine; the caller still cleanses its own.
 */
int kms_tls_engine_init(const char *module_path, const char *pin, kms_err *err);

/*
 * Loads the private key at pkcs11_uri through the engine (after
 * kms_tls_engine_init), for TLS contexts kmsd builds itself (Raft peer
 * links). Signing happens in the HSM. Free *out with EVP_PKEY_free.
 */
int kms_tls_engine_load_key(const char *pkcs11_uri, EVP_PKEY **out, kms_err *err);

/* The string gRPC takes as a private key: "engine:pkcs11:" + uri. Caller frees. */
char *kms_tls_engine_key_string(const char *pkcs11_uri);

#endif
