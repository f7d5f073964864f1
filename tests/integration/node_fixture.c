/* node_fixture.c - builds test PKI and SoftHSM tokens with the ops/ scripts and runs real kmsd processes. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_net.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "kms/fingerprint.h"
#include "kms/quorum.h"

static const char *srcdir(void)
{
	const char *s = getenv("KMS_SRCDIR");

	return s != NULL ? s : ".";
}

static const char *builddir(void)
{
	const char *s = getenv("KMS_BUILDDIR");

	return s != NULL ? s : ".";
}

void kms_test_sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	rc = system(cmd);
	ck_assert_msg(rc == 0, "command failed (%d): %s", rc, cmd);
}

/* The whole file: a debug-level kmsd log outgrows any fixed buffer. */
int kms_test_file_contains(const char *path, const char *text)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long size;
	size_t n;
	int found;

	if (f == NULL)
		return 0;
	if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
		fclose(f);
		return 0;
	}
	buf = malloc((size_t)size + 1);
	ck_assert_ptr_nonnull(buf);
	n = fread(buf, 1, (size_t)size, f);
	fclose(f);
	buf[n] = '\0';
	found = strstr(buf, text) != NULL;
	free(buf);
	return found;
}

int kms_test_sh_output(char *out, size_t cap, const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	FILE *p;
	size_t n = 0;
	int status;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	p = popen(cmd, "r");
	ck_assert_msg(p != NULL, "cannot run: %s", cmd);
	for (;;) {
		char buf[1024];
		size_t got = fread(buf, 1, sizeof(buf), p);

		if (got == 0)
			break;
		if (n + 1 < cap) {
			size_t take = got < cap - 1 - n ? got : cap - 1 - n;

			memcpy(out + n, buf, take);
			n += take;
		}
	}
	out[n] = '\0';
	status = pclose(p);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

int kms_test_wait_log(kms_test_node *node, const char *text, int timeout_s)
{
	struct timespec pause = {0, 100 * 1000 * 1000};

	for (int i = 0; i < timeout_s * 10; i++) {
		if (kms_test_file_contains(node->log, text))
			return 1;
		nanosleep(&pause, NULL);
	}
	return 0;
}

void kms_test_sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&t, NULL);
}

long kms_test_now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

int kms_test_call(kms_test_node *node, const char *who, const char *method,
		  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
		  ProtobufCMessage **resp, kms_rpc_status *st)
{
	kms_client *c = kms_test_client(node, who);
	int code;

	*resp = NULL;
	code = kms_client_call(c, method, req, resp_desc, resp, st);
	kms_client_close(c);
	return code;
}

Kms__V1__KeyMetadata *kms_test_describe(kms_test_node *node, const char *who, const char *id,
					kms_rpc_status *st)
{
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	Kms__V1__DescribeKeyResponse *r;
	Kms__V1__KeyMetadata *md;

	req.key_id = (char *)id;
	if (kms_test_call(node, who, "/kms.v1.KeyManagement/DescribeKey", &req.base,
			  &kms__v1__describe_key_response__descriptor, (ProtobufCMessage **)&r,
			  st) != 0)
		return NULL;
	md = r->key;
	r->key = NULL;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return md;
}

const char *kms_test_srcdir(void)
{
	return srcdir();
}

const char *kms_test_builddir(void)
{
	return builddir();
}

void kms_test_env_init(kms_test_env *env)
{
	const char *tmp = getenv("TMPDIR");

	KMS_TEST_PATH(env->root, "%s/kmsd-it-XXXXXX", tmp != NULL ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(env->root));
	KMS_TEST_PATH(env->pki, "%s/pki", env->root);
	kms_test_sh("cd '%s' && ops/pki ca '%s' >/dev/null && ops/pki node-ca '%s' >/dev/null && "
		    "ops/pki client '%s' admin '" KMS_TEST_ADMIN "' >/dev/null && "
		    "ops/pki client '%s' app '" KMS_TEST_APP "' >/dev/null && "
		    "ops/pki client '%s' other '" KMS_TEST_OTHER "' >/dev/null && "
		    "ops/pki client '%s' expired '" KMS_TEST_APP "' --expired >/dev/null && "
		    "ops/pki other-ca '%s' '" KMS_TEST_ADMIN "' >/dev/null && "
		    "ops/pki operator '%s' operator1 >/dev/null && "
		    "ops/pki operator '%s' operator2 >/dev/null && "
		    "ops/pki operator '%s' operator3 >/dev/null",
		    srcdir(), env->pki, env->pki, env->pki, env->pki, env->pki, env->pki, env->pki,
		    env->pki, env->pki, env->pki);
}

