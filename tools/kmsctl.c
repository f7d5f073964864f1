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
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "audit_cmd.h"
#include "backup_cmd.h"
#include "region_cmd.h"
#include "b64.h"
#include "kmsctl.h"
#include "proto_ctx.h"
#include "rewrap.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kms/alloc.h"
#include "kms/client.h"
#include "kms/client_batch.h"
#include "kms/fingerprint.h"
#include "kms/hostport.h"
#include "kms/quorum.h"
#include "kms/region.h"
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

enum cmd_id {
	CMD_CREATE,
	CMD_DESCRIBE,
	CMD_LIST,
	CMD_GDK,
	CMD_ENCRYPT,
	CMD_DECRYPT,
	CMD_HEALTH,
	CMD_CLUSTER,
	CMD_ADMINS,
	CMD_ROTATE,
	CMD_SET_ROTATION,
	CMD_ENABLE,
	CMD_DISABLE,
	CMD_SCHEDULE_DELETION,
	CMD_CANCEL_DELETION,
	CMD_PUT_POLICY,
	CMD_CREATE_ALIAS,
	CMD_UPDATE_ALIAS,
	CMD_DELETE_ALIAS,
	CMD_LIST_ALIASES,
	CMD_REENCRYPT,
	CMD_REWRAP,
	CMD_QUORUM
};

/* Subcommands of the commands that have them ('cluster', 'admins'). */
enum sub_id {
	SUB_STATUS,
	SUB_JOIN,
	SUB_REMOVE,
	SUB_LIST,
	SUB_SET,
	SUB_PROPOSE,
	SUB_APPROVE,
	SUB_SIGN,
	SUB_SHOW,
	SUB_CANCEL
};

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
	OPT_POLICY_FILE,
	OPT_PERIOD,
	OPT_MAX_ENCRYPTIONS,
	OPT_DAYS,
	OPT_TO,
	OPT_TO_CONTEXT,
	OPT_OUT,
	OPT_STATE,
	OPT_ERRORS,
	OPT_BATCH,
	OPT_PARALLEL,
	OPT_STOP_ON_ERROR,
	OPT_TTL,
	OPT_OPERATOR,
	OPT_SIGNING_KEY,
	OPT_SIGNATURE,
	OPT_YES,
	OPT_DIGEST,
	OPT_MULTI_REGION,
	OPT_LAST /* not an option: the count */
};

#define BIT(o) (UINT64_C(1) << ((o)-OPT_BASE))
_Static_assert(OPT_LAST - OPT_BASE <= 64,
	       "an option's BIT() must fit in a uint64_t");
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
    {"multi-region", no_argument, NULL, OPT_MULTI_REGION},
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
    {"policy-file", required_argument, NULL, OPT_POLICY_FILE},
    {"period", required_argument, NULL, OPT_PERIOD},
    {"max-encryptions", required_argument, NULL, OPT_MAX_ENCRYPTIONS},
    {"days", required_argument, NULL, OPT_DAYS},
    {"to", required_argument, NULL, OPT_TO},
    {"to-context", required_argument, NULL, OPT_TO_CONTEXT},
    {"out", required_argument, NULL, OPT_OUT},
    {"state", required_argument, NULL, OPT_STATE},
    {"errors", required_argument, NULL, OPT_ERRORS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"parallel", required_argument, NULL, OPT_PARALLEL},
    {"stop-on-error", no_argument, NULL, OPT_STOP_ON_ERROR},
    {"ttl", required_argument, NULL, OPT_TTL},
    {"operator", required_argument, NULL, OPT_OPERATOR},
    {"signing-key", required_argument, NULL, OPT_SIGNING_KEY},
    {"signature", required_argument, NULL, OPT_SIGNATURE},
    {"yes", no_argument, NULL, OPT_YES},
    {"digest", required_argument, NULL, OPT_DIGEST},
    {NULL, 0, NULL, 0},
};

