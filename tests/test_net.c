/* test_net.c - network helpers shared by the test suites. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test_net.h"

int kms_test_free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	ck_assert_int_ge(fd, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* ---- a flood of idle connections ---- */

struct kms_test_flood {
	int n_fds, per_port;
	int *ports;
	struct pollfd *p;
	struct slot {
		int fd;
		int connecting;
		int ever; /* has been established once */
		int64_t retry_at;
	} *slot;
	atomic_int stop;
	atomic_int n_ever;
	kms_test_flood_stats stats; /* the flood thread's until joined */
	pthread_t th;
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void flood_open(kms_test_flood *f, int i, int64_t now)
{
	struct slot *s = &f->slot[i];
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		s->retry_at = now + 20;
		return;
	}
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)f->ports[i / f->per_port]);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS) {
		s->fd = fd;
		s->connecting = 1;
		return;
	}
	close(fd);
	f->stats.refused++;
	s->retry_at = now + 20;
}

static void flood_drop(kms_test_flood *f, int i, int64_t retry_at)
{
	struct slot *s = &f->slot[i];

	close(s->fd);
	s->fd = -1;
	s->connecting = 0;
	s->retry_at = retry_at;
}

/* A connect finished (POLLOUT) or an open connection became readable. */
static void flood_event(kms_test_flood *f, int i, int64_t now)
{
	struct slot *s = &f->slot[i];
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	char b;

	if (s->connecting) {
		if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
			f->stats.refused++;
			flood_drop(f, i, now + 20);
			return;
		}
		s->connecting = 0;
		f->stats.opened++;
		if (!s->ever) {
			s->ever = 1;
			atomic_fetch_add(&f->n_ever, 1);
		}
		return;
	}
	/* A server never speaks first: readable means closed. */
	if (recv(s->fd, &b, 1, MSG_DONTWAIT) <= 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
		f->stats.closed_by_server++;
		flood_drop(f, i, now);
	}
}

static void *flood_main(void *arg)
{
	kms_test_flood *f = arg;

	while (!atomic_load(&f->stop)) {
		int64_t now = mono_ms();

		for (int i = 0; i < f->n_fds; i++) {
			if (f->slot[i].fd < 0 && now >= f->slot[i].retry_at)
				flood_open(f, i, now);
			f->p[i].fd = f->slot[i].fd;
			f->p[i].events = f->slot[i].connecting ? POLLOUT : POLLIN;
			f->p[i].revents = 0;
		}
		if (poll(f->p, (nfds_t)f->n_fds, 20) < 0 && errno != EINTR)
			break;
		now = mono_ms();
		for (int i = 0; i < f->n_fds; i++)
			if (f->slot[i].fd >= 0 && f->p[i].revents != 0)
				flood_event(f, i, now);
	}
	for (int i = 0; i < f->n_fds; i++)
		if (f->slot[i].fd >= 0)
			close(f->slot[i].fd);
	return NULL;
}

kms_test_flood *kms_test_flood_start(const int *ports, int n, int per_port)
{
	kms_test_flood *f = calloc(1, sizeof(*f));

	ck_assert_ptr_nonnull(f);
	f->n_fds = n * per_port;
	f->per_port = per_port;
	f->ports = calloc((size_t)n, sizeof(*f->ports));
	f->p = calloc((size_t)f->n_fds, sizeof(*f->p));
	f->slot = calloc((size_t)f->n_fds, sizeof(*f->slot));
	ck_assert(f->ports != NULL && f->p != NULL && f->slot != NULL);
	memcpy(f->ports, ports, (size_t)n * sizeof(*ports));
	for (int i = 0; i < f->n_fds; i++)
		f->slot[i].fd = -1;
	ck_assert_int_eq(pthread_create(&f->th, NULL, flood_main, f), 0);
	return f;
}

int kms_test_flood_established(kms_test_flood *f, int timeout_ms)
{
	struct timespec pause = {0, 20 * 1000 * 1000};

	for (int t = 0; t < timeout_ms; t += 20) {
		if (atomic_load(&f->n_ever) == f->n_fds)
			return 1;
		nanosleep(&pause, NULL);
	}
	return 0;
}

void kms_test_flood_stop(kms_test_flood *f, kms_test_flood_stats *out)
{
	atomic_store(&f->stop, 1);
	pthread_join(f->th, NULL);
	if (out != NULL)
		*out = f->stats;
	free(f->slot);
	free(f->p);
	free(f->ports);
	free(f);
}