void kms_test_env_destroy(kms_test_env *env)
{
	if (env->root[0] != '\0' && getenv("KMS_TEST_KEEP") == NULL)
		kms_test_sh("rm -rf '%s'", env->root);
}

static void write_config(kms_test_node *node, const char *extra_args)
{
	kms_test_sh("cd '%s' && ops/node-config --dir '%s' --id %u --grpc 127.0.0.1:%d "
		    "--raft 127.0.0.1:%d --label %s --ca '%s/ca.pem' --node-ca '%s/node-ca.pem' "
		    "--cert '%s/node%u.pem' "
		    "--admins '" KMS_TEST_ADMIN "' --log-level debug "
		    "--operators operator1:'%s/operators/operator1.pub',"
		    "operator2:'%s/operators/operator2.pub',operator3:'%s/operators/operator3.pub' "
		    "--threshold %d %s >/dev/null",
		    srcdir(), node->dir, node->id, node->grpc_port, node->raft_port,
		    node->token_label, node->env->pki, node->env->pki, node->env->pki, node->id,
		    node->env->pki, node->env->pki, node->env->pki, KMS_TEST_THRESHOLD,
		    extra_args != NULL ? extra_args : "");
}

void kms_test_node_init_args(kms_test_env *env, kms_test_node *node, unsigned id,
			     const char *extra_args)
{
	memset(node, 0, sizeof(*node));
	node->env = env;
	node->id = id;
	node->grpc_port = kms_test_free_port();
	node->raft_port = kms_test_free_port();
	KMS_TEST_PATH(node->dir, "%s/node%u", env->root, id);
	KMS_TEST_PATH(node->conf, "%s/kmsd.conf", node->dir);
	KMS_TEST_PATH(node->log, "%s/kmsd.log", node->dir);
	KMS_TEST_PATH(node->softhsm_conf, "%s/token/softhsm2.conf", node->dir);
	KMS_TEST_PATH(node->token_label, "kmsd-it-node%u", id);
	KMS_TEST_PATH(node->endpoint, "127.0.0.1:%d", node->grpc_port);
	kms_test_sh("cd '%s' && ops/softhsm-token init '%s/token' %s >/dev/null && "
		    "ops/pki node '%s' node%u '" KMS_TEST_TD "/kmsd/node/%u' --token-dir '%s/token' "
		    "--label %s >/dev/null",
		    srcdir(), node->dir, node->token_label, env->pki, id, id, node->dir,
		    node->token_label);
	write_config(node, extra_args);
}

void kms_test_node_init(kms_test_env *env, kms_test_node *node, unsigned id)
{
	kms_test_node_init_args(env, node, id, NULL);
}

void kms_test_node_reconfigure(kms_test_node *node, const char *extra_args)
{
	write_config(node, extra_args);
}

int kms_test_drop_caps(void)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];

	/* Without this, root regains every capability at its next execve. */
	if (geteuid() == 0)
		for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
			if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
				return -1;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
		return -1;
	memset(none, 0, sizeof(none));
	return (int)syscall(SYS_capset, &hdr, none);
}

