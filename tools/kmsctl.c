/* kmsctl.c - the operator and service command line for kms.v1.KeyManagement,
 * kms.v1.Operator (cluster membership, administrators) and grpc.health.v1. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpc/support/log.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kms/alloc.h"
#include "kms/client.h"
#include "kms/fingerprint.h"
#include "kms/hostport.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define DEFAULT_ENDPOINT "127.0.0.1:7401"
/* Local input files (plaintext, blobs); the server caps Encrypt at 4096 bytes
 * anyway. */
#define INPUT_MAX_BYTES (1024 * 1024)
#define TIMEOUT_MAX_MS (3600 * 1000)
/* A server that keeps handing out page tokens is broken; stop following it. */
#define LIST_MAX_PAGES 100000
/* How long `cluster join` polls ClusterStatus for the new node to become a
 * voter; a slow catch-up is not a failure, so the bound stays modest. */
#define WAIT_TIMEOUT_DEFAULT_S 30
#define WAIT_TIMEOUT_MAX_S 300
#define GRANT_TTL_MAX_S 86400
/* Node ids are [node] id in kmsd.conf, 1 to UINT_MAX. */
#define NODE_ID_MAX UINT32_MAX
/* DNS names are at most 253 bytes; "[" IPv6 "]" fits too. */

/* EXIT_NO_LEADER: 'cluster status' succeeded but no member leads. */
enum exit_code {
	EXIT_OK = 0,
	EXIT_LOCAL = 1,
	EXIT_SERVER = 2,
	EXIT_NO_LEADER = 3
};

enum cmd_id {
	CMD_CREATE,
	CMD_DESCRIBE,
	CMD_LIST,
	CMD_GDK,
	CMD_ENCRYPT,
	CMD_DECRYPT,
	CMD_HEALTH,
	CMD_CLUSTER,
	CMD_ADMINS
};

/* Subcommands of the commands that have them ('cluster', 'admins'). */
enum sub_id { SUB_STATUS, SUB_JOIN, SUB_REMOVE, SUB_LIST, SUB_SET };

/* Long-only options; bit (id - OPT_BASE) marks whether a command accepts it. */
enum opt_id {
	OPT_BASE = 256,
	OPT_ENDPOINT = OPT_BASE,
	OPT_CA,
	OPT_CERT,
	OPT_KEY,
	OPT_SERVER_NAME,
	OPT_TIMEOUT,
	OPT_JSON,
	OPT_VERSION,
	OPT_DESCRIPTION,
	OPT_GRANT,
	OPT_PAGE_SIZE,
	OPT_PAGE_TOKEN,
	OPT_BYTES,
	OPT_CONTEXT,
	OPT_WITHOUT_PLAINTEXT,
	OPT_PLAINTEXT_OUT,
	OPT_BLOB_OUT,
	OPT_PLAINTEXT,
	OPT_IN,
	OPT_BLOB,
	OPT_KEY_ID,
	OPT_ID,
	OPT_RAFT,
	OPT_GRPC,
	OPT_WAIT_TIMEOUT,
	OPT_TRANSPORT_KEY,
	OPT_GRANT_TTL,
};

#define BIT(o) (1u << ((o)-OPT_BASE))
_Static_assert(OPT_GRANT_TTL - OPT_BASE < 32,
	       "an option's BIT() must fit in an unsigned");
#define GLOBAL_OPTS                                                            \
	(BIT(OPT_ENDPOINT) | BIT(OPT_CA) | BIT(OPT_CERT) | BIT(OPT_KEY) |      \
	 BIT(OPT_SERVER_NAME) | BIT(OPT_TIMEOUT) | BIT(OPT_JSON))

static const struct option long_opts[] = {
    {"endpoint", required_argument, NULL, OPT_ENDPOINT},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"server-name", required_argument, NULL, OPT_SERVER_NAME},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"description", required_argument, NULL, OPT_DESCRIPTION},
    {"grant", required_argument, NULL, OPT_GRANT},
    {"page-size", required_argument, NULL, OPT_PAGE_SIZE},
    {"page-token", required_argument, NULL, OPT_PAGE_TOKEN},
    {"bytes", required_argument, NULL, OPT_BYTES},
    {"context", required_argument, NULL, OPT_CONTEXT},
    {"without-plaintext", no_argument, NULL, OPT_WITHOUT_PLAINTEXT},
    {"plaintext-out", required_argument, NULL, OPT_PLAINTEXT_OUT},
    {"blob-out", required_argument, NULL, OPT_BLOB_OUT},
    {"plaintext", required_argument, NULL, OPT_PLAINTEXT},
    {"in", required_argument, NULL, OPT_IN},
    {"blob", required_argument, NULL, OPT_BLOB},
    {"key-id", required_argument, NULL, OPT_KEY_ID},
    {"id", required_argument, NULL, OPT_ID},
    {"raft", required_argument, NULL, OPT_RAFT},
    {"grpc", required_argument, NULL, OPT_GRPC},
    {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
    {"transport-key-sha256", required_argument, NULL, OPT_TRANSPORT_KEY},
    {"grant-ttl", required_argument, NULL, OPT_GRANT_TTL},
    {NULL, 0, NULL, 0},
};

struct subcommand {
	const char *name;
	enum sub_id id;
	unsigned opts; /* options of its command this subcommand accepts */
	const char *operands; /* what it takes after its name; NULL: nothing */
};

static const struct subcommand cluster_subs[] = {
    {"status", SUB_STATUS, 0, NULL},
    {"join", SUB_JOIN,
     BIT(OPT_ID) | BIT(OPT_RAFT) | BIT(OPT_GRPC) | BIT(OPT_WAIT_TIMEOUT) |
	 BIT(OPT_TRANSPORT_KEY) | BIT(OPT_GRANT_TTL),
     NULL},
    {"remove", SUB_REMOVE, BIT(OPT_ID), NULL},
};

static const struct subcommand admins_subs[] = {
    {"list", SUB_LIST, 0, NULL},
    {"set", SUB_SET, 0, "ID[,ID...]"},
};

#define SUBS(t) (t), sizeof(t) / sizeof((t)[0])
#define NO_SUBS NULL, 0, NULL

struct command {
	const char *name;
	enum cmd_id id;
	int needs_key_id; /* takes KEY_ID as its one positional argument */
	unsigned opts;	  /* accepted command options besides the global ones */
	const char *usage;
	/* A command with subcommands: the first operand names one of them. */
	const struct subcommand *subs;
	size_t n_subs;
	const char *sub_names; /* "a, b or c", for messages */
};

