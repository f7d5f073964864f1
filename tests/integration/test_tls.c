/* test_tls.c - a real kmsd node's TLS: certificate and CRL reload without a restart, revoked clients refused at the handshake, the TLS version and cipher policy seen by openssl s_client, and the gRPC limits on slow clients. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define OUT_MAX 65536

static kms_test_env env;
static kms_test_node node;
static char out[OUT_MAX];

/* Test configurations: files looked at every second, short limits. */
#define RELOAD_ARGS "--grpc-option tls_reload_interval_s=1"
#define LIMIT_ARGS                                                                                \
	"--grpc-option request_timeout_s=2 --grpc-option handshake_timeout_s=2 "                  \
	"--grpc-option max_concurrent_streams=2 --grpc-option tls_reload_interval_s=1"

static void node_up_with(const char *args)
{
	kms_test_env_init(&env);
	kms_test_node_init_args(&env, &node, 1, args);
	kms_test_node_start(&node);
}

static void node_up_reload(void)
{
	node_up_with(RELOAD_ARGS);
}

static void node_up_limits(void)
{
	node_up_with(LIMIT_ARGS);
}

/* The client CA's (empty) CRL exists before the node starts with it. */
static void node_up_crl(void)
{
	char args[PATH_MAX + 128];

	kms_test_env_init(&env);
	kms_test_sh("cd '%s' && ops/pki crl '%s' >/dev/null", kms_test_srcdir(), env.pki);
	KMS_TEST_PATH(args, RELOAD_ARGS " --crl '%s/crl.pem'", env.pki);
	kms_test_node_init_args(&env, &node, 1, args);
	kms_test_node_start(&node);
}

static void node_down(void)
{
	kms_test_node_signal(&node, SIGTERM);
	kms_test_env_destroy(&env);
}

/* openssl s_client against the node as who (a certificate in the PKI, or
 * NULL for none) with extra options; its output in out, its status back. */
static int s_client(const char *who, const char *opts)
{
	char cert[2 * PATH_MAX + 32] = "";

	if (who != NULL)
		KMS_TEST_PATH(cert, "-cert '%s/%s.pem' -key '%s/%s.key'", env.pki, who, env.pki, who);
	return kms_test_sh_output(out, sizeof(out),
				  "openssl s_client -connect %s -CAfile '%s/node-ca.pem' %s %s "
				  "</dev/null 2>&1",
				  node.endpoint, env.pki, cert, opts);
}

/* The serial of the certificate the node presents to a new handshake. */
static void served_serial(char *serial, size_t cap)
{
	kms_test_sh_output(serial, cap,
			   "openssl s_client -connect %s -CAfile '%s/node-ca.pem' -cert '%s/app.pem' "
			   "-key '%s/app.key' </dev/null 2>/dev/null | openssl x509 -noout -serial",
			   node.endpoint, env.pki, env.pki, env.pki);
}

static void file_serial(const char *name, char *serial, size_t cap)
{
	ck_assert_int_eq(kms_test_sh_output(serial, cap, "openssl x509 -noout -serial -in '%s/%s'",
					    env.pki, name),
			 0);
}

/* Waits (10 s at most) until new handshakes see the certificate with serial want. */
static int wait_served_serial(const char *want)
{
	struct timespec pause = {0, 200 * 1000 * 1000};
	char got[256];

	for (int i = 0; i < 50; i++) {
		served_serial(got, sizeof(got));
		if (strcmp(got, want) == 0)
			return 1;
		nanosleep(&pause, NULL);
	}
	return 0;
}

static int health(kms_client *c, kms_rpc_status *st)
{
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;

	kms_client_call(c, "/grpc.health.v1.Health/Check", &req.base,
			&grpc__health__v1__health_check_response__descriptor, &resp, st);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	return st->code;
}

/* A call as who on a new connection: its gRPC status. */
static int call_as(const char *who, kms_rpc_status *st)
{
	kms_client *c = kms_test_client(&node, who);
	int code = health(c, st);

	kms_client_close(c);
	return code;
}

/* Renews the node certificate (same key in the token) and both CA
 * certificates (same keys), as an operator would with ops/pki. */