static pid_t spawn(kms_test_node *node, const char *conf)
{
	char kmsd[PATH_MAX];
	pid_t pid;

	KMS_TEST_PATH(kmsd, "%s/kmsd", builddir());
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		FILE *log = freopen(node->log, "a", stderr);

		if (log == NULL)
			_exit(126);
		/* A test killed by its timeout must not leave nodes behind to hold
		 * ports and CPU for the rest of the suite. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() == 1)
			_exit(124);
		setenv("SOFTHSM2_CONF", node->softhsm_conf, 1);
		if (node->netns_fd > 0 && setns(node->netns_fd, CLONE_NEWNET) != 0)
			_exit(123);
		if (node->drop_caps && kms_test_drop_caps() != 0)
			_exit(125);
		if (node->extra_argv != NULL) {
			const char *argv[32] = {"kmsd", "--config", conf};
			int n = 3;

			for (int i = 0; node->extra_argv[i] != NULL && n < 31; i++)
				argv[n++] = node->extra_argv[i];
			argv[n] = NULL;
			execv(kmsd, (char *const *)argv);
			_exit(127);
		}
		execl(kmsd, "kmsd", "--config", conf, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int health_serving(kms_test_node *node)
{
	kms_client *c = kms_test_client(node, "admin");
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	int serving = 0;

	if (c == NULL)
		return 0;
	if (kms_client_call(c, "/grpc.health.v1.Health/Check", &req.base,
			    &grpc__health__v1__health_check_response__descriptor, &resp,
			    &st) == 0) {
		serving = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
			  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	kms_client_close(c);
	return serving;
}

void kms_test_node_spawn(kms_test_node *node)
{
	node->pid = spawn(node, node->conf);
}

/* The last lines of a node's log, for failure messages: CI keeps the
 * test's output but not the node logs under /tmp. */
static void log_tail(const kms_test_node *node, char *out, size_t cap)
{
	FILE *f = fopen(node->log, "r");
	size_t n = 0;
	long size;

	out[0] = '\0';
	if (f == NULL)
		return;
	if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 &&
	    fseek(f, size > (long)cap - 1 ? size - (long)cap + 1 : 0, SEEK_SET) == 0)
		n = fread(out, 1, cap - 1, f);
	out[n] = '\0';
	fclose(f);
}

int kms_test_node_wait_healthy(kms_test_node *node, int timeout_s)
{
	struct timespec pause = {0, 100 * 1000 * 1000};
	char tail[1536];
	int status;

	for (int i = 0; i < timeout_s * 10; i++) {
		if (waitpid(node->pid, &status, WNOHANG) != 0) {
			log_tail(node, tail, sizeof(tail));
			ck_abort_msg("kmsd exited during start-up; see %s; it ends:\n%s",
				     node->log, tail);
		}
		if (health_serving(node))
			return 1;
		nanosleep(&pause, NULL);
	}
	return 0;
}

int kms_test_node_wait_exit(kms_test_node *node, int timeout_s)
{
	struct timespec pause = {0, 100 * 1000 * 1000};
	int status;

	for (int i = 0; i < timeout_s * 10; i++) {
		if (waitpid(node->pid, &status, WNOHANG) == node->pid) {
			node->pid = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		}
		nanosleep(&pause, NULL);
	}
	return -1;
}

void kms_test_node_start(kms_test_node *node)
{
	kms_test_node_spawn(node);
	ck_assert_msg(kms_test_node_wait_healthy(node, 20),
		      "kmsd did not become healthy within 20 s; see %s", node->log);
}