static const struct command commands[] = {
    {"create-key", CMD_CREATE, 1, BIT(OPT_DESCRIPTION) | BIT(OPT_GRANT),
     "usage: kmsctl [global options] create-key KEY_ID [--description TEXT]\n"
     "                                 [--grant PRINCIPAL=OP[,OP...]]...\n"
     "  Creates a master key inside the HSM (administrators only).\n"
     "  --grant may repeat; OP is Encrypt, Decrypt, GenerateDataKey or "
     "DescribeKey;\n"
     "  a PRINCIPAL ending in '*' matches a prefix of SPIFFE IDs.\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"describe-key", CMD_DESCRIBE, 1, 0,
     "usage: kmsctl [global options] describe-key KEY_ID\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"list-keys", CMD_LIST, 0, BIT(OPT_PAGE_SIZE) | BIT(OPT_PAGE_TOKEN),
     "usage: kmsctl [global options] list-keys [--page-size N] [--page-token "
     "T]\n"
     "  Without --page-token, follows every page and prints all keys.\n"
     "  With --page-token (\"\" for the first page), prints that one page and\n"
     "  its next_page_token (empty on the last page).\n",
     NO_SUBS},
    {"generate-data-key", CMD_GDK, 1,
     BIT(OPT_BYTES) | BIT(OPT_CONTEXT) | BIT(OPT_WITHOUT_PLAINTEXT) |
	 BIT(OPT_PLAINTEXT_OUT) | BIT(OPT_BLOB_OUT),
     "usage: kmsctl [global options] generate-data-key KEY_ID [--bytes N]\n"
     "           [--context K=V]... [--without-plaintext]\n"
     "           [--plaintext-out FILE] [--blob-out FILE]\n"
     "  Prints key_id, key_version, plaintext and ciphertext_blob (base64).\n"
     "  --plaintext-out / --blob-out write the raw bytes to FILE (mode 0600)\n"
     "  instead of printing that field.\n",
     NO_SUBS},
    {"encrypt", CMD_ENCRYPT, 1,
     BIT(OPT_PLAINTEXT) | BIT(OPT_IN) | BIT(OPT_CONTEXT) | BIT(OPT_BLOB_OUT),
     "usage: kmsctl [global options] encrypt KEY_ID (--plaintext BASE64 | --in "
     "FILE)\n"
     "           [--context K=V]... [--blob-out FILE]\n"
     "  Encrypts up to 4096 bytes (FILE holds raw bytes). Prints key_id,\n"
     "  key_version and ciphertext_blob (base64), or writes the raw blob to\n"
     "  FILE (mode 0600) with --blob-out.\n",
     NO_SUBS},
    {"decrypt", CMD_DECRYPT, 0,
     BIT(OPT_BLOB) | BIT(OPT_IN) | BIT(OPT_CONTEXT) | BIT(OPT_KEY_ID) |
	 BIT(OPT_PLAINTEXT_OUT),
     "usage: kmsctl [global options] decrypt (--blob BASE64 | --in FILE)\n"
     "           [--context K=V]... [--key-id ID] [--plaintext-out FILE]\n"
     "  Decrypts a blob (FILE holds the raw blob) made with the same context.\n"
     "  Prints key_id, key_version and plaintext (base64), or writes the raw\n"
     "  plaintext to FILE (mode 0600) with --plaintext-out.\n",
     NO_SUBS},
    {"health", CMD_HEALTH, 0, 0,
     "usage: kmsctl [global options] health\n"
     "  grpc.health.v1.Health/Check for the server as a whole. Prints status;\n"
     "  exits 0 when it is SERVING, 2 otherwise.\n",
     NO_SUBS},
    /* The subcommand picks which of these options apply (cluster_subs). */
    {"cluster", CMD_CLUSTER, 0,
     BIT(OPT_ID) | BIT(OPT_RAFT) | BIT(OPT_GRPC) | BIT(OPT_WAIT_TIMEOUT) |
	 BIT(OPT_TRANSPORT_KEY) | BIT(OPT_GRANT_TTL),
     "usage: kmsctl [global options] cluster status\n"
     "       kmsctl [global options] cluster join --id N --raft HOST:PORT\n"
     "                                   --grpc HOST:PORT --transport-key-sha256 HEX\n"
     "                                   [--grant-ttl S] [--wait-timeout S]\n"
     "       kmsctl [global options] cluster remove --id N\n"
     "  kms.v1.Operator, for operator principals.\n"
     "  status: a line 'leader: ID' (or 'leader: none'), then one line per\n"
     "    member: ID, gRPC ADDRESS, RAFT-ADDRESS, ROLE, RAFT-ROLE, TERM,\n"
     "    COMMIT, APPLIED, LAG and, when a member has one, ERROR. Exits 0,\n"
     "    or 3 when the call succeeded but the cluster reports no leader.\n"
     "  join: admits node N (Raft address, gRPC address) with a one-time grant\n"
     "    of the domain key to the transport key whose SHA-256 the joining\n"
     "    node printed ('joining: transport key sha256 HEX' in its log), valid\n"
     "    for --grant-ttl S seconds (default 600, at most 86400), and waits up\n"
     "    to --wait-timeout S seconds (default 30, at most 300) for the leader\n"
     "    to promote it, asking ClusterStatus every 0.2 s (the server answers\n"
     "    as soon as the grant is committed); prints the member and its\n"
     "    raft_role, 'voter', or 'catching-up' if the wait ran out first.\n"
     "  remove: takes node N out of the Raft configuration and the member\n"
     "    list; prints 'removed node N'.\n"
     "  N is a node id from 1 to 4294967295; HOST is a name, an IPv4\n"
     "  address or a bracketed IPv6 address; PORT is 1 to 65535.\n",
     SUBS(cluster_subs), "status, join or remove"},
    {"admins", CMD_ADMINS, 0, 0,
     "usage: kmsctl [global options] admins list\n"
     "       kmsctl [global options] admins set ID[,ID...] [ID...]\n"
     "  kms.v1.Operator, for administrators: the SPIFFE IDs that may create\n"
     "  keys and run the cluster and admins commands. The list lives in the\n"
     "  cluster's replicated state; [authz] admins in a node's configuration\n"
     "  only seeds the list of a new cluster.\n"
     "  list: prints one ID per line; with --json,\n"
     "    {\"administrators\": [ID, ...]}.\n"
     "  set: replaces the whole list with the IDs given, in that order, and\n"
     "    prints the new list the same way. An administrator left out loses\n"
     "    the rights at once, the caller included.\n"
     "  kmsctl refuses, without calling the server (exit 1), no ID, an empty\n"
     "  entry, a string that is not a SPIFFE ID with a path and an ID given\n"
     "  twice. The server refuses (exit 2, INVALID_ARGUMENT) an ID outside\n"
     "  the cluster's trust domain, a node identity (spiffe://TD/kmsd/...)\n"
     "  and a list over its size limit.\n",
     SUBS(admins_subs), "list or set"},
};

static const char global_usage[] =
    "usage: kmsctl [global options] COMMAND [command options]\n"
    "\n"
    "commands:\n"
    "  create-key KEY_ID [--description TEXT] [--grant "
    "PRINCIPAL=OP[,OP...]]...\n"
    "  describe-key KEY_ID\n"
    "  list-keys [--page-size N] [--page-token T]\n"
    "  generate-data-key KEY_ID [--bytes N] [--context K=V]... "
    "[--without-plaintext]\n"
    "                    [--plaintext-out FILE] [--blob-out FILE]\n"
    "  encrypt KEY_ID (--plaintext BASE64 | --in FILE) [--context K=V]... "
    "[--blob-out FILE]\n"
    "  decrypt (--blob BASE64 | --in FILE) [--context K=V]... [--key-id ID]\n"
    "          [--plaintext-out FILE]\n"
    "  health\n"
    "  cluster status\n"
    "  cluster join --id N --raft HOST:PORT --grpc HOST:PORT\n"
    "               --transport-key-sha256 HEX [--grant-ttl S] [--wait-timeout S]\n"
    "  cluster remove --id N\n"
    "  admins list\n"
    "  admins set ID[,ID...] [ID...]\n"
    "\n"
    "global options (also accepted after the command):\n"
    "  --endpoint HOST:PORT  server (env KMS_ENDPOINT, "
    "default " DEFAULT_ENDPOINT ")\n"
    "  --ca FILE             PEM roots the server must chain to (env KMS_CA)\n"
    "  --cert FILE           client certificate, PEM (env KMS_CERT)\n"
    "  --key FILE            client private key, PEM (env KMS_KEY)\n"
    "  --server-name NAME    expected server name in its certificate\n"
    "  --timeout MS          per-call deadline (default 10000)\n"
    "  --json                print one JSON object instead of 'field: value' "
    "lines\n"
    "  -h, --help            this text; 'kmsctl COMMAND --help' for one "
    "command\n"
    "  --version             print the version\n"
    "\n"
    "Bytes are printed as base64. Exit status: 0 success, 1 usage or local "
    "error,\n"
    "2 the server returned an error (printed as 'kmsctl: STATUS: details'),\n"
    "3 'cluster status' found no leader.\n";

struct kv {
	char *key; /* kms_strdup'd "K=V" split in place; key owns the memory */
	char *value;
};

struct cli {
	const struct command *cmd;
	kms_client_opts copts;
	int json;
	const char *key_id;
	const char *description;
	const char **grants;
	size_t n_grants;
	uint32_t page_size;
	const char *page_token;
	uint32_t bytes;
	struct kv *ctx;
	size_t n_ctx;
	int without_plaintext;
	const char *plaintext_out;
	const char *blob_out;
	char *plaintext_b64; /* points into argv: wiped once decoded */
	const char *in_file;
	const char *blob_b64;
	const char *key_id_opt;
	unsigned seen;		       /* BIT() of every option given */
	const struct subcommand *sub;  /* of a command that has them */
	uint64_t node_id;	       /* --id; 0: not given */
	const char *raft_address;      /* --raft */
	const char *grpc_address;      /* --grpc */
	uint32_t wait_timeout_s;       /* --wait-timeout */
	const char *transport_key;     /* --transport-key-sha256 */
	uint32_t grant_ttl_s;          /* --grant-ttl; 0: the server's default */
	char **admins;		       /* admins set: IDs, into admin_args */
	size_t n_admins;
	char **admin_args; /* admins set: kms_strdup'd operands, split */
	size_t n_admin_args;
};

static void cli_free(struct cli *cli)
{
	size_t i;

	for (i = 0; i < cli->n_ctx; i++)
		kms_free(cli->ctx[i].key);
	kms_free(cli->ctx);
	kms_free(cli->grants);
	for (i = 0; i < cli->n_admin_args; i++)
		kms_free(cli->admin_args[i]);
	kms_free(cli->admin_args);
	kms_free(cli->admins);
}

/* ---- diagnostics ---- */

static void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errmsg(const char *fmt, ...)
{
	va_list ap;

	fputs("kmsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kmsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nrun 'kmsctl --help' for usage\n", stderr);
	return EXIT_LOCAL;
}

static int server_error(const kms_rpc_status *st)
{
	if (st->details[0] != '\0')
		errmsg("%s: %s", kms_grpc_status_name(st->code), st->details);
	else
		errmsg("%s", kms_grpc_status_name(st->code));
	return EXIT_SERVER;
}

/* gRPC core logs handshake failures itself; the status we print says the same.
 */
static void quiet_grpc_log(gpr_log_func_args *args)
{
}

/* ---- secrets in jansson and stdio ---- */

/*
 * jansson copies every string it is given, plaintext data keys included, and
 * frees without wiping. These hooks remember each block's size so that free
 * can cleanse it.
 */
#define SEC_HDR 16
static void *sec_malloc(size_t n)
{
	unsigned char *p;

	if (n > SIZE_MAX - SEC_HDR)
		return NULL;
	p = kms_malloc(n + SEC_HDR);
	if (p == NULL)
		return NULL;
	memcpy(p, &n, sizeof(n));
	return p + SEC_HDR;
}

