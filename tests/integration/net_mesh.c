/* net_mesh.c - network namespaces for kmsd nodes, and the relays between them that a test cuts and heals (net_mesh.h). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "net_mesh.h"
#include "test_net.h"

#define MESH_NODES 8
#define MESH_LISTENERS ((1 + 4 * MESH_NODES) * MESH_NODES)
#define MESH_PAIRS 256

/* Accepts in the namespace of from (0: the test's), dials port in to's. */
struct listener {
	int fd;
	unsigned from, to;
	int port;
};

struct relay {
	int fd[2]; /* accepted, dialled; -1: a free slot */
	unsigned from, to;
};

struct mesh_node {
	unsigned id;
	int ns;
	int grpc_port, raft_port;
	int cut;
};

struct kms_test_mesh {
	int root_ns; /* the test's own namespace */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	/* (mu) */
	struct mesh_node nodes[MESH_NODES];
	size_t n_nodes;
	struct listener listeners[MESH_LISTENERS];
	size_t n_listeners;
	unsigned long asked, done; /* cut/heal requests and how many the thread applied */
	int stop;
	/* The mesh thread's own (it holds mu while it touches them). */
	struct relay relays[MESH_PAIRS];
	pthread_t th;
};

int kms_test_mesh_supported(char *why, size_t cap)
{
	pid_t pid = fork();
	int status = 0;

	/* Called before any test runs: no ck_assert here. */
	if (pid < 0) {
		snprintf(why, cap, "fork: %s", strerror(errno));
		return 0;
	}
	if (pid == 0)
		_exit(unshare(CLONE_NEWNET) == 0 ? 0 : errno);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 1;
	snprintf(why, cap, "unshare(CLONE_NEWNET): %s (network namespaces need root)",
		 WIFEXITED(status) ? strerror(WEXITSTATUS(status)) : "the probe died");
	return 0;
}

/* Back to the test's namespace; a thread left in another would dial there. */
static void leave(kms_test_mesh *m)
{
	if (setns(m->root_ns, CLONE_NEWNET) != 0)
		abort();
}

