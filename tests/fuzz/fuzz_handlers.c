/* fuzz_handlers.c - libFuzzer target for every gRPC request handler of kmsd, run as local calls (rpc_server.h) against a real one-node cluster. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "config.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kms/alloc.h"
#include "kms/batch.h"
#include "kms/blob.h"
#include "kms/client.h"
#include "kms/keyring.h"
#include "kms/policy.h"
#include "kms/v1/cluster.pb-c.h"
#include "kms/v1/kms.pb-c.h"
#include "node/node.h"
#include "rpc/rpc_server.h"
#include "softhsm_fixture.h"
#include "rpc/wire_strings.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Request bytes in, status out, for every method of the five tables the
 * server serves (kms.v1.KeyManagement, kms.v1.Operator, kms.v1.Internal,
 * grpc.health.v1.Health, and KeyManagement's batch calls), through
 * kms_call_local_run: the same caller and
 * NUL checks as a call from the network, then the handler, against a real
 * node.
 *
 * The node, once per process (LLVMFuzzerInitialize: 2 to 3 s on idle
 * cores, several times that on a loaded machine; the line "node 1 ready"
 * says how long each step took): a SoftHSM
 * token, the PKI (client CA, node CA, node certificate whose key is in the
 * token) and kmsd.conf made by ops/softhsm-token, ops/pki and
 * ops/node-config as tests/integration/node_fixture.c makes them (found
 * through KMS_SRCDIR, which make check and ops/fuzz export; else the tree
 * this was built from), under $TMPDIR, started in this process with
 * kms_node_start: a one-node cluster that bootstraps and leads, with its
 * Raft thread, gRPC server and supervisor. This thread holds an HSM session
 * as a gRPC worker does (kms_api_worker_init). Three keys are created
 * through the CreateKey handler: "fuzz-app" (the service may do everything),
 * "fuzz-enc" (Encrypt and ReEncryptTo only) and "fuzz-admin" (no grants). At exit the node is stopped and the directory
 * removed.
 *
 * An input:
 *   byte 0   the method: an index into the six tables in that order
 *            (KeyManagement's crypto and key calls, its key administration,
 *            Operator, Internal, Health, the batch calls; modulo their size);
 *   byte 1   bits 0-2 the caller (modulo 6): the administrator, a service
 *            with grants on the seeded keys, a stranger (all three client-CA
 *            identities), a member node (node 1), a node that is no member
 *            (node 9), no identity; bits 3-4 the kms-consistency metadata:
 *            none, "leader-commit", or a value the server refuses; bit 5:
 *            the call's deadline has already passed (else 5 s);
 *   the rest the request message.
 * The outcome must come within 8 s (else abort naming the call) and be a
 * gRPC status; an OK answer must unpack as the method's response type
 * (from the services' protobuf descriptors). Beyond that, what the caller
 * may do: a refusal by the caller checks exactly as rpc_server.h says;
 * Operator calls succeed for the administrator only, Internal ones for the
 * member node only, CreateKey and every key administration call
 * (api_keyadmin.c) for the administrator only, and the seeded keys'
 * policies hold for every key operation and listing. An Encrypt or
 * GenerateDataKey that succeeds is decrypted again as the same caller (the
 * plaintext must come back where the policy allows it) and decrypted with
 * a flipped tag byte and without its context (which must fail); one with
 * without_plaintext must return no plaintext. A batch answers one result
 * per item, each checked as the single call's answer would be (and each
 * data key of BatchGenerateDataKey decrypted as above); ReEncrypt's answers
 * name keys the caller may ReEncryptFrom and ReEncryptTo.
 *
 * State between inputs: what an input did to the administrators list or
 * the member list (SetAdministrators, AddMember, directly or relayed), and
 * to the state, policy and rotation policy of a seeded key, is undone
 * after it, by committing the original through Raft, so that every input
 * meets the same administrators, members and seeded keys, and the leader
 * does not keep retrying the promotion of a member that never runs. Keys,
 * versions and aliases an input creates stay (no call destroys a key).
 *
 * The network: a member an input admits is dialled by Raft and by
 * ClusterStatus at whatever host:port the input named. This program
 * replaces getaddrinfo (numeric hosts only: no DNS query leaves) and
 * connect (loopback and Unix sockets only: ENETUNREACH otherwise), so a
 * fuzzing run never reaches another host.
 *
 * Leaks: libFuzzer's per-input leak check is off for this target (ops/fuzz
 * passes -detect_leaks=0: the node's threads allocate while an input runs
 * and the key ring keeps what inputs create, so nearly every input would
 * be run twice and then scanned); LeakSanitizer checks the whole process
 * at exit, after the node has stopped, and names the allocation.
 *
 * FUZZ_VERBOSE=1 prints each input's method, caller and outcome, e.g. to
 * see what the seeds do: FUZZ_VERBOSE=1 fuzz_handlers -runs=0 CORPUS_DIR.
 *
 * The seed corpus (tests/fuzz/corpus/handlers) is written by this program:
 * FUZZ_WRITE_CORPUS=DIR fuzz_handlers writes it into DIR and exits without
 * starting a node; `ops/fuzz --write-corpus --target handlers` does that
 * into the source tree. Method indices follow the tables: regenerate it
 * when a method is added.
 */

#define TD "spiffe://kmsd.dev"
#define ADMIN TD "/ns/ops/sa/admin"
#define APP TD "/ns/demo/sa/app"
#define STRANGER TD "/ns/other/sa/intruder"
#define TOKEN_LABEL "fuzz-handlers"
#define DONE_TIMEOUT_S 8
#define READY_TIMEOUT_S 60
#define DEADLINE_MS 5000
#define ADD_MEMBER "/kms.v1.Operator/AddMember"
#define RELAY "/kms.v1.Internal/Relay"

#define CALLER_MASK 0x07
#define MD_SHIFT 3
#define DEADLINE_PASSED 0x20

/* ---- the callers ---- */

enum { C_ADMIN, C_APP, C_STRANGER, C_MEMBER, C_OUTSIDER, C_NONE, N_CALLERS };

static const struct {
	const char *name;
	enum kms_peer_kind kind;
	const char *id;
	uint64_t node_id;
} callers[N_CALLERS] = {
	[C_ADMIN] = {"the administrator", KMS_PEER_SERVICE, ADMIN, 0},
	[C_APP] = {"the service", KMS_PEER_SERVICE, APP, 0},
	[C_STRANGER] = {"a stranger", KMS_PEER_SERVICE, STRANGER, 0},
	[C_MEMBER] = {"member node 1", KMS_PEER_NODE, TD "/kmsd/node/1", 1},
	[C_OUTSIDER] = {"non-member node 9", KMS_PEER_NODE, TD "/kmsd/node/9", 9},
	[C_NONE] = {"an anonymous caller", KMS_PEER_NONE, NULL, 0},
};

static kms_peer peers[N_CALLERS];

/* kms-consistency values by bits 3-4 of byte 1 (NULL: none). */
static const char *const consistency[4] = {NULL, KMS_CONSISTENCY_LEADER_COMMIT, "eventual",
					   NULL};

/* ---- the seeded keys and what their policies allow ---- */

#define OP(op) (1u << (op))

static const struct {
	const char *id;
	unsigned app_ops; /* what APP may do; nobody else is granted anything */
} seeded[] = {
	{"fuzz-app", OP(KMS_OP_ENCRYPT) | OP(KMS_OP_DECRYPT) | OP(KMS_OP_GENERATE_DATA_KEY) |
			     OP(KMS_OP_DESCRIBE_KEY) | OP(KMS_OP_REENCRYPT_FROM) |
			     OP(KMS_OP_REENCRYPT_TO)},
	{"fuzz-enc", OP(KMS_OP_ENCRYPT) | OP(KMS_OP_REENCRYPT_TO)},
	{"fuzz-admin", 0},
};
#define N_SEEDED (sizeof(seeded) / sizeof(seeded[0]))

static int is_seeded(const char *key_id)
{
	for (size_t i = 0; i < N_SEEDED; i++)
		if (strcmp(key_id, seeded[i].id) == 0)
			return 1;
	return 0;
}

/* Whether the policy of key allows caller op; 1 for keys not seeded (their
 * policies are the inputs'). Administrators may describe any key. */
static int seeded_allows(const char *key_id, int caller, enum kms_op op)
{
	for (size_t i = 0; i < N_SEEDED; i++) {
		if (strcmp(key_id, seeded[i].id) != 0)
			continue;
		if (caller == C_ADMIN && op == KMS_OP_DESCRIBE_KEY)
			return 1;
		return caller == C_APP && (seeded[i].app_ops & OP(op)) != 0;
	}
	return 1;
}

/* The policy a seeded key is made with (pointers into sp). */
struct seeded_policy {
	Kms__V1__KeyPolicy policy;
	Kms__V1__Grant grant;
	Kms__V1__Grant *grants[1];
	char *ops[6];
};

static void seeded_policy(size_t i, struct seeded_policy *sp)
{
	size_t n_ops = 0;

	kms__v1__key_policy__init(&sp->policy);
	kms__v1__grant__init(&sp->grant);
	for (int op = KMS_OP_ENCRYPT; op <= KMS_OP_REENCRYPT_TO; op++)
		if (seeded[i].app_ops & OP(op))
			sp->ops[n_ops++] = (char *)kms_op_name((enum kms_op)op);
	sp->grant.principal = (char *)APP;
	sp->grant.operations = sp->ops;
	sp->grant.n_operations = n_ops;
	sp->grants[0] = &sp->grant;
	sp->policy.grants = sp->grants;
	sp->policy.n_grants = n_ops > 0 ? 1 : 0;
}

/* ---- the methods ---- */

struct fuzz_method {
	const kms_method *m;
	const ProtobufCMessageDescriptor *response;
};

#define METHODS_MAX 64
static struct fuzz_method methods[METHODS_MAX];
static size_t n_methods;

static const ProtobufCServiceDescriptor *const services[] = {
	&kms__v1__key_management__descriptor,
	&kms__v1__operator__descriptor,
	&kms__v1__internal__descriptor,
	&grpc__health__v1__health__descriptor,
};

