/* rpc_server.c - unary gRPC calls over mutual TLS on the gRPC core API: one completion queue and HSM session per worker thread; local calls that run a handler without the network. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/string_util.h>
#include <grpc/support/time.h>
#include <openssl/x509.h>

#include "kms/alloc.h"
#include "kms/audit.h"
#include "kms/log.h"
#include "obs/audit_log.h"
#include "rpc/rpc_server.h"
#include "api/status_map.h"
#include "rpc/wire_strings.h"

/* Calls each worker keeps requested, so that a burst finds a call waiting. */
#define REQUESTS_PER_WORKER 32
/* How often gRPC's certificate provider looks at the files that
 * kms_rpc_server_set_tls writes (its smallest interval). */
#define TLS_REFRESH_S 1
/* A worker wakes at least this often to cancel calls whose request message
 * is late. */
#define SWEEP_MS 500
/* ... and the workers together look for such calls at most this often. */
#define SWEEP_CHECK_MS 100
/* Request metadata entries a local call carries (kms_call_local_metadata). */
#define LOCAL_MD_MAX 4
/* The key id or alias an audit record names: "alias/" and 250 characters. */
#define AUDIT_KEY_MAX 256
/* A caller's x-request-id is taken up to this length (printable ASCII). */
#define REQUEST_ID_MAX 64

struct kms_call;

/*
 * The workers share one completion queue: whichever of them gRPC lets poll
 * takes the events it finds itself. With a queue each, an event for one
 * worker found by another cost a wake-up and a thread switch; at one call
 * in flight that was about two switches in three per call
 * (docs/PERFORMANCE.md). A call's events may therefore come to any worker:
 * on each, the call moves to the worker that took it (on_event), whose HSM
 * session the handler uses.
 */
struct worker {
	kms_rpc_server *srv;
	pthread_t thread;
	int started;
	void *wctx;
};

/*
 * The client CRL in force, shared by the server and gRPC's certificate
 * verifier, which may outlive the server's own struct (a handshake in
 * flight holds it): whoever drops the last reference frees it.
 */
struct crl_slot {
	grpc_tls_certificate_verifier_external ext; /* first: ext.user_data is the slot */
	pthread_mutex_t mu;
	X509_CRL *crl; /* (mu) NULL: no CRL configured */
	atomic_int refs;
};

struct kms_rpc_server {
	kms_rpc_server_opts opts;
	grpc_server *server;
	grpc_completion_queue *shutdown_cq;
	struct worker *workers;
	unsigned n_workers;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned n_ready;  /* workers that ran worker_init */
	int init_failed;
	kms_err init_err;
	/* The files gRPC's certificate provider watches (0700, ours only):
	 * "key" (the engine key string), "chain.pem", "roots.pem". */
	char tls_dir[PATH_MAX];
	pthread_mutex_t tls_mu; /* one writer of those files at a time */
	/* What roots.pem is made of (kms_strdup'd, under tls_mu): the last
	 * client CA and node CA put in force, and the extra roots. */
	char *roots_client_ca, *roots_node_ca, *roots_extra;
	struct crl_slot *crl;
	char request_timeout_msg[96];
	grpc_completion_queue *cq; /* the workers' queue */
	/* Calls waiting for their request message, oldest first; any worker
	 * may add or take one (recv_mu). */
	pthread_mutex_t recv_mu;
	struct kms_call *recv_head, *recv_tail;
	atomic_int_fast64_t last_sweep; /* monotonic ms */
};

/* Generated request ids: "<random of this process>-<counter>". */
static pthread_once_t rid_once = PTHREAD_ONCE_INIT;
static char rid_prefix[17];
static atomic_ulong rid_next;

enum call_state { CALL_REQUESTED, CALL_RECEIVING, CALL_HANDLING, CALL_SENDING };

/* What a local call (kms_call_local_new) has instead of a gRPC call. */
struct local_call {
	kms_call_done_fn done; /* never NULL for a local call */
	void *arg;
	void *wctx;
	int64_t deadline; /* monotonic ms; INT64_MAX: none */
	size_t n_md;
	struct {
		char *key;   /* NUL-terminated, kms_malloc'd */
		char *value; /* len bytes (and a NUL), kms_malloc'd */
		size_t len;
	} md[LOCAL_MD_MAX];
};

struct kms_call {
	struct worker *w; /* NULL for a local call */
	struct local_call local;
	enum call_state state;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array request_md;
	grpc_byte_buffer *recv;
	grpc_slice status_details;
	int has_status_details;
	int cancelled;
	kms_peer peer;
	/* CALL_RECEIVING: on w's list since recv_since (monotonic ms); swept:
	 * cancelled for a late request message. */
	struct kms_call *recv_prev, *recv_next;
	int64_t recv_since;
	int on_recv_list, swept;
	/* The audit record (kms_call_audit_*): audit NULL, none. */
	kms_audit_log *audit;
	unsigned audit_node;
	const char *audit_method; /* the method table's string */
	char audit_key[AUDIT_KEY_MAX + 1];
	uint64_t audit_version;
	unsigned audit_items;
	char *audit_behalf, *audit_proposal; /* kms_malloc'd */
	char *audit_approvers[KMS_AUDIT_APPROVERS_MAX];
	size_t audit_n_approvers;
	kms_audit_entry audit_entry;
	/* The answer waiting for its record to be written. */
	grpc_byte_buffer *pending_resp;
	grpc_status_code pending_code;
	char *pending_msg;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* recv_mu held. */
static void recv_list_unlink(kms_rpc_server *s, struct kms_call *c)
{
	if (c->recv_prev != NULL)
		c->recv_prev->recv_next = c->recv_next;
	else
		s->recv_head = c->recv_next;
	if (c->recv_next != NULL)
		c->recv_next->recv_prev = c->recv_prev;
	else
		s->recv_tail = c->recv_prev;
	c->recv_prev = c->recv_next = NULL;
	c->on_recv_list = 0;
}

/* The request message of c arrived (or its batch failed): c leaves the
 * list; whether a sweep cancelled it first. */
static int recv_list_take(struct kms_call *c)
{
	kms_rpc_server *s = c->w->srv;
	int swept;

	if (c->local.done != NULL)
		return 0;
	pthread_mutex_lock(&s->recv_mu);
	if (c->on_recv_list)
		recv_list_unlink(s, c);
	swept = c->swept;
	pthread_mutex_unlock(&s->recv_mu);
	return swept;
}

/* Off the list, if on it: on_recv_list is read and written under recv_mu
 * only, as a sweep on another worker may take the call off meanwhile. */
static void recv_list_remove(struct kms_call *c)
{
	(void)recv_list_take(c);
}

static void recv_list_append(struct kms_call *c)
{
	kms_rpc_server *s = c->w->srv;

	c->recv_since = now_ms();
	pthread_mutex_lock(&s->recv_mu);
	c->recv_prev = s->recv_tail;
	c->recv_next = NULL;
	if (s->recv_tail != NULL)
		s->recv_tail->recv_next = c;
	else
		s->recv_head = c;
	s->recv_tail = c;
	c->on_recv_list = 1;
	pthread_mutex_unlock(&s->recv_mu);
}

static struct kms_call *call_new(struct worker *w)
{
	struct kms_call *c = kms_calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->w = w;
	c->state = CALL_REQUESTED;
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->request_md);
	return c;
}

