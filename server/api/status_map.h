/* status_map.h - the one table from kmsd statuses to gRPC status codes. */
#ifndef KMS_STATUS_MAP_H
#define KMS_STATUS_MAP_H

#include <grpc/status.h>

/* The gRPC status a client sees for a kms_status; unknown values: INTERNAL. */
grpc_status_code kms_status_to_grpc(int kms_status);

#endif
