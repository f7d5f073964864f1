/* test_audit.c - Check suite for audit records (audit_record.c), the verifier (audit_verify.c) and the writer (audit_log.c) on real files. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "kms/alloc.h"
#include "kms/audit.h"
#include "identity/authn.h"
#include "kms/spiffe.h"
#include "obs/audit_log.h"
#include "rpc/rpc_server.h"
#include "check_run.h"

#define KMS_AUDIT_TEST_ADMIN "spiffe://kmsd.dev/ns/ops/sa/admin"

static char dir[PATH_MAX];
static char path[PATH_MAX];
static EVP_PKEY *key, *other_key;

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kms-test-audit-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_lt(snprintf(path, sizeof(path), "%s/audit.log", dir),
			 (int)sizeof(path));
	key = EVP_EC_gen("P-256");
	other_key = EVP_EC_gen("P-256");
	ck_assert_ptr_nonnull(key);
	ck_assert_ptr_nonnull(other_key);
}

static void teardown(void)
{
	char cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
	EVP_PKEY_free(key);
	EVP_PKEY_free(other_key);
}

static kms_audit_call sample_call(void)
{
	kms_audit_call c;

	memset(&c, 0, sizeof(c));
	c.time_ms = 1764603246123LL; /* 2025-12-01T15:34:06.123Z */
	c.node = 2;
	c.request_id = "req-1";
	c.principal = "spiffe://kmsd.dev/ns/demo/sa/app";
	c.method = "/kms.v1.KeyManagement/Decrypt";
	c.key_id = "orders";
	c.key_version = 3;
	c.code = 0;
	c.peer = "ipv4:127.0.0.1:40312";
	return c;
}

START_TEST(test_call_body)
{
	kms_audit_call c = sample_call();
	kms_audit_text t = {0};
	uint8_t prev[KMS_AUDIT_HASH_LEN] = {0}, hash[KMS_AUDIT_HASH_LEN];
	kms_audit_text line = {0};
	kms_err err = {0};
	json_t *o;
	json_error_t je;

	ck_assert_int_eq(kms_audit_call_body(&t, &c), KMS_OK);
	ck_assert_int_eq(
	    kms_audit_line(&line, 7, prev, t.data, t.len, hash, &err), KMS_OK);
	ck_assert_uint_eq((unsigned char)line.data[line.len - 1], '\n');
	o = json_loadb(line.data, line.len - 1, 0, &je);
	ck_assert_ptr_nonnull(o);
	ck_assert_int_eq(json_integer_value(json_object_get(o, "seq")), 7);
	ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "call");
	ck_assert_str_eq(json_string_value(json_object_get(o, "time")),
			 "2025-12-01T15:34:06.123Z");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "node")), 2);
	ck_assert_str_eq(json_string_value(json_object_get(o, "request_id")),
			 "req-1");
	ck_assert_str_eq(json_string_value(json_object_get(o, "principal")),
			 c.principal);
	ck_assert_str_eq(json_string_value(json_object_get(o, "method")),
			 c.method);
	ck_assert_str_eq(json_string_value(json_object_get(o, "key_id")),
			 "orders");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "key_version")),
			 3);
	ck_assert_str_eq(json_string_value(json_object_get(o, "decision")),
			 "allow");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "code")), 0);
	ck_assert_str_eq(json_string_value(json_object_get(o, "peer")), c.peer);
	ck_assert_ptr_null(json_object_get(o, "items"));
	ck_assert_ptr_null(json_object_get(o, "proposal_id"));
	/* The line starts with the chain members, in this order. */
	ck_assert(strncmp(line.data, "{\"seq\":7,\"prev\":\"0000", 21) == 0);
	json_decref(o);
	kms_audit_text_free(&t);
	kms_audit_text_free(&line);
}
END_TEST

/* Whatever bytes a request carried, the line is printable ASCII and parses
 * back to them; a refused call says deny; a proposal names its approvers. */
