/* api_batch.c - BatchDecrypt, BatchGenerateDataKey, BatchReEncrypt: the per-item cores of key_ops.c over up to KMS_BATCH_MAX_ITEMS items, one result per item, in order. */
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "api/key_ops.h"
#include "api/status_map.h"
#include "kms/alloc.h"
#include "kms/batch.h"
#include "node/node.h"
#include "rpc/wire_strings.h"

/*
 * What differs between the three calls; run_batch does the rest by
 * descriptor, since the three share one shape (kms.proto): a request holds
 * its items as repeated field 1, an answer its results as repeated field 1,
 * and a result is a oneof of the item's response (1) or an ItemError (2).
 */
struct batch_kind {
	const char *name; /* "BatchDecrypt" */
	const ProtobufCMessageDescriptor *request, *item, *result, *answer;
	size_t state_size; /* one item's state: its response and what it points into */
	int secret;	   /* answers carry plaintext: cleansed once gRPC lets go */
	/*
	 * Runs one item into its zeroed state; on success *response points
	 * into the state. scratch is KMS_PLAINTEXT_MAX bytes the item may
	 * leave plaintext in (the batch cleanses it).
	 */
	int (*run)(kms_node *node, kms_call *call, kms_hsm_session *s, const void *item,
		   void *state, uint8_t *scratch, ProtobufCMessage **response, kms_err *err);
	/* Wipes and frees what run left in state, whether it succeeded or not. */
	void (*done)(void *state);
};

/* --- the three kinds of item --- */

struct decrypt_state {
	Kms__V1__DecryptResponse resp;
	kms_blob_header h;
	uint8_t *pt; /* kms_malloc'd copy of the plaintext, pt_len bytes */
	size_t pt_len;
};

static int decrypt_run(kms_node *node, kms_call *call, kms_hsm_session *s, const void *item,
		       void *state, uint8_t *scratch, ProtobufCMessage **response, kms_err *err)
{
	struct decrypt_state *st = state;

	kms__v1__decrypt_response__init(&st->resp);
	KMS_TRY(kms_key_op_decrypt(node, call, s, item, &st->h, &st->resp, scratch, err));
	/* The scratch serves the next item: keep this plaintext apart, sized to fit. */
	st->pt_len = st->resp.plaintext.len;
	st->pt = kms_malloc(st->pt_len > 0 ? st->pt_len : 1);
	if (st->pt == NULL) {
		kms_cleanse(scratch, st->pt_len);
		st->pt_len = 0;
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory decrypting");
	}
	memcpy(st->pt, scratch, st->pt_len);
	kms_cleanse(scratch, st->pt_len);
	st->resp.plaintext.data = st->pt;
	*response = &st->resp.base;
	return KMS_OK;
}

static void decrypt_done(void *state)
{
	struct decrypt_state *st = state;

	if (st->pt != NULL)
		kms_free_secret(st->pt, st->pt_len);
}

struct gdk_state {
	Kms__V1__GenerateDataKeyResponse resp;
	uint8_t dek[KMS_DATA_KEY_MAX_BYTES];
	char real_id[KMS_KEY_ID_MAX + 1];
	kms_buf blob;
};

static int gdk_run(kms_node *node, kms_call *call, kms_hsm_session *s, const void *item,
		   void *state, uint8_t *scratch, ProtobufCMessage **response, kms_err *err)
{
	struct gdk_state *st = state;

	(void)scratch;
	kms__v1__generate_data_key_response__init(&st->resp);
	KMS_TRY(kms_key_op_generate_data_key(node, call, s, item, &st->resp, st->dek, st->real_id,
					     &st->blob, err));
	*response = &st->resp.base;
	return KMS_OK;
}

static void gdk_done(void *state)
{
	struct gdk_state *st = state;

	kms_cleanse(st->dek, sizeof(st->dek));
	kms_buf_free(&st->blob);
}

struct reencrypt_state {
	Kms__V1__ReEncryptResponse resp;
	kms_blob_header h;
	char real_id[KMS_KEY_ID_MAX + 1];
	kms_buf blob;
};

static int reencrypt_run(kms_node *node, kms_call *call, kms_hsm_session *s, const void *item,
			 void *state, uint8_t *scratch, ProtobufCMessage **response,
			 kms_err *err)
{
	struct reencrypt_state *st = state;

	/* The plaintext never leaves kms_key_op_reencrypt's frame. */
	(void)scratch;
	kms__v1__re_encrypt_response__init(&st->resp);
	KMS_TRY(kms_key_op_reencrypt(node, call, s, item, &st->h, &st->resp, st->real_id,
				     &st->blob, err));
	*response = &st->resp.base;
	return KMS_OK;
}

static void reencrypt_done(void *state)
{
	struct reencrypt_state *st = state;

	kms_buf_free(&st->blob);
}