/* The response type of "/package.Service/Method", or NULL. */
static const ProtobufCMessageDescriptor *response_type(const char *path)
{
	const char *slash = path[0] == '/' ? strchr(path + 1, '/') : NULL;

	if (slash == NULL)
		return NULL;
	for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
		const ProtobufCMethodDescriptor *md;

		if (strlen(services[i]->name) != (size_t)(slash - path - 1) ||
		    strncmp(services[i]->name, path + 1, (size_t)(slash - path - 1)) != 0)
			continue;
		md = protobuf_c_service_descriptor_get_method_by_name(services[i], slash + 1);
		return md != NULL ? md->output : NULL;
	}
	return NULL;
}

static void methods_init(void)
{
	const struct {
		const kms_method *t;
		size_t n;
	} tables[] = {
		{kms_api_keymgmt_methods, kms_api_keymgmt_n_methods},
		{kms_api_keyadmin_methods, kms_api_keyadmin_n_methods},
		{kms_api_operator_methods, kms_api_operator_n_methods},
		{kms_api_internal_methods, kms_api_internal_n_methods},
		{kms_api_health_methods, kms_api_health_n_methods},
		/* Last: the seeds of the tables above keep their indices. */
		{kms_api_batch_methods, kms_api_batch_n_methods},
		{kms_api_quorum_methods, kms_api_quorum_n_methods},
	};

	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
		for (size_t j = 0; j < tables[i].n; j++) {
			const kms_method *m = &tables[i].t[j];

			if (n_methods == METHODS_MAX) {
				fprintf(stderr, "fuzz_handlers: more than %d methods\n",
					METHODS_MAX);
				abort();
			}
			methods[n_methods].m = m;
			methods[n_methods].response = response_type(m->path);
			if (methods[n_methods].response == NULL) {
				fprintf(stderr, "fuzz_handlers: %s is in no service of proto/\n",
					m->path);
				abort();
			}
			n_methods++;
		}
	}
}

/* One of the key administration calls (administrators only). */
static int is_keyadmin(const kms_method *m)
{
	return m >= kms_api_keyadmin_methods &&
	       m < kms_api_keyadmin_methods + kms_api_keyadmin_n_methods;
}

static const struct fuzz_method *method_by_path(const char *path)
{
	for (size_t i = 0; i < n_methods; i++)
		if (strcmp(methods[i].m->path, path) == 0)
			return &methods[i];
	fprintf(stderr, "fuzz_handlers: no method %s\n", path);
	abort();
}

/* ---- the network: this host only ---- */

static int (*real_getaddrinfo)(const char *, const char *, const struct addrinfo *,
			       struct addrinfo **);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);

static void guard_init(void)
{
	*(void **)&real_getaddrinfo = dlsym(RTLD_NEXT, "getaddrinfo");
	*(void **)&real_connect = dlsym(RTLD_NEXT, "connect");
	if (real_getaddrinfo == NULL || real_connect == NULL) {
		fprintf(stderr, "fuzz_handlers: cannot find libc's getaddrinfo and connect\n");
		abort();
	}
}

/* Numeric hosts only: a name an input chose is never looked up. */
int getaddrinfo(const char *host, const char *service, const struct addrinfo *hints,
		struct addrinfo **res)
{
	struct addrinfo h;

	if (real_getaddrinfo == NULL)
		guard_init();
	memset(&h, 0, sizeof(h));
	if (hints != NULL)
		h = *hints;
	h.ai_flags |= AI_NUMERICHOST;
	return real_getaddrinfo(host, service, &h, res);
}

static int loopback(const struct sockaddr *sa, socklen_t len)
{
	if (sa == NULL || len < sizeof(sa_family_t))
		return 0;
	switch (sa->sa_family) {
	case AF_UNIX:
	case AF_UNSPEC: /* disconnects a datagram socket */
		return 1;
	case AF_INET:
		return len >= sizeof(struct sockaddr_in) &&
		       (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	case AF_INET6: {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return len >= sizeof(struct sockaddr_in6) &&
		       (IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127));
	}
	default:
		return 0;
	}
}

/* Loopback and Unix sockets only. */
int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (real_connect == NULL)
		guard_init();
	if (!loopback(sa, len)) {
		errno = ENETUNREACH;
		return -1;
	}
	return real_connect(fd, sa, len);
}

/* ---- local calls and their outcome ---- */

struct outcome {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int done;
	grpc_status_code code;
	char msg[KMS_ERRMSG_SIZE * 2];
	uint8_t *resp; /* a malloc'd copy of the response bytes, or NULL */
	size_t len;
	int resp_given; /* done got a response pointer */
};

static kms_node *node;
static void *worker_ctx;
static int verbose; /* FUZZ_VERBOSE set: one line per input on stderr */

static void on_done(void *arg, grpc_status_code code, const char *msg, const uint8_t *resp,
		    size_t len)
{
	struct outcome *o = arg;
	uint8_t *copy = NULL;

	if (resp != NULL && len > 0) {
		copy = malloc(len);
		if (copy == NULL)
			abort();
		memcpy(copy, resp, len);
	}
	pthread_mutex_lock(&o->mu);
	if (o->done++ != 0) {
		fprintf(stderr, "fuzz_handlers: a call finished twice\n");
		abort();
	}
	o->code = code;
	snprintf(o->msg, sizeof(o->msg), "%s", msg);
	o->resp = copy;
	o->len = len;
	o->resp_given = resp != NULL;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->mu);
}

static void outcome_free(struct outcome *o)
{
	free(o->resp);
	pthread_mutex_destroy(&o->mu);
	pthread_cond_destroy(&o->cond);
}

/*
 * Runs fm's handler for caller with req as a local call and waits for its
 * outcome, which the caller frees with outcome_free. md: an index into
 * consistency[].
 */
static void run_call(const struct fuzz_method *fm, int caller, int md, long deadline_ms,
		     const uint8_t *req, size_t len, struct outcome *o)
{
	kms_call *c;
	kms_err err = {0};
	struct timespec until;

	memset(o, 0, sizeof(*o));
	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cond, NULL);
	c = kms_call_local_new(callers[caller].kind != KMS_PEER_NONE ? &peers[caller] : NULL,
			       worker_ctx, deadline_ms, on_done, o);
	if (c == NULL)
		abort();
	if (consistency[md] != NULL &&
	    kms_call_local_metadata(c, KMS_CONSISTENCY_HEADER, consistency[md],
				    strlen(consistency[md]), &err) != KMS_OK) {
		fprintf(stderr, "fuzz_handlers: %s\n", err.msg);
		abort();
	}
	kms_call_local_run(fm->m, node, c, req, len);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += DONE_TIMEOUT_S;
	pthread_mutex_lock(&o->mu);
	while (!o->done)
		if (pthread_cond_timedwait(&o->cond, &o->mu, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&o->mu);
	if (!o->done) {
		fprintf(stderr, "fuzz_handlers: %s as %s: no answer within %d s\n", fm->m->path,
			callers[caller].name, DONE_TIMEOUT_S);
		abort();
	}
}

/* Packs m into a new malloc'd buffer (*len bytes). */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
	uint8_t *buf;

	*len = protobuf_c_message_get_packed_size(m);
	buf = malloc(*len > 0 ? *len : 1);
	if (buf == NULL)
		abort();
	protobuf_c_message_pack(m, buf);
	return buf;
}

/* ---- the checks on an outcome ---- */

static void failf(const struct fuzz_method *fm, int caller, const struct outcome *o,
		  const char *fmt, ...) __attribute__((format(printf, 4, 5), noreturn));

static void failf(const struct fuzz_method *fm, int caller, const struct outcome *o,
		  const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz_handlers: %s as %s (status %d, '%s'): ", fm->m->path,
		callers[caller].name, (int)o->code, o->msg);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

static int has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A status carried inside an OK answer (Forward, ReadIndex, Relay) is one
 * of ours, as the node that reads it expects. */
static void check_inner_status(const struct fuzz_method *fm, int caller, const struct outcome *o,
			       uint32_t status)
{
	if (status >= KMS_STATUS_COUNT)
		failf(fm, caller, o, "answer carries status %u", status);
}

static void check_relay(const struct fuzz_method *fm, int caller, const struct outcome *o,
			const uint8_t *req, size_t len, const Kms__V1__RelayResponse *r)
{
	Kms__V1__RelayRequest *q;
	const ProtobufCMessageDescriptor *d;
	ProtobufCMessage *inner;

	check_inner_status(fm, caller, o, r->status);
	if (r->status != KMS_OK)
		return;
	q = kms__v1__relay_request__unpack(NULL, len, req);
	if (q == NULL)
		failf(fm, caller, o, "answered a request that does not parse");
	d = response_type(q->method);
	if (d == NULL)
		failf(fm, caller, o, "relayed an unknown method");
	inner = protobuf_c_message_unpack(d, NULL, r->response.len, r->response.data);
	if (inner == NULL)
		failf(fm, caller, o, "the relayed answer does not unpack as %s", d->name);
	protobuf_c_message_free_unpacked(inner, NULL);
	kms__v1__relay_request__free_unpacked(q, NULL);
}

/* One answer per write, in range, as the forwarding node reads them. */
static void check_forward_batch(const struct fuzz_method *fm, int caller, const struct outcome *o,
				const uint8_t *req, size_t len,
				const Kms__V1__ForwardBatchResponse *r)
{
	Kms__V1__ForwardBatchRequest *q = kms__v1__forward_batch_request__unpack(NULL, len, req);

	if (q == NULL)
		failf(fm, caller, o, "answered a request that does not parse");
	if (r->n_results != q->n_writes)
		failf(fm, caller, o, "%zu answers for %zu writes", r->n_results, q->n_writes);
	for (size_t i = 0; i < r->n_results; i++)
		check_inner_status(fm, caller, o, r->results[i]->status);
	kms__v1__forward_batch_request__free_unpacked(q, NULL);
}

static void check_key(const struct fuzz_method *fm, int caller, const struct outcome *o,
		      const char *key_id, enum kms_op op)
{
	if (key_id == NULL || !seeded_allows(key_id, caller, op))
		failf(fm, caller, o, "%s on key '%s' against its policy", kms_op_name(op),
		      key_id != NULL ? key_id : "(none)");
}

static void check_decrypted(const struct fuzz_method *fm, int caller, const struct outcome *o,
			    const Kms__V1__DecryptResponse *r)
{
	check_key(fm, caller, o, r->key_id, KMS_OP_DECRYPT);
	if (r->plaintext.len > KMS_PLAINTEXT_MAX)
		failf(fm, caller, o, "%zu bytes of plaintext", r->plaintext.len);
}