static void renew_all(void)
{
	kms_test_sh("cd '%s' && ops/pki node '%s' node1 '" KMS_TEST_TD "/kmsd/node/1' "
		    "--token-dir '%s/token' --label %s >/dev/null && "
		    "ops/pki renew-ca '%s' ca >/dev/null && ops/pki renew-ca '%s' node-ca >/dev/null",
		    kms_test_srcdir(), env.pki, node.dir, node.token_label, env.pki, env.pki);
}

/* --- reload --- */

START_TEST(renewed_certificates_reload_on_sighup)
{
	char before[256], after[256];
	kms_client *old = kms_test_client(&node, "app");
	kms_rpc_status st;
	kms_test_sh(": > '%s'", node.log); /* only this test's lines */

	/* A connection made before the renewal. */
	ck_assert_int_eq(health(old, &st), 0);
	served_serial(before, sizeof(before));
	ck_assert_msg(strncmp(before, "serial=", 7) == 0, "s_client: %s", before);
	/* No file watch for this part: SIGHUP alone must do it. */
	renew_all();
	file_serial("node1.pem", after, sizeof(after));
	ck_assert_str_ne(before, after);
	kill(node.pid, SIGHUP);
	/* (The file watch may have reloaded first; SIGHUP reloads all the same.) */
	ck_assert_msg(kms_test_wait_log(&node, "tls: reloaded (SIGHUP)", 10), "no reload; see %s",
		      node.log);
	ck_assert_msg(wait_served_serial(after), "new handshakes still see %s, not %s", before,
		      after);
	/* Calls go on: on the old connection and on new ones. */
	ck_assert_msg(health(old, &st) == 0, "old connection: %s", st.details);
	ck_assert_msg(call_as("app", &st) == 0, "new connection: %s", st.details);
	ck_assert_msg(call_as("admin", &st) == 0, "new connection: %s", st.details);
	kms_client_close(old);
}
END_TEST

START_TEST(changed_files_reload_without_a_signal)
{
	char want[256];
	kms_rpc_status st;
	kms_test_sh(": > '%s'", node.log); /* only this test's lines */

	renew_all();
	file_serial("node1.pem", want, sizeof(want));
	/* The watch looks every second ([grpc] tls_reload_interval_s = 1). */
	ck_assert_msg(wait_served_serial(want), "the renewed certificate %s was not picked up; see %s",
		      want, node.log);
	ck_assert_msg(kms_test_wait_log(&node, "tls: reloaded (a file changed)", 10),
		      "see %s", node.log);
	ck_assert_msg(call_as("app", &st) == 0, "%s", st.details);
}
END_TEST

START_TEST(a_bad_file_keeps_the_old_certificates)
{
	char before[256], now[256];
	kms_rpc_status st;
	kms_test_sh(": > '%s'", node.log); /* only this test's lines */

	served_serial(before, sizeof(before));
	/* A node certificate that is not PEM, then one naming another node. */
	kms_test_sh("cp '%s/node1.pem' '%s/node1.good' && echo garbage > '%s/node1.pem'", env.pki,
		    env.pki, env.pki);
	kill(node.pid, SIGHUP);
	ck_assert_msg(kms_test_wait_log(&node, "tls: reload (SIGHUP) refused", 10), "see %s",
		      node.log);
	ck_assert(kms_test_file_contains(node.log, "holds no certificate"));
	kms_test_sh("cd '%s' && ops/softhsm-token init '%s/token2' other-node >/dev/null && "
		    "ops/pki node '%s' node2 '" KMS_TEST_TD "/kmsd/node/2' --token-dir '%s/token2' "
		    "--label other-node >/dev/null && cp '%s/node2.pem' '%s/node1.pem'",
		    kms_test_srcdir(), node.dir, env.pki, node.dir, env.pki, env.pki);
	kill(node.pid, SIGHUP);
	ck_assert_msg(kms_test_wait_log(&node, "is not for this node's key in the HSM", 10),
		      "see %s", node.log);
	served_serial(now, sizeof(now));
	ck_assert_str_eq(before, now);
	ck_assert_msg(call_as("app", &st) == 0, "%s", st.details);
	/* The good file back: the watch picks it up again. */
	kms_test_sh("cp '%s/node1.good' '%s/node1.pem'", env.pki, env.pki);
	ck_assert_msg(kms_test_wait_log(&node, "tls: reloaded (a file changed)", 10), "see %s",
		      node.log);
	ck_assert_msg(call_as("app", &st) == 0, "%s", st.details);
}
END_TEST

