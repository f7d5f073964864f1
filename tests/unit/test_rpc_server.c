/* test_rpc_server.c - Check suite for the gRPC server's handling of request bytes (rpc_server.c), with an in-process server and client over mutual TLS. */
#include <check.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "kms/alloc.h"
#include "kms/client.h"
#include "kms/v1/kms.pb-c.h"
#include "rpc_server.h"
#include "softhsm_fixture.h"
#include "test_net.h"
#include "test_pki.h"

#define M_OPEN "/test.Wipe/Open"       /* anyone may call it */
#define M_CLOSED "/test.Wipe/Closed"   /* services only: refused without authn */
#define M_ABSENT "/test.Wipe/Absent"   /* not served */
#define MARKER_LEN 3000

/* The PKI, made once for the suite (no gRPC in the parent process). */
static char tmp[PATH_MAX];
static char ca_pem[PATH_MAX + 32], ca_key[PATH_MAX + 32];
static char srv_pem[PATH_MAX + 32], srv_key[PATH_MAX + 32];
static char cli_pem[PATH_MAX + 32], cli_key[PATH_MAX + 32];

/* Per test. */
static kms_rpc_server *server;
static char *server_key;
static char endpoint[64];
static kms_client *client;
static pthread_t test_thread;

/* A plaintext no other bytes in the process look like, and the request
 * carrying it. */
static uint8_t marker[MARKER_LEN];
static uint8_t *request;
static size_t request_len;

static atomic_int handler_saw_marker;
static atomic_int received_destroyed;   /* request-sized buffers the server destroyed */
static atomic_int received_unwiped;     /* ...that still held the marker */

static int holds_marker(grpc_byte_buffer *bb)
{
	grpc_byte_buffer_reader reader;
	grpc_slice flat;
	int found;

	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return 0;
	flat = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	found = memmem(GRPC_SLICE_START_PTR(flat), GRPC_SLICE_LENGTH(flat), marker,
		       sizeof(marker)) != NULL;
	kms_cleanse(GRPC_SLICE_START_PTR(flat), GRPC_SLICE_LENGTH(flat));
	grpc_slice_unref(flat);
	return found;
}

/*
 * The server code is linked into this program, so its calls to
 * grpc_byte_buffer_destroy land here first: a received request that
 * reaches it still holding the plaintext was not wiped. The client's own
 * request buffer is destroyed on the test's thread and is not looked at.
 */
void grpc_byte_buffer_destroy(grpc_byte_buffer *bb)
{
	static void (*real)(grpc_byte_buffer *);

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "grpc_byte_buffer_destroy");
	if (bb != NULL && !pthread_equal(pthread_self(), test_thread) && request_len > 0 &&
	    grpc_byte_buffer_length(bb) == request_len) {
		if (holds_marker(bb))
			atomic_fetch_add(&received_unwiped, 1);
		atomic_fetch_add(&received_destroyed, 1);
	}
	real(bb);
}

static void handler(void *app, kms_call *call, const uint8_t *req, size_t len)
{
	Kms__V1__EncryptResponse resp = KMS__V1__ENCRYPT_RESPONSE__INIT;

	if (memmem(req, len, marker, sizeof(marker)) != NULL)
		atomic_store(&handler_saw_marker, 1);
	kms_call_reply(call, &resp.base, 0);
}

static const kms_method methods[] = {
	{M_OPEN, handler, KMS_CALLERS_ANYONE, &kms__v1__encrypt_request__descriptor},
	{M_CLOSED, handler, KMS_CALLERS_SERVICES, &kms__v1__encrypt_request__descriptor},
};

static void make_pki(void)
{
	kms_test_san server_sans[] = {{KMS_TEST_SAN_IP, "127.0.0.1", 0}};
	kms_test_san client_sans[] = {{KMS_TEST_SAN_URI, "spiffe://kmsd.dev/ns/t/sa/c", 0}};

	snprintf(tmp, sizeof(tmp), "%s/kms-test-rpc-XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", tmp);
	snprintf(ca_key, sizeof(ca_key), "%s/ca.key", tmp);
	snprintf(srv_pem, sizeof(srv_pem), "%s/server.pem", tmp);
	snprintf(srv_key, sizeof(srv_key), "%s/server.key", tmp);
	snprintf(cli_pem, sizeof(cli_pem), "%s/client.pem", tmp);
	snprintf(cli_key, sizeof(cli_key), "%s/client.key", tmp);
	kms_test_make_ca(ca_pem, ca_key, "test CA");
	kms_test_issue_cert(ca_pem, ca_key, srv_pem, srv_key, server_sans, 1, 1);
	kms_test_issue_cert(ca_pem, ca_key, cli_pem, cli_key, client_sans, 1, 1);
}

static void remove_pki(void)
{
	kms_test_rmtree(tmp);
}

