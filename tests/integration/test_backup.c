/* test_backup.c - backup and restore (issue #7) with real kmsd processes and SoftHSM tokens: a backup through the quorum, shares unsealed by custodians, a new cluster restored on fresh tokens, and every refusal. */
#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/hsm.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "kms/v1/state.pb-c.h"
#include "node_fixture.h"
#include "test_pki.h"
#include "check_run.h"

#define N 3
#define KM "/kms.v1.KeyManagement/"
#define FREE(m) protobuf_c_message_free_unpacked((ProtobufCMessage *)(m), NULL)
#define NODE_ARGS "--election-timeout 1000 --heartbeat-timeout 100"
#define NBLOBS 6
#define S_INVALID 3
#define S_NOT_FOUND 5
#define S_DENIED 7

static kms_test_env env, env2;
static kms_test_node nodes[N], rnodes[2];
static const char *custodians[3] = {"alice", "bob", "carol"};

static kms_test_blob blobs[NBLOBS + 1];
static int n_blobs;

static void setup(void)
{
	kms_test_cluster_up(&env, nodes, N, NODE_ARGS); /* makes env */
	for (int i = 0; i < 3; i++)
		kms_test_sh("cd '%s' && ops/pki custodian '%s' %s >/dev/null", kms_test_srcdir(),
			    env.pki, custodians[i]);
}

static void teardown(void)
{
	for (int i = 0; i < N; i++)
		if (nodes[i].pid > 0)
			kms_test_node_signal(&nodes[i], SIGTERM);
	for (int i = 0; i < 2; i++)
		if (rnodes[i].pid > 0)
			kms_test_node_signal(&rnodes[i], SIGTERM);
	kms_test_env_destroy(&env);
	if (env2.root[0] != '\0')
		kms_test_env_destroy(&env2);
}

static int leader(void)
{
	int l = kms_test_wait_leader(nodes, N, 10000);

	ck_assert_int_ge(l, 0);
	return l;
}

static void admin_call(const char *method, const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *r = NULL;
	kms_rpc_status st;

	ck_assert_msg(kms_test_call(&nodes[leader()], "admin", method, req, desc, &r, &st) == 0,
		      "%s: %s", method, st.details);
	FREE(r);
}

static void rotate_key(const char *id)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;

	req.key_id = (char *)id;
	admin_call(KM "RotateKey", &req.base, &kms__v1__rotate_key_response__descriptor);
}

static void create_key(const char *id)
{
	kms_client *c = kms_test_client(&nodes[leader()], "admin");
	kms_rpc_status st;

	ck_assert_msg(kms_test_create_key(c, id, KMS_TEST_APP, &st) == 0, "CreateKey %s: %s", id,
		      st.details);
	kms_client_close(c);
}

static void make_blob(const char *key_id)
{
	kms_rpc_status st;

	ck_assert_int_lt(n_blobs, NBLOBS + 1);
	ck_assert_msg(kms_test_make_blob(&nodes[n_blobs % N], "app", key_id, &blobs[n_blobs],
					 &st) == 0,
		      "GenerateDataKey %s: %s", key_id, st.details);
	n_blobs++;
}

static int decrypts(kms_test_node *n, const kms_test_blob *b, kms_rpc_status *st)
{
	return kms_test_blob_decrypts(n, "app", b, st);
}

/* The environment kmsctl runs with, as the first cluster's administrator. */
static void kmsctl_env(char *out, size_t cap, const kms_test_node *n)
{
	ck_assert_int_lt(snprintf(out, cap,
				  "KMS_ENDPOINT=%s KMS_CA='%s/node-ca.pem' KMS_CERT='%s/admin.pem' "
				  "KMS_KEY='%s/admin.key' '%s/kmsctl'",
				  n->endpoint, n->env->pki, n->env->pki, n->env->pki,
				  kms_test_builddir()),
			 (int)cap);
}