static const struct batch_kind batch_decrypt = {
	"BatchDecrypt",
	&kms__v1__batch_decrypt_request__descriptor,
	&kms__v1__decrypt_request__descriptor,
	&kms__v1__batch_decrypt_result__descriptor,
	&kms__v1__batch_decrypt_response__descriptor,
	sizeof(struct decrypt_state),
	1,
	decrypt_run,
	decrypt_done,
};

static const struct batch_kind batch_gdk = {
	"BatchGenerateDataKey",
	&kms__v1__batch_generate_data_key_request__descriptor,
	&kms__v1__generate_data_key_request__descriptor,
	&kms__v1__batch_generate_data_key_result__descriptor,
	&kms__v1__batch_generate_data_key_response__descriptor,
	sizeof(struct gdk_state),
	1,
	gdk_run,
	gdk_done,
};

static const struct batch_kind batch_reencrypt = {
	"BatchReEncrypt",
	&kms__v1__batch_re_encrypt_request__descriptor,
	&kms__v1__re_encrypt_request__descriptor,
	&kms__v1__batch_re_encrypt_result__descriptor,
	&kms__v1__batch_re_encrypt_response__descriptor,
	sizeof(struct reencrypt_state),
	0,
	reencrypt_run,
	reencrypt_done,
};

/* --- one batch --- */

/* Stands in for a message when memory for it runs out; never freed. */
static char nomem_msg[] = "out of memory recording this item's error";

struct batch {
	const struct batch_kind *k;
	size_t n;
	unsigned char *states;	    /* n * k->state_size */
	unsigned char *results;	    /* n * k->result->sizeof_message */
	ProtobufCMessage **ptrs;    /* n: the answer's repeated field */
	Kms__V1__ItemError *errors; /* n; message set: the item failed */
};

/* The field of a message at an offset its descriptor gives. */
#define AT(type, msg, offset) ((type *)(void *)((unsigned char *)(msg) + (offset)))

/* Item i fails with err, as the single call would: its code and message. */
static void item_fail(struct batch *b, size_t i, const kms_err *err)
{
	Kms__V1__ItemError *e = &b->errors[i];

	e->code = (uint32_t)kms_status_to_grpc(err->code);
	e->message = kms_strdup(kms_key_ops_message(err));
	if (e->message == NULL) {
		e->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
		e->message = nomem_msg;
	}
}

/* A string field of item i held a NUL (kms_wire_check_items). */
static void item_bad_string(void *arg, size_t i, const kms_err *err)
{
	struct batch *b = arg;

	if (i < b->n)
		item_fail(b, i, err);
}

/* Sets result i's oneof to field id (1 response, 2 error) pointing at m. */
static void result_set(struct batch *b, size_t i, unsigned id, void *m)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field(b->k->result, id);
	ProtobufCMessage *r = (ProtobufCMessage *)(void *)(b->results +
							   i * b->k->result->sizeof_message);

	protobuf_c_message_init(b->k->result, r);
	*AT(uint32_t, r, f->quantifier_offset) = id;
	*AT(void *, r, f->offset) = m;
	b->ptrs[i] = r;
}

