/* net_mesh.h - kmsd nodes each in a network namespace of its own, joined by relays the test can cut: a node cut off from the others by the network, both ways, while the test's clients still reach it. */
#ifndef KMS_TEST_NET_MESH_H
#define KMS_TEST_NET_MESH_H

#include <stddef.h>

#include "node_fixture.h"

/*
 * Each node added runs in a new network namespace with nothing but its own
 * loopback. The mesh (one thread of this process) listens, in every node's
 * namespace, on 127.0.0.1 at the gRPC and Raft ports of every other node,
 * and relays each connection byte for byte into that node's namespace; in
 * the test's own namespace it listens on every node's gRPC port. So the
 * nodes keep the addresses the cluster records (127.0.0.1:port), and the
 * test's clients reach every node as usual.
 *
 * kms_test_mesh_cut(id) closes every relayed connection between node id and
 * the other nodes, in both directions and on both its ports, and refuses
 * new ones until kms_test_mesh_heal(id): to the node and to the others it
 * is as if the network between them was gone. The test's own connections
 * to the node stay up.
 *
 * Namespaces need CAP_SYS_ADMIN (root): kms_test_mesh_supported says so
 * first. A node is added once, before its first start, and not restarted.
 */
typedef struct kms_test_mesh kms_test_mesh;

/* 1 if this process can make network namespaces; else 0 with why. */
int kms_test_mesh_supported(char *why, size_t cap);

/* Fails the test if the mesh cannot start. */
kms_test_mesh *kms_test_mesh_new(void);

/*
 * Gives node (initialized, not started) a namespace of its own: sets
 * node->netns_fd, which the fixture's spawn enters, and the relays to and
 * from every node added before it.
 */
void kms_test_mesh_add(kms_test_mesh *m, kms_test_node *node);

/* Both return once the mesh thread has done it. */
void kms_test_mesh_cut(kms_test_mesh *m, unsigned id);
void kms_test_mesh_heal(kms_test_mesh *m, unsigned id);

/* Closes every relay and namespace handle and frees m (NULL: nothing). */
void kms_test_mesh_free(kms_test_mesh *m);

#endif
