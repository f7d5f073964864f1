/* progress.h - the progress of a long kmsctl job as a terminal bar or as JSON lines: pure formatting, the caller writes and times it. */
#ifndef KMSCTL_PROGRESS_H
#define KMSCTL_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

struct progress_sample {
	uint64_t done;	     /* items done, earlier runs included */
	uint64_t total;	     /* 0: not known (a pipe) */
	uint64_t failed;     /* of done, those that failed */
	uint64_t done_run;   /* items done by this run */
	double elapsed;	     /* seconds this run has taken */
};

/* Items per second of this run; 0 before anything is done. */
double progress_rate(const struct progress_sample *s);

/* Seconds left at this run's rate; -1 when unknown. */
double progress_eta(const struct progress_sample *s);

/*
 * One terminal line of at most width columns (at least 40 are used):
 * "[=====>    ]  45.2%  45,200/100,000  12,345/s  ETA 0:04:05  3 failed",
 * or without a known total "45,200 done  12,345/s  3 failed  0:00:04".
 * No newline. Returns the length written (always NUL-terminated).
 */
size_t progress_bar(char *buf, size_t cap, const struct progress_sample *s,
		    unsigned width);

/*
 * One JSON object on one line, newline included: {"progress": {"done": N,
 * "total": N|null, "failed": N, "rate_per_second": R, "eta_seconds":
 * S|null, "elapsed_seconds": S}}. Returns the length written (always
 * NUL-terminated); a buffer of 256 bytes is always enough.
 */
size_t progress_json(char *buf, size_t cap, const struct progress_sample *s);

/* "1,234,567": n with thousands separators. */
void progress_count(char *buf, size_t cap, uint64_t n);

/* "1:02:03" or "2:03": seconds as h:mm:ss or m:ss. */
void progress_duration(char *buf, size_t cap, double seconds);

#endif
