/* restore.c - a new cluster's first node brought up from a backup file and M custodians' unsealed shares (kmsd --restore). */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "node/node.h"
#include "node/restore.h"

/* Reads a whole file of at most max bytes into out (kms_malloc'd). */
static int read_all(const char *path, size_t max, kms_buf *out, kms_err *err)
{
	FILE *f = fopen(path, "rb");
	long n;
	int rc = KMS_OK;

	out->data = NULL;
	out->len = 0;
	if (f == NULL)
		return kms_errf(err, KMS_ERR_IO, "cannot open %s: %m", path);
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot read %s: %m", path);
		goto out;
	}
	if ((size_t)n > max) {
		rc = kms_errf(err, KMS_ERR_LIMIT, "%s is %ld bytes, over the %zu-byte limit", path, n,
			      max);
		goto out;
	}
	out->data = kms_malloc(n > 0 ? (size_t)n : 1);
	if (out->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory reading %s", path);
		goto out;
	}
	if (fread(out->data, 1, (size_t)n, f) != (size_t)n) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot read %s", path);
		kms_buf_free_secret(out);
		goto out;
	}
	out->len = (size_t)n;
out:
	fclose(f);
	return rc;
}

/* The restore applies to an empty key ring, or nothing is written at all.
 * Gives the number of keys and the ring's domain-key check blob. */
static int trial(const uint8_t *ring, size_t len, size_t *n_keys,
		 uint8_t probe[KMS_WRAPPED_MAX], size_t *probe_len, kms_err *err)
{
	kms_keyring *scratch = NULL;
	kms_buf cmd = {0};
	int rc;

	KMS_TRY(kms_keyring_new(&scratch, err));
	rc = kms_keyring_cmd_restore_backup(ring, len, &cmd, err);
	if (rc == KMS_OK)
		rc = kms_keyring_apply(scratch, cmd.data, cmd.len, err);
	if (rc == KMS_OK) {
		*n_keys = kms_keyring_count(scratch);
		*probe_len = kms_keyring_domain_key_probe(scratch, probe);
	}
	kms_buf_free(&cmd);
	kms_keyring_free(scratch);
	if (rc != KMS_OK)
		kms_err_prefix(err, "the backup's key ring does not restore");
	return rc;
}

static int open_shares(const kms_restore_opts *o, kms_backup_share *sh, kms_err *err)
{
	for (size_t i = 0; i < o->n_shares; i++) {
		kms_buf b = {0};
		int rc = read_all(o->shares[i], 4096, &b, err);

		if (rc == KMS_OK)
			rc = kms_backup_share_decode(b.data, b.len, &sh[i], err);
		kms_buf_free_secret(&b);
		if (rc != KMS_OK) {
			char what[300];

			snprintf(what, sizeof(what), "share file %s", o->shares[i]);
			return kms_err_prefix(err, what);
		}
	}
	return KMS_OK;
}

/*
 * The token's domain key labelled label is the backup's: it unwraps the
 * backup's check blob. Anything else is not resumed: the token is not
 * fresh.
 */
static int same_domain_key(kms_node *node, const char *label, const uint8_t *probe,
			   size_t probe_len, kms_err *err)
{
	kms_hsm_key dk = 0, k = 0;
	kms_err why = {0};

	if (kms_hsm_domain_key(node->hsm, label, 0, &dk, &why) != KMS_OK ||
	    probe_len == 0 ||
	    kms_hsm_master_key_unwrap(node->hsm, dk, probe, probe_len, &k, &why) != KMS_OK)
		return kms_errf(err, KMS_ERR_CONFIG,
				"token '%s' already holds a domain key that is not this backup's "
				"'%s' (%s): a restore needs a fresh, empty token",
				node->cfg.hsm_token_label, label,
				why.code != KMS_OK ? why.msg : "the backup has no check blob");
	kms_hsm_key_destroy(node->hsm, k);
	return KMS_OK;
}

