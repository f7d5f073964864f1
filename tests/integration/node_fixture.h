/* node_fixture.h - integration-test fixture: a CA, client certificates, SoftHSM tokens and real kmsd processes. */
#ifndef KMS_NODE_FIXTURE_H
#define KMS_NODE_FIXTURE_H

#include <limits.h>
#include <sys/types.h>

#include "kms/client.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"

#define KMS_TEST_TD "spiffe://kmsd.dev"
#define KMS_TEST_ADMIN KMS_TEST_TD "/ns/ops/sa/admin"
#define KMS_TEST_APP KMS_TEST_TD "/ns/demo/sa/app"
#define KMS_TEST_OTHER KMS_TEST_TD "/ns/other/sa/intruder"

/* One test environment: a temporary root with a CA and client identities. */
typedef struct kms_test_env {
	char root[PATH_MAX];
	char pki[PATH_MAX];
} kms_test_env;

typedef struct kms_test_node {
	kms_test_env *env;
	unsigned id;
	char dir[PATH_MAX];
	char conf[PATH_MAX];
	char log[PATH_MAX];
	char softhsm_conf[PATH_MAX];
	char token_label[64];
	int grpc_port;
	int raft_port;
	char endpoint[64];
	pid_t pid;
	/* Set before a start: kmsd runs without capabilities (kms_test_drop_caps),
	 * as an unprivileged user's process would even when the tests run as root. */
	int drop_caps;
	/* > 0: kmsd starts in this network namespace (net_mesh.h sets it, and
	 * owns it); 0: in the test's. */
	int netns_fd;
	/* NULL, or more kmsd arguments after --config (at most 28), NULL-terminated. */
	const char *const *extra_argv;
} kms_test_node;

/* Makes the root, the CA and the client certificates: "admin", "app",
 * "other", "expired" and, from an unrelated CA, "other-client". Aborts the
 * test on failure. */
void kms_test_env_init(kms_test_env *env);
/* Removes everything under root. */
void kms_test_env_destroy(kms_test_env *env);

/* Creates the node's token, certificate (key in the token) and config. */
void kms_test_node_init(kms_test_env *env, kms_test_node *node, unsigned id);
/* The same with extra ops/node-config arguments (e.g. "--join H:P"). */
void kms_test_node_init_args(kms_test_env *env, kms_test_node *node, unsigned id,
			     const char *extra_args);
/* Rewrites the node's config with extra ops/node-config arguments. */
void kms_test_node_reconfigure(kms_test_node *node, const char *extra_args);
/* Starts kmsd without waiting for it to be healthy. */
void kms_test_node_spawn(kms_test_node *node);
/* Waits until Health says SERVING (timeout_s at most); 1 if it did. */
int kms_test_node_wait_healthy(kms_test_node *node, int timeout_s);
/* Waits for the process to exit (timeout_s at most); its exit status, or -1. */
int kms_test_node_wait_exit(kms_test_node *node, int timeout_s);
/* Starts kmsd and waits until Health says SERVING (20 s at most). */
void kms_test_node_start(kms_test_node *node);
/* Starts kmsd with the node's config and returns its exit status (for
 * start-up failures); its log is in node->log. */
int kms_test_node_run_expect_exit(kms_test_node *node, const char *conf);
/* Sends sig and reaps the process; one that has not exited within
 * KMS_TEST_STOP_MS is killed and fails the test. */
#define KMS_TEST_STOP_MS 120000
void kms_test_node_signal(kms_test_node *node, int sig);

/*
 * A client for the node as identity who: "admin", "app", "other",
 * "expired", "other-client" (another CA) or "none" (no certificate), with a
 * 10 s deadline per call.
 */
kms_client *kms_test_client(kms_test_node *node, const char *who);
/* The same with request metadata (consistency, NULL: none) and a deadline
 * of its own (timeout_ms, 0: the client library's default). */
kms_client *kms_test_client_with(kms_test_node *node, const char *who,
				 const char *consistency, int timeout_ms);

/* ClusterStatus through node as who; NULL with *st on failure. The caller
 * frees the answer with protobuf_c_message_free_unpacked. */
Kms__V1__ClusterStatusResponse *kms_test_cluster_status(kms_test_node *node, const char *who,
							kms_rpc_status *st);