static int wait_file_has(const char *path, const char *text, int timeout_s)
{
	for (long until = kms_test_now_ms() + timeout_s * 1000L; kms_test_now_ms() < until;
	     kms_test_sleep_ms(100))
		if (kms_test_file_contains(path, text))
			return 1;
	return 0;
}

/* "name: value" from a kmsctl output file, into out. */
static void field(const char *path, const char *name, char *out, size_t cap)
{
	char line[512];
	FILE *f = fopen(path, "r");
	size_t nl = strlen(name);

	ck_assert_msg(f != NULL, "cannot open %s", path);
	out[0] = '\0';
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
			snprintf(out, cap, "%s", line + nl + 2);
			out[strcspn(out, "\n")] = '\0';
			break;
		}
	fclose(f);
	ck_assert_msg(out[0] != '\0', "%s has no '%s:'", path, name);
}

/* kmsctl backup create in the background, approved by two operators here. */
static void backup_create(const char *out_file)
{
	char ctl[2048], outp[PATH_MAX], id[64], digest[128];
	kms_rpc_status st;

	kmsctl_env(ctl, sizeof(ctl), &nodes[0]);
	KMS_TEST_PATH(outp, "%s/create.out", env.root);
	kms_test_sh("%s backup create --custodian alice='%s/custodians/alice.pub' "
		    "--custodian bob='%s/custodians/bob.pub' --custodian carol='%s/custodians/"
		    "carol.pub' --threshold 2 --out '%s' --wait-timeout 60 >'%s' 2>'%s.err' &",
		    ctl, env.pki, env.pki, env.pki, out_file, outp, outp);
	if (!wait_file_has(outp, "digest: ", 20)) {
		kms_test_sh_output(ctl, sizeof(ctl), "cat '%s.err'", outp);
		ck_abort_msg("kmsctl backup create proposed nothing: %s", ctl);
	}
	field(outp, "proposal_id", id, sizeof(id));
	field(outp, "digest", digest, sizeof(digest));
	/* What an operator sees before approving: the custodians and M. */
	{
		char shown[4096];

		ck_assert_int_eq(kms_test_sh_output(shown, sizeof(shown), "%s --json quorum show %s",
						    ctl, id),
				 0);
		ck_assert_msg(strstr(shown, "\"shares_to_restore\":2") != NULL &&
				      strstr(shown, "\"carol\"") != NULL &&
				      strstr(shown, "backup-export") != NULL,
			      "%s", shown);
	}
	for (int i = 1; i <= 2; i++) {
		char op[32];

		snprintf(op, sizeof(op), "operator%d", i);
		ck_assert_msg(kms_test_approve(&nodes[i], id, digest, op, NULL, &st) == 0,
			      "approve: %s", st.details);
	}
	if (!wait_file_has(outp, "backup_id: ", 30)) {
		kms_test_sh_output(ctl, sizeof(ctl), "cat '%s.err'", outp);
		ck_abort_msg("kmsctl backup create wrote no file: %s", ctl);
	}
	ck_assert(kms_test_file_contains(outp, "custodian: carol"));
}