static void check_reencrypt(const struct fuzz_method *fm, int caller, const struct outcome *o,
			    const Kms__V1__ReEncryptResponse *r)
{
	check_key(fm, caller, o, r->source_key_id, KMS_OP_REENCRYPT_FROM);
	check_key(fm, caller, o, r->key_id, KMS_OP_REENCRYPT_TO);
	if (r->ciphertext_blob.len == 0)
		failf(fm, caller, o, "ReEncrypt answered no blob");
}

/*
 * A batch answer: one result per item of the request (counted on the
 * wire), each a response or an error; each response as the single call's.
 * Results are read by descriptor: the three answers share one shape.
 */
static void check_batch(const struct fuzz_method *fm, int caller, const struct outcome *o,
			const uint8_t *req, size_t len, const ProtobufCMessage *resp)
{
	const ProtobufCFieldDescriptor *rf =
		protobuf_c_message_descriptor_get_field(resp->descriptor, 1);
	size_t n = *(const size_t *)(const void *)((const char *)resp + rf->quantifier_offset);
	ProtobufCMessage *const *results =
		*(ProtobufCMessage *const *const *)(const void *)((const char *)resp + rf->offset);
	const ProtobufCFieldDescriptor *item_f =
		protobuf_c_message_descriptor_get_field(rf->descriptor, 1);
	/* Counting only: the descriptor is not read. */
	size_t want = kms_wire_check_items(item_f->descriptor, 1, req, len, NULL, NULL);

	if (n != want || n == 0 || n > KMS_BATCH_MAX_ITEMS)
		failf(fm, caller, o, "%zu results for %zu requests", n, want);
	for (size_t i = 0; i < n; i++) {
		uint32_t which = *(const uint32_t *)(const void *)((const char *)results[i] +
								    item_f->quantifier_offset);
		const ProtobufCMessage *r = *(ProtobufCMessage *const *)(const void *)(
			(const char *)results[i] + item_f->offset);

		if (which == 2)
			continue;
		if (which != 1 || r == NULL)
			failf(fm, caller, o, "result %zu holds neither a response nor an error", i);
		if (r->descriptor == &kms__v1__decrypt_response__descriptor)
			check_decrypted(fm, caller, o, (const Kms__V1__DecryptResponse *)r);
		else if (r->descriptor == &kms__v1__re_encrypt_response__descriptor)
			check_reencrypt(fm, caller, o, (const Kms__V1__ReEncryptResponse *)r);
		else
			check_key(fm, caller, o,
				  ((const Kms__V1__GenerateDataKeyResponse *)r)->key_id,
				  KMS_OP_GENERATE_DATA_KEY);
	}
}

/* What an OK answer says, by method. */
static void check_answer(const struct fuzz_method *fm, int caller, const struct outcome *o,
			 const uint8_t *req, size_t len, const ProtobufCMessage *resp)
{
	const char *path = fm->m->path;

	if (has_prefix(path, "/kms.v1.Operator/") && caller != C_ADMIN)
		failf(fm, caller, o, "an Operator call succeeded for a non-administrator");
	if (has_prefix(path, "/kms.v1.Internal/") && caller != C_MEMBER)
		failf(fm, caller, o, "an Internal call succeeded for a non-member");
	if (strcmp(path, "/kms.v1.KeyManagement/CreateKey") == 0 && caller != C_ADMIN)
		failf(fm, caller, o, "a non-administrator created a key");
	if (is_keyadmin(fm->m) && caller != C_ADMIN)
		failf(fm, caller, o, "a non-administrator administered a key");
	if (strcmp(path, "/kms.v1.KeyManagement/DescribeKey") == 0) {
		const Kms__V1__DescribeKeyResponse *r = (const void *)resp;

		if (r->key == NULL)
			failf(fm, caller, o, "no key described");
		check_key(fm, caller, o, r->key->key_id, KMS_OP_DESCRIBE_KEY);
	} else if (strcmp(path, "/kms.v1.KeyManagement/ListKeys") == 0) {
		const Kms__V1__ListKeysResponse *r = (const void *)resp;

		for (size_t i = 0; i < r->n_keys; i++)
			check_key(fm, caller, o, r->keys[i]->key_id, KMS_OP_DESCRIBE_KEY);
	} else if (strcmp(path, "/kms.v1.KeyManagement/Encrypt") == 0) {
		check_key(fm, caller, o, ((const Kms__V1__EncryptResponse *)resp)->key_id,
			  KMS_OP_ENCRYPT);
	} else if (strcmp(path, "/kms.v1.KeyManagement/GenerateDataKey") == 0) {
		check_key(fm, caller, o, ((const Kms__V1__GenerateDataKeyResponse *)resp)->key_id,
			  KMS_OP_GENERATE_DATA_KEY);
	} else if (strcmp(path, "/kms.v1.KeyManagement/Decrypt") == 0) {
		check_decrypted(fm, caller, o, (const Kms__V1__DecryptResponse *)resp);
	} else if (strcmp(path, "/kms.v1.KeyManagement/ReEncrypt") == 0) {
		check_reencrypt(fm, caller, o, (const Kms__V1__ReEncryptResponse *)resp);
	} else if (has_prefix(path, "/kms.v1.KeyManagement/Batch")) {
		check_batch(fm, caller, o, req, len, resp);
	} else if (strcmp(path, "/kms.v1.Internal/Forward") == 0) {
		check_inner_status(fm, caller, o, ((const Kms__V1__ForwardResponse *)resp)->status);
	} else if (strcmp(path, "/kms.v1.Internal/ForwardBatch") == 0) {
		check_forward_batch(fm, caller, o, req, len, (const void *)resp);
	} else if (strcmp(path, "/kms.v1.Internal/ReadIndex") == 0) {
		check_inner_status(fm, caller, o,
				   ((const Kms__V1__ReadIndexResponse *)resp)->status);
	} else if (strcmp(path, RELAY) == 0) {
		check_relay(fm, caller, o, req, len, (const void *)resp);
	} else if (strcmp(path, "/kms.v1.Internal/NodeStatus") == 0) {
		if (((const Kms__V1__NodeStatusResponse *)resp)->id != 1)
			failf(fm, caller, o, "the status of another node");
	}
}

/* The status, who may call, and that an OK answer is the method's. */
static void check_outcome(const struct fuzz_method *fm, int caller, const struct outcome *o,
			  const uint8_t *req, size_t len)
{
	const kms_method *m = fm->m;
	ProtobufCMessage *resp;

	if ((int)o->code < GRPC_STATUS_OK || (int)o->code > GRPC_STATUS_UNAUTHENTICATED)
		failf(fm, caller, o, "not a gRPC status");
	if (!(m->callers & KMS_CALLERS_ANYONE)) {
		if (callers[caller].kind == KMS_PEER_NONE && o->code != GRPC_STATUS_UNAUTHENTICATED)
			failf(fm, caller, o, "an anonymous caller was not refused as such");
		if (callers[caller].kind != KMS_PEER_NONE &&
		    !(m->callers & (1u << callers[caller].kind)) &&
		    o->code != GRPC_STATUS_PERMISSION_DENIED)
			failf(fm, caller, o, "a caller of the wrong kind was not refused");
	}
	if (o->code != GRPC_STATUS_OK) {
		if (o->resp_given || o->len != 0)
			failf(fm, caller, o, "a refusal carries a response");
		return;
	}
	resp = protobuf_c_message_unpack(fm->response, NULL, o->len, o->resp);
	if (resp == NULL)
		failf(fm, caller, o, "the answer does not unpack as %s", fm->response->name);
	check_answer(fm, caller, o, req, len, resp);
	protobuf_c_message_free_unpacked(resp, NULL);
}

/* ---- ciphertext made here is decrypted here ---- */

struct ctx_pairs {
	size_t n;
	Kms__V1__DecryptRequest__EncryptionContextEntry *e;
	Kms__V1__DecryptRequest__EncryptionContextEntry **p;
};

/* The encryption context of an Encrypt or GenerateDataKey request (map
 * entries of key = 1, value = 2) as a Decrypt request's. */
static void ctx_copy(ProtobufCMessage **entries, size_t n, struct ctx_pairs *out)
{
	out->n = n;
	out->e = calloc(n > 0 ? n : 1, sizeof(*out->e));
	out->p = calloc(n > 0 ? n : 1, sizeof(*out->p));
	if (out->e == NULL || out->p == NULL)
		abort();
	for (size_t i = 0; i < n; i++) {
		const ProtobufCMessageDescriptor *d = entries[i]->descriptor;
		const ProtobufCFieldDescriptor *k = protobuf_c_message_descriptor_get_field(d, 1);
		const ProtobufCFieldDescriptor *v = protobuf_c_message_descriptor_get_field(d, 2);

		kms__v1__decrypt_request__encryption_context_entry__init(&out->e[i]);
		out->e[i].key = *(char **)(void *)((char *)entries[i] + k->offset);
		out->e[i].value = *(char **)(void *)((char *)entries[i] + v->offset);
		out->p[i] = &out->e[i];
	}
}

static void ctx_free(struct ctx_pairs *c)
{
	free(c->e);
	free(c->p);
}

/* Decrypts blob as caller with ctx (or none); the outcome is the caller's. */
static void decrypt(int caller, const ProtobufCBinaryData *blob, const struct ctx_pairs *ctx,
		    struct outcome *o)
{
	Kms__V1__DecryptRequest r = KMS__V1__DECRYPT_REQUEST__INIT;
	uint8_t *req;
	size_t len;

	r.ciphertext_blob = *blob;
	if (ctx != NULL) {
		r.n_encryption_context = ctx->n;
		r.encryption_context = ctx->p;
	}
	req = pack(&r.base, &len);
	run_call(method_by_path("/kms.v1.KeyManagement/Decrypt"), caller, 0, DEADLINE_MS, req,
		 len, o);
	free(req);
}

/*
 * blob came back OK for caller from fm under key_id: it decrypts to pt as
 * that caller where the key's policy allows (for keys an input made, a
 * refusal is the policy's), and neither with a flipped tag byte nor
 * without its context (when it has one).
 */