int kms_test_node_run_expect_exit(kms_test_node *node, const char *conf)
{
	pid_t pid = spawn(node, conf);
	int status = 0;

	for (int i = 0; i < 300; i++) {
		struct timespec pause = {0, 100 * 1000 * 1000};

		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		nanosleep(&pause, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	ck_abort_msg("kmsd kept running with a configuration it should refuse");
	return -1;
}

void kms_test_node_signal(kms_test_node *node, int sig)
{
	int status;

	if (node->pid <= 0)
		return;
	kill(node->pid, sig);
	/* Bounded: a node that hangs on its way out (a crash report that
	 * deadlocks at exit was seen) must fail its test, not the suite's
	 * time limit. */
	for (long t0 = kms_test_now_ms(); waitpid(node->pid, &status, WNOHANG) == 0;
	     kms_test_sleep_ms(50)) {
		if (kms_test_now_ms() - t0 > KMS_TEST_STOP_MS) {
			kill(node->pid, SIGKILL);
			waitpid(node->pid, &status, 0);
			node->pid = 0;
			ck_abort_msg("kmsd did not exit within %d s of signal %d; see %s",
				     KMS_TEST_STOP_MS / 1000, sig, node->log);
		}
	}
	node->pid = 0;
	if (sig == SIGTERM)
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "kmsd did not stop cleanly on SIGTERM (status 0x%x); see %s",
			      status, node->log);
}

kms_client *kms_test_client_with(kms_test_node *node, const char *who,
				 const char *consistency, int timeout_ms)
{
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
	kms_client_opts o;
	kms_client *c = NULL;
	kms_err err = {0};

	/* The server's certificate comes from the node CA. */
	KMS_TEST_PATH(ca, "%s/node-ca.pem", node->env->pki);
	KMS_TEST_PATH(cert, "%s/%s.pem", node->env->pki, who);
	KMS_TEST_PATH(key, "%s/%s.key", node->env->pki, who);
	memset(&o, 0, sizeof(o));
	o.target = node->endpoint;
	o.ca_file = ca;
	if (strcmp(who, "none") != 0) {
		o.cert_file = cert;
		o.key_file = key;
	}
	o.consistency = consistency;
	o.timeout_ms = timeout_ms;
	if (kms_client_open(&o, &c, &err) != KMS_OK)
		ck_abort_msg("client for %s: %s", who, err.msg);
	return c;
}

kms_client *kms_test_client(kms_test_node *node, const char *who)
{
	return kms_test_client_with(node, who, NULL, 10000);
}

Kms__V1__ClusterStatusResponse *kms_test_cluster_status(kms_test_node *node, const char *who,
							kms_rpc_status *st)
{
	kms_client *c = kms_test_client(node, who);
	Kms__V1__ClusterStatusRequest req = KMS__V1__CLUSTER_STATUS_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	kms_client_call(c, "/kms.v1.Operator/ClusterStatus", &req.base,
			&kms__v1__cluster_status_response__descriptor, &resp, st);
	kms_client_close(c);
	return (Kms__V1__ClusterStatusResponse *)resp;
}

void kms_test_node_fingerprint(const kms_test_node *n, char out[65], int timeout_s)
{
	static const char tag[] = "joining: transport key sha256 ";

	for (int i = 0; i < timeout_s * 10; i++) {
		char line[1024];
		FILE *f = fopen(n->log, "r");

		while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
			const char *p = strstr(line, tag);

			if (p != NULL && strspn(p + sizeof(tag) - 1, "0123456789abcdef") == 64) {
				memcpy(out, p + sizeof(tag) - 1, 64);
				out[64] = '\0';
				fclose(f);
				return;
			}
		}
		if (f != NULL)
			fclose(f);
		usleep(100000);
	}
	ck_abort_msg("node %u printed no transport key fingerprint in %d s; see %s", n->id,
		     timeout_s, n->log);
}

int kms_test_add_member(kms_test_node *via, const kms_test_node *n, const char *fp_hex,
			kms_rpc_status *st, char *raft_role, size_t cap)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__AddMemberOperation am = KMS__V1__ADD_MEMBER_OPERATION__INIT;
	Kms__V1__Proposal *p;
	uint8_t fpb[32]; /* SHA-256 */
	char raft[64], grpc[64], fp[65];
	kms_err err = {0};
	int code;

	snprintf(raft, sizeof(raft), "127.0.0.1:%d", n->raft_port);
	snprintf(grpc, sizeof(grpc), "127.0.0.1:%d", n->grpc_port);
	if (fp_hex == NULL) {
		kms_test_node_fingerprint(n, fp, 20);
		fp_hex = fp;
	}
	memset(st, 0, sizeof(*st));
	snprintf(raft_role, cap, "pending");
	if (kms_hex_decode(fp_hex, fpb, sizeof(fpb), "transport_key_sha256", &err) != KMS_OK) {
		st->code = 3; /* INVALID_ARGUMENT, as the server says of it */
		snprintf(st->details, sizeof(st->details), "%s", err.msg);
		return st->code;
	}
	am.id = n->id;
	am.raft_address = raft;
	am.grpc_address = grpc;
	am.transport_key_sha256.data = fpb;
	am.transport_key_sha256.len = sizeof(fpb);
	am.grant_ttl_seconds = 600;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER;
	op.add_member = &am;
	p = kms_test_quorum_run(via, &op, st);
	if (p == NULL)
		return st->code;
	code = strcmp(p->state, "executed") == 0 ? 0 : 9; /* FAILED_PRECONDITION */
	if (code != 0) {
		st->code = code;
		snprintf(st->details, sizeof(st->details), "proposal %s %s: %s", p->id, p->state,
			 p->result);
	}
	protobuf_c_message_free_unpacked(&p->base, NULL);
	return code;
}

