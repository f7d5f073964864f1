/* restore.h - a new cluster's first node brought up from a backup file and M custodians' unsealed shares (kmsd --restore). */
#ifndef KMS_RESTORE_H
#define KMS_RESTORE_H

#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"

struct kms_node;

typedef struct kms_restore_opts {
	const char *file;
	const char *shares[KMS_BACKUP_CUSTODIANS_MAX];
	size_t n_shares;
} kms_restore_opts;

/*
 * Before the node looks for its domain key: checks that this node starts a
 * new cluster (empty data_dir, no [cluster] join) on a token without a
 * domain key, opens the backup with the shares (every refusal of
 * kms_backup_open, named), proves that its key ring applies to an empty
 * key ring, and only then installs the backup's domain key on the token
 * and keeps the key ring in node->restore_ring for the first leadership
 * (kms_restore_command). A refusal writes nothing: no token object, no
 * state.
 */
int kms_restore_prepare(struct kms_node *node, const kms_restore_opts *o, int fresh, kms_err *err);

/* The supervisor's first write after the quorum's (in place of a new
 * domain-key probe): RestoreBackup of the kept key ring. */
int kms_restore_command(struct kms_node *node, kms_buf *cmd, kms_err *err);

/* A start that failed after kms_restore_prepare: the installed domain key goes again. */
void kms_restore_undo(struct kms_node *node);

#endif