START_TEST(test_call_body_hostile_strings)
{
	kms_audit_call c = sample_call();
	kms_audit_text t = {0}, line = {0};
	uint8_t prev[KMS_AUDIT_HASH_LEN] = {0}, hash[KMS_AUDIT_HASH_LEN];
	kms_err err = {0};
	char long_id[2000];
	json_t *o, *a;
	json_error_t je;

	memset(long_id, 'k', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	c.key_id = "a\"b\\c\n\x01\xff\xc3\xa9";
	c.principal = NULL;
	c.code = 7;
	c.request_id = long_id;
	c.proposal_id = "p-1";
	c.approvers[0] = "alice";
	c.approvers[1] = "bob";
	c.n_approvers = 2;
	c.items = 12;
	ck_assert_int_eq(kms_audit_call_body(&t, &c), KMS_OK);
	ck_assert_int_eq(
	    kms_audit_line(&line, 1, prev, t.data, t.len, hash, &err), KMS_OK);
	for (size_t i = 0; i + 1 < line.len; i++)
		ck_assert_msg(line.data[i] >= 0x20 && line.data[i] < 0x7f,
			      "byte %zu is 0x%02x", i,
			      (unsigned char)line.data[i]);
	o = json_loadb(line.data, line.len - 1, 0, &je);
	ck_assert_msg(o != NULL, "%s", je.text);
	ck_assert_str_eq(json_string_value(json_object_get(o, "key_id")),
			 "a\"b\\c\n\x01\xc3\xbf\xc3\x83\xc2\xa9");
	ck_assert_str_eq(json_string_value(json_object_get(o, "principal")),
			 "");
	ck_assert_str_eq(json_string_value(json_object_get(o, "decision")),
			 "deny");
	ck_assert_uint_eq(
	    strlen(json_string_value(json_object_get(o, "request_id"))),
	    KMS_AUDIT_STR_MAX + 3);
	ck_assert_int_eq(json_integer_value(json_object_get(o, "items")), 12);
	ck_assert_str_eq(json_string_value(json_object_get(o, "proposal_id")),
			 "p-1");
	a = json_object_get(o, "approvers");
	ck_assert_uint_eq(json_array_size(a), 2);
	ck_assert_str_eq(json_string_value(json_array_get(a, 1)), "bob");
	ck_assert_str_eq(kms_audit_decision(16), "deny");
	ck_assert_str_eq(kms_audit_decision(14), "error");
	json_decref(o);
	kms_audit_text_free(&t);
	kms_audit_text_free(&line);
}
END_TEST

/* A chain of n call records, with a checkpoint after every ckpt of them
 * (0: none) and at the end if last_ckpt; written to path. */
static void write_chain(int n, int ckpt, int last_ckpt, EVP_PKEY *k)
{
	kms_audit_text body = {0}, out = {0};
	uint8_t prev[KMS_AUDIT_HASH_LEN] = {0}, hash[KMS_AUDIT_HASH_LEN];
	uint64_t seq = 0;
	kms_err err = {0};
	FILE *f;

	ck_assert_int_eq(
	    kms_audit_event_body(&body, "start", 1, 1, "a new file"), KMS_OK);
	ck_assert_int_eq(
	    kms_audit_line(&out, seq++, prev, body.data, body.len, hash, &err),
	    KMS_OK);
	memcpy(prev, hash, sizeof(hash));
	for (int i = 0; i < n; i++) {
		kms_audit_call c = sample_call();
		char rid[32];

		snprintf(rid, sizeof(rid), "r%d", i);
		c.request_id = rid;
		body.len = 0;
		ck_assert_int_eq(kms_audit_call_body(&body, &c), KMS_OK);
		ck_assert_int_eq(kms_audit_line(&out, seq++, prev, body.data,
						body.len, hash, &err),
				 KMS_OK);
		memcpy(prev, hash, sizeof(hash));
		if ((ckpt > 0 && (i + 1) % ckpt == 0 && i + 1 < n) ||
		    (last_ckpt && i + 1 == n)) {
			ck_assert_int_eq(
			    kms_audit_checkpoint_line(&out, seq++, prev, 2, 1,
						      k, hash, &err),
			    KMS_OK);
			memcpy(prev, hash, sizeof(hash));
		}
	}
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(out.data, 1, out.len, f), out.len);
	fclose(f);
	kms_audit_text_free(&body);
	kms_audit_text_free(&out);
}

static kms_audit_verdict verify(EVP_PKEY *pub, unsigned flags)
{
	kms_audit_verdict v;
	kms_err err = {0};
	FILE *f = fopen(path, "re");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(kms_audit_verify(f, pub, flags, &v, &err), KMS_OK);
	fclose(f);
	return v;
}

/* The file's lines, rewritten by edit (which may reorder or drop them). */
static char *lines[256];
static int n_lines;

static void load_lines(void)
{
	FILE *f = fopen(path, "re");
	char *l = NULL;
	size_t cap = 0;

	ck_assert_ptr_nonnull(f);
	n_lines = 0;
	while (getline(&l, &cap, f) > 0) {
		ck_assert_int_lt(n_lines, 256);
		lines[n_lines++] = strdup(l);
	}
	free(l);
	fclose(f);
}

