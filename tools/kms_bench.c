/* kms_bench.c - kms-bench: a load generator for kmsd over gRPC, and a raw
 * PKCS#11 GCM baseline. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <malloc.h>
#include <sys/resource.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/slice.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "kms/alloc.h"
#include "kms/batch.h"
#include "kms/client.h"
#include "kms/client_batch.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/v1/kms.pb-c.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define DEFAULT_ENDPOINT "127.0.0.1:7401"
#define BENCH_DOMAIN_KEY_LABEL "kms-bench-domain-key"
#define BENCH_CTX_KEY "purpose"
#define BENCH_CTX_VALUE "kms-bench"
#define BENCH_AAD "kms-bench fixed aad"
/* Room for "bench-<pid>-<thread>-<n>": well under the 128-character limit. */
#define BENCH_KEY_ID_MAX 64
#define DATA_KEY_BYTES 32
#define DEFAULT_BATCH 64
#define PIN_MAX 256
/* How often a worker wakes up to look at the clock when nothing completes. */
#define POLL_MS 100
/* A call still unanswered after this long when the run ends counts as an error.
 */
#define STUCK_NS ((int64_t)1000000000)
/* How long making the blobs of a --keys decrypt run may take. */
#define KEYSET_SETUP_LIMIT_S 3600
/* The largest blob --blob reads: far above any blob kmsd makes. */
#define BLOB_FILE_MAX 8192

enum exit_code { EXIT_OK = 0, EXIT_LOCAL = 1, EXIT_SERVER = 2 };
enum bench_mode {
	MODE_GDK,
	MODE_DECRYPT,
	MODE_ENCRYPT,
	MODE_CREATE_KEY,
	MODE_BATCH_DECRYPT,
	MODE_BATCH_GDK,
	MODE_BATCH_REENCRYPT,
	MODE_ROTATE,
	MODE_RAW
};

static const char usage_text[] =
    "usage: kms-bench --mode generate-data-key|decrypt|encrypt --key-id ID\n"
    "                 [--concurrency N] [--threads T] [--duration S] [--warmup S]\n"
    "                 [--endpoint HOST:PORT] [--ca FILE] [--cert FILE] [--key FILE]\n"
    "                 [--server-name NAME] [--timeout MS] [--json]\n"
    "       kms-bench --mode batch-decrypt|batch-generate-data-key|batch-reencrypt\n"
    "                 --key-id ID [--batch B] [the same options]\n"
    "       kms-bench --mode create-key [--multi-region] [the same options, without --key-id]\n"
    "       kms-bench --mode create-key|decrypt --keys N [--key-prefix P]\n"
    "                 [--grant PRINCIPAL=OP[,OP...]] [the same options]\n"
    "       kms-bench --raw-pkcs11 --module PATH --token LABEL --pin-file FILE\n"
    "                 [--threads T] [--duration S] [--warmup S] [--json]\n"
    "       kms-bench --keyring N [--json]\n"
    "       kms-bench --mode decrypt --key-id ID [--blob FILE] [--refresh-ms MS]\n"
    "                 [the same options]\n"
    "       kms-bench --mode rotate-key --key-id ID (--rotations N | --interval-ms MS)\n"
    "                 [the same options]\n"
    "\n"
    "gRPC mode: T threads (default 2), each with its own completion queue, keep\n"
    "N calls in flight in total (default 8) on one mTLS channel; each completion\n"
    "starts the next call. decrypt mode first makes one 32-byte data key blob with\n"
    "GenerateDataKey and decrypts it over and over with the same context.\n"
    "encrypt mode encrypts the same 32-byte plaintext over and over.\n"
    "create-key mode calls CreateKey with a fresh key id\n"
    "'bench-<pid>-<thread>-<n>' and an empty policy each time (a committed Raft\n"
    "write; it needs an administrator's certificate). The keys stay.\n"
    "--multi-region makes them multi-region keys (replicated to the linked\n"
    "secondaries; in sync mode each call waits for them).\n"
    "The batch modes send B items per call (--batch, default 64, at most 1024):\n"
    "batch-decrypt first makes B data-key blobs with one BatchGenerateDataKey and\n"
    "decrypts them all in every call; batch-generate-data-key asks for B 32-byte\n"
    "data keys; batch-reencrypt re-encrypts the B blobs to the same key (it needs\n"
    "ReEncryptFrom and ReEncryptTo on it). Every answer is unpacked: ops and\n"
    "ops_per_sec count items, an item that failed counts as an error, and the\n"
    "latencies are those of whole calls.\n"
    "--endpoint/--ca/--cert/--key default to $KMS_ENDPOINT/$KMS_CA/$KMS_CERT/$KMS_KEY.\n"
    "\n"
    "Many keys (--keys N, with --key-prefix P, default 'ks-'): the keys P0..P<N-1>.\n"
    "create-key mode creates exactly those, each once (--grant PRINCIPAL=OP[,OP...]\n"
    "puts one grant in each policy), with no warm-up, and stops when all are made\n"
    "(or at --duration, then an error); ops_per_sec is over the time it took.\n"
    "decrypt mode first makes one data key blob under each key (N GenerateDataKey\n"
    "calls, as many in flight as the run keeps), then each call decrypts the blob of\n"
    "a key drawn uniformly at random, so a working set larger than kmsd's\n"
    "[hsm] max_unwrapped_versions measures its misses.\n"
    "\n"
    "Versions and rotation. decrypt mode with --blob FILE decrypts that blob (raw\n"
    "bytes, as kmsctl --blob-out writes them, made with the context\n"
    "" BENCH_CTX_KEY "=" BENCH_CTX_VALUE ") instead of making one: a blob of an old\n"
    "version. With --refresh-ms MS a thread makes a new blob under the key's\n"
    "primary version every MS ms (GenerateDataKey, not counted), and every other\n"
    "call decrypts the newest of those instead of the first blob, so that a key\n"
    "that rotates meanwhile has its old and its new versions decrypted.\n"
    "rotate-key mode (an administrator's certificate) calls RotateKey on --key-id,\n"
    "one call at a time: --rotations N makes exactly N rotations, with no warm-up,\n"
    "as fast as they commit (ops_per_sec over the time they took; --duration bounds\n"
    "it); --interval-ms MS starts one every MS ms for --warmup + --duration seconds\n"
    "(a background load: ops counts them all). A failed rotation is an error.\n"
    "\n"
    "Raw mode: the HSM baseline without kmsd. Ensures the token object\n"
    "'" BENCH_DOMAIN_KEY_LABEL "' (AES-256 domain key), makes a master key and\n"
    "unwraps it as a session object (as kmsd does), encrypts one 32-byte value, then\n"
    "T threads, one PKCS#11 session each, AES-GCM decrypt it in a loop.\n"
    "\n"
    "Key ring mode: the key ring alone, in this process (no kmsd, HSM or gRPC):\n"
    "applies N CreateKey commands like the ones kmsd commits (one grant, one\n"
    "40-byte wrapped version; the last 1% of the key ids at random places in the\n"
    "order, the others appended), then takes\n"
    "a snapshot and restores it into an empty key ring. Prints the apply time at\n"
    "N keys, the heap and RSS per key, the snapshot's size, time and CPU, the\n"
    "restore's time, CPU, page faults and peak RSS, and the RSS after the restore\n"
    "before and after malloc_trim(3).\n"
    "\n"
    "Both run --warmup seconds (default 2, not measured), then --duration seconds\n"
    "(default 10), then stop. Output: mode, threads, concurrency, batch, calls, ops,\n"
    "ops_per_sec, p50_us, p99_us, p999_us, errors, and with --refresh-ms\n"
    "refresh_calls, refresh_p50_us and refresh_max_us (its GenerateDataKey calls,\n"
    "warm-up included) ('field: value' lines, or one JSON\n"
    "object with --json). The first error is printed to stderr. A call still unanswered 1 s\n"
    "before the end counts as an error. --ready-file FILE is created when the set-up\n"
    "is over and the warm-up starts (for a script that samples the window).\n"
    "Exit status: 0 no errors, 1 usage or\n"
    "set-up failure, 2 some calls failed or none completed.\n";

static int is_batch_mode(enum bench_mode m)
{
	return m == MODE_BATCH_DECRYPT || m == MODE_BATCH_GDK || m == MODE_BATCH_REENCRYPT;
}

struct opts {
	enum bench_mode mode;
	const char *key_id;
	unsigned concurrency;
	unsigned threads;
	unsigned duration_s;
	unsigned warmup_s;
	unsigned batch; /* items per call of a batch mode; 1 otherwise */
	int json;
	kms_client_opts copts;
	const char *module;
	const char *token;
	const char *pin_file;
	unsigned keys;		/* --keys: 0 for one key (--key-id) */
	const char *key_prefix; /* --key-prefix */
	const char *grant;	/* --grant PRINCIPAL=OP[,OP...] */
	unsigned keyring;	/* --keyring N: the key ring alone */
	const char *blob_file;	/* --blob: decrypt this blob */
	unsigned refresh_ms;	/* --refresh-ms: a new blob under the primary this often */
	unsigned rotations;	/* rotate-key --rotations N */
	unsigned interval_ms;	/* rotate-key --interval-ms MS */
	const char *ready_file; /* --ready-file: made when the warm-up starts */
	int multi_region;	/* create-key --multi-region (issue #7) */
};

/* Latencies in nanoseconds, owned by one worker. */
struct lat {
	uint64_t *v;
	size_t n;
	size_t cap;
};

struct bench;

/* A packed DecryptRequest of a blob --refresh-ms made. */
struct fresh_req {
	struct fresh_req *next;
	size_t len;
	uint8_t req[];
};

struct worker {
	pthread_t tid;
	struct bench *b;
	unsigned index; /* 0..threads-1, part of create-key ids */
	uint64_t seq;	/* create-key ids this worker has used */
	unsigned seed;	/* --keys decrypt: which key each call takes */
	unsigned slots; /* calls kept in flight (gRPC mode) */
	struct lat lat;
	uint64_t calls;
	uint64_t ops; /* items: calls times the batch size, less the items that failed */
	uint64_t errors;
	char first_err[320];
	int64_t first_err_at;
	int64_t t_last; /* when its last counted call ended */
	uint64_t alt;	/* --refresh-ms: which blob its next call decrypts */
};

