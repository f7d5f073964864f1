/* rewrap_state.h - the state file of a kmsctl rewrap job: how much of the input is done, durably, and how to check a resume against it. */
#ifndef KMSCTL_REWRAP_STATE_H
#define KMSCTL_REWRAP_STATE_H

#include <stdint.h>

#include "kms/error.h"

#define REWRAP_STATE_VERSION 1
#define REWRAP_SHA256_LEN 32

/*
 * A commit: the first `lines` lines of the input (input_bytes bytes, whose
 * SHA-256 is input_sha256) have their output in the first output_bytes
 * bytes of the output file and their errors in the first errors_bytes of
 * the errors file, both on disk (fsync'd) before this state was written.
 */
struct rewrap_state {
	char *to; /* the --to of the job (kms_malloc'd) */
	uint64_t lines;
	uint64_t input_bytes;
	uint8_t input_sha256[REWRAP_SHA256_LEN];
	uint64_t output_bytes;
	uint64_t errors_bytes;
	uint64_t rewrapped; /* lines rewrapped, over every run */
	uint64_t failed;    /* lines passed through with an error */
	int complete;	    /* the whole input is done */
};

/*
 * Reads path into st. *found is 0 when the file does not exist (st is then
 * empty and the call succeeds). A file that is not a state of this version
 * gives KMS_ERR_INVALID naming it and the field. Free st->to with
 * rewrap_state_free.
 */
int rewrap_state_load(const char *path, struct rewrap_state *st, int *found,
		      kms_err *err);

/*
 * Replaces path atomically: writes "<path>.tmp", fsyncs it, renames it over
 * path and fsyncs the directory, so that a crash leaves either the old
 * state or the new one. KMS_OK or KMS_ERR_IO.
 */
int rewrap_state_save(const char *path, const struct rewrap_state *st,
		      kms_err *err);

void rewrap_state_free(struct rewrap_state *st);

#endif
