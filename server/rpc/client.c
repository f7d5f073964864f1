/* client.c - a blocking mutual-TLS unary gRPC client over gRPC core and
 * protobuf-c (kms/client.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "kms/alloc.h"
#include "kms/batch.h"
#include "kms/client.h"
#include "kms/log.h"
#include "kms/spiffe.h"

/* PEM files are small; anything bigger is not a certificate or a key. */
#define PEM_MAX_BYTES (1024 * 1024)
#define DEFAULT_TIMEOUT_MS 10000
/* Reconnect backoff of every channel (see kms_client_open). */
#define KMS_CLIENT_RECONNECT_INITIAL_MS 250
#define KMS_CLIENT_RECONNECT_MAX_MS 2000

struct kms_client {
	grpc_channel *channel;
	int timeout_ms;
	char consistency[32]; /* sent as KMS_CONSISTENCY_HEADER when set */
};

/*
 * Reads a whole PEM file into a NUL-terminated kms_malloc'd string of *out_cap
 * bytes; the caller frees it (kms_free_secret(*out, *out_cap) for a private
 * key).
 */
static int read_pem(const char *path, const char *what, char **out,
		    size_t *out_cap, kms_err *err)
{
	FILE *f = NULL;
	char *data = NULL;
	size_t len = 0, cap = 4096;
	int rc = KMS_OK;

	*out = NULL;
	*out_cap = 0;
	f = fopen(path, "re");
	if (f == NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "cannot read %s '%s': %s",
			      what, path, strerror(errno));
		goto out;
	}
	data = kms_malloc(cap);
	if (data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading %s",
			      what);
		goto out;
	}
	for (;;) {
		size_t n;

		if (cap - len < 2) {
			char *bigger;

			if (cap >= PEM_MAX_BYTES) {
				rc = kms_errf(err, KMS_ERR_CONFIG,
					      "%s '%s' is larger than %d bytes",
					      what, path, PEM_MAX_BYTES);
				goto out;
			}
			/* Copy to grow: realloc may leave key bytes behind. */
			bigger = kms_malloc(cap * 2);
			if (bigger == NULL) {
				rc = kms_errf(err, KMS_ERR_NOMEM,
					      "out of memory reading %s", what);
				goto out;
			}
			memcpy(bigger, data, len);
			kms_free_secret(data, cap);
			data = bigger;
			cap *= 2;
		}
		n = fread(data + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0) {
			if (ferror(f)) {
				rc = kms_errf(err, KMS_ERR_CONFIG,
					      "cannot read %s '%s': read error",
					      what, path);
				goto out;
			}
			break;
		}
	}
	if (len == 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG, "%s '%s' is empty", what,
			      path);
		goto out;
	}
	data[len] = '\0';
	if (strlen(data) != len) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "%s '%s' is not a PEM file (NUL byte)", what,
			      path);
		goto out;
	}
	*out = data;
	*out_cap = cap;
	data = NULL;
out:
	if (data != NULL)
		kms_free_secret(data, cap);
	if (f != NULL)
		fclose(f);
	return rc;
}

/*
 * gRPC's verify_peer_callback: 0 lets the handshake go on. Runs after the
 * chain and host name were verified, on a gRPC thread.
 */
static int verify_server_identity(const char *target, const char *peer_pem, void *want)
{
	const char *expected = want;
	size_t n = strlen(expected);
	kms_spiffe_id id;
	kms_err err = {0};
	int ok;

	if (peer_pem == NULL ||
	    kms_svid_from_pem(peer_pem, strlen(peer_pem), &id, &err) != KMS_OK) {
		KMS_LOG_W("%s: refused the server: %s", target,
			  err.msg[0] != '\0' ? err.msg : "no certificate");
		return 1;
	}
	ok = expected[n - 1] == '/' ? id.len > n && strncmp(id.id, expected, n) == 0
				     : strcmp(id.id, expected) == 0;
	if (!ok)
		KMS_LOG_W("%s: refused the server: it is '%s', not %s'%s'", target, id.id,
			  expected[n - 1] == '/' ? "below " : "", expected);
	return ok ? 0 : 1;
}

static void free_expected(void *p)
{
	kms_free(p);
}

