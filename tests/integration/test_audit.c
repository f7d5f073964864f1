/* test_audit.c - the audit log of a real kmsd: a record per call with its fields, no secrets in it, verified and tampered with through kmsctl audit verify, continued across a restart. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kms/v1/kms.pb-c.h"
#include "node_fixture.h"
#include "check_run.h"

#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)

static kms_test_env env;
static kms_test_node node;
static char audit[PATH_MAX], node_cert[PATH_MAX];

static const char *kmsctl(void)
{
	static char p[PATH_MAX];
	const char *b = getenv("KMS_BUILDDIR");

	snprintf(p, sizeof(p), "%s/kmsctl", b != NULL ? b : ".");
	return p;
}

static void setup(void)
{
	kms_test_env_init(&env);
	kms_test_node_init_args(&env, &node, 1,
				"--audit-option checkpoint_seconds=1");
	KMS_TEST_PATH(audit, "%s/data/audit.log", node.dir);
	KMS_TEST_PATH(node_cert, "%s/node1.pem", env.pki);
	kms_test_node_start(&node);
}

static void teardown(void)
{
	if (node.pid > 0)
		kms_test_node_signal(&node, SIGTERM);
	kms_test_env_destroy(&env);
}

/* The call records of the file, in order (a JSON array, the caller's). */
static json_t *call_records(const char *path)
{
	FILE *f = fopen(path, "re");
	json_t *all = json_array();
	char *line = NULL;
	size_t cap = 0;

	ck_assert_ptr_nonnull(f);
	while (getline(&line, &cap, f) > 0) {
		json_error_t je;
		json_t *o = json_loads(line, 0, &je);

		ck_assert_msg(o != NULL, "not JSON: %s", line);
		if (strcmp(json_string_value(json_object_get(o, "type")),
			   "call") == 0)
			json_array_append(all, o);
		json_decref(o);
	}
	free(line);
	fclose(f);
	return all;
}

/* The last call record of method by principal, or NULL. */
static json_t *find(json_t *all, const char *method, const char *principal)
{
	json_t *hit = NULL;

	for (size_t i = 0; i < json_array_size(all); i++) {
		json_t *o = json_array_get(all, i);

		if (strcmp(json_string_value(json_object_get(o, "method")),
			   method) == 0 &&
		    strcmp(json_string_value(json_object_get(o, "principal")),
			   principal) == 0)
			hit = o;
	}
	return hit;
}

static const char *str(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	ck_assert_msg(json_is_string(v), "no string '%s'", k);
	return json_string_value(v);
}

static long long num(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	ck_assert_msg(json_is_integer(v), "no number '%s'", k);
	return json_integer_value(v);
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
}