int kms_test_leader_index(kms_test_node *nodes, int n)
{
	for (int i = 0; i < n; i++) {
		kms_rpc_status st;
		Kms__V1__ClusterStatusResponse *s;
		int found = -1;

		if (nodes[i].pid <= 0)
			continue;
		s = kms_test_cluster_status(&nodes[i], "admin", &st);
		if (s == NULL)
			continue;
		for (int j = 0; j < n; j++)
			if (s->leader_id == nodes[j].id && nodes[j].pid > 0)
				found = j;
		protobuf_c_message_free_unpacked(&s->base, NULL);
		if (found >= 0)
			return found;
	}
	return -1;
}

int kms_test_wait_leader(kms_test_node *nodes, int n, int timeout_ms)
{
	struct timespec pause = {0, 200 * 1000 * 1000};

	for (int t = 0; t < timeout_ms; t += 200) {
		int l = kms_test_leader_index(nodes, n);

		if (l >= 0)
			return l;
		nanosleep(&pause, NULL);
	}
	return -1;
}

void kms_test_join_spawn(kms_test_env *env, kms_test_node *nodes, int i, const char *raft_args)
{
	char extra[256];

	KMS_TEST_PATH(extra, "%s --join %s", raft_args, nodes[0].endpoint);
	kms_test_node_init_args(env, &nodes[i], (unsigned)i + 1, extra);
	kms_test_node_spawn(&nodes[i]);
}

int kms_test_wait_voter(kms_test_node *via, uint64_t id, int timeout_s)
{
	for (int t = 0; t < timeout_s * 5; t++) {
		kms_rpc_status st;
		Kms__V1__ClusterStatusResponse *s = kms_test_cluster_status(via, "admin", &st);
		int voter = 0;

		for (size_t j = 0; s != NULL && j < s->n_members; j++)
			if (s->members[j]->id == id && strcmp(s->members[j]->raft_role, "voter") == 0)
				voter = 1;
		if (s != NULL)
			protobuf_c_message_free_unpacked(&s->base, NULL);
		if (voter)
			return 1;
		usleep(200000);
	}
	return 0;
}

void kms_test_join_admit(kms_test_node *nodes, int i, int raft_port)
{
	kms_test_node recorded = nodes[i];
	char role[32] = "";
	kms_rpc_status st;

	recorded.raft_port = raft_port;
	ck_assert_msg(kms_test_add_member(&nodes[0], &recorded, NULL, &st, role, sizeof(role)) == 0,
		      "AddMember node %d: %s", i + 1, st.details);
	ck_assert_msg(kms_test_node_wait_healthy(&nodes[i], 30), "node %d never became healthy; see %s",
		      i + 1, nodes[i].log);
	ck_assert_msg(kms_test_wait_voter(&nodes[0], nodes[i].id, 30), "node %d never became a voter; see %s",
		      i + 1, nodes[i].log);
}

void kms_test_join_node(kms_test_env *env, kms_test_node *nodes, int i, const char *raft_args)
{
	kms_test_join_spawn(env, nodes, i, raft_args);
	kms_test_join_admit(nodes, i, nodes[i].raft_port);
}

void kms_test_cluster_up(kms_test_env *env, kms_test_node *nodes, int n, const char *raft_args)
{
	kms_test_env_init(env);
	kms_test_node_init_args(env, &nodes[0], 1, raft_args);
	kms_test_node_start(&nodes[0]);
	for (int i = 1; i < n; i++)
		kms_test_join_node(env, nodes, i, raft_args);
}

