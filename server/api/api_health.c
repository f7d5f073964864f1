/* api_health.c - grpc.health.v1.Health/Check: SERVING once the node can serve every kms.v1 call. */
#include <string.h>

#include "api/api.h"
#include "grpc/health/v1/health.pb-c.h"
#include "node/node.h"

static void check(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Grpc__Health__V1__HealthCheckRequest *req =
		grpc__health__v1__health_check_request__unpack(NULL, len, data);
	Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed HealthCheckRequest");
		return;
	}
	/* The health protocol answers NOT_FOUND for a service it does not know. */
	if (req->service[0] != '\0' && strcmp(req->service, "kms.v1.KeyManagement") != 0) {
		kms_call_fail(call, KMS_ERR_NOT_FOUND, "unknown service");
	} else {
		/* The health protocol has no room for a reason: ClusterStatus
		 * shows it (MemberStatus.not_serving_reason), and the log. */
		resp.status = kms_node_serving(node, NULL) == KMS_OK
				      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
				      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
		kms_call_reply(call, &resp.base, 0);
	}
	grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

const kms_method kms_api_health_methods[] = {
	{"/grpc.health.v1.Health/Check", check, KMS_CALLERS_ANYONE,
	 &grpc__health__v1__health_check_request__descriptor, 0},
};
const size_t kms_api_health_n_methods =
	sizeof(kms_api_health_methods) / sizeof(kms_api_health_methods[0]);
