/* backup_cmd.c - 'kmsctl backup': a backup proposed through the quorum and fetched, and a custodian's share unsealed offline. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/support/log.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/client.h"
#include "kms/quorum.h"
#include "kms/v1/cluster.pb-c.h"
#include "backup_cmd.h"
#include "kmsctl.h"

const char kmsctl_backup_usage[] =
    "usage: kmsctl [global options] backup create --custodian NAME=PUBFILE [...]\n"
    "                  --threshold M --out FILE [--ttl S] [--wait-timeout S]\n"
    "       kmsctl [global options] backup fetch ID --out FILE\n"
    "       kmsctl backup unseal-share --file FILE --custodian NAME --key PRIVFILE\n"
    "                  --out SHAREFILE\n"
    "  create: proposes a backup-export root operation (an administrator's\n"
    "    certificate), prints its proposal_id and digest, and waits (up to\n"
    "    --wait-timeout S, default 3600) while M operators approve it with\n"
    "    'kmsctl quorum approve ID'. The leader then makes the backup: the key\n"
    "    ring (material wrapped under the domain key), the domain key wrapped\n"
    "    under a new backup key made in its HSM, that key split into one\n"
    "    share per custodian (X25519 keys from ops/pki custodian), M of them\n"
    "    needed to restore, each sealed to its custodian. Writes it to FILE\n"
    "    (mode 0600). Interrupted, 'backup fetch ID' gets the file later.\n"
    "  fetch: writes the file of executed backup-export proposal ID (the\n"
    "    cluster keeps the last backup's file only).\n"
    "  unseal-share: offline, no server: the custodian NAME opens its share\n"
    "    with its private key and writes it to SHAREFILE (mode 0600, refused\n"
    "    if it exists). Keep it offline until the restore, then destroy it.\n"
    "  Restore: kmsd --config FILE --restore BACKUP --share SHAREFILE ... on a\n"
    "  fresh token and an empty data_dir (docs/OPERATIONS.md).\n";

enum { O_CUSTODIAN = 1, O_THRESHOLD, O_OUT, O_TTL, O_WAIT, O_FILE, O_KEY, O_HELP };

struct args {
	const char *sub, *id, *out, *file, *key, *custodian;
	char *custodians[KMS_BACKUP_CUSTODIANS_MAX];
	size_t n_custodians;
	uint32_t threshold, ttl, wait_s;
};

static int usage(const char *what)
{
	errmsg("backup: %s", what);
	fputs("\nrun 'kmsctl backup --help' for usage\n", stderr);
	return EXIT_LOCAL;
}

static int parse_u32(const char *s, const char *what, uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < 1 || v > max) {
		errmsg("backup: %s must be 1..%u, not '%s'", what, max, s);
		return EXIT_LOCAL;
	}
	*out = (uint32_t)v;
	return EXIT_OK;
}

/* Writes len bytes to a new file of mode 0600; excl: refuse an existing one. */
static int write_private(const char *path, const uint8_t *data, size_t len, int excl)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), 0600);
	size_t off = 0;

	if (fd < 0) {
		errmsg("backup: cannot create %s: %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	if (fchmod(fd, 0600) != 0)
		goto fail;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		off += (size_t)n;
	}
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		goto fail;
	}
	return EXIT_OK;
fail:
	errmsg("backup: cannot write %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(path);
	return EXIT_LOCAL;
}