static int batch_alloc(struct batch *b, const struct batch_kind *k, size_t n, kms_err *err)
{
	memset(b, 0, sizeof(*b));
	b->k = k;
	b->n = n;
	b->states = kms_calloc(n, k->state_size);
	b->results = kms_calloc(n, k->result->sizeof_message);
	b->ptrs = kms_calloc(n, sizeof(*b->ptrs));
	b->errors = kms_calloc(n, sizeof(*b->errors));
	if (b->states == NULL || b->results == NULL || b->ptrs == NULL || b->errors == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a batch of %zu items", n);
	/* message stays NULL (not init's "") until the item fails: the mark of a failed item. */
	for (size_t i = 0; i < n; i++) {
		kms__v1__item_error__init(&b->errors[i]);
		b->errors[i].message = NULL;
	}
	return KMS_OK;
}

/* Frees the batch after done has wiped each item it ran (ran items). */
static void batch_free(struct batch *b, size_t ran)
{
	for (size_t i = 0; i < ran && b->states != NULL; i++)
		b->k->done(b->states + i * b->k->state_size);
	for (size_t i = 0; i < b->n && b->errors != NULL; i++)
		if (b->errors[i].message != nomem_msg)
			kms_free(b->errors[i].message);
	kms_free(b->states);
	kms_free(b->results);
	kms_free(b->ptrs);
	kms_free(b->errors);
}

/*
 * Counts the items on the wire before protobuf-c unpacks them: an item can
 * be two bytes, so the byte limit alone would let a request unpack into
 * millions of messages.
 */
static int batch_count(const struct batch_kind *k, const uint8_t *data, size_t len, size_t *n,
		       kms_err *err)
{
	*n = kms_wire_check_items(k->item, 1, data, len, NULL, NULL);
	KMS_ENSURE(*n <= KMS_BATCH_MAX_ITEMS, err, KMS_ERR_LIMIT,
		   "%s takes at most %d requests; this one has %zu: split it", k->name,
		   KMS_BATCH_MAX_ITEMS, *n);
	return KMS_OK;
}

/*
 * The items run one after the other on this worker, with its HSM session:
 * a batch holds one worker for all its items (docs/OPERATIONS.md). It
 * stops, failing the whole call, once the caller's deadline has passed:
 * nobody would read the answer.
 */
static void run_batch(const struct batch_kind *k, kms_node *node, kms_call *call,
		      const uint8_t *data, size_t len)
{
	const ProtobufCFieldDescriptor *items_f =
		protobuf_c_message_descriptor_get_field(k->request, 1);
	const ProtobufCFieldDescriptor *results_f =
		protobuf_c_message_descriptor_get_field(k->answer, 1);
	kms_hsm_session *s = kms_call_worker(call);
	ProtobufCMessage *req = NULL, *answer = NULL;
	const void *const *items;
	uint8_t scratch[KMS_PLAINTEXT_MAX];
	struct batch b = {0};
	size_t n = 0, ran = 0;
	kms_err err = {0};
	int rc;

	KMS_TRY_GOTO(rc, batch_count(k, data, len, &n, &err), out);
	req = protobuf_c_message_unpack(k->request, NULL, len, data);
	if (req == NULL) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "malformed %sRequest", k->name);
		goto out;
	}
	n = *AT(size_t, req, items_f->quantifier_offset);
	items = *AT(const void *const *, req, items_f->offset);
	if (n == 0) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "%s needs at least one request", k->name);
		goto out;
	}
	/* One record for the call, with its item count: the items may name
	 * many keys (docs/OPERATIONS.md, "Audit log"). */
	kms_call_audit_items(call, (unsigned)n);
	KMS_TRY_GOTO(rc, batch_alloc(&b, k, n, &err), out);
	/* A NUL in a string fails its item only (the single call's message). */
	kms_wire_check_items(k->item, 1, data, len, item_bad_string, &b);
	for (ran = 0; ran < n; ran++) {
		void *state = b.states + ran * k->state_size;
		ProtobufCMessage *response = NULL;

		if (kms_call_deadline_ms(call) <= 0) {
			char msg[128];

			snprintf(msg, sizeof(msg), "%s: the deadline passed after %zu of %zu items",
				 k->name, ran, n);
			kms_call_fail_grpc(call, GRPC_STATUS_DEADLINE_EXCEEDED, msg);
			rc = KMS_OK; /* answered */
			goto out;
		}
		if (b.errors[ran].message == NULL) {
			kms_err_clear(&err);
			if (k->run(node, call, s, items[ran], state, scratch, &response, &err) !=
			    KMS_OK)
				item_fail(&b, ran, &err);
		}
		if (response != NULL)
			result_set(&b, ran, 1, response);
		else
			result_set(&b, ran, 2, &b.errors[ran]);
	}
	answer = kms_calloc(1, k->answer->sizeof_message);
	if (answer == NULL) {
		rc = kms_errf(&err, KMS_ERR_NOMEM, "out of memory answering %s", k->name);
		goto out;
	}
	protobuf_c_message_init(k->answer, answer);
	*AT(size_t, answer, results_f->quantifier_offset) = n;
	*AT(ProtobufCMessage **, answer, results_f->offset) = b.ptrs;
	/* Packed now: the plaintexts can be wiped as soon as this returns. */
	kms_call_reply(call, answer, k->secret);
	rc = KMS_OK;
out:
	if (rc != KMS_OK)
		kms_key_ops_fail(call, &err);
	kms_cleanse(scratch, sizeof(scratch));
	batch_free(&b, ran);
	kms_free(answer);
	if (req != NULL)
		protobuf_c_message_free_unpacked(req, NULL);
}

static void batch_decrypt_call(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	run_batch(&batch_decrypt, app, call, data, len);
}

static void batch_gdk_call(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	run_batch(&batch_gdk, app, call, data, len);
}

static void batch_reencrypt_call(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	run_batch(&batch_reencrypt, app, call, data, len);
}

/*
 * The request descriptor is NULL: run_batch checks the strings item by item
 * (a NUL fails one item, not the call). The limits: KMS_BATCH_MAX_ITEMS of
 * the largest valid item (kms/batch.h).
 */
const kms_method kms_api_batch_methods[] = {
	{"/kms.v1.KeyManagement/BatchDecrypt", batch_decrypt_call, KMS_CALLERS_SERVICES, NULL,
	 KMS_BATCH_DECRYPT_REQUEST_MAX},
	{"/kms.v1.KeyManagement/BatchGenerateDataKey", batch_gdk_call, KMS_CALLERS_SERVICES, NULL,
	 KMS_BATCH_GENERATE_DATA_KEY_REQUEST_MAX},
	{"/kms.v1.KeyManagement/BatchReEncrypt", batch_reencrypt_call, KMS_CALLERS_SERVICES, NULL,
	 KMS_BATCH_REENCRYPT_REQUEST_MAX},
};
const size_t kms_api_batch_n_methods =
	sizeof(kms_api_batch_methods) / sizeof(kms_api_batch_methods[0]);
