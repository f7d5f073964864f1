/* backup_store.h - the backup files a node made, kept in <data_dir>/backups until a later backup replaces them. */
#ifndef KMS_BACKUP_STORE_H
#define KMS_BACKUP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"

/* The most one piece read from a stored file holds (the gRPC message limit is 10 MiB). */
#define KMS_BACKUP_PIECE_MAX (8u << 20)

/*
 * Writes file as backup id's file in <data_dir>/backups (made 0700), mode
 * 0600, durable before it returns (written beside, fsynced, renamed in, the
 * directory fsynced): the state names it only after this. ref gets its
 * id, size and SHA-256 (holder_node_id is left to the caller).
 */
int kms_backup_store_put(const char *data_dir, const uint8_t id[KMS_BACKUP_ID_LEN],
			 const uint8_t *file, size_t len, kms_backup_ref *ref, kms_err *err);

/*
 * The bytes of ref's file from offset, at most max_bytes (1..
 * KMS_BACKUP_PIECE_MAX) of them, into out (kms_malloc'd, the caller's).
 * KMS_ERR_INVALID for a bad offset or size, KMS_ERR_NOT_FOUND when this
 * node has no such file, KMS_ERR_PRECONDITION when the file on disk is not
 * the size the state recorded (changed or cut short), KMS_ERR_IO when it
 * cannot be read.
 */
int kms_backup_store_read(const char *data_dir, const kms_backup_ref *ref, uint64_t offset,
			  uint32_t max_bytes, kms_buf *out, kms_err *err);

/*
 * Removes every backup file but keep's (NULL: all), and what a write cut
 * short left. Returns how many files it removed; failures are logged.
 */
int kms_backup_store_prune(const char *data_dir, const uint8_t *keep);

#endif