/* A second backup (its proposal made here), fetched with kmsctl backup fetch. */
static void backup_again(const char *out_file)
{
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__BackupExportOperation be = KMS__V1__BACKUP_EXPORT_OPERATION__INIT;
	Kms__V1__CustodianRecord rec[3], *ptr[3];
	uint8_t keys[3][KMS_X25519_LEN];
	char ctl[2048], path[PATH_MAX], id[64];
	Kms__V1__Proposal *p;
	kms_rpc_status st;
	kms_err err = {0};

	for (int i = 0; i < 3; i++) {
		KMS_TEST_PATH(path, "%s/custodians/%s.pub", env.pki, custodians[i]);
		ck_assert_int_eq(kms_x25519_public_from_file(path, keys[i], &err), KMS_OK);
		kms__v1__custodian_record__init(&rec[i]);
		rec[i].name = (char *)custodians[i];
		rec[i].public_key.data = keys[i];
		rec[i].public_key.len = KMS_X25519_LEN;
		ptr[i] = &rec[i];
	}
	be.custodians = ptr;
	be.n_custodians = 3;
	be.threshold = 2;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT;
	op.backup_export = &be;
	p = kms_test_quorum_run(&nodes[0], &op, &st);
	ck_assert_msg(p != NULL, "backup-export: %s", st.details);
	snprintf(id, sizeof(id), "%s", p->id);
	for (long until = kms_test_now_ms() + 20000;
	     strcmp(p->state, "executed") != 0 && kms_test_now_ms() < until;) {
		ck_assert_str_ne(p->state, "failed");
		FREE(p);
		kms_test_sleep_ms(100);
		p = kms_test_get_operation(&nodes[0], id, &st);
		ck_assert_msg(p != NULL, "GetOperation: %s", st.details);
	}
	ck_assert_str_eq(p->state, "executed");
	FREE(p);
	kmsctl_env(ctl, sizeof(ctl), &nodes[1]);
	kms_test_sh("%s backup fetch %s --out '%s' >/dev/null", ctl, id, out_file);
}

static void slurp(const char *path, kms_buf *out);
static void spill(const char *path, const kms_buf *b);

/* One FetchBackup call of proposal id: the piece's bytes appended to out;
 * the status code (st) otherwise. */
static int fetch_piece(const char *who, const char *id, uint64_t offset, uint32_t max_bytes,
		       kms_buf *out, uint64_t *total, kms_rpc_status *st)
{
	Kms__V1__FetchBackupRequest req = KMS__V1__FETCH_BACKUP_REQUEST__INIT;
	Kms__V1__FetchBackupResponse *r = NULL;
	int rc;

	req.proposal_id = (char *)id;
	req.offset = offset;
	req.max_bytes = max_bytes;
	rc = kms_test_call(&nodes[2], who, "/kms.v1.Operator/FetchBackup", &req.base,
			   &kms__v1__fetch_backup_response__descriptor, (ProtobufCMessage **)&r, st);
	if (rc != 0)
		return rc;
	out->data = kms_realloc(out->data, out->len + r->backup_file.len + 1);
	ck_assert(out->data != NULL);
	if (r->backup_file.len > 0)
		memcpy(out->data + out->len, r->backup_file.data, r->backup_file.len);
	out->len += r->backup_file.len;
	*total = r->total_bytes;
	FREE(r);
	return 0;
}

/*
 * The file of the backup in file, fetched in pieces of 1,000 bytes and in one
 * (max_bytes 0, as older clients do): the same bytes; and the bad requests.
 */
static void pieces_add_up(const char *file)
{
	kms_buf whole = {0}, got = {0}, one = {0};
	kms_backup b;
	kms_err err = {0};
	kms_rpc_status st;
	uint64_t total = 0;
	char id[64];

	slurp(file, &whole);
	ck_assert_int_eq(kms_backup_parse(whole.data, whole.len, &b, &err), KMS_OK);
	snprintf(id, sizeof(id), "%s", b.body->proposal_id);
	kms_backup_free(&b);
	do
		ck_assert_msg(fetch_piece("admin", id, got.len, 1000, &got, &total, &st) == 0,
			      "at %zu: %s", got.len, st.details);
	while (got.len < total);
	ck_assert_uint_eq(total, whole.len);
	ck_assert(got.len == whole.len && memcmp(got.data, whole.data, whole.len) == 0);
	ck_assert_int_eq(fetch_piece("admin", id, 0, 0, &one, &total, &st), 0);
	ck_assert(one.len == whole.len && memcmp(one.data, whole.data, whole.len) == 0);
	/* At the end: nothing more. Past it, too large, not an administrator. */
	kms_buf_free(&one);
	ck_assert_int_eq(fetch_piece("admin", id, whole.len, 1000, &one, &total, &st), 0);
	ck_assert_uint_eq(one.len, 0);
	ck_assert_int_eq(fetch_piece("admin", id, whole.len + 1, 1000, &one, &total, &st),
			 S_INVALID);
	ck_assert_msg(strstr(st.details, "past the end of the backup file") != NULL, "%s",
		      st.details);
	ck_assert_int_eq(fetch_piece("admin", id, 0, (8u << 20) + 1, &one, &total, &st),
			 S_INVALID);
	ck_assert_msg(strstr(st.details, "over the limit") != NULL, "%s", st.details);
	ck_assert_int_eq(fetch_piece("app", id, 0, 1000, &one, &total, &st), S_DENIED);
	kms_buf_free(&whole);
	kms_buf_free(&got);
	kms_buf_free(&one);
}