struct bench {
	const struct opts *o;
	int64_t t_measure; /* CLOCK_MONOTONIC ns: warm-up ends */
	int64_t t_end;	   /* ... and the measurement */
	/* gRPC mode */
	grpc_channel *channel;
	int timeout_ms;
	const char *method;
	const uint8_t *req; /* the request every call sends; NULL: per call */
	size_t req_len;
	/* a batch mode's answer, unpacked to count its items; NULL: single calls */
	const ProtobufCMessageDescriptor *answer;
	long pid; /* create-key ids */
	struct keyset *ks; /* --keys */
	/* --refresh-ms: the newest blob's request (NULL until the first), and
	 * every one made, kept until the end as calls in flight borrow them */
	struct fresh_req *_Atomic fresh;
	struct fresh_req *fresh_all;
	/* raw mode */
	kms_hsm *hsm;
	kms_hsm_key key;
	uint8_t iv[12];
	uint8_t ct[DATA_KEY_BYTES + 16];
	uint8_t pt[DATA_KEY_BYTES];
};

static void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errmsg(const char *fmt, ...)
{
	va_list ap;

	fputs("kms-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void quiet_grpc_log(gpr_log_func_args *args)
{
}

/* Records a latency; a full array that cannot grow drops the sample (counted in
 * ops). */
static void lat_add(struct lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		size_t cap = l->cap != 0 ? l->cap * 2 : 65536;
		uint64_t *v = kms_realloc(l->v, cap * sizeof(*v));

		if (v == NULL)
			return;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = ns;
}

static void worker_error(struct worker *w, int64_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void worker_error(struct worker *w, int64_t at, const char *fmt, ...)
{
	va_list ap;

	w->errors++;
	if (w->first_err[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(w->first_err, sizeof(w->first_err), fmt, ap);
	va_end(ap);
	w->first_err_at = at;
}

/* ---- gRPC mode ---- */

/* One call in flight: everything a unary batch needs until it completes. */
struct slot {
	grpc_call *call;
	grpc_byte_buffer *send;
	grpc_byte_buffer *recv;
	grpc_metadata_array md_initial;
	grpc_metadata_array md_trailing;
	grpc_status_code status;
	grpc_slice details;
	int64_t t0;
	unsigned idx; /* --keys: the key this call is for */
};

static void slot_release(struct slot *s)
{
	if (s->recv != NULL)
		grpc_byte_buffer_destroy(s->recv);
	if (s->send != NULL)
		grpc_byte_buffer_destroy(s->send);
	grpc_slice_unref(s->details);
	grpc_metadata_array_destroy(&s->md_initial);
	grpc_metadata_array_destroy(&s->md_trailing);
	if (s->call != NULL)
		grpc_call_unref(s->call);
	memset(s, 0, sizeof(*s));
}

/*
 * A CreateKeyRequest for a key id no other call uses: the pid keeps runs
 * apart, the worker index and its counter keep calls apart. The policy is
 * present and empty (no grants: default deny), as kmsd requires a policy.
 * The caller owns the returned slice (one reference).
 */
static grpc_slice create_key_request(struct worker *w)
{
	char key_id[BENCH_KEY_ID_MAX], description[] = "kms-bench";
	Kms__V1__CreateKeyRequest req = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	grpc_slice slice;

	snprintf(key_id, sizeof(key_id), "bench-%ld-%u-%llu", w->b->pid,
		 w->index, (unsigned long long)w->seq++);
	req.key_id = key_id;
	req.description = description;
	req.policy = &policy;
	req.multi_region = w->b->o->multi_region;
	slice = grpc_slice_malloc(protobuf_c_message_get_packed_size(&req.base));
	protobuf_c_message_pack(&req.base, GRPC_SLICE_START_PTR(slice));
	return slice;
}

/* ---- many keys (--keys N) ---- */

struct keyset {
	unsigned n;
	const char *prefix;
	atomic_uint next; /* the next key to create, or to make a blob under */
	int setting_up;	  /* decrypt: making the blobs (GenerateDataKey) */
	uint8_t **reqs;	  /* decrypt: each key's packed DecryptRequest */
	size_t *lens;
	/* create-key: the one grant of every policy (--grant), or none */
	char *principal;
	char **ops;
	size_t n_ops;
};

/* Counted phases make each key's call once, with no warm-up. */
static int keyset_counted(const struct bench *b)
{
	return b->ks != NULL && (b->o->mode == MODE_CREATE_KEY || b->ks->setting_up);
}

static grpc_slice pack_slice(const ProtobufCMessage *m)
{
	grpc_slice slice = grpc_slice_malloc(protobuf_c_message_get_packed_size(m));

	protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(slice));
	return slice;
}

/* The request of the next call of a --keys run; 1 when none is left. */
static int keyset_request(struct worker *w, struct slot *s, grpc_slice *out)
{
	struct bench *b = w->b;
	struct keyset *ks = b->ks;
	char id[BENCH_KEY_ID_MAX], description[] = "kms-bench", ck[] = BENCH_CTX_KEY,
					       cv[] = BENCH_CTX_VALUE;
	Kms__V1__CreateKeyRequest cr = KMS__V1__CREATE_KEY_REQUEST__INIT;
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *gp = &grant;
	Kms__V1__GenerateDataKeyRequest gdk = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *gep = &ge;
	unsigned i;

	if (!keyset_counted(b)) {
		i = (unsigned)rand_r(&w->seed) % ks->n;
		s->idx = i;
		*out = grpc_slice_from_static_buffer(ks->reqs[i], ks->lens[i]);
		return 0;
	}
	i = atomic_fetch_add(&ks->next, 1);
	if (i >= ks->n)
		return 1;
	s->idx = i;
	snprintf(id, sizeof(id), "%s%u", ks->prefix, i);
	if (b->o->mode == MODE_CREATE_KEY) {
		cr.key_id = id;
		cr.description = description;
		cr.policy = &policy;
		cr.multi_region = b->o->multi_region;
		if (ks->principal != NULL) {
			grant.principal = ks->principal;
			grant.operations = ks->ops;
			grant.n_operations = ks->n_ops;
			policy.grants = &gp;
			policy.n_grants = 1;
		}
		*out = pack_slice(&cr.base);
		return 0;
	}
	ge.key = ck;
	ge.value = cv;
	gdk.key_id = id;
	gdk.number_of_bytes = DATA_KEY_BYTES;
	gdk.n_encryption_context = 1;
	gdk.encryption_context = &gep;
	*out = pack_slice(&gdk.base);
	return 0;
}

/* Setting up: keeps the DecryptRequest of the blob s received. */
static int keyset_keep(struct bench *b, struct slot *s)
{
	struct keyset *ks = b->ks;
	char ck[] = BENCH_CTX_KEY, cv[] = BENCH_CTX_VALUE;
	Kms__V1__DecryptRequest dec = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry de =
	    KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry *dep = &de;
	Kms__V1__GenerateDataKeyResponse *resp;
	grpc_byte_buffer_reader r;
	grpc_slice all;
	int rc = -1;

	if (!grpc_byte_buffer_reader_init(&r, s->recv))
		return -1;
	all = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	resp = kms__v1__generate_data_key_response__unpack(NULL, GRPC_SLICE_LENGTH(all),
							    GRPC_SLICE_START_PTR(all));
	/* It held the data key: not a secret of anyone's, wiped all the same. */
	kms_cleanse(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
	grpc_slice_unref(all);
	if (resp == NULL)
		return -1;
	de.key = ck;
	de.value = cv;
	dec.ciphertext_blob = resp->ciphertext_blob;
	dec.n_encryption_context = 1;
	dec.encryption_context = &dep;
	ks->lens[s->idx] = protobuf_c_message_get_packed_size(&dec.base);
	ks->reqs[s->idx] = kms_malloc(ks->lens[s->idx]);
	if (ks->reqs[s->idx] != NULL) {
		protobuf_c_message_pack(&dec.base, ks->reqs[s->idx]);
		rc = 0;
	}
	kms_cleanse(resp->plaintext.data, resp->plaintext.len);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

static void keyset_free(struct keyset *ks)
{
	if (ks == NULL)
		return;
	for (unsigned i = 0; ks->reqs != NULL && i < ks->n; i++)
		kms_free(ks->reqs[i]);
	kms_free(ks->reqs);
	kms_free(ks->lens);
	for (size_t i = 0; i < ks->n_ops; i++)
		kms_free(ks->ops[i]);
	kms_free(ks->ops);
	kms_free(ks->principal);
	kms_free(ks);
}

/* The key set of o (--keys, --key-prefix, --grant), or NULL on no memory. */
static struct keyset *keyset_new(const struct opts *o)
{
	struct keyset *ks = kms_calloc(1, sizeof(*ks));
	const char *eq, *p;

	if (ks == NULL)
		return NULL;
	ks->n = o->keys;
	ks->prefix = o->key_prefix;
	atomic_init(&ks->next, 0);
	ks->reqs = kms_calloc(ks->n, sizeof(*ks->reqs));
	ks->lens = kms_calloc(ks->n, sizeof(*ks->lens));
	if (ks->reqs == NULL || ks->lens == NULL)
		goto fail;
	if (o->grant == NULL)
		return ks;
	/* PRINCIPAL=OP[,OP...], checked by parse_args. */
	eq = strchr(o->grant, '=');
	ks->principal = kms_strndup(o->grant, (size_t)(eq - o->grant));
	ks->ops = kms_calloc(strlen(eq), sizeof(*ks->ops));
	if (ks->principal == NULL || ks->ops == NULL)
		goto fail;
	for (p = eq + 1; *p != '\0'; p += *p == ',') {
		size_t len = strcspn(p, ",");

		ks->ops[ks->n_ops] = kms_strndup(p, len);
		if (ks->ops[ks->n_ops++] == NULL)
			goto fail;
		p += len;
	}
	return ks;
fail:
	keyset_free(ks);
	return NULL;
}

/* Starts one call on cq with s as its tag; 0 when it is in flight, 1 when
 * a --keys run has no call left to make, -1 on an error. */
static int slot_start(struct worker *w, grpc_completion_queue *cq,
		      struct slot *s)
{
	struct bench *b = w->b;
	grpc_slice req;
	grpc_op ops[6];
	grpc_call_error ce;
	gpr_timespec deadline;

	memset(s, 0, sizeof(*s));
	s->details = grpc_empty_slice();
	grpc_metadata_array_init(&s->md_initial);
	grpc_metadata_array_init(&s->md_trailing);
	s->t0 = now_ns();
	if (b->req != NULL) {
		struct fresh_req *f = atomic_load_explicit(&b->fresh, memory_order_acquire);

		if (f != NULL && (w->alt++ & 1) != 0)
			req = grpc_slice_from_static_buffer(f->req, f->len);
		else
			req = grpc_slice_from_static_buffer(b->req, b->req_len);
	} else if (b->ks != NULL) {
		int rc = keyset_request(w, s, &req);

		if (rc != 0) {
			slot_release(s);
			return rc;
		}
	} else {
		req = create_key_request(w);
	}
	deadline =
	    gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			 gpr_time_from_millis(b->timeout_ms, GPR_TIMESPAN));
	s->call = grpc_channel_create_call(
	    b->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
	    grpc_slice_from_static_string(b->method), NULL, deadline, NULL);
	if (s->call == NULL) {
		worker_error(w, s->t0, "cannot create a call");
		goto fail;
	}
	/* The byte buffer holds its own reference to the slice. */
	s->send = grpc_raw_byte_buffer_create(&req, 1);
	grpc_slice_unref(req);
	if (s->send == NULL) {
		worker_error(w, s->t0, "cannot create a request buffer");
		goto fail;
	}
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = s->send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata =
	    &s->md_initial;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &s->recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &s->md_trailing;
	ops[5].data.recv_status_on_client.status = &s->status;
	ops[5].data.recv_status_on_client.status_details = &s->details;
	ce = grpc_call_start_batch(s->call, ops, 6, s, NULL);
	if (ce != GRPC_CALL_OK) {
		worker_error(w, s->t0, "grpc_call_start_batch failed (%d)",
			     (int)ce);
		goto fail;
	}
	return 0;
fail:
	slot_release(s);
	return -1;
}

/*
 * The items of a batch answer that succeeded; each that failed is an error.
 * The answer is unpacked whole (as a client would) and wiped.
 */
static uint64_t batch_items(struct worker *w, struct slot *s, int64_t t1)
{
	const struct bench *b = w->b;
	grpc_byte_buffer_reader r;
	grpc_slice flat;
	ProtobufCMessage *answer;
	size_t ok = 0, failed = 0;
	const char *first = NULL;

	if (!grpc_byte_buffer_reader_init(&r, s->recv)) {
		worker_error(w, t1, "cannot read a batch answer");
		return 0;
	}
	flat = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	answer = protobuf_c_message_unpack(b->answer, NULL, GRPC_SLICE_LENGTH(flat),
					   GRPC_SLICE_START_PTR(flat));
	if (answer == NULL) {
		worker_error(w, t1, "a batch answer does not parse");
	} else {
		kms_client_batch_tally(answer, &ok, &failed, &first);
		if (ok + failed != b->o->batch)
			worker_error(w, t1, "%zu results for %u items", ok + failed, b->o->batch);
		if (failed > 0) {
			w->errors += failed - 1;
			worker_error(w, t1, "%zu of %u items failed, the first: %s", failed,
				     b->o->batch, first != NULL ? first : "(no message)");
		}
		kms_client_batch_free(answer);
	}
	kms_cleanse(GRPC_SLICE_START_PTR(flat), GRPC_SLICE_LENGTH(flat));
	grpc_slice_unref(flat);
	return ok;
}

/* Accounts for a completed call and frees it. */
static void slot_finish(struct worker *w, struct slot *s, int success)
{
	struct bench *b = w->b;
	int64_t t1 = now_ns();

	/*
	 * A call that ends after the window was cancelled by us: not a result,
	 * unless it had already waited that long for nothing (a hung server).
	 */
	if (t1 > b->t_end) {
		if (b->t_end - s->t0 > STUCK_NS)
			worker_error(
			    w, b->t_end,
			    "a call got no answer within %d ms before the end",
			    (int)(STUCK_NS / 1000000));
		goto out;
	}
	if (!success) {
		worker_error(w, t1, "the call's batch failed");
	} else if (s->status != GRPC_STATUS_OK) {
		worker_error(w, t1, "%s: %.*s", kms_grpc_status_name(s->status),
			     (int)GRPC_SLICE_LENGTH(s->details),
			     (const char *)GRPC_SLICE_START_PTR(s->details));
	} else if (s->recv == NULL) {
		worker_error(w, t1, "status OK without a response message");
	} else if (b->ks != NULL && b->ks->setting_up && keyset_keep(b, s) != 0) {
		worker_error(w, t1, "cannot keep the blob of key %s%u", b->ks->prefix, s->idx);
	} else if (s->t0 >= b->t_measure) {
		w->calls++;
		w->ops += b->answer != NULL ? batch_items(w, s, t1) : 1;
		lat_add(&w->lat, (uint64_t)(t1 - s->t0));
		w->t_last = t1;
	}
out:
	slot_release(s);
}

static void *grpc_worker(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
	struct slot *slots = kms_calloc(w->slots, sizeof(*slots));
	unsigned i, in_flight = 0;
	int cancelled = 0;

	if (cq == NULL || slots == NULL) {
		worker_error(w, now_ns(), "out of memory starting a worker");
		goto out;
	}
	for (i = 0; i < w->slots; i++)
		if (slot_start(w, cq, &slots[i]) == 0)
			in_flight++;
	while (in_flight > 0) {
		grpc_event ev = grpc_completion_queue_next(
		    cq,
		    gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				 gpr_time_from_millis(POLL_MS, GPR_TIMESPAN)),
		    NULL);
		int64_t t = now_ns();

		if (ev.type == GRPC_OP_COMPLETE) {
			struct slot *s = ev.tag;

			in_flight--;
			slot_finish(w, s, ev.success);
			if (t < b->t_end && slot_start(w, cq, s) == 0)
				in_flight++;
		}
		/* Stop on time even if the server hangs: cancel the rest. */
		if (t >= b->t_end && !cancelled) {
			cancelled = 1;
			for (i = 0; i < w->slots; i++)
				if (slots[i].call != NULL)
					grpc_call_cancel(slots[i].call, NULL);
		}
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
	}
out:
	if (cq != NULL) {
		grpc_completion_queue_shutdown(cq);
		while (grpc_completion_queue_next(
			   cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
			   .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(cq);
	}
	kms_free(slots);
	return NULL;
}

/* msg packed into a new *req of *req_len bytes (the caller frees it). */
static int pack_request(const ProtobufCMessage *msg, uint8_t **req, size_t *req_len)
{
	*req_len = protobuf_c_message_get_packed_size(msg);
	*req = kms_malloc(*req_len);
	if (*req == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	protobuf_c_message_pack(msg, *req);
	return EXIT_OK;
}

/* The items of a batch mode, borrowed by the packed request. */
struct batch_items {
	Kms__V1__GenerateDataKeyRequest gdk[KMS_BATCH_MAX_ITEMS], *gdk_p[KMS_BATCH_MAX_ITEMS];
	Kms__V1__DecryptRequest dec[KMS_BATCH_MAX_ITEMS], *dec_p[KMS_BATCH_MAX_ITEMS];
	Kms__V1__ReEncryptRequest re[KMS_BATCH_MAX_ITEMS], *re_p[KMS_BATCH_MAX_ITEMS];
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge, *gep;
	Kms__V1__DecryptRequest__EncryptionContextEntry de, *dep;
	Kms__V1__ReEncryptRequest__SourceEncryptionContextEntry se, *sep;
	Kms__V1__ReEncryptRequest__DestinationEncryptionContextEntry te, *tep;
};

/*
 * The request of a batch mode, packed into *req. The decrypt and re-encrypt
 * modes first make their blobs with one blocking BatchGenerateDataKey
 * without plaintext.
 */
static int batch_setup(struct bench *b, kms_client *c, uint8_t **req, size_t *req_len)
{
	const struct opts *o = b->o;
	char ctx_key[] = BENCH_CTX_KEY, ctx_value[] = BENCH_CTX_VALUE;
	struct batch_items *it = kms_calloc(1, sizeof(*it));
	Kms__V1__BatchGenerateDataKeyRequest bg = KMS__V1__BATCH_GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__BatchDecryptRequest bd = KMS__V1__BATCH_DECRYPT_REQUEST__INIT;
	Kms__V1__BatchReEncryptRequest br = KMS__V1__BATCH_RE_ENCRYPT_REQUEST__INIT;
	Kms__V1__BatchGenerateDataKeyResponse *blobs = NULL;
	const ProtobufCMessage *msg = &bg.base;
	kms_rpc_status st;
	int rc = EXIT_OK;

	if (it == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	kms__v1__generate_data_key_request__encryption_context_entry__init(&it->ge);
	kms__v1__decrypt_request__encryption_context_entry__init(&it->de);
	kms__v1__re_encrypt_request__source_encryption_context_entry__init(&it->se);
	kms__v1__re_encrypt_request__destination_encryption_context_entry__init(&it->te);
	it->ge.key = it->de.key = it->se.key = it->te.key = ctx_key;
	it->ge.value = it->de.value = it->se.value = it->te.value = ctx_value;
	it->gep = &it->ge;
	it->dep = &it->de;
	it->sep = &it->se;
	it->tep = &it->te;
	for (unsigned i = 0; i < o->batch; i++) {
		kms__v1__generate_data_key_request__init(&it->gdk[i]);
		it->gdk[i].key_id = (char *)o->key_id;
		it->gdk[i].number_of_bytes = DATA_KEY_BYTES;
		it->gdk[i].n_encryption_context = 1;
		it->gdk[i].encryption_context = &it->gep;
		it->gdk[i].without_plaintext = o->mode != MODE_BATCH_GDK;
		it->gdk_p[i] = &it->gdk[i];
	}
	bg.requests = it->gdk_p;
	bg.n_requests = o->batch;
	b->method = "/kms.v1.KeyManagement/BatchGenerateDataKey";
	b->answer = &kms__v1__batch_generate_data_key_response__descriptor;
	if (o->mode != MODE_BATCH_GDK) {
		size_t ok, failed;
		const char *first;

		if (kms_client_batch_generate_data_key(c, &bg, &blobs, &st) != 0) {
			errmsg("setting up: BatchGenerateDataKey: %s: %s",
			       kms_grpc_status_name(st.code), st.details);
			rc = EXIT_SERVER;
			goto out;
		}
		kms_client_batch_tally(&blobs->base, &ok, &failed, &first);
		if (failed > 0) {
			errmsg("setting up: BatchGenerateDataKey: %zu items failed: %s", failed,
			       first);
			rc = EXIT_SERVER;
			goto out;
		}
	}
	for (unsigned i = 0; i < o->batch && blobs != NULL; i++) {
		const ProtobufCBinaryData *blob = &blobs->results[i]->response->ciphertext_blob;

		kms__v1__decrypt_request__init(&it->dec[i]);
		it->dec[i].ciphertext_blob = *blob;
		it->dec[i].n_encryption_context = 1;
		it->dec[i].encryption_context = &it->dep;
		it->dec_p[i] = &it->dec[i];
		kms__v1__re_encrypt_request__init(&it->re[i]);
		it->re[i].ciphertext_blob = *blob;
		it->re[i].n_source_encryption_context = 1;
		it->re[i].source_encryption_context = &it->sep;
		it->re[i].destination_key_id = (char *)o->key_id;
		it->re[i].n_destination_encryption_context = 1;
		it->re[i].destination_encryption_context = &it->tep;
		it->re_p[i] = &it->re[i];
	}
	if (o->mode == MODE_BATCH_DECRYPT) {
		bd.requests = it->dec_p;
		bd.n_requests = o->batch;
		msg = &bd.base;
		b->method = "/kms.v1.KeyManagement/BatchDecrypt";
		b->answer = &kms__v1__batch_decrypt_response__descriptor;
	} else if (o->mode == MODE_BATCH_REENCRYPT) {
		br.requests = it->re_p;
		br.n_requests = o->batch;
		msg = &br.base;
		b->method = "/kms.v1.KeyManagement/BatchReEncrypt";
		b->answer = &kms__v1__batch_re_encrypt_response__descriptor;
	}
	rc = pack_request(msg, req, req_len);
out:
	kms_client_batch_generate_data_key_free(blobs);
	kms_free(it);
	return rc;
}

static int blob_file_request(struct bench *b, kms_client *c, uint8_t **req, size_t *req_len);

/*
 * Packs the request every call sends. decrypt mode needs a blob first: one
 * blocking GenerateDataKey with the bench context, whose plaintext is wiped.
 * create-key mode packs a new request for each call (*req stays NULL).
 */
static int grpc_setup(struct bench *b, kms_client *c, uint8_t **req,
		      size_t *req_len)
{
	const struct opts *o = b->o;
	char ctx_key[] = BENCH_CTX_KEY, ctx_value[] = BENCH_CTX_VALUE;
	Kms__V1__GenerateDataKeyRequest gdk =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *gep = &ge;
	Kms__V1__DecryptRequest dec = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry de =
	    KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry *dep = &de;
	Kms__V1__EncryptRequest enc = KMS__V1__ENCRYPT_REQUEST__INIT;
	Kms__V1__EncryptRequest__EncryptionContextEntry ee =
	    KMS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__EncryptRequest__EncryptionContextEntry *eep = &ee;
	/* Not a secret: a fixed pattern, the same size as a data key. */
	uint8_t plain[DATA_KEY_BYTES];
	Kms__V1__GenerateDataKeyResponse *resp = NULL;
	const ProtobufCMessage *msg = &gdk.base;
	kms_rpc_status st;
	int rc = EXIT_OK;

	*req = NULL;
	*req_len = 0;
	if (o->mode == MODE_CREATE_KEY) {
		b->method = "/kms.v1.KeyManagement/CreateKey";
		return EXIT_OK;
	}
	if (is_batch_mode(o->mode))
		return batch_setup(b, c, req, req_len);
	if (o->mode == MODE_DECRYPT && o->blob_file != NULL) {
		b->method = "/kms.v1.KeyManagement/Decrypt";
		return blob_file_request(b, c, req, req_len);
	}
	ge.key = ctx_key;
	ge.value = ctx_value;
	gdk.key_id = (char *)o->key_id;
	gdk.number_of_bytes = DATA_KEY_BYTES;
	gdk.n_encryption_context = 1;
	gdk.encryption_context = &gep;
	b->method = "/kms.v1.KeyManagement/GenerateDataKey";
	if (o->mode == MODE_DECRYPT) {
		if (kms_client_call(
			c, b->method, &gdk.base,
			&kms__v1__generate_data_key_response__descriptor,
			(ProtobufCMessage **)&resp, &st) != 0) {
			errmsg("setting up: GenerateDataKey: %s: %s",
			       kms_grpc_status_name(st.code), st.details);
			return EXIT_SERVER;
		}
		de.key = ctx_key;
		de.value = ctx_value;
		dec.ciphertext_blob = resp->ciphertext_blob;
		dec.n_encryption_context = 1;
		dec.encryption_context = &dep;
		msg = &dec.base;
		b->method = "/kms.v1.KeyManagement/Decrypt";
	} else if (o->mode == MODE_ENCRYPT) {
		for (size_t i = 0; i < sizeof(plain); i++)
			plain[i] = (uint8_t)i;
		ee.key = ctx_key;
		ee.value = ctx_value;
		enc.key_id = (char *)o->key_id;
		enc.plaintext.data = plain;
		enc.plaintext.len = sizeof(plain);
		enc.n_encryption_context = 1;
		enc.encryption_context = &eep;
		msg = &enc.base;
		b->method = "/kms.v1.KeyManagement/Encrypt";
	}
	rc = pack_request(msg, req, req_len);
	if (resp != NULL) {
		kms_cleanse(resp->plaintext.data, resp->plaintext.len);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	return rc;
}

/* ---- versions and rotation (--blob, --refresh-ms, rotate-key) ---- */

/* The packed DecryptRequest of blob with the bench context, in *req. */
static int decrypt_request(const uint8_t *blob, size_t len, uint8_t **req, size_t *req_len)
{
	char ctx_key[] = BENCH_CTX_KEY, ctx_value[] = BENCH_CTX_VALUE;
	Kms__V1__DecryptRequest dec = KMS__V1__DECRYPT_REQUEST__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry de =
	    KMS__V1__DECRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__DecryptRequest__EncryptionContextEntry *dep = &de;

	de.key = ctx_key;
	de.value = ctx_value;
	dec.ciphertext_blob.data = (uint8_t *)blob;
	dec.ciphertext_blob.len = len;
	dec.n_encryption_context = 1;
	dec.encryption_context = &dep;
	return pack_request(&dec.base, req, req_len);
}

/* --blob FILE: the DecryptRequest of the blob in it, checked by one Decrypt. */
static int blob_file_request(struct bench *b, kms_client *c, uint8_t **req, size_t *req_len)
{
	const char *path = b->o->blob_file;
	uint8_t blob[BLOB_FILE_MAX + 1];
	kms_buf resp = {NULL, 0};
	kms_rpc_status st;
	size_t n;
	FILE *f = fopen(path, "re");
	int rc;

	if (f == NULL) {
		errmsg("cannot read --blob '%s': %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	n = fread(blob, 1, sizeof(blob), f);
	rc = ferror(f);
	fclose(f);
	if (rc != 0 || n == 0 || n > BLOB_FILE_MAX) {
		errmsg("--blob '%s' is %s", path,
		       rc != 0 ? "unreadable" : n == 0 ? "empty" : "longer than any blob kmsd makes");
		return EXIT_LOCAL;
	}
	rc = decrypt_request(blob, n, req, req_len);
	if (rc != EXIT_OK)
		return rc;
	/* A blob that does not decrypt would make every call an error: say so once. */
	if (kms_client_call_raw(c, "/kms.v1.KeyManagement/Decrypt", *req, *req_len, &resp,
				&st) != 0) {
		errmsg("setting up: Decrypt of --blob '%s': %s: %s", path,
		       kms_grpc_status_name(st.code), st.details);
		return EXIT_SERVER;
	}
	/* The answer holds the data key: wiped. */
	kms_cleanse(resp.data, resp.len);
	kms_buf_free(&resp);
	return EXIT_OK;
}

#define REFRESH_LAT_MAX 4096

/* The thread of --refresh-ms, and what it found wrong. */
struct refresher {
	pthread_t tid;
	struct bench *b;
	kms_client *c;
	atomic_int stop;
	uint64_t made;
	uint64_t errors;
	char first_err[320];
	/* The GenerateDataKey of each blob made, in ns (warm-up included): the
	 * first encryption under a new version is one of them. */
	uint64_t lat[REFRESH_LAT_MAX];
	size_t n_lat;
};

/* One new blob under the key's primary, published for the next calls. */
static int refresh_once(struct refresher *r)
{
	struct bench *b = r->b;
	char ctx_key[] = BENCH_CTX_KEY, ctx_value[] = BENCH_CTX_VALUE;
	Kms__V1__GenerateDataKeyRequest gdk = KMS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry ge =
	    KMS__V1__GENERATE_DATA_KEY_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
	Kms__V1__GenerateDataKeyRequest__EncryptionContextEntry *gep = &ge;
	Kms__V1__GenerateDataKeyResponse *resp = NULL;
	struct fresh_req *f = NULL;
	uint8_t *req = NULL;
	size_t len = 0;
	kms_rpc_status st;
	int64_t t0;

	ge.key = ctx_key;
	ge.value = ctx_value;
	gdk.key_id = (char *)b->o->key_id;
	gdk.number_of_bytes = DATA_KEY_BYTES;
	gdk.n_encryption_context = 1;
	gdk.encryption_context = &gep;
	gdk.without_plaintext = 1;
	t0 = now_ns();
	if (kms_client_call(r->c, "/kms.v1.KeyManagement/GenerateDataKey", &gdk.base,
			    &kms__v1__generate_data_key_response__descriptor,
			    (ProtobufCMessage **)&resp, &st) != 0) {
		snprintf(r->first_err, sizeof(r->first_err), "--refresh-ms: GenerateDataKey: %s: %.200s",
			 kms_grpc_status_name(st.code), st.details);
		return -1;
	}
	if (r->n_lat < REFRESH_LAT_MAX)
		r->lat[r->n_lat++] = (uint64_t)(now_ns() - t0);
	if (decrypt_request(resp->ciphertext_blob.data, resp->ciphertext_blob.len, &req, &len) ==
	    EXIT_OK)
		f = kms_malloc(sizeof(*f) + len);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	if (f == NULL) {
		kms_free(req);
		snprintf(r->first_err, sizeof(r->first_err), "--refresh-ms: out of memory");
		return -1;
	}
	memcpy(f->req, req, len);
	f->len = len;
	kms_free(req);
	/* Only this thread writes the list; the workers read the newest. */
	f->next = b->fresh_all;
	b->fresh_all = f;
	atomic_store_explicit(&b->fresh, f, memory_order_release);
	r->made++;
	return 0;
}

static void *refresher_main(void *arg)
{
	struct refresher *r = arg;
	const struct timespec tick = {0, 10 * 1000000};

	while (!atomic_load(&r->stop)) {
		int64_t next = now_ns() + (int64_t)r->b->o->refresh_ms * 1000000;

		if (refresh_once(r) != 0 && r->errors++ == 0)
			errmsg("%s", r->first_err);
		while (!atomic_load(&r->stop) && now_ns() < next)
			nanosleep(&tick, NULL);
	}
	return NULL;
}

static void fresh_free(struct bench *b)
{
	while (b->fresh_all != NULL) {
		struct fresh_req *f = b->fresh_all;

		b->fresh_all = f->next;
		kms_free(f);
	}
	atomic_store(&b->fresh, NULL);
}

struct refresher;
static int report(const struct opts *o, struct worker *w, unsigned nw, double window_s,
		  struct refresher *ref);

/*
 * rotate-key mode: RotateKey on the key, one call at a time, on this
 * thread: --rotations N of them as fast as they commit, or one every
 * --interval-ms for the warm-up and the measured window.
 */
static int run_rotate(const struct opts *o, struct worker *w)
{
	Kms__V1__RotateKeyRequest req = KMS__V1__ROTATE_KEY_REQUEST__INIT;
	kms_client *c = NULL;
	kms_err err;
	int64_t t_start, t_end, t, last = 0;
	const struct timespec tick = {0, 1000000};
	uint64_t k = 0;

	if (kms_client_open(&o->copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	req.key_id = (char *)o->key_id;
	t_start = now_ns();
	t_end = t_start + (int64_t)(o->rotations > 0 ? o->duration_s
						    : o->warmup_s + o->duration_s) * 1000000000;
	for (;;) {
		Kms__V1__RotateKeyResponse *resp = NULL;
		kms_rpc_status st;
		int64_t t0;

		if (o->rotations > 0 && k == o->rotations)
			break;
		if (o->interval_ms > 0) {
			int64_t due = t_start + (int64_t)k * o->interval_ms * 1000000;

			while ((t = now_ns()) < due && t < t_end)
				nanosleep(&tick, NULL);
		}
		t0 = now_ns();
		if (t0 >= t_end)
			break;
		k++;
		if (kms_client_call(c, "/kms.v1.KeyManagement/RotateKey", &req.base,
				    &kms__v1__rotate_key_response__descriptor,
				    (ProtobufCMessage **)&resp, &st) != 0) {
			worker_error(w, t0, "RotateKey: %s: %s", kms_grpc_status_name(st.code),
				     st.details);
			continue;
		}
		last = now_ns();
		w->calls++;
		w->ops++;
		lat_add(&w->lat, (uint64_t)(last - t0));
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	kms_client_close(c);
	if (o->rotations > 0 && w->ops + w->errors < o->rotations)
		worker_error(w, now_ns(), "%llu of %u rotations made within --duration %u s",
			     (unsigned long long)w->ops, o->rotations, o->duration_s);
	return report(o, w, 1,
		      o->rotations > 0 ? (double)(last > t_start ? last - t_start : 1) / 1e9
				       : (double)(o->warmup_s + o->duration_s),
		      NULL);
}

/* ---- raw PKCS#11 mode ---- */

static void *raw_worker(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	kms_hsm_session *s = NULL;
	uint8_t out[DATA_KEY_BYTES];
	int checked = 0;
	kms_err err;

	if (kms_hsm_session_open(b->hsm, &s, &err) != KMS_OK) {
		worker_error(w, now_ns(), "cannot open a session: %s", err.msg);
		return NULL;
	}
	for (;;) {
		int64_t t0 = now_ns(), t1;
		int rc;

		if (t0 >= b->t_end)
			break;
		rc = kms_hsm_gcm_decrypt(
		    s, b->key, b->iv, (const uint8_t *)BENCH_AAD,
		    sizeof(BENCH_AAD) - 1, b->ct, sizeof(b->ct), out, &err);
		t1 = now_ns();
		if (rc != KMS_OK) {
			worker_error(w, t1, "kms_hsm_gcm_decrypt: %s", err.msg);
			continue;
		}
		/* Check once that the HSM really gave the plaintext back. */
		if (!checked) {
			checked = 1;
			if (memcmp(out, b->pt, sizeof(out)) != 0) {
				worker_error(
				    w, t1,
				    "GCM decrypt returned the wrong plaintext");
				continue;
			}
		}
		if (t0 >= b->t_measure && t1 <= b->t_end) {
			w->ops++;
			lat_add(&w->lat, (uint64_t)(t1 - t0));
		}
	}
	kms_cleanse(out, sizeof(out));
	kms_hsm_session_close(s);
	return NULL;
}

/* Reads the PIN: the file's first line, without its newline. */
static int read_pin(const char *path, char *pin, size_t cap)
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (f == NULL) {
		errmsg("cannot read PIN file '%s': %s", path, strerror(errno));
		return EXIT_LOCAL;
	}
	n = fread(pin, 1, cap - 1, f);
	fclose(f);
	pin[n] = '\0';
	pin[strcspn(pin, "\r\n")] = '\0';
	if (pin[0] == '\0') {
		errmsg("PIN file '%s' is empty", path);
		return EXIT_LOCAL;
	}
	return EXIT_OK;
}

/* Makes the object the workers decrypt: the same key kind as kmsd's. */
static int raw_setup(struct bench *b, kms_hsm_session **s, kms_buf *wrapped)
{
	const struct opts *o = b->o;
	char pin[PIN_MAX];
	kms_hsm_key dk = 0;
	kms_err err;
	int rc;

	rc = read_pin(o->pin_file, pin, sizeof(pin));
	if (rc != EXIT_OK)
		goto out;
	rc = EXIT_LOCAL;
	if (kms_hsm_open(o->module, o->token, pin, &b->hsm, &err) != KMS_OK)
		goto fail;
	if (kms_hsm_domain_key(b->hsm, BENCH_DOMAIN_KEY_LABEL, 1, &dk, &err) !=
	    KMS_OK)
		goto fail;
	if (kms_hsm_session_open(b->hsm, s, &err) != KMS_OK)
		goto fail;
	if (kms_hsm_master_key_create(*s, dk, wrapped, &err) != KMS_OK)
		goto fail;
	if (kms_hsm_master_key_unwrap(b->hsm, dk, wrapped->data, wrapped->len,
				      &b->key, &err) != KMS_OK)
		goto fail;
	if (kms_hsm_random(*s, b->iv, sizeof(b->iv), &err) != KMS_OK ||
	    kms_hsm_random(*s, b->pt, sizeof(b->pt), &err) != KMS_OK)
		goto fail;
	if (kms_hsm_gcm_encrypt(*s, b->key, b->iv, (const uint8_t *)BENCH_AAD,
				sizeof(BENCH_AAD) - 1, b->pt, sizeof(b->pt),
				b->ct, &err) != KMS_OK)
		goto fail;
	rc = EXIT_OK;
	goto out;
fail:
	errmsg("setting up the HSM: %s", err.msg);
out:
	kms_cleanse(pin, sizeof(pin));
	return rc;
}

/* ---- the key ring alone (--keyring N) ---- */

static long self_status_kb(const char *field)
{
	char line[256];
	size_t len = strlen(field);
	long v = -1;
	FILE *f = fopen("/proc/self/status", "re");

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, len) == 0 && line[len] == ':')
			v = atol(line + len + 1);
	fclose(f);
	return v;
}

/*
 * Bytes malloc has handed out: a block above the mmap threshold (an array
 * of all the entries, up to 50 MB at 1,000,000 keys) is in hblkhd, not in
 * uordblks.
 */
static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}

/* This process's CPU seconds (user + system) and minor page faults so far:
 * on a loaded machine the wall time of a phase says little, these do. */
static double self_cpu_s(long *minflt)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0) {
		*minflt = -1;
		return -1;
	}
	*minflt = ru.ru_minflt;
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/*
 * CreateKey of key i as kmsd would commit it. The material is a fixed
 * pattern of the size of an RFC 5649-wrapped AES-256 key: the key ring
 * never unwraps it. Below `placed` the ids come in the key ring's order (an
 * append each); from there on each takes a random place among those.
 */
static int keyring_add(kms_keyring *kr, unsigned i, unsigned placed,
		       const Kms__V1__KeyPolicy *policy, kms_err *err)
{
	static const uint8_t wrapped[40] = {0xa6, 0x59, 0x59, 0xa6};
	char id[32];
	kms_buf cmd = {NULL, 0};
	int rc;

	if (i < placed)
		snprintf(id, sizeof(id), "k-%010u", i);
	else
		snprintf(id, sizeof(id), "k-%010u-%u", (i * 2654435761u) % placed, i);
	rc = kms_keyring_cmd_create_key(id, "kms-bench", policy, "spiffe://kmsd.dev/ns/ops/sa/admin",
					(int64_t)time(NULL), wrapped, sizeof(wrapped), &cmd, err);
	if (rc == KMS_OK)
		rc = kms_keyring_apply(kr, cmd.data, cmd.len, err);
	kms_buf_free(&cmd);
	return rc;
}

static int run_keyring(const struct opts *o)
{
	static char *ops[] = {"Decrypt", "GenerateDataKey"};
	Kms__V1__KeyPolicy policy = KMS__V1__KEY_POLICY__INIT;
	Kms__V1__Grant grant = KMS__V1__GRANT__INIT, *gp = &grant;
	/* The last 1% at random places: the apply time at n keys. */
	unsigned n = o->keyring, tail = n / 100 + 1, i;
	kms_keyring *kr = NULL;
	kms_buf snap = {NULL, 0};
	kms_err err;
	size_t heap0;
	long rss_keys, rss_restored, hwm_restore, rss_freed, rss_trimmed;
	double apply_us, snapshot_s, restore_s, trim_s, heap_per_key;
	double cpu0, snapshot_cpu_s, restore_cpu_s;
	long flt0, flt1, restore_faults;
	size_t snap_len;
	int64_t t;
	int rc = EXIT_LOCAL;

	grant.principal = (char *)"spiffe://kmsd.dev/ns/demo/sa/app";
	grant.operations = ops;
	grant.n_operations = 2;
	policy.grants = &gp;
	policy.n_grants = 1;
	if (kms_keyring_new(&kr, &err) != KMS_OK)
		goto fail;
	heap0 = heap_in_use();
	for (i = 0; i < n - tail; i++)
		if (keyring_add(kr, i, n - tail, &policy, &err) != KMS_OK)
			goto fail;
	t = now_ns();
	for (; i < n; i++)
		if (keyring_add(kr, i, n - tail, &policy, &err) != KMS_OK)
			goto fail;
	apply_us = (double)(now_ns() - t) / 1e3 / tail;
	heap_per_key = (double)(heap_in_use() - heap0) / n;
	rss_keys = self_status_kb("VmRSS");
	t = now_ns();
	cpu0 = self_cpu_s(&flt0);
	if (kms_keyring_snapshot(kr, kms_malloc, &snap, &err) != KMS_OK)
		goto fail;
	snapshot_s = (double)(now_ns() - t) / 1e9;
	snapshot_cpu_s = self_cpu_s(&flt1) - cpu0;
	snap_len = snap.len;
	kms_keyring_free(kr);
	kr = NULL;
	malloc_trim(0);
	/* The peak of the restore alone: "5" resets VmHWM (proc(5)). */
	{
		FILE *f = fopen("/proc/self/clear_refs", "we");

		if (f != NULL) {
			fputs("5", f);
			fclose(f);
		}
	}
	if (kms_keyring_new(&kr, &err) != KMS_OK)
		goto fail;
	t = now_ns();
	cpu0 = self_cpu_s(&flt0);
	if (kms_keyring_restore(kr, snap.data, snap.len, &err) != KMS_OK)
		goto fail;
	restore_s = (double)(now_ns() - t) / 1e9;
	restore_cpu_s = self_cpu_s(&flt1) - cpu0;
	restore_faults = flt1 - flt0;
	rss_restored = self_status_kb("VmRSS");
	hwm_restore = self_status_kb("VmHWM");
	kms_buf_free(&snap);
	rss_freed = self_status_kb("VmRSS");
	t = now_ns();
	malloc_trim(0);
	trim_s = (double)(now_ns() - t) / 1e9;
	rss_trimmed = self_status_kb("VmRSS");
	printf(o->json ? "{\"mode\":\"keyring\",\"keys\":%u,\"apply_us_at_n\":%.1f,"
			 "\"heap_bytes_per_key\":%.0f,\"rss_kb_with_keys\":%ld,"
			 "\"snapshot_bytes\":%zu,\"snapshot_s\":%.3f,\"snapshot_cpu_s\":%.3f,"
			 "\"restore_s\":%.3f,\"restore_cpu_s\":%.3f,\"restore_minflt\":%ld,"
			 "\"restore_vmhwm_kb\":%ld,\"rss_kb_restored\":%ld,"
			 "\"rss_kb_snapshot_freed\":%ld,\"rss_kb_trimmed\":%ld,\"trim_s\":%.3f}\n"
		       : "mode: keyring\nkeys: %u\napply_us_at_n: %.1f\nheap_bytes_per_key: %.0f\n"
			 "rss_kb_with_keys: %ld\nsnapshot_bytes: %zu\nsnapshot_s: %.3f\n"
			 "snapshot_cpu_s: %.3f\nrestore_s: %.3f\nrestore_cpu_s: %.3f\n"
			 "restore_minflt: %ld\nrestore_vmhwm_kb: %ld\nrss_kb_restored: %ld\n"
			 "rss_kb_snapshot_freed: %ld\nrss_kb_trimmed: %ld\ntrim_s: %.3f\n",
	       n, apply_us, heap_per_key, rss_keys, snap_len, snapshot_s, snapshot_cpu_s, restore_s,
	       restore_cpu_s, restore_faults, hwm_restore, rss_restored, rss_freed, rss_trimmed,
	       trim_s);
	rc = EXIT_OK;
	goto out;
fail:
	errmsg("key ring: %s", err.msg);
out:
	kms_buf_free(&snap);
	kms_keyring_free(kr);
	return rc;
}

/* ---- results ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile, in microseconds. */
static double percentile_us(const uint64_t *v, size_t n, double q)
{
	size_t rank;

	if (n == 0)
		return 0.0;
	rank = (size_t)(q * (double)n + 0.999999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return (double)v[rank - 1] / 1000.0;
}

static const char *mode_name(enum bench_mode m)
{
	switch (m) {
	case MODE_GDK:
		return "generate-data-key";
	case MODE_DECRYPT:
		return "decrypt";
	case MODE_ENCRYPT:
		return "encrypt";
	case MODE_CREATE_KEY:
		return "create-key";
	case MODE_BATCH_DECRYPT:
		return "batch-decrypt";
	case MODE_BATCH_GDK:
		return "batch-generate-data-key";
	case MODE_BATCH_REENCRYPT:
		return "batch-reencrypt";
	case MODE_ROTATE:
		return "rotate-key";
	case MODE_RAW:
		break;
	}
	return "raw-pkcs11";
}

static int report(const struct opts *o, struct worker *w, unsigned nw, double window_s,
		  struct refresher *ref)
{
	char refresh[160] = "";
	const char *mode = mode_name(o->mode);
	uint64_t ops = 0, calls = 0, errors = 0, *all;
	size_t n = 0, i, at = 0;
	const char *first = NULL;
	int64_t first_at = 0;
	double p50, p99, p999, rate;
	unsigned concurrency =
	    o->mode == MODE_RAW ? o->threads : o->concurrency;

	for (i = 0; i < nw; i++) {
		ops += w[i].ops;
		calls += w[i].calls;
		errors += w[i].errors;
		n += w[i].lat.n;
		if (w[i].first_err[0] != '\0' &&
		    (first == NULL || w[i].first_err_at < first_at)) {
			first = w[i].first_err;
			first_at = w[i].first_err_at;
		}
	}
	all = kms_malloc((n + 1) * sizeof(*all));
	if (all == NULL) {
		errmsg("out of memory sorting latencies");
		return EXIT_LOCAL;
	}
	for (i = 0; i < nw; i++) {
		if (w[i].lat.n > 0)
			memcpy(all + at, w[i].lat.v, w[i].lat.n * sizeof(*all));
		at += w[i].lat.n;
	}
	qsort(all, n, sizeof(*all), cmp_u64);
	p50 = percentile_us(all, n, 0.50);
	p99 = percentile_us(all, n, 0.99);
	p999 = percentile_us(all, n, 0.999);
	kms_free(all);
	rate = window_s > 0 ? (double)ops / window_s : 0.0;

	if (o->mode == MODE_RAW)
		calls = ops;
	/* --refresh-ms: its GenerateDataKey calls, the first under each new
	 * version among them. */
	if (ref != NULL && ref->n_lat > 0) {
		qsort(ref->lat, ref->n_lat, sizeof(*ref->lat), cmp_u64);
		snprintf(refresh, sizeof(refresh),
			 o->json ? ",\"refresh_calls\":%zu,\"refresh_p50_us\":%.1f,"
				   "\"refresh_max_us\":%.1f"
				 : "refresh_calls: %zu\nrefresh_p50_us: %.1f\nrefresh_max_us: %.1f\n",
			 ref->n_lat, percentile_us(ref->lat, ref->n_lat, 0.50),
			 (double)ref->lat[ref->n_lat - 1] / 1000.0);
	}
	if (o->json)
		printf("{\"mode\":\"%s\",\"threads\":%u,\"concurrency\":%u,"
		       "\"batch\":%u,\"calls\":%llu,\"ops\":%llu,"
		       "\"ops_per_sec\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
		       "\"p999_us\":%.1f,"
		       "\"errors\":%llu%s}\n",
		       mode, o->threads, concurrency, o->batch, (unsigned long long)calls,
		       (unsigned long long)ops, rate, p50, p99, p999, (unsigned long long)errors,
		       refresh);
	else
		printf(
		    "mode: %s\nthreads: %u\nconcurrency: %u\nbatch: %u\ncalls: %llu\nops: "
		    "%llu\nops_per_sec: %.1f\n"
		    "p50_us: %.1f\np99_us: %.1f\np999_us: %.1f\nerrors: %llu\n",
		    mode, o->threads, concurrency, o->batch, (unsigned long long)calls,
		    (unsigned long long)ops, rate, p50, p99, p999, (unsigned long long)errors);
	if (!o->json)
		fputs(refresh, stdout);
	if (first != NULL)
		errmsg("first error: %s", first);
	if (ops == 0 && errors == 0)
		errmsg("no call completed in the measured window");
	return errors > 0 || ops == 0 ? EXIT_SERVER : EXIT_OK;
}

/* Starts nw workers running fn, waits for them all. */
static int run_workers(struct bench *b, struct worker *w, unsigned nw,
		       void *(*fn)(void *))
{
	unsigned i, started = 0;
	int rc = EXIT_OK, e;

	b->t_measure = now_ns() + (keyset_counted(b) ? 0 : (int64_t)b->o->warmup_s * 1000000000);
	/* Set-up is over: whoever samples the measured window starts from here. */
	if (b->o->ready_file != NULL && !(b->ks != NULL && b->ks->setting_up)) {
		FILE *f = fopen(b->o->ready_file, "we");

		if (f == NULL || fclose(f) != 0) {
			errmsg("cannot write --ready-file '%s': %s", b->o->ready_file,
			       strerror(errno));
			return EXIT_LOCAL;
		}
	}
	b->t_end = b->t_measure + (int64_t)(b->ks != NULL && b->ks->setting_up
						? KEYSET_SETUP_LIMIT_S
						: b->o->duration_s) *
				      1000000000;
	for (i = 0; i < nw; i++) {
		w[i].b = b;
		e = pthread_create(&w[i].tid, NULL, fn, &w[i]);
		if (e != 0) {
			errmsg("cannot start a thread: %s", strerror(e));
			rc = EXIT_LOCAL;
			/* The started ones stop at t_end anyway; pull it in. */
			b->t_end = now_ns();
			break;
		}
		started++;
	}
	for (i = 0; i < started; i++)
		pthread_join(w[i].tid, NULL);
	return rc;
}

/* The measured window: a counted run's ends with its last call. */
static double window_s(const struct bench *b, const struct worker *w, unsigned nw)
{
	int64_t last = b->t_measure;

	if (!keyset_counted(b))
		return (double)b->o->duration_s;
	for (unsigned i = 0; i < nw; i++)
		if (w[i].t_last > last)
			last = w[i].t_last;
	return (double)(last - b->t_measure) / 1e9;
}

/*
 * A --keys decrypt run first makes a blob under every key, as fast as the
 * run's calls in flight allow; any failure there stops the run.
 */
static int keyset_setup(struct bench *b, struct worker *w)
{
	const struct opts *o = b->o;
	unsigned i, missing = 0;
	int64_t t0 = now_ns();

	b->ks->setting_up = 1;
	b->method = "/kms.v1.KeyManagement/GenerateDataKey";
	if (run_workers(b, w, o->threads, grpc_worker) != EXIT_OK)
		return EXIT_LOCAL;
	for (i = 0; i < o->threads; i++)
		if (w[i].errors > 0) {
			errmsg("setting up: %s", w[i].first_err);
			return EXIT_SERVER;
		}
	for (i = 0; i < b->ks->n; i++)
		missing += b->ks->reqs[i] == NULL;
	if (missing > 0) {
		errmsg("setting up: %u of %u keys got no blob within %d s", missing, b->ks->n,
		       KEYSET_SETUP_LIMIT_S);
		return EXIT_SERVER;
	}
	if (!o->json)
		printf("setup: %u blobs in %.1f s\n", b->ks->n, (double)(now_ns() - t0) / 1e9);
	for (i = 0; i < o->threads; i++) {
		w[i].ops = 0;
		w[i].lat.n = 0;
		w[i].t_last = 0;
	}
	b->ks->setting_up = 0;
	b->method = "/kms.v1.KeyManagement/Decrypt";
	return EXIT_OK;
}

static int run_grpc(const struct opts *o, struct worker *w)
{
	struct bench b;
	kms_client *c = NULL;
	uint8_t *req = NULL;
	size_t req_len = 0;
	kms_err err;
	struct refresher ref;
	int ref_started = 0;
	unsigned i;
	int rc;

	memset(&b, 0, sizeof(b));
	memset(&ref, 0, sizeof(ref));
	b.o = o;
	if (kms_client_open(&o->copts, &c, &err) != KMS_OK) {
		errmsg("%s", err.msg);
		return EXIT_LOCAL;
	}
	if (o->keys > 0) {
		b.method = o->mode == MODE_CREATE_KEY ? "/kms.v1.KeyManagement/CreateKey"
						      : "/kms.v1.KeyManagement/Decrypt";
		b.ks = keyset_new(o);
		if (b.ks == NULL) {
			errmsg("out of memory for %u keys", o->keys);
			rc = EXIT_LOCAL;
			goto out;
		}
	} else {
		rc = grpc_setup(&b, c, &req, &req_len);
		if (rc != EXIT_OK)
			goto out;
	}
	b.channel = kms_client_channel(c);
	b.timeout_ms = kms_client_timeout_ms(c);
	b.req = req;
	b.req_len = req_len;
	b.pid = (long)getpid();
	for (i = 0; i < o->threads; i++) {
		w[i].index = i;
		w[i].seed = (unsigned)b.pid * 2654435761u + i;
	}
	/* Split the calls over the threads; the first take the remainder. */
	for (i = 0; i < o->threads; i++)
		w[i].slots = o->concurrency / o->threads +
			     (i < o->concurrency % o->threads);
	if (b.ks != NULL && o->mode == MODE_DECRYPT) {
		rc = keyset_setup(&b, w);
		if (rc != EXIT_OK)
			goto out;
	}
	if (o->refresh_ms > 0) {
		int e;

		ref.b = &b;
		ref.c = c;
		atomic_init(&ref.stop, 0);
		e = pthread_create(&ref.tid, NULL, refresher_main, &ref);
		if (e != 0) {
			errmsg("cannot start a thread: %s", strerror(e));
			rc = EXIT_LOCAL;
			goto out;
		}
		ref_started = 1;
	}
	rc = run_workers(&b, w, o->threads, grpc_worker);
	if (ref_started) {
		atomic_store(&ref.stop, 1);
		pthread_join(ref.tid, NULL);
		/* Its failures are the run's: the calls would not be what was asked. */
		w[0].errors += ref.errors;
		if (ref.errors > 0 && w[0].first_err[0] == '\0')
			snprintf(w[0].first_err, sizeof(w[0].first_err), "%s", ref.first_err);
		if (ref.made == 0 && ref.errors == 0)
			worker_error(&w[0], now_ns(), "--refresh-ms made no blob");
	}
	if (rc == EXIT_OK)
		rc = report(o, w, o->threads, window_s(&b, w, o->threads),
			    ref_started ? &ref : NULL);
out:
	fresh_free(&b);
	keyset_free(b.ks);
	kms_free(req);
	kms_client_close(c);
	return rc;
}

static int run_raw(const struct opts *o, struct worker *w)
{
	struct bench b;
	kms_hsm_session *s = NULL;
	kms_buf wrapped = {NULL, 0};
	int rc;

	memset(&b, 0, sizeof(b));
	b.o = o;
	rc = raw_setup(&b, &s, &wrapped);
	if (rc == EXIT_OK)
		rc = run_workers(&b, w, o->threads, raw_worker);
	if (rc == EXIT_OK)
		rc = report(o, w, o->threads, (double)o->duration_s, NULL);
	kms_cleanse(b.pt, sizeof(b.pt));
	if (b.key != 0)
		kms_hsm_key_destroy(b.hsm, b.key);
	if (s != NULL)
		kms_hsm_session_close(s);
	if (b.hsm != NULL)
		kms_hsm_close(b.hsm);
	kms_buf_free(&wrapped);
	return rc;
}

/* ---- arguments ---- */

enum opt_id {
	OPT_MODE = 256,
	OPT_KEY_ID,
	OPT_CONCURRENCY,
	OPT_THREADS,
	OPT_DURATION,
	OPT_WARMUP,
	OPT_ENDPOINT,
	OPT_CA,
	OPT_CERT,
	OPT_KEY,
	OPT_SERVER_NAME,
	OPT_TIMEOUT,
	OPT_JSON,
	OPT_RAW,
	OPT_MODULE,
	OPT_TOKEN,
	OPT_PIN_FILE,
	OPT_BATCH,
	OPT_VERSION,
	OPT_KEYS,
	OPT_KEY_PREFIX,
	OPT_GRANT,
	OPT_KEYRING,
	OPT_BLOB,
	OPT_REFRESH_MS,
	OPT_ROTATIONS,
	OPT_INTERVAL_MS,
	OPT_READY_FILE,
	OPT_MULTI_REGION,
};

static const struct option long_opts[] = {
    {"mode", required_argument, NULL, OPT_MODE},
    {"multi-region", no_argument, NULL, OPT_MULTI_REGION},
    {"key-id", required_argument, NULL, OPT_KEY_ID},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"endpoint", required_argument, NULL, OPT_ENDPOINT},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"server-name", required_argument, NULL, OPT_SERVER_NAME},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"json", no_argument, NULL, OPT_JSON},
    {"raw-pkcs11", no_argument, NULL, OPT_RAW},
    {"module", required_argument, NULL, OPT_MODULE},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"pin-file", required_argument, NULL, OPT_PIN_FILE},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"keys", required_argument, NULL, OPT_KEYS},
    {"key-prefix", required_argument, NULL, OPT_KEY_PREFIX},
    {"grant", required_argument, NULL, OPT_GRANT},
    {"keyring", required_argument, NULL, OPT_KEYRING},
    {"blob", required_argument, NULL, OPT_BLOB},
    {"refresh-ms", required_argument, NULL, OPT_REFRESH_MS},
    {"rotations", required_argument, NULL, OPT_ROTATIONS},
    {"interval-ms", required_argument, NULL, OPT_INTERVAL_MS},
    {"ready-file", required_argument, NULL, OPT_READY_FILE},
    {NULL, 0, NULL, 0},
};

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kms-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nrun 'kms-bench --help' for usage\n", stderr);
	return EXIT_LOCAL;
}

static int parse_uint(const char *s, const char *opt, unsigned min,
		      unsigned max, unsigned *out)
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
	*out = (unsigned)v;
	return EXIT_OK;
}

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != '\0' ? v : fallback;
}

/* The --keys options together; 0 or EXIT_LOCAL after saying what is wrong. */
static int keys_args_check(struct opts *o, const char *mode)
{
	const char *eq;

	if (o->keys == 0) {
		if (o->key_prefix != NULL || o->grant != NULL)
			return usage_error("--key-prefix and --grant go with --keys");
		return EXIT_OK;
	}
	if (o->mode != MODE_CREATE_KEY && o->mode != MODE_DECRYPT)
		return usage_error("--keys goes with --mode create-key or decrypt, not %s", mode);
	if (o->key_id != NULL)
		return usage_error("--keys names its own keys (<prefix><n>): no --key-id");
	if (o->key_prefix == NULL)
		o->key_prefix = "ks-";
	/* Room for the number within the id buffer; kmsd checks the rest. */
	if (o->key_prefix[0] == '\0' || strlen(o->key_prefix) > BENCH_KEY_ID_MAX - 12)
		return usage_error("--key-prefix must be 1 to %d characters",
				   BENCH_KEY_ID_MAX - 12);
	if (o->grant == NULL)
		return EXIT_OK;
	if (o->mode != MODE_CREATE_KEY)
		return usage_error("--grant goes with --mode create-key");
	eq = strchr(o->grant, '=');
	if (eq == NULL || eq == o->grant || eq[1] == '\0' || eq[1] == ',' ||
	    strstr(eq, ",,") != NULL || eq[strlen(eq) - 1] == ',')
		return usage_error("--grant wants PRINCIPAL=OP[,OP...], not '%s'", o->grant);
	return EXIT_OK;
}

/* The options of versions and rotation, which the raw and key ring modes do not take. */
static int versions_args_check(const struct opts *o, int raw)
{
	if ((raw || o->keyring > 0) && (o->blob_file != NULL || o->refresh_ms > 0 ||
					o->rotations > 0 || o->interval_ms > 0))
		return usage_error("--blob, --refresh-ms, --rotations and --interval-ms go with "
				   "--mode decrypt or rotate-key, not with %s",
				   raw ? "--raw-pkcs11" : "--keyring");
	return EXIT_OK;
}

/* Returns -1 to go on, else the exit code (help, version, usage error). */
static int parse_args(struct opts *o, int argc, char **argv)
{
	const char *mode = NULL;
	int raw = 0, id, grpc_opt = 0, batch_opt = 0, run_opt = 0, threads_opt = 0;
	unsigned timeout;

	o->concurrency = 8;
	o->threads = 2;
	o->duration_s = 10;
	o->warmup_s = 2;
	o->batch = DEFAULT_BATCH;
	o->copts.target = env_or("KMS_ENDPOINT", DEFAULT_ENDPOINT);
	o->copts.ca_file = env_or("KMS_CA", NULL);
	o->copts.cert_file = env_or("KMS_CERT", NULL);
	o->copts.key_file = env_or("KMS_KEY", NULL);
	opterr = 0;
	while ((id = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
		int rc = EXIT_OK;

		switch (id) {
		case 'h':
			fputs(usage_text, stdout);
			return EXIT_OK;
		case OPT_VERSION:
			printf("kms-bench %s\n", PACKAGE_VERSION);
			return EXIT_OK;
		case OPT_MODE:
			mode = optarg;
			break;
		case OPT_KEY_ID:
			o->key_id = optarg;
			break;
		case OPT_CONCURRENCY:
			grpc_opt = 1;
			rc = parse_uint(optarg, "--concurrency", 1, 10000,
					&o->concurrency);
			break;
		case OPT_THREADS:
			run_opt = 1;
			threads_opt = 1;
			rc = parse_uint(optarg, "--threads", 1, 256,
					&o->threads);
			break;
		case OPT_DURATION:
			run_opt = 1;
			rc = parse_uint(optarg, "--duration", 1, 86400,
					&o->duration_s);
			break;
		case OPT_WARMUP:
			run_opt = 1;
			rc = parse_uint(optarg, "--warmup", 0, 3600,
					&o->warmup_s);
			break;
		case OPT_ENDPOINT:
			o->copts.target = optarg;
			break;
		case OPT_CA:
			o->copts.ca_file = optarg;
			break;
		case OPT_CERT:
			o->copts.cert_file = optarg;
			break;
		case OPT_KEY:
			o->copts.key_file = optarg;
			break;
		case OPT_SERVER_NAME:
			o->copts.server_name = optarg;
			break;
		case OPT_TIMEOUT:
			rc = parse_uint(optarg, "--timeout", 1, 3600000,
					&timeout);
			o->copts.timeout_ms = (int)timeout;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_RAW:
			raw = 1;
			break;
		case OPT_MODULE:
			o->module = optarg;
			break;
		case OPT_TOKEN:
			o->token = optarg;
			break;
		case OPT_PIN_FILE:
			o->pin_file = optarg;
			break;
		case OPT_BATCH:
			batch_opt = 1;
			rc = parse_uint(optarg, "--batch", 1, KMS_BATCH_MAX_ITEMS, &o->batch);
			break;
		case OPT_KEYS:
			grpc_opt = 1;
			rc = parse_uint(optarg, "--keys", 1, 10000000, &o->keys);
			break;
		case OPT_KEY_PREFIX:
			o->key_prefix = optarg;
			break;
		case OPT_GRANT:
			o->grant = optarg;
			break;
		case OPT_MULTI_REGION:
			o->multi_region = 1;
			break;
		case OPT_KEYRING:
			rc = parse_uint(optarg, "--keyring", 100, 10000000, &o->keyring);
			break;
		case OPT_BLOB:
			o->blob_file = optarg;
			break;
		case OPT_REFRESH_MS:
			rc = parse_uint(optarg, "--refresh-ms", 10, 3600000, &o->refresh_ms);
			break;
		case OPT_ROTATIONS:
			rc = parse_uint(optarg, "--rotations", 1, 100000, &o->rotations);
			break;
		case OPT_INTERVAL_MS:
			rc = parse_uint(optarg, "--interval-ms", 10, 3600000, &o->interval_ms);
			break;
		case OPT_READY_FILE:
			o->ready_file = optarg;
			break;
		case ':':
			return usage_error("option '%s' needs a value",
					   argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'",
					   argv[optind - 1]);
		}
		if (rc != EXIT_OK)
			return rc;
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (versions_args_check(o, raw) != EXIT_OK)
		return EXIT_LOCAL;
	if (o->keyring > 0) {
		/* --json is the only other option it takes. */
		if (raw || mode != NULL || o->key_id != NULL || grpc_opt || run_opt ||
		    o->module != NULL ||
		    o->token != NULL || o->pin_file != NULL || o->key_prefix != NULL ||
		    o->grant != NULL)
			return usage_error("--keyring takes only --json");
		return -1;
	}
	if (raw) {
		if (mode != NULL || o->key_id != NULL || grpc_opt || batch_opt)
			return usage_error("--raw-pkcs11 takes no --mode, "
					   "--key-id, --concurrency or --batch");
		o->batch = 1;
		if (o->module == NULL)
			o->module = getenv("KMS_PKCS11_MODULE");
		if (o->module == NULL || o->token == NULL ||
		    o->pin_file == NULL)
			return usage_error("--raw-pkcs11 needs --module, "
					   "--token and --pin-file");
		o->mode = MODE_RAW;
		return -1;
	}
	if (o->module != NULL || o->token != NULL || o->pin_file != NULL)
		return usage_error(
		    "--module, --token and --pin-file go with --raw-pkcs11");
	if (mode == NULL)
		return usage_error("give --mode "
				   "generate-data-key|decrypt|encrypt|create-key|batch-decrypt|"
				   "batch-generate-data-key|batch-reencrypt|rotate-key, or --raw-pkcs11");
	if (strcmp(mode, "generate-data-key") == 0)
		o->mode = MODE_GDK;
	else if (strcmp(mode, "decrypt") == 0)
		o->mode = MODE_DECRYPT;
	else if (strcmp(mode, "encrypt") == 0)
		o->mode = MODE_ENCRYPT;
	else if (strcmp(mode, "create-key") == 0)
		o->mode = MODE_CREATE_KEY;
	else if (strcmp(mode, "batch-decrypt") == 0)
		o->mode = MODE_BATCH_DECRYPT;
	else if (strcmp(mode, "batch-generate-data-key") == 0)
		o->mode = MODE_BATCH_GDK;
	else if (strcmp(mode, "batch-reencrypt") == 0)
		o->mode = MODE_BATCH_REENCRYPT;
	else if (strcmp(mode, "rotate-key") == 0)
		o->mode = MODE_ROTATE;
	else
		return usage_error("unknown --mode '%s'", mode);
	if (!is_batch_mode(o->mode)) {
		if (batch_opt)
			return usage_error("--batch goes with the batch-* modes");
		o->batch = 1;
	}
	if (o->mode == MODE_CREATE_KEY && o->key_id != NULL)
		return usage_error("--mode create-key makes its own key ids "
				   "(bench-<pid>-<thread>-<n>): no --key-id");
	if (o->mode != MODE_CREATE_KEY && o->key_id == NULL && o->keys == 0)
		return usage_error("--mode %s needs --key-id", mode);
	if (keys_args_check(o, mode) != EXIT_OK)
		return EXIT_LOCAL;
	if (o->multi_region && o->mode != MODE_CREATE_KEY)
		return usage_error("--multi-region goes with --mode create-key, not %s", mode);
	if (o->mode == MODE_ROTATE) {
		/* One rotation at a time: two at once would name the same version. */
		if (grpc_opt || threads_opt)
			return usage_error("--mode rotate-key makes one call at a time: no "
					   "--concurrency, --keys or --threads");
		if ((o->rotations > 0) == (o->interval_ms > 0))
			return usage_error("--mode rotate-key needs --rotations N or "
					   "--interval-ms MS (one of them)");
		o->concurrency = 1;
		o->threads = 1;
	} else if (o->rotations > 0 || o->interval_ms > 0) {
		return usage_error("--rotations and --interval-ms go with --mode rotate-key");
	}
	if ((o->blob_file != NULL || o->refresh_ms > 0) &&
	    (o->mode != MODE_DECRYPT || o->keys > 0))
		return usage_error("--blob and --refresh-ms go with --mode decrypt --key-id");
	if (o->concurrency < o->threads)
		return usage_error("--concurrency %u is below --threads %u",
				   o->concurrency, o->threads);
	return -1;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct worker *w = NULL;
	unsigned i;
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv);
	if (rc >= 0)
		return rc;
	if (o.keyring > 0)
		return run_keyring(&o);
	w = kms_calloc(o.threads, sizeof(*w));
	if (w == NULL) {
		errmsg("out of memory");
		return EXIT_LOCAL;
	}
	if (o.mode == MODE_RAW) {
		rc = run_raw(&o, w);
	} else if (o.mode == MODE_ROTATE) {
		if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
			gpr_set_log_function(quiet_grpc_log);
		rc = run_rotate(&o, w);
	} else {
		if (getenv("GRPC_VERBOSITY") == NULL &&
		    getenv("GRPC_TRACE") == NULL)
			gpr_set_log_function(quiet_grpc_log);
		rc = run_grpc(&o, w);
	}
	for (i = 0; i < o.threads; i++)
		kms_free(w[i].lat.v);
	kms_free(w);
	return rc;
}
