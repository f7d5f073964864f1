/* peers.c - a small cache of gRPC channels to other members, one per address, and calls on them that block or not. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/spiffe.h"
#include "rpc/async_call.h"
#include "rpc/peers.h"
#include "tls/tls_engine.h"

#define PEERS_MAX KMS_MEMBERS_MAX

/* A channel, shared by the cache and the calls using it (refs under mu):
 * the last one to let go closes it, so that kms_peers_reset never closes a
 * channel under a call in flight. */
struct peer_client {
	kms_client *client;
	unsigned refs;
};

struct peer {
	char address[KMS_ADDRESS_MAX + 1];
	uint64_t node_id; /* 0: any node */
	struct peer_client *pc;
};

struct kms_peers {
	pthread_mutex_t mu;
	char *trust_domain;
	char *ca_file; /* the node CA: only nodes answer node-to-node calls */
	char *cert_file;
	char *key_string; /* "engine:pkcs11:<uri>": signing happens in the HSM */
	struct peer peers[PEERS_MAX];
	size_t n;
	kms_async *async; /* the calls no thread waits for */
};

int kms_peers_new(const kms_config *cfg, kms_peers **out, kms_err *err)
{
	return kms_peers_new_region(cfg, cfg->trust_domain, cfg->node_ca_file, out, err);
}

int kms_peers_new_region(const kms_config *cfg, const char *trust_domain, const char *ca_file,
			 kms_peers **out, kms_err *err)
{
	kms_peers *p = kms_calloc(1, sizeof(*p));

	if (p == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	p->trust_domain = kms_strdup(trust_domain);
	p->ca_file = kms_strdup(ca_file);
	p->cert_file = kms_strdup(cfg->cert_file);
	p->key_string = kms_tls_engine_key_string(cfg->tls_key_uri);
	if (p->trust_domain == NULL || p->ca_file == NULL || p->cert_file == NULL ||
	    p->key_string == NULL) {
		kms_peers_free(p);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	}
	if (kms_async_new(&p->async, err) != KMS_OK) {
		kms_peers_free(p);
		return err != NULL ? err->code : KMS_ERR_INTERNAL;
	}
	*out = p;
	return KMS_OK;
}

/* Drops one reference (caller holds mu); the channel to close, if any. */
static struct peer_client *pc_unref(struct peer_client *pc)
{
	return --pc->refs == 0 ? pc : NULL;
}

static void pc_close(struct peer_client *pc)
{
	if (pc == NULL)
		return;
	kms_client_close(pc->client);
	kms_free(pc);
}

void kms_peers_reset(kms_peers *p)
{
	struct peer_client *closing[PEERS_MAX];
	size_t n = 0;

	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < p->n; i++)
		closing[n++] = pc_unref(p->peers[i].pc);
	p->n = 0;
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < n; i++)
		pc_close(closing[i]);
}

void kms_peers_stop_calls(kms_peers *p)
{
	if (p != NULL)
		kms_async_stop(p->async);
}

void kms_peers_free(kms_peers *p)
{
	if (p == NULL)
		return;
	/* First: a call in flight holds a reference to its channel. */
	kms_async_free(p->async);
	kms_peers_reset(p);
	pthread_mutex_destroy(&p->mu);
	kms_free(p->trust_domain);
	kms_free(p->ca_file);
	kms_free(p->cert_file);
	kms_free(p->key_string);
	kms_free(p);
}

/*
 * The cached channel for (address, node), opened on first use, with a
 * reference for the caller (caller holds mu). *evicted gets a channel the
 * cache let go of, for the caller to pc_close outside mu.
 */
static struct peer_client *client_for(kms_peers *p, const char *address, uint64_t node_id,
				      kms_rpc_status *st, struct peer_client **evicted)
{
	kms_client_opts o;
	kms_client *c = NULL;
	struct peer_client *pc;
	kms_err err = {0};
	char want[KMS_SPIFFE_ID_MAX + 1];

	*evicted = NULL;
	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->peers[i].address, address) == 0 && p->peers[i].node_id == node_id) {
			p->peers[i].pc->refs++;
			return p->peers[i].pc;
		}
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
	pc = kms_calloc(1, sizeof(*pc));
	if (pc == NULL) {
		kms_client_close(c);
		st->code = 14; /* UNAVAILABLE */
		snprintf(st->details, sizeof(st->details), "out of memory reaching member %s",
			 address);
		return NULL;
	}
	pc->client = c;
	pc->refs = 2; /* the cache's and the caller's */
	if (p->n == PEERS_MAX) {
		/* Members come and go rarely: drop the oldest channel. */
		*evicted = pc_unref(p->peers[0].pc);
		memmove(&p->peers[0], &p->peers[1], (PEERS_MAX - 1) * sizeof(p->peers[0]));
		p->n--;
	}
	snprintf(p->peers[p->n].address, sizeof(p->peers[0].address), "%s", address);
	p->peers[p->n].node_id = node_id;
	p->peers[p->n].pc = pc;
	p->n++;
	return pc;
}

