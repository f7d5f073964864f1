/* key_rotation.c - the RotateKey command for a key's next version: the decision first, then a new master key made in this node's HSM and wrapped under the domain key. */
#include <stdatomic.h>

#include "api/api.h"
#include "kms/keyring.h"
#include "kms/keyring_dk.h"
#include "node/dk_rotation.h"
#include "node/key_rotation.h"
#include "node/node.h"

int kms_node_rotation_cmd(kms_node *node, kms_hsm_session *s, const char *key_id,
			  int64_t now_unix, uint32_t *version, kms_buf *cmd, kms_err *err)
{
	/* Stands in for the material while apply decides: the same checks,
	 * on a command of the same shape. */
	static const uint8_t placeholder[40];
	kms_buf wrapped = {0};
	kms_key_status st;
	kms_hsm_key dk = 0;
	uint32_t dk_gen = 0;
	int rc;

	cmd->data = NULL;
	cmd->len = 0;
	KMS_TRY(kms_keyring_key_status(node->kr, key_id, &st, err));
	*version = st.last_version + 1;
	kms_dk_current(node, &dk, &dk_gen);
	KMS_TRY(kms_keyring_cmd_rotate_key(key_id, *version, placeholder, sizeof(placeholder),
					   now_unix, cmd, err));
	rc = kms_keyring_cmd_set_dk_generation(cmd, dk_gen, err);
	if (rc == KMS_OK)
		rc = kms_keyring_check(node->kr, cmd->data, cmd->len, err);
	kms_buf_free(cmd);
	KMS_TRY(rc);
	KMS_TRY(kms_api_can_write(node, err));
	KMS_TRY(kms_hsm_master_key_create(s, dk, &wrapped, err));
	rc = kms_keyring_cmd_rotate_key(key_id, *version, wrapped.data, wrapped.len, now_unix, cmd,
					err);
	kms_buf_free(&wrapped);
	/* So that it lands only if the cluster is still on that domain key. */
	if (rc == KMS_OK && (rc = kms_keyring_cmd_set_dk_generation(cmd, dk_gen, err)) != KMS_OK)
		kms_buf_free(cmd);
	return rc;
}
