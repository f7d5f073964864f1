/* authn.c - the identity of a TLS peer: X509-SVID, trust domain, and which CA may name a node. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity/authn.h"
#include "kms/alloc.h"

/* Certificates remembered per thread, and the largest one remembered. */
#define CACHE_SLOTS 8
#define CACHE_PEM_MAX 4096

struct kms_authn {
	char td[KMS_TRUST_DOMAIN_MAX + 1];
	pthread_rwlock_t lock;
	STACK_OF(X509) *node_cas; /* under lock */
	atomic_uint generation;   /* bumped by every reload */
	unsigned id;              /* tells instances apart in the thread caches */
};

struct cache_slot {
	unsigned authn_id, generation;
	size_t pem_len;
	char pem[CACHE_PEM_MAX];
	int rc;
	kms_peer peer;
	char msg[KMS_ERRMSG_SIZE];
};

static _Thread_local struct cache_slot cache[CACHE_SLOTS];
static _Thread_local unsigned cache_next;
static atomic_uint next_authn_id = 1;

static int load_cas(const char *path, STACK_OF(X509) **out, kms_err *err)
{
	STACK_OF(X509) *cas = sk_X509_new_null();
	FILE *f;
	X509 *c;

	if (cas == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading the node CA");
	f = fopen(path, "r");
	if (f == NULL) {
		sk_X509_free(cas);
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read the node CA file %s: %m", path);
	}
	while ((c = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		if (sk_X509_push(cas, c) <= 0) {
			X509_free(c);
			break;
		}
	}
	fclose(f);
	ERR_clear_error(); /* the end of the file reads as an error */
	if (sk_X509_num(cas) == 0) {
		sk_X509_free(cas);
		return kms_errf(err, KMS_ERR_CONFIG, "the node CA file %s holds no certificate",
				path);
	}
	*out = cas;
	return KMS_OK;
}

int kms_authn_new(const char *trust_domain, const char *node_ca_file, kms_authn **out,
		  kms_err *err)
{
	kms_authn *a;
	int rc;

	if (trust_domain == NULL || strlen(trust_domain) > KMS_TRUST_DOMAIN_MAX)
		return kms_errf(err, KMS_ERR_CONFIG, "no valid trust domain configured");
	a = kms_calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	snprintf(a->td, sizeof(a->td), "%s", trust_domain);
	rc = load_cas(node_ca_file, &a->node_cas, err);
	if (rc != KMS_OK) {
		kms_free(a);
		return rc;
	}
	if (pthread_rwlock_init(&a->lock, NULL) != 0) {
		sk_X509_pop_free(a->node_cas, X509_free);
		kms_free(a);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot create the node CA lock");
	}
	a->id = atomic_fetch_add(&next_authn_id, 1);
	*out = a;
	return KMS_OK;
}

void kms_authn_free(kms_authn *a)
{
	if (a == NULL)
		return;
	sk_X509_pop_free(a->node_cas, X509_free);
	pthread_rwlock_destroy(&a->lock);
	kms_free(a);
}

int kms_authn_reload(kms_authn *a, const char *node_ca_file, kms_err *err)
{
	STACK_OF(X509) *cas = NULL, *old;

	KMS_TRY(load_cas(node_ca_file, &cas, err));
	pthread_rwlock_wrlock(&a->lock);
	old = a->node_cas;
	a->node_cas = cas;
	atomic_fetch_add(&a->generation, 1);
	pthread_rwlock_unlock(&a->lock);
	sk_X509_pop_free(old, X509_free);
	return KMS_OK;
}

/*
 * True when one of the node CAs signed cert. The handshake verified the
 * chain against both CAs already; this only tells which one issued it.
 */
static int issued_by_node_ca(kms_authn *a, X509 *cert)
{
	int found = 0;

	pthread_rwlock_rdlock(&a->lock);
	for (int i = 0; i < sk_X509_num(a->node_cas) && !found; i++) {
		X509 *ca = sk_X509_value(a->node_cas, i);
		EVP_PKEY *pub = X509_get0_pubkey(ca);

		found = X509_check_issued(ca, cert) == X509_V_OK && pub != NULL &&
			X509_verify(cert, pub) == 1;
	}
	pthread_rwlock_unlock(&a->lock);
	ERR_clear_error();
	return found;
}

static int identify(kms_authn *a, const char *pem, size_t len, kms_peer *out, kms_err *err)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	X509 *cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	char q[KMS_QUOTE_MAX + 4];
	int rc, from_node_ca;

	BIO_free(bio);
	memset(out, 0, sizeof(*out));
	if (cert == NULL) {
		ERR_clear_error();
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the peer certificate does not parse");
	}
	KMS_TRY_GOTO(rc, kms_svid_from_x509(cert, &out->id, err), out);
	if (!kms_spiffe_in_trust_domain(&out->id, a->td)) {
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED,
			      "the SPIFFE ID '%s' is not in this cluster's trust domain '%s'",
			      kms_quote(out->id.id, q), a->td);
		goto out;
	}
	from_node_ca = issued_by_node_ca(a, cert);
	if (kms_spiffe_is_node_path(&out->id)) {
		if (!from_node_ca) {
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "'%s' is a node identity, but its certificate was not "
				      "issued by the node CA",
				      kms_quote(out->id.id, q));
			goto out;
		}
		if (kms_spiffe_node_id(&out->id, &out->node_id) != KMS_OK) {
			rc = kms_errf(err, KMS_ERR_PERMISSION,
				      "'%s' is under " KMS_NODE_PATH_PREFIX
				      " but names no node (" KMS_NODE_PATH "<id>)",
				      kms_quote(out->id.id, q));
			goto out;
		}
		out->kind = KMS_PEER_NODE;
	} else if (from_node_ca) {
		rc = kms_errf(err, KMS_ERR_PERMISSION,
			      "the node CA issued a certificate for '%s'; it issues node "
			      "identities (" KMS_NODE_PATH "<id>) only",
			      kms_quote(out->id.id, q));
		goto out;
	} else {
		out->kind = KMS_PEER_SERVICE;
	}
	rc = KMS_OK;
out:
	if (rc != KMS_OK)
		out->kind = KMS_PEER_NONE;
	X509_free(cert);
	return rc;
}

int kms_authn_identify(kms_authn *a, const char *pem, size_t len, kms_peer *out, kms_err *err)
{
	unsigned gen = atomic_load(&a->generation);
	struct cache_slot *slot;
	int rc;

	if (pem == NULL || len == 0 || len > INT32_MAX)
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "no peer certificate");
	for (unsigned i = 0; i < CACHE_SLOTS; i++) {
		slot = &cache[i];
		if (slot->authn_id == a->id && slot->generation == gen && slot->pem_len == len &&
		    memcmp(slot->pem, pem, len) == 0) {
			*out = slot->peer;
			if (slot->rc != KMS_OK)
				return kms_errf(err, slot->rc, "%s", slot->msg);
			return KMS_OK;
		}
	}
	rc = identify(a, pem, len, out, err);
	if (len > CACHE_PEM_MAX || rc == KMS_ERR_NOMEM)
		return rc;
	slot = &cache[cache_next++ % CACHE_SLOTS];
	slot->authn_id = a->id;
	slot->generation = gen;
	slot->pem_len = len;
	memcpy(slot->pem, pem, len);
	slot->rc = rc;
	slot->peer = *out;
	snprintf(slot->msg, sizeof(slot->msg), "%s", rc != KMS_OK && err != NULL ? err->msg : "");
	return rc;
}
