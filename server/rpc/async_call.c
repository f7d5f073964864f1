/* async_call.c - unary gRPC client calls on one completion queue, finished by one thread, so that no caller waits for an answer. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "kms/alloc.h"
#include "kms/log.h"
#include "rpc/async_call.h"

struct acall {
	kms_async *a;
	grpc_call *call;
	grpc_slice req;	/* our copy of the request, wiped when the call ends */
	grpc_byte_buffer *send_bb, *recv_bb;
	grpc_metadata_array initial_md, trailing_md;
	grpc_status_code status;
	grpc_slice details;
	kms_async_done_fn done;
	void *arg;
	struct acall *prev, *next; /* in flight, under a->mu */
};

struct kms_async {
	grpc_completion_queue *cq;
	pthread_t thread;
	int thread_started;
	pthread_mutex_t mu;
	struct acall *head; /* (mu) calls started and not yet finished */
	int stopping;	    /* (mu) */
	int stopped;
};

static const char shutting_down[] = "kmsd is shutting down";

static void set_status(kms_rpc_status *st, int code, const char *msg)
{
	st->code = code;
	snprintf(st->details, sizeof(st->details), "%s", msg);
}

static void slice_wipe_unref(grpc_slice s)
{
	if (GRPC_SLICE_LENGTH(s) > 0)
		kms_cleanse(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
	grpc_slice_unref(s);
}

static void acall_free(struct acall *c)
{
	if (c->call != NULL)
		grpc_call_unref(c->call);
	if (c->send_bb != NULL)
		grpc_byte_buffer_destroy(c->send_bb);
	if (c->recv_bb != NULL)
		grpc_byte_buffer_destroy(c->recv_bb);
	grpc_metadata_array_destroy(&c->initial_md);
	grpc_metadata_array_destroy(&c->trailing_md);
	grpc_slice_unref(c->details);
	slice_wipe_unref(c->req);
	kms_free(c);
}

/* Runs on the completion thread: the call's batch is done. */
static void finish(struct acall *c, int success)
{
	kms_async *a = c->a;
	grpc_slice resp = grpc_empty_slice();
	kms_rpc_status st;
	int stopping;

	pthread_mutex_lock(&a->mu);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		a->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	stopping = a->stopping;
	pthread_mutex_unlock(&a->mu);

	memset(&st, 0, sizeof(st));
	if (!success) {
		set_status(&st, GRPC_STATUS_INTERNAL, "the call's batch did not complete");
	} else if (c->status == GRPC_STATUS_CANCELLED && stopping) {
		set_status(&st, GRPC_STATUS_CANCELLED, shutting_down);
	} else {
		size_t n = GRPC_SLICE_LENGTH(c->details);

		st.code = (int)c->status;
		if (n >= sizeof(st.details))
			n = sizeof(st.details) - 1;
		memcpy(st.details, GRPC_SLICE_START_PTR(c->details), n);
		st.details[n] = '\0';
	}
	if (st.code == GRPC_STATUS_OK) {
		grpc_byte_buffer_reader reader;

		if (c->recv_bb == NULL)
			set_status(&st, GRPC_STATUS_INTERNAL,
				   "the server sent status OK without a message");
		else if (!grpc_byte_buffer_reader_init(&reader, c->recv_bb))
			set_status(&st, GRPC_STATUS_INTERNAL, "cannot read the response message");
		else {
			resp = grpc_byte_buffer_reader_readall(&reader);
			grpc_byte_buffer_reader_destroy(&reader);
		}
	}
	c->done(c->arg, &st, st.code == GRPC_STATUS_OK ? GRPC_SLICE_START_PTR(resp) : NULL,
		st.code == GRPC_STATUS_OK ? GRPC_SLICE_LENGTH(resp) : 0);
	slice_wipe_unref(resp);
	acall_free(c);
}

static void *completion_thread(void *arg)
{
	kms_async *a = arg;

	for (;;) {
		grpc_event ev =
			grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE)
			finish(ev.tag, ev.success);
	}
	return NULL;
}