/* How many backup files node i keeps in its data directory; the last one's path in path. */
static int kept_files(int i, char *path, size_t cap)
{
	char d[PATH_MAX];
	struct dirent *e;
	DIR *dp;
	int n = 0;

	KMS_TEST_PATH(d, "%s/data/backups", nodes[i].dir);
	dp = opendir(d);
	if (dp == NULL)
		return 0;
	while ((e = readdir(dp)) != NULL) {
		size_t l = strlen(e->d_name);

		if (l > 4 && strcmp(e->d_name + l - 4, ".kbk") == 0) {
			n++;
			ck_assert_int_lt(snprintf(path, cap, "%s/%s", d, e->d_name), (int)cap);
		}
	}
	closedir(dp);
	return n;
}

/* A node certificate from the cluster's node CA, its key in a file (who.pem, who.key). */
static void issue_node_cert(uint64_t id, const char *who)
{
	kms_test_issue_node_cert(env.pki, KMS_TEST_TD, id, who);
}

/* Internal/FetchBackupPiece on node i as who: the status, the piece's length in *n. */
static int piece_call(int i, const char *who, const uint8_t *id, size_t id_len, size_t *n,
		      kms_rpc_status *st)
{
	Kms__V1__FetchBackupPieceRequest req = KMS__V1__FETCH_BACKUP_PIECE_REQUEST__INIT;
	Kms__V1__FetchBackupResponse *r = NULL;
	int rc;

	req.backup_id.data = (uint8_t *)id;
	req.backup_id.len = id_len;
	req.max_bytes = 1000;
	rc = kms_test_call(&nodes[i], who, "/kms.v1.Internal/FetchBackupPiece", &req.base,
			   &kms__v1__fetch_backup_response__descriptor, (ProtobufCMessage **)&r, st);
	*n = rc == 0 ? r->backup_file.len : 0;
	if (r != NULL)
		FREE(r);
	return rc;
}

/*
 * The file of the last backup stays out of the replicated state: only the
 * node that made it keeps it (the first backup's file is gone), and every
 * member serves it from there. A copy changed or cut short on that node,
 * the node down, or a caller that is not a member: each refused, naming
 * why; kmsctl writes nothing it cannot check.
 */