int kms_test_create_key(kms_client *c, const char *id, const char *grantee, kms_rpc_status *st)
{
	return kms_test_create_key_scope(c, id, grantee, 0, st);
}

int kms_test_create_key_scope(kms_client *c, const char *id, const char *grantee,
			      int multi_region, kms_rpc_status *st)
{
	static char *ops_all[] = {"Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"};
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT;
	Kms__V1__Grant *grants[] = {&grant};
	ProtobufCMessage *resp = NULL;
	int code;

	grant.principal = (char *)grantee;
	grant.operations = ops_all;
	grant.n_operations = 4;
	policy.grants = grants;
	policy.n_grants = grantee != NULL ? 1 : 0;
	req.key_id = (char *)id;
	req.description = (char *)"integration test key";
	req.policy = &policy;
	req.multi_region = multi_region;
	code = kms_client_call(c, "/kms.v1.KeyManagement/CreateKey", &req.base,
			       &kms__v1__create_key_response__descriptor, &resp, st);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	return code;
}

/* --- data keys --- */

int kms_test_make_blob(kms_test_node *node, const char *who, const char *key_id,
		       kms_test_blob *out, kms_rpc_status *st)
{
	Kms__V1__GenerateDataKeyRequest req = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyResponse *r = NULL;

	memset(out, 0, sizeof(*out));
	req.key_id = (char *)key_id;
	req.number_of_bytes = sizeof(out->pt);
	if (kms_test_call(node, who, "/kms.v1.KeyManagement/GenerateDataKey", &req.base,
			  &kms__v1__generate_data_key_response__descriptor, (ProtobufCMessage **)&r,
			  st) != 0)
		return st->code;
	ck_assert_uint_le(r->ciphertext_blob.len, sizeof(out->ct));
	ck_assert_uint_eq(r->plaintext.len, sizeof(out->pt));
	memcpy(out->ct, r->ciphertext_blob.data, r->ciphertext_blob.len);
	out->ct_len = r->ciphertext_blob.len;
	memcpy(out->pt, r->plaintext.data, sizeof(out->pt));
	out->version = r->key_version;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return 0;
}

int kms_test_blob_decrypts(kms_test_node *node, const char *who, const kms_test_blob *b,
			   kms_rpc_status *st)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptResponse *r = NULL;
	int same;

	req.ciphertext_blob.data = (uint8_t *)b->ct;
	req.ciphertext_blob.len = b->ct_len;
	if (kms_test_call(node, who, "/kms.v1.KeyManagement/Decrypt", &req.base,
			  &kms__v1__decrypt_response__descriptor, (ProtobufCMessage **)&r, st) != 0)
		return 0;
	same = r->plaintext.len == sizeof(b->pt) && memcmp(r->plaintext.data, b->pt, 32) == 0;
	if (!same)
		snprintf(st->details, sizeof(st->details), "Decrypt gave other bytes");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return same;
}

/* --- the quorum --- */

Kms__V1__Proposal *kms_test_propose(kms_test_node *node, const char *who,
				    const Kms__V1__RootOperation *op, uint32_t ttl_seconds,
				    kms_rpc_status *st)
{
	Kms__V1__ProposeOperationRequest req = KMS__V1__PROPOSE_OPERATION_REQUEST__INIT;
	Kms__V1__ProposeOperationResponse *r = NULL;
	Kms__V1__Proposal *p;

	req.operation = (Kms__V1__RootOperation *)op;
	req.ttl_seconds = ttl_seconds;
	if (kms_test_call(node, who, "/kms.v1.Operator/ProposeOperation", &req.base,
			  &kms__v1__propose_operation_response__descriptor,
			  (ProtobufCMessage **)&r, st) != 0)
		return NULL;
	p = r->proposal;
	r->proposal = NULL;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return p;
}

void kms_test_operator_sign(kms_test_env *env, const char *operator_name, const char *digest_hex,
			    uint8_t sig[64])
{
	uint8_t d[KMS_QUORUM_DIGEST_LEN];
	char key[PATH_MAX];
	kms_err err = {0};

	KMS_TEST_PATH(key, "%s/operators/%s.key", env->pki, operator_name);
	ck_assert_msg(kms_hex_decode(digest_hex, d, sizeof(d), "digest", &err) == KMS_OK, "%s",
		      err.msg);
	ck_assert_msg(kms_ed25519_sign_file(key, d, sig, NULL, &err) == KMS_OK, "%s", err.msg);
}