/* --- revocation --- */

START_TEST(revoked_client_refused_at_the_handshake)
{
	kms_rpc_status st;
	kms_test_sh(": > '%s'", node.log); /* only this test's lines */

	ck_assert_msg(call_as("app", &st) == 0, "before revocation: %s", st.details);
	kms_test_sh("cd '%s' && ops/pki revoke '%s' app >/dev/null", kms_test_srcdir(), env.pki);
	kill(node.pid, SIGHUP);
	ck_assert_msg(kms_test_wait_log(&node, "1 revoked certificate", 10), "see %s", node.log);
	call_as("app", &st);
	ck_assert_msg(st.code == 14 /* UNAVAILABLE */, "revoked app: %d %s", st.code, st.details);
	ck_assert_msg(kms_test_wait_log(&node, "refused a client at the TLS handshake: the client "
					       "certificate is revoked", 5),
		      "see %s", node.log);
	/* Everyone else goes on. */
	ck_assert_msg(call_as("admin", &st) == 0, "admin: %s", st.details);
	ck_assert_msg(call_as("other", &st) == 0, "other: %s", st.details);
}
END_TEST

START_TEST(a_crl_that_is_bad_or_not_the_client_cas_is_refused)
{
	char conf[PATH_MAX];
	kms_rpc_status st;
	kms_test_sh(": > '%s'", node.log); /* only this test's lines */

	/* Runs after the revocation above: app stays refused throughout. */
	kms_test_sh("cp '%s/crl.pem' '%s/crl.good' && echo garbage > '%s/crl.pem'", env.pki,
		    env.pki, env.pki);
	kill(node.pid, SIGHUP);
	ck_assert_msg(kms_test_wait_log(&node, "holds no CRL that parses", 10), "see %s", node.log);
	ck_assert_int_eq(call_as("app", &st), 14);
	ck_assert_int_eq(call_as("admin", &st), 0);
	/* Signed by another CA. */
	kms_test_sh("cd '%s' && ops/pki crl '%s' --ca other-ca >/dev/null", kms_test_srcdir(),
		    env.pki);
	ck_assert_msg(kms_test_wait_log(&node, "is not signed by the client CA", 10), "see %s",
		      node.log);
	ck_assert_int_eq(call_as("app", &st), 14);
	ck_assert_int_eq(call_as("admin", &st), 0);
	/* At start-up the same CRL stops kmsd. */
	KMS_TEST_PATH(conf, "%s/kmsd.conf", node.dir);
	kms_test_sh(": > '%s'", node.log);
	ck_assert_int_eq(kms_test_node_run_expect_exit(&node, conf), 1);
	ck_assert_msg(kms_test_file_contains(node.log, "is not signed by the client CA"), "see %s",
		      node.log);
	kms_test_sh("cp '%s/crl.good' '%s/crl.pem'", env.pki, env.pki);
}
END_TEST

/* --- TLS versions and suites --- */

START_TEST(tls12_only_ecdhe_aead_in_the_servers_order)
{
	/* Not ECDHE (RSA key exchange), and ECDHE with CBC: refused. */
	s_client("app", "-tls1_2 -cipher AES128-GCM-SHA256");
	ck_assert_msg(strstr(out, "Cipher is (NONE)") != NULL, "%s", out);
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA");
	ck_assert_msg(strstr(out, "Cipher is (NONE)") != NULL, "%s", out);
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA256");
	ck_assert_msg(strstr(out, "Cipher is (NONE)") != NULL, "%s", out);
	/* ECDHE with AEAD: accepted. */
	/* (s_client exits 1 when gRPC closes without close_notify: read its output.) */
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256");
	ck_assert_msg(strstr(out, "TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256") != NULL, "%s",
		      out);
	/* The server's order decides, whatever the client's. */
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384");
	ck_assert_msg(strstr(out, "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384") != NULL, "%s", out);
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305");
	ck_assert_msg(strstr(out, "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305") != NULL, "%s", out);
	/* TLS 1.3 when the client can. */
	s_client("app", "");
	ck_assert_msg(strstr(out, "New, TLSv1.3") != NULL, "%s", out);
}
END_TEST