static void kept_by_its_maker_and_served_by_every_member(const char *file)
{
	char path[PATH_MAX], got[PATH_MAX], ctl[2048], out[2048], id[64], saved[PATH_MAX];
	kms_buf want = {0}, kept = {0}, b = {0};
	kms_backup bk;
	kms_rpc_status st;
	kms_err err = {0};
	uint64_t total;
	int h = -1, o, n_kept = 0;
	size_t n;

	/* The replaced file goes at the maker's next look (a tick of its supervisor). */
	for (long until = kms_test_now_ms() + 5000; kms_test_now_ms() < until;
	     kms_test_sleep_ms(100)) {
		n_kept = 0;
		for (int i = 0; i < N; i++) {
			int k = kept_files(i, path, sizeof(path));

			n_kept += k;
			if (k == 1)
				h = i;
		}
		if (n_kept == 1)
			break;
	}
	ck_assert_msg(n_kept == 1 && h >= 0, "%d backup files kept, want 1 (the last backup's)",
		      n_kept);
	kept_files(h, path, sizeof(path));
	slurp(file, &want);
	slurp(path, &kept);
	ck_assert(kept.len == want.len && memcmp(kept.data, want.data, want.len) == 0);
	ck_assert_int_eq(kms_backup_parse(want.data, want.len, &bk, &err), KMS_OK);
	snprintf(id, sizeof(id), "%s", bk.body->proposal_id);
	o = (h + 1) % N;
	/* From every member: the same bytes. */
	for (int i = 0; i < N; i++) {
		KMS_TEST_PATH(got, "%s/via%d.kbk", env.root, i);
		kmsctl_env(ctl, sizeof(ctl), &nodes[i]);
		kms_test_sh("%s backup fetch %s --out '%s' >/dev/null", ctl, id, got);
		slurp(got, &b);
		ck_assert_msg(b.len == want.len && memcmp(b.data, want.data, want.len) == 0,
			      "the file fetched through node %d differs", i + 1);
		kms_buf_free(&b);
	}
	/* Internal/FetchBackupPiece: members only, the last backup only, its maker only. */
	issue_node_cert(nodes[o].id, "member-node");
	issue_node_cert(9, "node9");
	ck_assert_int_eq(piece_call(h, "member-node", bk.body->backup_id.data, KMS_BACKUP_ID_LEN,
				    &n, &st),
			 0);
	ck_assert_uint_eq(n, 1000);
	ck_assert_int_eq(piece_call(h, "node9", bk.body->backup_id.data, KMS_BACKUP_ID_LEN, &n,
				    &st),
			 S_DENIED);
	ck_assert_msg(strstr(st.details, "not a member") != NULL, "%s", st.details);
	ck_assert_int_eq(piece_call(h, "admin", bk.body->backup_id.data, KMS_BACKUP_ID_LEN, &n,
				    &st),
			 S_DENIED);
	ck_assert_int_eq(piece_call(o, "member-node", bk.body->backup_id.data, KMS_BACKUP_ID_LEN,
				    &n, &st),
			 S_NOT_FOUND);
	ck_assert_msg(strstr(st.details, "another node made it") != NULL, "%s", st.details);
	ck_assert_int_eq(piece_call(h, "member-node", (const uint8_t *)"0123456789abcdef", 16, &n,
				    &st),
			 S_NOT_FOUND);
	ck_assert_int_eq(piece_call(h, "member-node", bk.body->backup_id.data, 15, &n, &st),
			 S_INVALID);
	ck_assert_msg(strstr(st.details, "16 bytes") != NULL, "%s", st.details);

	/* One byte of the kept copy changed: kmsctl checks the whole against the recorded SHA-256. */
	kept.data[kept.len / 2] ^= 0x01;
	spill(path, &kept);
	kmsctl_env(ctl, sizeof(ctl), &nodes[o]);
	KMS_TEST_PATH(got, "%s/changed-copy.kbk", env.root);
	ck_assert_int_ne(kms_test_sh_output(out, sizeof(out), "%s backup fetch %s --out '%s' 2>&1",
					    ctl, id, got),
			 0);
	ck_assert_msg(strstr(out, "does not match the SHA-256") != NULL, "%s", out);
	ck_assert(access(got, F_OK) != 0);
	/* Cut short: the node that keeps it refuses, and says so through the member asked. */
	KMS_TEST_PATH(saved, "%s.saved", path);
	kms_test_sh("cp '%s' '%s' && truncate -s 100 '%s'", path, saved, path);
	ck_assert_int_eq(fetch_piece("admin", id, 0, 1000, &b, &total, &st), 9);
	ck_assert_msg(strstr(st.details, "not the") != NULL &&
			      strstr(st.details, "the cluster recorded") != NULL,
		      "%s", st.details);
	kms_buf_free(&b);
	kept.data[kept.len / 2] ^= 0x01;
	spill(path, &kept);
	kms_test_sh("rm -f '%s'", saved);

	/* Its maker down: UNAVAILABLE naming it; back up, the file is served again. */
	kms_test_node_signal(&nodes[h], SIGKILL);
	ck_assert_int_ne(kms_test_sh_output(out, sizeof(out), "%s backup fetch %s --out '%s' 2>&1",
					    ctl, id, got),
			 0);
	ck_assert_msg(strstr(out, "UNAVAILABLE") != NULL && strstr(out, "which made it") != NULL,
		      "%s", out);
	ck_assert(access(got, F_OK) != 0);
	kms_test_node_start(&nodes[h]);
	ck_assert(kms_test_node_wait_healthy(&nodes[h], 30));
	/* The member asked reconnects within its 2 s reconnect backoff. */
	for (long until = kms_test_now_ms() + 10000;
	     kms_test_sh_output(out, sizeof(out), "%s backup fetch %s --out '%s' 2>&1", ctl, id,
				got) != 0;
	     kms_test_sleep_ms(250))
		ck_assert_msg(kms_test_now_ms() < until, "fetch after node %d came back: %s", h + 1,
			      out);
	slurp(got, &b);
	ck_assert(b.len == want.len && memcmp(b.data, want.data, want.len) == 0);
	kms_buf_free(&b);
	kms_backup_free(&bk);
	kms_buf_free(&want);
	kms_buf_free(&kept);
}