int kms_async_new(kms_async **out, kms_err *err)
{
	kms_async *a = kms_calloc(1, sizeof(*a));

	if (a == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for the asynchronous calls");
	grpc_init();
	pthread_mutex_init(&a->mu, NULL);
	a->cq = grpc_completion_queue_create_for_next(NULL);
	if (a->cq == NULL) {
		kms_async_free(a);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot create a completion queue");
	}
	if (pthread_create(&a->thread, NULL, completion_thread, a) != 0) {
		kms_async_free(a);
		return kms_errf(err, KMS_ERR_INTERNAL,
				"cannot start the thread of the asynchronous calls");
	}
	a->thread_started = 1;
	*out = a;
	return KMS_OK;
}

void kms_async_call(kms_async *a, grpc_channel *channel, const char *method, const uint8_t *req,
		    size_t len, long timeout_ms, kms_async_done_fn done, void *arg)
{
	struct acall *c = kms_calloc(1, sizeof(*c));
	kms_rpc_status st;
	gpr_timespec deadline;
	grpc_op ops[6];
	grpc_call_error ce;

	memset(&st, 0, sizeof(st));
	if (c == NULL) {
		set_status(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory starting a call");
		done(arg, &st, NULL, 0);
		return;
	}
	c->a = a;
	c->done = done;
	c->arg = arg;
	c->details = grpc_empty_slice();
	grpc_metadata_array_init(&c->initial_md);
	grpc_metadata_array_init(&c->trailing_md);
	/* Refcounted, never inlined: the bytes we wipe are the ones gRPC sent. */
	c->req = grpc_slice_malloc_large(len);
	if (len > 0)
		memcpy(GRPC_SLICE_START_PTR(c->req), req, len);
	c->send_bb = grpc_raw_byte_buffer_create(&c->req, 1);
	deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				gpr_time_from_millis(timeout_ms > 0 ? timeout_ms : 0, GPR_TIMESPAN));

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = c->send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->initial_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &c->recv_bb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &c->trailing_md;
	ops[5].data.recv_status_on_client.status = &c->status;
	ops[5].data.recv_status_on_client.status_details = &c->details;

	/* Under mu: kms_async_stop either sees this call in the list and
	 * cancels it, or refused it here; and the completion queue is never
	 * shut down under a call being started. */
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		set_status(&st, GRPC_STATUS_UNAVAILABLE, shutting_down);
		goto refused;
	}
	if (c->send_bb == NULL) {
		pthread_mutex_unlock(&a->mu);
		set_status(&st, GRPC_STATUS_INTERNAL, "cannot create the request buffer");
		goto refused;
	}
	c->call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, a->cq,
					   grpc_slice_from_static_string(method), NULL, deadline,
					   NULL);
	if (c->call == NULL) {
		pthread_mutex_unlock(&a->mu);
		set_status(&st, GRPC_STATUS_INTERNAL, "cannot create a call");
		goto refused;
	}
	ce = grpc_call_start_batch(c->call, ops, 6, c, NULL);
	if (ce != GRPC_CALL_OK) {
		pthread_mutex_unlock(&a->mu);
		KMS_LOG_E("rpc: starting an asynchronous call of %s failed (%d)", method, (int)ce);
		set_status(&st, GRPC_STATUS_INTERNAL, "grpc_call_start_batch failed");
		goto refused;
	}
	c->next = a->head;
	if (a->head != NULL)
		a->head->prev = c;
	a->head = c;
	pthread_mutex_unlock(&a->mu);
	return;
refused:
	acall_free(c);
	done(arg, &st, NULL, 0);
}

void kms_async_stop(kms_async *a)
{
	if (a == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		return;
	}
	a->stopping = 1;
	for (struct acall *c = a->head; c != NULL; c = c->next)
		if (grpc_call_cancel(c->call, NULL) != GRPC_CALL_OK)
			KMS_LOG_E("rpc: cancelling an asynchronous call failed");
	pthread_mutex_unlock(&a->mu);
	/* Calls still in flight complete (cancelled) before the queue reports
	 * its shutdown, so the thread runs every done before it ends. */
	if (a->cq != NULL)
		grpc_completion_queue_shutdown(a->cq);
	if (a->thread_started) {
		pthread_join(a->thread, NULL);
		a->thread_started = 0;
	}
	a->stopped = 1;
}

void kms_async_free(kms_async *a)
{
	if (a == NULL)
		return;
	if (!a->stopped && a->cq != NULL)
		kms_async_stop(a);
	if (a->cq != NULL)
		grpc_completion_queue_destroy(a->cq);
	pthread_mutex_destroy(&a->mu);
	kms_free(a);
	grpc_shutdown();
}
