/* rpc_server.c - unary gRPC calls over mutual TLS on the gRPC core API: one completion queue and HSM session per worker thread. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "rpc_server.h"
#include "status_map.h"
#include "wire_strings.h"

/* Calls each worker keeps requested, so that a burst finds a call waiting. */
#define REQUESTS_PER_WORKER 32
/* Larger than any valid request (4 KiB plaintext, 8 KiB context, a blob):
 * gRPC refuses bigger ones with RESOURCE_EXHAUSTED before we parse them. */
#define MAX_REQUEST_BYTES (64 * 1024)

struct worker {
	kms_rpc_server *srv;
	grpc_completion_queue *cq;
	pthread_t thread;
	int started;
	void *wctx;
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
};

enum call_state { CALL_REQUESTED, CALL_RECEIVING, CALL_HANDLING, CALL_SENDING };

struct kms_call {
	struct worker *w;
	enum call_state state;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array request_md;
	grpc_byte_buffer *recv;
	grpc_slice status_details;
	int has_status_details;
	int cancelled;
	kms_peer peer;
};

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

static void call_free(struct kms_call *c)
{
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
				     &c->request_md, w->cq, w->cq, c);
	if (e != GRPC_CALL_OK) {
		KMS_LOG_E("rpc: grpc_server_request_call failed (%d)", (int)e);
		call_free(c);
		return KMS_ERR_UNAVAILABLE;
	}
	return KMS_OK;
}

/*
 * Identifies the caller from the leaf certificate the handshake verified
 * (gRPC's x509_pem_cert property). gRPC's SAN property would also hand over
 * DNS and e-mail names, which never name a principal: read the certificate.
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
	if (m->callers & (1u << c->peer.kind))
		return KMS_OK;
	if (c->peer.kind == KMS_PEER_NODE)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"node identities may call only kms.v1.Internal, not %.*s",
				(int)GRPC_SLICE_LENGTH(c->details.method),
				(const char *)GRPC_SLICE_START_PTR(c->details.method));
	return kms_errf(err, KMS_ERR_PERMISSION,
			"principal '%.200s' is not a kmsd node: kms.v1.Internal serves only node "
			"identities with certificates from the node CA",
			c->peer.id.id);
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

static void send_final(kms_call *c, grpc_byte_buffer *resp, grpc_status_code code,
		       const char *msg)
{
	grpc_op ops[3];
	grpc_op *op = ops;
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	c->state = CALL_SENDING;
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

void kms_call_fail_grpc(kms_call *c, grpc_status_code code, const char *msg)
{
	send_final(c, NULL, code, msg);
}

void kms_call_fail(kms_call *c, int kms_status, const char *msg)
{
	send_final(c, NULL, kms_status_to_grpc(kms_status), msg);
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
	grpc_slice slice = grpc_slice_from_copied_buffer((const char *)resp, len);
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);

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

const char *kms_call_metadata(const kms_call *c, const char *key, size_t *len)
{
	size_t klen = strlen(key);

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
	gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
	gpr_timespec end = gpr_convert_clock_type(c->details.deadline, GPR_CLOCK_MONOTONIC);
	gpr_timespec left;

	if (gpr_time_cmp(c->details.deadline, gpr_inf_future(c->details.deadline.clock_type)) == 0)
		return LONG_MAX;
	left = gpr_time_sub(end, now);
	return (long)gpr_time_to_millis(left);
}

void *kms_call_worker(const kms_call *c)
{
	return c->w->wctx;
}

static void start_receive(kms_call *c)
{
	grpc_op ops[2];
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = 0;
	ops[1].op = GRPC_OP_RECV_MESSAGE;
	ops[1].data.recv_message.recv_message = &c->recv;
	c->state = CALL_RECEIVING;
	e = grpc_call_start_batch(c->call, ops, 2, c, NULL);
	if (e != GRPC_CALL_OK) {
		KMS_LOG_E("rpc: receiving a request failed (%d)", (int)e);
		call_free(c);
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
	{
		kms_err err = {0};

		if (kms_wire_check_strings(m->request, GRPC_SLICE_START_PTR(body),
					   GRPC_SLICE_LENGTH(body), &err) != KMS_OK)
			kms_call_fail(c, err.code, err.msg);
		else
			m->fn(c->w->srv->opts.app, c, GRPC_SLICE_START_PTR(body),
			      GRPC_SLICE_LENGTH(body));
	}
	/* Requests may carry plaintext (Encrypt): wipe our copy of the bytes. */
	kms_cleanse(GRPC_SLICE_START_PTR(body), GRPC_SLICE_LENGTH(body));
	grpc_slice_unref(body);
}

static void on_event(struct worker *w, kms_call *c, int success)
{
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
		if (!success) { /* the client went away */
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
			w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE)
			on_event(w, ev.tag, ev.success);
	}
	if (s->opts.worker_fini != NULL && rc == KMS_OK)
		s->opts.worker_fini(s->opts.app, w->wctx);
	return NULL;
}

