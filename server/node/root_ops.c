/* root_ops.c - the root operations the leader runs outside the replicated state. */
#include "node/node.h"
#include "node/root_ops.h"

/*
 * The domain-key rotation mechanism (issue #6) is not in this build: an
 * approved rotation is recorded as failed with this answer, never as done.
 */
int kms_root_rotate_domain_key(struct kms_node *node, const char *proposal_id, kms_err *err)
{
	(void)node;
	(void)proposal_id;
	return kms_errf(err, KMS_ERR_UNIMPLEMENTED,
			"domain-key rotation is not available in this build");
}