/* An add-member proposal of n through via, approved by the quorum, with a
 * join grant for the transport key fingerprint fp_hex (NULL: the one n
 * printed in its log, waited for up to 20 s), valid 600 s. Returns 0 once
 * the proposal executed (the promotion follows), else a gRPC status code:
 * the failing call's, or FAILED_PRECONDITION with the proposal's result.
 * raft_role gets "pending". */
int kms_test_add_member(kms_test_node *via, const kms_test_node *n, const char *fp_hex,
			kms_rpc_status *st, char *raft_role, size_t cap);

/* A remove-member proposal of id through via, approved by the quorum: 0
 * once executed, else the refusing call's gRPC code (NOT_FOUND for a
 * stranger, FAILED_PRECONDITION for the last member or the leader). */
int kms_test_remove_member(kms_test_node *via, uint64_t id, kms_rpc_status *st);

/* The transport key fingerprint a joining node printed in its log
 * ("joining: transport key sha256 HEX"), waiting up to timeout_s; fails the
 * test if it never appears. out holds 65 bytes. */
void kms_test_node_fingerprint(const kms_test_node *n, char out[65], int timeout_s);

/* The index in nodes[0..n) of the node that the running nodes say leads, or
 * -1; kms_test_wait_leader polls it for up to timeout_ms. */
int kms_test_leader_index(kms_test_node *nodes, int n);
int kms_test_wait_leader(kms_test_node *nodes, int n, int timeout_ms);

/*
 * A cluster of n nodes with ids 1..n and extra ops/node-config arguments
 * raft_args: node 1 bootstraps, the others join through it (AddMember) and
 * are healthy when this returns. Makes env. kms_test_join_node is one such
 * join, of nodes[i] with id i + 1.
 */
void kms_test_cluster_up(kms_test_env *env, kms_test_node *nodes, int n, const char *raft_args);
void kms_test_join_node(kms_test_env *env, kms_test_node *nodes, int i, const char *raft_args);
/* Polls ClusterStatus through via until member id is a voter (which the
 * leader makes it once it has caught up); 1 if it became one in time. */
int kms_test_wait_voter(kms_test_node *via, uint64_t id, int timeout_s);
/*
 * The two halves of kms_test_join_node: spawn creates and starts nodes[i]
 * with --join; admit adds it through nodes[0] with 127.0.0.1:raft_port as
 * its recorded Raft address (its own port, or a proxy's in front of it:
 * the cluster dials that) and waits until it is healthy and a voter.
 */
void kms_test_join_spawn(kms_test_env *env, kms_test_node *nodes, int i, const char *raft_args);
void kms_test_join_admit(kms_test_node *nodes, int i, int raft_port);

/* snprintf into a path buffer; a path that does not fit fails the test. */
#define KMS_TEST_PATH(buf, ...)                                                                   \
	ck_assert_msg(snprintf((buf), sizeof(buf), __VA_ARGS__) < (int)sizeof(buf),              \
		      "path too long")

/*
 * CreateKey of id through c, granting grantee (NULL: no grant) Encrypt,
 * Decrypt, GenerateDataKey and DescribeKey. Returns the gRPC status code.
 */
int kms_test_create_key(kms_client *c, const char *id, const char *grantee, kms_rpc_status *st);
/* The same, a multi-region key when multi_region is 1 (issue #7). */
int kms_test_create_key_scope(kms_client *c, const char *id, const char *grantee,
			      int multi_region, kms_rpc_status *st);

/* A data key made by GenerateDataKey: its blob and its plaintext. */
typedef struct kms_test_blob {
	uint8_t ct[512];
	size_t ct_len;
	uint8_t pt[32];
	uint32_t version;
} kms_test_blob;
/* GenerateDataKey of 32 bytes under key_id through node as who: 0, or the
 * gRPC code with *st. */
int kms_test_make_blob(kms_test_node *node, const char *who, const char *key_id,
		       kms_test_blob *out, kms_rpc_status *st);
/* 1 when Decrypt through node as who gives b's plaintext back; else 0 with
 * *st saying why. */
int kms_test_blob_decrypts(kms_test_node *node, const char *who, const kms_test_blob *b,
			   kms_rpc_status *st);