int kms_restore_prepare(kms_node *node, const kms_restore_opts *o, int fresh, kms_err *err)
{
	kms_backup_share sh[KMS_BACKUP_CUSTODIANS_MAX];
	uint8_t key[KMS_BACKUP_KEY_LEN];
	char label[KMS_HSM_DK_LABEL_MAX], idhex[2 * KMS_BACKUP_ID_LEN + 1];
	kms_backup b = {0};
	kms_buf file = {0};
	kms_hsm_key dk = 0;
	uint32_t gens[8];
	uint8_t probe[KMS_WRAPPED_MAX];
	size_t n = 0, n_keys = 0, probe_len = 0;
	int rc;

	memset(sh, 0, sizeof(sh));
	KMS_ENSURE(fresh && node->cfg.join_seeds == NULL, err, KMS_ERR_CONFIG,
		   "--restore brings up the first node of a new cluster: %s must be empty and "
		   "[cluster] join unset",
		   node->cfg.data_dir);
	KMS_ENSURE(o->n_shares >= 1 && o->n_shares <= KMS_BACKUP_CUSTODIANS_MAX, err,
		   KMS_ERR_INVALID, "--restore needs 1 to %d --share files, %zu given",
		   KMS_BACKUP_CUSTODIANS_MAX, o->n_shares);
	KMS_TRY(kms_hsm_dk_generations(node->hsm, node->cfg.domain_key_label, gens, 8, &n, err));
	KMS_ENSURE(n <= 1, err, KMS_ERR_CONFIG,
		   "token '%s' already holds %zu generations of the domain key '%s': a restore "
		   "needs a fresh, empty token",
		   node->cfg.hsm_token_label, n, node->cfg.domain_key_label);
	KMS_TRY_GOTO(rc, read_all(o->file, KMS_BACKUP_FILE_MAX, &file, err), out);
	KMS_TRY_GOTO(rc, kms_backup_parse(file.data, file.len, &b, err), out);
	KMS_TRY_GOTO(rc, open_shares(o, sh, err), out);
	KMS_TRY_GOTO(rc, kms_backup_open(&b, sh, o->n_shares, key, err), out);
	KMS_TRY_GOTO(rc,
		     trial(b.body->key_ring.data, b.body->key_ring.len, &n_keys, probe, &probe_len,
			   err),
		     out);
	KMS_TRY_GOTO(rc,
		     kms_hsm_dk_label(node->cfg.domain_key_label, b.body->domain_key_generation,
				      label, err),
		     out);
	if (n == 1) {
		/* An earlier restore installed it and stopped before its end. */
		KMS_TRY_GOTO(rc, same_domain_key(node, label, probe, probe_len, err), out);
		KMS_LOG_W("restore: token '%s' already holds this backup's domain key '%s' (an "
			  "earlier --restore stopped before 'restore: done'): using it",
			  node->cfg.hsm_token_label, label);
	} else {
		rc = kms_hsm_domain_key_restore(node->hsm, label, key,
						b.body->wrapped_domain_key.data,
						b.body->wrapped_domain_key.len, &dk, err);
		if (rc != KMS_OK) {
			kms_err_prefix(err, "the backup's domain key does not unwrap under the "
					    "backup key the shares rebuild");
			goto out;
		}
	}
	node->restore_ring.data = kms_malloc(b.body->key_ring.len);
	if (node->restore_ring.data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory keeping the backup's key ring");
		node->restore_dk = dk;
		kms_restore_undo(node);
		goto out;
	}
	memcpy(node->restore_ring.data, b.body->key_ring.data, b.body->key_ring.len);
	node->restore_ring.len = b.body->key_ring.len;
	node->restore_dk = dk;
	kms_backup_id_hex(b.body->backup_id.data, idhex);
	KMS_LOG_I("restore: backup %s (proposal %s) opened with %zu shares; domain key '%s' "
		  "installed on token '%s'; its %zu keys are restored once this node leads",
		  idhex, b.body->proposal_id, o->n_shares, label, node->cfg.hsm_token_label,
		  n_keys);
out:
	kms_cleanse(key, sizeof(key));
	kms_cleanse(sh, sizeof(sh));
	kms_backup_free(&b);
	kms_buf_free(&file);
	return rc;
}

int kms_restore_command(kms_node *node, kms_buf *cmd, kms_err *err)
{
	return kms_keyring_cmd_restore_backup(node->restore_ring.data, node->restore_ring.len, cmd,
					      err);
}

void kms_restore_undo(kms_node *node)
{
	kms_err err = {0};

	if (node->restore_dk == 0)
		return;
	if (kms_hsm_domain_key_destroy(node->hsm, node->restore_dk, &err) != KMS_OK)
		KMS_LOG_E("restore: cannot remove the restored domain key from token '%s' (%s): "
			  "remove it by hand before trying again",
			  node->cfg.hsm_token_label, err.msg);
	node->restore_dk = 0;
	kms_buf_free(&node->restore_ring);
}