int kms_test_approve_sig(kms_test_node *node, const char *who, const char *id,
			 const char *operator_name, const uint8_t *sig, size_t sig_len,
			 Kms__V1__Proposal **out, kms_rpc_status *st)
{
	Kms__V1__ApproveOperationRequest req = KMS__V1__APPROVE_OPERATION_REQUEST__INIT;
	Kms__V1__ApproveOperationResponse *r = NULL;
	int code;

	if (out != NULL)
		*out = NULL;
	req.proposal_id = (char *)id;
	req.operator_name = (char *)operator_name;
	req.signature.data = (uint8_t *)sig;
	req.signature.len = sig_len;
	code = kms_test_call(node, who, "/kms.v1.Operator/ApproveOperation", &req.base,
			     &kms__v1__approve_operation_response__descriptor,
			     (ProtobufCMessage **)&r, st);
	if (code == 0 && out != NULL) {
		*out = r->proposal;
		r->proposal = NULL;
	}
	if (r != NULL)
		protobuf_c_message_free_unpacked(&r->base, NULL);
	return code;
}

int kms_test_approve(kms_test_node *node, const char *id, const char *digest_hex,
		     const char *operator_name, Kms__V1__Proposal **out, kms_rpc_status *st)
{
	uint8_t sig[64];

	kms_test_operator_sign(node->env, operator_name, digest_hex, sig);
	return kms_test_approve_sig(node, "admin", id, operator_name, sig, sizeof(sig), out, st);
}

Kms__V1__Proposal *kms_test_get_operation(kms_test_node *node, const char *id,
					  kms_rpc_status *st)
{
	Kms__V1__GetOperationRequest req = KMS__V1__GET_OPERATION_REQUEST__INIT;
	Kms__V1__GetOperationResponse *r = NULL;
	Kms__V1__Proposal *p;

	req.proposal_id = (char *)id;
	if (kms_test_call(node, "admin", "/kms.v1.Operator/GetOperation", &req.base,
			  &kms__v1__get_operation_response__descriptor, (ProtobufCMessage **)&r,
			  st) != 0)
		return NULL;
	p = r->proposal;
	r->proposal = NULL;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return p;
}

Kms__V1__Proposal *kms_test_quorum_run(kms_test_node *node, const Kms__V1__RootOperation *op,
				       kms_rpc_status *st)
{
	Kms__V1__Proposal *p = kms_test_propose(node, "admin", op, 0, st), *done = NULL;
	char name[32];

	if (p == NULL)
		return NULL;
	for (int i = 1; i <= KMS_TEST_THRESHOLD; i++) {
		if (done != NULL)
			protobuf_c_message_free_unpacked(&done->base, NULL);
		snprintf(name, sizeof(name), "operator%d", i);
		if (kms_test_approve(node, p->id, p->digest, name, &done, st) != 0) {
			protobuf_c_message_free_unpacked(&p->base, NULL);
			return NULL;
		}
	}
	protobuf_c_message_free_unpacked(&p->base, NULL);
	return done;
}

int kms_test_remove_member(kms_test_node *via, uint64_t id, kms_rpc_status *st)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__RemoveMemberOperation rm = KMS__V1__REMOVE_MEMBER_OPERATION__INIT;
	Kms__V1__Proposal *p;
	int code;

	memset(st, 0, sizeof(*st));
	rm.id = id;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER;
	op.remove_member = &rm;
	p = kms_test_quorum_run(via, &op, st);
	if (p == NULL)
		return st->code;
	code = strcmp(p->state, "executed") == 0 ? 0 : 9;
	if (code != 0) {
		st->code = code;
		snprintf(st->details, sizeof(st->details), "proposal %s %s: %s", p->id, p->state,
			 p->result);
	}
	protobuf_c_message_free_unpacked(&p->base, NULL);
	return code;
}