static int read_all(const char *path, kms_buf *out)
{
	FILE *f = fopen(path, "rbe");
	long n;

	out->data = NULL;
	out->len = 0;
	if (f == NULL) {
		errmsg("backup: cannot open %s: %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
	    (size_t)n > KMS_BACKUP_FILE_MAX) {
		errmsg("backup: cannot read %s (or it is over %u bytes)", path, KMS_BACKUP_FILE_MAX);
		fclose(f);
		return EXIT_LOCAL;
	}
	out->data = kms_malloc(n > 0 ? (size_t)n : 1);
	if (out->data == NULL || fread(out->data, 1, (size_t)n, f) != (size_t)n) {
		errmsg("backup: cannot read %s", path);
		kms_buf_free(out);
		fclose(f);
		return EXIT_LOCAL;
	}
	out->len = (size_t)n;
	fclose(f);
	return EXIT_OK;
}

/* Pieces of a backup file per FetchBackup call: a file of any size fits. */
#define FETCH_PIECE (4u << 20)

/*
 * The whole file of backup proposal id, piece by piece, into file: the
 * pieces must add up to the size the first answer gives, and the whole to
 * the SHA-256 the cluster recorded when the file was made.
 */
static int fetch_file(kms_client *c, const char *id, kms_buf *file)
{
	Kms__V1__FetchBackupRequest req = KMS__V1__FETCH_BACKUP_REQUEST__INIT;
	uint8_t want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
	uint64_t total = 0;
	int has_sum = 0;
	kms_rpc_status st;

	req.proposal_id = (char *)id;
	req.max_bytes = FETCH_PIECE;
	do {
		Kms__V1__FetchBackupResponse *resp = NULL;

		req.offset = file->len;
		if (kms_client_call(c, "/kms.v1.Operator/FetchBackup", &req.base,
				    &kms__v1__fetch_backup_response__descriptor,
				    (ProtobufCMessage **)&resp, &st) != 0)
			return kmsctl_server_error(&st);
		if ((file->data != NULL && resp->total_bytes != total) ||
		    resp->total_bytes > KMS_BACKUP_FILE_MAX ||
		    resp->backup_file.len > resp->total_bytes - file->len ||
		    (resp->backup_file.len == 0 && file->len < resp->total_bytes) ||
		    (resp->sha256.len != 0 && resp->sha256.len != sizeof(want))) {
			errmsg("backup: the server's pieces of the file do not add up (%zu bytes "
			       "of %llu, then %zu more of %llu)",
			       file->len, (unsigned long long)total, resp->backup_file.len,
			       (unsigned long long)resp->total_bytes);
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			return EXIT_SERVER;
		}
		if (file->data == NULL) {
			/* Once, at the size the file has: no copying as it grows. */
			total = resp->total_bytes;
			has_sum = resp->sha256.len == sizeof(want);
			if (has_sum)
				memcpy(want, resp->sha256.data, sizeof(want));
			file->data = kms_malloc(total > 0 ? (size_t)total : 1);
			if (file->data == NULL) {
				protobuf_c_message_free_unpacked(&resp->base, NULL);
				errmsg("backup: out of memory for a file of %llu bytes",
				       (unsigned long long)total);
				return EXIT_LOCAL;
			}
		}
		memcpy(file->data + file->len, resp->backup_file.data, resp->backup_file.len);
		file->len += resp->backup_file.len;
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	} while (file->len < total);
	if (has_sum && (SHA256(file->data, file->len, got) == NULL ||
			CRYPTO_memcmp(got, want, sizeof(got)) != 0)) {
		errmsg("backup: the file the server sent does not match the SHA-256 the cluster "
		       "recorded when it was made: the copy on the node that keeps it was changed; "
		       "nothing written");
		return EXIT_SERVER;
	}
	return EXIT_OK;
}

static int fetch(kms_client *c, const char *id, const char *out)
{
	kms_buf file = {0};
	kms_backup b;
	kms_err err = {0};
	char idhex[2 * KMS_BACKUP_ID_LEN + 1];
	int rc = fetch_file(c, id, &file);

	if (rc != EXIT_OK) {
		kms_buf_free(&file);
		return rc;
	}
	/* A file that would not even parse is not worth keeping. */
	if (kms_backup_parse(file.data, file.len, &b, &err) != KMS_OK) {
		errmsg("backup: the server sent a file that is not a backup: %s", err.msg);
		kms_buf_free(&file);
		return EXIT_SERVER;
	}
	rc = write_private(out, file.data, file.len, 0);
	if (rc == EXIT_OK) {
		kms_backup_id_hex(b.body->backup_id.data, idhex);
		printf("backup_id: %s\nproposal_id: %s\nfile: %s\nbytes: %zu\nshares: %zu\n"
		       "threshold: %u\n",
		       idhex, b.body->proposal_id, out, file.len, b.body->n_shares,
		       b.body->threshold);
		for (size_t i = 0; i < b.body->n_shares; i++)
			printf("custodian: %s\n", b.body->shares[i]->custodian);
	}
	kms_backup_free(&b);
	kms_buf_free(&file);
	return rc;
}

/* NAME=PUBFILE pairs into the operation; names and keys borrowed from a. */
static int build_operation(struct args *a, Kms__V1__BackupExportOperation *op,
			   Kms__V1__CustodianRecord *recs, Kms__V1__CustodianRecord **ptrs,
			   uint8_t (*keys)[KMS_X25519_LEN])
{
	kms_err err = {0};

	kms__v1__backup_export_operation__init(op);
	for (size_t i = 0; i < a->n_custodians; i++) {
		char *eq = strchr(a->custodians[i], '=');

		if (eq == NULL || eq == a->custodians[i] || eq[1] == '\0')
			return usage("--custodian takes NAME=PUBFILE");
		*eq = '\0';
		if (kms_x25519_public_from_file(eq + 1, keys[i], &err) != KMS_OK) {
			errmsg("backup: custodian %s: %s", a->custodians[i], err.msg);
			return EXIT_LOCAL;
		}
		kms__v1__custodian_record__init(&recs[i]);
		recs[i].name = a->custodians[i];
		recs[i].public_key.data = keys[i];
		recs[i].public_key.len = KMS_X25519_LEN;
		ptrs[i] = &recs[i];
	}
	op->custodians = ptrs;
	op->n_custodians = a->n_custodians;
	op->threshold = a->threshold;
	if (kms_backup_export_check(op, NULL, &err) != KMS_OK)
		return usage(err.msg);
	return EXIT_OK;
}

static int create(struct args *a, kms_client *c)
{
	Kms__V1__CustodianRecord recs[KMS_BACKUP_CUSTODIANS_MAX], *ptrs[KMS_BACKUP_CUSTODIANS_MAX];
	uint8_t keys[KMS_BACKUP_CUSTODIANS_MAX][KMS_X25519_LEN];
	Kms__V1__BackupExportOperation be;
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__Proposal *p = NULL;
	kms_rpc_status st;
	char id[KMS_PROPOSAL_ID_HEX + 1];
	time_t until;
	int rc;

	if ((rc = build_operation(a, &be, recs, ptrs, keys)) != EXIT_OK)
		return rc;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT;
	op.backup_export = &be;
	if ((rc = kmsctl_propose(c, &op, a->ttl, &p)) != EXIT_OK)
		return rc;
	snprintf(id, sizeof(id), "%s", p->id);
	printf("proposal_id: %s\ndigest: %s\n", id, p->digest);
	fprintf(stderr,
		"kmsctl: waiting for %u operator approvals of backup-export %s "
		"(kmsctl quorum approve %s ...)\n",
		p->threshold, id, id);
	fflush(stdout);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	until = time(NULL) + (time_t)a->wait_s;
	for (;;) {
		Kms__V1__GetOperationRequest g = KMS__V1__GET_OPERATION_REQUEST__INIT;
		Kms__V1__GetOperationResponse *gr = NULL;
		const char *state;

		g.proposal_id = id;
		if (kms_client_call(c, "/kms.v1.Operator/GetOperation", &g.base,
				    &kms__v1__get_operation_response__descriptor,
				    (ProtobufCMessage **)&gr, &st) != 0)
			return kmsctl_server_error(&st);
		state = gr->proposal != NULL ? gr->proposal->state : "";
		if (strcmp(state, "executed") == 0) {
			protobuf_c_message_free_unpacked(&gr->base, NULL);
			return fetch(c, id, a->out);
		}
		if (strcmp(state, "pending") != 0 && strcmp(state, "approved") != 0) {
			errmsg("backup: proposal %s is %s%s%s", id, state,
			       gr->proposal != NULL && gr->proposal->result[0] != '\0' ? ": " : "",
			       gr->proposal != NULL ? gr->proposal->result : "");
			protobuf_c_message_free_unpacked(&gr->base, NULL);
			return EXIT_SERVER;
		}
		protobuf_c_message_free_unpacked(&gr->base, NULL);
		if (time(NULL) >= until) {
			errmsg("backup: proposal %s is still %s after %u s: 'kmsctl backup fetch %s "
			       "--out FILE' once it is executed",
			       id, state, a->wait_s, id);
			return EXIT_LOCAL;
		}
		sleep(1);
	}
}

static int unseal(const struct args *a)
{
	uint8_t priv[KMS_X25519_LEN];
	kms_buf file = {0}, enc = {0};
	kms_backup b;
	kms_backup_share s;
	kms_err err = {0};
	char idhex[2 * KMS_BACKUP_ID_LEN + 1];
	int rc;

	if ((rc = read_all(a->file, &file)) != EXIT_OK)
		return rc;
	if (kms_backup_parse(file.data, file.len, &b, &err) != KMS_OK) {
		errmsg("backup: %s: %s", a->file, err.msg);
		kms_buf_free(&file);
		return EXIT_LOCAL;
	}
	kms_buf_free(&file);
	if (kms_x25519_private_from_file(a->key, priv, &err) != KMS_OK) {
		errmsg("backup: %s", err.msg);
		kms_backup_free(&b);
		return EXIT_LOCAL;
	}
	rc = kms_backup_unseal_share(&b, a->custodian, priv, &s, &err);
	kms_cleanse(priv, sizeof(priv));
	if (rc != KMS_OK) {
		errmsg("backup: %s", err.msg);
		kms_backup_free(&b);
		return EXIT_LOCAL;
	}
	rc = kms_backup_share_encode(&s, &enc, &err) == KMS_OK
		     ? write_private(a->out, enc.data, enc.len, 1)
		     : (errmsg("backup: %s", err.msg), EXIT_LOCAL);
	if (rc == EXIT_OK) {
		kms_backup_id_hex(s.backup_id, idhex);
		printf("backup_id: %s\ncustodian: %s\nshare: %s\nthreshold: %u\n", idhex,
		       s.custodian, a->out, b.body->threshold);
	}
	kms_cleanse(&s, sizeof(s));
	kms_buf_free_secret(&enc);
	kms_backup_free(&b);
	return rc;
}

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
	    {"custodian", required_argument, NULL, O_CUSTODIAN},
	    {"threshold", required_argument, NULL, O_THRESHOLD},
	    {"out", required_argument, NULL, O_OUT},
	    {"ttl", required_argument, NULL, O_TTL},
	    {"wait-timeout", required_argument, NULL, O_WAIT},
	    {"file", required_argument, NULL, O_FILE},
	    {"key", required_argument, NULL, O_KEY},
	    {"help", no_argument, NULL, O_HELP},
	    {NULL, 0, NULL, 0},
	};
	int c;

	a->wait_s = 3600;
	/* 0, not 1: glibc starts its scan state over (kmsctl's own getopt ran first). */
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case O_CUSTODIAN:
			/* create: NAME=PUBFILE, repeated; unseal-share: NAME */
			if (a->n_custodians == KMS_BACKUP_CUSTODIANS_MAX)
				return usage("more than 16 --custodian");
			a->custodians[a->n_custodians++] = optarg;
			a->custodian = optarg;
			break;
		case O_THRESHOLD:
			if (parse_u32(optarg, "--threshold", KMS_BACKUP_CUSTODIANS_MAX,
				      &a->threshold) != EXIT_OK)
				return EXIT_LOCAL;
			break;
		case O_OUT:
			a->out = optarg;
			break;
		case O_TTL:
			if (parse_u32(optarg, "--ttl", KMS_PROPOSAL_TTL_MAX, &a->ttl) != EXIT_OK)
				return EXIT_LOCAL;
			break;
		case O_WAIT:
			if (parse_u32(optarg, "--wait-timeout", 86400, &a->wait_s) != EXIT_OK)
				return EXIT_LOCAL;
			break;
		case O_FILE:
			a->file = optarg;
			break;
		case O_KEY:
			a->key = optarg;
			break;
		case O_HELP:
			fputs(kmsctl_backup_usage, stdout);
			return -1;
		default:
			return usage("unknown option");
		}
	}
	if (optind >= argc)
		return usage("no subcommand (create, fetch or unseal-share)");
	a->sub = argv[optind++];
	if (strcmp(a->sub, "fetch") == 0 && optind < argc)
		a->id = argv[optind++];
	if (optind < argc)
		return usage("unexpected argument");
	return EXIT_OK;
}

