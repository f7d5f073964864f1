/* rewrap.h - kmsctl rewrap: re-encrypts JSON lines of blobs to a key's primary version through BatchReEncrypt, with a durable state so that a stopped job resumes where it stopped. */
#ifndef KMSCTL_REWRAP_H
#define KMSCTL_REWRAP_H

#include <stdint.h>

#include "kms/batch.h"
#include "kms/client.h"

#define REWRAP_BATCH_DEFAULT 256
#define REWRAP_BATCH_MAX KMS_BATCH_MAX_ITEMS
#define REWRAP_PARALLEL_DEFAULT 4
#define REWRAP_PARALLEL_MAX 32
/* A line is a blob of a few KB and a context: anything longer is not input. */
#define REWRAP_LINE_MAX (1024 * 1024)

struct rewrap_opts {
	const char *in_path;	 /* NULL or "-": standard input */
	const char *out_path;	 /* required */
	const char *state_path;	 /* NULL: "<out_path>.rewrap-state" */
	const char *errors_path; /* NULL: "<out_path>.rewrap-errors" */
	const char *to;		 /* destination key id or alias */
	unsigned batch;		 /* items per BatchReEncrypt, 1 to REWRAP_BATCH_MAX */
	unsigned parallel;	 /* calls in flight, 1 to REWRAP_PARALLEL_MAX */
	int stop_on_error;
	int json; /* progress as JSON lines on stderr instead of a bar */
};

/* What a run did, for the caller to print. The strings are the run's. */
struct rewrap_summary {
	const char *input, *output, *to, *state, *errors;
	uint64_t lines_done;  /* input lines whose output is committed, every run */
	uint64_t lines_total; /* 0: not known (a pipe) */
	uint64_t resumed_at;  /* lines done before this run */
	uint64_t rewrapped;   /* by this run */
	uint64_t failed;      /* by this run: passed through, in the errors file */
	uint64_t failed_total;
	double elapsed_seconds;
	double items_per_second;
	int complete;
	const char *stopped; /* "": not stopped; "interrupted", "abandoned",
				"error", "stop-on-error" */
};

typedef void (*rewrap_report_fn)(const struct rewrap_summary *s, void *arg);

/*
 * Blocks SIGINT and SIGTERM in the calling thread, so that every thread
 * started afterwards (gRPC's, the rewrap workers) leaves them to the main
 * thread. Call before the client is opened; rewrap_run unblocks them in
 * the main thread once its workers run.
 */
void rewrap_block_signals(void);

/*
 * Runs (or resumes) the job o describes with client c, from the main
 * thread, and calls report once with what was done, unless it fails
 * before starting. Errors are printed (errmsg). Returns EXIT_OK when every
 * line is rewrapped, EXIT_SERVER when some lines failed or the server
 * stopped the job, EXIT_LOCAL for a local problem (files, a resume that
 * does not match its state), 128 + N when signal N stopped it. A second
 * signal abandons the calls in flight: the process exits from here after
 * committing what was written.
 */
int rewrap_run(kms_client *c, const struct rewrap_opts *o, rewrap_report_fn report,
	       void *arg);

#endif