/*
 * Wipes and destroys the request as gRPC delivered it: for Encrypt it holds
 * plaintext. Writing into its slices is safe: once RECV_MESSAGE completes
 * the buffer is ours and gRPC never reads it again; each slice is either
 * inlined (its bytes sit in the slice array of this buffer) or a reference
 * to heap memory gRPC allocated for reading from the socket, never static
 * data; and a slice that shares that memory with other references (the
 * HTTP/2 frames around the message) covers only this message's bytes,
 * which the transport has consumed. sb->slices[i] is used in place, so an
 * inlined slice is wiped where it lives, not in a copy.
 */
static void drop_request(struct kms_call *c)
{
	grpc_slice_buffer *sb;

	if (c->recv == NULL)
		return;
	sb = &c->recv->data.raw.slice_buffer;
	for (size_t i = 0; i < sb->count; i++)
		kms_cleanse(GRPC_SLICE_START_PTR(sb->slices[i]), GRPC_SLICE_LENGTH(sb->slices[i]));
	grpc_byte_buffer_destroy(c->recv);
	c->recv = NULL;
}

static void audit_notes_free(struct kms_call *c)
{
	kms_free(c->audit_behalf);
	kms_free(c->audit_proposal);
	for (size_t i = 0; i < c->audit_n_approvers; i++)
		kms_free(c->audit_approvers[i]);
	kms_audit_text_free(&c->audit_entry.body);
	if (c->pending_resp != NULL)
		grpc_byte_buffer_destroy(c->pending_resp);
	kms_free(c->pending_msg);
}

static void call_free(struct kms_call *c)
{
	audit_notes_free(c);
	if (c->local.done != NULL) {
		for (size_t i = 0; i < c->local.n_md; i++) {
			kms_free(c->local.md[i].key);
			kms_free(c->local.md[i].value);
		}
		kms_free(c);
		return;
	}
	recv_list_remove(c);
	if (c->call != NULL)
		grpc_call_unref(c->call);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->request_md);
	drop_request(c);
	if (c->has_status_details)
		grpc_slice_unref(c->status_details);
	kms_free(c);
}

static int request_call(struct worker *w)
{
	struct kms_call *c = call_new(w);
	grpc_call_error e;

	if (c == NULL) {
		KMS_LOG_E("rpc: out of memory requesting a call");
		return KMS_ERR_NOMEM;
	}
	e = grpc_server_request_call(w->srv->server, &c->call, &c->details,
				     &c->request_md, w->srv->cq, w->srv->cq, c);
	if (e != GRPC_CALL_OK) {
		KMS_LOG_E("rpc: grpc_server_request_call failed (%d)", (int)e);
		call_free(c);
		return KMS_ERR_UNAVAILABLE;
	}
	return KMS_OK;
}

/*
 * Whether peer may call m, whose callers are not KMS_CALLERS_ANYONE: the
 * same rule for a call from the network (after identify_caller) and a
 * local one. A node identity may call only what nodes may (kms.v1.Internal),
 * a linked region's node only what regions may, a service only what
 * services may.
 */
static int may_call(const kms_method *m, const kms_peer *peer, kms_err *err)
{
	if (peer->kind == KMS_PEER_NONE)
		return kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the caller presented no certificate");
	if (m->callers & (1u << peer->kind))
		return KMS_OK;
	if (peer->kind == KMS_PEER_REGION)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"'%.200s' is a node of linked region '%s': it may call only the "
				"methods that serve linked regions, not %s",
				peer->id.id, peer->region, m->path);
	if (m->callers & KMS_CALLERS_REGIONS)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"%s serves only the nodes of linked regions, with certificates "
				"from their node CAs; '%.200s' is not one",
				m->path, peer->id.id);
	if (peer->kind == KMS_PEER_NODE)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node identities may call only kms.v1.Internal, not %s", m->path);
	return kms_errf(err, KMS_ERR_PERMISSION,
			"principal '%.200s' is not a kmsd node: kms.v1.Internal serves only node "
			"identities with certificates from the node CA",
			peer->id.id);
}

/*
 * Identifies the caller from the leaf certificate the handshake verified
 * (gRPC's x509_pem_cert property), then checks it may call m. gRPC's SAN
 * property would also hand over DNS and e-mail names, which never name a
 * principal: read the certificate.
 */
static int identify_caller(kms_call *c, const kms_method *m, kms_err *err)
{
	grpc_auth_context *ac = grpc_call_auth_context(c->call);
	grpc_auth_property_iterator it;
	const grpc_auth_property *p = NULL;
	int rc;

	if (ac != NULL) {
		it = grpc_auth_context_find_properties_by_name(ac, GRPC_X509_PEM_CERT_PROPERTY_NAME);
		p = grpc_auth_property_iterator_next(&it);
	}
	if (p == NULL || c->w->srv->opts.authn == NULL)
		rc = kms_errf(err, KMS_ERR_UNAUTHENTICATED, "the caller presented no certificate");
	else
		rc = kms_authn_identify(c->w->srv->opts.authn, p->value, p->value_length, &c->peer,
					err);
	grpc_auth_context_release(ac);
	KMS_TRY(rc);
	return may_call(m, &c->peer, err);
}

static const kms_method *find_method(const kms_rpc_server *s, grpc_slice path)
{
	size_t len = GRPC_SLICE_LENGTH(path);
	const char *p = (const char *)GRPC_SLICE_START_PTR(path);

	for (size_t i = 0; i < s->opts.n_methods; i++) {
		const char *m = s->opts.methods[i].path;

		if (strlen(m) == len && memcmp(m, p, len) == 0)
			return &s->opts.methods[i];
	}
	return NULL;
}

/*
 * The whole answer in one batch: the initial metadata (none) goes with the
 * message and the status, so that the transport writes the three frames
 * together. Sent with the receive instead, the headers left in a write of
 * their own, one more sendmsg per call (docs/PERFORMANCE.md).
 */
static void send_now(kms_call *c, grpc_byte_buffer *resp, grpc_status_code code,
		     const char *msg)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	c->state = CALL_SENDING;
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op->data.send_initial_metadata.count = 0;
	op++;
	if (resp != NULL) {
		op->op = GRPC_OP_SEND_MESSAGE;
		op->data.send_message.send_message = resp;
		op++;
	}
	/* gRPC reads the details slice until the batch completes: it lives in
	 * the call and is released in call_free. */
	c->status_details = grpc_slice_from_copied_string(msg != NULL ? msg : "");
	c->has_status_details = 1;
	op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op->data.send_status_from_server.status = code;
	op->data.send_status_from_server.status_details = &c->status_details;
	op->data.send_status_from_server.trailing_metadata_count = 0;
	op++;
	op->op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op->data.recv_close_on_server.cancelled = &c->cancelled;
	op++;
	e = grpc_call_start_batch(c->call, ops, (size_t)(op - ops), c, NULL);
	if (resp != NULL)
		grpc_byte_buffer_destroy(resp); /* the batch holds its own reference */
	if (e != GRPC_CALL_OK) {
		/* No completion will come for this call: free it here. */
		KMS_LOG_E("rpc: sending a reply failed (%d)", (int)e);
		call_free(c);
	}
}

static void rid_init(void)
{
	uint8_t r[8];
	FILE *f = fopen("/dev/urandom", "re");

	/* Only to tell this process's ids from another's: not a secret. */
	if (f == NULL || fread(r, 1, sizeof(r), f) != sizeof(r)) {
		uint64_t t = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32);

		memcpy(r, &t, sizeof(r));
	}
	if (f != NULL)
		fclose(f);
	for (size_t i = 0; i < sizeof(r); i++)
		snprintf(rid_prefix + 2 * i, 3, "%02x", r[i]);
}