static int read_file(const char *path, char **out, kms_err *err)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (f == NULL)
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read %s: %m", path);
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || n > 1024 * 1024 ||
	    fseek(f, 0, SEEK_SET) != 0) {
		fclose(f);
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read %s: bad size", path);
	}
	buf = kms_malloc((size_t)n + 1);
	if (buf == NULL) {
		fclose(f);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory reading %s", path);
	}
	if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		kms_free(buf);
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read %s", path);
	}
	fclose(f);
	buf[n] = '\0';
	*out = buf;
	return KMS_OK;
}

static void server_free(kms_rpc_server *s)
{
	if (s->server != NULL)
		grpc_server_destroy(s->server);
	for (unsigned i = 0; i < s->n_workers; i++)
		if (s->workers[i].cq != NULL)
			grpc_completion_queue_destroy(s->workers[i].cq);
	if (s->shutdown_cq != NULL)
		grpc_completion_queue_destroy(s->shutdown_cq);
	kms_free(s->workers);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	kms_free(s);
	grpc_shutdown();
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
	for (unsigned i = 0; i < s->n_workers; i++)
		grpc_completion_queue_shutdown(s->workers[i].cq);
	for (unsigned i = 0; i < s->n_workers; i++)
		if (s->workers[i].started)
			pthread_join(s->workers[i].thread, NULL);
	grpc_completion_queue_shutdown(s->shutdown_cq);
	while (grpc_completion_queue_next(s->shutdown_cq,
					  gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
}

int kms_rpc_server_start(const kms_rpc_server_opts *opts, kms_rpc_server **out,
			 kms_err *err)
{
	kms_rpc_server *s = NULL;
	grpc_server_credentials *creds = NULL;
	grpc_ssl_pem_key_cert_pair pair;
	char *ca = NULL, *node_ca = NULL, *roots = NULL, *cert = NULL;
	size_t roots_len;
	grpc_arg arg;
	grpc_channel_args args;
	int rc = KMS_OK;
	int started = 0;

	KMS_ENSURE(opts->workers >= 1, err, KMS_ERR_CONFIG, "at least one worker is needed");
	grpc_init();
	s = kms_calloc(1, sizeof(*s));
	if (s == NULL) {
		grpc_shutdown();
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the gRPC server");
	}
	s->opts = *opts;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->n_workers = opts->workers;
	s->workers = kms_calloc(s->n_workers, sizeof(*s->workers));
	if (s->workers == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the gRPC server");
		goto fail;
	}
	KMS_TRY_GOTO(rc, read_file(opts->ca_file, &ca, err), fail);
	KMS_TRY_GOTO(rc, read_file(opts->node_ca_file, &node_ca, err), fail);
	KMS_TRY_GOTO(rc, read_file(opts->cert_file, &cert, err), fail);
	/* Both CAs verify the handshake; authn then tells which one issued the
	 * caller's certificate, so that only the node CA can name a node. */
	roots_len = strlen(ca) + 1 + strlen(node_ca) + 1;
	roots = kms_malloc(roots_len);
	if (roots == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the gRPC server");
		goto fail;
	}
	snprintf(roots, roots_len, "%s\n%s", ca, node_ca);
	pair.private_key = opts->private_key;
	pair.cert_chain = cert;
	/* Clients must present a certificate that chains to our CA. */
	creds = grpc_ssl_server_credentials_create_ex(
		roots, &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
	if (creds == NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "gRPC refused the TLS credentials");
		goto fail;
	}
	arg.type = GRPC_ARG_INTEGER;
	arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	arg.value.integer = MAX_REQUEST_BYTES;
	args.num_args = 1;
	args.args = &arg;
	s->server = grpc_server_create(&args, NULL);
	for (unsigned i = 0; i < s->n_workers; i++) {
		s->workers[i].srv = s;
		s->workers[i].cq = grpc_completion_queue_create_for_next(NULL);
		grpc_server_register_completion_queue(s->server, s->workers[i].cq, NULL);
	}
	s->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->shutdown_cq, NULL);
	/* 0 here means gRPC could not use the key (wrong PIN, object missing
	 * from the token), the certificate, or the address. */
	if (grpc_server_add_http2_port(s->server, opts->listen, creds) == 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "cannot serve gRPC on %s: the address is in use or invalid, or the TLS "
			      "certificate %s and key %s cannot be used (check the token, key label and PIN)",
			      opts->listen, opts->cert_file, opts->private_key);
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
	kms_free(ca);
	kms_free(node_ca);
	kms_free(roots);
	kms_free(cert);
	*out = s;
	return KMS_OK;
fail:
	if (creds != NULL)
		grpc_server_credentials_release(creds);
	kms_free(ca);
	kms_free(node_ca);
	kms_free(roots);
	kms_free(cert);
	if (started) {
		drain_and_join(s);
	} else if (s->server != NULL) {
		/* Never started: shut the queues down and drain them, as gRPC
		 * requires before grpc_completion_queue_destroy. */
		for (unsigned i = 0; i <= s->n_workers; i++) {
			grpc_completion_queue *cq =
				i < s->n_workers ? s->workers[i].cq : s->shutdown_cq;

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
