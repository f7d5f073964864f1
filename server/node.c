/* node.c - brings one kmsd node up in dependency order and takes it down in reverse. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "api.h"
#include "kms/alloc.h"
#include "kms/log.h"
#include "node.h"
#include "tls_engine.h"

#define MAX_METHODS 16

static kms_method methods[MAX_METHODS];
static size_t n_methods;

static void release_handle(void *arg, unsigned long handle)
{
	kms_hsm_key_destroy(arg, handle);
}

/* A data directory with anything in it belongs to an existing cluster. */
static int data_dir_is_new(const char *dir)
{
	uv_fs_t req;
	uv_dirent_t ent;
	int fresh = 1;

	if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
		uv_fs_req_cleanup(&req);
		return 1;
	}
	if (uv_fs_scandir_next(&req, &ent) != UV_EOF)
		fresh = 0;
	uv_fs_req_cleanup(&req);
	return fresh;
}

static int open_hsm(kms_node *node, kms_err *err)
{
	char *pin = NULL;
	int rc;

	KMS_TRY(kms_config_read_pin(&node->cfg, &pin, err));
	/* Our own open first: it tells a wrong module, a missing token and a
	 * wrong PIN apart. Then the engine gRPC signs TLS handshakes with. */
	rc = kms_hsm_open(node->cfg.hsm_module, node->cfg.hsm_token_label, pin, &node->hsm, err);
	if (rc == KMS_OK)
		rc = kms_tls_engine_init(node->cfg.hsm_module, pin, err);
	kms_free_secret(pin, strlen(pin));
	return rc;
}

static int find_domain_key(kms_node *node, kms_err *err)
{
	int fresh = data_dir_is_new(node->cfg.data_dir);
	int rc = kms_hsm_domain_key(node->hsm, node->cfg.domain_key_label, fresh,
				    &node->domain_key, err);

	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(err, KMS_ERR_CONFIG,
				"token '%s' holds no domain key '%s', but %s already holds cluster "
				"state: this token does not belong to this node's cluster",
				node->cfg.hsm_token_label, node->cfg.domain_key_label,
				node->cfg.data_dir);
	if (rc == KMS_OK && fresh)
		KMS_LOG_I("domain key '%s' ready in token '%s'", node->cfg.domain_key_label,
			  node->cfg.hsm_token_label);
	return rc;
}

static int start_rpc(kms_node *node, kms_err *err)
{
	kms_rpc_server_opts o;
	char *key = kms_tls_engine_key_string(node->cfg.tls_key_uri);
	int rc;

	if (key == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	n_methods = 0;
	for (size_t i = 0; i < kms_api_keymgmt_n_methods; i++)
		methods[n_methods++] = kms_api_keymgmt_methods[i];
	for (size_t i = 0; i < kms_api_health_n_methods; i++)
		methods[n_methods++] = kms_api_health_methods[i];
	memset(&o, 0, sizeof(o));
	o.listen = node->cfg.grpc_listen;
	o.ca_file = node->cfg.ca_file;
	o.cert_file = node->cfg.cert_file;
	o.private_key = key;
	o.workers = node->cfg.grpc_workers;
	o.methods = methods;
	o.n_methods = n_methods;
	o.app = node;
	o.worker_init = kms_api_worker_init;
	o.worker_fini = kms_api_worker_fini;
	rc = kms_rpc_server_start(&o, &node->rpc, err);
	kms_free(key);
	return rc;
}

int kms_node_start(const char *config_path, kms_node **out, kms_err *err)
{
	kms_node *node = kms_calloc(1, sizeof(*node));
	int rc;

	if (node == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	KMS_TRY_GOTO(rc, kms_config_load(config_path, &node->cfg, err), fail_free);
	{
		int level = kms_log_level_parse(node->cfg.log_level);

		if (level >= 0)
			kms_log_set_level((enum kms_log_level)level);
	}
	if (mkdir(node->cfg.data_dir, 0700) != 0 && errno != EEXIST) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot create data_dir %s: %m", node->cfg.data_dir);
		goto fail;
	}
	KMS_TRY_GOTO(rc, open_hsm(node, err), fail);
	KMS_TRY_GOTO(rc, find_domain_key(node, err), fail);
	KMS_TRY_GOTO(rc, kms_keyring_new(&node->kr, err), fail);
	kms_keyring_set_release(node->kr, release_handle, node->hsm);
	KMS_TRY_GOTO(rc, kms_raft_start(&node->cfg, node->kr, &node->raft, err), fail);
	KMS_TRY_GOTO(rc, start_rpc(node, err), fail);
	KMS_LOG_I("node %u serving kms.v1 on %s (Raft on %s)", node->cfg.node_id,
		  node->cfg.grpc_listen, node->cfg.raft_listen);
	*out = node;
	return KMS_OK;
fail:
	kms_node_stop(node);
	return rc;
fail_free:
	kms_free(node);
	return rc;
}

void kms_node_stop(kms_node *node)
{
	if (node == NULL)
		return;
	/* Raft first: writes waiting on it are answered UNAVAILABLE, so the gRPC
	 * server has no call left hanging when it drains. */
	kms_raft_stop(node->raft);
	kms_rpc_server_stop(node->rpc);
	kms_raft_free(node->raft);
	kms_keyring_free(node->kr);
	kms_hsm_close(node->hsm);
	kms_config_free(&node->cfg);
	kms_free(node);
}