int kms_client_open(const kms_client_opts *opts, kms_client **out, kms_err *err)
{
	verify_peer_options verify = {0};
	char *ca = NULL, *cert = NULL, *key = NULL;
	size_t ca_cap = 0, cert_cap = 0, key_cap = 0;
	grpc_ssl_pem_key_cert_pair pair;
	grpc_channel_credentials *creds = NULL;
	grpc_arg arg[4];
	grpc_channel_args args = {0, arg};
	kms_client *c = NULL;
	int inited = 0;
	int rc = KMS_OK;

	*out = NULL;
	if (opts == NULL || opts->target == NULL || opts->target[0] == '\0') {
		rc = kms_errf(err, KMS_ERR_CONFIG, "no endpoint given");
		goto out;
	}
	/* mTLS only: without our roots gRPC would trust the system store. */
	if (opts->ca_file == NULL || opts->ca_file[0] == '\0') {
		rc = kms_errf(err, KMS_ERR_CONFIG, "no CA file given");
		goto out;
	}
	if ((opts->cert_file == NULL) !=
	    (opts->key_file == NULL && opts->key_string == NULL)) {
		rc = kms_errf(
		    err, KMS_ERR_CONFIG,
		    "a client certificate and its key must be given together");
		goto out;
	}
	KMS_TRY_GOTO(rc, read_pem(opts->ca_file, "CA file", &ca, &ca_cap, err),
		     out);
	if (opts->cert_file != NULL) {
		KMS_TRY_GOTO(rc,
			     read_pem(opts->cert_file, "client certificate",
				      &cert, &cert_cap, err),
			     out);
		if (opts->key_string == NULL)
			KMS_TRY_GOTO(rc,
				     read_pem(opts->key_file, "client key",
					      &key, &key_cap, err),
				     out);
	}
	c = kms_calloc(1, sizeof(*c));
	if (c == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM,
			      "out of memory creating the client");
		goto out;
	}
	c->timeout_ms =
	    opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
	if (opts->consistency != NULL)
		snprintf(c->consistency, sizeof(c->consistency), "%s",
			 opts->consistency);

	grpc_init();
	inited = 1;
	pair.private_key = opts->key_string != NULL ? opts->key_string : key;
	pair.cert_chain = cert;
	/*
	 * gRPC copies the PEM strings (the channel connects later, after our
	 * key buffer is wiped), so the key lives on only inside gRPC.
	 */
	if (opts->server_spiffe_id != NULL && opts->server_spiffe_id[0] != '\0') {
		verify.verify_peer_callback = verify_server_identity;
		verify.verify_peer_callback_userdata = kms_strdup(opts->server_spiffe_id);
		verify.verify_peer_destruct = free_expected;
		if (verify.verify_peer_callback_userdata == NULL) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory creating the client");
			goto out;
		}
	}
	/* The credentials own the expected ID from here (verify_peer_destruct). */
	creds = grpc_ssl_credentials_create(ca, cert != NULL ? &pair : NULL,
					    verify.verify_peer_callback != NULL ? &verify : NULL,
					    NULL);
	if (creds == NULL) {
		kms_free(verify.verify_peer_callback_userdata);
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "cannot create TLS credentials");
		goto out;
	}
	/* gRPC's default (4 MiB) is below the largest batch answer. */
	arg[0].type = GRPC_ARG_INTEGER;
	arg[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	arg[0].value.integer = (int)KMS_RESPONSE_MAX;
	/*
	 * A call on a channel waiting out its reconnect backoff fails at once
	 * (UNAVAILABLE). gRPC's backoff grows to 120 s, so a member that was
	 * down a minute would stay unreachable from its peers for up to two
	 * more after it is back: a few members, a short cap.
	 */
	arg[1].type = GRPC_ARG_INTEGER;
	arg[1].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
	arg[1].value.integer = KMS_CLIENT_RECONNECT_INITIAL_MS;
	arg[2].type = GRPC_ARG_INTEGER;
	arg[2].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
	arg[2].value.integer = KMS_CLIENT_RECONNECT_MAX_MS;
	args.num_args = 3;
	if (opts->server_name != NULL && opts->server_name[0] != '\0') {
		arg[3].type = GRPC_ARG_STRING;
		arg[3].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
		arg[3].value.string = (char *)opts->server_name;
		args.num_args = 4;
	}
	c->channel = grpc_channel_create(opts->target, creds, &args);
	if (c->channel == NULL) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "cannot create a channel to '%s'", opts->target);
		goto out;
	}
	*out = c;
	c = NULL;
	inited = 0;