/* The caller's x-request-id if it is printable ASCII of a sane length,
 * else one made here. */
static void request_id(const kms_call *c, char out[REQUEST_ID_MAX + 1])
{
	size_t len = 0;
	const char *v = kms_call_metadata(c, "x-request-id", &len);
	int ok = v != NULL && len > 0 && len <= REQUEST_ID_MAX;

	for (size_t i = 0; ok && i < len; i++)
		ok = v[i] > 0x20 && v[i] < 0x7f;
	if (ok) {
		memcpy(out, v, len);
		out[len] = '\0';
		return;
	}
	pthread_once(&rid_once, rid_init);
	snprintf(out, REQUEST_ID_MAX + 1, "%s-%lu", rid_prefix,
		 (unsigned long)atomic_fetch_add(&rid_next, 1) + 1);
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The record of c answered with code, into c->audit_entry.body. */
static int audit_body(kms_call *c, grpc_status_code code)
{
	kms_audit_call r;
	char rid[REQUEST_ID_MAX + 1];
	char *peer = c->local.done == NULL ? grpc_call_get_peer(c->call) : NULL;
	int rc;

	memset(&r, 0, sizeof(r));
	request_id(c, rid);
	r.time_ms = wall_ms();
	r.node = c->audit_node;
	r.request_id = rid;
	r.principal = kms_call_principal(c);
	r.method = c->audit_method;
	r.key_id = c->audit_key[0] != '\0' ? c->audit_key : NULL;
	r.key_version = c->audit_version;
	r.code = (int)code;
	r.peer = c->local.done != NULL ? "local" : peer;
	r.items = c->audit_items;
	r.on_behalf_of = c->audit_behalf;
	r.proposal_id = c->audit_proposal;
	for (size_t i = 0; i < c->audit_n_approvers; i++)
		r.approvers[i] = c->audit_approvers[i];
	r.n_approvers = c->audit_n_approvers;
	c->audit_entry.body.len = 0;
	rc = kms_audit_call_body(&c->audit_entry.body, &r);
	if (peer != NULL)
		gpr_free(peer);
	return rc;
}

/* The writer has the record in the file (or cannot write it): now the answer. */
static void audit_written(void *arg, int rc, const char *why)
{
	kms_call *c = arg;
	grpc_byte_buffer *resp = c->pending_resp;

	c->pending_resp = NULL;
	if (rc != KMS_OK) {
		if (resp != NULL)
			grpc_byte_buffer_destroy(resp);
		send_now(c, NULL, GRPC_STATUS_UNAVAILABLE, why);
		return;
	}
	send_now(c, resp, c->pending_code, c->pending_msg);
}

/*
 * Every answer of a call from the network leaves here. An audited call
 * waits for its record: whichever thread writes it sends the answer (gRPC
 * batches may start from any thread), so no thread waits for another's
 * write.
 */
static void send_final(kms_call *c, grpc_byte_buffer *resp, grpc_status_code code,
		       const char *msg)
{
	int has_msg;

	if (c->audit == NULL) {
		send_now(c, resp, code, msg);
		return;
	}
	/* Most answers carry no message: no copy to make for them. */
	has_msg = msg != NULL && msg[0] != '\0';
	c->pending_msg = has_msg ? kms_strdup(msg) : NULL;
	if ((has_msg && c->pending_msg == NULL) || audit_body(c, code) != KMS_OK) {
		/* No record, no answer but a refusal. */
		if (resp != NULL)
			grpc_byte_buffer_destroy(resp);
		send_now(c, NULL, GRPC_STATUS_UNAVAILABLE,
			 "audit log cannot be written: out of memory for the record");
		return;
	}
	c->pending_resp = resp;
	c->pending_code = code;
	c->audit_entry.done = audit_written;
	c->audit_entry.arg = c;
	kms_audit_log_submit(c->audit, &c->audit_entry);
}

/* A local call's outcome goes to its done function, and the call ends. */
static void local_finish(kms_call *c, grpc_status_code code, const char *msg,
			 const uint8_t *resp, size_t len)
{
	kms_err err = {0};

	if (c->audit != NULL &&
	    (audit_body(c, code) != KMS_OK ||
	     kms_audit_log_write(c->audit, &c->audit_entry, &err) != KMS_OK)) {
		c->local.done(c->local.arg, GRPC_STATUS_UNAVAILABLE,
			      err.code != KMS_OK ? err.msg
						 : "audit log cannot be written: out of memory for "
						   "the record",
			      NULL, 0);
		call_free(c);
		return;
	}
	c->local.done(c->local.arg, code, msg != NULL ? msg : "", resp, len);
	call_free(c);
}

void kms_call_audit_key(kms_call *c, const char *key_id, uint64_t version)
{
	snprintf(c->audit_key, sizeof(c->audit_key), "%s", key_id != NULL ? key_id : "");
	c->audit_version = version;
}

void kms_call_audit_items(kms_call *c, unsigned n)
{
	c->audit_items = n;
}

void kms_call_audit_on_behalf_of(kms_call *c, const char *principal)
{
	kms_free(c->audit_behalf);
	c->audit_behalf = principal != NULL ? kms_strdup(principal) : NULL;
}

void kms_call_audit_proposal(kms_call *c, const char *proposal_id,
			     const char *const *approvers, size_t n_approvers)
{
	kms_free(c->audit_proposal);
	c->audit_proposal = proposal_id != NULL ? kms_strdup(proposal_id) : NULL;
	for (size_t i = 0; i < c->audit_n_approvers; i++)
		kms_free(c->audit_approvers[i]);
	c->audit_n_approvers = 0;
	for (size_t i = 0; i < n_approvers && i < KMS_AUDIT_APPROVERS_MAX; i++) {
		c->audit_approvers[i] = kms_strdup(approvers[i] != NULL ? approvers[i] : "");
		if (c->audit_approvers[i] == NULL)
			break;
		c->audit_n_approvers++;
	}
}

void kms_call_local_audit(kms_call *c, kms_audit_log *log, unsigned node)
{
	c->audit = log;
	c->audit_node = node;
}

/* Whether c, a call to m, leaves a record; if it does and the log cannot be
 * written now, c is refused (and 0 returned). */
static int audit_admit(kms_call *c, const kms_method *m, kms_audit_log *log, unsigned node)
{
	kms_err err = {0};

	c->audit = NULL;
	if (log == NULL || (m->callers & KMS_CALLERS_ANYONE))
		return 1;
	if (kms_audit_log_status(log, &err) != KMS_OK) {
		kms_call_fail(c, err.code, err.msg);
		return 0;
	}
	c->audit = log;
	c->audit_node = node;
	c->audit_method = m->path;
	return 1;
}

void kms_call_fail_grpc(kms_call *c, grpc_status_code code, const char *msg)
{
	if (c->local.done != NULL) {
		local_finish(c, code, msg, NULL, 0);
		return;
	}
	send_final(c, NULL, code, msg);
}

void kms_call_fail(kms_call *c, int kms_status, const char *msg)
{
	kms_call_fail_grpc(c, kms_status_to_grpc(kms_status), msg);
}

static void destroy_secret_slice(void *p, size_t len)
{
	kms_free_secret(p, len);
}

static void destroy_plain_slice(void *p)
{
	kms_free(p);
}

void kms_call_reply_bytes(kms_call *c, const uint8_t *resp, size_t len)
{
	grpc_slice slice;
	grpc_byte_buffer *bb;

	if (c->local.done != NULL) {
		local_finish(c, GRPC_STATUS_OK, NULL, resp, len);
		return;
	}
	slice = grpc_slice_from_copied_buffer((const char *)resp, len);
	bb = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice);
	send_final(c, bb, GRPC_STATUS_OK, NULL);
}