static void b64(const uint8_t *p, size_t n, char *out)
{
	static const char a[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16 |
			     (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);

		out[o++] = a[v >> 18 & 63];
		out[o++] = a[v >> 12 & 63];
		out[o++] = i + 1 < n ? a[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? a[v & 63] : '=';
	}
	out[o] = '\0';
}

/* kmsctl audit verify with args; its exit status, its output in out. */
static int verify(char *out, size_t cap, const char *file, const char *args)
{
	return kms_test_sh_output(out, cap, "'%s' audit verify '%s' %s 2>&1",
				  kmsctl(), file, args);
}

START_TEST(test_records)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_client *app = kms_test_client(&node, "app");
	kms_client *other = kms_test_client(&node, "other");
	Kms__V1__GenerateDataKeyRequest g =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__DecryptRequest d = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__GenerateDataKeyResponse *gr;
	ProtobufCMessage *resp = NULL;
	kms_rpc_status st;
	json_t *all, *r;
	char text[4096], h[200], b[200], pin[256] = "";
	FILE *f;

	ck_assert_int_eq(
	    kms_test_create_key(admin, "orders", KMS_TEST_APP, &st), 0);
	g.key_id = (char *)"orders";
	g.number_of_bytes = 32;
	ck_assert_int_eq(
	    kms_client_call(app, KM "GenerateDataKey", &g.base,
			    &kms__v1__generate_data_key_response__descriptor,
			    &resp, &st),
	    0);
	gr = (Kms__V1__GenerateDataKeyResponse *)resp;
	d.ciphertext_blob = gr->ciphertext_blob;
	resp = NULL;
	ck_assert_int_eq(kms_client_call(app, KM "Decrypt", &d.base,
					 &kms__v1__decrypt_response__descriptor,
					 &resp, &st),
			 0);
	FREE(resp);
	resp = NULL;
	/* Refused: the intruder has no grant. */
	ck_assert_int_eq(kms_client_call(other, KM "Decrypt", &d.base,
					 &kms__v1__decrypt_response__descriptor,
					 &resp, &st),
			 7);
	kms_client_close(admin);
	kms_client_close(app);
	kms_client_close(other);

	all = call_records(audit);
	r = find(all, KM "CreateKey", KMS_TEST_ADMIN);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "key_id"), "orders");
	ck_assert_str_eq(str(r, "decision"), "allow");
	r = find(all, KM "GenerateDataKey", KMS_TEST_APP);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "key_id"), "orders");
	ck_assert_int_eq(num(r, "key_version"), 1);
	ck_assert_int_eq(num(r, "code"), 0);
	ck_assert_int_eq(num(r, "node"), 1);
	ck_assert(strncmp(str(r, "peer"), "ipv4:127.0.0.1:", 15) == 0 ||
		  strncmp(str(r, "peer"), "ipv6:", 5) == 0);
	ck_assert_uint_gt(strlen(str(r, "request_id")), 0);
	ck_assert_uint_eq(strlen(str(r, "time")), 24);
	r = find(all, KM "Decrypt", KMS_TEST_APP);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "decision"), "allow");
	ck_assert_str_eq(str(r, "key_id"), "orders");
	ck_assert_int_eq(num(r, "key_version"), 1);
	r = find(all, KM "Decrypt", KMS_TEST_OTHER);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "decision"), "deny");
	ck_assert_int_eq(num(r, "code"), 7);
	ck_assert_str_eq(str(r, "key_id"), "orders");
	/* Health is open to anyone and leaves no record. */
	ck_assert_ptr_null(find(all, "/grpc.health.v1.Health/Check", ""));
	json_decref(all);

	/* No data key, in hex or base64, and no PIN. */
	hex(gr->plaintext.data, gr->plaintext.len, h);
	b64(gr->plaintext.data, gr->plaintext.len, b);
	ck_assert(!kms_test_file_contains(audit, h));
	ck_assert(!kms_test_file_contains(audit, b));
	b[20] = '\0'; /* nor a part of it */
	ck_assert(!kms_test_file_contains(audit, b));
	{
		char pin_path[PATH_MAX];

		KMS_TEST_PATH(pin_path, "%s/token/pin", node.dir);
		f = fopen(pin_path, "re");
		ck_assert_ptr_nonnull(f);
		ck_assert_ptr_nonnull(fgets(pin, sizeof(pin), f));
		fclose(f);
		pin[strcspn(pin, "\n")] = '\0';
		ck_assert(strlen(pin) >= 4);
		ck_assert(!kms_test_file_contains(audit, pin));
	}
	FREE(gr);

	/* A running node: its tail may be unsigned; the chain verifies. */
	ck_assert_int_eq(
	    verify(text, sizeof(text), audit, "--allow-unsigned-tail"), 0);
	/* Stopped, it ends with a checkpoint signed by its node key. */
	kms_test_node_signal(&node, SIGTERM);
	node.pid = 0;
	ck_assert_msg(verify(text, sizeof(text), audit, "") == 0, "%s", text);
	ck_assert_msg(strstr(text, "status: ok") != NULL, "%s", text);
	{
		char args[PATH_MAX + 32];

		KMS_TEST_PATH(args, "--json --node-cert '%s'", node_cert);
		ck_assert_msg(verify(text, sizeof(text), audit, args) == 0,
			      "%s", text);
		ck_assert_msg(strstr(text, "\"ok\":true") != NULL, "%s", text);
		ck_assert_msg(strstr(text, "\"checkpoints_checked\":0") == NULL,
			      "%s", text);
		/* Another certificate's key: refused, naming the first
		 * checkpoint. */
		KMS_TEST_PATH(args, "--node-cert '%s/admin.pem'", env.pki);
		ck_assert_int_eq(verify(text, sizeof(text), audit, args), 2);
		ck_assert_msg(
		    strstr(text, "not the key of the node certificate") != NULL,
		    "%s", text);
		ck_assert_int_eq(
		    verify(text, sizeof(text), audit, "--no-such-option"), 1);
		ck_assert_int_eq(
		    verify(text, sizeof(text), "/nonexistent/audit.log", ""),
		    1);
	}
	/* The node starts again and continues the chain. */
	kms_test_node_start(&node);
	kms_test_node_signal(&node, SIGTERM);
	node.pid = 0;
	ck_assert_msg(verify(text, sizeof(text), audit, "") == 0, "%s", text);
	ck_assert(kms_test_file_contains(audit, "\"type\":\"resume\""));
}
END_TEST