START_TEST(min_tls_13_turns_tls12_off)
{
	char conf[PATH_MAX];
	kms_rpc_status st;

	kms_test_node_signal(&node, SIGTERM);
	/* The bad-input twin first: a version kmsd does not offer. */
	KMS_TEST_PATH(conf, "%s/bad.conf", node.dir);
	kms_test_sh("sed 's/^tls_key = .*/&\\nmin_tls_version = 1.1/' '%s' > '%s'", node.conf, conf);
	kms_test_sh(": > '%s'", node.log);
	ck_assert_int_eq(kms_test_node_run_expect_exit(&node, conf), 1);
	ck_assert_msg(kms_test_file_contains(node.log, "must be 1.2 or 1.3, not '1.1'"), "see %s",
		      node.log);
	kms_test_node_reconfigure(&node, "--min-tls-version 1.3");
	kms_test_node_start(&node);
	s_client("app", "-tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384");
	ck_assert_msg(strstr(out, "Cipher is (NONE)") != NULL, "%s", out);
	s_client("app", "-tls1_3");
	ck_assert_msg(strstr(out, "New, TLSv1.3") != NULL, "%s", out);
	ck_assert_msg(call_as("app", &st) == 0, "%s", st.details);
}
END_TEST

/* --- limits --- */

/* A call whose request message never comes: its status and how long it took. */
struct silent_call {
	kms_client *c; /* the connection to use; NULL: one of its own */
	int code;
	char details[256];
	double seconds;
};

static void silent_call(struct silent_call *r)
{
	kms_client *c = r->c != NULL ? r->c : kms_test_client(&node, "app");
	grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
	grpc_metadata_array md, trailing;
	grpc_status_code status = GRPC_STATUS_OK;
	grpc_slice details = grpc_empty_slice();
	struct timespec t0, t1;
	grpc_call *call;
	grpc_op ops[3];
	grpc_event ev;
	int tag = 0;

	grpc_metadata_array_init(&md);
	grpc_metadata_array_init(&trailing);
	call = grpc_channel_create_call(
		kms_client_channel(c), NULL, GRPC_PROPAGATE_DEFAULTS, cq,
		grpc_slice_from_static_string("/kms.v1.KeyManagement/DescribeKey"), NULL,
		gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(30, GPR_TIMESPAN)),
		NULL);
	ck_assert_ptr_nonnull(call);
	memset(ops, 0, sizeof(ops));
	/* Headers, then nothing: no message, no half-close. */
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[1].data.recv_initial_metadata.recv_initial_metadata = &md;
	ops[2].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[2].data.recv_status_on_client.trailing_metadata = &trailing;
	ops[2].data.recv_status_on_client.status = &status;
	ops[2].data.recv_status_on_client.status_details = &details;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(grpc_call_start_batch(call, ops, 3, &tag, NULL), GRPC_CALL_OK);
	ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_int_eq(ev.type, GRPC_OP_COMPLETE);
	r->code = (int)status;
	snprintf(r->details, sizeof(r->details), "%.*s", (int)GRPC_SLICE_LENGTH(details),
		 (const char *)GRPC_SLICE_START_PTR(details));
	r->seconds = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&md);
	grpc_metadata_array_destroy(&trailing);
	grpc_call_unref(call);
	grpc_completion_queue_shutdown(cq);
	while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(cq);
	if (r->c == NULL)
		kms_client_close(c);
}

static void *silent_call_thread(void *p)
{
	silent_call(p);
	return NULL;
}

START_TEST(a_request_that_never_arrives_is_cancelled)
{
	enum { N = 8 };
	struct silent_call r[N];
	pthread_t t[N];
	kms_rpc_status st;

	/* More silent calls than the node has workers (4), all at once. */
	memset(r, 0, sizeof(r));
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, silent_call_thread, &r[i]), 0);
	/* Meanwhile others are served at once. */
	for (int i = 0; i < 5; i++)
		ck_assert_msg(call_as("admin", &st) == 0, "%s", st.details);
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		ck_assert_msg(r[i].code == 4 /* DEADLINE_EXCEEDED */, "call %d: %d %s", i, r[i].code,
			      r[i].details);
		ck_assert_str_eq(r[i].details, "the request message did not arrive within 2 s");
		/* request_timeout_s = 2, swept every 0.5 s; the client's own deadline is 30 s. */
		ck_assert_msg(r[i].seconds >= 1.9 && r[i].seconds < 6, "call %d took %.1f s", i,
			      r[i].seconds);
	}
}
END_TEST

