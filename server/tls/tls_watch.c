/* tls_watch.c - polls the stamps of the node's TLS files on a thread of its own. */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "kms/alloc.h"
#include "tls/tls_watch.h"

struct kms_tls_watch {
	const kms_config *cfg;
	unsigned interval_s;
	kms_tls_stamp last;
	kms_tls_changed_fn changed;
	void *arg;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond; /* CLOCK_MONOTONIC */
	int stop;	     /* (mu) */
};

static void *watch_main(void *p)
{
	kms_tls_watch *w = p;

	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		struct timespec until;
		kms_tls_stamp now;

		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += w->interval_s;
		while (!w->stop && pthread_cond_timedwait(&w->cond, &w->mu, &until) != ETIMEDOUT)
			;
		if (w->stop)
			break;
		pthread_mutex_unlock(&w->mu);
		kms_tls_files_stamp(w->cfg, &now);
		if (!kms_tls_stamp_equal(&now, &w->last)) {
			w->last = now;
			w->changed(w->arg);
		}
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int kms_tls_watch_start(const kms_config *cfg, unsigned interval_s, const kms_tls_stamp *since,
			kms_tls_changed_fn changed, void *arg, kms_tls_watch **out, kms_err *err)
{
	kms_tls_watch *w = kms_calloc(1, sizeof(*w));
	pthread_condattr_t ca;

	if (w == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory starting the TLS file watch");
	w->cfg = cfg;
	w->interval_s = interval_s > 0 ? interval_s : 1;
	w->last = *since;
	w->changed = changed;
	w->arg = arg;
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		pthread_cond_destroy(&w->cond);
		pthread_mutex_destroy(&w->mu);
		kms_free(w);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot start the TLS file watch thread");
	}
	*out = w;
	return KMS_OK;
}

void kms_tls_watch_stop(kms_tls_watch *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->mu);
	kms_free(w);
}