static void round_trip(const struct fuzz_method *fm, int caller, const char *key_id,
		       const ProtobufCBinaryData *blob, const struct ctx_pairs *ctx,
		       const uint8_t *pt, size_t pt_len)
{
	struct outcome o;
	Kms__V1__DecryptResponse *r;
	uint8_t *tampered;
	ProtobufCBinaryData bad;

	decrypt(caller, blob, ctx, &o);
	if (o.code == GRPC_STATUS_OK) {
		r = kms__v1__decrypt_response__unpack(NULL, o.len, o.resp);
		if (r == NULL || r->plaintext.len != pt_len ||
		    (pt_len > 0 && memcmp(r->plaintext.data, pt, pt_len) != 0) ||
		    strcmp(r->key_id, key_id) != 0)
			failf(fm, caller, &o, "the blob did not decrypt to what was sealed");
		kms__v1__decrypt_response__free_unpacked(r, NULL);
	} else if (o.code != GRPC_STATUS_PERMISSION_DENIED ||
		   (is_seeded(key_id) && seeded_allows(key_id, caller, KMS_OP_DECRYPT))) {
		/* A refusal is the policy's only where it grants no Decrypt. */
		failf(fm, caller, &o, "a blob it made does not decrypt");
	}
	outcome_free(&o);
	tampered = malloc(blob->len);
	if (tampered == NULL)
		abort();
	memcpy(tampered, blob->data, blob->len);
	tampered[blob->len - 1] ^= 0x01;
	bad.data = tampered;
	bad.len = blob->len;
	decrypt(caller, &bad, ctx, &o);
	if (o.code == GRPC_STATUS_OK)
		failf(fm, caller, &o, "a blob with a flipped tag byte decrypted");
	outcome_free(&o);
	free(tampered);
	if (ctx->n > 0) {
		decrypt(caller, blob, NULL, &o);
		if (o.code == GRPC_STATUS_OK)
			failf(fm, caller, &o, "a blob decrypted without its context");
		outcome_free(&o);
	}
}

static void check_encrypt(const struct fuzz_method *fm, int caller, const uint8_t *req,
			  size_t len, const struct outcome *o)
{
	Kms__V1__EncryptRequest *q = kms__v1__encrypt_request__unpack(NULL, len, req);
	Kms__V1__EncryptResponse *r = kms__v1__encrypt_response__unpack(NULL, o->len, o->resp);
	struct ctx_pairs ctx;

	if (q == NULL || r == NULL || r->ciphertext_blob.len == 0)
		failf(fm, caller, o, "an OK Encrypt without its request or blob");
	ctx_copy((ProtobufCMessage **)q->encryption_context, q->n_encryption_context, &ctx);
	round_trip(fm, caller, r->key_id, &r->ciphertext_blob, &ctx, q->plaintext.data,
		   q->plaintext.len);
	ctx_free(&ctx);
	kms__v1__encrypt_response__free_unpacked(r, NULL);
	kms__v1__encrypt_request__free_unpacked(q, NULL);
}

/* One data key q asked for and r answered (alone or in a batch). */
static void check_data_key_item(const struct fuzz_method *fm, int caller, const struct outcome *o,
				const Kms__V1__GenerateDataKeyRequest *q,
				const Kms__V1__GenerateDataKeyResponse *r)
{
	struct ctx_pairs ctx;
	size_t want;

	if (q == NULL || r == NULL || r->ciphertext_blob.len == 0)
		failf(fm, caller, o, "an OK GenerateDataKey without its request or blob");
	want = q->number_of_bytes == 0 ? 32 : q->number_of_bytes;
	if (q->without_plaintext ? r->plaintext.len != 0 : r->plaintext.len != want)
		failf(fm, caller, o, "%zu bytes of plaintext for %zu%s", r->plaintext.len, want,
		      q->without_plaintext ? " without plaintext" : "");
	ctx_copy((ProtobufCMessage **)q->encryption_context, q->n_encryption_context, &ctx);
	/* Without the plaintext there is nothing to compare the blob with. */
	if (!q->without_plaintext)
		round_trip(fm, caller, r->key_id, &r->ciphertext_blob, &ctx, r->plaintext.data,
			   r->plaintext.len);
	ctx_free(&ctx);
}

static void check_data_key(const struct fuzz_method *fm, int caller, const uint8_t *req,
			   size_t len, const struct outcome *o)
{
	Kms__V1__GenerateDataKeyRequest *q =
		kms__v1__generate_data_key_request__unpack(NULL, len, req);
	Kms__V1__GenerateDataKeyResponse *r =
		kms__v1__generate_data_key_response__unpack(NULL, o->len, o->resp);

	check_data_key_item(fm, caller, o, q, r);
	kms__v1__generate_data_key_response__free_unpacked(r, NULL);
	kms__v1__generate_data_key_request__free_unpacked(q, NULL);
}

/* Every data key of a batch, as check_data_key checks one. */
static void check_data_key_batch(const struct fuzz_method *fm, int caller, const uint8_t *req,
				 size_t len, const struct outcome *o)
{
	Kms__V1__BatchGenerateDataKeyRequest *q =
		kms__v1__batch_generate_data_key_request__unpack(NULL, len, req);
	Kms__V1__BatchGenerateDataKeyResponse *r =
		kms__v1__batch_generate_data_key_response__unpack(NULL, o->len, o->resp);

	if (q == NULL || r == NULL || q->n_requests != r->n_results)
		failf(fm, caller, o, "an OK BatchGenerateDataKey without its request");
	for (size_t i = 0; i < r->n_results; i++)
		if (r->results[i]->result_case ==
		    KMS__V1__BATCH_GENERATE_DATA_KEY_RESULT__RESULT_RESPONSE)
			check_data_key_item(fm, caller, o, q->requests[i], r->results[i]->response);
	kms__v1__batch_generate_data_key_response__free_unpacked(r, NULL);
	kms__v1__batch_generate_data_key_request__free_unpacked(q, NULL);
}

/* ---- every input meets the same administrators and members ---- */

static void commit_or_die(kms_buf *cmd, const char *what)
{
	kms_err err = {0};

	if (kms_node_commit_wait(node, ADMIN, cmd->data, cmd->len, NULL, &err) != KMS_OK) {
		fprintf(stderr, "fuzz_handlers: cannot restore %s: %s\n", what, err.msg);
		abort();
	}
	kms_buf_free(cmd);
}

/* A seeded key as it was made: enabled, with its policy and no rotation
 * policy of its own. */