/* The cached channel for (address, node) with a reference for the caller,
 * or NULL with st saying why. */
static struct peer_client *client_get(kms_peers *p, const char *address, uint64_t node_id,
				      kms_rpc_status *st)
{
	struct peer_client *pc, *evicted;

	pthread_mutex_lock(&p->mu);
	pc = client_for(p, address, node_id, st, &evicted);
	pthread_mutex_unlock(&p->mu);
	pc_close(evicted);
	return pc;
}

static void client_put(kms_peers *p, struct peer_client *pc)
{
	struct peer_client *done;

	pthread_mutex_lock(&p->mu);
	done = pc_unref(pc);
	pthread_mutex_unlock(&p->mu);
	pc_close(done);
}

int kms_peers_call(kms_peers *p, const char *address, uint64_t node_id, const char *method,
		   const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp, int timeout_ms, kms_rpc_status *st)
{
	struct peer_client *pc;
	int rc;

	*resp = NULL;
	pc = client_get(p, address, node_id, st);
	if (pc == NULL)
		return st->code;
	/* Channels are thread-safe; our reference keeps this one open. */
	rc = kms_client_call_timeout(pc->client, method, req, resp_desc, resp, timeout_ms, st);
	client_put(p, pc);
	return rc;
}

/* --- calls no thread waits for --- */

struct peer_async {
	kms_peers *p;
	struct peer_client *pc; /* our reference keeps the channel open */
	const ProtobufCMessageDescriptor *resp_desc;
	kms_peers_done_fn done;
	void *arg;
};

static void async_done(void *arg, const kms_rpc_status *st, const uint8_t *resp, size_t len)
{
	struct peer_async *pa = arg;
	ProtobufCMessage *msg = NULL;
	kms_rpc_status parsed;
	const kms_rpc_status *out = st;

	if (pa->pc != NULL)
		client_put(pa->p, pa->pc);
	if (st->code == GRPC_STATUS_OK) {
		msg = protobuf_c_message_unpack(pa->resp_desc, NULL, len, resp);
		if (msg == NULL) {
			parsed.code = GRPC_STATUS_INTERNAL;
			snprintf(parsed.details, sizeof(parsed.details),
				 "the response message does not parse");
			out = &parsed;
		}
	}
	pa->done(pa->arg, out, msg);
	kms_free(pa);
}

void kms_peers_call_async(kms_peers *p, const char *address, uint64_t node_id,
			  const char *method, const ProtobufCMessage *req,
			  const ProtobufCMessageDescriptor *resp_desc, long timeout_ms,
			  kms_peers_done_fn done, void *arg)
{
	struct peer_async *pa = kms_calloc(1, sizeof(*pa));
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *buf = kms_malloc(len > 0 ? len : 1);
	kms_rpc_status st;

	if (pa == NULL || buf == NULL) {
		kms_free(pa);
		kms_free(buf);
		st.code = GRPC_STATUS_RESOURCE_EXHAUSTED;
		snprintf(st.details, sizeof(st.details), "out of memory calling member %s",
			 address);
		done(arg, &st, NULL);
		return;
	}
	pa->p = p;
	pa->resp_desc = resp_desc;
	pa->done = done;
	pa->arg = arg;
	pa->pc = client_get(p, address, node_id, &st);
	if (pa->pc == NULL) {
		kms_free(pa);
		kms_free(buf);
		done(arg, &st, NULL);
		return;
	}
	protobuf_c_message_pack(req, buf);
	kms_async_call(p->async, kms_client_channel(pa->pc->client), method, buf, len, timeout_ms,
		       async_done, pa);
	kms_cleanse(buf, len);
	kms_free(buf);
}