int kmsctl_backup(int argc, char **argv, const kms_client_opts *copts)
{
	struct args a;
	kms_client *c = NULL;
	kms_err err = {0};
	int rc;

	memset(&a, 0, sizeof(a));
	rc = parse(argc, argv, &a);
	if (rc != EXIT_OK)
		return rc < 0 ? EXIT_OK : rc;
	if (strcmp(a.sub, "unseal-share") == 0) {
		if (a.file == NULL || a.custodian == NULL || a.key == NULL || a.out == NULL ||
		    a.n_custodians != 1 || strchr(a.custodian, '=') != NULL)
			return usage("unseal-share needs --file FILE --custodian NAME --key "
				     "PRIVFILE --out SHAREFILE");
		return unseal(&a);
	}
	if (strcmp(a.sub, "create") == 0) {
		if (a.n_custodians == 0 || a.threshold == 0 || a.out == NULL)
			return usage("create needs --custodian NAME=PUBFILE (one per custodian), "
				     "--threshold M and --out FILE");
	} else if (strcmp(a.sub, "fetch") == 0) {
		if (a.id == NULL || a.out == NULL)
			return usage("fetch needs ID and --out FILE");
		if (kms_proposal_id_check(a.id, &err) != KMS_OK)
			return usage(err.msg);
	} else {
		return usage("unknown subcommand (create, fetch or unseal-share)");
	}
	if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
		gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
	if (kms_client_open(copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	rc = strcmp(a.sub, "create") == 0 ? create(&a, c) : fetch(c, a.id, a.out);
	kms_client_close(c);
	return rc;
}