static void restore_seeded_key(size_t i)
{
	const char *id = seeded[i].id;
	Kms__V1__KeyMetadata *md = NULL;
	struct seeded_policy sp;
	kms_key_status s;
	kms_buf cmd = {0};
	kms_err err = {0};
	uint8_t *want, *have;
	size_t want_len, have_len;

	if (kms_keyring_key_status(node->kr, id, &s, &err) != KMS_OK) {
		fprintf(stderr, "fuzz_handlers: seeded key %s: %s\n", id, err.msg);
		abort();
	}
	if (s.state == KMS__V1__KEY_STATE__KEY_STATE_PENDING_DELETION) {
		if (kms_keyring_cmd_cancel_key_deletion(id, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "a seeded key's state");
	}
	if (s.state != KMS__V1__KEY_STATE__KEY_STATE_ENABLED) {
		if (kms_keyring_cmd_set_key_enabled(id, 1, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "a seeded key's state");
	}
	if (s.rotation_period_seconds != 0 || s.max_encryptions != KMS_ENCRYPTIONS_DEFAULT) {
		if (kms_keyring_cmd_set_rotation_policy(id, 0, 0, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "a seeded key's rotation policy");
	}
	seeded_policy(i, &sp);
	if (kms_keyring_describe(node->kr, id, ADMIN, 1, &md, &err) != KMS_OK)
		abort();
	want = pack(&sp.policy.base, &want_len);
	have = pack(&md->policy->base, &have_len);
	if (want_len != have_len || memcmp(want, have, want_len) != 0) {
		if (kms_keyring_cmd_put_key_policy(id, &sp.policy, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "a seeded key's policy");
	}
	free(want);
	free(have);
	kms_keyring_metadata_free(md);
}

static void restore_baseline(void)
{
	static char *const admins[] = {(char *)ADMIN};
	kms_member m[KMS_MEMBERS_MAX];
	size_t n = kms_keyring_members(node->kr, m, KMS_MEMBERS_MAX);
	kms_buf cmd = {0};
	kms_err err = {0};

	if (kms_keyring_admin_count(node->kr) != 1 || !kms_keyring_is_admin(node->kr, ADMIN)) {
		if (kms_keyring_cmd_set_administrators(admins, 1, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "the administrators");
	}
	for (size_t i = 0; i < n && i < KMS_MEMBERS_MAX; i++) {
		if (m[i].id == 1)
			continue;
		if (kms_keyring_cmd_remove_member(m[i].id, &cmd, &err) != KMS_OK)
			abort();
		commit_or_die(&cmd, "the members");
	}
	for (size_t i = 0; i < N_SEEDED; i++)
		restore_seeded_key(i);
}

/* ---- one input ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct fuzz_method *fm;
	const uint8_t *req;
	size_t len;
	int caller, md;
	struct outcome o;

	if (size < 2)
		return 0;
	fm = &methods[data[0] % n_methods];
	caller = (data[1] & CALLER_MASK) % N_CALLERS;
	md = (data[1] >> MD_SHIFT) & 3;
	req = data + 2;
	len = size - 2;
	run_call(fm, caller, md, (data[1] & DEADLINE_PASSED) ? 0 : DEADLINE_MS, req, len, &o);
	if (verbose)
		fprintf(stderr, "fuzz_handlers: %s as %s%s%s: %d %s\n", fm->m->path,
			callers[caller].name, consistency[md] != NULL ? ", consistency " : "",
			consistency[md] != NULL ? consistency[md] : "", (int)o.code, o.msg);
	check_outcome(fm, caller, &o, req, len);
	if (o.code == GRPC_STATUS_OK && strcmp(fm->m->path, "/kms.v1.KeyManagement/Encrypt") == 0)
		check_encrypt(fm, caller, req, len, &o);
	if (o.code == GRPC_STATUS_OK &&
	    strcmp(fm->m->path, "/kms.v1.KeyManagement/GenerateDataKey") == 0)
		check_data_key(fm, caller, req, len, &o);
	if (o.code == GRPC_STATUS_OK &&
	    strcmp(fm->m->path, "/kms.v1.KeyManagement/BatchGenerateDataKey") == 0)
		check_data_key_batch(fm, caller, req, len, &o);
	outcome_free(&o);
	restore_baseline();
	return 0;
}

/* ---- the node, once per process ---- */

static char root[PATH_MAX];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(cmd))
		abort();
	rc = system(cmd);
	if (rc != 0) {
		fprintf(stderr, "fuzz_handlers: command failed (%d): %s\n", rc, cmd);
		abort();
	}
}

/* A loopback TCP port the kernel just handed out. */
static int free_port(void)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	if (port <= 0) {
		fprintf(stderr, "fuzz_handlers: no free loopback port: %s\n", strerror(errno));
		abort();
	}
	return port;
}

/* The token, the PKI and kmsd.conf, as node_fixture.c makes them. */
static void make_node(char *conf, size_t cap)
{
	const char *tmp = getenv("TMPDIR");
	const char *src = getenv("KMS_SRCDIR");
	const char *module = getenv("KMS_PKCS11_MODULE");
	char softhsm_conf[PATH_MAX + 32];

	if (tmp == NULL || tmp[0] != '/')
		tmp = "/tmp";
	if (src == NULL || src[0] == '\0')
		src = FUZZ_SRCDIR;
	if (module == NULL || module[0] == '\0')
		module = KMS_DEFAULT_PKCS11_MODULE;
	if (snprintf(root, sizeof(root), "%s/fuzz-handlers-XXXXXX", tmp) >= (int)sizeof(root) ||
	    mkdtemp(root) == NULL) {
		fprintf(stderr, "fuzz_handlers: cannot make a directory in %s: %s\n", tmp,
			strerror(errno));
		abort();
	}
	/* Everything below is quoted with '...'. */
	if (strchr(root, '\'') != NULL || strchr(src, '\'') != NULL ||
	    strchr(module, '\'') != NULL)
		abort();
	sh("cd '%s' && ops/pki ca '%s/pki' >/dev/null && ops/pki node-ca '%s/pki' >/dev/null && "
	   "ops/softhsm-token init '%s/node/token' " TOKEN_LABEL " --module '%s' >/dev/null && "
	   "ops/pki node '%s/pki' node1 '" TD "/kmsd/node/1' --token-dir '%s/node/token' "
	   "--label " TOKEN_LABEL " --module '%s' >/dev/null && "
	   "ops/node-config --dir '%s/node' --id 1 --grpc 127.0.0.1:%d --raft 127.0.0.1:%d "
	   "--label " TOKEN_LABEL " --ca '%s/pki/ca.pem' --node-ca '%s/pki/node-ca.pem' "
	   "--cert '%s/pki/node1.pem' --admins '" ADMIN "' --workers 1 --log-level error "
	   "--module '%s' >/dev/null",
	   src, root, root, root, module, root, root, module, root, free_port(), free_port(), root,
	   root, root, module);
	snprintf(softhsm_conf, sizeof(softhsm_conf), "%s/node/token/softhsm2.conf", root);
	setenv("SOFTHSM2_CONF", softhsm_conf, 1);
	if (snprintf(conf, cap, "%s/node/kmsd.conf", root) >= (int)cap)
		abort();
}

static void stop_node(void)
{
	if (node == NULL)
		return;
	kms_api_worker_fini(node, worker_ctx);
	kms_node_stop(node);
	node = NULL;
	kms_test_rmtree(root);
}

/* CreateKey of a seeded key through its handler, as the administrator. */
static void seed_key(size_t i)
{
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	struct seeded_policy sp;
	size_t len;
	uint8_t *buf;
	struct outcome o;

	seeded_policy(i, &sp);
	req.key_id = (char *)seeded[i].id;
	req.description = (char *)"seeded by fuzz_handlers";
	req.policy = &sp.policy;
	buf = pack(&req.base, &len);
	run_call(method_by_path("/kms.v1.KeyManagement/CreateKey"), C_ADMIN, 0, DEADLINE_MS, buf,
		 len, &o);
	if (o.code != GRPC_STATUS_OK) {
		fprintf(stderr, "fuzz_handlers: cannot seed key %s: %s\n", seeded[i].id, o.msg);
		abort();
	}
	outcome_free(&o);
	free(buf);
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void start_node(void)
{
	char conf[PATH_MAX + 32];
	kms_err err = {0};
	struct timespec pause = {0, 50 * 1000 * 1000}, t0;
	double made, started, ready;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	make_node(conf, sizeof(conf));
	made = seconds_since(&t0);
	if (kms_node_start(conf, &node, &err) != KMS_OK) {
		fprintf(stderr, "fuzz_handlers: the node did not start: %s\n", err.msg);
		abort();
	}
	started = seconds_since(&t0);
	for (int i = 0; !kms_node_ready(node); i++) {
		if (i == READY_TIMEOUT_S * 20) {
			fprintf(stderr, "fuzz_handlers: the node was not ready within %d s\n",
				READY_TIMEOUT_S);
			abort();
		}
		nanosleep(&pause, NULL);
	}
	ready = seconds_since(&t0);
	if (kms_api_worker_init(node, &worker_ctx, &err) != KMS_OK) {
		fprintf(stderr, "fuzz_handlers: no HSM session: %s\n", err.msg);
		abort();
	}
	atexit(stop_node);
	for (size_t i = 0; i < N_SEEDED; i++)
		seed_key(i);
	fprintf(stderr,
		"fuzz_handlers: node 1 ready with %zu seeded keys in %.1f s (token, PKI and "
		"config %.1f s, start %.1f s, leading %.1f s, keys %.1f s) in %s\n",
		N_SEEDED, seconds_since(&t0), made, started - made, ready - started,
		seconds_since(&t0) - ready, root);
}

/* ---- the seed corpus ---- */

static void write_seed(const char *dir, const char *name, const char *path, int caller,
		       int md, const ProtobufCMessage *msg, const void *raw, size_t raw_len)
{
	const struct fuzz_method *fm = method_by_path(path);
	char file[PATH_MAX];
	uint8_t head[2];
	uint8_t *body = NULL;
	size_t len = raw_len;
	FILE *f;

	head[0] = (uint8_t)(fm - methods);
	head[1] = (uint8_t)(caller | md << MD_SHIFT);
	if (msg != NULL)
		body = pack(msg, &len);
	if (snprintf(file, sizeof(file), "%s/%s", dir, name) >= (int)sizeof(file))
		abort();
	f = fopen(file, "wb");
	if (f == NULL || fwrite(head, 1, 2, f) != 2 ||
	    (len > 0 && fwrite(body != NULL ? body : raw, 1, len, f) != len) || fclose(f) != 0) {
		fprintf(stderr, "fuzz_handlers: cannot write %s: %s\n", file, strerror(errno));
		exit(1);
	}
	free(body);
}

#define SEED(name, path, caller, md, msg) write_seed(dir, name, path, caller, md, &(msg).base, NULL, 0)
#define SEED_RAW(name, path, caller, raw, n) write_seed(dir, name, path, caller, 0, NULL, raw, n)

static void write_keymgmt_seeds(const char *dir)
{
	static char *all_ops[] = {"Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"};
	Kms__V1__CreateKeyRequest ck = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *grants[] = {&grant};
	Kms__V1__DescribeKeyRequest dk = KMS__V1__DESCRIBE_KEY_REQUEST__INIT;
	Kms__V1__ListKeysRequest lk = KMS__V1__LIST_KEYS_REQUEST__INIT;
	Kms__V1__EncryptRequest en = KMS__V1__ENCRYPT_REQUEST__INIT;
	Kms__V1__EncryptRequest__EncryptionContextEntry ee =
		KMS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__EncryptRequest__EncryptionContextEntry *eep[] = {&ee};
	Kms__V1__GenerateDataKeyRequest gd = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge =
		KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *gep[] = {&ge};
	Kms__V1__DecryptRequest de = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry dee =
		KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry *deep[] = {&dee};
	static uint8_t pt[] = "attack at dawn";
	uint8_t blob[KMS_BLOB_MAX], ct[sizeof(pt) - 1 + KMS_GCM_TAG_LEN];
	kms_blob_header h;
	size_t blob_len = 0;
	kms_err err = {0};
	/* An EncryptRequest whose key_id holds a NUL: "fuzz-app\0x". */
	static const uint8_t nul_key[] = {0x0a, 10, 'f', 'u', 'z', 'z', '-', 'a', 'p', 'p', 0, 'x',
					  0x12, 2, 'h', 'i'};

	grant.principal = (char *)APP;
	grant.operations = all_ops;
	grant.n_operations = 4;
	policy.grants = grants;
	policy.n_grants = 1;
	ck.key_id = (char *)"seed/new-key";
	ck.description = (char *)"made by a seed";
	ck.policy = &policy;
	SEED("CreateKey-admin", "/kms.v1.KeyManagement/CreateKey", C_ADMIN, 0, ck);
	SEED("CreateKey-service-refused", "/kms.v1.KeyManagement/CreateKey", C_APP, 0, ck);
	ck.key_id = (char *)"bad id!";
	SEED("CreateKey-admin-bad-id", "/kms.v1.KeyManagement/CreateKey", C_ADMIN, 0, ck);
	ck.key_id = (char *)"fuzz-app";
	SEED("CreateKey-admin-exists", "/kms.v1.KeyManagement/CreateKey", C_ADMIN, 0, ck);

	dk.key_id = (char *)"fuzz-app";
	SEED("DescribeKey-service", "/kms.v1.KeyManagement/DescribeKey", C_APP, 0, dk);
	SEED("DescribeKey-stranger", "/kms.v1.KeyManagement/DescribeKey", C_STRANGER, 0, dk);
	SEED("DescribeKey-admin-leader-commit", "/kms.v1.KeyManagement/DescribeKey", C_ADMIN, 1,
	     dk);
	SEED("DescribeKey-service-bad-consistency", "/kms.v1.KeyManagement/DescribeKey", C_APP,
	     2, dk);

	lk.page_size = 2;
	SEED("ListKeys-admin-page", "/kms.v1.KeyManagement/ListKeys", C_ADMIN, 0, lk);
	lk.page_size = 0;
	lk.page_token = (char *)"fuzz-admin";
	SEED("ListKeys-service-token", "/kms.v1.KeyManagement/ListKeys", C_APP, 0, lk);
	lk.page_size = 5000;
	lk.page_token = (char *)"";
	SEED("ListKeys-stranger-too-big", "/kms.v1.KeyManagement/ListKeys", C_STRANGER, 0, lk);

	ee.key = (char *)"purpose";
	ee.value = (char *)"fuzz";
	en.key_id = (char *)"fuzz-app";
	en.plaintext.data = pt;
	en.plaintext.len = sizeof(pt) - 1;
	en.n_encryption_context = 1;
	en.encryption_context = eep;
	SEED("Encrypt-service", "/kms.v1.KeyManagement/Encrypt", C_APP, 0, en);
	SEED("Encrypt-service-leader-commit", "/kms.v1.KeyManagement/Encrypt", C_APP, 1, en);
	SEED("Encrypt-stranger", "/kms.v1.KeyManagement/Encrypt", C_STRANGER, 0, en);
	SEED("Encrypt-node-refused", "/kms.v1.KeyManagement/Encrypt", C_MEMBER, 0, en);
	SEED("Encrypt-anonymous-refused", "/kms.v1.KeyManagement/Encrypt", C_NONE, 0, en);
	en.key_id = (char *)"fuzz-enc";
	en.n_encryption_context = 0;
	SEED("Encrypt-service-encrypt-only-key", "/kms.v1.KeyManagement/Encrypt", C_APP, 0, en);
	en.plaintext.len = 0;
	SEED("Encrypt-service-empty", "/kms.v1.KeyManagement/Encrypt", C_APP, 0, en);
	SEED_RAW("Encrypt-service-nul-in-key-id", "/kms.v1.KeyManagement/Encrypt", C_APP,
		 nul_key, sizeof(nul_key));
	SEED_RAW("Encrypt-service-truncated", "/kms.v1.KeyManagement/Encrypt", C_APP,
		 "\x0a\x20" "fuzz", 6);

	ge.key = (char *)"tenant";
	ge.value = (char *)"42";
	gd.key_id = (char *)"fuzz-app";
	gd.n_encryption_context = 1;
	gd.encryption_context = gep;
	SEED("GenerateDataKey-service", "/kms.v1.KeyManagement/GenerateDataKey", C_APP, 0, gd);
	gd.without_plaintext = 1;
	gd.number_of_bytes = 16;
	SEED("GenerateDataKey-service-without-plaintext", "/kms.v1.KeyManagement/GenerateDataKey",
	     C_APP, 0, gd);
	gd.number_of_bytes = 8;
	SEED("GenerateDataKey-service-too-short", "/kms.v1.KeyManagement/GenerateDataKey", C_APP,
	     0, gd);

	/* Blobs of this format for the seeded keys: valid but for the tag,
	 * which no run can know (each run's keys are new). */
	memset(&h, 0, sizeof(h));
	snprintf(h.key_id, sizeof(h.key_id), "fuzz-app");
	h.key_version = 1;
	memset(ct, 0x5a, sizeof(ct));
	if (kms_blob_encode(&h, ct, sizeof(ct), blob, sizeof(blob), &blob_len, &err) != KMS_OK)
		abort();
	dee.key = (char *)"purpose";
	dee.value = (char *)"fuzz";
	de.ciphertext_blob.data = blob;
	de.ciphertext_blob.len = blob_len;
	de.n_encryption_context = 1;
	de.encryption_context = deep;
	SEED("Decrypt-service", "/kms.v1.KeyManagement/Decrypt", C_APP, 0, de);
	de.key_id = (char *)"fuzz-enc";
	SEED("Decrypt-service-key-id-mismatch", "/kms.v1.KeyManagement/Decrypt", C_APP, 0, de);
	de.key_id = (char *)"";
	de.ciphertext_blob.len = blob_len - 20;
	SEED("Decrypt-service-truncated-blob", "/kms.v1.KeyManagement/Decrypt", C_APP, 0, de);
	snprintf(h.key_id, sizeof(h.key_id), "fuzz-enc");
	h.key_version = 2;
	if (kms_blob_encode(&h, ct, sizeof(ct), blob, sizeof(blob), &blob_len, &err) != KMS_OK)
		abort();
	de.ciphertext_blob.len = blob_len;
	de.n_encryption_context = 0;
	SEED("Decrypt-service-no-grant-no-version", "/kms.v1.KeyManagement/Decrypt", C_APP, 0,
	     de);
}

static void write_keyadmin_seeds(const char *dir)
{
	static char *ops[] = {"Decrypt"};
	Kms__V1__RotateKeyRequest rk = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	Kms__V1__SetRotationPolicyRequest rp = KMS__V1__SET_ROTATION_POLICY_REQUEST__INIT;
	Kms__V1__EnableKeyRequest en = KMS__V1__ENABLE_KEY_REQUEST__INIT;
	Kms__V1__DisableKeyRequest di = KMS__V1__DISABLE_KEY_REQUEST__INIT;
	Kms__V1__ScheduleKeyDeletionRequest sd = KMS__V1__SCHEDULE_KEY_DELETION_REQUEST__INIT;
	Kms__V1__CancelKeyDeletionRequest cd = KMS__V1__CANCEL_KEY_DELETION_REQUEST__INIT;
	Kms__V1__PutKeyPolicyRequest pp = KMS__V1__PUT_KEY_POLICY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *grants[] = {&grant};
	Kms__V1__CreateAliasRequest ca = KMS__V1__CREATE_ALIAS_REQUEST__INIT;
	Kms__V1__UpdateAliasRequest ua = KMS__V1__UPDATE_ALIAS_REQUEST__INIT;
	Kms__V1__DeleteAliasRequest da = KMS__V1__DELETE_ALIAS_REQUEST__INIT;
	Kms__V1__ListAliasesRequest la = KMS__V1__LIST_ALIASES_REQUEST__INIT;

	rk.key_id = (char *)"fuzz-app";
	SEED("RotateKey-admin", "/kms.v1.KeyManagement/RotateKey", C_ADMIN, 0, rk);
	SEED("RotateKey-service-refused", "/kms.v1.KeyManagement/RotateKey", C_APP, 0, rk);
	rk.key_id = (char *)"alias/fuzz";
	SEED("RotateKey-admin-by-alias", "/kms.v1.KeyManagement/RotateKey", C_ADMIN, 0, rk);

	rp.key_id = (char *)"fuzz-app";
	rp.rotation_period_seconds = 86400;
	rp.max_encryptions_per_version = 1000;
	SEED("SetRotationPolicy-admin", "/kms.v1.KeyManagement/SetRotationPolicy", C_ADMIN, 0, rp);
	rp.rotation_period_seconds = 1;
	SEED("SetRotationPolicy-admin-too-short", "/kms.v1.KeyManagement/SetRotationPolicy",
	     C_ADMIN, 0, rp);
	rp.rotation_period_seconds = 0;
	rp.max_encryptions_per_version = (UINT64_C(1) << 32) + 1;
	SEED("SetRotationPolicy-admin-too-many", "/kms.v1.KeyManagement/SetRotationPolicy",
	     C_ADMIN, 0, rp);

	di.key_id = (char *)"fuzz-app";
	SEED("DisableKey-admin", "/kms.v1.KeyManagement/DisableKey", C_ADMIN, 0, di);
	SEED("DisableKey-stranger", "/kms.v1.KeyManagement/DisableKey", C_STRANGER, 0, di);
	en.key_id = (char *)"fuzz-admin";
	SEED("EnableKey-admin", "/kms.v1.KeyManagement/EnableKey", C_ADMIN, 0, en);

	sd.key_id = (char *)"fuzz-admin";
	sd.pending_window_days = 7;
	SEED("ScheduleKeyDeletion-admin", "/kms.v1.KeyManagement/ScheduleKeyDeletion", C_ADMIN, 0,
	     sd);
	sd.pending_window_days = 3;
	SEED("ScheduleKeyDeletion-admin-window-too-short",
	     "/kms.v1.KeyManagement/ScheduleKeyDeletion", C_ADMIN, 0, sd);
	cd.key_id = (char *)"fuzz-admin";
	SEED("CancelKeyDeletion-admin-not-pending", "/kms.v1.KeyManagement/CancelKeyDeletion",
	     C_ADMIN, 0, cd);

	grant.principal = (char *)APP;
	grant.operations = ops;
	grant.n_operations = 1;
	policy.grants = grants;
	policy.n_grants = 1;
	pp.key_id = (char *)"fuzz-app";
	pp.policy = &policy;
	SEED("PutKeyPolicy-admin", "/kms.v1.KeyManagement/PutKeyPolicy", C_ADMIN, 0, pp);
	grant.principal = (char *)"spiffe://elsewhere.example/ns/x/sa/y";
	SEED("PutKeyPolicy-admin-foreign-domain", "/kms.v1.KeyManagement/PutKeyPolicy", C_ADMIN, 0,
	     pp);

	ca.alias_name = (char *)"alias/fuzz";
	ca.key_id = (char *)"fuzz-app";
	SEED("CreateAlias-admin", "/kms.v1.KeyManagement/CreateAlias", C_ADMIN, 0, ca);
	SEED("CreateAlias-service-refused", "/kms.v1.KeyManagement/CreateAlias", C_APP, 0, ca);
	ca.key_id = (char *)"alias/other";
	SEED("CreateAlias-admin-alias-of-alias", "/kms.v1.KeyManagement/CreateAlias", C_ADMIN, 0,
	     ca);
	ca.alias_name = (char *)"no-prefix";
	ca.key_id = (char *)"fuzz-app";
	SEED("CreateAlias-admin-bad-name", "/kms.v1.KeyManagement/CreateAlias", C_ADMIN, 0, ca);
	ua.alias_name = (char *)"alias/fuzz";
	ua.key_id = (char *)"fuzz-enc";
	SEED("UpdateAlias-admin", "/kms.v1.KeyManagement/UpdateAlias", C_ADMIN, 0, ua);
	da.alias_name = (char *)"alias/unknown";
	SEED("DeleteAlias-admin-unknown", "/kms.v1.KeyManagement/DeleteAlias", C_ADMIN, 0, da);
	la.page_size = 10;
	SEED("ListAliases-admin", "/kms.v1.KeyManagement/ListAliases", C_ADMIN, 0, la);
	la.key_id = (char *)"fuzz-app";
	SEED("ListAliases-admin-of-key", "/kms.v1.KeyManagement/ListAliases", C_ADMIN, 0, la);
	SEED("ListAliases-service-refused", "/kms.v1.KeyManagement/ListAliases", C_APP, 0, la);
}

/* An AddMember of node 5 at ports where nothing listens. */
static void add_member_seed(Kms__V1__AddMemberRequest *am, Kms__V1__Member *member)
{
	member->id = 5;
	member->raft_address = (char *)"127.0.0.1:1";
	member->grpc_address = (char *)"127.0.0.1:2";
	am->member = member;
	am->transport_key_sha256 =
		(char *)"5e0ccf2a6a3e1e3e2fa7c4b7a7f8f6d1c0b1a2938475665748392a1b0c9d8e7f";
}

/* The quorum calls: proposals of each kind, approvals, reads, a cancel. */
static void write_quorum_seeds(const char *dir)
{
	static char *admins_ok[] = {(char *)ADMIN, (char *)APP};
	static uint8_t sig[64] = {1, 2, 3}, fp[32] = {0x5e};
	Kms__V1__ProposeOperationRequest po = KMS__V1__PROPOSE_OPERATION_REQUEST__INIT;
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__RotateDomainKeyOperation rdk = KMS__V1__ROTATE_DOMAIN_KEY_OPERATION__INIT;
	Kms__V1__SetAdministratorsOperation sao = KMS__V1__SET_ADMINISTRATORS_OPERATION__INIT;
	Kms__V1__AddMemberOperation amo = KMS__V1__ADD_MEMBER_OPERATION__INIT;
	Kms__V1__ApproveOperationRequest ap = KMS__V1__APPROVE_OPERATION_REQUEST__INIT;
	Kms__V1__GetOperationRequest go = KMS__V1__GET_OPERATION_REQUEST__INIT;
	Kms__V1__ListOperationsRequest lo = KMS__V1__LIST_OPERATIONS_REQUEST__INIT;
	Kms__V1__CancelOperationRequest co = KMS__V1__CANCEL_OPERATION_REQUEST__INIT;
	Kms__V1__GetQuorumRequest gq = KMS__V1__GET_QUORUM_REQUEST__INIT;

	op.op_case = KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY;
	op.rotate_domain_key = &rdk;
	po.operation = &op;
	SEED("ProposeOperation-admin-rotate-domain-key", "/kms.v1.Operator/ProposeOperation",
	     C_ADMIN, 0, po);
	SEED("ProposeOperation-service-refused", "/kms.v1.Operator/ProposeOperation", C_APP, 0,
	     po);
	po.ttl_seconds = 86401;
	SEED("ProposeOperation-admin-ttl-too-long", "/kms.v1.Operator/ProposeOperation", C_ADMIN,
	     0, po);
	po.ttl_seconds = 0;
	sao.administrators = admins_ok;
	sao.n_administrators = 2;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS;
	op.set_administrators = &sao;
	SEED("ProposeOperation-admin-set-administrators", "/kms.v1.Operator/ProposeOperation",
	     C_ADMIN, 0, po);
	amo.id = 5;
	amo.raft_address = (char *)"127.0.0.1:1";
	amo.grpc_address = (char *)"127.0.0.1:2";
	amo.transport_key_sha256.data = fp;
	amo.transport_key_sha256.len = sizeof(fp);
	amo.grant_ttl_seconds = 600;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER;
	op.add_member = &amo;
	SEED("ProposeOperation-admin-add-member", "/kms.v1.Operator/ProposeOperation", C_ADMIN, 0,
	     po);
	op.op_case = KMS__V1__ROOT_OPERATION__OP__NOT_SET;
	SEED("ProposeOperation-admin-no-operation", "/kms.v1.Operator/ProposeOperation", C_ADMIN,
	     0, po);

	ap.proposal_id = (char *)"0123456789abcdef0123456789abcdef";
	ap.operator_name = (char *)"operator1";
	ap.signature.data = sig;
	ap.signature.len = sizeof(sig);
	SEED("ApproveOperation-admin-unknown", "/kms.v1.Operator/ApproveOperation", C_ADMIN, 0,
	     ap);
	ap.signature.len = 63;
	SEED("ApproveOperation-admin-short-signature", "/kms.v1.Operator/ApproveOperation",
	     C_ADMIN, 0, ap);
	go.proposal_id = ap.proposal_id;
	SEED("GetOperation-admin-unknown", "/kms.v1.Operator/GetOperation", C_ADMIN, 0, go);
	go.proposal_id = (char *)"NOT-AN-ID";
	SEED("GetOperation-admin-malformed-id", "/kms.v1.Operator/GetOperation", C_ADMIN, 0, go);
	SEED("ListOperations-admin", "/kms.v1.Operator/ListOperations", C_ADMIN, 0, lo);
	SEED("ListOperations-stranger", "/kms.v1.Operator/ListOperations", C_STRANGER, 0, lo);
	co.proposal_id = ap.proposal_id;
	SEED("CancelOperation-admin-unknown", "/kms.v1.Operator/CancelOperation", C_ADMIN, 0, co);
	SEED("GetQuorum-admin", "/kms.v1.Operator/GetQuorum", C_ADMIN, 0, gq);
}

static void write_operator_seeds(const char *dir)
{
	static char *admins_ok[] = {(char *)ADMIN, (char *)APP};
	static char *admins_node[] = {(char *)TD "/kmsd/node/3"};
	static char *admins_foreign[] = {(char *)"spiffe://elsewhere.example/ns/x/sa/y"};
	Kms__V1__ClusterStatusRequest cs = KMS__V1__CLUSTER_STATUS_REQUEST__INIT;
	Kms__V1__AddMemberRequest am = KMS__V1__ADD_MEMBER_REQUEST__INIT;
	Kms__V1__Member member = KMS__V1__MEMBER__INIT;
	Kms__V1__RemoveMemberRequest rm = KMS__V1__REMOVE_MEMBER_REQUEST__INIT;
	Kms__V1__ListAdministratorsRequest la = KMS__V1__LIST_ADMINISTRATORS_REQUEST__INIT;
	Kms__V1__SetAdministratorsRequest sa = KMS__V1__SET_ADMINISTRATORS_REQUEST__INIT;

	SEED("ClusterStatus-admin", "/kms.v1.Operator/ClusterStatus", C_ADMIN, 0, cs);
	SEED("ClusterStatus-service-refused", "/kms.v1.Operator/ClusterStatus", C_APP, 0, cs);

	add_member_seed(&am, &member);
	SEED("AddMember-admin", ADD_MEMBER, C_ADMIN, 0, am);
	am.grant_ttl_seconds = 100000;
	SEED("AddMember-admin-ttl-too-long", ADD_MEMBER, C_ADMIN, 0, am);
	am.grant_ttl_seconds = 0;
	am.transport_key_sha256 = (char *)"not hex";
	SEED("AddMember-admin-bad-fingerprint", ADD_MEMBER, C_ADMIN, 0, am);
	am.transport_key_sha256 =
		(char *)"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	member.id = 1;
	SEED("AddMember-admin-self", ADD_MEMBER, C_ADMIN, 0, am);
	member.id = 6;
	member.raft_address = (char *)"no port";
	SEED("AddMember-admin-bad-address", ADD_MEMBER, C_ADMIN, 0, am);

	rm.id = 1;
	SEED("RemoveMember-admin-last", "/kms.v1.Operator/RemoveMember", C_ADMIN, 0, rm);
	rm.id = 7;
	SEED("RemoveMember-admin-unknown", "/kms.v1.Operator/RemoveMember", C_ADMIN, 0, rm);

	SEED("ListAdministrators-admin", "/kms.v1.Operator/ListAdministrators", C_ADMIN, 0, la);
	SEED("ListAdministrators-stranger", "/kms.v1.Operator/ListAdministrators", C_STRANGER, 0,
	     la);

	sa.administrators = admins_ok;
	sa.n_administrators = 2;
	SEED("SetAdministrators-admin", "/kms.v1.Operator/SetAdministrators", C_ADMIN, 0, sa);
	sa.administrators = admins_node;
	sa.n_administrators = 1;
	SEED("SetAdministrators-admin-node-identity", "/kms.v1.Operator/SetAdministrators",
	     C_ADMIN, 0, sa);
	sa.administrators = admins_foreign;
	SEED("SetAdministrators-admin-other-domain", "/kms.v1.Operator/SetAdministrators",
	     C_ADMIN, 0, sa);
	write_quorum_seeds(dir);
}

static void write_internal_seeds(const char *dir)
{
	static uint8_t wrapped[40] = {0xa6, 0x59, 0x59, 0xa6};
	static uint8_t modulus[256], exponent[] = {1, 0, 1};
	Kms__V1__ForwardRequest fw = KMS__V1__FORWARD_REQUEST__INIT;
	Kms__V1__NodeStatusRequest ns = KMS__V1__NODE_STATUS_REQUEST__INIT;
	Kms__V1__FetchDomainKeyRequest fd = KMS__V1__FETCH_DOMAIN_KEY_REQUEST__INIT;
	Kms__V1__RelayRequest rl = KMS__V1__RELAY_REQUEST__INIT;
	Kms__V1__ReadIndexRequest ri = KMS__V1__READ_INDEX_REQUEST__INIT;
	Kms__V1__AddMemberRequest am = KMS__V1__ADD_MEMBER_REQUEST__INIT;
	Kms__V1__Member member = KMS__V1__MEMBER__INIT;
	Kms__V1__SetAdministratorsRequest sa = KMS__V1__SET_ADMINISTRATORS_REQUEST__INIT;
	static char *admins[] = {(char *)ADMIN, (char *)STRANGER};
	kms_buf cmd = {0};
	kms_err err = {0};
	uint8_t *inner;
	size_t inner_len;

	if (kms_keyring_cmd_create_key("seed/forwarded", "forwarded by a seed", NULL, ADMIN,
				       1700000000, wrapped, sizeof(wrapped), &cmd,
				       &err) != KMS_OK)
		abort();
	fw.command.data = cmd.data;
	fw.command.len = cmd.len;
	fw.principal = (char *)ADMIN;
	SEED("Forward-member-create-key", "/kms.v1.Internal/Forward", C_MEMBER, 0, fw);
	SEED("Forward-outsider", "/kms.v1.Internal/Forward", C_OUTSIDER, 0, fw);
	fw.principal = (char *)APP;
	SEED("Forward-member-not-admin", "/kms.v1.Internal/Forward", C_MEMBER, 0, fw);
	{
		/* One write the leader takes and one it refuses, in one call. */
		Kms__V1__ForwardRequest fw_admin = fw, *writes[] = {&fw_admin, &fw};
		Kms__V1__ForwardBatchRequest fb = KMS__V1__FORWARD_BATCH_REQUEST__INIT;

		fw_admin.principal = (char *)ADMIN;
		fb.writes = writes;
		fb.n_writes = 2;
		SEED("ForwardBatch-member-mixed", "/kms.v1.Internal/ForwardBatch", C_MEMBER, 0, fb);
		SEED("ForwardBatch-outsider", "/kms.v1.Internal/ForwardBatch", C_OUTSIDER, 0, fb);
		fb.n_writes = 0;
		SEED("ForwardBatch-member-empty", "/kms.v1.Internal/ForwardBatch", C_MEMBER, 0, fb);
	}
	kms_buf_free(&cmd);
	if (kms_keyring_cmd_set_key_enabled("fuzz-app", 0, &cmd, &err) != KMS_OK)
		abort();
	fw.command.data = cmd.data;
	fw.command.len = cmd.len;
	fw.principal = (char *)ADMIN;
	SEED("Forward-member-disable-key", "/kms.v1.Internal/Forward", C_MEMBER, 0, fw);
	fw.principal = (char *)APP;
	SEED("Forward-member-disable-key-not-admin", "/kms.v1.Internal/Forward", C_MEMBER, 0, fw);
	kms_buf_free(&cmd);
	if (kms_keyring_cmd_destroy_key("fuzz-app", 1700000000, &cmd, &err) != KMS_OK)
		abort();
	fw.command.data = cmd.data;
	fw.command.len = cmd.len;
	fw.principal = (char *)ADMIN;
	SEED("Forward-member-destroy-key-refused", "/kms.v1.Internal/Forward", C_MEMBER, 0, fw);
	kms_buf_free(&cmd);

	SEED("NodeStatus-member", "/kms.v1.Internal/NodeStatus", C_MEMBER, 0, ns);
	SEED("NodeStatus-outsider", "/kms.v1.Internal/NodeStatus", C_OUTSIDER, 0, ns);
	SEED("NodeStatus-service-refused", "/kms.v1.Internal/NodeStatus", C_APP, 0, ns);

	memset(modulus, 0xc3, sizeof(modulus));
	fd.node_id = 1;
	fd.rsa_modulus.data = modulus;
	fd.rsa_modulus.len = sizeof(modulus);
	fd.rsa_public_exponent.data = exponent;
	fd.rsa_public_exponent.len = sizeof(exponent);
	SEED("FetchDomainKey-member-no-grant", "/kms.v1.Internal/FetchDomainKey", C_MEMBER, 0, fd);
	fd.node_id = 2;
	SEED("FetchDomainKey-member-other-node", "/kms.v1.Internal/FetchDomainKey", C_MEMBER, 0,
	     fd);

	add_member_seed(&am, &member);
	inner = pack(&am.base, &inner_len);
	rl.principal = (char *)ADMIN;
	rl.method = (char *)ADD_MEMBER;
	rl.request.data = inner;
	rl.request.len = inner_len;
	SEED("Relay-member-add-member", RELAY, C_MEMBER, 0, rl);
	free(inner);
	sa.administrators = admins;
	sa.n_administrators = 2;
	inner = pack(&sa.base, &inner_len);
	rl.method = (char *)"/kms.v1.Operator/SetAdministrators";
	rl.request.data = inner;
	rl.request.len = inner_len;
	SEED("Relay-member-set-administrators", RELAY, C_MEMBER, 0, rl);
	rl.principal = (char *)TD "/kmsd/node/2";
	SEED("Relay-member-node-principal", RELAY, C_MEMBER, 0, rl);
	rl.principal = (char *)ADMIN;
	rl.method = (char *)"/kms.v1.KeyManagement/Encrypt";
	SEED("Relay-member-not-a-leader-op", RELAY, C_MEMBER, 0, rl);
	free(inner);

	ri.principal = (char *)APP;
	ri.key_id = (char *)"fuzz-app";
	ri.operation = (char *)"Encrypt";
	SEED("ReadIndex-member", "/kms.v1.Internal/ReadIndex", C_MEMBER, 0, ri);
	ri.principal = (char *)STRANGER;
	ri.operation = (char *)"Decrypt";
	SEED("ReadIndex-member-stranger", "/kms.v1.Internal/ReadIndex", C_MEMBER, 0, ri);
	ri.operation = (char *)"Sign";
	SEED("ReadIndex-member-bad-operation", "/kms.v1.Internal/ReadIndex", C_MEMBER, 0, ri);
}

/* ReEncrypt and the batch calls, each with good and bad items side by side. */
static void write_batch_seeds(const char *dir)
{
	Kms__V1__ReEncryptRequest re = KMS__V1__RE_ENCRYPT_REQUEST__INIT, *rep[2];
	Kms__V1__ReEncryptRequest re_bad = KMS__V1__RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptRequest br = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__DecryptRequest de[3], *dep[3];
	Kms__V1__BatchDecryptRequest bd = KMS__V1__BATCH_DECRYPT_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest gd[4], *gdp[4];
	Kms__V1__BatchGenerateDataKeyRequest bg = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge =
		KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *gep[] = {&ge};
	uint8_t blob[KMS_BLOB_MAX], ct[32 + KMS_GCM_TAG_LEN];
	kms_blob_header h;
	size_t blob_len = 0;
	kms_err err = {0};
	/* A BatchDecrypt of one item whose key_id holds a NUL: "fuzz\0app". */
	static const uint8_t nul_item[] = {0x0a, 0x0a, 0x1a, 0x08, 'f', 'u', 'z', 'z',
					   0,	 'a',  'p',  'p'};

	memset(&h, 0, sizeof(h));
	snprintf(h.key_id, sizeof(h.key_id), "fuzz-app");
	h.key_version = 1;
	memset(ct, 0x3c, sizeof(ct));
	if (kms_blob_encode(&h, ct, sizeof(ct), blob, sizeof(blob), &blob_len, &err) != KMS_OK)
		abort();
	re.ciphertext_blob.data = blob;
	re.ciphertext_blob.len = blob_len;
	re.destination_key_id = (char *)"fuzz-enc";
	SEED("ReEncrypt-service", "/kms.v1.KeyManagement/ReEncrypt", C_APP, 0, re);
	SEED("ReEncrypt-stranger", "/kms.v1.KeyManagement/ReEncrypt", C_STRANGER, 0, re);
	re_bad = re;
	re_bad.source_key_id = (char *)"fuzz-enc";
	re_bad.destination_key_id = (char *)"fuzz-admin";
	SEED("ReEncrypt-service-mismatch-no-grant", "/kms.v1.KeyManagement/ReEncrypt", C_APP, 0,
	     re_bad);
	rep[0] = &re;
	rep[1] = &re_bad;
	br.requests = rep;
	br.n_requests = 2;
	SEED("BatchReEncrypt-service", "/kms.v1.KeyManagement/BatchReEncrypt", C_APP, 1, br);

	for (size_t i = 0; i < 3; i++) {
		kms__v1__decrypt_request__init(&de[i]);
		de[i].ciphertext_blob.data = blob;
		de[i].ciphertext_blob.len = blob_len;
		dep[i] = &de[i];
	}
	de[1].key_id = (char *)"fuzz-enc";
	de[2].ciphertext_blob.len = 7;
	bd.requests = dep;
	bd.n_requests = 3;
	SEED("BatchDecrypt-service", "/kms.v1.KeyManagement/BatchDecrypt", C_APP, 0, bd);
	SEED("BatchDecrypt-anonymous-refused", "/kms.v1.KeyManagement/BatchDecrypt", C_NONE, 0,
	     bd);
	bd.n_requests = 0;
	SEED("BatchDecrypt-service-empty", "/kms.v1.KeyManagement/BatchDecrypt", C_APP, 0, bd);
	SEED_RAW("BatchDecrypt-service-nul-item", "/kms.v1.KeyManagement/BatchDecrypt", C_APP,
		 nul_item, sizeof(nul_item));

	ge.key = (char *)"tenant";
	ge.value = (char *)"7";
	for (size_t i = 0; i < 4; i++) {
		kms__v1__generate_data_key_request__init(&gd[i]);
		gd[i].key_id = (char *)"fuzz-app";
		gd[i].encryption_context = gep;
		gd[i].n_encryption_context = 1;
		gdp[i] = &gd[i];
	}
	gd[1].number_of_bytes = 8;
	gd[2].key_id = (char *)"fuzz-enc";
	gd[3].without_plaintext = 1;
	gd[3].number_of_bytes = 64;
	bg.requests = gdp;
	bg.n_requests = 4;
	SEED("BatchGenerateDataKey-service", "/kms.v1.KeyManagement/BatchGenerateDataKey", C_APP,
	     0, bg);
	SEED("BatchGenerateDataKey-stranger", "/kms.v1.KeyManagement/BatchGenerateDataKey",
	     C_STRANGER, 0, bg);
}

static void write_corpus(const char *dir)
{
	Grpc__Health__V1__HealthCheckRequest hc = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;

	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "fuzz_handlers: cannot create %s: %s\n", dir, strerror(errno));
		exit(1);
	}
	write_keymgmt_seeds(dir);
	write_keyadmin_seeds(dir);
	write_operator_seeds(dir);
	write_internal_seeds(dir);
	write_batch_seeds(dir);
	SEED("Check-anonymous", "/grpc.health.v1.Health/Check", C_NONE, 0, hc);
	hc.service = (char *)"kms.v1.KeyManagement";
	SEED("Check-service-named", "/grpc.health.v1.Health/Check", C_APP, 0, hc);
	hc.service = (char *)"kms.v1.Unknown";
	SEED("Check-unknown-service", "/grpc.health.v1.Health/Check", C_NONE, 0, hc);
	SEED_RAW("Check-garbage", "/grpc.health.v1.Health/Check", C_NONE, "\xff\xff\xff", 3);
	printf("fuzz_handlers: wrote the seed corpus into %s\n", dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_WRITE_CORPUS");
	kms_err err = {0};

	(void)argc;
	(void)argv;
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	guard_init();
	methods_init();
	if (dir != NULL && dir[0] != '\0') {
		write_corpus(dir);
		exit(0);
	}
	/* As kmsd does: a write to a vanished peer must not end the process. */
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < N_CALLERS; i++) {
		peers[i].kind = callers[i].kind;
		peers[i].node_id = callers[i].node_id;
		if (callers[i].id != NULL &&
		    kms_spiffe_parse_str(callers[i].id, 1, &peers[i].id, &err) != KMS_OK) {
			fprintf(stderr, "fuzz_handlers: %s: %s\n", callers[i].id, err.msg);
			abort();
		}
	}
	start_node();
	return 0;
}
