/* peers.c - a small cache of gRPC channels to other members, one per address. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/spiffe.h"
#include "peers.h"
#include "tls_engine.h"

#define PEERS_MAX KMS_MEMBERS_MAX

struct peer {
	char address[KMS_ADDRESS_MAX + 1];
	uint64_t node_id; /* 0: any node */
	kms_client *client;
};

struct kms_peers {
	pthread_mutex_t mu;
	char *trust_domain;
	char *ca_file; /* the node CA: only nodes answer node-to-node calls */
	char *cert_file;
	char *key_string; /* "engine:pkcs11:<uri>": signing happens in the HSM */
	struct peer peers[PEERS_MAX];
	size_t n;
};

int kms_peers_new(const kms_config *cfg, kms_peers **out, kms_err *err)
{
	kms_peers *p = kms_calloc(1, sizeof(*p));

	if (p == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	p->trust_domain = kms_strdup(cfg->trust_domain);
	p->ca_file = kms_strdup(cfg->node_ca_file);
	p->cert_file = kms_strdup(cfg->cert_file);
	p->key_string = kms_tls_engine_key_string(cfg->tls_key_uri);
	if (p->trust_domain == NULL || p->ca_file == NULL || p->cert_file == NULL ||
	    p->key_string == NULL) {
		kms_peers_free(p);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	}
	*out = p;
	return KMS_OK;
}

void kms_peers_free(kms_peers *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n; i++)
		kms_client_close(p->peers[i].client);
	pthread_mutex_destroy(&p->mu);
	kms_free(p->trust_domain);
	kms_free(p->ca_file);
	kms_free(p->cert_file);
	kms_free(p->key_string);
	kms_free(p);
}

/* The cached client for (address, node), opened on first use (caller holds mu). */
static kms_client *client_for(kms_peers *p, const char *address, uint64_t node_id,
			      kms_rpc_status *st)
{
	kms_client_opts o;
	kms_client *c = NULL;
	kms_err err = {0};
	char want[KMS_SPIFFE_ID_MAX + 1];

	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->peers[i].address, address) == 0 && p->peers[i].node_id == node_id)
			return p->peers[i].client;
	if (node_id != 0)
		snprintf(want, sizeof(want), KMS_SPIFFE_SCHEME "%s" KMS_NODE_PATH "%llu",
			 p->trust_domain, (unsigned long long)node_id);
	else
		snprintf(want, sizeof(want), KMS_SPIFFE_SCHEME "%s" KMS_NODE_PATH,
			 p->trust_domain);
	memset(&o, 0, sizeof(o));
	o.target = address;
	o.ca_file = p->ca_file;
	o.cert_file = p->cert_file;
	o.key_string = p->key_string;
	o.server_spiffe_id = want;
	if (kms_client_open(&o, &c, &err) != KMS_OK) {
		st->code = 14; /* UNAVAILABLE */
		snprintf(st->details, sizeof(st->details), "cannot reach member %s: %s", address,
			 err.msg);
		return NULL;
	}
	if (p->n == PEERS_MAX) {
		/* Members come and go rarely: drop the oldest channel. */
		kms_client_close(p->peers[0].client);
		memmove(&p->peers[0], &p->peers[1], (PEERS_MAX - 1) * sizeof(p->peers[0]));
		p->n--;
	}
	snprintf(p->peers[p->n].address, sizeof(p->peers[0].address), "%s", address);
	p->peers[p->n].node_id = node_id;
	p->peers[p->n].client = c;
	p->n++;
	return c;
}

int kms_peers_call(kms_peers *p, const char *address, uint64_t node_id, const char *method,
		   const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp, int timeout_ms, kms_rpc_status *st)
{
	kms_client *c;

	*resp = NULL;
	pthread_mutex_lock(&p->mu);
	c = client_for(p, address, node_id, st);
	pthread_mutex_unlock(&p->mu);
	if (c == NULL)
		return st->code;
	/* Channels are thread-safe and live until kms_peers_free. */
	return kms_client_call_timeout(c, method, req, resp_desc, resp, timeout_ms, st);
}
