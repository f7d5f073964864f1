/* key_rotation.h - the RotateKey command for a key's next version: the decision first, then a new master key made in this node's HSM and wrapped under the domain key. */
#ifndef KMS_NODE_KEY_ROTATION_H
#define KMS_NODE_KEY_ROTATION_H

#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"
#include "kms/hsm.h"

struct kms_node;

/*
 * Builds the serialized RotateKey command that adds key_id's next version
 * (a real key id, not an alias) at now_unix, for this node to commit: the
 * RotateKey handler of an administrator and the leader's supervisor both
 * rotate through it. Apply's decision on this node's state comes first
 * (kms_keyring_check, with its sentence: a key that is not Enabled, one
 * with the most versions a key may hold), so no HSM key is generated for
 * a command that must be refused; then whether this node can take a write
 * (kms_api_can_write: a leader, known or itself, and the verified domain
 * key; KMS_ERR_UNAVAILABLE otherwise); then the version is generated in
 * the HSM with the session s (the calling thread's) and wrapped under the
 * domain key. *version gets the new version's
 * number; cmd->data is kms_malloc'd, the caller's. Apply may still refuse
 * the command when another rotation commits first (KMS_ERR_PRECONDITION).
 */
int kms_node_rotation_cmd(struct kms_node *node, kms_hsm_session *s, const char *key_id,
			  int64_t now_unix, uint32_t *version, kms_buf *cmd, kms_err *err);

#endif
