/* status_map.c - the one place a kmsd status becomes a gRPC status code. */
#include "kms/error.h"
#include "api/status_map.h"

static const grpc_status_code to_grpc[KMS_STATUS_COUNT] = {
	[KMS_OK] = GRPC_STATUS_OK,
	[KMS_ERR_INVALID] = GRPC_STATUS_INVALID_ARGUMENT,
	[KMS_ERR_NOT_FOUND] = GRPC_STATUS_NOT_FOUND,
	[KMS_ERR_EXISTS] = GRPC_STATUS_ALREADY_EXISTS,
	[KMS_ERR_PERMISSION] = GRPC_STATUS_PERMISSION_DENIED,
	[KMS_ERR_UNAUTHENTICATED] = GRPC_STATUS_UNAUTHENTICATED,
	/*
	 * A tampered blob and a wrong encryption context are both a bad
	 * argument; they share one code and one message so that neither tells
	 * an attacker which of the two failed.
	 */
	[KMS_ERR_AUTH_FAILED] = GRPC_STATUS_INVALID_ARGUMENT,
	[KMS_ERR_PRECONDITION] = GRPC_STATUS_FAILED_PRECONDITION,
	[KMS_ERR_UNAVAILABLE] = GRPC_STATUS_UNAVAILABLE,
	/* The HSM refused something it should not have: not the caller's fault. */
	[KMS_ERR_HSM] = GRPC_STATUS_INTERNAL,
	[KMS_ERR_CONFIG] = GRPC_STATUS_INTERNAL,
	[KMS_ERR_IO] = GRPC_STATUS_UNAVAILABLE,
	[KMS_ERR_NOMEM] = GRPC_STATUS_RESOURCE_EXHAUSTED,
	[KMS_ERR_INTERNAL] = GRPC_STATUS_INTERNAL,
	/* A request larger, or a batch longer, than the API allows. */
	[KMS_ERR_LIMIT] = GRPC_STATUS_RESOURCE_EXHAUSTED,
	/* The outcome is unknown: a forwarded write may still be applied. */
	[KMS_ERR_DEADLINE] = GRPC_STATUS_DEADLINE_EXCEEDED,
	[KMS_ERR_UNIMPLEMENTED] = GRPC_STATUS_UNIMPLEMENTED,
};

grpc_status_code kms_status_to_grpc(int kms_status)
{
	if (kms_status < 0 || kms_status >= KMS_STATUS_COUNT)
		return GRPC_STATUS_INTERNAL;
	return to_grpc[kms_status];
}