static void sec_free(void *ptr)
{
	unsigned char *p;
	size_t n;

	if (ptr == NULL)
		return;
	p = (unsigned char *)ptr - SEC_HDR;
	memcpy(&n, p, sizeof(n));
	kms_free_secret(p, n + SEC_HDR);
}

/* stdout's buffer, wiped at exit: it held printed plaintext. */
static char stdout_buf[1 << 16];

/* ---- bytes ---- */

/* Base64 (RFC 4648) of data as a kms_malloc'd string; the caller wipes and
 * frees it. */
static char *b64_encode(const uint8_t *data, size_t len, size_t *cap)
{
	char *out;

	if (len > (size_t)INT_MAX / 2)
		return NULL;
	*cap = 4 * ((len + 2) / 3) + 1;
	out = kms_malloc(*cap);
	if (out == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

/*
 * Strict base64 decoding: standard alphabet, padded, no whitespace but a
 * trailing newline. out->data is kms_malloc'd; the caller frees it.
 */
static int b64_decode(const char *in, const char *what, kms_buf *out)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t len = strlen(in), pad = 0;
	int n;

	out->data = NULL;
	out->len = 0;
	while (len > 0 && (in[len - 1] == '\n' || in[len - 1] == '\r'))
		len--;
	if (len > INPUT_MAX_BYTES * 2)
		return usage_error("%s is too long", what);
	if (len % 4 != 0)
		return usage_error("%s is not valid base64 (length)", what);
	if (len > 0 && in[len - 1] == '=')
		pad++;
	if (len > 1 && in[len - 2] == '=')
		pad++;
	if (strspn(in, alphabet) != len - pad)
		return usage_error("%s is not valid base64", what);
	out->data = kms_malloc(len / 4 * 3 + 1);
	if (out->data == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	n = EVP_DecodeBlock(out->data, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad) {
		kms_buf_free_secret(out);
		return usage_error("%s is not valid base64", what);
	}
	/* EVP_DecodeBlock counts the padding as zero bytes. */
	out->len = (size_t)n - pad;
	return EXIT_OK;
}

/* Reads a whole file of at most INPUT_MAX_BYTES; out->data is kms_malloc'd. */
static int read_file(const char *path, kms_buf *out)
{
	FILE *f;
	size_t cap = INPUT_MAX_BYTES + 1;
	int rc = EXIT_OK;

	out->len = 0;
	out->data = NULL;
	f = fopen(path, "rbe");
	if (f == NULL) {
		errmsg("cannot read '%s': %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	out->data = kms_malloc(cap);
	if (out->data == NULL) {
		errmsg("out of memory reading '%s'", path);
		rc = EXIT_LOCAL;
		goto out;
	}
	out->len = fread(out->data, 1, cap, f);
	if (ferror(f)) {
		errmsg("cannot read '%s': read error", path);
		rc = EXIT_LOCAL;
	} else if (out->len > INPUT_MAX_BYTES) {
		errmsg("'%s' is larger than %d bytes", path, INPUT_MAX_BYTES);
		rc = EXIT_LOCAL;
	}
	if (rc != EXIT_OK) {
		kms_cleanse(out->data, cap);
		kms_buf_free(out);
	}
out:
	fclose(f);
	return rc;
}

/* Writes data to path with mode 0600 (it may be a data key), replacing its
 * content. */
static int write_file(const char *path, const uint8_t *data, size_t len)
{
	int fd = open(
	    path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	size_t off = 0;
	int rc = EXIT_OK;

	if (fd < 0) {
		errmsg("cannot write '%s': %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	/* An existing file keeps its old mode under O_CREAT: tighten it. */
	if (fchmod(fd, 0600) != 0) {
		errmsg("cannot chmod '%s': %s", path, strerror(errno));
		rc = EXIT_LOCAL;
		goto out;
	}
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			errmsg("cannot write '%s': %s", path, strerror(errno));
			rc = EXIT_LOCAL;
			goto out;
		}
		off += (size_t)n;
	}
out:
	if (close(fd) != 0 && rc == EXIT_OK) {
		errmsg("cannot write '%s': %s", path, strerror(errno));
		rc = EXIT_LOCAL;
	}
	return rc;
}

/* ---- output ---- */

/* Adds field as base64; the temporary string is wiped (it may be a plaintext
 * key). */
static int json_set_bytes(json_t *obj, const char *field,
			  const ProtobufCBinaryData *b)
{
	size_t cap = 0;
	char *s = b64_encode(b->data, b->len, &cap);
	int rc;

	if (s == NULL)
		return -1;
	rc = json_object_set_new(obj, field, json_string(s));
	kms_free_secret(s, cap);
	return rc;
}

static void print_scalar(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		fputs(json_string_value(v), stdout);
		break;
	case JSON_INTEGER:
		printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		printf("%g", json_real_value(v));
		break;
	case JSON_TRUE:
		fputs("true", stdout);
		break;
	case JSON_FALSE:
		fputs("false", stdout);
		break;
	default:
		break;
	}
}

/*
 * 'field: value' lines in insertion order. Arrays of scalars join with ',';
 * a grant prints as 'grant: PRINCIPAL=OP,OP'; a list of objects prints one
 * block per object, separated by blank lines.
 */
static void print_human(const json_t *obj)
{
	const char *field;
	json_t *v;

	json_object_foreach((json_t *)obj, field, v)
	{
		size_t i;
		json_t *e;

		if (!json_is_array(v)) {
			printf("%s: ", field);
			print_scalar(v);
			putchar('\n');
			continue;
		}
		if (strcmp(field, "grants") == 0) {
			json_array_foreach(v, i, e)
			{
				json_t *ops = json_object_get(e, "operations");
				json_t *op;
				size_t j;

				printf("grant: %s=",
				       json_string_value(
					   json_object_get(e, "principal")));
				json_array_foreach(ops, j, op)
				{
					printf("%s%s", j ? "," : "",
					       json_string_value(op));
				}
				putchar('\n');
			}
			continue;
		}
		if (json_array_size(v) > 0 &&
		    json_is_object(json_array_get(v, 0))) {
			json_array_foreach(v, i, e)
			{
				if (i > 0)
					putchar('\n');
				print_human(e);
			}
			continue;
		}
		printf("%s: ", field);
		json_array_foreach(v, i, e)
		{
			if (i > 0)
				putchar(',');
			print_scalar(e);
		}
		putchar('\n');
	}
}

static int emit(const struct cli *cli, json_t *obj)
{
	if (cli->json) {
		if (json_dumpf(obj, stdout, JSON_COMPACT) != 0) {
			errmsg("cannot write the output");
			return EXIT_LOCAL;
		}
		putchar('\n');
	} else {
		print_human(obj);
	}
	return EXIT_OK;
}

static json_t *key_json(const Kms__V1__KeyMetadata *k)
{
	json_t *o = json_object(), *versions = json_array(),
	       *grants = json_array();
	size_t i, j;

	if (o == NULL || versions == NULL || grants == NULL)
		goto fail;
	for (i = 0; i < k->n_versions; i++)
		json_array_append_new(versions, json_integer(k->versions[i]));
	for (i = 0; k->policy != NULL && i < k->policy->n_grants; i++) {
		const Kms__V1__Grant *g = k->policy->grants[i];
		json_t *go = json_object(), *ops = json_array();

		if (go == NULL || ops == NULL) {
			json_decref(go);
			json_decref(ops);
			goto fail;
		}
		for (j = 0; j < g->n_operations; j++)
			json_array_append_new(ops,
					      json_string(g->operations[j]));
		json_object_set_new(go, "principal", json_string(g->principal));
		json_object_set_new(go, "operations", ops);
		json_array_append_new(grants, go);
	}
	json_object_set_new(o, "key_id", json_string(k->key_id));
	json_object_set_new(o, "description", json_string(k->description));
	json_object_set_new(o, "enabled", json_boolean(k->enabled));
	json_object_set_new(o, "primary_version",
			    json_integer(k->primary_version));
	json_object_set_new(o, "versions", versions);
	json_object_set_new(o, "created_at_unix",
			    json_integer(k->created_at_unix));
	json_object_set_new(o, "created_by", json_string(k->created_by));
	json_object_set_new(o, "grants", grants);
	return o;
fail:
	json_decref(o);
	json_decref(versions);
	json_decref(grants);
	return NULL;
}

/* ---- requests ---- */

/*
 * The three *EncryptionContextEntry types are distinct generated structs
 * with the same fields; build them through their descriptor. The entries
 * borrow the strings of ctx. Slot n of the array holds the entries' memory;
 * free with ctx_entries_free(ptrs, n).
 */
static void **ctx_entries(const struct kv *ctx, size_t n,
			  const ProtobufCMessageDescriptor *desc)
{
	const ProtobufCFieldDescriptor *fk =
	    protobuf_c_message_descriptor_get_field_by_name(desc, "key");
	const ProtobufCFieldDescriptor *fv =
	    protobuf_c_message_descriptor_get_field_by_name(desc, "value");
	void **ptrs;
	unsigned char *block;
	size_t i;

	if (fk == NULL || fv == NULL)
		return NULL;
	ptrs = kms_calloc(n + 1, sizeof(*ptrs));
	block = kms_calloc(n + 1, desc->sizeof_message);
	if (ptrs == NULL || block == NULL) {
		kms_free(ptrs);
		kms_free(block);
		return NULL;
	}
	for (i = 0; i < n; i++) {
		unsigned char *m = block + i * desc->sizeof_message;

		protobuf_c_message_init(desc, m);
		memcpy(m + fk->offset, &ctx[i].key, sizeof(char *));
		memcpy(m + fv->offset, &ctx[i].value, sizeof(char *));
		ptrs[i] = m;
	}
	ptrs[n] = block;
	return ptrs;
}

static void ctx_entries_free(void **ptrs, size_t n)
{
	if (ptrs == NULL)
		return;
	kms_free(ptrs[n]);
	kms_free(ptrs);
}

static int call(kms_client *c, const char *rpc, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
	char method[96];
	kms_rpc_status st;

	snprintf(method, sizeof(method), "/kms.v1.KeyManagement/%s", rpc);
	if (kms_client_call(c, method, req, desc, resp, &st) != 0)
		return server_error(&st);
	return EXIT_OK;
}

static int cmd_create(const struct cli *cli, kms_client *c)
{
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant *grants = NULL, **gptrs = NULL;
	char **copies = NULL;
	Kms__V1__CreateKeyResponse *resp = NULL;
	json_t *o = NULL;
	size_t i;
	int rc = EXIT_LOCAL;

	grants = kms_calloc(cli->n_grants + 1, sizeof(*grants));
	gptrs = kms_calloc(cli->n_grants + 1, sizeof(*gptrs));
	copies = kms_calloc(cli->n_grants + 1, sizeof(*copies));
	if (grants == NULL || gptrs == NULL || copies == NULL) {
		errmsg("out of memory");
		goto out;
	}
	for (i = 0; i < cli->n_grants; i++) {
		Kms__V1__Grant init = KMS__V1__GRANT__INIT;
		char *eq, *p, *tok, *save = NULL;
		size_t nops = 1;

		grants[i] = init;
		gptrs[i] = &grants[i];
		copies[i] = kms_strdup(cli->grants[i]);
		if (copies[i] == NULL) {
			errmsg("out of memory");
			goto out;
		}
		/* Operation names hold no '=': the last one separates. */
		eq = strrchr(copies[i], '=');
		if (eq == NULL || eq == copies[i] || eq[1] == '\0') {
			rc = usage_error(
			    "--grant '%s' is not PRINCIPAL=OP[,OP...]",
			    cli->grants[i]);
			goto out;
		}
		*eq = '\0';
		grants[i].principal = copies[i];
		for (p = eq + 1; *p != '\0'; p++)
			nops += *p == ',';
		grants[i].operations = kms_calloc(nops, sizeof(char *));
		if (grants[i].operations == NULL) {
			errmsg("out of memory");
			goto out;
		}
		for (tok = strtok_r(eq + 1, ",", &save); tok != NULL;
		     tok = strtok_r(NULL, ",", &save))
			grants[i].operations[grants[i].n_operations++] = tok;
		if (grants[i].n_operations != nops) {
			rc = usage_error("--grant '%s' has an empty operation",
					 cli->grants[i]);
			goto out;
		}
	}
	policy.n_grants = cli->n_grants;
	policy.grants = gptrs;
	req.key_id = (char *)cli->key_id;
	if (cli->description != NULL)
		req.description = (char *)cli->description;
	req.policy = &policy;

	rc = call(c, "CreateKey", &req.base,
		  &kms__v1__create_key_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		goto out;
	if (resp->key == NULL) {
		errmsg("the server's CreateKey response has no key");
		rc = EXIT_SERVER;
		goto out;
	}
	o = key_json(resp->key);
	rc = o != NULL ? emit(cli, o) : EXIT_LOCAL;
out:
	json_decref(o);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	for (i = 0; grants != NULL && i < cli->n_grants; i++)
		kms_free(grants[i].operations);
	for (i = 0; copies != NULL && i < cli->n_grants; i++)
		kms_free(copies[i]);
	kms_free(copies);
	kms_free(gptrs);
	kms_free(grants);
	return rc;
}

static int cmd_describe(const struct cli *cli, kms_client *c)
{
	Kms__V1__DescribeKeyRequest req = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	Kms__V1__DescribeKeyResponse *resp = NULL;
	json_t *o = NULL;
	int rc;

	req.key_id = (char *)cli->key_id;
	rc = call(c, "DescribeKey", &req.base,
		  &kms__v1__describe_key_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		return rc;
	if (resp->key == NULL) {
		errmsg("the server's DescribeKey response has no key");
		rc = EXIT_SERVER;
		goto out;
	}
	o = key_json(resp->key);
	rc = o != NULL ? emit(cli, o) : EXIT_LOCAL;
out:
	json_decref(o);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

static int cmd_list(const struct cli *cli, kms_client *c)
{
	Kms__V1__ListKeysRequest req = KMS__V1__LIST_KEYS_REQUEST__INIT;
	Kms__V1__ListKeysResponse *resp = NULL;
	json_t *o = json_object(), *keys = json_array();
	char *token = NULL;
	size_t pages = 0, i;
	int rc = EXIT_LOCAL;

	if (o == NULL || keys == NULL)
		goto out;
	token = kms_strdup(cli->page_token != NULL ? cli->page_token : "");
	if (token == NULL)
		goto out;
	req.page_size = cli->page_size;
	for (;;) {
		req.page_token = token;
		rc = call(c, "ListKeys", &req.base,
			  &kms__v1__list_keys_response__descriptor,
			  (ProtobufCMessage **)&resp);
		if (rc != EXIT_OK)
			goto out;
		for (i = 0; i < resp->n_keys; i++) {
			json_t *k = key_json(resp->keys[i]);

			if (k == NULL || json_array_append_new(keys, k) != 0) {
				rc = EXIT_LOCAL;
				goto out;
			}
		}
		/* One page asked for: report where the next one starts. */
		if (cli->page_token != NULL) {
			json_object_set_new(o, "keys", keys);
			keys = NULL;
			json_object_set_new(o, "next_page_token",
					    json_string(resp->next_page_token));
			break;
		}
		if (resp->next_page_token[0] == '\0')
			break;
		if (strcmp(resp->next_page_token, token) == 0 ||
		    ++pages >= LIST_MAX_PAGES) {
			errmsg("the server keeps returning page tokens; "
			       "stopped following them");
			rc = EXIT_SERVER;
			goto out;
		}
		kms_free(token);
		token = kms_strdup(resp->next_page_token);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		resp = NULL;
		if (token == NULL) {
			rc = EXIT_LOCAL;
			goto out;
		}
	}
	if (keys != NULL) {
		json_object_set_new(o, "keys", keys);
		keys = NULL;
	}
	rc = emit(cli, o);
out:
	if (rc == EXIT_LOCAL && (o == NULL || token == NULL))
		errmsg("out of memory");
	if (resp != NULL)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	kms_free(token);
	json_decref(keys);
	json_decref(o);
	return rc;
}

/* Wipes a response's plaintext before protobuf-c frees it. */
static void wipe_bytes(ProtobufCBinaryData *b)
{
	if (b->data != NULL)
		kms_cleanse(b->data, b->len);
}

static int cmd_gdk(const struct cli *cli, kms_client *c)
{
	Kms__V1__GenerateDataKeyRequest req =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyResponse *resp = NULL;
	void **entries = NULL;
	json_t *o = NULL;
	int rc = EXIT_LOCAL;

	entries = ctx_entries(
	    cli->ctx, cli->n_ctx,
	    &kms__v1__generate_data_key_request__encryption_context_entry__descriptor);
	if (entries == NULL) {
		errmsg("out of memory");
		goto out;
	}
	req.key_id = (char *)cli->key_id;
	req.number_of_bytes = cli->bytes;
	req.n_encryption_context = cli->n_ctx;
	req.encryption_context =
	    (Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry **)entries;
	req.without_plaintext = cli->without_plaintext;
	rc = call(c, "GenerateDataKey", &req.base,
		  &kms__v1__generate_data_key_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		goto out;
	if (cli->plaintext_out != NULL) {
		rc = write_file(cli->plaintext_out, resp->plaintext.data,
				resp->plaintext.len);
		if (rc != EXIT_OK)
			goto out;
	}
	if (cli->blob_out != NULL) {
		rc = write_file(cli->blob_out, resp->ciphertext_blob.data,
				resp->ciphertext_blob.len);
		if (rc != EXIT_OK)
			goto out;
	}
	rc = EXIT_LOCAL;
	o = json_object();
	if (o == NULL)
		goto out;
	json_object_set_new(o, "key_id", json_string(resp->key_id));
	json_object_set_new(o, "key_version", json_integer(resp->key_version));
	if (!cli->without_plaintext && cli->plaintext_out == NULL &&
	    json_set_bytes(o, "plaintext", &resp->plaintext) != 0)
		goto out;
	if (cli->blob_out == NULL &&
	    json_set_bytes(o, "ciphertext_blob", &resp->ciphertext_blob) != 0)
		goto out;
	rc = emit(cli, o);
out:
	json_decref(o);
	if (resp != NULL) {
		wipe_bytes(&resp->plaintext);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	ctx_entries_free(entries, cli->n_ctx);
	return rc;
}

/* The plaintext or blob input: exactly one of the base64 option and --in. */
static int load_input(const char *b64, const char *opt_name, const char *file,
		      kms_buf *out)
{
	out->data = NULL;
	out->len = 0;
	if ((b64 == NULL) == (file == NULL))
		return usage_error("give exactly one of %s and --in", opt_name);
	if (file != NULL)
		return read_file(file, out);
	return b64_decode(b64, opt_name, out);
}

static int cmd_encrypt(struct cli *cli, kms_client *c)
{
	Kms__V1__EncryptRequest req = KMS__V1__ENCRYPT_REQUEST__INIT;
	Kms__V1__EncryptResponse *resp = NULL;
	void **entries = NULL;
	kms_buf pt = {NULL, 0};
	json_t *o = NULL;
	int rc;

	rc = load_input(cli->plaintext_b64, "--plaintext", cli->in_file, &pt);
	/* The base64 plaintext sits in argv, visible in /proc: wipe it. */
	if (cli->plaintext_b64 != NULL)
		kms_cleanse(cli->plaintext_b64, strlen(cli->plaintext_b64));
	if (rc != EXIT_OK)
		return rc;
	rc = EXIT_LOCAL;
	entries = ctx_entries(
	    cli->ctx, cli->n_ctx,
	    &kms__v1__encrypt_request__encryption_context_entry__descriptor);
	if (entries == NULL) {
		errmsg("out of memory");
		goto out;
	}
	req.key_id = (char *)cli->key_id;
	req.plaintext.data = pt.data;
	req.plaintext.len = pt.len;
	req.n_encryption_context = cli->n_ctx;
	req.encryption_context =
	    (Kms__V1__EncryptRequest__EncryptionContextEntry **)entries;
	rc = call(c, "Encrypt", &req.base,
		  &kms__v1__encrypt_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		goto out;
	if (cli->blob_out != NULL) {
		rc = write_file(cli->blob_out, resp->ciphertext_blob.data,
				resp->ciphertext_blob.len);
		if (rc != EXIT_OK)
			goto out;
	}
	rc = EXIT_LOCAL;
	o = json_object();
	if (o == NULL)
		goto out;
	json_object_set_new(o, "key_id", json_string(resp->key_id));
	json_object_set_new(o, "key_version", json_integer(resp->key_version));
	if (cli->blob_out == NULL &&
	    json_set_bytes(o, "ciphertext_blob", &resp->ciphertext_blob) != 0)
		goto out;
	rc = emit(cli, o);
out:
	json_decref(o);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	ctx_entries_free(entries, cli->n_ctx);
	kms_buf_free_secret(&pt);
	return rc;
}

static int cmd_decrypt(const struct cli *cli, kms_client *c)
{
	Kms__V1__DecryptRequest req = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptResponse *resp = NULL;
	void **entries = NULL;
	kms_buf blob = {NULL, 0};
	json_t *o = NULL;
	int rc;

	rc = load_input(cli->blob_b64, "--blob", cli->in_file, &blob);
	if (rc != EXIT_OK)
		return rc;
	rc = EXIT_LOCAL;
	entries = ctx_entries(
	    cli->ctx, cli->n_ctx,
	    &kms__v1__decrypt_request__encryption_context_entry__descriptor);
	if (entries == NULL) {
		errmsg("out of memory");
		goto out;
	}
	req.ciphertext_blob.data = blob.data;
	req.ciphertext_blob.len = blob.len;
	req.n_encryption_context = cli->n_ctx;
	req.encryption_context =
	    (Kms__V1__DecryptRequest__EncryptionContextEntry **)entries;
	if (cli->key_id_opt != NULL)
		req.key_id = (char *)cli->key_id_opt;
	rc = call(c, "Decrypt", &req.base,
		  &kms__v1__decrypt_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		goto out;
	if (cli->plaintext_out != NULL) {
		rc = write_file(cli->plaintext_out, resp->plaintext.data,
				resp->plaintext.len);
		if (rc != EXIT_OK)
			goto out;
	}
	rc = EXIT_LOCAL;
	o = json_object();
	if (o == NULL)
		goto out;
	json_object_set_new(o, "key_id", json_string(resp->key_id));
	json_object_set_new(o, "key_version", json_integer(resp->key_version));
	if (cli->plaintext_out == NULL &&
	    json_set_bytes(o, "plaintext", &resp->plaintext) != 0)
		goto out;
	rc = emit(cli, o);
out:
	json_decref(o);
	if (resp != NULL) {
		wipe_bytes(&resp->plaintext);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	ctx_entries_free(entries, cli->n_ctx);
	kms_buf_free(&blob);
	return rc;
}

static int cmd_health(const struct cli *cli, kms_client *c)
{
	Grpc__Health__V1__HealthCheckRequest req =
	    GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	Grpc__Health__V1__HealthCheckResponse *resp = NULL;
	const ProtobufCEnumValue *ev;
	kms_rpc_status st;
	json_t *o = NULL;
	char unknown[32];
	const char *name;
	int rc = EXIT_LOCAL;

	if (kms_client_call(
		c, "/grpc.health.v1.Health/Check", &req.base,
		&grpc__health__v1__health_check_response__descriptor,
		(ProtobufCMessage **)&resp, &st) != 0)
		return server_error(&st);
	ev = protobuf_c_enum_descriptor_get_value(
	    &grpc__health__v1__health_check_response__serving_status__descriptor,
	    (int)resp->status);
	if (ev != NULL) {
		name = ev->name;
	} else {
		snprintf(unknown, sizeof(unknown), "%d", (int)resp->status);
		name = unknown;
	}
	o = json_object();
	if (o == NULL ||
	    json_object_set_new(o, "status", json_string(name)) != 0)
		goto out;
	rc = emit(cli, o);
	if (rc == EXIT_OK &&
	    resp->status !=
		GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING) {
		errmsg("health: %s", name);
		rc = EXIT_SERVER;
	}
out:
	json_decref(o);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/* ---- cluster (kms.v1.Operator) ---- */

static int operator_call(kms_client *c, const char *rpc,
			 const ProtobufCMessage *req,
			 const ProtobufCMessageDescriptor *desc,
			 ProtobufCMessage **resp, int timeout_ms)
{
	char method[96];
	kms_rpc_status st;

	snprintf(method, sizeof(method), "/kms.v1.Operator/%s", rpc);
	if (kms_client_call_timeout(c, method, req, desc, resp, timeout_ms,
				    &st) != 0)
		return server_error(&st);
	return EXIT_OK;
}

/*
 * jansson integers are signed 64-bit. Ids, terms and indexes never come near
 * 2^63; should a server send more, the exact value is kept as a decimal
 * string rather than wrapped to a negative number.
 */
_Static_assert(sizeof(json_int_t) >= sizeof(int64_t),
	       "json_int_t holds every int64_t");
static json_t *json_u64(uint64_t v)
{
	char s[24];

	if (v <= (uint64_t)INT64_MAX)
		return json_integer((json_int_t)v);
	snprintf(s, sizeof(s), "%" PRIu64, v);
	return json_string(s);
}

/* Sets every field; 0 when all of them were set, -1 when memory ran out. */
static int json_set_fields(json_t *o, const char *const *names,
			   json_t *const *values, size_t n)
{
	size_t i;
	int rc = 0;

	/* json_object_set_new takes (and drops on failure) each reference. */
	for (i = 0; i < n; i++)
		if (values[i] == NULL ||
		    json_object_set_new(o, names[i], values[i]) != 0)
			rc = -1;
	return rc;
}

static json_t *member_status_json(const Kms__V1__MemberStatus *m)
{
	static const char *const names[] = {
	    "id",   "raft_address", "grpc_address",  "role", "raft_role",
	    "term", "commit_index", "applied_index", "lag",  "error"};
	json_t *values[sizeof(names) / sizeof(names[0])];
	json_t *o = json_object();

	values[0] = json_u64(m->id);
	values[1] = json_string(m->raft_address);
	values[2] = json_string(m->grpc_address);
	values[3] = json_string(m->role);
	values[4] = json_string(m->raft_role);
	values[5] = json_u64(m->term);
	values[6] = json_u64(m->commit_index);
	values[7] = json_u64(m->applied_index);
	values[8] = json_u64(m->lag);
	values[9] = json_string(m->error);
	if (o == NULL) {
		size_t i;

		for (i = 0; i < sizeof(values) / sizeof(values[0]); i++)
			json_decref(values[i]);
		return NULL;
	}
	if (json_set_fields(o, names, values,
			    sizeof(values) / sizeof(values[0])) != 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *member_json(const Kms__V1__Member *m)
{
	static const char *const names[] = {"id", "raft_address",
					    "grpc_address"};
	json_t *values[3];
	json_t *o = json_object();

	values[0] = json_u64(m->id);
	values[1] = json_string(m->raft_address);
	values[2] = json_string(m->grpc_address);
	if (o == NULL) {
		json_decref(values[0]);
		json_decref(values[1]);
		json_decref(values[2]);
		return NULL;
	}
	if (json_set_fields(o, names, values, 3) != 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* ---- cluster status table ---- */

enum status_col {
	COL_ID,
	COL_ADDRESS,
	COL_RAFT_ADDRESS,
	COL_ROLE,
	COL_RAFT_ROLE,
	COL_TERM,
	COL_COMMIT,
	COL_APPLIED,
	COL_LAG,
	COL_ERROR,
	NCOLS
};

static const char *const col_names[NCOLS] = {
    "ID",   "ADDRESS", "RAFT-ADDRESS", "ROLE", "RAFT-ROLE",
    "TERM", "COMMIT",  "APPLIED",      "LAG",  "ERROR"};

/* One member's cells; the strings point into the response or into num. */
struct status_row {
	const char *cell[NCOLS];
	char num[5][24]; /* id, term, commit, applied, lag */
};

static const char *cell_str(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : "-";
}

static void fill_row(struct status_row *r, const Kms__V1__MemberStatus *m)
{
	/* A member the leader could not ask has no Raft figures of its own. */
	int unknown = strcmp(m->role, "unreachable") == 0 ||
		      strcmp(m->role, "unavailable") == 0;
	const uint64_t nums[5] = {m->id, m->term, m->commit_index,
				  m->applied_index, m->lag};
	static const enum status_col num_cols[5] = {
	    COL_ID, COL_TERM, COL_COMMIT, COL_APPLIED, COL_LAG};
	size_t i;

	for (i = 0; i < 5; i++) {
		snprintf(r->num[i], sizeof(r->num[i]), "%" PRIu64, nums[i]);
		r->cell[num_cols[i]] = i > 0 && unknown ? "-" : r->num[i];
	}
	r->cell[COL_ADDRESS] = cell_str(m->grpc_address);
	r->cell[COL_RAFT_ADDRESS] = cell_str(m->raft_address);
	r->cell[COL_ROLE] = cell_str(m->role);
	r->cell[COL_RAFT_ROLE] = cell_str(m->raft_role);
	r->cell[COL_ERROR] = cell_str(m->error);
}

/*
 * Server strings go to a terminal: control characters (an escape sequence,
 * a newline in an error message) would break a one-line-per-item layout,
 * so they print as '?'. Returns the number of characters printed.
 */
static size_t put_printable(const char *s)
{
	size_t n = 0;

	for (; *s != '\0'; s++, n++)
		putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
	return n;
}

static void put_cell(const char *s, size_t width, int last)
{
	size_t n = put_printable(s);

	if (last) {
		putchar('\n');
		return;
	}
	for (; n < width + 2; n++)
		putchar(' ');
}

static int print_status_table(const Kms__V1__ClusterStatusResponse *resp)
{
	struct status_row *rows = NULL;
	size_t width[NCOLS], i, j, ncols = COL_ERROR;

	if (resp->leader_id != 0)
		printf("leader: %" PRIu64 "\n", resp->leader_id);
	else
		puts("leader: none");
	rows = kms_calloc(resp->n_members + 1, sizeof(*rows));
	if (rows == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	for (j = 0; j < NCOLS; j++)
		width[j] = strlen(col_names[j]);
	for (i = 0; i < resp->n_members; i++) {
		fill_row(&rows[i], resp->members[i]);
		/* The ERROR column appears only when some member has one. */
		if (resp->members[i]->error[0] != '\0')
			ncols = NCOLS;
		for (j = 0; j < NCOLS; j++) {
			size_t len = strlen(rows[i].cell[j]);

			if (len > width[j])
				width[j] = len;
		}
	}
	for (j = 0; j < ncols; j++)
		put_cell(col_names[j], width[j], j + 1 == ncols);
	for (i = 0; i < resp->n_members; i++)
		for (j = 0; j < ncols; j++)
			put_cell(rows[i].cell[j], width[j], j + 1 == ncols);
	kms_free(rows);
	return EXIT_OK;
}

static int cluster_status(const struct cli *cli, kms_client *c)
{
	Kms__V1__ClusterStatusRequest req =
	    KMS__V1__CLUSTER_STATUS_REQUEST__INIT;
	Kms__V1__ClusterStatusResponse *resp = NULL;
	json_t *o = NULL, *members = NULL;
	size_t i;
	int rc, set;

	rc =
	    operator_call(c, "ClusterStatus", &req.base,
			  &kms__v1__cluster_status_response__descriptor,
			  (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
	if (rc != EXIT_OK)
		return rc;
	if (!cli->json) {
		rc = print_status_table(resp);
		goto out;
	}
	rc = EXIT_LOCAL;
	o = json_object();
	members = json_array();
	if (o == NULL || members == NULL)
		goto nomem;
	for (i = 0; i < resp->n_members; i++) {
		json_t *m = member_status_json(resp->members[i]);

		if (m == NULL || json_array_append_new(members, m) != 0)
			goto nomem;
	}
	if (json_object_set_new(o, "leader_id", json_u64(resp->leader_id)) != 0)
		goto nomem;
	/* The reference passes to o whether or not the set succeeds. */
	set = json_object_set_new(o, "members", members);
	members = NULL;
	if (set != 0)
		goto nomem;
	rc = emit(cli, o);
	goto out;
nomem:
	errmsg("out of memory");
out:
	/* Scripts wait for a leader by polling until the status is 0. */
	if (rc == EXIT_OK && resp->leader_id == 0) {
		errmsg("the cluster reports no leader");
		rc = EXIT_NO_LEADER;
	}
	json_decref(members);
	json_decref(o);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/*
 * The member's Raft role as ClusterStatus through the same node reports it,
 * polled until it is "voter" or wait_s seconds have passed: the server
 * answers AddMember once the grant is committed, and never waits itself.
 * Returns the last role seen, into out.
 */
static void wait_for_voter(kms_client *c, uint64_t id, uint32_t wait_s, char *out, size_t cap)
{
	Kms__V1__ClusterStatusRequest req = KMS__V1__CLUSTER_STATUS_REQUEST__INIT;
	struct timespec pause = {0, 200 * 1000 * 1000};

	for (uint32_t t = 0; t < wait_s * 5 && strcmp(out, "voter") != 0; t++) {
		Kms__V1__ClusterStatusResponse *s = NULL;
		kms_rpc_status st;

		nanosleep(&pause, NULL);
		if (kms_client_call(c, "/kms.v1.Operator/ClusterStatus", &req.base,
				    &kms__v1__cluster_status_response__descriptor,
				    (ProtobufCMessage **)&s, &st) != 0)
			continue;
		for (size_t i = 0; i < s->n_members; i++)
			if (s->members[i]->id == id)
				snprintf(out, cap, "%s", s->members[i]->raft_role);
		protobuf_c_message_free_unpacked(&s->base, NULL);
	}
}

static int cluster_join(const struct cli *cli, kms_client *c)
{
	Kms__V1__AddMemberRequest req = KMS__V1__ADD_MEMBER_REQUEST__INIT;
	Kms__V1__Member member = KMS__V1__MEMBER__INIT;
	Kms__V1__AddMemberResponse *resp = NULL;
	const Kms__V1__Member *got;
	json_t *o = NULL, *m = NULL;
	char role[32];
	int rc;

	member.id = cli->node_id;
	member.raft_address = (char *)cli->raft_address;
	member.grpc_address = (char *)cli->grpc_address;
	req.member = &member;
	req.transport_key_sha256 = (char *)cli->transport_key;
	req.grant_ttl_seconds = cli->grant_ttl_s;
	rc = operator_call(c, "AddMember", &req.base,
			   &kms__v1__add_member_response__descriptor,
			   (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
	if (rc != EXIT_OK)
		return rc;
	snprintf(role, sizeof(role), "%s", resp->raft_role);
	wait_for_voter(c, cli->node_id, cli->wait_timeout_s, role, sizeof(role));
	if (strcmp(role, "voter") != 0)
		snprintf(role, sizeof(role), "catching-up");
	/* The node is in the cluster either way; say what was asked for. */
	got = resp->member != NULL ? resp->member : &member;
	rc = EXIT_LOCAL;
	o = json_object();
	if (o == NULL)
		goto nomem;
	if (cli->json) {
		/* The response as it is: {"member": {...}, "raft_role": R}. */
		m = member_json(got);
		if (m == NULL || json_object_set_new(o, "member", m) != 0)
			goto nomem;
	} else {
		json_t *v[3] = {json_u64(got->id),
				json_string(got->raft_address),
				json_string(got->grpc_address)};
		static const char *const names[3] = {"id", "raft_address",
						     "grpc_address"};

		if (json_set_fields(o, names, v, 3) != 0)
			goto nomem;
	}
	if (json_object_set_new(o, "raft_role", json_string(role)) !=
	    0)
		goto nomem;
	rc = emit(cli, o);
	goto out;
nomem:
	errmsg("out of memory");
out:
	json_decref(o);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

static int cluster_remove(const struct cli *cli, kms_client *c)
{
	Kms__V1__RemoveMemberRequest req = KMS__V1__REMOVE_MEMBER_REQUEST__INIT;
	Kms__V1__RemoveMemberResponse *resp = NULL;
	json_t *o = NULL;
	int rc;

	req.id = cli->node_id;
	rc =
	    operator_call(c, "RemoveMember", &req.base,
			  &kms__v1__remove_member_response__descriptor,
			  (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
	if (rc != EXIT_OK)
		return rc;
	if (!cli->json) {
		printf("removed node %" PRIu64 "\n", cli->node_id);
		goto out;
	}
	o = json_object();
	if (o == NULL ||
	    json_object_set_new(o, "removed_id", json_u64(cli->node_id)) != 0) {
		errmsg("out of memory");
		rc = EXIT_LOCAL;
		goto out;
	}
	rc = emit(cli, o);
out:
	json_decref(o);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

static int cmd_cluster(const struct cli *cli, kms_client *c)
{
	switch (cli->sub->id) {
	case SUB_STATUS:
		return cluster_status(cli, c);
	case SUB_JOIN:
		return cluster_join(cli, c);
	case SUB_REMOVE:
		return cluster_remove(cli, c);
	default: /* another command's subcommand: find_sub never gives it */
		return EXIT_LOCAL;
	}
}

/* ---- admins (kms.v1.Operator) ---- */

/* One ID per line, or {"administrators": [...]} with --json. */
static int print_admins(const struct cli *cli, char *const *ids, size_t n)
{
	json_t *o = NULL, *list = NULL;
	size_t i;
	int rc = EXIT_LOCAL;

	if (!cli->json) {
		for (i = 0; i < n; i++) {
			put_printable(ids[i]);
			putchar('\n');
		}
		return EXIT_OK;
	}
	o = json_object();
	list = json_array();
	if (o == NULL || list == NULL)
		goto fail;
	/* json_string is NULL for a string that is not UTF-8. */
	for (i = 0; i < n; i++)
		if (json_array_append_new(list, json_string(ids[i])) != 0)
			goto fail;
	rc = json_object_set_new(o, "administrators", list);
	list = NULL;
	if (rc != 0)
		goto fail;
	rc = emit(cli, o);
	goto out;
fail:
	errmsg("cannot build the JSON output");
	rc = EXIT_LOCAL;
out:
	json_decref(list);
	json_decref(o);
	return rc;
}

/*
 * ListAdministrators and SetAdministrators answer with the same message
 * shape (repeated string administrators = 1), printed the same way.
 */
static int cmd_admins(const struct cli *cli, kms_client *c)
{
	Kms__V1__ListAdministratorsRequest list =
	    KMS__V1__LIST_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__SetAdministratorsRequest set =
	    KMS__V1__SET_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__ListAdministratorsResponse *listed = NULL;
	Kms__V1__SetAdministratorsResponse *done = NULL;
	int rc;

	if (cli->sub->id == SUB_LIST) {
		rc = operator_call(
		    c, "ListAdministrators", &list.base,
		    &kms__v1__list_administrators_response__descriptor,
		    (ProtobufCMessage **)&listed, kms_client_timeout_ms(c));
		if (rc != EXIT_OK)
			return rc;
		rc = print_admins(cli, listed->administrators,
				  listed->n_administrators);
		protobuf_c_message_free_unpacked(&listed->base, NULL);
		return rc;
	}
	set.administrators = cli->admins;
	set.n_administrators = cli->n_admins;
	rc =
	    operator_call(c, "SetAdministrators", &set.base,
			  &kms__v1__set_administrators_response__descriptor,
			  (ProtobufCMessage **)&done, kms_client_timeout_ms(c));
	if (rc != EXIT_OK)
		return rc;
	rc = print_admins(cli, done->administrators, done->n_administrators);
	protobuf_c_message_free_unpacked(&done->base, NULL);
	return rc;
}

/* ---- arguments ---- */

static int parse_u32(const char *s, const char *opt, uint32_t min, uint32_t max,
		     uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 ||
	    v < min || v > max)
		return usage_error(
		    "%s wants a whole number from %u to %u, not '%s'", opt, min,
		    max, s);
	*out = (uint32_t)v;
	return EXIT_OK;
}

/* A node id: digits only, 1 to NODE_ID_MAX. */
static int parse_node_id(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : 0;
	if (v == 0 || *end != '\0' || errno != 0 || v > NODE_ID_MAX)
		return usage_error(
		    "--id wants a node id from 1 to %u, not '%s'",
		    (unsigned)NODE_ID_MAX, s);
	*out = v;
	return EXIT_OK;
}

static int parse_address(const char *s, const char *opt, const char **out)
{
	kms_err err = {0};

	if (kms_hostport_check(s, opt, &err) != KMS_OK)
		return usage_error("%s (HOST:PORT: a name, an IPv4 address or [IPv6], and a "
				   "port from 1 to 65535)",
				   err.msg);
	*out = s;
	return EXIT_OK;
}

static int add_context(struct cli *cli, const char *arg)
{
	char *copy, *eq;
	size_t i;

	eq = strchr(arg, '=');
	if (eq == NULL || eq == arg)
		return usage_error("--context '%s' is not K=V", arg);
	copy = kms_strdup(arg);
	if (copy == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	eq = copy + (eq - arg);
	*eq = '\0';
	for (i = 0; i < cli->n_ctx; i++) {
		if (strcmp(cli->ctx[i].key, copy) == 0) {
			kms_free(copy);
			return usage_error("--context key '%s' given twice",
					   cli->ctx[i].key);
		}
	}
	cli->ctx[cli->n_ctx].key = copy;
	cli->ctx[cli->n_ctx].value = eq + 1;
	cli->n_ctx++;
	return EXIT_OK;
}

/*
 * What kmsctl checks of an ID of 'admins set' before any call: the
 * command line alone decides it. An empty entry, a string that is not a
 * SPIFFE ID with a path (the one parser the server uses too) or an ID
 * given twice is a typing mistake. What depends on the cluster (its trust
 * domain, its rules on node identities and the list's size) the server
 * decides.
 */
static int check_admin_id(const struct cli *cli, const char *id,
			  const char *arg)
{
	kms_err err = {0};
	size_t i;

	if (id[0] == '\0')
		return usage_error("admins set: an empty ID (in '%s')", arg);
	if (kms_spiffe_parse_str(id, 1, NULL, &err) != KMS_OK)
		return usage_error("admins set: %s", err.msg);
	for (i = 0; i < cli->n_admins; i++)
		if (strcmp(cli->admins[i], id) == 0)
			return usage_error("admins set: '%s' is given twice",
					   id);
	return EXIT_OK;
}

/*
 * The IDs of 'admins set': every operand, split at its commas (a SPIFFE ID
 * holds none: SPIFFE ID standard, section 2.2). The copies and the list
 * of pointers into them belong to cli (cli_free).
 */
static int parse_admin_ids(struct cli *cli, int n, char **args)
{
	size_t cap = 0;
	char *p;
	int a, rc;

	for (a = 0; a < n; a++)
		for (cap++, p = args[a]; *p != '\0'; p++)
			cap += *p == ',';
	cli->admins = kms_calloc(cap + 1, sizeof(*cli->admins));
	cli->admin_args = kms_calloc((size_t)n + 1, sizeof(*cli->admin_args));
	if (cli->admins == NULL || cli->admin_args == NULL)
		goto nomem;
	for (a = 0; a < n; a++) {
		char *entry, *next;

		p = kms_strdup(args[a]);
		if (p == NULL)
			goto nomem;
		cli->admin_args[cli->n_admin_args++] = p;
		for (entry = p; entry != NULL; entry = next) {
			next = strchr(entry, ',');
			if (next != NULL)
				*next++ = '\0';
			rc = check_admin_id(cli, entry, args[a]);
			if (rc != EXIT_OK)
				return rc;
			cli->admins[cli->n_admins++] = entry;
		}
	}
	return EXIT_OK;
nomem:
	errmsg("out of memory");
	return EXIT_LOCAL;
}

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static const char *opt_name(int id)
{
	size_t i;

	for (i = 0; long_opts[i].name != NULL; i++)
		if (long_opts[i].val == id)
			return long_opts[i].name;
	return "?";
}

static const struct subcommand *find_sub(const struct command *cmd,
					 const char *name)
{
	size_t i;

	for (i = 0; i < cmd->n_subs; i++)
		if (strcmp(cmd->subs[i].name, name) == 0)
			return &cmd->subs[i];
	return NULL;
}

/*
 * A command with subcommands takes the options of all of them while getopt
 * runs, since the subcommand may come after them; once it is known, refuse
 * the ones it does not take and require the ones it needs.
 */
static int check_sub_args(struct cli *cli, int nargs, char **args)
{
	const char *cmd = cli->cmd->name, *sub;
	unsigned extra;
	int bit;

	if (optind >= nargs)
		return usage_error("%s needs a subcommand: %s", cmd,
				   cli->cmd->sub_names);
	cli->sub = find_sub(cli->cmd, args[optind]);
	if (cli->sub == NULL)
		return usage_error("unknown %s subcommand '%s' (%s)", cmd,
				   args[optind], cli->cmd->sub_names);
	optind++;
	sub = cli->sub->name;
	extra = cli->seen & ~(GLOBAL_OPTS | cli->sub->opts);
	for (bit = 0; extra != 0; bit++)
		if (extra & (1u << bit))
			return usage_error("--%s does not apply to %s %s",
					   opt_name(OPT_BASE + bit), cmd, sub);
	if ((cli->sub->opts & BIT(OPT_ID)) && cli->node_id == 0)
		return usage_error("%s %s needs --id N", cmd, sub);
	if ((cli->sub->opts & BIT(OPT_RAFT)) && cli->raft_address == NULL)
		return usage_error("%s %s needs --raft HOST:PORT", cmd, sub);
	if ((cli->sub->opts & BIT(OPT_GRPC)) && cli->grpc_address == NULL)
		return usage_error("%s %s needs --grpc HOST:PORT", cmd, sub);
	if ((cli->sub->opts & BIT(OPT_TRANSPORT_KEY)) &&
	    cli->transport_key == NULL)
		return usage_error("%s %s needs --transport-key-sha256 HEX "
				   "(the joining node prints it)",
				   cmd, sub);
	if (cli->sub->operands != NULL && optind >= nargs)
		return usage_error("%s %s needs %s", cmd, sub,
				   cli->sub->operands);
	return EXIT_OK;
}

/*
 * Applies one option. *done is set when the option answered by itself
 * (--help, --version); the exit code is then in the return value.
 */
static int apply_opt(struct cli *cli, int id, char *arg, int *done)
{
	uint32_t timeout = 0;

	if (cli->cmd != NULL && id >= OPT_BASE &&
	    !(BIT(id) & (GLOBAL_OPTS | cli->cmd->opts)))
		return usage_error("--%s does not apply to %s", opt_name(id),
				   cli->cmd->name);
	if (cli->cmd == NULL && id >= OPT_BASE && !(BIT(id) & GLOBAL_OPTS) &&
	    id != OPT_VERSION)
		return usage_error("--%s must follow a command", opt_name(id));
	if (id >= OPT_BASE)
		cli->seen |= BIT(id);
	switch (id) {
	case 'h':
		*done = 1;
		fputs(cli->cmd != NULL ? cli->cmd->usage : global_usage,
		      stdout);
		return EXIT_OK;
	case OPT_VERSION:
		*done = 1;
		printf("kmsctl %s\n", PACKAGE_VERSION);
		return EXIT_OK;
	case OPT_ENDPOINT:
		cli->copts.target = arg;
		return EXIT_OK;
	case OPT_CA:
		cli->copts.ca_file = arg;
		return EXIT_OK;
	case OPT_CERT:
		cli->copts.cert_file = arg;
		return EXIT_OK;
	case OPT_KEY:
		cli->copts.key_file = arg;
		return EXIT_OK;
	case OPT_SERVER_NAME:
		cli->copts.server_name = arg;
		return EXIT_OK;
	case OPT_TIMEOUT:
		if (parse_u32(arg, "--timeout", 1, TIMEOUT_MAX_MS, &timeout) !=
		    EXIT_OK)
			return EXIT_LOCAL;
		cli->copts.timeout_ms = (int)timeout;
		return EXIT_OK;
	case OPT_JSON:
		cli->json = 1;
		return EXIT_OK;
	case OPT_DESCRIPTION:
		cli->description = arg;
		return EXIT_OK;
	case OPT_GRANT:
		cli->grants[cli->n_grants++] = arg;
		return EXIT_OK;
	case OPT_PAGE_SIZE:
		return parse_u32(arg, "--page-size", 1, 1000, &cli->page_size);
	case OPT_PAGE_TOKEN:
		cli->page_token = arg;
		return EXIT_OK;
	case OPT_BYTES:
		return parse_u32(arg, "--bytes", 1, 1024, &cli->bytes);
	case OPT_CONTEXT:
		return add_context(cli, arg);
	case OPT_WITHOUT_PLAINTEXT:
		cli->without_plaintext = 1;
		return EXIT_OK;
	case OPT_PLAINTEXT_OUT:
		cli->plaintext_out = arg;
		return EXIT_OK;
	case OPT_BLOB_OUT:
		cli->blob_out = arg;
		return EXIT_OK;
	case OPT_PLAINTEXT:
		cli->plaintext_b64 = arg;
		return EXIT_OK;
	case OPT_IN:
		cli->in_file = arg;
		return EXIT_OK;
	case OPT_BLOB:
		cli->blob_b64 = arg;
		return EXIT_OK;
	case OPT_KEY_ID:
		cli->key_id_opt = arg;
		return EXIT_OK;
	case OPT_ID:
		return parse_node_id(arg, &cli->node_id);
	case OPT_RAFT:
		return parse_address(arg, "--raft", &cli->raft_address);
	case OPT_GRPC:
		return parse_address(arg, "--grpc", &cli->grpc_address);
	case OPT_WAIT_TIMEOUT:
		return parse_u32(arg, "--wait-timeout", 1, WAIT_TIMEOUT_MAX_S,
				 &cli->wait_timeout_s);
	case OPT_TRANSPORT_KEY: {
		uint8_t fp[KMS_SHA256_LEN];
		kms_err err = {0};

		if (kms_hex_decode(arg, fp, sizeof(fp), "--transport-key-sha256", &err) != KMS_OK)
			return usage_error("%s", err.msg);
		cli->transport_key = arg;
		return EXIT_OK;
	}
	case OPT_GRANT_TTL:
		return parse_u32(arg, "--grant-ttl", 1, GRANT_TTL_MAX_S, &cli->grant_ttl_s);
	default:
		return usage_error("unknown option");
	}
}

/* Runs getopt over argv; argv[0] is the program or the command name. */
static int parse_opts(struct cli *cli, int argc, char **argv,
		      int stop_at_command, int *done)
{
	int id;

	opterr = 0;
	optind = 0; /* glibc: start a fresh scan */
	while ((id = getopt_long(argc, argv, stop_at_command ? "+:h" : ":h",
				 long_opts, NULL)) != -1) {
		int rc;

		if (id == '?')
			return usage_error("unknown option '%s'",
					   argv[optind - 1]);
		if (id == ':')
			return usage_error("option '%s' needs a value",
					   argv[optind - 1]);
		rc = apply_opt(cli, id, optarg, done);
		if (rc != EXIT_OK || *done)
			return rc;
	}
	return EXIT_OK;
}

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != '\0' ? v : fallback;
}

static int run(struct cli *cli, int argc, char **argv)
{
	int done = 0, rc, nargs;
	char **args;
	kms_client *c = NULL;
	kms_err err;

	cli->copts.target = env_or("KMS_ENDPOINT", DEFAULT_ENDPOINT);
	cli->copts.ca_file = env_or("KMS_CA", NULL);
	cli->copts.cert_file = env_or("KMS_CERT", NULL);
	cli->copts.key_file = env_or("KMS_KEY", NULL);
	cli->grants = kms_calloc((size_t)argc + 1, sizeof(*cli->grants));
	cli->ctx = kms_calloc((size_t)argc + 1, sizeof(*cli->ctx));
	if (cli->grants == NULL || cli->ctx == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}

	rc = parse_opts(cli, argc, argv, 1, &done);
	if (rc != EXIT_OK || done)
		return rc;
	if (optind >= argc)
		return usage_error("no command given");
	cli->cmd = find_command(argv[optind]);
	if (cli->cmd == NULL)
		return usage_error("unknown command '%s'", argv[optind]);

	/* The command's own options; getopt moves its operands to the end. */
	args = argv + optind;
	nargs = argc - optind;
	rc = parse_opts(cli, nargs, args, 0, &done);
	if (rc != EXIT_OK || done)
		return rc;
	if (cli->cmd->needs_key_id) {
		if (optind >= nargs)
			return usage_error("%s needs a KEY_ID", cli->cmd->name);
		cli->key_id = args[optind++];
	}
	if (cli->cmd->subs != NULL) {
		rc = check_sub_args(cli, nargs, args);
		if (rc != EXIT_OK)
			return rc;
	}
	if (cli->sub != NULL && cli->sub->id == SUB_SET) {
		rc = parse_admin_ids(cli, nargs - optind, args + optind);
		if (rc != EXIT_OK)
			return rc;
		optind = nargs;
	}
	if (optind < nargs)
		return usage_error("unexpected argument '%s'", args[optind]);
	if (cli->without_plaintext && cli->plaintext_out != NULL)
		return usage_error("--plaintext-out and --without-plaintext "
				   "exclude each other");

	if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
		gpr_set_log_function(quiet_grpc_log);
	if (kms_client_open(&cli->copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	switch (cli->cmd->id) {
	case CMD_CREATE:
		rc = cmd_create(cli, c);
		break;
	case CMD_DESCRIBE:
		rc = cmd_describe(cli, c);
		break;
	case CMD_LIST:
		rc = cmd_list(cli, c);
		break;
	case CMD_GDK:
		rc = cmd_gdk(cli, c);
		break;
	case CMD_ENCRYPT:
		rc = cmd_encrypt(cli, c);
		break;
	case CMD_DECRYPT:
		rc = cmd_decrypt(cli, c);
		break;
	case CMD_HEALTH:
		rc = cmd_health(cli, c);
		break;
	case CMD_CLUSTER:
		rc = cmd_cluster(cli, c);
		break;
	case CMD_ADMINS:
		rc = cmd_admins(cli, c);
		break;
	}
	kms_client_close(c);
	return rc;
}

int main(int argc, char **argv)
{
	struct cli cli;
	int rc;

	memset(&cli, 0, sizeof(cli));
	cli.wait_timeout_s = WAIT_TIMEOUT_DEFAULT_S;
	setvbuf(stdout, stdout_buf, _IOFBF, sizeof(stdout_buf));
	json_set_alloc_funcs(sec_malloc, sec_free);
	rc = run(&cli, argc, argv);
	cli_free(&cli);
	if (fflush(stdout) != 0 && rc == EXIT_OK) {
		errmsg("cannot write the output: %s", strerror(errno));
		rc = EXIT_LOCAL;
	}
	kms_cleanse(stdout_buf, sizeof(stdout_buf));
	return rc;
}
