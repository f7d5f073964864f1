/* root_ops.c - the root operations the leader runs outside the replicated state: the domain-key rotation, backups. */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/hsm.h"
#include "kms/quorum.h"

#include "kms/keyring.h"
#include "kms/keyring_dk.h"
#include "kms/log.h"
#include "node/backup_store.h"
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

int kms_root_backup_export(struct kms_node *node, const Kms__V1__ProposalRecord *p,
			   kms_backup_ref *ref, kms_err *err)
{
	kms_backup_custodian cust[KMS_BACKUP_CUSTODIANS_MAX];
	Kms__V1__SetOperatorsOperation *ops = NULL;
	uint8_t cid[KMS_CLUSTER_ID_LEN], key[KMS_BACKUP_KEY_LEN];
	kms_backup_content c;
	kms_buf ring = {0}, wrapped = {0}, file = {0};
	char idhex[2 * KMS_BACKUP_ID_LEN + 1];
	uint32_t gen = 0;
	int rc;

	memset(ref, 0, sizeof(*ref));
	memset(&c, 0, sizeof(c));
	KMS_TRY(kms_backup_export_check(p->operation->backup_export, cust, err));
	KMS_TRY(kms_keyring_quorum(node->kr, cid, &ops, err));
	kms_keyring_operators_free(ops);
	KMS_TRY(kms_keyring_backup_ring(node->kr, &ring, &gen, err));
	/* The ring's material is under the generation this node's key has. */
	if (gen != atomic_load(&node->domain_key_gen) || atomic_load(&node->domain_key) == 0) {
		rc = kms_errf(err, KMS_ERR_UNAVAILABLE,
			      "this node's domain key is not the state's generation %u yet", gen);
		goto out;
	}
	KMS_TRY_GOTO(rc,
		     kms_hsm_backup_wrap_dk(node->hsm, atomic_load(&node->domain_key), key, &wrapped,
					    err),
		     out);
	if (RAND_bytes(c.backup_id, KMS_BACKUP_ID_LEN) != 1) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "no random bytes for the backup id");
		goto out;
	}
	c.cluster_id = cid;
	c.cluster_id_len = KMS_CLUSTER_ID_LEN;
	c.proposal_id = p->id;
	c.created_at_unix = (int64_t)time(NULL);
	c.threshold = p->operation->backup_export->threshold;
	c.custodians = cust;
	c.n_custodians = p->operation->backup_export->n_custodians;
	c.domain_key_generation = gen;
	c.wrapped_domain_key = wrapped.data;
	c.wrapped_domain_key_len = wrapped.len;
	c.key_ring = ring.data;
	c.key_ring_len = ring.len;
	KMS_TRY_GOTO(rc, kms_backup_build(&c, key, &file, err), out);
	/* The ring's copies go before the file is written: at a million keys each is 190 MB. */
	kms_buf_free(&ring);
	KMS_TRY_GOTO(rc,
		     kms_backup_store_put(node->cfg.data_dir, c.backup_id, file.data, file.len, ref,
					  err),
		     out);
	ref->holder_node_id = node->cfg.node_id;
	kms_backup_id_hex(c.backup_id, idhex);
	KMS_LOG_I("backup: proposal %s made backup %s (%zu bytes, %zu shares, %u to restore), "
		  "kept in %s/backups",
		  p->id, idhex, file.len, c.n_custodians, c.threshold, node->cfg.data_dir);
out:
	kms_cleanse(key, sizeof(key));
	kms_buf_free(&ring);
	kms_buf_free(&wrapped);
	kms_buf_free(&file);
	return rc;
}
