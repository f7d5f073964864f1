/* root_ops.c - the root operations the leader runs outside the replicated state: the domain-key rotation. */
#include <string.h>

#include "kms/keyring.h"
#include "kms/keyring_dk.h"
#include "kms/log.h"
#include "node/dk_rotation.h"
#include "node/node.h"
#include "node/root_ops.h"

int kms_root_rotate_domain_key(struct kms_node *node, const char *proposal_id, kms_err *err)
{
	kms_dk_state st;
	uint32_t gen = 0;

	/*
	 * A leader that died after it began the rotation, before it recorded
	 * the proposal's result, left the proposal's id in the state: the
	 * rotation goes on by itself on every node, so the proposal is done.
	 */
	kms_keyring_dk_state(node->kr, &st);
	if (strcmp(st.proposal_id, proposal_id) == 0) {
		KMS_LOG_I("quorum: proposal %s had begun the domain-key rotation to generation "
			  "%u already",
			  proposal_id, st.highest);
		return KMS_OK;
	}
	KMS_TRY(kms_dk_rotation_begin(node, proposal_id, &gen, err));
	KMS_LOG_I("quorum: proposal %s began the domain-key rotation to generation %u",
		  proposal_id, gen);
	return KMS_OK;
}