/* Every kind of tampering is named by line, through kmsctl. */
START_TEST(test_tampered)
{
	kms_client *admin = kms_test_client(&node, "admin");
	kms_rpc_status st;
	char text[4096], copy[PATH_MAX], args[PATH_MAX + 32];
	int lines;

	for (int i = 0; i < 6; i++) {
		char id[16];

		snprintf(id, sizeof(id), "k%d", i);
		ck_assert_int_eq(
		    kms_test_create_key(admin, id, KMS_TEST_APP, &st), 0);
	}
	kms_client_close(admin);
	kms_test_node_signal(&node, SIGTERM);
	node.pid = 0;
	KMS_TEST_PATH(copy, "%s/tampered.log", env.root);
	KMS_TEST_PATH(args, "--node-cert '%s'", node_cert);
	ck_assert_int_eq(verify(text, sizeof(text), audit, args), 0);
	ck_assert_int_eq(
	    kms_test_sh_output(text, sizeof(text), "wc -l < '%s'", audit), 0);
	lines = atoi(text);
	ck_assert_int_ge(lines, 9);

	/* A changed byte in k1's CreateKey record (k1 becomes k9). */
	{
		char want[32];

		ck_assert_int_eq(
		    kms_test_sh_output(
			text, sizeof(text),
			"grep -n -F '\"key_id\":\"k1\"' '%s' | cut -d: -f1",
			audit),
		    0);
		snprintf(want, sizeof(want), "line %d:", atoi(text));
		ck_assert_int_gt(atoi(text), 1);
		kms_test_sh("sed '%ds/\"key_id\":\"k1\"/\"key_id\":\"k9\"/' "
			    "'%s' > '%s'",
			    atoi(text), audit, copy);
		ck_assert_int_eq(verify(text, sizeof(text), copy, args), 2);
		ck_assert_msg(strstr(text, want) != NULL &&
				  strstr(text, "changed") != NULL,
			      "%s", text);
	}
	/* Line 5 removed. */
	kms_test_sh("sed '5d' '%s' > '%s'", audit, copy);
	ck_assert_int_eq(verify(text, sizeof(text), copy, args), 2);
	ck_assert_msg(strstr(text, "line 5:") != NULL &&
			  strstr(text, "removed") != NULL,
		      "%s", text);
	/* Lines 5 and 6 swapped. */
	kms_test_sh("sed -n '5{h;n;G};p' '%s' > '%s'", audit, copy);
	ck_assert_int_eq(verify(text, sizeof(text), copy, args), 2);
	ck_assert_msg(strstr(text, "line 5:") != NULL &&
			  strstr(text, "moved") != NULL,
		      "%s", text);
	/* The last checkpoint cut off, with the record before it. */
	kms_test_sh("head -n %d '%s' > '%s'", lines - 1, audit, copy);
	ck_assert_int_eq(verify(text, sizeof(text), copy, args), 2);
	ck_assert_msg(strstr(text, "not signed") != NULL, "%s", text);
	/* A forged checkpoint signature. */
	kms_test_sh("sed '$s/\"sig\":\"3/\"sig\":\"4/' '%s' > '%s'", audit,
		    copy);
	ck_assert_int_eq(verify(text, sizeof(text), copy, args), 2);
	ck_assert_msg(strstr(text, "does not verify") != NULL, "%s", text);
}
END_TEST

/* --- a write through a follower: a record on each node --- */

#define N 3
static kms_test_node nodes[N];

static void cluster_teardown(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	kms_test_env_destroy(&env);
}

START_TEST(test_forwarded)
{
	char path[PATH_MAX], node_id[128];
	kms_client *admin;
	kms_rpc_status st;
	json_t *all, *r;
	int l, f;

	kms_test_cluster_up(&env, nodes, N,
			    "--audit-option checkpoint_seconds=1");
	l = kms_test_wait_leader(nodes, N, 10000);
	ck_assert_int_ge(l, 0);
	f = (l + 1) % N;
	admin = kms_test_client(&nodes[f], "admin");
	ck_assert_int_eq(
	    kms_test_create_key(admin, "through-a-follower", KMS_TEST_APP, &st),
	    0);
	kms_client_close(admin);

	/* The follower: the client's call, with the status the client got. */
	KMS_TEST_PATH(path, "%s/data/audit.log", nodes[f].dir);
	all = call_records(path);
	r = find(all, KM "CreateKey", KMS_TEST_ADMIN);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "key_id"), "through-a-follower");
	ck_assert_int_eq(num(r, "code"), 0);
	ck_assert_int_eq(num(r, "node"), (long long)nodes[f].id);
	json_decref(all);

	/* The leader: the forwarded batch from the follower's node identity,
	 * on behalf of the client. */
	KMS_TEST_PATH(path, "%s/data/audit.log", nodes[l].dir);
	snprintf(node_id, sizeof(node_id), KMS_TEST_TD "/kmsd/node/%u",
		 nodes[f].id);
	all = call_records(path);
	ck_assert_ptr_null(find(all, KM "CreateKey", KMS_TEST_ADMIN));
	r = find(all, "/kms.v1.Internal/ForwardBatch", node_id);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(str(r, "on_behalf_of"), KMS_TEST_ADMIN);
	ck_assert_int_eq(num(r, "items"), 1);
	ck_assert_int_eq(num(r, "code"), 0);
	ck_assert_int_eq(num(r, "node"), (long long)nodes[l].id);
	json_decref(all);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("audit");
	TCase *tc = tcase_create("audit");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_records);
	tcase_add_test(tc, test_tampered);
	suite_add_tcase(s, tc);
	tc = tcase_create("cluster");
	tcase_add_checked_fixture(tc, NULL, cluster_teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_forwarded);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