struct subcommand {
	const char *name;
	enum sub_id id;
	uint64_t opts; /* options of its command this subcommand accepts */
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

static const struct subcommand quorum_subs[] = {
    {"propose", SUB_PROPOSE,
     BIT(OPT_TTL) | BIT(OPT_ID) | BIT(OPT_RAFT) | BIT(OPT_GRPC) | BIT(OPT_TRANSPORT_KEY) |
	 BIT(OPT_GRANT_TTL),
     "OPERATION [ARGS]"},
    {"approve", SUB_APPROVE, BIT(OPT_OPERATOR) | BIT(OPT_SIGNING_KEY) | BIT(OPT_SIGNATURE) |
			     BIT(OPT_YES),
     "ID"},
    {"sign", SUB_SIGN, BIT(OPT_DIGEST) | BIT(OPT_SIGNING_KEY), NULL},
    {"show", SUB_SHOW, 0, "ID"},
    {"list", SUB_LIST, 0, NULL},
    {"cancel", SUB_CANCEL, 0, "ID"},
};

#define SUBS(t) (t), sizeof(t) / sizeof((t)[0])
#define NO_SUBS NULL, 0, NULL

/* What a command takes before its options' operands, in this order. */
enum operands {
	OPERANDS_NONE,
	OPERANDS_KEY,	    /* KEY_ID */
	OPERANDS_ALIAS,	    /* ALIAS */
	OPERANDS_ALIAS_KEY, /* ALIAS KEY_ID */
};

struct command {
	const char *name;
	enum cmd_id id;
	enum operands operands;
	uint64_t opts; /* accepted command options besides the global ones */
	const char *usage;
	/* A command with subcommands: the first operand names one of them. */
	const struct subcommand *subs;
	size_t n_subs;
	const char *sub_names; /* "a, b or c", for messages */
};

/* How create-key and put-key-policy take a policy (policy_build). */
#define POLICY_HELP                                                            \
	"  --grant may repeat; OP is Encrypt, Decrypt, GenerateDataKey,\n"       \
	"  DescribeKey, ReEncryptFrom or ReEncryptTo; a PRINCIPAL ending in\n"   \
	"  '/*' matches the SPIFFE IDs below it. --policy-file FILE instead\n"   \
	"  holds JSON {\"grants\": [{\"principal\": P, \"operations\": [OP, ...]}]};\n" \
	"  the output of 'kmsctl --json describe-key' is such a file (its\n"    \
	"  other fields are ignored).\n"

static const struct command commands[] = {
    {"create-key", CMD_CREATE, OPERANDS_KEY,
     BIT(OPT_DESCRIPTION) | BIT(OPT_GRANT) | BIT(OPT_POLICY_FILE) | BIT(OPT_MULTI_REGION),
     "usage: kmsctl [global options] create-key KEY_ID [--description TEXT]\n"
     "           [--grant PRINCIPAL=OP[,OP...]]... | [--policy-file FILE]\n"
     "           [--multi-region]\n"
     "  Creates a master key inside the HSM (administrators only).\n"
     POLICY_HELP
     "  --multi-region: the key is replicated to the regions this one is\n"
     "  linked to as primary, and changed only in this region (its home).\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"describe-key", CMD_DESCRIBE, OPERANDS_KEY, 0,
     "usage: kmsctl [global options] describe-key KEY_ID\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"list-keys", CMD_LIST, OPERANDS_NONE, BIT(OPT_PAGE_SIZE) | BIT(OPT_PAGE_TOKEN),
     "usage: kmsctl [global options] list-keys [--page-size N] [--page-token "
     "T]\n"
     "  Without --page-token, follows every page and prints all keys.\n"
     "  With --page-token (\"\" for the first page), prints that one page and\n"
     "  its next_page_token (empty on the last page).\n",
     NO_SUBS},
    {"generate-data-key", CMD_GDK, OPERANDS_KEY,
     BIT(OPT_BYTES) | BIT(OPT_CONTEXT) | BIT(OPT_WITHOUT_PLAINTEXT) |
	 BIT(OPT_PLAINTEXT_OUT) | BIT(OPT_BLOB_OUT),
     "usage: kmsctl [global options] generate-data-key KEY_ID [--bytes N]\n"
     "           [--context K=V]... [--without-plaintext]\n"
     "           [--plaintext-out FILE] [--blob-out FILE]\n"
     "  Prints key_id, key_version, plaintext and ciphertext_blob (base64).\n"
     "  --plaintext-out / --blob-out write the raw bytes to FILE (mode 0600)\n"
     "  instead of printing that field.\n",
     NO_SUBS},
    {"encrypt", CMD_ENCRYPT, OPERANDS_KEY,
     BIT(OPT_PLAINTEXT) | BIT(OPT_IN) | BIT(OPT_CONTEXT) | BIT(OPT_BLOB_OUT),
     "usage: kmsctl [global options] encrypt KEY_ID (--plaintext BASE64 | --in "
     "FILE)\n"
     "           [--context K=V]... [--blob-out FILE]\n"
     "  Encrypts up to 4096 bytes (FILE holds raw bytes). Prints key_id,\n"
     "  key_version and ciphertext_blob (base64), or writes the raw blob to\n"
     "  FILE (mode 0600) with --blob-out.\n",
     NO_SUBS},
    {"decrypt", CMD_DECRYPT, OPERANDS_NONE,
     BIT(OPT_BLOB) | BIT(OPT_IN) | BIT(OPT_CONTEXT) | BIT(OPT_KEY_ID) |
	 BIT(OPT_PLAINTEXT_OUT),
     "usage: kmsctl [global options] decrypt (--blob BASE64 | --in FILE)\n"
     "           [--context K=V]... [--key-id ID] [--plaintext-out FILE]\n"
     "  Decrypts a blob (FILE holds the raw blob) made with the same context.\n"
     "  Prints key_id, key_version and plaintext (base64), or writes the raw\n"
     "  plaintext to FILE (mode 0600) with --plaintext-out.\n",
     NO_SUBS},
    {"re-encrypt", CMD_REENCRYPT, OPERANDS_NONE,
     BIT(OPT_BLOB) | BIT(OPT_IN) | BIT(OPT_CONTEXT) | BIT(OPT_KEY_ID) |
	 BIT(OPT_TO) | BIT(OPT_TO_CONTEXT) | BIT(OPT_BLOB_OUT),
     "usage: kmsctl [global options] re-encrypt (--blob BASE64 | --in FILE)\n"
     "           [--context K=V]... [--key-id ID] --to KEY_ID\n"
     "           [--to-context K=V]... [--blob-out FILE]\n"
     "  Decrypts a blob (FILE holds the raw blob) made with --context and\n"
     "  encrypts its plaintext under the primary version of --to (a key id\n"
     "  or an alias; the blob's own key to move it to that key's primary\n"
     "  version) with --to-context (default: the same context as --context),\n"
     "  inside the server: the plaintext never leaves it. Needs ReEncryptFrom\n"
     "  on the blob's key and ReEncryptTo on --to. --key-id, when given,\n"
     "  must name the blob's key. Prints ciphertext_blob (base64; the raw\n"
     "  blob to FILE, mode 0600, with --blob-out), key_id, key_version,\n"
     "  source_key_id and source_key_version. 'rewrap' does the same for\n"
     "  many blobs.\n",
     NO_SUBS},
    {"rewrap", CMD_REWRAP, OPERANDS_NONE,
     BIT(OPT_IN) | BIT(OPT_OUT) | BIT(OPT_TO) | BIT(OPT_STATE) |
	 BIT(OPT_ERRORS) | BIT(OPT_BATCH) | BIT(OPT_PARALLEL) |
	 BIT(OPT_STOP_ON_ERROR),
     "usage: kmsctl [global options] rewrap [--in FILE] --out FILE --to KEY_ID\n"
     "           [--batch N] [--parallel N] [--state FILE] [--errors FILE]\n"
     "           [--stop-on-error]\n"
     "  Re-encrypts many blobs under the primary version of --to (a key id or\n"
     "  an alias) with BatchReEncrypt: the plaintexts never leave the server.\n"
     "  The input (--in FILE, or standard input) holds one JSON object per\n"
     "  line, {\"blob\": BASE64, \"context\": {\"K\": \"V\", ...}}; the output\n"
     "  gets the same line with the new blob (the rest of the line as it was),\n"
     "  in the same order, one line for each input line. Needs ReEncryptFrom\n"
     "  on the blobs' keys and ReEncryptTo on --to.\n"
     "  --batch N: items per call (default 256, at most 1024);\n"
     "  --parallel N: calls in flight (default 4, at most 32).\n"
     "  A line that fails (not JSON, bad base64, wrong context, no permission)\n"
     "  goes to the output unchanged and to --errors FILE (default\n"
     "  OUT.rewrap-errors) as {\"line\": N, \"code\": STATUS, \"message\": M,\n"
     "  \"source\": \"input\"|\"server\"}; with --stop-on-error the job stops\n"
     "  before that line instead. A call that fails as a whole (UNAVAILABLE\n"
     "  after 5 retries, PERMISSION_DENIED for the call) stops the job.\n"
     "  Resuming: --state FILE (default OUT.rewrap-state) records, about every\n"
     "  second, how many input lines are durably written (the output is\n"
     "  fsync'd first). Run the same command again after Ctrl-C, a crash or a\n"
     "  stop and it truncates OUT to that point and goes on: no line is\n"
     "  written twice or lost. It refuses an input whose first lines differ\n"
     "  from the state's, and an OUT that has data but no state. Ctrl-C\n"
     "  (SIGINT or SIGTERM) finishes the calls in flight and commits them; a\n"
     "  second one abandons them. A finished job's state says so, and running\n"
     "  it again does nothing.\n"
     "  On a terminal, stderr shows a progress bar (done/total, rate, time\n"
     "  left; the total is counted first when --in is a file); with --json,\n"
     "  stderr gets a {\"progress\": {...}} line every second instead. At the\n"
     "  end it prints input, output, to, state, errors, lines_done,\n"
     "  lines_total, resumed_at, rewrapped, failed, failed_total,\n"
     "  elapsed_seconds, items_per_second, complete and stopped. Exit status:\n"
     "  0 every line rewrapped; 2 some lines failed or the server stopped the\n"
     "  job; 1 a local error; 128+N when signal N stopped it (130 for Ctrl-C).\n",
     NO_SUBS},
    {"health", CMD_HEALTH, OPERANDS_NONE, 0,
     "usage: kmsctl [global options] health\n"
     "  grpc.health.v1.Health/Check for the server as a whole. Prints status;\n"
     "  exits 0 when it is SERVING, 2 otherwise. For an administrator, also\n"
     "  each link of a secondary region to its primary: region_lag PEER\n"
     "  ENTRIES SECONDS (as 'kmsctl region status' counts them).\n",
     NO_SUBS},
    /* The subcommand picks which of these options apply (cluster_subs). */
    {"cluster", CMD_CLUSTER, OPERANDS_NONE,
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
     "  join, remove: admitting and removing members are root operations:\n"
     "    the server refuses them (exit 2, FAILED_PRECONDITION) and names the\n"
     "    command to use, 'kmsctl quorum propose add-member --id N --raft\n"
     "    HOST:PORT --grpc HOST:PORT --transport-key-sha256 HEX' (the SHA-256\n"
     "    the joining node printed: 'joining: transport key sha256 HEX' in its\n"
     "    log) or 'kmsctl quorum propose remove-member --id N', which M\n"
     "    operators approve. kmsctl still checks the options first (exit 1).\n"
     "  N is a node id from 1 to 4294967295; HOST is a name, an IPv4\n"
     "  address or a bracketed IPv6 address; PORT is 1 to 65535.\n",
     SUBS(cluster_subs), "status, join or remove"},
    {"admins", CMD_ADMINS, OPERANDS_NONE, 0,
     "usage: kmsctl [global options] admins list\n"
     "       kmsctl [global options] admins set ID[,ID...] [ID...]\n"
     "  kms.v1.Operator, for administrators: the SPIFFE IDs that may create\n"
     "  keys and run the cluster and admins commands. The list lives in the\n"
     "  cluster's replicated state; [authz] admins in a node's configuration\n"
     "  only seeds the list of a new cluster.\n"
     "  list: prints one ID per line; with --json,\n"
     "    {\"administrators\": [ID, ...]}.\n"
     "  set: changing the list is a root operation: the server refuses it\n"
     "    (exit 2, FAILED_PRECONDITION) and names the command to use,\n"
     "    'kmsctl quorum propose set-administrators ID[,ID...]', which M\n"
     "    operators then approve ('kmsctl quorum --help').\n"
     "  kmsctl refuses, without calling the server (exit 1), no ID, an empty\n"
     "  entry, a string that is not a SPIFFE ID with a path and an ID given\n"
     "  twice.\n",
     SUBS(admins_subs), "list or set"},
    {"quorum", CMD_QUORUM, OPERANDS_NONE,
     BIT(OPT_TTL) | BIT(OPT_ID) | BIT(OPT_RAFT) | BIT(OPT_GRPC) | BIT(OPT_TRANSPORT_KEY) |
	 BIT(OPT_GRANT_TTL) | BIT(OPT_OPERATOR) | BIT(OPT_SIGNING_KEY) | BIT(OPT_SIGNATURE) |
	 BIT(OPT_YES) | BIT(OPT_DIGEST),
     "usage: kmsctl [global options] quorum propose OPERATION [ARGS] [--ttl S]\n"
     "       kmsctl [global options] quorum approve ID --operator NAME\n"
     "                  (--signing-key FILE | --signature B64) [--yes]\n"
     "       kmsctl quorum sign --digest HEX --signing-key FILE\n"
     "       kmsctl [global options] quorum show ID\n"
     "       kmsctl [global options] quorum list\n"
     "       kmsctl [global options] quorum cancel ID\n"
     "  Root operations run only once M of the cluster's N operators approved\n"
     "  them with their Ed25519 signing keys (ops/pki operator). The calls\n"
     "  need an administrator's certificate; the approval is the signature.\n"
     "  propose: OPERATION is one of\n"
     "    set-administrators ID[,ID...] [ID...]\n"
     "    set-operators M NAME:PUBKEYFILE[,NAME:PUBKEYFILE...] (threshold M)\n"
     "    add-member --id N --raft HOST:PORT --grpc HOST:PORT\n"
     "               --transport-key-sha256 HEX [--grant-ttl S (default 600)]\n"
     "    remove-member --id N\n"
     "    destroy-key KEY_ID (a key pending deletion, before or after its date)\n"
     "    rotate-domain-key\n"
     "    promote-region REGION (this region, a secondary of REGION, becomes\n"
     "               the primary of REGION's multi-region keys)\n"
     "    unlink-region REGION (its nodes are refused from then on)\n"
     "    cancel-proposal ID\n"
     "    It expires after --ttl S seconds (default 3600, at most 86400).\n"
     "    Prints proposal_id and digest (the SHA-256 operators sign).\n"
     "  approve: shows the proposal, checks that its digest is the canonical\n"
     "    encoding of what is shown (docs/FORMAT.md), asks for 'yes' unless\n"
     "    --yes, signs the digest with --signing-key (or sends --signature,\n"
     "    made by 'quorum sign' elsewhere) and prints the proposal. The M-th\n"
     "    approval executes the operation.\n"
     "  sign: offline, no server: prints the base64 Ed25519 signature of\n"
     "    --digest HEX with --signing-key FILE, for 'approve --signature'.\n"
     "  show, list: the proposal(s), with state pending, approved, executed,\n"
     "    failed, expired or cancelled, and the result of an execution.\n"
     "  cancel: the proposer withdraws a pending proposal (M operators can\n"
     "    cancel any with 'propose cancel-proposal ID').\n",
     SUBS(quorum_subs), "propose, approve, sign, show, list or cancel"},
    {"rotate-key", CMD_ROTATE, OPERANDS_KEY, 0,
     "usage: kmsctl [global options] rotate-key KEY_ID\n"
     "  Makes a new version of the key in the HSM and makes it the primary:\n"
     "  new encryptions use it, every older version still decrypts\n"
     "  (administrators only). Prints the key's metadata.\n",
     NO_SUBS},
    {"set-rotation-policy", CMD_SET_ROTATION, OPERANDS_KEY,
     BIT(OPT_PERIOD) | BIT(OPT_MAX_ENCRYPTIONS),
     "usage: kmsctl [global options] set-rotation-policy KEY_ID [--period P]\n"
     "           [--max-encryptions N]\n"
     "  Replaces the key's rotation policy (administrators only); give at\n"
     "  least one option, the other takes its default.\n"
     "  --period P: rotate when the primary version is P old. P is seconds, or\n"
     "    a whole number with a unit: 90s, 30m, 24h, 90d. 0 (the default)\n"
     "    turns rotation by age off; the server refuses less than 60 s.\n"
     "  --max-encryptions N: rotate before a version has made N encryptions;\n"
     "    0 (the default) means 2^30, at most 2^32 (4294967296).\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"enable-key", CMD_ENABLE, OPERANDS_KEY, 0,
     "usage: kmsctl [global options] enable-key KEY_ID\n"
     "  Lets a disabled key serve crypto calls again (administrators only).\n"
     "  Prints the key's metadata.\n",
     NO_SUBS},
    {"disable-key", CMD_DISABLE, OPERANDS_KEY, 0,
     "usage: kmsctl [global options] disable-key KEY_ID\n"
     "  Makes the key refuse every crypto call (FAILED_PRECONDITION) while\n"
     "  keeping its material (administrators only). Prints the key's\n"
     "  metadata.\n",
     NO_SUBS},
    {"schedule-key-deletion", CMD_SCHEDULE_DELETION, OPERANDS_KEY,
     BIT(OPT_DAYS),
     "usage: kmsctl [global options] schedule-key-deletion KEY_ID [--days N]\n"
     "  Puts the key in PendingDeletion with a deletion date N days ahead (7\n"
     "  to 30, default 30; administrators only). It refuses crypto calls like\n"
     "  a disabled key, and cancel-key-deletion takes it back, until M\n"
     "  operators approve 'kmsctl quorum propose destroy-key KEY_ID': then its\n"
     "  versions are destroyed on every node and its blobs never decrypt\n"
     "  again. The date alone destroys nothing. Prints the key's metadata,\n"
     "  deletion_date_unix included.\n",
     NO_SUBS},
    {"cancel-key-deletion", CMD_CANCEL_DELETION, OPERANDS_KEY, 0,
     "usage: kmsctl [global options] cancel-key-deletion KEY_ID\n"
     "  Cancels a scheduled deletion (administrators only). The key stays\n"
     "  disabled: enable-key turns it on. Prints the key's metadata.\n",
     NO_SUBS},
    {"put-key-policy", CMD_PUT_POLICY, OPERANDS_KEY,
     BIT(OPT_GRANT) | BIT(OPT_POLICY_FILE),
     "usage: kmsctl [global options] put-key-policy KEY_ID\n"
     "           (--grant PRINCIPAL=OP[,OP...]... | --policy-file FILE)\n"
     "  Replaces the key's whole policy (administrators only).\n"
     POLICY_HELP
     "  An empty policy (no one may use the key) takes a FILE with\n"
     "  {\"grants\": []}. Prints the key's metadata.\n",
     NO_SUBS},
    {"create-alias", CMD_CREATE_ALIAS, OPERANDS_ALIAS_KEY, 0,
     "usage: kmsctl [global options] create-alias ALIAS KEY_ID\n"
     "  Names KEY_ID (a key id, not another alias) by ALIAS, 'alias/' and\n"
     "  1 to 250 characters of [A-Za-z0-9._/-] (administrators only). Every\n"
     "  command that takes a KEY_ID takes an alias too. Prints alias_name,\n"
     "  key_id, created_at_unix and updated_at_unix.\n",
     NO_SUBS},
    {"update-alias", CMD_UPDATE_ALIAS, OPERANDS_ALIAS_KEY, 0,
     "usage: kmsctl [global options] update-alias ALIAS KEY_ID\n"
     "  Points an existing alias at another key (administrators only).\n"
     "  Prints the alias as create-alias does.\n",
     NO_SUBS},
    {"delete-alias", CMD_DELETE_ALIAS, OPERANDS_ALIAS, 0,
     "usage: kmsctl [global options] delete-alias ALIAS\n"
     "  Deletes the alias; its key stays (administrators only). Prints\n"
     "  'deleted ALIAS', or {\"deleted_alias\": ALIAS} with --json.\n",
     NO_SUBS},
    {"list-aliases", CMD_LIST_ALIASES, OPERANDS_NONE,
     BIT(OPT_KEY_ID) | BIT(OPT_PAGE_SIZE) | BIT(OPT_PAGE_TOKEN),
     "usage: kmsctl [global options] list-aliases [--key-id KEY_ID]\n"
     "           [--page-size N] [--page-token T]\n"
     "  Lists aliases (only those of KEY_ID with --key-id): alias_name,\n"
     "  key_id, created_at_unix, updated_at_unix. Pages as list-keys does.\n",
     NO_SUBS},
};

static const char global_usage[] =
    "usage: kmsctl [global options] COMMAND [command options]\n"
    "\n"
    "commands:\n"
    "  create-key KEY_ID [--description TEXT] [--grant "
    "PRINCIPAL=OP[,OP...]]... | [--policy-file FILE]\n"
    "             [--multi-region]\n"
    "  describe-key KEY_ID\n"
    "  list-keys [--page-size N] [--page-token T]\n"
    "  generate-data-key KEY_ID [--bytes N] [--context K=V]... "
    "[--without-plaintext]\n"
    "                    [--plaintext-out FILE] [--blob-out FILE]\n"
    "  encrypt KEY_ID (--plaintext BASE64 | --in FILE) [--context K=V]... "
    "[--blob-out FILE]\n"
    "  decrypt (--blob BASE64 | --in FILE) [--context K=V]... [--key-id ID]\n"
    "          [--plaintext-out FILE]\n"
    "  re-encrypt (--blob BASE64 | --in FILE) [--context K=V]... [--key-id ID]\n"
    "             --to KEY_ID [--to-context K=V]... [--blob-out FILE]\n"
    "  rewrap [--in FILE] --out FILE --to KEY_ID [--batch N] [--parallel N]\n"
    "         [--state FILE] [--errors FILE] [--stop-on-error]\n"
    "  health\n"
    "  cluster status\n"
    "  cluster join --id N --raft HOST:PORT --grpc HOST:PORT\n"
    "               --transport-key-sha256 HEX [--grant-ttl S] [--wait-timeout S]\n"
    "  cluster remove --id N\n"
    "  admins list\n"
    "  admins set ID[,ID...] [ID...]\n"
    "  quorum propose OPERATION [ARGS] [--ttl S]\n"
    "  quorum approve ID --operator NAME (--signing-key FILE | --signature B64) [--yes]\n"
    "  quorum sign --digest HEX --signing-key FILE\n"
    "  quorum show ID | quorum list | quorum cancel ID\n"
    "  rotate-key KEY_ID\n"
    "  set-rotation-policy KEY_ID [--period P] [--max-encryptions N]\n"
    "  enable-key KEY_ID\n"
    "  disable-key KEY_ID\n"
    "  schedule-key-deletion KEY_ID [--days N]\n"
    "  cancel-key-deletion KEY_ID\n"
    "  put-key-policy KEY_ID (--grant PRINCIPAL=OP[,OP...]... | --policy-file FILE)\n"
    "  create-alias ALIAS KEY_ID\n"
    "  update-alias ALIAS KEY_ID\n"
    "  delete-alias ALIAS\n"
    "  list-aliases [--key-id KEY_ID] [--page-size N] [--page-token T]\n"
    "  audit verify FILE [--node-cert PEM] [--allow-unsigned-tail]   (offline)\n"
    "  backup create --custodian NAME=PUBFILE... --threshold M --out FILE [--ttl S]\n"
    "                [--wait-timeout S]\n"
    "  backup fetch ID --out FILE\n"
    "  backup unseal-share --file FILE --custodian NAME --key PRIVFILE --out SHAREFILE\n"
    "                (offline)\n"
    "  region status\n"
    "  region link --peer NAME --role primary|secondary --peer-endpoints HOST:PORT[,...]\n"
    "              --peer-trust-domain TD --peer-node-ca FILE [--mode async|sync] [--ttl S]\n"
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
    "2 the server returned an error (printed as 'kmsctl: STATUS: details') or\n"
    "'audit verify' found a bad record,\n"
    "3 'cluster status' found no leader, 128+N 'rewrap' stopped by signal N.\n";

struct cli {
	const struct command *cmd;
	kms_client_opts copts;
	int json;
	const char *key_id;
	const char *description;
	int multi_region;
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
	uint64_t seen;		       /* BIT() of every option given */
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
	const char *alias_name;	 /* ALIAS of the alias commands */
	const char *policy_file; /* --policy-file */
	uint64_t period_s;	 /* --period, in seconds */
	uint64_t max_encryptions;
	uint32_t days; /* --days; 0: the server's default */
	const char *to_key; /* --to */
	struct rewrap_opts rewrap; /* --out, --state, --errors, --batch, ... */
	struct kv *to_ctx;  /* --to-context */
	size_t n_to_ctx;
	/* quorum */
	uint32_t ttl_s;		      /* --ttl; 0: the server's default */
	const char *operator_name;    /* --operator */
	const char *signing_key;      /* --signing-key */
	const char *signature_b64;    /* --signature */
	int yes;		      /* --yes */
	const char *digest_hex;	      /* --digest */
	const char *proposal_id;      /* ID of approve, show, cancel */
	Kms__V1__RootOperation op;    /* propose: the operation */
	Kms__V1__SetAdministratorsOperation op_admins;
	Kms__V1__SetOperatorsOperation op_operators;
	Kms__V1__OperatorRecord *op_records; /* set-operators, n in op_operators */
	uint8_t (*op_keys)[KMS_ED25519_PUB_LEN];
	Kms__V1__AddMemberOperation op_add;
	uint8_t op_fp[KMS_SHA256_LEN];
	Kms__V1__RemoveMemberOperation op_remove;
	Kms__V1__DestroyKeyOperation op_destroy;
	Kms__V1__RotateDomainKeyOperation op_rotate;
	Kms__V1__CancelProposalOperation op_cancel;
	Kms__V1__PromoteRegionOperation op_promote;
	Kms__V1__UnlinkRegionOperation op_unlink;
};

static void cli_free(struct cli *cli)
{
	size_t i;

	for (i = 0; i < cli->n_ctx; i++)
		kms_free(cli->ctx[i].key);
	kms_free(cli->ctx);
	for (i = 0; i < cli->n_to_ctx; i++)
		kms_free(cli->to_ctx[i].key);
	kms_free(cli->to_ctx);
	kms_free(cli->grants);
	for (i = 0; i < cli->n_admin_args; i++)
		kms_free(cli->admin_args[i]);
	kms_free(cli->admin_args);
	kms_free(cli->admins);
	if (cli->op_records != NULL)
		for (i = 0; i < cli->op_operators.n_operators; i++)
			kms_free(cli->op_records[i].name);
	kms_free(cli->op_records);
	kms_free(cli->op_operators.operators);
	kms_free(cli->op_keys);
}

/* ---- diagnostics ---- */

void errmsg(const char *fmt, ...)
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

int kmsctl_server_error(const kms_rpc_status *st)
{
	if (st->details[0] != '\0')
		errmsg("%s: %s", kms_grpc_status_name(st->code), st->details);
	else
		errmsg("%s", kms_grpc_status_name(st->code));
	return EXIT_SERVER;
}

int kmsctl_propose(kms_client *c, const Kms__V1__RootOperation *op, uint32_t ttl_s,
		   Kms__V1__Proposal **out)
{
	Kms__V1__ProposeOperationRequest req = KMS__V1__PROPOSE_OPERATION_REQUEST__INIT;
	Kms__V1__ProposeOperationResponse *resp = NULL;
	kms_rpc_status st;

	*out = NULL;
	req.operation = (Kms__V1__RootOperation *)op;
	req.ttl_seconds = ttl_s;
	if (kms_client_call(c, "/kms.v1.Operator/ProposeOperation", &req.base,
			    &kms__v1__propose_operation_response__descriptor,
			    (ProtobufCMessage **)&resp, &st) != 0)
		return kmsctl_server_error(&st);
	if (resp->proposal == NULL || kms_proposal_id_check(resp->proposal->id, NULL) != KMS_OK) {
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		errmsg("the server sent no proposal");
		return EXIT_SERVER;
	}
	*out = resp->proposal;
	resp->proposal = NULL;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return EXIT_OK;
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

/*
 * A base64 option's value; a trailing newline (from $(cat file)) is
 * allowed. out->data is kms_malloc'd; the caller frees it.
 */
static int decode_opt(const char *in, const char *what, kms_buf *out)
{
	size_t len = strlen(in);
	enum b64_status st;

	while (len > 0 && (in[len - 1] == '\n' || in[len - 1] == '\r'))
		len--;
	st = b64_decode(in, len, INPUT_MAX_BYTES * 2, out);
	if (st == B64_NOMEM) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	if (st != B64_OK)
		return usage_error("%s %s", what, b64_status_text(st));
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

static size_t put_printable(const char *s);

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
		/* One line per version: 'version: V state=S ...'. */
		if (strcmp(field, "version_details") == 0) {
			json_array_foreach(v, i, e)
			{
				const char *f2;
				json_t *v2;

				fputs("version:", stdout);
				json_object_foreach(e, f2, v2)
				{
					if (strcmp(f2, "version") == 0)
						putchar(' ');
					else
						printf(" %s=", f2);
					print_scalar(v2);
				}
				putchar('\n');
			}
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

/*
 * The state, rotation policy, versions and aliases of a key (the fields of
 * key rotation and deletion); 0 when all were set, -1 when memory ran out.
 */
static int key_lifecycle_json(json_t *o, const Kms__V1__KeyMetadata *k)
{
	json_t *details = json_array(), *aliases = json_array();
	size_t i;
	int rc = 0;

	for (i = 0; details != NULL && i < k->n_version_details; i++) {
		const Kms__V1__KeyVersionMetadata *v = k->version_details[i];
		json_t *d = json_object();

		if (d == NULL || json_array_append_new(details, d) != 0 ||
		    json_object_set_new(d, "version", json_integer(v->version)) ||
		    json_object_set_new(d, "state", json_string(v->state)) ||
		    json_object_set_new(d, "created_at_unix",
					json_integer(v->created_at_unix)) ||
		    json_object_set_new(d, "encryptions",
					json_u64(v->encryptions)))
			rc = -1;
	}
	for (i = 0; aliases != NULL && i < k->n_aliases; i++)
		if (json_array_append_new(aliases, json_string(k->aliases[i])))
			rc = -1;
	if (json_object_set_new(o, "key_state", json_string(k->key_state)) ||
	    json_object_set_new(o, "deletion_date_unix",
				json_integer(k->deletion_date_unix)) ||
	    json_object_set_new(o, "rotation_period_seconds",
				json_u64(k->rotation_period_seconds)) ||
	    json_object_set_new(o, "max_encryptions_per_version",
				json_u64(k->max_encryptions_per_version)) ||
	    json_object_set_new(o, "next_rotation_unix",
				json_integer(k->next_rotation_unix)) ||
	    json_object_set_new(o, "version_details", details) ||
	    json_object_set_new(o, "aliases", aliases))
		rc = -1;
	return rc;
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
	versions = NULL;
	json_object_set_new(o, "created_at_unix",
			    json_integer(k->created_at_unix));
	json_object_set_new(o, "created_by", json_string(k->created_by));
	json_object_set_new(o, "multi_region", json_boolean(k->multi_region));
	json_object_set_new(o, "home_region", json_string(k->home_region));
	json_object_set_new(o, "grants", grants);
	grants = NULL;
	if (key_lifecycle_json(o, k) != 0)
		goto fail;
	return o;
fail:
	json_decref(o);
	json_decref(versions);
	json_decref(grants);
	return NULL;
}

/* ---- requests ---- */


static int call(kms_client *c, const char *rpc, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
	char method[96];
	kms_rpc_status st;

	snprintf(method, sizeof(method), "/kms.v1.KeyManagement/%s", rpc);
	if (kms_client_call(c, method, req, desc, resp, &st) != 0)
		return kmsctl_server_error(&st);
	return EXIT_OK;
}

/*
 * A KeyPolicy built from the --grant options or from --policy-file. It owns
 * everything it points to: the copies of the --grant strings, or the parsed
 * file whose strings the grants borrow. Free with policy_build_free.
 */
struct policy_build {
	Kms__V1__KeyPolicy policy;
	Kms__V1__Grant *grants;
	Kms__V1__Grant **gptrs;
	char **copies; /* one per --grant */
	size_t n;      /* grants, and copies when from --grant */
	json_t *doc;   /* the --policy-file document */
};

static void policy_build_free(struct policy_build *pb)
{
	size_t i;

	for (i = 0; pb->grants != NULL && i < pb->n; i++)
		kms_free(pb->grants[i].operations);
	for (i = 0; pb->copies != NULL && i < pb->n; i++)
		kms_free(pb->copies[i]);
	kms_free(pb->copies);
	kms_free(pb->gptrs);
	kms_free(pb->grants);
	json_decref(pb->doc);
	memset(pb, 0, sizeof(*pb));
}

static int policy_alloc(struct policy_build *pb, size_t n)
{
	size_t i;

	pb->grants = kms_calloc(n + 1, sizeof(*pb->grants));
	pb->gptrs = kms_calloc(n + 1, sizeof(*pb->gptrs));
	if (pb->grants == NULL || pb->gptrs == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	for (i = 0; i < n; i++) {
		Kms__V1__Grant init = KMS__V1__GRANT__INIT;

		pb->grants[i] = init;
		pb->gptrs[i] = &pb->grants[i];
	}
	pb->policy.grants = pb->gptrs;
	return EXIT_OK;
}

/* PRINCIPAL=OP[,OP...]: operation names hold no '=', the last one splits. */
static int policy_from_grants(const struct cli *cli, struct policy_build *pb)
{
	size_t i;

	pb->copies = kms_calloc(cli->n_grants + 1, sizeof(*pb->copies));
	if (pb->copies == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	if (policy_alloc(pb, cli->n_grants) != EXIT_OK)
		return EXIT_LOCAL;
	pb->n = cli->n_grants;
	for (i = 0; i < cli->n_grants; i++) {
		Kms__V1__Grant *g = &pb->grants[i];
		char *eq, *p, *tok, *save = NULL;
		size_t nops = 1;

		pb->copies[i] = kms_strdup(cli->grants[i]);
		if (pb->copies[i] == NULL) {
			errmsg("out of memory");
			return EXIT_LOCAL;
		}
		eq = strrchr(pb->copies[i], '=');
		if (eq == NULL || eq == pb->copies[i] || eq[1] == '\0')
			return usage_error(
			    "--grant '%s' is not PRINCIPAL=OP[,OP...]",
			    cli->grants[i]);
		*eq = '\0';
		g->principal = pb->copies[i];
		for (p = eq + 1; *p != '\0'; p++)
			nops += *p == ',';
		g->operations = kms_calloc(nops, sizeof(char *));
		if (g->operations == NULL) {
			errmsg("out of memory");
			return EXIT_LOCAL;
		}
		for (tok = strtok_r(eq + 1, ",", &save); tok != NULL;
		     tok = strtok_r(NULL, ",", &save))
			g->operations[g->n_operations++] = tok;
		if (g->n_operations != nops)
			return usage_error("--grant '%s' has an empty operation",
					   cli->grants[i]);
	}
	pb->policy.n_grants = pb->n;
	return EXIT_OK;
}

/*
 * {"grants": [{"principal": P, "operations": [OP, ...]}, ...]}; other
 * fields are ignored so that 'describe-key --json' output can be edited
 * and given back. The names are the server's to judge, as with --grant.
 */
static int policy_from_file(const char *path, struct policy_build *pb)
{
	kms_buf data = {NULL, 0};
	json_error_t jerr;
	json_t *grants, *g;
	size_t i;
	int rc;

	rc = read_file(path, &data);
	if (rc != EXIT_OK)
		return rc;
	pb->doc = json_loadb((const char *)data.data, data.len, 0, &jerr);
	kms_buf_free(&data);
	if (pb->doc == NULL)
		return usage_error("--policy-file '%s' is not JSON: line %d: %s",
				   path, jerr.line, jerr.text);
	grants = json_object_get(pb->doc, "grants");
	if (!json_is_array(grants))
		return usage_error("--policy-file '%s' has no \"grants\" array",
				   path);
	if (policy_alloc(pb, json_array_size(grants)) != EXIT_OK)
		return EXIT_LOCAL;
	pb->n = json_array_size(grants);
	json_array_foreach(grants, i, g)
	{
		json_t *principal = json_object_get(g, "principal");
		json_t *ops = json_object_get(g, "operations"), *op;
		size_t j;

		if (!json_is_string(principal) || !json_is_array(ops))
			return usage_error(
			    "--policy-file '%s': grant %zu needs a \"principal\" "
			    "string and an \"operations\" array",
			    path, i + 1);
		pb->grants[i].principal = (char *)json_string_value(principal);
		pb->grants[i].operations =
		    kms_calloc(json_array_size(ops) + 1, sizeof(char *));
		if (pb->grants[i].operations == NULL) {
			errmsg("out of memory");
			return EXIT_LOCAL;
		}
		json_array_foreach(ops, j, op)
		{
			if (!json_is_string(op))
				return usage_error(
				    "--policy-file '%s': grant %zu has an "
				    "operation that is not a string",
				    path, i + 1);
			pb->grants[i].operations[j] =
			    (char *)json_string_value(op);
		}
		pb->grants[i].n_operations = json_array_size(ops);
	}
	pb->policy.n_grants = pb->n;
	return EXIT_OK;
}

/* The policy of create-key and put-key-policy: --grant or --policy-file. */
static int policy_build(const struct cli *cli, struct policy_build *pb)
{
	memset(pb, 0, sizeof(*pb));
	kms__v1__key_policy__init(&pb->policy);
	if (cli->policy_file != NULL)
		return policy_from_file(cli->policy_file, pb);
	return policy_from_grants(cli, pb);
}

/*
 * Calls rpc and prints the KeyMetadata its answer carries in the field
 * named "key" (every key administration call answers with one).
 */
static int key_call(const struct cli *cli, kms_client *c, const char *rpc,
		    const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc)
{
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(resp_desc, "key");
	ProtobufCMessage *resp = NULL;
	Kms__V1__KeyMetadata *k = NULL;
	json_t *o = NULL;
	int rc;

	rc = call(c, rpc, req, resp_desc, &resp);
	if (rc != EXIT_OK)
		return rc;
	if (f != NULL)
		memcpy(&k, (const unsigned char *)resp + f->offset, sizeof(k));
	if (k == NULL) {
		errmsg("the server's %s response has no key", rpc);
		rc = EXIT_SERVER;
		goto out;
	}
	o = key_json(k);
	rc = o != NULL ? emit(cli, o) : EXIT_LOCAL;
out:
	json_decref(o);
	protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

static int cmd_create(const struct cli *cli, kms_client *c)
{
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	struct policy_build pb;
	int rc;

	rc = policy_build(cli, &pb);
	if (rc == EXIT_OK) {
		req.key_id = (char *)cli->key_id;
		if (cli->description != NULL)
			req.description = (char *)cli->description;
		req.multi_region = cli->multi_region;
		req.policy = &pb.policy;
		rc = key_call(cli, c, "CreateKey", &req.base,
			      &kms__v1__create_key_response__descriptor);
	}
	policy_build_free(&pb);
	return rc;
}

static int cmd_put_policy(const struct cli *cli, kms_client *c)
{
	Kms__V1__PutKeyPolicyRequest req = KMS__V1__PUT_KEY_POLICY_REQUEST__INIT;
	struct policy_build pb;
	int rc;

	rc = policy_build(cli, &pb);
	if (rc == EXIT_OK) {
		req.key_id = (char *)cli->key_id;
		req.policy = &pb.policy;
		rc = key_call(cli, c, "PutKeyPolicy", &req.base,
			      &kms__v1__put_key_policy_response__descriptor);
	}
	policy_build_free(&pb);
	return rc;
}

/* The calls whose request is just {key_id} and whose answer is {key}. */
static const struct key_only_rpc {
	enum cmd_id cmd;
	const char *rpc;
	const ProtobufCMessageDescriptor *req, *resp;
} key_only_rpcs[] = {
    {CMD_DESCRIBE, "DescribeKey", &kms__v1__describe_key_request__descriptor,
     &kms__v1__describe_key_response__descriptor},
    {CMD_ROTATE, "RotateKey", &kms__v1__rotate_key_request__descriptor,
     &kms__v1__rotate_key_response__descriptor},
    {CMD_ENABLE, "EnableKey", &kms__v1__enable_key_request__descriptor,
     &kms__v1__enable_key_response__descriptor},
    {CMD_DISABLE, "DisableKey", &kms__v1__disable_key_request__descriptor,
     &kms__v1__disable_key_response__descriptor},
    {CMD_CANCEL_DELETION, "CancelKeyDeletion",
     &kms__v1__cancel_key_deletion_request__descriptor,
     &kms__v1__cancel_key_deletion_response__descriptor},
};

static int cmd_key_only(const struct cli *cli, kms_client *c)
{
	const struct key_only_rpc *r = NULL;
	const ProtobufCFieldDescriptor *f;
	ProtobufCMessage *req;
	size_t i;
	int rc;

	for (i = 0; i < sizeof(key_only_rpcs) / sizeof(key_only_rpcs[0]); i++)
		if (key_only_rpcs[i].cmd == cli->cmd->id)
			r = &key_only_rpcs[i];
	f = r != NULL ? protobuf_c_message_descriptor_get_field_by_name(
			    r->req, "key_id")
		      : NULL;
	if (f == NULL) {
		errmsg("%s: no request for this command", cli->cmd->name);
		return EXIT_LOCAL;
	}
	req = kms_calloc(1, r->req->sizeof_message);
	if (req == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	protobuf_c_message_init(r->req, req);
	memcpy((unsigned char *)req + f->offset, &cli->key_id, sizeof(char *));
	rc = key_call(cli, c, r->rpc, req, r->resp);
	kms_free(req);
	return rc;
}

static int cmd_set_rotation(const struct cli *cli, kms_client *c)
{
	Kms__V1__SetRotationPolicyRequest req =
	    KMS__V1__SET_ROTATION_POLICY_REQUEST__INIT;

	req.key_id = (char *)cli->key_id;
	req.rotation_period_seconds = cli->period_s;
	req.max_encryptions_per_version = cli->max_encryptions;
	return key_call(cli, c, "SetRotationPolicy", &req.base,
			&kms__v1__set_rotation_policy_response__descriptor);
}

static int cmd_schedule_deletion(const struct cli *cli, kms_client *c)
{
	Kms__V1__ScheduleKeyDeletionRequest req =
	    KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;

	req.key_id = (char *)cli->key_id;
	req.pending_window_days = cli->days;
	return key_call(cli, c, "ScheduleKeyDeletion", &req.base,
			&kms__v1__schedule_key_deletion_response__descriptor);
}

/* A List call: its answer carries the items in a repeated field. */
struct list_rpc {
	const char *rpc;
	const ProtobufCMessageDescriptor *resp;
	const char *field; /* of the answer, and of the printed object */
	json_t *(*to_json)(const ProtobufCMessage *item);
};

/* A string field of msg, by name (NULL when the message has none). */
static char **str_field(const ProtobufCMessage *msg, const char *name)
{
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(msg->descriptor,
							    name);

	return f != NULL && f->type == PROTOBUF_C_TYPE_STRING
		   ? (char **)((uintptr_t)msg + f->offset)
		   : NULL;
}

/*
 * One page of l from req (whose page_token is set): appends its items to
 * items and sets *next to a kms_strdup'd next_page_token.
 */
static int list_page(kms_client *c, const struct list_rpc *l,
		     const ProtobufCMessage *req, json_t *items, char **next)
{
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(l->resp, l->field);
	ProtobufCMessage *resp = NULL, **list;
	char **token;
	size_t i, n;
	int rc;

	rc = call(c, l->rpc, req, l->resp, &resp);
	if (rc != EXIT_OK)
		return rc;
	token = str_field(resp, "next_page_token");
	if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED ||
	    token == NULL) {
		errmsg("%s: the answer has no %s list", l->rpc, l->field);
		rc = EXIT_LOCAL;
		goto out;
	}
	memcpy(&n, (const unsigned char *)resp + f->quantifier_offset,
	       sizeof(n));
	memcpy(&list, (const unsigned char *)resp + f->offset, sizeof(list));
	for (i = 0; i < n; i++) {
		json_t *item = l->to_json(list[i]);

		if (item == NULL || json_array_append_new(items, item) != 0) {
			errmsg("out of memory");
			rc = EXIT_LOCAL;
			goto out;
		}
	}
	*next = kms_strdup(*token);
out:
	protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

/*
 * Without --page-token, follows every page and prints {field: [...]};
 * with it, prints that one page and its next_page_token. req has
 * page_size, page_token and whatever filter the call takes set; its
 * page_token is the caller's again on return.
 */
static int list_pages(const struct cli *cli, kms_client *c,
		      const struct list_rpc *l, ProtobufCMessage *req)
{
	json_t *o = json_object(), *items = json_array();
	char **req_token = str_field(req, "page_token");
	char *token = NULL, *next = NULL, *saved;
	size_t pages = 0;
	int rc = EXIT_LOCAL;

	if (req_token == NULL) {
		errmsg("%s: the request has no page_token", l->rpc);
		goto out;
	}
	saved = *req_token;
	if (o == NULL || items == NULL)
		goto nomem;
	token = kms_strdup(cli->page_token != NULL ? cli->page_token : "");
	if (token == NULL)
		goto nomem;
	for (;;) {
		*req_token = token;
		rc = list_page(c, l, req, items, &next);
		*req_token = saved;
		if (rc != EXIT_OK)
			goto out;
		if (next == NULL)
			goto nomem;
		if (cli->page_token != NULL || next[0] == '\0')
			break;
		if (strcmp(next, token) == 0 || ++pages >= LIST_MAX_PAGES) {
			errmsg("the server keeps returning page tokens; "
			       "stopped following them");
			rc = EXIT_SERVER;
			goto out;
		}
		kms_free(token);
		token = next;
		next = NULL;
	}
	rc = json_object_set_new(o, l->field, items);
	items = NULL;
	/* One page asked for: report where the next one starts. */
	if (rc == 0 && cli->page_token != NULL)
		rc = json_object_set_new(o, "next_page_token",
					 json_string(next));
	if (rc != 0)
		goto nomem;
	rc = emit(cli, o);
	goto out;
nomem:
	errmsg("out of memory");
	rc = EXIT_LOCAL;
out:
	kms_free(next);
	kms_free(token);
	json_decref(items);
	json_decref(o);
	return rc;
}

static json_t *key_item_json(const ProtobufCMessage *m)
{
	return key_json((const Kms__V1__KeyMetadata *)m);
}

static int cmd_list(const struct cli *cli, kms_client *c)
{
	static const struct list_rpc l = {
	    "ListKeys", &kms__v1__list_keys_response__descriptor, "keys",
	    key_item_json};
	Kms__V1__ListKeysRequest req = KMS__V1__LIST_KEYS_REQUEST__INIT;

	req.page_size = cli->page_size;
	return list_pages(cli, c, &l, &req.base);
}

static json_t *alias_json(const Kms__V1__AliasEntry *a)
{
	json_t *o = json_object();

	if (o == NULL ||
	    json_object_set_new(o, "alias_name", json_string(a->alias_name)) ||
	    json_object_set_new(o, "key_id", json_string(a->key_id)) ||
	    json_object_set_new(o, "created_at_unix",
				json_integer(a->created_at_unix)) ||
	    json_object_set_new(o, "updated_at_unix",
				json_integer(a->updated_at_unix))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *alias_item_json(const ProtobufCMessage *m)
{
	return alias_json((const Kms__V1__AliasEntry *)m);
}

static int cmd_list_aliases(const struct cli *cli, kms_client *c)
{
	static const struct list_rpc l = {
	    "ListAliases", &kms__v1__list_aliases_response__descriptor,
	    "aliases", alias_item_json};
	Kms__V1__ListAliasesRequest req = KMS__V1__LIST_ALIASES_REQUEST__INIT;

	if (cli->key_id_opt != NULL)
		req.key_id = (char *)cli->key_id_opt;
	req.page_size = cli->page_size;
	return list_pages(cli, c, &l, &req.base);
}

/*
 * CreateAlias and UpdateAlias: the same request fields, and answers
 * that both carry the alias as field 1.
 */
static int cmd_put_alias(const struct cli *cli, kms_client *c)
{
	Kms__V1__CreateAliasRequest create = KMS__V1__CREATE_ALIAS_REQUEST__INIT;
	Kms__V1__UpdateAliasRequest update = KMS__V1__UPDATE_ALIAS_REQUEST__INIT;
	Kms__V1__CreateAliasResponse *created = NULL;
	Kms__V1__UpdateAliasResponse *updated = NULL;
	const Kms__V1__AliasEntry *a;
	json_t *o = NULL;
	int rc;

	if (cli->cmd->id == CMD_CREATE_ALIAS) {
		create.alias_name = (char *)cli->alias_name;
		create.key_id = (char *)cli->key_id;
		rc = call(c, "CreateAlias", &create.base,
			  &kms__v1__create_alias_response__descriptor,
			  (ProtobufCMessage **)&created);
		a = rc == EXIT_OK ? created->alias : NULL;
	} else {
		update.alias_name = (char *)cli->alias_name;
		update.key_id = (char *)cli->key_id;
		rc = call(c, "UpdateAlias", &update.base,
			  &kms__v1__update_alias_response__descriptor,
			  (ProtobufCMessage **)&updated);
		a = rc == EXIT_OK ? updated->alias : NULL;
	}
	if (rc != EXIT_OK)
		return rc;
	if (a == NULL) {
		errmsg("the server's answer has no alias");
		rc = EXIT_SERVER;
		goto out;
	}
	o = alias_json(a);
	rc = o != NULL ? emit(cli, o) : EXIT_LOCAL;
out:
	json_decref(o);
	if (created != NULL)
		protobuf_c_message_free_unpacked(&created->base, NULL);
	if (updated != NULL)
		protobuf_c_message_free_unpacked(&updated->base, NULL);
	return rc;
}

static int cmd_delete_alias(const struct cli *cli, kms_client *c)
{
	Kms__V1__DeleteAliasRequest req = KMS__V1__DELETE_ALIAS_REQUEST__INIT;
	Kms__V1__DeleteAliasResponse *resp = NULL;
	json_t *o = NULL;
	int rc;

	req.alias_name = (char *)cli->alias_name;
	rc = call(c, "DeleteAlias", &req.base,
		  &kms__v1__delete_alias_response__descriptor,
		  (ProtobufCMessage **)&resp);
	if (rc != EXIT_OK)
		return rc;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	if (!cli->json) {
		printf("deleted ");
		put_printable(cli->alias_name);
		putchar('\n');
		return EXIT_OK;
	}
	o = json_object();
	if (o == NULL || json_object_set_new(o, "deleted_alias",
					     json_string(cli->alias_name)) != 0) {
		json_decref(o);
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	rc = emit(cli, o);
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
	return decode_opt(b64, opt_name, out);
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

static int cmd_reencrypt(const struct cli *cli, kms_client *c)
{
	Kms__V1__ReEncryptRequest req = KMS__V1__RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__ReEncryptResponse *resp = NULL;
	void **src = NULL, **dst = NULL;
	const struct kv *to_ctx;
	size_t n_to_ctx;
	kms_rpc_status st;
	kms_buf blob = {NULL, 0};
	json_t *o = NULL;
	int rc;

	rc = load_input(cli->blob_b64, "--blob", cli->in_file, &blob);
	if (rc != EXIT_OK)
		return rc;
	rc = EXIT_LOCAL;
	src = ctx_entries(
	    cli->ctx, cli->n_ctx,
	    &kms__v1__re_encrypt_request__source_encryption_context_entry__descriptor);
	/* Without --to-context the new blob keeps the old one's binding. */
	to_ctx = cli->n_to_ctx > 0 ? cli->to_ctx : cli->ctx;
	n_to_ctx = cli->n_to_ctx > 0 ? cli->n_to_ctx : cli->n_ctx;
	dst = ctx_entries(
	    to_ctx, n_to_ctx,
	    &kms__v1__re_encrypt_request__destination_encryption_context_entry__descriptor);
	if (src == NULL || dst == NULL) {
		errmsg("out of memory");
		goto out;
	}
	req.ciphertext_blob.data = blob.data;
	req.ciphertext_blob.len = blob.len;
	req.n_source_encryption_context = cli->n_ctx;
	req.source_encryption_context =
	    (Kms__V1__ReEncryptRequest__SourceEncryptionContextEntry **)src;
	if (cli->key_id_opt != NULL)
		req.source_key_id = (char *)cli->key_id_opt;
	req.destination_key_id = (char *)cli->to_key;
	req.n_destination_encryption_context = n_to_ctx;
	req.destination_encryption_context =
	    (Kms__V1__ReEncryptRequest__DestinationEncryptionContextEntry **)
		dst;
	if (kms_client_reencrypt(c, &req, &resp, &st) != GRPC_STATUS_OK) {
		rc = kmsctl_server_error(&st);
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
	if (o == NULL ||
	    (cli->blob_out == NULL &&
	     json_set_bytes(o, "ciphertext_blob", &resp->ciphertext_blob)) ||
	    json_object_set_new(o, "key_id", json_string(resp->key_id)) ||
	    json_object_set_new(o, "key_version",
				json_integer(resp->key_version)) ||
	    json_object_set_new(o, "source_key_id",
				json_string(resp->source_key_id)) ||
	    json_object_set_new(o, "source_key_version",
				json_integer(resp->source_key_version))) {
		errmsg("out of memory");
		goto out;
	}
	rc = emit(cli, o);
out:
	json_decref(o);
	kms_client_reencrypt_free(resp);
	ctx_entries_free(src, cli->n_ctx);
	ctx_entries_free(dst, n_to_ctx);
	kms_buf_free(&blob);
	return rc;
}

/* The summary of a rewrap run, as 'field: value' lines or one object. */
static void rewrap_report(const struct rewrap_summary *s, void *arg)
{
	const struct cli *cli = arg;
	json_t *o = json_object();

	if (o == NULL ||
	    json_object_set_new(o, "input", json_string(s->input)) ||
	    json_object_set_new(o, "output", json_string(s->output)) ||
	    json_object_set_new(o, "to", json_string(s->to)) ||
	    json_object_set_new(o, "state", json_string(s->state)) ||
	    json_object_set_new(o, "errors", json_string(s->errors)) ||
	    json_object_set_new(o, "lines_done", json_u64(s->lines_done)) ||
	    json_object_set_new(o, "lines_total", json_u64(s->lines_total)) ||
	    json_object_set_new(o, "resumed_at", json_u64(s->resumed_at)) ||
	    json_object_set_new(o, "rewrapped", json_u64(s->rewrapped)) ||
	    json_object_set_new(o, "failed", json_u64(s->failed)) ||
	    json_object_set_new(o, "failed_total", json_u64(s->failed_total)) ||
	    json_object_set_new(o, "elapsed_seconds",
				json_real(s->elapsed_seconds)) ||
	    json_object_set_new(o, "items_per_second",
				json_real(s->items_per_second)) ||
	    json_object_set_new(o, "complete", json_boolean(s->complete)) ||
	    json_object_set_new(o, "stopped", json_string(s->stopped))) {
		errmsg("out of memory for the summary");
	} else {
		emit(cli, o);
	}
	json_decref(o);
	fflush(stdout);
}

static int cmd_rewrap(struct cli *cli, kms_client *c)
{
	cli->rewrap.in_path = cli->in_file;
	cli->rewrap.to = cli->to_key;
	cli->rewrap.json = cli->json;
	return rewrap_run(c, &cli->rewrap, rewrap_report, cli);
}

/*
 * The replication lag of each link of a secondary region, when the caller
 * may see it (an administrator): a health check shows how far behind its
 * primary a secondary is. Anyone else gets the health status alone.
 */
static int region_lag_json(kms_client *c, json_t *o)
{
	Kms__V1__RegionStatusRequest req = KMS__V1__REGION_STATUS_REQUEST__INIT;
	Kms__V1__RegionStatusResponse *resp = NULL;
	json_t *lags;
	kms_rpc_status st;
	int bad = 0;

	if (kms_client_call(c, "/kms.v1.Operator/RegionStatus", &req.base,
			    &kms__v1__region_status_response__descriptor,
			    (ProtobufCMessage **)&resp, &st) != 0)
		return 0;
	for (size_t i = 0; i < resp->n_links && !bad; i++) {
		const Kms__V1__RegionLinkStatus *l = resp->links[i];
		char line[256];

		if (strcmp(l->role, "secondary") != 0)
			continue;
		snprintf(line, sizeof(line), "%s %" PRIu64 " %" PRId64, l->peer_region,
			 l->lag_entries, l->lag_seconds);
		lags = json_object_get(o, "region_lag");
		if (lags == NULL) {
			lags = json_array();
			bad = lags == NULL || json_object_set_new(o, "region_lag", lags) != 0;
		}
		bad = bad || json_array_append_new(lags, json_string(line)) != 0;
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return bad ? -1 : 0;
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
		return kmsctl_server_error(&st);
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
	    json_object_set_new(o, "status", json_string(name)) != 0 ||
	    region_lag_json(c, o) != 0)
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
		return kmsctl_server_error(&st);
	return EXIT_OK;
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
	    "term", "commit_index", "applied_index", "lag",  "error",
	    "hsm_secret_keys", "not_serving_reason"};
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
	values[10] = json_u64(m->hsm_secret_keys);
	values[11] = json_string(m->not_serving_reason);
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
	COL_HSM_KEYS,
	COL_ERROR,
	NCOLS
};

static const char *const col_names[NCOLS] = {
    "ID",   "ADDRESS", "RAFT-ADDRESS", "ROLE",     "RAFT-ROLE",
    "TERM", "COMMIT",  "APPLIED",      "LAG",      "HSM-KEYS", "ERROR"};

/* One member's cells; the strings point into the response or into num. */
struct status_row {
	const char *cell[NCOLS];
	char num[6][24]; /* id, term, commit, applied, lag, HSM keys */
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
	const uint64_t nums[6] = {m->id,	   m->term, m->commit_index,
				  m->applied_index, m->lag,  m->hsm_secret_keys};
	static const enum status_col num_cols[6] = {COL_ID,	 COL_TERM, COL_COMMIT,
						    COL_APPLIED, COL_LAG,  COL_HSM_KEYS};
	size_t i;

	for (i = 0; i < 6; i++) {
		snprintf(r->num[i], sizeof(r->num[i]), "%" PRIu64, nums[i]);
		r->cell[num_cols[i]] = i > 0 && unknown ? "-" : r->num[i];
	}
	r->cell[COL_ADDRESS] = cell_str(m->grpc_address);
	r->cell[COL_RAFT_ADDRESS] = cell_str(m->raft_address);
	r->cell[COL_ROLE] = cell_str(m->role);
	r->cell[COL_RAFT_ROLE] = cell_str(m->raft_role);
	/* Unreachable: why it could not be asked; else why it refuses calls. */
	r->cell[COL_ERROR] = cell_str(m->error[0] != '\0' ? m->error : m->not_serving_reason);
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
		if (resp->members[i]->error[0] != '\0' ||
		    resp->members[i]->not_serving_reason[0] != '\0')
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
	if (json_object_set_new(o, "leader_id", json_u64(resp->leader_id)) != 0 ||
	    json_object_set_new(o, "region", json_string(resp->region)) != 0)
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

static int parse_u32(const char *s, const char *opt, uint32_t min, uint32_t max,
		     uint32_t *out);
static const char *opt_name(int id);
/* ---- quorum (kms.v1.Operator) ---- */

static int parse_admin_ids(struct cli *cli, int n, char **args);

/* The operands of set-operators: M, then NAME:PUBKEYFILE[,...] (one or more). */
static int parse_operator_set(struct cli *cli, int n, char **args)
{
	size_t cap = 0, k = 0;
	kms_err err = {0};
	uint32_t m;

	if (n < 2)
		return usage_error("set-operators needs M and NAME:PUBKEYFILE[,...]");
	if (parse_u32(args[0], "set-operators M", 1, KMS_OPERATORS_MAX, &m) != EXIT_OK)
		return EXIT_LOCAL;
	for (int a = 1; a < n; a++) {
		cap++;
		for (const char *p = args[a]; *p != '\0'; p++)
			cap += *p == ',';
	}
	if (cap > KMS_OPERATORS_MAX)
		return usage_error("set-operators: more than %d operators", KMS_OPERATORS_MAX);
	cli->op_records = kms_calloc(cap, sizeof(*cli->op_records));
	cli->op_keys = kms_calloc(cap, sizeof(*cli->op_keys));
	cli->op_operators.operators = kms_calloc(cap, sizeof(*cli->op_operators.operators));
	if (cli->op_records == NULL || cli->op_keys == NULL || cli->op_operators.operators == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	for (int a = 1; a < n; a++) {
		char *copy = kms_strdup(args[a]), *save = NULL, *item;

		if (copy == NULL) {
			errmsg("out of memory");
			return EXIT_LOCAL;
		}
		for (item = strtok_r(copy, ",", &save); item != NULL;
		     item = strtok_r(NULL, ",", &save)) {
			char *colon = strchr(item, ':');
			Kms__V1__OperatorRecord *o = &cli->op_records[k];

			kms__v1__operator_record__init(o);
			if (colon == NULL || colon == item || colon[1] == '\0') {
				kms_free(copy);
				return usage_error("set-operators: '%s' is not NAME:PUBKEYFILE", item);
			}
			*colon = '\0';
			if (kms_ed25519_public_from_file(colon + 1, cli->op_keys[k], &err) != KMS_OK) {
				kms_free(copy);
				errmsg("%s", err.msg);
				return EXIT_LOCAL;
			}
			o->name = kms_strdup(item);
			if (o->name == NULL) {
				kms_free(copy);
				errmsg("out of memory");
				return EXIT_LOCAL;
			}
			o->public_key.data = cli->op_keys[k];
			o->public_key.len = KMS_ED25519_PUB_LEN;
			cli->op_operators.operators[k] = o;
			cli->op_operators.n_operators = ++k;
		}
		kms_free(copy);
	}
	cli->op_operators.threshold = m;
	if (kms_operator_set_check(cli->op_operators.operators, k, m, &err) != KMS_OK)
		return usage_error("set-operators: %s", err.msg);
	return EXIT_OK;
}

/* The operands and options of 'quorum propose OPERATION [ARGS]'. */
static int parse_operation(struct cli *cli, int n, char **args)
{
	Kms__V1__RootOperation *op = &cli->op;
	const char *name = args[0];
	uint64_t want = 0; /* the options this operation takes */
	kms_err err = {0};
	int rc = EXIT_OK, rest = n - 1;

	kms__v1__root_operation__init(op);
	if (strcmp(name, "set-administrators") == 0) {
		if (rest < 1)
			return usage_error("set-administrators needs ID[,ID...]");
		if ((rc = parse_admin_ids(cli, rest, args + 1)) != EXIT_OK)
			return rc;
		kms__v1__set_administrators_operation__init(&cli->op_admins);
		cli->op_admins.administrators = cli->admins;
		cli->op_admins.n_administrators = cli->n_admins;
		op->op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
		op->set_administrators = &cli->op_admins;
		rest = 0;
	} else if (strcmp(name, "set-operators") == 0) {
		kms__v1__set_operators_operation__init(&cli->op_operators);
		if ((rc = parse_operator_set(cli, rest, args + 1)) != EXIT_OK)
			return rc;
		op->op_case = KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS;
		op->set_operators = &cli->op_operators;
		rest = 0;
	} else if (strcmp(name, "add-member") == 0) {
		want = BIT(OPT_ID) | BIT(OPT_RAFT) | BIT(OPT_GRPC) | BIT(OPT_TRANSPORT_KEY) |
		       BIT(OPT_GRANT_TTL);
		if (cli->node_id == 0 || cli->raft_address == NULL || cli->grpc_address == NULL ||
		    cli->transport_key == NULL)
			return usage_error("add-member needs --id N --raft HOST:PORT --grpc "
					   "HOST:PORT --transport-key-sha256 HEX");
		kms__v1__add_member_operation__init(&cli->op_add);
		cli->op_add.id = cli->node_id;
		cli->op_add.raft_address = (char *)cli->raft_address;
		cli->op_add.grpc_address = (char *)cli->grpc_address;
		if (kms_hex_decode(cli->transport_key, cli->op_fp, sizeof(cli->op_fp),
				   "--transport-key-sha256", &err) != KMS_OK)
			return usage_error("%s", err.msg);
		cli->op_add.transport_key_sha256.data = cli->op_fp;
		cli->op_add.transport_key_sha256.len = sizeof(cli->op_fp);
		cli->op_add.grant_ttl_seconds = cli->grant_ttl_s != 0 ? cli->grant_ttl_s : 600;
		op->op_case = KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER;
		op->add_member = &cli->op_add;
	} else if (strcmp(name, "remove-member") == 0) {
		want = BIT(OPT_ID);
		if (cli->node_id == 0)
			return usage_error("remove-member needs --id N");
		kms__v1__remove_member_operation__init(&cli->op_remove);
		cli->op_remove.id = cli->node_id;
		op->op_case = KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER;
		op->remove_member = &cli->op_remove;
	} else if (strcmp(name, "destroy-key") == 0) {
		if (rest != 1)
			return usage_error("destroy-key needs one KEY_ID");
		kms__v1__destroy_key_operation__init(&cli->op_destroy);
		cli->op_destroy.key_id = args[1];
		op->op_case = KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY;
		op->destroy_key = &cli->op_destroy;
		rest = 0;
	} else if (strcmp(name, "rotate-domain-key") == 0) {
		kms__v1__rotate_domain_key_operation__init(&cli->op_rotate);
		op->op_case = KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY;
		op->rotate_domain_key = &cli->op_rotate;
	} else if (strcmp(name, "promote-region") == 0) {
		if (rest != 1)
			return usage_error("promote-region needs the REGION this one is a secondary of");
		kms__v1__promote_region_operation__init(&cli->op_promote);
		cli->op_promote.peer_region = args[1];
		op->op_case = KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION;
		op->promote_region = &cli->op_promote;
		rest = 0;
	} else if (strcmp(name, "unlink-region") == 0) {
		if (rest != 1)
			return usage_error("unlink-region needs the REGION to unlink");
		kms__v1__unlink_region_operation__init(&cli->op_unlink);
		cli->op_unlink.peer_region = args[1];
		op->op_case = KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION;
		op->unlink_region = &cli->op_unlink;
		rest = 0;
	} else if (strcmp(name, "cancel-proposal") == 0) {
		if (rest != 1)
			return usage_error("cancel-proposal needs one proposal ID");
		kms__v1__cancel_proposal_operation__init(&cli->op_cancel);
		cli->op_cancel.proposal_id = args[1];
		op->op_case = KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL;
		op->cancel_proposal = &cli->op_cancel;
		rest = 0;
	} else {
		return usage_error("unknown operation '%s' (set-administrators, set-operators, "
				   "add-member, remove-member, destroy-key, rotate-domain-key, "
				   "promote-region, unlink-region, cancel-proposal)",
				   name);
	}
	if (rest > 0)
		return usage_error("unexpected argument '%s'", args[1]);
	{
		uint64_t extra = cli->seen & ~(GLOBAL_OPTS | BIT(OPT_TTL) | want);

		for (int bit = 0; extra != 0; bit++)
			if (extra & (UINT64_C(1) << bit))
				return usage_error("--%s does not apply to quorum propose %s",
						   opt_name(OPT_BASE + bit), name);
	}
	if (kms_root_operation_check(op, &err) != KMS_OK)
		return usage_error("%s: %s", name, err.msg);
	return EXIT_OK;
}

/* After the subcommand: its operands, and the options it needs. */
static int quorum_args_check(struct cli *cli, int nargs, char **args)
{
	const char *sub = cli->sub->name;
	uint64_t extra = cli->seen & ~(GLOBAL_OPTS | cli->sub->opts);
	int rc;

	for (int bit = 0; extra != 0; bit++)
		if (extra & (UINT64_C(1) << bit))
			return usage_error("--%s does not apply to quorum %s",
					   opt_name(OPT_BASE + bit), sub);
	if (cli->sub->operands != NULL && optind >= nargs)
		return usage_error("quorum %s needs %s", sub, cli->sub->operands);
	switch (cli->sub->id) {
	case SUB_PROPOSE:
		rc = parse_operation(cli, nargs - optind, args + optind);
		optind = nargs;
		return rc;
	case SUB_APPROVE:
		if (cli->operator_name == NULL)
			return usage_error("quorum approve needs --operator NAME");
		if ((cli->signing_key == NULL) == (cli->signature_b64 == NULL))
			return usage_error("quorum approve needs --signing-key FILE or "
					   "--signature B64 (one of them)");
		/* fall through */
	case SUB_SHOW:
	case SUB_CANCEL:
		cli->proposal_id = args[optind++];
		return EXIT_OK;
	case SUB_SIGN:
		if (cli->digest_hex == NULL || cli->signing_key == NULL)
			return usage_error("quorum sign needs --digest HEX and --signing-key FILE");
		return EXIT_OK;
	default:
		return EXIT_OK;
	}
}

static json_t *hex_json(const uint8_t *p, size_t n)
{
	char *h = kms_malloc(2 * n + 1);
	json_t *j;

	if (h == NULL)
		return NULL;
	kms_hex_encode(p, n, h);
	j = json_string(h);
	kms_free(h);
	return j;
}

/* The SHA-256 of each certificate (DER) of a PEM, as 'openssl x509
 * -fingerprint -sha256' shows it: what operators compare out of band. */
static json_t *pem_fingerprints(const ProtobufCBinaryData *pem)
{
	BIO *bio = BIO_new_mem_buf(pem->data, (int)pem->len);
	json_t *list = json_array();
	X509 *x;

	while (bio != NULL && list != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		uint8_t md[SHA256_DIGEST_LENGTH];
		unsigned n = 0;

		if (X509_digest(x, EVP_sha256(), md, &n) == 1)
			json_array_append_new(list, hex_json(md, n));
		X509_free(x);
	}
	ERR_clear_error();
	BIO_free(bio);
	return list;
}

static int link_region_json(json_t *o, const Kms__V1__LinkRegionOperation *l)
{
	json_t *eps = json_array();
	int bad = eps == NULL;

	for (size_t i = 0; !bad && i < l->n_peer_endpoints; i++)
		bad |= json_array_append_new(eps, json_string(l->peer_endpoints[i]));
	bad |= json_object_set_new(o, "peer_region", json_string(l->peer_region)) ||
	       json_object_set_new(o, "role", json_string(kms_region_role_name(l->role))) ||
	       json_object_set_new(o, "mode", json_string(kms_region_mode_name(l->mode))) ||
	       json_object_set_new(o, "peer_endpoints", eps) ||
	       json_object_set_new(o, "peer_trust_domain", json_string(l->peer_trust_domain)) ||
	       json_object_set_new(o, "peer_node_ca_sha256", pem_fingerprints(&l->peer_node_ca_pem));
	return bad ? -1 : 0;
}

/* What an operation does, as fields of o. */
static int operation_json(json_t *o, const Kms__V1__RootOperation *op)
{
	json_t *list = NULL;
	int bad = json_object_set_new(o, "operation", json_string(kms_root_operation_name(op)));

	switch (op != NULL ? op->op_case : KMS__V1__ROOT_OPERATION__OP__NOT_SET) {
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS:
		list = json_array();
		for (size_t i = 0; list != NULL && i < op->set_administrators->n_administrators;
		     i++)
			bad |= json_array_append_new(
				list, json_string(op->set_administrators->administrators[i]));
		bad |= json_object_set_new(o, "administrators", list);
		break;
	case KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS:
		list = json_array();
		for (size_t i = 0; list != NULL && i < op->set_operators->n_operators; i++) {
			const Kms__V1__OperatorRecord *r = op->set_operators->operators[i];
			json_t *e = json_object();

			bad |= e == NULL ||
			       json_object_set_new(e, "name", json_string(r->name)) ||
			       json_object_set_new(e, "public_key",
						   hex_json(r->public_key.data, r->public_key.len));
			bad |= json_array_append_new(list, e);
		}
		bad |= json_object_set_new(o, "operators", list);
		bad |= json_object_set_new(o, "new_threshold",
					   json_integer(op->set_operators->threshold));
		break;
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER:
		bad |= json_object_set_new(o, "node_id", json_u64(op->add_member->id));
		bad |= json_object_set_new(o, "raft_address",
					   json_string(op->add_member->raft_address));
		bad |= json_object_set_new(o, "grpc_address",
					   json_string(op->add_member->grpc_address));
		bad |= json_object_set_new(o, "transport_key_sha256",
					   hex_json(op->add_member->transport_key_sha256.data,
						    op->add_member->transport_key_sha256.len));
		bad |= json_object_set_new(o, "grant_ttl_seconds",
					   json_integer(op->add_member->grant_ttl_seconds));
		break;
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		bad |= json_object_set_new(o, "node_id", json_u64(op->remove_member->id));
		break;
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		bad |= json_object_set_new(o, "key_id", json_string(op->destroy_key->key_id));
		break;
	case KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL:
		bad |= json_object_set_new(o, "cancels",
					   json_string(op->cancel_proposal->proposal_id));
		break;
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		/* What the operators approve: who holds a share, and how many restore. */
		list = json_array();
		for (size_t i = 0; list != NULL && i < op->backup_export->n_custodians; i++) {
			const Kms__V1__CustodianRecord *r = op->backup_export->custodians[i];
			json_t *e = json_object();

			bad |= e == NULL ||
			       json_object_set_new(e, "name", json_string(r->name)) ||
			       json_object_set_new(e, "public_key",
						   hex_json(r->public_key.data, r->public_key.len));
			bad |= json_array_append_new(list, e);
		}
		bad |= json_object_set_new(o, "custodians", list);
		bad |= json_object_set_new(o, "shares_to_restore",
					   json_integer(op->backup_export->threshold));
		break;
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		bad |= link_region_json(o, op->link_region);
		break;
	case KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION:
		bad |= json_object_set_new(o, "peer_region",
					   json_string(op->promote_region->peer_region));
		break;
	case KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION:
		bad |= json_object_set_new(o, "peer_region",
					   json_string(op->unlink_region->peer_region));
		break;
	default:
		break;
	}
	return bad ? -1 : 0;
}

static json_t *proposal_json(const Kms__V1__Proposal *p)
{
	json_t *o = json_object(), *apps = json_array();
	int bad = o == NULL || apps == NULL;

	for (size_t i = 0; !bad && i < p->n_approvals; i++) {
		json_t *e = json_object();

		bad |= e == NULL ||
		       json_object_set_new(e, "operator",
					   json_string(p->approvals[i]->operator_name)) ||
		       json_object_set_new(e, "approved_at_unix",
					   json_integer(p->approvals[i]->approved_at_unix));
		bad |= json_array_append_new(apps, e);
	}
	bad |= o == NULL || json_object_set_new(o, "proposal_id", json_string(p->id)) ||
	       json_object_set_new(o, "digest", json_string(p->digest)) ||
	       json_object_set_new(o, "state", json_string(p->state)) ||
	       operation_json(o, p->operation) ||
	       json_object_set_new(o, "proposer", json_string(p->proposer)) ||
	       json_object_set_new(o, "created_at_unix", json_integer(p->created_at_unix)) ||
	       json_object_set_new(o, "expires_at_unix", json_integer(p->expires_at_unix)) ||
	       json_object_set_new(o, "threshold", json_integer(p->threshold)) ||
	       json_object_set_new(o, "approvals", apps) ||
	       json_object_set_new(o, "result", json_string(p->result)) ||
	       json_object_set_new(o, "cluster_id",
				   hex_json(p->cluster_id.data, p->cluster_id.len));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int emit_proposal(const struct cli *cli, const Kms__V1__Proposal *p)
{
	json_t *o = p != NULL ? proposal_json(p) : NULL;
	int rc;

	if (o == NULL) {
		errmsg("cannot build the output (the server sent no proposal, or a string "
		       "that is not UTF-8)");
		return EXIT_LOCAL;
	}
	rc = emit(cli, o);
	json_decref(o);
	return rc;
}

/* Asks on the terminal; refuses when there is none to ask on. */
static int confirm(const Kms__V1__Proposal *p)
{
	char line[16];
	FILE *tty = fopen("/dev/tty", "r+");

	if (tty == NULL) {
		errmsg("no terminal to confirm on: check the proposal above and give --yes");
		return 0;
	}
	fprintf(tty, "approve %s of proposal %s? type 'yes': ", kms_root_operation_name(p->operation),
		p->id);
	fflush(tty);
	if (fgets(line, sizeof(line), tty) == NULL)
		line[0] = '\0';
	fclose(tty);
	return strcmp(line, "yes\n") == 0;
}

/*
 * What the server says the proposal is must be what the operator signs:
 * the digest is computed again here from the operation shown, and a
 * mismatch refuses to sign (a server that lies about the operation cannot
 * get a signature for another one).
 */
static int digest_matches(const Kms__V1__Proposal *p, uint8_t digest[KMS_QUORUM_DIGEST_LEN])
{
	uint8_t mine[KMS_QUORUM_DIGEST_LEN];
	kms_err err = {0};

	if (kms_hex_decode(p->digest, digest, KMS_QUORUM_DIGEST_LEN, "digest", &err) != KMS_OK ||
	    kms_quorum_digest(p->cluster_id.data, p->cluster_id.len, p->id, p->expires_at_unix,
			      p->operation, mine, &err) != KMS_OK) {
		errmsg("cannot check the proposal's digest: %s", err.msg);
		return 0;
	}
	if (memcmp(mine, digest, sizeof(mine)) != 0) {
		errmsg("the server's digest of proposal %s is not the canonical encoding of the "
		       "operation it shows: refusing to sign",
		       p->id);
		return 0;
	}
	return 1;
}

static Kms__V1__Proposal *get_proposal(kms_client *c, const char *id, int *rc)
{
	Kms__V1__GetOperationRequest req = KMS__V1__GET_OPERATION_REQUEST__INIT;
	Kms__V1__GetOperationResponse *resp = NULL;
	Kms__V1__Proposal *p;

	req.proposal_id = (char *)id;
	*rc = operator_call(c, "GetOperation", &req.base,
			    &kms__v1__get_operation_response__descriptor,
			    (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
	if (*rc != EXIT_OK)
		return NULL;
	p = resp->proposal;
	resp->proposal = NULL;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	if (p == NULL) {
		errmsg("the server sent no proposal");
		*rc = EXIT_LOCAL;
	}
	return p;
}

static int quorum_approve(const struct cli *cli, kms_client *c)
{
	Kms__V1__ApproveOperationRequest req = KMS__V1__APPROVE_OPERATION_REQUEST__INIT;
	Kms__V1__ApproveOperationResponse *resp = NULL;
	uint8_t digest[KMS_QUORUM_DIGEST_LEN], sig[KMS_ED25519_SIG_LEN];
	kms_buf given = {0};
	kms_err err = {0};
	Kms__V1__Proposal *p;
	int rc;

	p = get_proposal(c, cli->proposal_id, &rc);
	if (p == NULL)
		return rc;
	/* What is being approved goes to stderr, always: stdout is the answer. */
	{
		json_t *o = proposal_json(p);

		if (o != NULL) {
			fputs("kmsctl: approving:\n", stderr);
			json_dumpf(o, stderr, JSON_INDENT(2));
			fputc('\n', stderr);
			json_decref(o);
		}
	}
	rc = EXIT_LOCAL;
	if (!digest_matches(p, digest))
		goto out;
	if (!cli->yes && !confirm(p)) {
		errmsg("not approved");
		goto out;
	}
	if (cli->signature_b64 != NULL) {
		enum b64_status bs = b64_decode(cli->signature_b64, strlen(cli->signature_b64),
						4 * KMS_ED25519_SIG_LEN, &given);

		if (bs != B64_OK) {
			errmsg("--signature %s", b64_status_text(bs));
			goto out;
		}
		req.signature.data = given.data;
		req.signature.len = given.len;
	} else {
		if (kms_ed25519_sign_file(cli->signing_key, digest, sig, NULL, &err) != KMS_OK) {
			errmsg("%s", err.msg);
			goto out;
		}
		req.signature.data = sig;
		req.signature.len = sizeof(sig);
	}
	req.proposal_id = p->id;
	req.operator_name = (char *)cli->operator_name;
	rc = operator_call(c, "ApproveOperation", &req.base,
			   &kms__v1__approve_operation_response__descriptor,
			   (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
	if (rc == EXIT_OK)
		rc = emit_proposal(cli, resp->proposal);
out:
	if (resp != NULL)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	protobuf_c_message_free_unpacked(&p->base, NULL);
	kms_buf_free(&given);
	return rc;
}

static int quorum_sign(const struct cli *cli)
{
	uint8_t digest[KMS_QUORUM_DIGEST_LEN], sig[KMS_ED25519_SIG_LEN];
	kms_err err = {0};
	size_t cap = 0;
	char *b64;
	json_t *o;
	int rc;

	if (kms_hex_decode(cli->digest_hex, digest, sizeof(digest), "--digest", &err) != KMS_OK)
		return usage_error("%s", err.msg);
	if (kms_ed25519_sign_file(cli->signing_key, digest, sig, NULL, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	b64 = b64_encode(sig, sizeof(sig), &cap);
	if (b64 == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	if (!cli->json) {
		puts(b64);
		kms_free(b64);
		return EXIT_OK;
	}
	o = json_object();
	rc = o != NULL && json_object_set_new(o, "signature", json_string(b64)) == 0
		     ? emit(cli, o)
		     : EXIT_LOCAL;
	json_decref(o);
	kms_free(b64);
	return rc;
}

static int cmd_quorum(const struct cli *cli, kms_client *c)
{
	int rc;

	switch (cli->sub->id) {
	case SUB_PROPOSE: {
		Kms__V1__ProposeOperationRequest req = KMS__V1__PROPOSE_OPERATION_REQUEST__INIT;
		Kms__V1__ProposeOperationResponse *resp = NULL;

		req.operation = (Kms__V1__RootOperation *)&cli->op;
		req.ttl_seconds = cli->ttl_s;
		rc = operator_call(c, "ProposeOperation", &req.base,
				   &kms__v1__propose_operation_response__descriptor,
				   (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
		if (rc != EXIT_OK)
			return rc;
		rc = emit_proposal(cli, resp->proposal);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		return rc;
	}
	case SUB_APPROVE:
		return quorum_approve(cli, c);
	case SUB_SHOW: {
		Kms__V1__Proposal *p = get_proposal(c, cli->proposal_id, &rc);

		if (p == NULL)
			return rc;
		rc = emit_proposal(cli, p);
		protobuf_c_message_free_unpacked(&p->base, NULL);
		return rc;
	}
	case SUB_CANCEL: {
		Kms__V1__CancelOperationRequest req = KMS__V1__CANCEL_OPERATION_REQUEST__INIT;
		Kms__V1__CancelOperationResponse *resp = NULL;

		req.proposal_id = (char *)cli->proposal_id;
		rc = operator_call(c, "CancelOperation", &req.base,
				   &kms__v1__cancel_operation_response__descriptor,
				   (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
		if (rc != EXIT_OK)
			return rc;
		rc = emit_proposal(cli, resp->proposal);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		return rc;
	}
	case SUB_LIST: {
		Kms__V1__ListOperationsRequest req = KMS__V1__LIST_OPERATIONS_REQUEST__INIT;
		Kms__V1__ListOperationsResponse *resp = NULL;
		json_t *o = json_object(), *list = json_array();

		rc = operator_call(c, "ListOperations", &req.base,
				   &kms__v1__list_operations_response__descriptor,
				   (ProtobufCMessage **)&resp, kms_client_timeout_ms(c));
		if (rc != EXIT_OK || o == NULL || list == NULL)
			goto list_out;
		if (!cli->json) {
			for (size_t i = 0; i < resp->n_proposals; i++) {
				const Kms__V1__Proposal *p = resp->proposals[i];

				printf("%s %s %s approvals %zu/%u\n", p->id, p->state,
				       kms_root_operation_name(p->operation), p->n_approvals,
				       p->threshold);
			}
			goto list_out;
		}
		for (size_t i = 0; i < resp->n_proposals; i++)
			if (json_array_append_new(list, proposal_json(resp->proposals[i])) != 0)
				rc = EXIT_LOCAL;
		if (rc == EXIT_OK && json_object_set(o, "proposals", list) == 0)
			rc = emit(cli, o);
	list_out:
		json_decref(list);
		json_decref(o);
		if (resp != NULL)
			protobuf_c_message_free_unpacked(&resp->base, NULL);
		return rc;
	}
	default:
		return EXIT_LOCAL;
	}
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

/* Digits only, no sign or space, within a uint64_t. */
static int parse_digits_u64(const char *s, const char **end, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*end = p;
	*out = v;
	return p == s ? -1 : 0;
}

static int parse_u64(const char *s, const char *opt, uint64_t *out)
{
	const char *end;

	if (parse_digits_u64(s, &end, out) != 0 || *end != '\0')
		return usage_error("%s wants a whole number, not '%s'", opt, s);
	return EXIT_OK;
}

/* Seconds, or a whole number with one unit: s, m, h or d. */
static int parse_period(const char *s, uint64_t *out)
{
	static const char units[] = "smhd";
	static const uint64_t seconds[] = {1, 60, 3600, 86400};
	const char *end = s, *unit;
	uint64_t v = 0, mult = 0;

	if (parse_digits_u64(s, &end, &v) == 0) {
		unit = end[0] != '\0' ? strchr(units, end[0]) : NULL;
		if (end[0] == '\0')
			mult = 1;
		else if (unit != NULL && end[1] == '\0')
			mult = seconds[unit - units];
	}
	if (mult == 0 || v > UINT64_MAX / mult)
		return usage_error("--period wants seconds or a whole number "
				   "with s, m, h or d (90d), not '%s'",
				   s);
	*out = v * mult;
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

/* One K=V of --context or --to-context (opt) into list, n entries so far. */
static int add_context(struct kv *list, size_t *n, const char *opt,
		       const char *arg)
{
	char *copy, *eq;
	size_t i;

	eq = strchr(arg, '=');
	if (eq == NULL || eq == arg)
		return usage_error("%s '%s' is not K=V", opt, arg);
	copy = kms_strdup(arg);
	if (copy == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	eq = copy + (eq - arg);
	*eq = '\0';
	for (i = 0; i < *n; i++) {
		if (strcmp(list[i].key, copy) == 0) {
			kms_free(copy);
			return usage_error("%s key '%s' given twice", opt,
					   list[i].key);
		}
	}
	list[*n].key = copy;
	list[*n].value = eq + 1;
	(*n)++;
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
	uint64_t extra;
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
		if (extra & (UINT64_C(1) << bit))
			return usage_error("--%s does not apply to %s %s",
					   opt_name(OPT_BASE + bit), cmd, sub);
	if (cli->cmd->id == CMD_QUORUM)
		return quorum_args_check(cli, nargs, args);
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
	case OPT_MULTI_REGION:
		cli->multi_region = 1;
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
		return add_context(cli->ctx, &cli->n_ctx, "--context", arg);
	case OPT_TO_CONTEXT:
		return add_context(cli->to_ctx, &cli->n_to_ctx, "--to-context",
				   arg);
	case OPT_TO:
		cli->to_key = arg;
		return EXIT_OK;
	case OPT_OUT:
		cli->rewrap.out_path = arg;
		return EXIT_OK;
	case OPT_STATE:
		cli->rewrap.state_path = arg;
		return EXIT_OK;
	case OPT_ERRORS:
		cli->rewrap.errors_path = arg;
		return EXIT_OK;
	case OPT_BATCH:
		return parse_u32(arg, "--batch", 1, REWRAP_BATCH_MAX,
				 &cli->rewrap.batch);
	case OPT_PARALLEL:
		return parse_u32(arg, "--parallel", 1, REWRAP_PARALLEL_MAX,
				 &cli->rewrap.parallel);
	case OPT_STOP_ON_ERROR:
		cli->rewrap.stop_on_error = 1;
		return EXIT_OK;
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
	case OPT_POLICY_FILE:
		cli->policy_file = arg;
		return EXIT_OK;
	case OPT_PERIOD:
		return parse_period(arg, &cli->period_s);
	case OPT_MAX_ENCRYPTIONS:
		return parse_u64(arg, "--max-encryptions", &cli->max_encryptions);
	case OPT_DAYS:
		return parse_u32(arg, "--days", 1, UINT32_MAX, &cli->days);
	case OPT_TTL:
		return parse_u32(arg, "--ttl", 1, KMS_PROPOSAL_TTL_MAX, &cli->ttl_s);
	case OPT_OPERATOR:
		cli->operator_name = arg;
		return EXIT_OK;
	case OPT_SIGNING_KEY:
		cli->signing_key = arg;
		return EXIT_OK;
	case OPT_SIGNATURE:
		cli->signature_b64 = arg;
		return EXIT_OK;
	case OPT_YES:
		cli->yes = 1;
		return EXIT_OK;
	case OPT_DIGEST:
		cli->digest_hex = arg;
		return EXIT_OK;
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

/* What a command needs of its options, checked before any connection. */
static int check_required(const struct cli *cli)
{
	if (cli->policy_file != NULL && cli->n_grants > 0)
		return usage_error("--grant and --policy-file exclude each other");
	switch (cli->cmd->id) {
	case CMD_REENCRYPT:
		if (cli->to_key == NULL)
			return usage_error("re-encrypt needs --to KEY_ID");
		return EXIT_OK;
	case CMD_REWRAP:
		if (cli->to_key == NULL)
			return usage_error("rewrap needs --to KEY_ID");
		if (cli->rewrap.out_path == NULL)
			return usage_error("rewrap needs --out FILE (where the state "
					   "of a resumable job lives too)");
		return EXIT_OK;
	case CMD_SET_ROTATION:
		if (!(cli->seen & (BIT(OPT_PERIOD) | BIT(OPT_MAX_ENCRYPTIONS))))
			return usage_error("set-rotation-policy needs --period "
					   "or --max-encryptions (or both)");
		return EXIT_OK;
	case CMD_PUT_POLICY:
		/* Forgetting --grant must not silently lock everyone out. */
		if (cli->policy_file == NULL && cli->n_grants == 0)
			return usage_error(
			    "put-key-policy needs --grant or --policy-file (an "
			    "empty policy: a file with {\"grants\": []})");
		return EXIT_OK;
	default:
		return EXIT_OK;
	}
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
	cli->to_ctx = kms_calloc((size_t)argc + 1, sizeof(*cli->to_ctx));
	if (cli->grants == NULL || cli->ctx == NULL || cli->to_ctx == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}

	rc = parse_opts(cli, argc, argv, 1, &done);
	if (rc != EXIT_OK || done)
		return rc;
	if (optind >= argc)
		return usage_error("no command given");
	/* Offline, with options of its own (tools/audit_cmd.c). */
	if (strcmp(argv[optind], "audit") == 0)
		return kmsctl_audit(argc - optind, argv + optind, cli->json);
	/* Its own options; create and fetch use the global ones (tools/backup_cmd.c). */
	if (strcmp(argv[optind], "backup") == 0)
		return kmsctl_backup(argc - optind, argv + optind, &cli->copts);
	/* Its own options too (tools/region_cmd.c). */
	if (strcmp(argv[optind], "region") == 0)
		return kmsctl_region(argc - optind, argv + optind, &cli->copts, cli->json);
	cli->cmd = find_command(argv[optind]);
	if (cli->cmd == NULL)
		return usage_error("unknown command '%s'", argv[optind]);

	/* The command's own options; getopt moves its operands to the end. */
	args = argv + optind;
	nargs = argc - optind;
	rc = parse_opts(cli, nargs, args, 0, &done);
	if (rc != EXIT_OK || done)
		return rc;
	if (cli->cmd->operands == OPERANDS_ALIAS ||
	    cli->cmd->operands == OPERANDS_ALIAS_KEY) {
		if (optind >= nargs)
			return usage_error("%s needs an ALIAS", cli->cmd->name);
		cli->alias_name = args[optind++];
	}
	if (cli->cmd->operands == OPERANDS_KEY ||
	    cli->cmd->operands == OPERANDS_ALIAS_KEY) {
		if (optind >= nargs)
			return usage_error("%s needs a KEY_ID", cli->cmd->name);
		cli->key_id = args[optind++];
	}
	if (cli->cmd->subs != NULL) {
		rc = check_sub_args(cli, nargs, args);
		if (rc != EXIT_OK)
			return rc;
	}
	if (cli->sub != NULL && cli->sub->id == SUB_SET && cli->cmd->id == CMD_ADMINS) {
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
	rc = check_required(cli);
	if (rc != EXIT_OK)
		return rc;

	/* Offline: an air-gapped machine has no server, and no certificate. */
	if (cli->cmd->id == CMD_QUORUM && cli->sub->id == SUB_SIGN)
		return quorum_sign(cli);
	if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
		gpr_set_log_function(quiet_grpc_log);
	/* Before gRPC starts its threads: they must leave Ctrl-C to rewrap. */
	if (cli->cmd->id == CMD_REWRAP)
		rewrap_block_signals();
	if (kms_client_open(&cli->copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	switch (cli->cmd->id) {
	case CMD_CREATE:
		rc = cmd_create(cli, c);
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
	case CMD_DESCRIBE:
	case CMD_ROTATE:
	case CMD_ENABLE:
	case CMD_DISABLE:
	case CMD_CANCEL_DELETION:
		rc = cmd_key_only(cli, c);
		break;
	case CMD_SET_ROTATION:
		rc = cmd_set_rotation(cli, c);
		break;
	case CMD_SCHEDULE_DELETION:
		rc = cmd_schedule_deletion(cli, c);
		break;
	case CMD_PUT_POLICY:
		rc = cmd_put_policy(cli, c);
		break;
	case CMD_CREATE_ALIAS:
	case CMD_UPDATE_ALIAS:
		rc = cmd_put_alias(cli, c);
		break;
	case CMD_DELETE_ALIAS:
		rc = cmd_delete_alias(cli, c);
		break;
	case CMD_LIST_ALIASES:
		rc = cmd_list_aliases(cli, c);
		break;
	case CMD_REENCRYPT:
		rc = cmd_reencrypt(cli, c);
		break;
	case CMD_REWRAP:
		rc = cmd_rewrap(cli, c);
		break;
	case CMD_QUORUM:
		rc = cmd_quorum(cli, c);
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
	cli.rewrap.batch = REWRAP_BATCH_DEFAULT;
	cli.rewrap.parallel = REWRAP_PARALLEL_DEFAULT;
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