static void store_lines(void)
{
	FILE *f = fopen(path, "we");

	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < n_lines; i++) {
		fputs(lines[i], f);
		free(lines[i]);
	}
	fclose(f);
}

START_TEST(test_verify_good)
{
	kms_audit_verdict v;

	write_chain(10, 4, 1, key);
	v = verify(key, 0);
	ck_assert_msg(v.ok, "line %lu: %s", v.bad_line, v.why);
	ck_assert_uint_eq(v.records, 10);
	ck_assert_uint_eq(v.checkpoints, 3);
	ck_assert_uint_eq(v.checkpoints_checked, 3);
	ck_assert_uint_eq(v.segments, 1);
	ck_assert_uint_eq(v.lines, 14);
	/* Without a key: the chain alone. */
	v = verify(NULL, 0);
	ck_assert(v.ok);
	ck_assert_uint_eq(v.checkpoints_checked, 0);
}
END_TEST

START_TEST(test_verify_changed_byte)
{
	kms_audit_verdict v;
	char *p;

	write_chain(10, 4, 1, key);
	load_lines();
	/* line 4: the third call record (line 1 is the start) */
	p = strstr(lines[3], "\"r2\"");
	ck_assert_ptr_nonnull(p);
	p[2] = '9';
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 4);
	ck_assert_msg(strstr(v.why, "changed") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_changed_byte_breaks_json)
{
	kms_audit_verdict v;

	write_chain(5, 0, 1, key);
	load_lines();
	lines[2][0] = '[';
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 3);
	ck_assert_msg(strstr(v.why, "not a JSON record") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_removed_record)
{
	kms_audit_verdict v;

	write_chain(10, 4, 1, key);
	load_lines();
	free(lines[4]);
	memmove(&lines[4], &lines[5], (size_t)(n_lines - 5) * sizeof(lines[0]));
	n_lines--;
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 5);
	ck_assert_msg(strstr(v.why, "removed") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_removed_first)
{
	kms_audit_verdict v;

	write_chain(3, 0, 1, key);
	load_lines();
	free(lines[0]);
	memmove(&lines[0], &lines[1], (size_t)(n_lines - 1) * sizeof(lines[0]));
	n_lines--;
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 1);
	ck_assert_msg(strstr(v.why, "start record") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_reordered)
{
	kms_audit_verdict v;
	char *t;

	write_chain(10, 4, 1, key);
	load_lines();
	t = lines[6];
	lines[6] = lines[7];
	lines[7] = t;
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 7);
	ck_assert_msg(strstr(v.why, "moved") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_truncated_tail)
{
	kms_audit_verdict v;

	/* Lines: start, 4 records, checkpoint (6), 4 records, checkpoint (11),
	 * 2 records, checkpoint (14). Cut after line 12: a record and the last
	 * checkpoint are gone. */
	write_chain(10, 4, 1, key);
	load_lines();
	for (int i = 12; i < n_lines; i++)
		free(lines[i]);
	n_lines = 12;
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 12);
	ck_assert_uint_eq(v.last_checkpoint_line, 11);
	ck_assert_msg(strstr(v.why, "not signed") != NULL, "%s", v.why);
	/* A running node's file may have an unsigned tail. */
	v = verify(key, KMS_AUDIT_ALLOW_UNSIGNED_TAIL);
	ck_assert(v.ok);
	ck_assert_uint_eq(v.unsigned_tail, 1);
}
END_TEST

START_TEST(test_verify_cut_mid_line)
{
	kms_audit_verdict v;

	write_chain(5, 0, 1, key);
	ck_assert_int_eq(truncate(path, 300), 0);
	v = verify(key, KMS_AUDIT_ALLOW_UNSIGNED_TAIL);
	ck_assert(!v.ok);
	ck_assert_msg(strstr(v.why, "cut short") != NULL, "%s", v.why);
}
END_TEST

/* A record changed and the chain rebuilt after it, by someone without the
 * node key: only the checkpoint signature can tell. */
START_TEST(test_verify_forged_checkpoint)
{
	kms_audit_verdict v;

	write_chain(6, 0, 1, other_key);
	v = verify(NULL, 0);
	ck_assert(v.ok); /* the chain alone holds */
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 8);
	ck_assert_msg(strstr(v.why, "not the key of the node certificate") !=
			  NULL,
		      "%s", v.why);
}
END_TEST

