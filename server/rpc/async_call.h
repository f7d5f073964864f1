/* async_call.h - unary gRPC client calls that hold no thread while they wait: one completion queue and one thread that finishes them. */
#ifndef KMS_ASYNC_CALL_H
#define KMS_ASYNC_CALL_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "kms/client.h"
#include "kms/error.h"

typedef struct kms_async kms_async;

/*
 * The outcome of one call: st as the server (or gRPC, for a deadline, a
 * cancellation or a connection that failed) ended it; on OK, the len
 * response bytes at resp, valid only during the callback (they are wiped
 * and released when it returns). Runs exactly once per call.
 */
typedef void (*kms_async_done_fn)(void *arg, const kms_rpc_status *st, const uint8_t *resp,
				  size_t len);

/* Starts the completion thread. KMS_ERR_NOMEM, KMS_ERR_INTERNAL. */
int kms_async_new(kms_async **out, kms_err *err);

/*
 * Starts a unary call of method (a static string: "/kms.v1.Internal/Forward")
 * on channel with the len bytes at req (copied; wiped once sent), which
 * ends after timeout_ms at the latest (DEADLINE_EXCEEDED). The caller's
 * thread never waits: done runs on the completion thread once the call
 * ends, or on this thread before the function returns when the call cannot
 * start (UNAVAILABLE after kms_async_stop, INTERNAL when gRPC refuses it).
 * The channel must stay open until done has run.
 */
void kms_async_call(kms_async *a, grpc_channel *channel, const char *method, const uint8_t *req,
		    size_t len, long timeout_ms, kms_async_done_fn done, void *arg);

/*
 * Refuses new calls, cancels those in flight (their done runs with
 * CANCELLED and "kmsd is shutting down"), and returns once every done has
 * run and the thread has ended. Any thread but the completion thread.
 * Idempotent.
 */
void kms_async_stop(kms_async *a);

/* Stops (if needed) and frees. */
void kms_async_free(kms_async *a);

#endif