void kms_call_reply(kms_call *c, const ProtobufCMessage *resp, int secret)
{
	size_t len = protobuf_c_message_get_packed_size(resp);
	uint8_t *buf = kms_malloc(len);
	grpc_slice slice;
	grpc_byte_buffer *bb;

	if (buf == NULL) {
		kms_call_fail(c, KMS_ERR_NOMEM, "out of memory building the reply");
		return;
	}
	protobuf_c_message_pack(resp, buf);
	if (c->local.done != NULL) {
		local_finish(c, GRPC_STATUS_OK, NULL, buf, len);
		if (secret)
			kms_free_secret(buf, len);
		else
			kms_free(buf);
		return;
	}
	/* The slice takes the buffer; a secret one is cleansed when gRPC lets go. */
	slice = secret ? grpc_slice_new_with_len(buf, len, destroy_secret_slice)
		       : grpc_slice_new(buf, len, destroy_plain_slice);
	bb = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice);
	send_final(c, bb, GRPC_STATUS_OK, NULL);
}

const char *kms_call_principal(const kms_call *c)
{
	return c->peer.kind != KMS_PEER_NONE ? c->peer.id.id : NULL;
}

const kms_peer *kms_call_peer(const kms_call *c)
{
	return &c->peer;
}

const char *kms_call_peer_region(const kms_call *c)
{
	return c->peer.kind == KMS_PEER_REGION ? c->peer.region : "";
}

const char *kms_call_metadata(const kms_call *c, const char *key, size_t *len)
{
	size_t klen = strlen(key);

	for (size_t i = 0; i < c->local.n_md; i++) {
		if (strcmp(c->local.md[i].key, key) == 0) {
			*len = c->local.md[i].len;
			return c->local.md[i].value;
		}
	}
	for (size_t i = 0; i < c->request_md.count; i++) {
		const grpc_metadata *m = &c->request_md.metadata[i];

		if (GRPC_SLICE_LENGTH(m->key) == klen &&
		    memcmp(GRPC_SLICE_START_PTR(m->key), key, klen) == 0) {
			*len = GRPC_SLICE_LENGTH(m->value);
			return (const char *)GRPC_SLICE_START_PTR(m->value);
		}
	}
	return NULL;
}

long kms_call_deadline_ms(const kms_call *c)
{
	gpr_timespec now, end, left;

	if (c->local.done != NULL)
		return c->local.deadline == INT64_MAX ? LONG_MAX : (long)(c->local.deadline - now_ms());
	now = gpr_now(GPR_CLOCK_MONOTONIC);
	end = gpr_convert_clock_type(c->details.deadline, GPR_CLOCK_MONOTONIC);
	if (gpr_time_cmp(c->details.deadline, gpr_inf_future(c->details.deadline.clock_type)) == 0)
		return LONG_MAX;
	left = gpr_time_sub(end, now);
	return (long)gpr_time_to_millis(left);
}

void *kms_call_worker(const kms_call *c)
{
	return c->w != NULL ? c->w->wctx : c->local.wctx;
}

/* The request message; the initial metadata waits for the answer (send_final). */
static void start_receive(kms_call *c)
{
	grpc_op ops[1];
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_MESSAGE;
	ops[0].data.recv_message.recv_message = &c->recv;
	c->state = CALL_RECEIVING;
	/* On the list first: once the batch is out, another worker may take
	 * its event, and even free the call, before this one goes on. */
	recv_list_append(c);
	e = grpc_call_start_batch(c->call, ops, 1, c, NULL);
	if (e != GRPC_CALL_OK) {
		KMS_LOG_E("rpc: receiving a request failed (%d)", (int)e);
		call_free(c); /* takes it off the list */
	}
}

/*
 * Cancels the calls whose request message has not arrived within
 * request_timeout_s. Their slot in the server is what a slow or silent
 * client would otherwise hold for ever: the worker itself never waits.
 * The cancelled call's batch then completes and on_event frees it.
 */
static void sweep_late_requests(struct worker *w)
{
	kms_rpc_server *s = w->srv;
	int64_t now = now_ms(), last = atomic_load(&s->last_sweep);
	int64_t limit = now - (int64_t)s->opts.limits.request_timeout_s * 1000;

	/* Once per SWEEP_CHECK_MS of all the workers', not on every event. */
	if (now - last < SWEEP_CHECK_MS || !atomic_compare_exchange_strong(&s->last_sweep, &last, now))
		return;
	pthread_mutex_lock(&s->recv_mu);
	while (s->recv_head != NULL && s->recv_head->recv_since <= limit) {
		struct kms_call *c = s->recv_head;
		grpc_call_error e;

		recv_list_unlink(s, c);
		c->swept = 1;
		/* Under the lock: the worker that takes the call's event frees
		 * it only after it has seen it swept (recv_list_take). */
		e = grpc_call_cancel_with_status(c->call, GRPC_STATUS_DEADLINE_EXCEEDED,
						 s->request_timeout_msg, NULL);
		if (e != GRPC_CALL_OK)
			KMS_LOG_E("rpc: cancelling a call with a late request failed (%d)", (int)e);
		else
			KMS_LOG_D("rpc: %s", s->request_timeout_msg);
	}
	pthread_mutex_unlock(&s->recv_mu);
}

size_t kms_method_max_request(const kms_method *m)
{
	return m->max_request != 0 ? m->max_request : KMS_RPC_MAX_REQUEST_DEFAULT;
}

/*
 * The last checks before a handler, the same for every call: the request
 * is within the method's own limit (gRPC's receive limit is the largest
 * of all methods, which only the batch calls need), and no string field of
 * it holds a NUL byte (wire_strings.h). Then the handler, which finishes
 * the call (c may be gone when this returns).
 */
static void run_handler(const kms_method *m, void *app, kms_call *c, const uint8_t *req,
			size_t len)
{
	kms_err err = {0};
	const char *name = strrchr(m->path, '/');

	if (len > kms_method_max_request(m)) {
		kms_errf(&err, KMS_ERR_LIMIT,
			 "the request is %zu bytes, over the limit of %zu bytes for %s", len,
			 kms_method_max_request(m), name != NULL ? name + 1 : m->path);
		kms_call_fail(c, err.code, err.msg);
	} else if (kms_wire_check_strings(m->request, req, len, &err) != KMS_OK) {
		kms_call_fail(c, err.code, err.msg);
	} else {
		m->fn(app, c, req, len);
	}
}