START_TEST(test_verify_bad_signature)
{
	kms_audit_verdict v;
	char *p;

	write_chain(6, 0, 1, key);
	load_lines();
	/* Flip a digit of the signature (lines[7] is the checkpoint); the
	 * forger also fixes nothing else: the chain ends there. */
	p = strstr(lines[7], "\"sig\":\"");
	ck_assert_ptr_nonnull(p);
	p += 7 + 20;
	*p = *p == '0' ? '1' : '0';
	store_lines();
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_uint_eq(v.bad_line, 8);
	ck_assert_msg(strstr(v.why, "does not verify") != NULL, "%s", v.why);
}
END_TEST

START_TEST(test_verify_empty)
{
	kms_audit_verdict v;
	FILE *f = fopen(path, "we");

	fclose(f);
	v = verify(key, 0);
	ck_assert(!v.ok);
	ck_assert_msg(strstr(v.why, "empty") != NULL, "%s", v.why);
}
END_TEST

/* --- the writer --- */

static kms_audit_log *open_log(EVP_PKEY *k)
{
	kms_audit_opts o;
	kms_audit_log *log = NULL;
	kms_err err = {0};

	memset(&o, 0, sizeof(o));
	o.path = path;
	o.node = 3;
	o.sign_key = k;
	o.checkpoint_records = 5;
	o.checkpoint_seconds = 3600;
	ck_assert_msg(kms_audit_log_open(&o, &log, &err) == KMS_OK, "%s",
		      err.msg);
	return log;
}

static void log_calls(kms_audit_log *log, int n)
{
	for (int i = 0; i < n; i++) {
		kms_audit_entry e;
		kms_audit_call c = sample_call();
		kms_err err = {0};

		memset(&e, 0, sizeof(e));
		ck_assert_int_eq(kms_audit_call_body(&e.body, &c), KMS_OK);
		ck_assert_int_eq(kms_audit_log_write(log, &e, &err), KMS_OK);
		kms_audit_text_free(&e.body);
	}
}

static int count_type(const char *type)
{
	char want[64];
	int n = 0;

	snprintf(want, sizeof(want), "\"type\":\"%s\"", type);
	load_lines();
	for (int i = 0; i < n_lines; i++) {
		if (strstr(lines[i], want) != NULL)
			n++;
		free(lines[i]);
	}
	return n;
}

START_TEST(test_log_chain_across_restarts)
{
	kms_audit_log *log = open_log(key);
	kms_audit_verdict v;

	log_calls(log, 12);
	ck_assert_int_eq(kms_audit_log_status(log, NULL), KMS_OK);
	kms_audit_log_close(log);
	v = verify(key, 0);
	ck_assert_msg(v.ok, "line %lu: %s", v.bad_line, v.why);
	ck_assert_uint_eq(v.records, 12);
	/* At open and at close; those after every 5 records are the
	 * background writer's, as soon as it runs. */
	ck_assert_uint_ge(v.checkpoints, 2);
	/* A second run continues the chain with a resume record. */
	log = open_log(key);
	log_calls(log, 3);
	kms_audit_log_close(log);
	v = verify(key, 0);
	ck_assert_msg(v.ok, "line %lu: %s", v.bad_line, v.why);
	ck_assert_uint_eq(v.records, 15);
	ck_assert_uint_eq(v.segments, 1);
	ck_assert_int_eq(count_type("resume"), 1);
}
END_TEST

/* A record left alone is signed checkpoint_seconds later, without another call.
 */
START_TEST(test_log_checkpoint_by_time)
{
	kms_audit_opts o;
	kms_audit_log *log = NULL;
	kms_audit_verdict v;
	kms_err err = {0};

	memset(&o, 0, sizeof(o));
	o.path = path;
	o.node = 3;
	o.sign_key = key;
	o.checkpoint_records = 1000;
	o.checkpoint_seconds = 1;
	ck_assert_msg(kms_audit_log_open(&o, &log, &err) == KMS_OK, "%s",
		      err.msg);
	log_calls(log, 1);
	v = verify(key, KMS_AUDIT_ALLOW_UNSIGNED_TAIL);
	ck_assert_uint_eq(v.unsigned_tail, 1);
	for (int i = 0; i < 50 && v.unsigned_tail > 0; i++) {
		usleep(100 * 1000);
		v = verify(key, KMS_AUDIT_ALLOW_UNSIGNED_TAIL);
	}
	ck_assert_uint_eq(v.unsigned_tail, 0);
	ck_assert_uint_eq(v.checkpoints, 2);
	v = verify(key, 0);
	ck_assert_msg(v.ok, "line %lu: %s", v.bad_line, v.why);
	kms_audit_log_close(log);
}
END_TEST

