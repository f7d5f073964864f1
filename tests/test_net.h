/* test_net.h - network helpers shared by the test suites. */
#ifndef KMS_TEST_NET_H
#define KMS_TEST_NET_H

/* A loopback TCP port the kernel just handed out and released; good enough
 * on a quiet loopback. Fails the test if no port can be had. */
int kms_test_free_port(void);

/*
 * A flood of idle TCP connections: per_port connections to each of the n
 * loopback ports, held open on a thread of the flood's own and sending
 * nothing. One that a server closes is re-opened at once; one that cannot
 * connect (a port that is down) is retried every 20 ms. Only the loopback
 * address is ever dialled.
 */
typedef struct kms_test_flood kms_test_flood;

typedef struct kms_test_flood_stats {
	unsigned long opened;		/* connections established */
	unsigned long closed_by_server; /* ...and then closed by a server */
	unsigned long refused;		/* connects that failed */
} kms_test_flood_stats;

/* Starts the flood; fails the test if it cannot. */
kms_test_flood *kms_test_flood_start(const int *ports, int n, int per_port);
/* 1 once every connection has been established at least once (a server
 * may have closed some since), within timeout_ms; else 0. */
int kms_test_flood_established(kms_test_flood *f, int timeout_ms);
/* Stops the flood, closes its connections, fills out (may be NULL) and
 * frees f. */
void kms_test_flood_stop(kms_test_flood *f, kms_test_flood_stats *out);

/* Moves what the socket from has ready (without waiting) to the socket to;
 * -1 when either end is done. A relay's one step. */
int kms_test_pump(int from, int to);

/*
 * A loopback TCP proxy: connections to its port (an ephemeral one) are
 * forwarded to target_port, byte for byte in both directions, on a thread
 * of the proxy's own. kms_test_proxy_cut closes every forwarded connection
 * and, until kms_test_proxy_resume, closes each new one as soon as it is
 * accepted: the target looks unreachable from the dialling side while it
 * runs on. Both return once the proxy thread has done it. For a node that
 * must fall behind its cluster and keep serving (a Raft peer dials the
 * address the cluster recorded for the node: put the proxy there).
 */
typedef struct kms_test_proxy kms_test_proxy;

kms_test_proxy *kms_test_proxy_start(int target_port);
int kms_test_proxy_port(const kms_test_proxy *p);
void kms_test_proxy_cut(kms_test_proxy *p);
void kms_test_proxy_resume(kms_test_proxy *p);
/* Closes everything and frees p (NULL: nothing). */
void kms_test_proxy_stop(kms_test_proxy *p);

#endif