static void dispatch(kms_call *c)
{
	const kms_method *m = find_method(c->w->srv, c->details.method);
	grpc_byte_buffer_reader reader;
	grpc_slice body;

	c->state = CALL_HANDLING;
	if (m == NULL) {
		char msg[200];

		snprintf(msg, sizeof(msg), "unknown method %.*s",
			 (int)GRPC_SLICE_LENGTH(c->details.method),
			 (const char *)GRPC_SLICE_START_PTR(c->details.method));
		kms_call_fail_grpc(c, GRPC_STATUS_UNIMPLEMENTED, msg);
		return;
	}
	if (!audit_admit(c, m, c->w->srv->opts.audit, c->w->srv->opts.node_id))
		return;
	if (c->recv == NULL) {
		kms_call_fail(c, KMS_ERR_INVALID, "the request carries no message");
		return;
	}
	if (!(m->callers & KMS_CALLERS_ANYONE)) {
		kms_err err = {0};

		if (identify_caller(c, m, &err) != KMS_OK) {
			kms_call_fail(c, err.code, err.msg);
			return;
		}
	}
	if (!grpc_byte_buffer_reader_init(&reader, c->recv)) {
		kms_call_fail(c, KMS_ERR_INVALID, "the request message cannot be read");
		return;
	}
	body = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	drop_request(c); /* body is the copy the handler reads */
	run_handler(m, c->w->srv->opts.app, c, GRPC_SLICE_START_PTR(body), GRPC_SLICE_LENGTH(body));
	/* Requests may carry plaintext (Encrypt): wipe our copy of the bytes. */
	kms_cleanse(GRPC_SLICE_START_PTR(body), GRPC_SLICE_LENGTH(body));
	grpc_slice_unref(body);
}

/* --- local calls: a handler run without the network (rpc_server.h) --- */

kms_call *kms_call_local_new(const kms_peer *peer, void *worker_ctx, long deadline_ms,
			     kms_call_done_fn done, void *arg)
{
	kms_call *c;
	int64_t now = now_ms();

	if (done == NULL)
		return NULL;
	c = kms_calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	if (peer != NULL)
		c->peer = *peer;
	c->local.done = done;
	c->local.arg = arg;
	c->local.wctx = worker_ctx;
	if (deadline_ms == LONG_MAX)
		c->local.deadline = INT64_MAX;
	else if (deadline_ms > INT64_MAX - now)
		c->local.deadline = INT64_MAX - 1;
	else
		c->local.deadline = now + deadline_ms;
	return c;
}

int kms_call_local_metadata(kms_call *c, const char *key, const char *value, size_t len,
			    kms_err *err)
{
	size_t i = c->local.n_md;

	KMS_ENSURE(c->local.done != NULL, err, KMS_ERR_INVALID,
		   "metadata can be added to a local call only");
	KMS_ENSURE(i < LOCAL_MD_MAX, err, KMS_ERR_INVALID,
		   "a local call carries at most %d metadata entries", LOCAL_MD_MAX);
	c->local.md[i].key = kms_malloc(strlen(key) + 1);
	c->local.md[i].value = kms_malloc(len + 1);
	if (c->local.md[i].key == NULL || c->local.md[i].value == NULL) {
		kms_free(c->local.md[i].key);
		kms_free(c->local.md[i].value);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for call metadata");
	}
	memcpy(c->local.md[i].key, key, strlen(key) + 1);
	if (len > 0)
		memcpy(c->local.md[i].value, value, len);
	c->local.md[i].value[len] = '\0';
	c->local.md[i].len = len;
	c->local.n_md++;
	return KMS_OK;
}

void kms_call_local_run(const kms_method *m, void *app, kms_call *c, const uint8_t *req,
			size_t len)
{
	kms_err err = {0};
	uint8_t *body;

	if (!audit_admit(c, m, c->audit, c->audit_node))
		return;
	/* As dispatch: the identity of a caller of an open method is never
	 * read, and anyone else must be one the method serves. */
	if (m->callers & KMS_CALLERS_ANYONE) {
		memset(&c->peer, 0, sizeof(c->peer));
	} else if (may_call(m, &c->peer, &err) != KMS_OK) {
		kms_call_fail(c, err.code, err.msg);
		return;
	}
	/* The handler reads a copy of exactly len bytes, freed when it
	 * returns, as it reads gRPC's: a handler that keeps the pointer past
	 * its return, or reads past the end, is caught by ASan here too. */
	body = kms_malloc(len > 0 ? len : 1);
	if (body == NULL) {
		kms_call_fail(c, KMS_ERR_NOMEM, "out of memory copying the request");
		return;
	}
	if (len > 0)
		memcpy(body, req, len);
	run_handler(m, app, c, body, len);
	kms_cleanse(body, len);
	kms_free(body);
}

static void on_event(struct worker *w, kms_call *c, int success)
{
	/* Its handler runs here, with this worker's HSM session. */
	c->w = w;
	switch (c->state) {
	case CALL_REQUESTED:
		if (!success) { /* the server is shutting down */
			call_free(c);
			return;
		}
		request_call(w);
		start_receive(c);
		return;
	case CALL_RECEIVING:
		if (recv_list_take(c) || !success) { /* too slow, or the client went away */
			call_free(c);
			return;
		}
		dispatch(c);
		return;
	case CALL_SENDING:
		call_free(c);
		return;
	case CALL_HANDLING:
		break;
	}
	KMS_LOG_E("rpc: completion for a call in state %d", (int)c->state);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	kms_rpc_server *s = w->srv;
	kms_err err = {0};
	int rc = KMS_OK;

	if (s->opts.worker_init != NULL)
		rc = s->opts.worker_init(s->opts.app, &w->wctx, &err);
	pthread_mutex_lock(&s->mu);
	if (rc != KMS_OK && !s->init_failed) {
		s->init_failed = 1;
		s->init_err = err;
	}
	s->n_ready++;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
	if (rc == KMS_OK)
		for (int i = 0; i < REQUESTS_PER_WORKER; i++)
			if (request_call(w) != KMS_OK)
				break;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			s->cq,
			gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				     gpr_time_from_millis(SWEEP_MS, GPR_TIMESPAN)),
			NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE)
			on_event(w, ev.tag, ev.success);
		sweep_late_requests(w);
	}
	if (s->opts.worker_fini != NULL && rc == KMS_OK)
		s->opts.worker_fini(s->opts.app, w->wctx);
	return NULL;
}

/* --- TLS: the files gRPC's certificate provider watches, and the CRL --- */

static void crl_slot_unref(struct crl_slot *slot)
{
	if (slot == NULL || atomic_fetch_sub(&slot->refs, 1) != 1)
		return;
	X509_CRL_free(slot->crl);
	pthread_mutex_destroy(&slot->mu);
	kms_free(slot);
}

/*
 * gRPC's custom verification step of the handshake (after OpenSSL has
 * verified the client's chain against the roots): refuses a certificate the
 * client CA has revoked. A refusal fails the handshake, so the client sees
 * UNAVAILABLE and no call of it ever reaches a worker.
 */
static int verify_not_revoked(void *user_data, grpc_tls_custom_verification_check_request *req,
			      grpc_tls_on_custom_verification_check_done_cb cb, void *cb_arg,
			      grpc_status_code *sync_status, char **sync_error_details)
{
	struct crl_slot *slot = user_data;
	const char *pem = req->peer_info.peer_cert;
	kms_err err = {0};
	X509_CRL *crl;

	(void)cb;
	(void)cb_arg;
	pthread_mutex_lock(&slot->mu);
	crl = slot->crl;
	if (crl != NULL && X509_CRL_up_ref(crl) != 1)
		crl = NULL; /* cannot happen short of memory corruption */
	pthread_mutex_unlock(&slot->mu);
	if (kms_tls_crl_check(crl, pem, pem != NULL ? strlen(pem) : 0, &err) != KMS_OK) {
		KMS_LOG_W("rpc: refused a client at the TLS handshake: %s", err.msg);
		*sync_status = GRPC_STATUS_UNAUTHENTICATED;
		*sync_error_details = gpr_strdup(err.msg);
	} else {
		*sync_status = GRPC_STATUS_OK;
	}
	X509_CRL_free(crl);
	return 1; /* answered synchronously */
}

