/* tls_watch.h - a thread that looks at the node's TLS files every few seconds and calls back when one changed. */
#ifndef KMS_TLS_WATCH_H
#define KMS_TLS_WATCH_H

#include "kms/config.h"
#include "kms/error.h"
#include "tls/tls_files.h"

typedef struct kms_tls_watch kms_tls_watch;

/* Runs on the watch thread after a change; must not call kms_tls_watch_stop. */
typedef void (*kms_tls_changed_fn)(void *arg);

/*
 * Every interval_s seconds, stamps the files of cfg (kms_tls_files_stamp)
 * and calls changed(arg) when the stamp differs from the last one seen,
 * starting from *since (the stamp taken before the files in force were
 * read, so that a change between that read and this start is not missed).
 * A change is reported once: a file still being written when it is read
 * changes again when done, and is reported again then.
 *
 * Why polling and not inotify: certificates are replaced in ways inotify
 * sees badly or not at all: renamed over the watched file (the watch stays
 * on the old inode), a symlink swapped in a parent directory (Kubernetes
 * secret volumes), network and FUSE file systems. A stat of four files
 * every few seconds costs nothing and sees all of them alike.
 *
 * cfg and arg must outlive the watch. KMS_ERR_INTERNAL if the thread cannot
 * start.
 */
int kms_tls_watch_start(const kms_config *cfg, unsigned interval_s, const kms_tls_stamp *since,
			kms_tls_changed_fn changed, void *arg, kms_tls_watch **out, kms_err *err);

/* Stops and joins the thread (waits for a callback in progress), frees. */
void kms_tls_watch_stop(kms_tls_watch *w);

#endif
