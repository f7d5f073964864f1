/* audit_log.h - the audit file of a node: records chained and written in groups by whichever thread finds no writer at work, checkpoints, failing closed. */
#ifndef KMS_AUDIT_LOG_H
#define KMS_AUDIT_LOG_H

#include <stdint.h>

#include <openssl/types.h>

#include "kms/audit.h"
#include "kms/error.h"

typedef struct kms_audit_log kms_audit_log;

typedef struct kms_audit_opts {
	const char *path; /* created 0600 if absent, appended to */
	unsigned node;	  /* the node id every record names */
	/* Signs checkpoints (the node key in the HSM through libp11's
	 * engine); NULL: no checkpoints (unit tests). Not owned: it must
	 * outlive the log. Used by one thread at a time (the writer). */
	EVP_PKEY *sign_key;
	unsigned
	    checkpoint_records; /* a checkpoint after this many records... */
	unsigned checkpoint_seconds; /* ...or this long after the first unsigned
					one */
} kms_audit_opts;

/*
 * Opens the file and continues its chain: an empty file gets a start
 * record; one whose tail verifies (kms_audit_tail) a resume record that
 * follows it; one whose tail does not is kept as it is, and a start record
 * begins a new segment that says why (on a line of its own). Then a
 * checkpoint, fsync'd, and the background writer starts. A file that cannot be
 * opened or written gives KMS_ERR_IO naming the path and the cause.
 */
int kms_audit_log_open(const kms_audit_opts *o, kms_audit_log **out,
		       kms_err *err);

/*
 * Stops taking entries, writes those queued and a last checkpoint (if any
 * record is unsigned), fsyncs, joins the writer and frees. Every entry
 * submitted before has had its done. NULL is a no-op.
 */
void kms_audit_log_close(kms_audit_log *log);

/*
 * How a record reaches the file. done runs once, on the thread that is the
 * writer then (the caller of kms_audit_log_submit itself, another caller's,
 * or the background writer's), after write(2) put the record in the file (rc KMS_OK), or when it cannot
 * be written (rc KMS_ERR_UNAVAILABLE, why "audit log cannot be written:
 * ..."); the entry is the caller's again when done runs. body is what
 * kms_audit_call_body made.
 */
typedef void (*kms_audit_done_fn)(void *arg, int rc, const char *why);

typedef struct kms_audit_entry {
	struct kms_audit_entry *next; /* the log's while queued */
	kms_audit_text body;
	kms_audit_done_fn done;
	void *arg;
} kms_audit_entry;

/*
 * Queues e (any thread). When no thread is writing, the caller becomes the
 * writer and writes the queue, its own entry and those queued meanwhile,
 * before it returns; otherwise it returns at once and the writer at work
 * writes e. Records are written in the order they are queued, many in one
 * write(2): calls finishing together cost one system call. done must not
 * call back into the log, and runs with no lock of the log held.
 */
void kms_audit_log_submit(kms_audit_log *log, kms_audit_entry *e);

/* The same, waiting for the outcome (never from a done function). */
int kms_audit_log_write(kms_audit_log *log, kms_audit_entry *e, kms_err *err);

/*
 * KMS_OK while records can be written; KMS_ERR_UNAVAILABLE with "audit log
 * cannot be written: <cause>" from the first failed write until a write
 * succeeds again (the writer tries every second, with a "recovered"
 * record). Any thread.
 */
int kms_audit_log_status(kms_audit_log *log, kms_err *err);

#endif