/* verify_not_revoked answers at once: nothing to cancel. */
static void verify_cancel(void *user_data, grpc_tls_custom_verification_check_request *req)
{
	(void)user_data;
	(void)req;
}

static void verifier_destruct(void *user_data)
{
	crl_slot_unref(user_data);
}

/* Writes the parts to dir/.name.tmp, for tls_commit to rename over dir/name:
 * the provider never reads a half-written file. */
static int tls_write_tmp(const char *dir, const char *name, const char *const *parts, size_t n,
			 kms_err *err)
{
	char tmp[PATH_MAX];
	int fd, rc = KMS_OK;

	if (snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp))
		return kms_errf(err, KMS_ERR_IO, "rpc: TLS directory path too long");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return kms_errf(err, KMS_ERR_IO, "rpc: cannot write %s: %s", tmp, strerror(errno));
	for (size_t i = 0; i < n && rc == KMS_OK; i++) {
		size_t len = strlen(parts[i]), off = 0;

		while (off < len) {
			ssize_t w = write(fd, parts[i] + off, len - off);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = kms_errf(err, KMS_ERR_IO, "rpc: cannot write %s: %s", tmp,
					      strerror(errno));
				break;
			}
			off += (size_t)w;
		}
	}
	if (close(fd) != 0 && rc == KMS_OK)
		rc = kms_errf(err, KMS_ERR_IO, "rpc: cannot write %s: %s", tmp, strerror(errno));
	if (rc != KMS_OK)
		unlink(tmp);
	return rc;
}

static int tls_commit(const char *dir, const char *name, kms_err *err)
{
	char path[PATH_MAX], tmp[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp))
		return kms_errf(err, KMS_ERR_IO, "rpc: TLS directory path too long");
	if (rename(tmp, path) != 0)
		return kms_errf(err, KMS_ERR_IO, "rpc: cannot rename %s: %s", tmp, strerror(errno));
	return KMS_OK;
}

/*
 * Writes chain.pem (when chain is not NULL) and roots.pem from client_ca,
 * node_ca and extra, then puts them in force together; under tls_mu.
 */
static int tls_write_roots(kms_rpc_server *s, const char *chain, const char *client_ca,
			   const char *node_ca, const char *extra, kms_err *err)
{
	/* All the CAs verify the handshake; authn then tells which one issued
	 * the caller's certificate, so that only the node CA can name a node
	 * and only a region's node CA a node of that region. */
	const char *roots[] = {client_ca, "\n", node_ca, "\n", extra != NULL ? extra : ""};
	int rc = KMS_OK;

	if (chain != NULL)
		rc = tls_write_tmp(s->tls_dir, "chain.pem", &chain, 1, err);
	if (rc == KMS_OK)
		rc = tls_write_tmp(s->tls_dir, "roots.pem", roots, 5, err);
	if (rc == KMS_OK && chain != NULL)
		rc = tls_commit(s->tls_dir, "chain.pem", err);
	if (rc == KMS_OK)
		rc = tls_commit(s->tls_dir, "roots.pem", err);
	return rc;
}

/* Replaces *slot with a copy of v (NULL: none). */
static int keep_copy(char **slot, const char *v, kms_err *err)
{
	char *copy = NULL;

	if (v != NULL && (copy = kms_strdup(v)) == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "rpc: out of memory keeping the TLS roots");
	kms_free(*slot);
	*slot = copy;
	return KMS_OK;
}

int kms_rpc_server_set_tls(kms_rpc_server *s, const kms_tls_files *tls, kms_err *err)
{
	X509_CRL *old = NULL, *crl = tls->crl;
	char *client_ca = NULL, *node_ca = NULL;
	int rc;

	if (crl != NULL && X509_CRL_up_ref(crl) != 1)
		return kms_errf(err, KMS_ERR_INTERNAL, "rpc: cannot take a reference to the CRL");
	/* The copies kms_rpc_server_set_extra_roots writes roots.pem from. */
	rc = keep_copy(&client_ca, tls->client_ca, err);
	if (rc == KMS_OK)
		rc = keep_copy(&node_ca, tls->node_ca, err);
	pthread_mutex_lock(&s->tls_mu);
	if (rc == KMS_OK)
		rc = tls_write_roots(s, tls->cert_chain, tls->client_ca, tls->node_ca,
				     s->roots_extra, err);
	if (rc == KMS_OK) {
		kms_free(s->roots_client_ca);
		kms_free(s->roots_node_ca);
		s->roots_client_ca = client_ca;
		s->roots_node_ca = node_ca;
		client_ca = node_ca = NULL;
	}
	pthread_mutex_unlock(&s->tls_mu);
	kms_free(client_ca);
	kms_free(node_ca);
	if (rc != KMS_OK) {
		X509_CRL_free(crl);
		return rc;
	}
	pthread_mutex_lock(&s->crl->mu);
	old = s->crl->crl;
	s->crl->crl = crl;
	pthread_mutex_unlock(&s->crl->mu);
	X509_CRL_free(old);
	return KMS_OK;
}

int kms_rpc_server_set_extra_roots(kms_rpc_server *s, const char *pem, kms_err *err)
{
	char *extra = NULL;
	int rc;

	if (pem != NULL && pem[0] != '\0') {
		/* A root gRPC cannot read would stop every handshake. */
		KMS_TRY(kms_tls_parse_certs(pem, strlen(pem), "extra TLS roots", KMS_ERR_INVALID,
					    NULL, err));
		KMS_TRY(keep_copy(&extra, pem, err));
	}
	pthread_mutex_lock(&s->tls_mu);
	if (s->roots_client_ca == NULL || s->roots_node_ca == NULL)
		rc = kms_errf(err, KMS_ERR_INTERNAL, "rpc: no TLS roots in force to add to");
	else
		rc = tls_write_roots(s, NULL, s->roots_client_ca, s->roots_node_ca, extra, err);
	if (rc == KMS_OK) {
		kms_free(s->roots_extra);
		s->roots_extra = extra;
		extra = NULL;
	}
	pthread_mutex_unlock(&s->tls_mu);
	kms_free(extra);
	return rc;
}

/* Removes a TLS directory and the files we put there (nothing else: a
 * directory holding anything more stays). */
static void tls_dir_remove_path(const char *dir)
{
	static const char *const names[] = {"key",	     "chain.pem",      "roots.pem", "pid",
					    ".key.tmp", ".chain.pem.tmp", ".roots.pem.tmp"};
	char path[PATH_MAX];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) < (int)sizeof(path))
			unlink(path);
	rmdir(dir);
}

static void tls_dir_remove(kms_rpc_server *s)
{
	if (s->tls_dir[0] == '\0')
		return;
	tls_dir_remove_path(s->tls_dir);
	s->tls_dir[0] = '\0';
}

/*
 * A node killed with SIGKILL leaves its TLS directory behind (public
 * certificates and the key's URI only). At start-up, remove those of our
 * user whose "pid" names no live process.
 */
