/* audit_cmd.c - 'kmsctl audit verify FILE [--node-cert PEM]': the hash chain, the order and the checkpoint signatures of an audit file. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kms/audit.h"
#include "audit_cmd.h"
#include "kmsctl.h"

const char kmsctl_audit_usage[] =
    "usage: kmsctl [--json] audit verify FILE [--node-cert PEM] "
    "[--allow-unsigned-tail]\n"
    "  Checks an audit file written by kmsd (docs/OPERATIONS.md, \"Audit "
    "log\"),\n"
    "  offline: every record follows the one before (seq) and carries its\n"
    "  SHA-256 (prev); with --node-cert, every checkpoint is signed by the "
    "key\n"
    "  of that node certificate; and the file ends with a checkpoint, unless\n"
    "  --allow-unsigned-tail (a running node's file). Names the first bad "
    "line\n"
    "  and why: a changed byte, a removed or reordered record, a file cut\n"
    "  after its last checkpoint, a forged signature, another node's key.\n"
    "  Without --node-cert the signatures are not checked: anyone who can\n"
    "  write the file could rebuild the chain.\n"
    "  Exits 0 when the file verifies, 2 when it does not, 1 on a usage error\n"
    "  or a file that cannot be read.\n";

static int usage(const char *what)
{
	errmsg("audit: %s", what);
	fputs("\nrun 'kmsctl audit --help' for usage\n", stderr);
	return EXIT_LOCAL;
}

static EVP_PKEY *cert_key(const char *path)
{
	FILE *f = fopen(path, "re");
	X509 *x;
	EVP_PKEY *k;

	if (f == NULL) {
		errmsg("audit: cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL) {
		errmsg("audit: %s holds no PEM certificate", path);
		return NULL;
	}
	k = X509_get_pubkey(x);
	X509_free(x);
	if (k == NULL)
		errmsg("audit: cannot read the public key of %s", path);
	return k;
}

static int print_json(const char *path, const kms_audit_verdict *v)
{
	json_t *o = json_pack("{s:b,s:s,s:I,s:I,s:I,s:I,s:I,s:I}", "ok", v->ok,
			      "file", path, "lines", (json_int_t)v->lines,
			      "records", (json_int_t)v->records, "checkpoints",
			      (json_int_t)v->checkpoints, "checkpoints_checked",
			      (json_int_t)v->checkpoints_checked, "segments",
			      (json_int_t)v->segments, "unsigned_tail",
			      (json_int_t)v->unsigned_tail);
	int rc = 0;

	if (o == NULL)
		return -1;
	if (!v->ok &&
	    (json_object_set_new(o, "bad_line",
				 json_integer((json_int_t)v->bad_line)) != 0 ||
	     json_object_set_new(o, "why", json_string(v->why)) != 0))
		rc = -1;
	if (rc == 0 && json_dumpf(o, stdout, JSON_COMPACT) != 0)
		rc = -1;
	json_decref(o);
	if (rc == 0)
		putchar('\n');
	return rc;
}

static void print_text(const char *path, const kms_audit_verdict *v,
		       int have_cert)
{
	printf("file: %s\n", path);
	printf("lines: %lu\n", v->lines);
	printf("records: %lu\n", v->records);
	printf("checkpoints: %lu\n", v->checkpoints);
	if (have_cert)
		printf("signatures verified: %lu\n", v->checkpoints_checked);
	else
		printf("signatures verified: none (no --node-cert)\n");
	printf("segments: %lu\n", v->segments);
	printf("unsigned tail: %lu\n", v->unsigned_tail);
	if (v->ok) {
		printf("status: ok\n");
	} else {
		printf("status: bad\n");
		printf("bad line: %lu\n", v->bad_line);
		printf("why: %s\n", v->why);
	}
}

int kmsctl_audit(int argc, char **argv, int json)
{
	static const struct option opts[] = {
	    {"node-cert", required_argument, NULL, 'c'},
	    {"allow-unsigned-tail", no_argument, NULL, 'u'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *cert = NULL, *path;
	unsigned flags = 0;
	EVP_PKEY *pub = NULL;
	kms_audit_verdict v;
	kms_err err = {0};
	FILE *f;
	int id, rc;

	opterr = 0;
	optind = 0;
	while ((id = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (id) {
		case 'c':
			cert = optarg;
			break;
		case 'u':
			flags |= KMS_AUDIT_ALLOW_UNSIGNED_TAIL;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			fputs(kmsctl_audit_usage, stdout);
			return EXIT_OK;
		case ':':
			return usage("an option needs a value");
		default:
			return usage("unknown option");
		}
	}
	/* getopt skipped argv[0] ("audit") and moved the operands last. */
	if (argc - optind < 1 || strcmp(argv[optind], "verify") != 0)
		return usage("the only subcommand is 'verify FILE'");
	if (argc - optind != 2)
		return usage("verify takes one FILE");
	path = argv[optind + 1];
	if (cert != NULL && (pub = cert_key(cert)) == NULL)
		return EXIT_LOCAL;
	f = fopen(path, "re");
	if (f == NULL) {
		errmsg("audit: cannot open %s: %s", path, strerror(errno));
		EVP_PKEY_free(pub);
		return EXIT_LOCAL;
	}
	rc = kms_audit_verify(f, pub, flags, &v, &err);
	fclose(f);
	EVP_PKEY_free(pub);
	if (rc != KMS_OK) {
		errmsg("audit: %s", err.msg);
		return EXIT_LOCAL;
	}
	if (json) {
		if (print_json(path, &v) != 0) {
			errmsg("audit: cannot print the JSON answer");
			return EXIT_LOCAL;
		}
	} else {
		print_text(path, &v, pub != NULL || cert != NULL);
	}
	if (!v.ok) {
		errmsg("audit: %s line %lu: %s", path, v.bad_line, v.why);
		return EXIT_SERVER;
	}
	return EXIT_OK;
}
