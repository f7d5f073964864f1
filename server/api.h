/* api.h - the gRPC method tables of kmsd (KeyManagement, Health) and what handlers share. */
#ifndef KMS_API_H
#define KMS_API_H

#include <stddef.h>

#include "rpc_server.h"

extern const kms_method kms_api_keymgmt_methods[];
extern const size_t kms_api_keymgmt_n_methods;
extern const kms_method kms_api_health_methods[];
extern const size_t kms_api_health_n_methods;
extern const kms_method kms_api_cluster_methods[];
extern const size_t kms_api_cluster_n_methods;

/* Worker-thread set-up for the gRPC server: each worker's HSM session. */
int kms_api_worker_init(void *app, void **wctx, kms_err *err);
void kms_api_worker_fini(void *app, void *wctx);

#endif