static void tls_dirs_sweep_stale(const char *parent)
{
	DIR *d = opendir(parent);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		char dir[PATH_MAX], pidfile[PATH_MAX], buf[32] = "";
		struct stat sb;
		FILE *f;
		long pid = 0;

		if (strncmp(e->d_name, "kmsd-tls-", 9) != 0 ||
		    snprintf(dir, sizeof(dir), "%s/%s", parent, e->d_name) >= (int)sizeof(dir) ||
		    snprintf(pidfile, sizeof(pidfile), "%s/pid", dir) >= (int)sizeof(pidfile) ||
		    lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != geteuid())
			continue;
		f = fopen(pidfile, "re");
		if (f == NULL)
			continue; /* being made right now, or not ours */
		if (fgets(buf, sizeof(buf), f) != NULL)
			pid = strtol(buf, NULL, 10);
		fclose(f);
		if (pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
			tls_dir_remove_path(dir);
	}
	closedir(d);
}

/*
 * The server credentials. Why gRPC's TLS credentials API (experimental in
 * 1.51) and not the older SSL one with a certificate config fetcher, which
 * also swaps the chain and roots per handshake:
 *  - a revoked client must be refused at the handshake. The SSL API has no
 *    hook for that in 1.51 (its handshaker factory never sets a CRL), and
 *    its per-call auth metadata processor would let the TLS session up and
 *    refuse only the calls. The TLS API runs a custom verifier after
 *    OpenSSL has verified the chain, and a refusal there fails the
 *    handshake. (Its own crl_directory option fails open: an unreadable
 *    directory or a missing CRL only logs, per tsi's verify_cb; so we check
 *    the CRL ourselves, in verify_not_revoked, and fail closed.)
 *  - the chain and roots come from a file-watching certificate provider
 *    (the only reloadable provider 1.51 offers from C). We write its files
 *    ourselves, only with a set kms_tls_files_load has checked, because the
 *    TLS API drops its handshaker factory before building the new one: a bad
 *    file would stop every handshake. Its "private key" file holds the
 *    engine key string, so the key stays in the HSM as before.
 *  - the fetcher path of the SSL API also reads its handshaker factory
 *    outside its lock (ssl_security_connector.cc, add_handshakers), a race
 *    with a concurrent reload that the TLS API does not have.
 * The TLS version and cipher policy are process-wide (tls_policy.h): both
 * APIs build their SSL_CTX the same way.
 */
static grpc_server_credentials *make_credentials(kms_rpc_server *s, kms_err *err)
{
	char key[PATH_MAX], chain[PATH_MAX], roots[PATH_MAX];
	const char *key_parts[] = {s->opts.private_key};
	grpc_tls_credentials_options *o;
	grpc_tls_certificate_provider *provider;
	grpc_tls_certificate_verifier *verifier;
	grpc_server_credentials *creds;
	struct crl_slot *slot = s->crl;

	if (snprintf(key, sizeof(key), "%s/key", s->tls_dir) >= (int)sizeof(key) ||
	    snprintf(chain, sizeof(chain), "%s/chain.pem", s->tls_dir) >= (int)sizeof(chain) ||
	    snprintf(roots, sizeof(roots), "%s/roots.pem", s->tls_dir) >= (int)sizeof(roots)) {
		kms_errf(err, KMS_ERR_IO, "rpc: TLS directory path too long");
		return NULL;
	}
	if (tls_write_tmp(s->tls_dir, "key", key_parts, 1, err) != KMS_OK ||
	    tls_commit(s->tls_dir, "key", err) != KMS_OK ||
	    kms_rpc_server_set_tls(s, s->opts.tls, err) != KMS_OK)
		return NULL;
	provider = grpc_tls_certificate_provider_file_watcher_create(key, chain, roots,
								     TLS_REFRESH_S);
	if (provider == NULL) {
		kms_errf(err, KMS_ERR_CONFIG, "rpc: cannot create the TLS certificate provider");
		return NULL;
	}
	slot->ext.user_data = slot;
	slot->ext.verify = verify_not_revoked;
	slot->ext.cancel = verify_cancel;
	slot->ext.destruct = verifier_destruct;
	atomic_fetch_add(&slot->refs, 1); /* the verifier's, dropped by verifier_destruct */
	verifier = grpc_tls_certificate_verifier_external_create(&slot->ext);
	o = grpc_tls_credentials_options_create();
	if (verifier == NULL || o == NULL) {
		/* 1.51 has no destroy for options: they cannot be NULL here short
		 * of an allocation failure, which gRPC aborts on anyway. */
		if (verifier != NULL)
			grpc_tls_certificate_verifier_release(verifier);
		else
			crl_slot_unref(slot);
		grpc_tls_certificate_provider_release(provider);
		kms_errf(err, KMS_ERR_NOMEM, "rpc: cannot create the TLS credential options");
		return NULL;
	}
	/* The options take their own references to the provider and verifier. */
	grpc_tls_credentials_options_set_certificate_provider(o, provider);
	grpc_tls_certificate_provider_release(provider);
	grpc_tls_credentials_options_watch_root_certs(o);
	grpc_tls_credentials_options_watch_identity_key_cert_pairs(o);
	/* Clients must present a certificate that chains to one of our CAs. */
	grpc_tls_credentials_options_set_cert_request_type(
		o, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
	grpc_tls_credentials_options_set_certificate_verifier(o, verifier);
	grpc_tls_certificate_verifier_release(verifier);
	creds = grpc_tls_server_credentials_create(o); /* takes o */
	if (creds == NULL)
		kms_errf(err, KMS_ERR_CONFIG, "rpc: gRPC refused the TLS credentials");
	return creds;
}

static void server_free(kms_rpc_server *s)
{
	if (s->server != NULL)
		grpc_server_destroy(s->server);
	if (s->cq != NULL)
		grpc_completion_queue_destroy(s->cq);
	pthread_mutex_destroy(&s->recv_mu);
	if (s->shutdown_cq != NULL)
		grpc_completion_queue_destroy(s->shutdown_cq);
	kms_free(s->workers);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->tls_mu);
	kms_free(s->roots_client_ca);
	kms_free(s->roots_node_ca);
	kms_free(s->roots_extra);
	crl_slot_unref(s->crl); /* the verifier may hold the last reference */
	grpc_shutdown();
	tls_dir_remove(s);
	kms_free(s);
}

