/* test_net.h - network helpers shared by the test suites. */
#ifndef KMS_TEST_NET_H
#define KMS_TEST_NET_H

/* A loopback TCP port the kernel just handed out and released; good enough
 * on a quiet loopback. Fails the test if no port can be had. */
int kms_test_free_port(void);

#endif
