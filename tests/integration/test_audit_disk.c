/* test_audit_disk.c - a full disk under the audit log of a real kmsd: calls refused UNAVAILABLE, health NOT_SERVING, no call served unaudited, and recovery once space is freed. Needs root (a tmpfs is mounted); skipped otherwise. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define S_UNAVAILABLE 14

static kms_test_env env;
static kms_test_node node;
static char fs[PATH_MAX], audit[PATH_MAX];

static void setup(void)
{
	char args[PATH_MAX + 128];

	kms_test_env_init(&env);
	KMS_TEST_PATH(fs, "%s/auditfs", env.root);
	KMS_TEST_PATH(audit, "%s/audit.log", fs);
	ck_assert_int_eq(mkdir(fs, 0700), 0);
	/* Small: a few pages are left once the filler has taken the rest. */
	kms_test_sh(
	    "mount -t tmpfs -o size=512k,mode=0700 kmsd-audit-test '%s'", fs);
	KMS_TEST_PATH(
	    args, "--audit-option path=%s --audit-option checkpoint_seconds=1",
	    audit);
	kms_test_node_init_args(&env, &node, 1, args);
	kms_test_node_start(&node);
}

static void teardown(void)
{
	if (node.pid > 0)
		kms_test_node_signal(&node, SIGTERM);
	kms_test_sh("umount '%s'", fs);
	kms_test_env_destroy(&env);
}

/* The health status the node answers (SERVING 1, NOT_SERVING 2). */
static int health(void)
{
	Grpc__Health__V1__HealthCheckRequest req =
	    GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	int status;

	ck_assert_int_eq(
	    kms_test_call(&node, "app", "/grpc.health.v1.Health/Check",
			  &req.base,
			  &grpc__health__v1__health_check_response__descriptor,
			  &resp, &st),
	    0);
	status = (int)((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
	FREE(resp);
	return status;
}

static int decrypt(kms_client *app, ProtobufCBinaryData blob,
		   kms_rpc_status *st)
{
	Kms__V1__DecryptRequest d = KMS__V1__DECRYPT_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	int code;

	d.ciphertext_blob = blob;
	code =
	    kms_client_call(app, KM "Decrypt", &d.base,
			    &kms__v1__decrypt_response__descriptor, &resp, st);
	if (resp != NULL)
		FREE(resp);
	return code;
}

/* Lines of the audit file holding text. */
static int count(const char *text)
{
	char out[64];

	ck_assert_int_le(kms_test_sh_output(out, sizeof(out),
					    "grep -c -F '%s' '%s'", text,
					    audit),
			 1);
	return atoi(out);
}

START_TEST(test_full_disk)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	Kms__V1__EncryptRequest e = KMS__V1__ENCRYPT_REQUEST__INIT;
	Kms__V1__EncryptResponse *er;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	uint8_t pt[16] = "audit me please";
	int served = 0, code = 0, refused_at = -1;
	long until;
	char text[4096];

	ck_assert_int_eq(kms_test_create_key(admin, "disk", KMS_TEST_APP, &st),
			 0);
	e.key_id = (char *)"disk";
	e.plaintext.data = pt;
	e.plaintext.len = sizeof(pt);
	ck_assert_int_eq(kms_client_call(app, KM "Encrypt", &e.base,
					 &kms__v1__encrypt_response__descriptor,
					 &resp, &st),
			 0);
	er = (Kms__V1__EncryptResponse *)resp;
	ck_assert_int_eq(decrypt(app, er->ciphertext_blob, &st), 0);
	served++;
	ck_assert_int_eq(
	    health(),
	    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);

	/* Fill the file system: the audit file's last page may still take a
	 * few records, then a write fails. */
	kms_test_sh("dd if=/dev/zero of='%s/filler' bs=4096 2>/dev/null; true",
		    fs);
	for (int i = 0; i < 2000; i++) {
		code = decrypt(app, er->ciphertext_blob, &st);
		if (code != 0) {
			refused_at = i;
			break;
		}
		served++;
	}
	ck_assert_msg(refused_at >= 0, "2000 calls were served on a full disk");
	KMS_TEST_ASSERT_STATUS(st, S_UNAVAILABLE,
			       "audit log cannot be written");
	ck_assert_msg(strstr(st.details, "No space left on device") != NULL,
		      "%s", st.details);
	/* Refused before the handler now, the same way; and every kind of call.
	 */
	ck_assert_int_eq(decrypt(app, er->ciphertext_blob, &st), S_UNAVAILABLE);
	KMS_TEST_ASSERT_STATUS(st, S_UNAVAILABLE,
			       "audit log cannot be written");
	ck_assert_int_eq(
	    kms_test_create_key(admin, "not-now", KMS_TEST_APP, &st),
	    S_UNAVAILABLE);
	KMS_TEST_ASSERT_STATUS(st, S_UNAVAILABLE,
			       "audit log cannot be written");
	ck_assert_int_eq(
	    health(),
	    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
	ck_assert(kms_test_wait_log(
	    &node, "calls are refused until it can be written again", 5));

	/* Space again: within a few seconds the node serves, and says so. */
	kms_test_sh("rm -f '%s/filler'", fs);
	until = kms_test_now_ms() + 10000;
	while ((code = decrypt(app, er->ciphertext_blob, &st)) != 0 &&
	       kms_test_now_ms() < until)
		kms_test_sleep_ms(200);
	ck_assert_msg(code == 0, "still refused after the space was freed: %s",
		      st.details);
	served++;
	ck_assert_int_eq(
	    health(),
	    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
	ck_assert(kms_test_wait_log(&node, "can be written again", 5));
	ck_assert_int_eq(kms_test_create_key(admin, "now", KMS_TEST_APP, &st),
			 0);
	FREE(er);
	kms_client_close(admin);
	kms_client_close(app);
	kms_test_node_signal(&node, SIGTERM);
	node.pid = 0;

	/* Every call answered OK has its record, and the file verifies. */
	ck_assert_int_eq(count("\"method\":\"/kms.v1.KeyManagement/"
			       "Decrypt\",\"key_id\":\"disk\","
			       "\"key_version\":1,\"decision\":\"allow\""),
			 served);
	ck_assert_int_eq(count("\"type\":\"recovered\""), 1);
	ck_assert_int_eq(count("\"key_id\":\"not-now\""), 0);
	ck_assert_int_eq(count("\"key_id\":\"now\""), 1);
	{
		const char *b = getenv("KMS_BUILDDIR");

		ck_assert_msg(kms_test_sh_output(
				  text, sizeof(text),
				  "'%s/kmsctl' audit verify '%s' --node-cert "
				  "'%s/node1.pem' 2>&1",
				  b != NULL ? b : ".", audit, env.pki) == 0,
			      "%s", text);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("audit_disk");
	TCase *tc = tcase_create("audit_disk");
	SRunner *sr;

	if (geteuid() != 0) {
		puts("test_audit_disk: skipped: mounting a tmpfs needs root");
		return 77;
	}
	if (system("d=$(mktemp -d) && mount -t tmpfs -o size=64k kmsd-probe "
		   "\"$d\" && "
		   "umount \"$d\"; r=$?; rmdir \"$d\"; exit $r") != 0) {
		puts("test_audit_disk: skipped: this machine does not let us "
		     "mount a tmpfs");
		return 77;
	}
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_full_disk);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