static void drain_and_join(kms_rpc_server *s)
{
	grpc_server_shutdown_and_notify(s->server, s->shutdown_cq, s);
	grpc_server_cancel_all_calls(s->server);
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			s->shutdown_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);

		if (ev.type == GRPC_OP_COMPLETE && ev.tag == s)
			break;
	}
	grpc_completion_queue_shutdown(s->cq);
	for (unsigned i = 0; i < s->n_workers; i++)
		if (s->workers[i].started)
			pthread_join(s->workers[i].thread, NULL);
	grpc_completion_queue_shutdown(s->shutdown_cq);
	while (grpc_completion_queue_next(s->shutdown_cq,
					  gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
}

/* A seconds limit as gRPC's int milliseconds (config.c bounds it). */
static grpc_arg int_arg(const char *key, long long value)
{
	grpc_arg a;

	a.type = GRPC_ARG_INTEGER;
	a.key = (char *)key;
	a.value.integer = value > INT_MAX ? INT_MAX : (int)value;
	return a;
}

/*
 * The server's channel arguments: the message size, and the limits that keep
 * a slow or hostile client from degrading others. An unauthenticated peer
 * can hold only a TCP connection in its handshake, for handshake_timeout_s;
 * an authenticated one a bounded number of streams, each for at most
 * request_timeout_s before its request arrives (sweep_late_requests), and a
 * connection for at most max_connection_age_s (which also bounds how long a
 * connection outlives a certificate reload).
 */
static void make_args(const kms_rpc_server_opts *o, grpc_arg *a, size_t *n)
{
	const kms_rpc_limits *l = &o->limits;
	size_t i = 0, max_request = KMS_RPC_MAX_REQUEST_DEFAULT;

	/* gRPC has one receive limit per server: the largest of the methods';
	 * run_handler holds each method to its own. */
	for (size_t m = 0; m < o->n_methods; m++)
		if (kms_method_max_request(&o->methods[m]) > max_request)
			max_request = kms_method_max_request(&o->methods[m]);
	a[i++] = int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (long long)max_request);
	a[i++] = int_arg(GRPC_ARG_MAX_CONCURRENT_STREAMS, l->max_concurrent_streams);
	a[i++] = int_arg(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, l->handshake_timeout_s * 1000LL);
	a[i++] = int_arg(GRPC_ARG_KEEPALIVE_TIME_MS, l->keepalive_time_s * 1000LL);
	a[i++] = int_arg(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, l->keepalive_timeout_s * 1000LL);
	/* A client pinging more often than this without data gets GOAWAY after
	 * two strikes (gRPC's default count, set here so it is visible). */
	a[i++] = int_arg(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
			 l->min_ping_interval_s * 1000LL);
	a[i++] = int_arg(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
	a[i++] = int_arg(GRPC_ARG_MAX_CONNECTION_IDLE_MS, l->max_connection_idle_s * 1000LL);
	a[i++] = int_arg(GRPC_ARG_MAX_CONNECTION_AGE_MS, l->max_connection_age_s * 1000LL);
	a[i++] = int_arg(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
			 l->max_connection_age_grace_s * 1000LL);
	*n = i;
}

static int limits_ok(const kms_rpc_limits *l)
{
	return l->max_concurrent_streams > 0 && l->handshake_timeout_s > 0 &&
	       l->keepalive_time_s > 0 && l->keepalive_timeout_s > 0 &&
	       l->min_ping_interval_s > 0 && l->max_connection_idle_s > 0 &&
	       l->max_connection_age_s > 0 && l->max_connection_age_grace_s > 0 &&
	       l->request_timeout_s > 0;
}

static int make_tls_dir(kms_rpc_server *s, kms_err *err)
{
	const char *tmp = getenv("TMPDIR");
	char pid[32];
	const char *pid_parts[] = {pid};

	tmp = tmp != NULL && tmp[0] == '/' ? tmp : "/tmp";
	tls_dirs_sweep_stale(tmp);
	if (snprintf(s->tls_dir, sizeof(s->tls_dir), "%s/kmsd-tls-XXXXXX", tmp) >=
	    (int)sizeof(s->tls_dir)) {
		s->tls_dir[0] = '\0';
		return kms_errf(err, KMS_ERR_CONFIG, "rpc: TMPDIR is too long");
	}
	/* mkdtemp makes it 0700: only this user reads the (public) files. */
	if (mkdtemp(s->tls_dir) == NULL) {
		int e = errno;

		s->tls_dir[0] = '\0';
		return kms_errf(err, KMS_ERR_IO, "rpc: cannot create a directory for the TLS "
				"files: %s", strerror(e));
	}
	snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	KMS_TRY(tls_write_tmp(s->tls_dir, "pid", pid_parts, 1, err));
	return tls_commit(s->tls_dir, "pid", err);
}

int kms_rpc_server_start(const kms_rpc_server_opts *opts, kms_rpc_server **out,
			 kms_err *err)
{
	kms_rpc_server *s = NULL;
	grpc_server_credentials *creds = NULL;
	grpc_arg arg[16];
	grpc_channel_args args;
	size_t n_args;
	int rc = KMS_OK;
	int started = 0;

	KMS_ENSURE(opts->workers >= 1, err, KMS_ERR_CONFIG, "at least one worker is needed");
	KMS_ENSURE(opts->tls != NULL && limits_ok(&opts->limits), err, KMS_ERR_CONFIG,
		   "the gRPC server needs its TLS files and non-zero limits");
	grpc_init();
	s = kms_calloc(1, sizeof(*s));
	if (s == NULL) {
		grpc_shutdown();
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the gRPC server");
	}
	s->opts = *opts;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cond, NULL);
	pthread_mutex_init(&s->tls_mu, NULL);
	pthread_mutex_init(&s->recv_mu, NULL);
	atomic_init(&s->last_sweep, 0);
	snprintf(s->request_timeout_msg, sizeof(s->request_timeout_msg),
		 "the request message did not arrive within %u s", opts->limits.request_timeout_s);
	s->n_workers = opts->workers;
	s->workers = kms_calloc(s->n_workers, sizeof(*s->workers));
	s->crl = kms_calloc(1, sizeof(*s->crl));
	if (s->crl != NULL) {
		pthread_mutex_init(&s->crl->mu, NULL);
		atomic_init(&s->crl->refs, 1);
	}
	if (s->workers == NULL || s->crl == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the gRPC server");
		goto fail;
	}
	KMS_TRY_GOTO(rc, make_tls_dir(s, err), fail);
	creds = make_credentials(s, err);
	/* Both belong to the caller, who may free them once we return. */
	s->opts.tls = NULL;
	s->opts.private_key = NULL;
	if (creds == NULL) {
		rc = err != NULL && err->code != KMS_OK ? err->code : KMS_ERR_CONFIG;
		goto fail;
	}
	make_args(opts, arg, &n_args);
	args.num_args = n_args;
	args.args = arg;
	s->server = grpc_server_create(&args, NULL);
	s->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->cq, NULL);
	for (unsigned i = 0; i < s->n_workers; i++)
		s->workers[i].srv = s;
	s->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->shutdown_cq, NULL);
	/* 0 here means gRPC could not bind the address. (The key, the chain and
	 * the CAs were checked together by kms_tls_files_load before.) */
	if (grpc_server_add_http2_port(s->server, opts->listen, creds) == 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "cannot serve gRPC on %s: the address is in use or invalid",
			      opts->listen);
		goto fail;
	}
	grpc_server_start(s->server);
	started = 1;
	for (unsigned i = 0; i < s->n_workers; i++) {
		if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
			rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot start a gRPC worker thread");
			goto fail;
		}
		s->workers[i].started = 1;
	}
	pthread_mutex_lock(&s->mu);
	while (s->n_ready < s->n_workers)
		pthread_cond_wait(&s->cond, &s->mu);
	pthread_mutex_unlock(&s->mu);
	if (s->init_failed) {
		if (err != NULL)
			*err = s->init_err;
		rc = s->init_err.code != KMS_OK ? s->init_err.code : KMS_ERR_INTERNAL;
		goto fail;
	}
	grpc_server_credentials_release(creds);
	*out = s;
	return KMS_OK;
fail:
	if (creds != NULL)
		grpc_server_credentials_release(creds);
	if (started) {
		drain_and_join(s);
	} else if (s->server != NULL) {
		/* Never started: shut the queues down and drain them, as gRPC
		 * requires before grpc_completion_queue_destroy. */
		for (unsigned i = 0; i < 2; i++) {
			grpc_completion_queue *cq = i == 0 ? s->cq : s->shutdown_cq;

			if (cq == NULL)
				continue;
			grpc_completion_queue_shutdown(cq);
			while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
				       .type != GRPC_QUEUE_SHUTDOWN)
				;
		}
	}
	server_free(s);
	return rc;
}

void kms_rpc_server_stop(kms_rpc_server *s)
{
	if (s == NULL)
		return;
	drain_and_join(s);
	server_free(s);
}