static void unseal(const char *file, const char *who, const char *key_of, const char *out)
{
	kms_test_sh("'%s/kmsctl' backup unseal-share --file '%s' --custodian %s "
		    "--key '%s/custodians/%s.key' --out '%s' >/dev/null",
		    kms_test_builddir(), file, who, env.pki, key_of, out);
}

/* Reads a whole small file. */
static void slurp(const char *path, kms_buf *out)
{
	FILE *f = fopen(path, "rb");
	long n;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	ck_assert(fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0);
	out->data = kms_malloc((size_t)n);
	ck_assert(out->data != NULL && fread(out->data, 1, (size_t)n, f) == (size_t)n);
	out->len = (size_t)n;
	fclose(f);
}

static void spill(const char *path, const kms_buf *b)
{
	FILE *f = fopen(path, "wb");

	ck_assert(f != NULL && fwrite(b->data, 1, b->len, f) == b->len && fclose(f) == 0);
}

static int dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int empty = 1;

	if (d == NULL)
		return 1;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			empty = 0;
	closedir(d);
	return empty;
}

/* kmsd --restore refused: exit 1, the log names why, nothing left behind. */
static void restore_refused(const char *file, const char *s1, const char *s2, const char *why)
{
	const char *argv[8] = {"--restore", file, "--share", s1, NULL, NULL, NULL};
	char data[PATH_MAX];

	if (s2 != NULL) {
		argv[4] = "--share";
		argv[5] = s2;
	}
	rnodes[0].extra_argv = argv;
	ck_assert_int_eq(kms_test_node_run_expect_exit(&rnodes[0], rnodes[0].conf), 1);
	rnodes[0].extra_argv = NULL;
	ck_assert_msg(kms_test_file_contains(rnodes[0].log, why), "%s does not say '%s'",
		      rnodes[0].log, why);
	KMS_TEST_PATH(data, "%s/data", rnodes[0].dir);
	ck_assert_msg(dir_is_empty(data), "a refused restore left state in %s", data);
}

/* Makes (make 1) or destroys (make 0) a generation-2 domain key in n's
 * token, as a second key no restore put there; n is not running. */
static void extra_domain_key(kms_test_node *n, int make)
{
	char label[KMS_HSM_DK_LABEL_MAX], pin_path[PATH_MAX];
	kms_buf pin = {0};
	kms_hsm *h = NULL;
	kms_hsm_key k = 0;
	kms_err err = {0};

	KMS_TEST_PATH(pin_path, "%s/token/pin", n->dir);
	slurp(pin_path, &pin);
	pin.data = kms_realloc(pin.data, pin.len + 1);
	ck_assert(pin.data != NULL);
	pin.data[pin.len] = '\0';
	ck_assert_int_eq(setenv("SOFTHSM2_CONF", n->softhsm_conf, 1), 0);
	ck_assert_msg(kms_hsm_open(getenv("KMS_PKCS11_MODULE"), n->token_label, (char *)pin.data,
				   &h, &err) == KMS_OK,
		      "%s", err.msg);
	ck_assert_int_eq(kms_hsm_dk_label("kmsd-domain-key", 2, label, &err), KMS_OK);
	ck_assert_msg(kms_hsm_domain_key(h, label, make, &k, &err) == KMS_OK, "%s", err.msg);
	if (!make)
		ck_assert_msg(kms_hsm_domain_key_destroy(h, k, &err) == KMS_OK, "%s", err.msg);
	kms_hsm_close(h);
	kms_buf_free_secret(&pin);
}