/* A file whose tail does not verify is kept; a new segment says why. */
START_TEST(test_log_bad_tail_new_segment)
{
	kms_audit_log *log = open_log(key);
	kms_audit_verdict v;
	int fd;

	log_calls(log, 3);
	kms_audit_log_close(log);
	fd = open(path, O_WRONLY | O_APPEND);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "{\"seq\":99,\"pr", 13),
			 13); /* a line cut short */
	close(fd);
	log = open_log(key);
	log_calls(log, 2);
	kms_audit_log_close(log);
	ck_assert_int_eq(count_type("start"), 2);
	load_lines();
	/* The cut line is kept as it was; then start, checkpoint, 2 calls,
	 * checkpoint. */
	ck_assert_str_eq(lines[n_lines - 6], "{\"seq\":99,\"pr\n");
	ck_assert_ptr_nonnull(
	    strstr(lines[n_lines - 5], "the tail of the file did not verify"));
	for (int i = 0; i < n_lines; i++)
		free(lines[i]);
	v = verify(key, 0);
	ck_assert(!v.ok); /* the verifier names the cut line */
	ck_assert_msg(strstr(v.why, "not a JSON record") != NULL, "%s", v.why);
}
END_TEST

/* Tampering with the last record is caught at the next start. */
START_TEST(test_log_tail_changed)
{
	kms_audit_log *log = open_log(NULL);
	kms_audit_text t = {0};
	uint64_t seq;
	uint8_t h[KMS_AUDIT_HASH_LEN];
	kms_err err = {0};
	int fd;

	log_calls(log, 3);
	kms_audit_log_close(log);
	load_lines();
	lines[n_lines - 1][40] = lines[n_lines - 1][40] == '0' ? '1' : '0';
	store_lines();
	fd = open(path, O_RDONLY);
	ck_assert_int_eq(kms_audit_tail(fd, &seq, h, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "does not follow") != NULL ||
			  strstr(err.msg, "JSON") != NULL,
		      "%s", err.msg);
	close(fd);
	kms_audit_text_free(&t);
}
END_TEST

/* A file that cannot be written: open fails and names why. */
START_TEST(test_log_cannot_write)
{
	kms_audit_opts o;
	kms_audit_log *log = NULL;
	kms_err err = {0};

	memset(&o, 0, sizeof(o));
	o.path = "/dev/full";
	o.checkpoint_records = 5;
	o.checkpoint_seconds = 5;
	ck_assert_int_eq(kms_audit_log_open(&o, &log, &err), KMS_ERR_IO);
	ck_assert_msg(strstr(err.msg, "No space left on device") != NULL, "%s",
		      err.msg);
	ck_assert_ptr_null(log);
	ck_assert_int_lt(
	    snprintf(path, sizeof(path), "%s/no/such/dir/audit.log", dir),
	    (int)sizeof(path));
	o.path = path;
	ck_assert_int_eq(kms_audit_log_open(&o, &log, &err), KMS_ERR_IO);
	ck_assert_msg(strstr(err.msg, "cannot open the audit log") != NULL,
		      "%s", err.msg);
}
END_TEST

/* --- the hook in rpc_server: a local call leaves its record first --- */

static int local_code = -1;

static void local_done(void *arg, grpc_status_code code, const char *msg,
		       const uint8_t *resp, size_t len)
{
	(void)arg;
	(void)msg;
	(void)resp;
	(void)len;
	local_code = (int)code;
}

/* A root operation's handler: it names its key, proposal and approvers. */
static void annotating_handler(void *app, kms_call *call, const uint8_t *req,
			       size_t len)
{
	static const char *const approvers[] = {"alice", "bob"};

	(void)app;
	(void)req;
	(void)len;
	kms_call_audit_key(call, "orders", 7);
	kms_call_audit_items(call, 3);
	kms_call_audit_on_behalf_of(call, "spiffe://kmsd.dev/ns/demo/sa/app");
	kms_call_audit_proposal(call, "prop-42", approvers, 2);
	kms_call_fail(call, KMS_ERR_PERMISSION, "no");
}

static const kms_method annotated = {
    "/kms.v1.Operator/Test", annotating_handler, KMS_CALLERS_SERVICES, NULL, 0};