static void setup(void)
{
	Kms__V1__EncryptRequest req = KMS__V1__ENCRYPT_REQUEST__INIT;
	kms_rpc_server_opts o;
	kms_tls_files tls;
	kms_client_opts co;
	kms_err err = {0};
	size_t len;

	test_thread = pthread_self();
	atomic_store(&handler_saw_marker, 0);
	atomic_store(&received_destroyed, 0);
	atomic_store(&received_unwiped, 0);
	for (size_t i = 0; i < sizeof(marker); i++)
		marker[i] = (uint8_t)(0xa5 ^ (i * 131) ^ (i >> 7));
	req.key_id = (char *)"k";
	req.plaintext.data = marker;
	req.plaintext.len = sizeof(marker);
	request_len = protobuf_c_message_get_packed_size(&req.base);
	request = kms_malloc(request_len);
	ck_assert_ptr_nonnull(request);
	protobuf_c_message_pack(&req.base, request);

	snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%d", kms_test_free_port());
	server_key = kms_test_read_file(srv_key, &len);
	memset(&tls, 0, sizeof(tls));
	tls.cert_chain = kms_test_read_file(srv_pem, &len);
	tls.client_ca = kms_test_read_file(ca_pem, &len);
	tls.node_ca = kms_test_read_file(ca_pem, &len);
	memset(&o, 0, sizeof(o));
	o.listen = endpoint;
	o.tls = &tls;
	o.private_key = server_key;
	o.limits.max_concurrent_streams = 100;
	o.limits.handshake_timeout_s = 10;
	o.limits.keepalive_time_s = 60;
	o.limits.keepalive_timeout_s = 20;
	o.limits.min_ping_interval_s = 30;
	o.limits.max_connection_idle_s = 300;
	o.limits.max_connection_age_s = 3600;
	o.limits.max_connection_age_grace_s = 30;
	o.limits.request_timeout_s = 30;
	o.workers = 1;
	o.methods = methods;
	o.n_methods = sizeof(methods) / sizeof(methods[0]);
	ck_assert_msg(kms_rpc_server_start(&o, &server, &err) == KMS_OK, "%s", err.msg);
	kms_tls_files_free(&tls);

	memset(&co, 0, sizeof(co));
	co.target = endpoint;
	co.ca_file = ca_pem;
	co.cert_file = cli_pem;
	co.key_file = cli_key;
	ck_assert_msg(kms_client_open(&co, &client, &err) == KMS_OK, "%s", err.msg);
}

static void teardown(void)
{
	kms_client_close(client);
	kms_rpc_server_stop(server);
	kms_free_secret(server_key, strlen(server_key));
	kms_free(request);
	request_len = 0;
}

static void assert_wiped(void)
{
	ck_assert_msg(atomic_load(&received_unwiped) == 0,
		      "the server freed the request it received with the plaintext still in it");
}

/* Sends the request to method; waits until the server has destroyed what
 * it received, and returns the gRPC status. */
static int call_and_wait(const char *method, kms_rpc_status *st)
{
	struct timespec pause = {0, 10 * 1000 * 1000};
	kms_buf out = {0};

	kms_client_call_raw(client, method, request, request_len, &out, st);
	kms_buf_free(&out);
	/* A refused call's request is freed with the call, after the status
	 * has left: give the worker a moment. */
	for (int i = 0; i < 500 && atomic_load(&received_destroyed) == 0; i++)
		nanosleep(&pause, NULL);
	ck_assert_msg(atomic_load(&received_destroyed) == 1,
		      "the server destroyed %d request buffers, not 1",
		      atomic_load(&received_destroyed));
	return st->code;
}

START_TEST(test_request_wiped_after_the_handler_got_it)
{
	kms_rpc_status st;

	ck_assert_int_eq(call_and_wait(M_OPEN, &st), 0);
	/* The handler read the plaintext from its own copy... */
	ck_assert_msg(atomic_load(&handler_saw_marker), "the handler did not get the plaintext");
	/* ...and the buffer gRPC delivered was wiped before it was freed. */
	assert_wiped();
}
END_TEST

START_TEST(test_refused_request_wiped)
{
	kms_rpc_status st;

	/* No authn configured: the caller cannot be identified. */
	ck_assert_int_eq(call_and_wait(M_CLOSED, &st), 16 /* UNAUTHENTICATED */);
	ck_assert_msg(!atomic_load(&handler_saw_marker), "the handler ran");
	assert_wiped();
}
END_TEST

START_TEST(test_unknown_method_request_wiped)
{
	kms_rpc_status st;

	ck_assert_int_eq(call_and_wait(M_ABSENT, &st), 12 /* UNIMPLEMENTED */);
	ck_assert_msg(!atomic_load(&handler_saw_marker), "the handler ran");
	assert_wiped();
}
END_TEST

static Suite *rpc_server_suite(void)
{
	Suite *s = suite_create("rpc_server");
	TCase *tc = tcase_create("request bytes");

	tcase_add_unchecked_fixture(tc, make_pki, remove_pki);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_request_wiped_after_the_handler_got_it);
	tcase_add_test(tc, test_refused_request_wiped);
	tcase_add_test(tc, test_unknown_method_request_wiped);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(rpc_server_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