out:
	if (creds != NULL)
		grpc_channel_credentials_release(creds);
	if (c != NULL) {
		if (c->channel != NULL)
			grpc_channel_destroy(c->channel);
		kms_free(c);
	}
	if (inited)
		grpc_shutdown();
	kms_free(ca);
	kms_free(cert);
	if (key != NULL)
		kms_free_secret(key, key_cap);
	return rc;
}

void kms_client_close(kms_client *c)
{
	if (c == NULL)
		return;
	grpc_channel_destroy(c->channel);
	kms_free(c);
	grpc_shutdown();
}

grpc_channel *kms_client_channel(kms_client *c)
{
	return c->channel;
}

int kms_client_timeout_ms(const kms_client *c)
{
	return c->timeout_ms;
}

static void set_status(kms_rpc_status *st, int code, const char *msg)
{
	st->code = code;
	snprintf(st->details, sizeof(st->details), "%s", msg);
}

/*
 * Runs one unary call with req (borrowed) as the message. On OK, *resp is a
 * flat slice holding the whole response that the caller must cleanse (it may
 * carry key material) and unref; otherwise *resp is grpc_empty_slice().
 */
static int do_call(kms_client *c, const char *method, grpc_slice req,
		   grpc_slice *resp, int timeout_ms, kms_rpc_status *st)
{
	grpc_completion_queue *cq = NULL;
	grpc_call *call = NULL;
	grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
	grpc_metadata_array initial_md, trailing_md;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_metadata consistency_md;
	grpc_op ops[6];
	grpc_call_error ce;
	grpc_event ev;
	gpr_timespec deadline;
	int tag = 0;

	*resp = grpc_empty_slice();
	st->details[0] = '\0';
	grpc_metadata_array_init(&initial_md);
	grpc_metadata_array_init(&trailing_md);

	cq = grpc_completion_queue_create_for_pluck(NULL);
	if (cq == NULL) {
		set_status(st, GRPC_STATUS_INTERNAL,
			   "cannot create a completion queue");
		goto out;
	}
	deadline =
	    gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			 gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	call = grpc_channel_create_call(
	    c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
	    grpc_slice_from_static_string(method), NULL, deadline, NULL);
	if (call == NULL) {
		set_status(st, GRPC_STATUS_INTERNAL, "cannot create a call");
		goto out;
	}
	send_bb = grpc_raw_byte_buffer_create(&req, 1);
	if (send_bb == NULL) {
		set_status(st, GRPC_STATUS_INTERNAL,
			   "cannot create the request buffer");
		goto out;
	}

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (c->consistency[0] != '\0') {
		/* Static slices: they outlive the batch. */
		consistency_md.key = grpc_slice_from_static_string(KMS_CONSISTENCY_HEADER);
		consistency_md.value = grpc_slice_from_static_string(c->consistency);
		ops[0].data.send_initial_metadata.count = 1;
		ops[0].data.send_initial_metadata.metadata = &consistency_md;
	}
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &recv_bb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
	ops[5].data.recv_status_on_client.status = &status;
	ops[5].data.recv_status_on_client.status_details = &details;

	ce = grpc_call_start_batch(call, ops, 6, &tag, NULL);
	if (ce != GRPC_CALL_OK) {
		char msg[64];

		snprintf(msg, sizeof(msg), "grpc_call_start_batch failed (%d)",
			 (int)ce);
		set_status(st, GRPC_STATUS_INTERNAL, msg);
		goto out;
	}
	/* The call's deadline bounds this wait: gRPC ends the batch by then. */
	ev = grpc_completion_queue_pluck(
	    cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
		set_status(st, GRPC_STATUS_INTERNAL,
			   "the call's batch did not complete");
		goto out;
	}

	st->code = (int)status;
	{
		size_t n = GRPC_SLICE_LENGTH(details);

		if (n >= sizeof(st->details))
			n = sizeof(st->details) - 1;
		memcpy(st->details, GRPC_SLICE_START_PTR(details), n);
		st->details[n] = '\0';
	}
	if (status != GRPC_STATUS_OK)
		goto out;
	if (recv_bb == NULL) {
		set_status(st, GRPC_STATUS_INTERNAL,
			   "the server sent status OK without a message");
		goto out;
	}
	{
		grpc_byte_buffer_reader reader;

		/* Maybe compressed or sliced: readall flattens it. */
		if (!grpc_byte_buffer_reader_init(&reader, recv_bb)) {
			set_status(st, GRPC_STATUS_INTERNAL,
				   "cannot read the response message");
			goto out;
		}
		*resp = grpc_byte_buffer_reader_readall(&reader);
		grpc_byte_buffer_reader_destroy(&reader);
	}
out:
	if (recv_bb != NULL)
		grpc_byte_buffer_destroy(recv_bb);
	if (send_bb != NULL)
		grpc_byte_buffer_destroy(send_bb);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&initial_md);
	grpc_metadata_array_destroy(&trailing_md);
	if (call != NULL)
		grpc_call_unref(call);
	if (cq != NULL) {
		grpc_completion_queue_shutdown(cq);
		while (grpc_completion_queue_pluck(
			   cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
			   .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(cq);
	}
	return st->code;
}

/* Wipes a slice that may hold plaintext before dropping our reference. */
static void slice_free_secret(grpc_slice s)
{
	if (GRPC_SLICE_LENGTH(s) > 0)
		kms_cleanse(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
	grpc_slice_unref(s);
}

int kms_client_call(kms_client *c, const char *method,
		    const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc,
		    ProtobufCMessage **resp, kms_rpc_status *st)
{
	return kms_client_call_timeout(c, method, req, resp_desc, resp,
				       c->timeout_ms, st);
}

int kms_client_call_timeout(kms_client *c, const char *method,
			    const ProtobufCMessage *req,
			    const ProtobufCMessageDescriptor *resp_desc,
			    ProtobufCMessage **resp, int timeout_ms,
			    kms_rpc_status *st)
{
	size_t len = protobuf_c_message_get_packed_size(req);
	/*
	 * A refcounted slice (never inlined) so that the copy we wipe below is
	 * the one gRPC sent: requests carry plaintext (Encrypt).
	 */
	grpc_slice out = grpc_slice_malloc_large(len);
	grpc_slice in;

	*resp = NULL;
	protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(out));
	do_call(c, method, out, &in, timeout_ms, st);
	slice_free_secret(out);
	if (st->code != GRPC_STATUS_OK)
		return st->code;
	*resp = protobuf_c_message_unpack(
	    resp_desc, NULL, GRPC_SLICE_LENGTH(in), GRPC_SLICE_START_PTR(in));
	slice_free_secret(in);
	if (*resp == NULL)
		set_status(st, GRPC_STATUS_INTERNAL,
			   "the response message does not parse");
	return st->code;
}

int kms_client_call_raw(kms_client *c, const char *method, const uint8_t *req,
			size_t len, kms_buf *resp, kms_rpc_status *st)
{
	grpc_slice out = grpc_slice_malloc_large(len);
	grpc_slice in;

	resp->data = NULL;
	resp->len = 0;
	if (len > 0)
		memcpy(GRPC_SLICE_START_PTR(out), req, len);
	do_call(c, method, out, &in, c->timeout_ms, st);
	slice_free_secret(out);
	if (st->code != GRPC_STATUS_OK)
		return st->code;
	resp->len = GRPC_SLICE_LENGTH(in);
	resp->data = kms_malloc(resp->len);
	if (resp->data == NULL) {
		resp->len = 0;
		set_status(st, GRPC_STATUS_RESOURCE_EXHAUSTED,
			   "out of memory for the response");
	} else if (resp->len > 0) {
		memcpy(resp->data, GRPC_SLICE_START_PTR(in), resp->len);
	}
	slice_free_secret(in);
	return st->code;
}

const char *kms_grpc_status_name(int grpc_status)
{
	static const char *const names[] = {
		"OK",
		"CANCELLED",
		"UNKNOWN",
		"INVALID_ARGUMENT",
		"DEADLINE_EXCEEDED",
		"NOT_FOUND",
		"ALREADY_EXISTS",
		"PERMISSION_DENIED",
		"RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION",
		"ABORTED",
		"OUT_OF_RANGE",
		"UNIMPLEMENTED",
		"INTERNAL",
		"UNAVAILABLE",
		"DATA_LOSS",
		"UNAUTHENTICATED",
	};

	if (grpc_status < 0 || grpc_status >= (int)(sizeof(names) / sizeof(names[0])))
		return "UNKNOWN_STATUS";
	return names[grpc_status];
}