START_TEST(test_local_call_record)
{
	kms_audit_log *log = open_log(key);
	kms_peer peer;
	kms_call *c;
	kms_err err = {0};
	json_t *o, *a;
	json_error_t je;

	memset(&peer, 0, sizeof(peer));
	peer.kind = KMS_PEER_SERVICE;
	ck_assert_int_eq(
	    kms_spiffe_parse_str(KMS_AUDIT_TEST_ADMIN, 1, &peer.id, &err),
	    KMS_OK);
	c = kms_call_local_new(&peer, NULL, LONG_MAX, local_done, NULL);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(
	    kms_call_local_metadata(c, "x-request-id", "trace-7", 7, &err),
	    KMS_OK);
	kms_call_local_audit(c, log, 9);
	kms_call_local_run(&annotated, NULL, c, (const uint8_t *)"", 0);
	ck_assert_int_eq(local_code, 7);
	/* The record is in the file before the outcome reached done. */
	load_lines();
	o = json_loads(lines[n_lines - 1], 0, &je);
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "call");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "node")), 9);
	ck_assert_str_eq(json_string_value(json_object_get(o, "request_id")),
			 "trace-7");
	ck_assert_str_eq(json_string_value(json_object_get(o, "principal")),
			 KMS_AUDIT_TEST_ADMIN);
	ck_assert_str_eq(json_string_value(json_object_get(o, "method")),
			 annotated.path);
	ck_assert_str_eq(json_string_value(json_object_get(o, "key_id")),
			 "orders");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "key_version")),
			 7);
	ck_assert_int_eq(json_integer_value(json_object_get(o, "items")), 3);
	ck_assert_str_eq(json_string_value(json_object_get(o, "on_behalf_of")),
			 "spiffe://kmsd.dev/ns/demo/sa/app");
	ck_assert_str_eq(json_string_value(json_object_get(o, "proposal_id")),
			 "prop-42");
	a = json_object_get(o, "approvers");
	ck_assert_uint_eq(json_array_size(a), 2);
	ck_assert_str_eq(json_string_value(json_array_get(a, 0)), "alice");
	ck_assert_str_eq(json_string_value(json_object_get(o, "decision")),
			 "deny");
	ck_assert_str_eq(json_string_value(json_object_get(o, "peer")),
			 "local");
	json_decref(o);
	for (int i = 0; i < n_lines; i++)
		free(lines[i]);
	/* A caller the method does not serve is refused before the handler,
	 * and recorded too (no key: the handler never ran). */
	peer.kind = KMS_PEER_NODE;
	c = kms_call_local_new(&peer, NULL, LONG_MAX, local_done, NULL);
	kms_call_local_audit(c, log, 9);
	kms_call_local_run(&annotated, NULL, c, (const uint8_t *)"", 0);
	ck_assert_int_eq(local_code, 7);
	load_lines();
	ck_assert_ptr_null(strstr(lines[n_lines - 1], "key_id"));
	ck_assert_ptr_nonnull(
	    strstr(lines[n_lines - 1], "\"decision\":\"deny\""));
	ck_assert_ptr_nonnull(strstr(lines[n_lines - 1], "\"request_id\":\""));
	for (int i = 0; i < n_lines; i++)
		free(lines[i]);
	kms_audit_log_close(log);
	ck_assert(verify(key, 0).ok);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("audit");
	TCase *tc = tcase_create("audit");
	SRunner *sr;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_call_body);
	tcase_add_test(tc, test_call_body_hostile_strings);
	tcase_add_test(tc, test_verify_good);
	tcase_add_test(tc, test_verify_changed_byte);
	tcase_add_test(tc, test_verify_changed_byte_breaks_json);
	tcase_add_test(tc, test_verify_removed_record);
	tcase_add_test(tc, test_verify_removed_first);
	tcase_add_test(tc, test_verify_reordered);
	tcase_add_test(tc, test_verify_truncated_tail);
	tcase_add_test(tc, test_verify_cut_mid_line);
	tcase_add_test(tc, test_verify_forged_checkpoint);
	tcase_add_test(tc, test_verify_bad_signature);
	tcase_add_test(tc, test_verify_empty);
	tcase_add_test(tc, test_log_chain_across_restarts);
	tcase_add_test(tc, test_log_checkpoint_by_time);
	tcase_add_test(tc, test_log_bad_tail_new_segment);
	tcase_add_test(tc, test_log_tail_changed);
	tcase_add_test(tc, test_log_cannot_write);
	tcase_add_test(tc, test_local_call_record);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	return kms_check_run(sr);
}