/* A TCP socket of namespace ns (the calling thread's namespace is restored). */
static int socket_in(kms_test_mesh *m, int ns)
{
	int fd;

	if (setns(ns, CLONE_NEWNET) != 0)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	leave(m);
	return fd;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

/* A new namespace with its loopback up; its handle. Test thread only. */
static int new_netns(kms_test_mesh *m)
{
	struct ifreq ifr;
	int ns, s;

	ck_assert_msg(unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
	ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(ioctl(s, SIOCGIFFLAGS, &ifr), 0);
	ifr.ifr_flags |= IFF_UP;
	ck_assert_int_eq(ioctl(s, SIOCSIFFLAGS, &ifr), 0);
	close(s);
	leave(m);
	ck_assert_int_ge(ns, 0);
	return ns;
}

static struct mesh_node *node_of(kms_test_mesh *m, unsigned id)
{
	for (size_t i = 0; i < m->n_nodes; i++)
		if (m->nodes[i].id == id)
			return &m->nodes[i];
	return NULL;
}

/* Under mu: a listener in from's namespace (0: the test's) for to's port. */
static void add_listener(kms_test_mesh *m, unsigned from, unsigned to, int port)
{
	struct listener *l = &m->listeners[m->n_listeners];
	struct sockaddr_in a = loopback(port);
	int one = 1;

	ck_assert_uint_lt(m->n_listeners, MESH_LISTENERS);
	l->fd = socket_in(m, from == 0 ? m->root_ns : node_of(m, from)->ns);
	ck_assert_int_ge(l->fd, 0);
	ck_assert_int_eq(setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
	ck_assert_msg(bind(l->fd, (struct sockaddr *)&a, sizeof(a)) == 0,
		      "mesh: cannot listen on port %d for node %u: %s", port, to, strerror(errno));
	ck_assert_int_eq(listen(l->fd, 64), 0);
	l->from = from;
	l->to = to;
	l->port = port;
	m->n_listeners++;
}

static int is_cut(kms_test_mesh *m, unsigned id)
{
	struct mesh_node *n = node_of(m, id);

	return n != NULL && n->cut;
}

/* A link between two nodes, when either is cut; the test's are never. */
static int refused(kms_test_mesh *m, unsigned from, unsigned to)
{
	return from != 0 && (is_cut(m, from) || is_cut(m, to));
}

static void relay_close(struct relay *r)
{
	for (int side = 0; side < 2; side++) {
		if (r->fd[side] >= 0)
			close(r->fd[side]);
		r->fd[side] = -1;
	}
}

/* Mesh thread, under mu: a connection arrived on l; dial its target. */
static void relay_accept(kms_test_mesh *m, struct listener *l)
{
	int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC), up = -1, i;
	struct sockaddr_in a = loopback(l->port);
	struct mesh_node *to = node_of(m, l->to);

	if (fd < 0)
		return;
	for (i = 0; i < MESH_PAIRS && m->relays[i].fd[0] >= 0; i++)
		;
	/* Cut: the far end looks unreachable, connected and closed at once. */
	if (i < MESH_PAIRS && to != NULL && !refused(m, l->from, l->to))
		up = socket_in(m, to->ns);
	if (up >= 0 && connect(up, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(up);
		up = -1;
	}
	if (up < 0) {
		close(fd);
		return;
	}
	m->relays[i].fd[0] = fd;
	m->relays[i].fd[1] = up;
	m->relays[i].from = l->from;
	m->relays[i].to = l->to;
}

static void *mesh_main(void *arg)
{
	kms_test_mesh *m = arg;
	struct pollfd pf[MESH_LISTENERS + 2 * MESH_PAIRS];

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		size_t nl = m->n_listeners;

		if (m->done != m->asked) {
			for (int i = 0; i < MESH_PAIRS; i++)
				if (m->relays[i].fd[0] >= 0 &&
				    refused(m, m->relays[i].from, m->relays[i].to))
					relay_close(&m->relays[i]);
			m->done = m->asked;
			pthread_cond_broadcast(&m->cond);
		}
		for (size_t i = 0; i < nl; i++) {
			pf[i].fd = m->listeners[i].fd;
			pf[i].events = POLLIN;
			pf[i].revents = 0;
		}
		for (int i = 0; i < 2 * MESH_PAIRS; i++) {
			pf[nl + (size_t)i].fd = m->relays[i / 2].fd[i % 2];
			pf[nl + (size_t)i].events = POLLIN;
			pf[nl + (size_t)i].revents = 0;
		}
		/* Only this thread closes what it polls; listeners only grow. */
		pthread_mutex_unlock(&m->mu);
		if (poll(pf, nl + 2 * MESH_PAIRS, 20) < 0 && errno != EINTR)
			abort();
		pthread_mutex_lock(&m->mu);
		for (size_t i = 0; i < nl; i++)
			if (pf[i].revents & POLLIN)
				relay_accept(m, &m->listeners[i]);
		for (int i = 0; i < 2 * MESH_PAIRS; i++) {
			struct relay *r = &m->relays[i / 2];
			int side = i % 2;

			if (pf[nl + (size_t)i].fd < 0 || pf[nl + (size_t)i].revents == 0 ||
			    r->fd[side] != pf[nl + (size_t)i].fd)
				continue;
			if (kms_test_pump(r->fd[side], r->fd[1 - side]) != 0)
				relay_close(r);
		}
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

kms_test_mesh *kms_test_mesh_new(void)
{
	kms_test_mesh *m = calloc(1, sizeof(*m));

	ck_assert_ptr_nonnull(m);
	m->root_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(m->root_ns, 0);
	for (int i = 0; i < MESH_PAIRS; i++)
		m->relays[i].fd[0] = m->relays[i].fd[1] = -1;
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cond, NULL);
	ck_assert_int_eq(pthread_create(&m->th, NULL, mesh_main, m), 0);
	return m;
}

void kms_test_mesh_add(kms_test_mesh *m, kms_test_node *node)
{
	struct mesh_node *n;

	pthread_mutex_lock(&m->mu);
	ck_assert_uint_lt(m->n_nodes, MESH_NODES);
	ck_assert_ptr_null(node_of(m, node->id));
	n = &m->nodes[m->n_nodes];
	n->id = node->id;
	n->ns = new_netns(m);
	n->grpc_port = node->grpc_port;
	n->raft_port = node->raft_port;
	n->cut = 0;
	m->n_nodes++;
	add_listener(m, 0, n->id, n->grpc_port);
	for (size_t i = 0; i + 1 < m->n_nodes; i++) {
		struct mesh_node *o = &m->nodes[i];

		add_listener(m, n->id, o->id, o->grpc_port);
		add_listener(m, n->id, o->id, o->raft_port);
		add_listener(m, o->id, n->id, n->grpc_port);
		add_listener(m, o->id, n->id, n->raft_port);
	}
	node->netns_fd = n->ns;
	pthread_mutex_unlock(&m->mu);
}

static void set_cut(kms_test_mesh *m, unsigned id, int cut)
{
	unsigned long ticket;

	pthread_mutex_lock(&m->mu);
	ck_assert_ptr_nonnull(node_of(m, id));
	node_of(m, id)->cut = cut;
	ticket = ++m->asked;
	while (m->done < ticket)
		pthread_cond_wait(&m->cond, &m->mu);
	pthread_mutex_unlock(&m->mu);
}

void kms_test_mesh_cut(kms_test_mesh *m, unsigned id)
{
	set_cut(m, id, 1);
}

void kms_test_mesh_heal(kms_test_mesh *m, unsigned id)
{
	set_cut(m, id, 0);
}

void kms_test_mesh_free(kms_test_mesh *m)
{
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	m->stop = 1;
	pthread_mutex_unlock(&m->mu);
	pthread_join(m->th, NULL);
	for (int i = 0; i < MESH_PAIRS; i++)
		relay_close(&m->relays[i]);
	for (size_t i = 0; i < m->n_listeners; i++)
		close(m->listeners[i].fd);
	for (size_t i = 0; i < m->n_nodes; i++)
		close(m->nodes[i].ns);
	close(m->root_ns);
	pthread_mutex_destroy(&m->mu);
	pthread_cond_destroy(&m->cond);
	free(m);
}