/*
 * Drops every capability of the calling process, and when it runs as root
 * the bounding set too, so that a program it execs has none either. For a
 * child that must see kmsd as another process of the same user does: root
 * passes the ptrace access checks of /proc with CAP_SYS_PTRACE, and only
 * reads another root process with all the capabilities that one holds.
 * 0, or -1 with errno.
 */
int kms_test_drop_caps(void);

/* Runs a shell command line; aborts the test if it fails. */
void kms_test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* True if the file contains the text. */
int kms_test_file_contains(const char *path, const char *text);

/* Runs a shell command line with stdout and stderr in out (cut at cap - 1
 * bytes, NUL-terminated); returns its exit status. */
int kms_test_sh_output(char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Waits until the node's log holds text (timeout_s at most); 1 if it did. */
int kms_test_wait_log(kms_test_node *node, const char *text, int timeout_s);

/* Sleeps ms milliseconds; the monotonic clock in milliseconds. */
void kms_test_sleep_ms(long ms);
long kms_test_now_ms(void);

/* One call of method to node as who (a kms_test_client, closed after):
 * the gRPC code; *resp (NULL unless OK) is the caller's. */
int kms_test_call(kms_test_node *node, const char *who, const char *method,
		  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
		  ProtobufCMessage **resp, kms_rpc_status *st);

/* DescribeKey of id on node as who: the key (the caller's:
 * protobuf_c_message_free_unpacked), or NULL with *st. */
Kms__V1__KeyMetadata *kms_test_describe(kms_test_node *node, const char *who, const char *id,
					kms_rpc_status *st);

/* Fails the test unless st has the gRPC code want and details holding text. */
#define KMS_TEST_ASSERT_STATUS(st, want, text)                                                    \
	do {                                                                                      \
		ck_assert_msg((st).code == (want), "want status %d, got %d: %s", (int)(want),     \
			      (st).code, (st).details);                                           \
		ck_assert_msg(strstr((st).details, (text)) != NULL,                               \
			      "status details '%s' do not mention '%s'", (st).details, (text));   \
	} while (0)

/*
 * The quorum: every test cluster has operators operator1..operator3 (keys
 * in env->pki/operators, ops/pki operator) and threshold KMS_TEST_THRESHOLD.
 */
#define KMS_TEST_THRESHOLD 2
/* ProposeOperation through node as who: the proposal (the caller's), or
 * NULL with *st. */
Kms__V1__Proposal *kms_test_propose(kms_test_node *node, const char *who,
				    const Kms__V1__RootOperation *op, uint32_t ttl_seconds,
				    kms_rpc_status *st);
/* operator_name's Ed25519 signature of the digest (hex), with its key file. */
void kms_test_operator_sign(kms_test_env *env, const char *operator_name, const char *digest_hex,
			    uint8_t sig[64]);
/* ApproveOperation with a given signature as who; the gRPC code, and the
 * proposal in *out (NULL unless OK; out may be NULL). */
int kms_test_approve_sig(kms_test_node *node, const char *who, const char *id,
			 const char *operator_name, const uint8_t *sig, size_t sig_len,
			 Kms__V1__Proposal **out, kms_rpc_status *st);
/* The same, as the administrator, signed with operator_name's key. */
int kms_test_approve(kms_test_node *node, const char *id, const char *digest_hex,
		     const char *operator_name, Kms__V1__Proposal **out, kms_rpc_status *st);
/* GetOperation on node as the administrator, or NULL with *st. */
Kms__V1__Proposal *kms_test_get_operation(kms_test_node *node, const char *id,
					  kms_rpc_status *st);
/* Proposes op and approves it with operator1..KMS_TEST_THRESHOLD: the
 * proposal after the last approval (its state says the outcome), or NULL
 * with *st when a call failed. */
Kms__V1__Proposal *kms_test_quorum_run(kms_test_node *node, const Kms__V1__RootOperation *op,
				       kms_rpc_status *st);

/* The source tree (KMS_SRCDIR), where ops/ lives. */
const char *kms_test_srcdir(void);
/* The build tree (KMS_BUILDDIR), where kmsd and kmsctl are. */
const char *kms_test_builddir(void);

#endif