START_TEST(streams_per_connection_are_capped)
{
	enum { N = 3 };
	struct silent_call r[N];
	pthread_t t[N];
	kms_client *c = kms_test_client(&node, "app");
	int late = 0;

	/* max_concurrent_streams = 2: the third call on one connection waits
	 * for a stream, i.e. until the first two are cancelled (2 s). */
	memset(r, 0, sizeof(r));
	for (int i = 0; i < N; i++) {
		r[i].c = c;
		ck_assert_int_eq(pthread_create(&t[i], NULL, silent_call_thread, &r[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		ck_assert_msg(r[i].code == 4, "call %d: %d %s", i, r[i].code, r[i].details);
		late += r[i].seconds >= 3.5;
	}
	ck_assert_msg(late == 1, "%d of 3 calls waited for a stream (%.1f, %.1f, %.1f s)", late,
		      r[0].seconds, r[1].seconds, r[2].seconds);
	kms_client_close(c);
}
END_TEST

START_TEST(a_silent_tcp_connection_is_closed_after_the_handshake_timeout)
{
	struct sockaddr_in a;
	struct timespec t0, t1;
	struct pollfd p;
	kms_rpc_status st;
	double s;
	char b;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)node.grpc_port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* Others are served while it waits. */
	ck_assert_msg(call_as("app", &st) == 0, "%s", st.details);
	p.fd = fd;
	p.events = POLLIN;
	/* handshake_timeout_s = 2; gRPC's default would be 120 s. */
	ck_assert_msg(poll(&p, 1, 10000) == 1, "the connection was still open after 10 s");
	ck_assert_int_le(read(fd, &b, 1), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	ck_assert_msg(s >= 1.5 && s < 6, "closed after %.1f s", s);
	close(fd);
}
END_TEST

static Suite *tls_suite(void)
{
	Suite *s = suite_create("kmsd TLS");
	TCase *reload = tcase_create("reload");
	TCase *crl = tcase_create("revocation");
	TCase *policy = tcase_create("policy");
	TCase *limits = tcase_create("limits");

	tcase_add_unchecked_fixture(reload, node_up_reload, node_down);
	tcase_set_timeout(reload, 180);
	tcase_add_test(reload, renewed_certificates_reload_on_sighup);
	tcase_add_test(reload, changed_files_reload_without_a_signal);
	tcase_add_test(reload, a_bad_file_keeps_the_old_certificates);
	suite_add_tcase(s, reload);

	tcase_add_unchecked_fixture(crl, node_up_crl, node_down);
	tcase_set_timeout(crl, 180);
	tcase_add_test(crl, revoked_client_refused_at_the_handshake);
	tcase_add_test(crl, a_crl_that_is_bad_or_not_the_client_cas_is_refused);
	suite_add_tcase(s, crl);

	tcase_add_unchecked_fixture(policy, node_up_reload, node_down);
	tcase_set_timeout(policy, 180);
	tcase_add_test(policy, tls12_only_ecdhe_aead_in_the_servers_order);
	tcase_add_test(policy, min_tls_13_turns_tls12_off);
	suite_add_tcase(s, policy);

	tcase_add_unchecked_fixture(limits, node_up_limits, node_down);
	tcase_set_timeout(limits, 180);
	tcase_add_test(limits, a_request_that_never_arrives_is_cancelled);
	tcase_add_test(limits, streams_per_connection_are_capped);
	tcase_add_test(limits, a_silent_tcp_connection_is_closed_after_the_handshake_timeout);
	suite_add_tcase(s, limits);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(tls_suite());

	/* One kmsd serves a whole test case, and gRPC does not survive fork(). */
	srunner_set_fork_status(sr, CK_NOFORK);
	return kms_check_run(sr);
}
