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

/* ---- a TCP proxy whose connections can be cut ---- */

#define PROXY_PAIRS 32
#define PROXY_CHUNK 16384

struct kms_test_proxy {
	int listen_fd, port, target_port;
	int pair[PROXY_PAIRS][2]; /* accepted side, target side; -1: free */
	atomic_int want_cut;	  /* set by the test's thread */
	atomic_int is_cut;	  /* what the proxy thread has done */
	atomic_int stop;
	pthread_t th;
};

static int loopback_connect(int port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void proxy_close(kms_test_proxy *p, int i)
{
	for (int side = 0; side < 2; side++) {
		if (p->pair[i][side] >= 0)
			close(p->pair[i][side]);
		p->pair[i][side] = -1;
	}
}

int kms_test_pump(int from, int to)
{
	char buf[PROXY_CHUNK];
	ssize_t n = recv(from, buf, sizeof(buf), MSG_DONTWAIT), off = 0;

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n <= 0)
		return -1;
	while (off < n) {
		ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += w;
	}
	return 0;
}

static void proxy_accept(kms_test_proxy *p, int cut)
{
	int fd = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC), up, i;

	if (fd < 0)
		return;
	for (i = 0; i < PROXY_PAIRS && p->pair[i][0] >= 0; i++)
		;
	/* Cut: the target looks unreachable, connected and closed at once. */
	up = cut || i == PROXY_PAIRS ? -1 : loopback_connect(p->target_port);
	if (up < 0) {
		close(fd);
		return;
	}
	p->pair[i][0] = fd;
	p->pair[i][1] = up;
}

static void *proxy_main(void *arg)
{
	kms_test_proxy *p = arg;
	struct pollfd pf[1 + 2 * PROXY_PAIRS];

	while (!atomic_load(&p->stop)) {
		int cut = atomic_load(&p->want_cut);

		if (cut && !atomic_load(&p->is_cut))
			for (int i = 0; i < PROXY_PAIRS; i++)
				proxy_close(p, i);
		atomic_store(&p->is_cut, cut);
		pf[0].fd = p->listen_fd;
		pf[0].events = POLLIN;
		for (int i = 0; i < 2 * PROXY_PAIRS; i++) {
			pf[1 + i].fd = p->pair[i / 2][i % 2];
			pf[1 + i].events = POLLIN;
			pf[1 + i].revents = 0;
		}
		if (poll(pf, 1 + 2 * PROXY_PAIRS, 20) < 0 && errno != EINTR)
			break;
		if (pf[0].revents & POLLIN)
			proxy_accept(p, cut);
		for (int i = 0; i < 2 * PROXY_PAIRS; i++) {
			int pi = i / 2, side = i % 2;

			if (pf[1 + i].fd < 0 || pf[1 + i].revents == 0 || p->pair[pi][side] < 0)
				continue;
			if (kms_test_pump(p->pair[pi][side], p->pair[pi][1 - side]) != 0)
				proxy_close(p, pi);
		}
	}
	for (int i = 0; i < PROXY_PAIRS; i++)
		proxy_close(p, i);
	close(p->listen_fd);
	return NULL;
}

kms_test_proxy *kms_test_proxy_start(int target_port)
{
	kms_test_proxy *p = calloc(1, sizeof(*p));
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	ck_assert_ptr_nonnull(p);
	p->target_port = target_port;
	for (int i = 0; i < PROXY_PAIRS; i++)
		p->pair[i][0] = p->pair[i][1] = -1;
	p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(p->listen_fd, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(p->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(p->listen_fd, (struct sockaddr *)&a, &len), 0);
	ck_assert_int_eq(listen(p->listen_fd, 64), 0);
	p->port = ntohs(a.sin_port);
	ck_assert_int_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
	return p;
}

int kms_test_proxy_port(const kms_test_proxy *p)
{
	return p->port;
}

/* Waits until the proxy thread has done what was asked. */
static void proxy_set_cut(kms_test_proxy *p, int cut)
{
	struct timespec pause = {0, 5 * 1000 * 1000};

	atomic_store(&p->want_cut, cut);
	while (atomic_load(&p->is_cut) != cut)
		nanosleep(&pause, NULL);
}

void kms_test_proxy_cut(kms_test_proxy *p)
{
	proxy_set_cut(p, 1);
}

void kms_test_proxy_resume(kms_test_proxy *p)
{
	proxy_set_cut(p, 0);
}

void kms_test_proxy_stop(kms_test_proxy *p)
{
	if (p == NULL)
		return;
	atomic_store(&p->stop, 1);
	pthread_join(p->th, NULL);
	free(p);
}
