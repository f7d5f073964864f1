/* tls_engine.c - libp11's engine set up in-process, PIN included, for gRPC's "engine:" private keys. */

/* The ENGINE API is deprecated in OpenSSL 3, but libp11's engine and gRPC's
 * "engine:" key strings are built on it; there is no provider path in gRPC 1.51. */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/engine.h>
#include <openssl/err.h>

#include "config.h"
#include "kms/alloc.h"
#include "tls/tls_engine.h"

/* Where Debian's libengine-pkcs11-openssl puts the engine for OpenSSL 3. */
#ifndef KMS_PKCS11_ENGINE_PATH
#define KMS_PKCS11_ENGINE_PATH "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
#endif

static ENGINE *held_engine;

static int engine_fail(kms_err *err, const char *step)
{
	char detail[160];

	ERR_error_string_n(ERR_get_error(), detail, sizeof(detail));
	ERR_clear_error();
	return kms_errf(err, KMS_ERR_CONFIG, "PKCS#11 TLS engine: %s failed (%s)", step,
			detail);
}

static const char *engine_path(void)
{
	const char *env = getenv("KMS_PKCS11_ENGINE");

	return env != NULL && env[0] != '\0' ? env : KMS_PKCS11_ENGINE_PATH;
}

int kms_tls_engine_init(const char *module_path, const char *pin, kms_err *err)
{
	ENGINE *e = NULL;
	int rc = KMS_OK;

	if (held_engine != NULL)
		return KMS_OK;
	ENGINE_load_dynamic();
	e = ENGINE_by_id("dynamic");
	if (e == NULL)
		return engine_fail(err, "loading OpenSSL's dynamic engine");
	/* LIST_ADD=1 puts the engine in OpenSSL's list, where gRPC's
	 * ENGINE_by_id("pkcs11") finds this configured instance. */
	if (!ENGINE_ctrl_cmd_string(e, "SO_PATH", engine_path(), 0) ||
	    !ENGINE_ctrl_cmd_string(e, "ID", "pkcs11", 0) ||
	    !ENGINE_ctrl_cmd_string(e, "LIST_ADD", "1", 0) ||
	    !ENGINE_ctrl_cmd_string(e, "LOAD", NULL, 0)) {
		rc = engine_fail(err, "loading libp11's engine (install libengine-pkcs11-openssl)");
		goto out;
	}
	if (!ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module_path, 0)) {
		rc = engine_fail(err, "setting MODULE_PATH");
		goto out;
	}
	if (!ENGINE_ctrl_cmd_string(e, "PIN", pin, 0)) {
		rc = engine_fail(err, "setting the PIN");
		goto out;
	}
	if (!ENGINE_init(e)) {
		rc = engine_fail(err, "initializing the engine");
		goto out;
	}
	held_engine = e; /* keeps both the structural and the functional reference */
	return KMS_OK;
out:
	ENGINE_free(e);
	return rc;
}

int kms_tls_engine_load_key(const char *pkcs11_uri, EVP_PKEY **out, kms_err *err)
{
	EVP_PKEY *k;

	if (held_engine == NULL)
		return kms_errf(err, KMS_ERR_INTERNAL, "the PKCS#11 TLS engine is not initialized");
	k = ENGINE_load_private_key(held_engine, pkcs11_uri, NULL, NULL);
	if (k == NULL)
		return engine_fail(err, "loading the node's private key from the token");
	*out = k;
	return KMS_OK;
}

char *kms_tls_engine_key_string(const char *pkcs11_uri)
{
	static const char prefix[] = "engine:pkcs11:";
	size_t n = sizeof(prefix) + strlen(pkcs11_uri);
	char *s = kms_malloc(n);

	if (s != NULL)
		snprintf(s, n, "%s%s", prefix, pkcs11_uri);
	return s;
}