START_TEST(backup_restores_every_key_and_refuses_bad_inputs)
{
	char f1[PATH_MAX], f2[PATH_MAX], bad[PATH_MAX], sh[3][PATH_MAX], sh_b2[PATH_MAX],
		sh_wrong[PATH_MAX], sh_x[PATH_MAX], out[1024];
	Kms__V1__CreateAliasRequest ca = KMS__V1__CREATE_ALIAS_REQUEST__INIT;
	Kms__V1__KeyMetadata *md;
	kms_backup_share s;
	kms_buf b = {0}, enc = {0};
	kms_rpc_status st;
	kms_err err = {0};
	int n_before;

	/* Keys, a rotation, an alias, blobs under every version. */
	create_key("bk-1");
	create_key("bk-2");
	ca.alias_name = "alias/orders";
	ca.key_id = "bk-2";
	admin_call(KM "CreateAlias", &ca.base, &kms__v1__create_alias_response__descriptor);
	make_blob("bk-1");
	make_blob("bk-2");
	rotate_key("bk-1");
	make_blob("bk-1");
	make_blob("alias/orders");
	n_before = n_blobs;

	KMS_TEST_PATH(f1, "%s/backup1.kbk", env.root);
	backup_create(f1);

	/* After the backup: another key, another version; neither is in it. */
	create_key("bk-3");
	rotate_key("bk-2");
	make_blob("bk-3");

	for (int i = 0; i < 3; i++) {
		KMS_TEST_PATH(sh[i], "%s/%s.share", env.root, custodians[i]);
		unseal(f1, custodians[i], custodians[i], sh[i]);
	}
	/* A share opens only with its custodian's key. */
	KMS_TEST_PATH(sh_x, "%s/x.share", env.root);
	ck_assert_int_ne(kms_test_sh_output(out, sizeof(out),
					    "'%s/kmsctl' backup unseal-share --file '%s' "
					    "--custodian alice --key '%s/custodians/bob.key' --out "
					    "'%s' 2>&1",
					    kms_test_builddir(), f1, env.pki, sh_x),
			 0);
	ck_assert_msg(strstr(out, "does not open with this private key") != NULL, "%s", out);
	ck_assert(access(sh_x, F_OK) != 0);

	KMS_TEST_PATH(f2, "%s/backup2.kbk", env.root);
	backup_again(f2);
	pieces_add_up(f2);
	kept_by_its_maker_and_served_by_every_member(f2);
	KMS_TEST_PATH(sh_b2, "%s/bob2.share", env.root);
	unseal(f2, "bob", "bob", sh_b2);

	/* A new cluster: its own CA, tokens and operators. */
	kms_test_env_init(&env2);
	kms_test_node_init_args(&env2, &rnodes[0], 1, NODE_ARGS);

	restore_refused(f1, sh[0], NULL, "needs 2 shares to restore, 1 given");
	restore_refused(f1, sh[0], sh_b2, "belongs to backup");
	/* alice's share with one bit changed (its file's checksum made again) */
	slurp(sh[0], &b);
	ck_assert_int_eq(kms_backup_share_decode(b.data, b.len, &s, &err), KMS_OK);
	s.share[3] ^= 0x40;
	ck_assert_int_eq(kms_backup_share_encode(&s, &enc, &err), KMS_OK);
	KMS_TEST_PATH(sh_wrong, "%s/wrong.share", env.root);
	spill(sh_wrong, &enc);
	kms_buf_free_secret(&enc);
	kms_buf_free_secret(&b);
	restore_refused(f1, sh_wrong, sh[1], "custodian 'alice''s (index 1) is wrong");
	/* one byte of the file flipped, in the middle */
	slurp(f1, &b);
	b.data[b.len / 2] ^= 0x01;
	KMS_TEST_PATH(bad, "%s/changed.kbk", env.root);
	spill(bad, &b);
	restore_refused(bad, sh[0], sh[1], "the backup file is damaged or was changed");
	kms_buf_free(&b);

	/* M shares on the fresh token: every key and version of the backup is
	 * back. Then the state a restore killed before its end leaves once the
	 * operator has emptied data_dir (the token holds the backup's domain
	 * key, the state nothing): the same command checks the token's key
	 * against the backup and goes on with it. */
	{
		const char *argv[] = {"--restore", f1, "--share", sh[0], "--share", sh[2], NULL};
		char data[PATH_MAX];

		rnodes[0].extra_argv = argv;
		kms_test_node_start(&rnodes[0]);
		ck_assert_msg(kms_test_wait_log(&rnodes[0], "restore: done", 20), "see %s",
			      rnodes[0].log);
		kms_test_node_signal(&rnodes[0], SIGKILL);
		KMS_TEST_PATH(data, "%s/data", rnodes[0].dir);
		kms_test_sh("rm -rf '%s'", data);
		kms_test_sh("mv '%s' '%s.first'", rnodes[0].log, rnodes[0].log);
		/* Twin: another generation of the domain key beside it is not
		 * a restore that stopped; refused, and nothing written. */
		extra_domain_key(&rnodes[0], 1);
		restore_refused(f1, sh[0], sh[2], "already holds 2 generations of the domain key");
		extra_domain_key(&rnodes[0], 0);
		rnodes[0].extra_argv = argv;
		kms_test_node_start(&rnodes[0]);
		rnodes[0].extra_argv = NULL;
	}
	ck_assert_msg(kms_test_wait_log(&rnodes[0], "restore: done", 20), "see %s", rnodes[0].log);
	ck_assert_msg(kms_test_file_contains(rnodes[0].log,
					     "already holds this backup's domain key"),
		      "see %s", rnodes[0].log);
	for (int i = 0; i < n_before; i++)
		ck_assert_msg(decrypts(&rnodes[0], &blobs[i], &st), "blob %d: %s", i, st.details);
	md = kms_test_describe(&rnodes[0], "app", "bk-1", &st);
	ck_assert_msg(md != NULL, "DescribeKey bk-1: %s", st.details);
	ck_assert_uint_eq(md->primary_version, 2);
	FREE(md);
	md = kms_test_describe(&rnodes[0], "app", "alias/orders", &st);
	ck_assert_msg(md != NULL, "DescribeKey alias/orders: %s", st.details);
	ck_assert_str_eq(md->key_id, "bk-2");
	ck_assert_uint_eq(md->primary_version, 1);
	FREE(md);
	ck_assert(kms_test_describe(&rnodes[0], "admin", "bk-3", &st) == NULL);
	ck_assert_int_eq(st.code, S_NOT_FOUND);
	ck_assert(!decrypts(&rnodes[0], &blobs[n_before], &st));

	/* Another node joins the restored one by the normal, approved join. */
	kms_test_join_node(&env2, rnodes, 1, NODE_ARGS);
	for (int i = 0; i < n_before; i++)
		ck_assert_msg(decrypts(&rnodes[1], &blobs[i], &st), "blob %d on the joined node: %s",
			      i, st.details);
}
END_TEST

static Suite *backup_suite(void)
{
	Suite *s = suite_create("backup");
	TCase *tc = tcase_create("restore");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, backup_restores_every_key_and_refuses_bad_inputs);
	tcase_set_timeout(tc, 300);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(backup_suite()));
}
