/* client_batch.c - typed client calls of ReEncrypt and the batch calls (kms/client_batch.h): one result per request checked, plaintexts wiped on free. */
#include <stdio.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/client_batch.h"

#define KM "/kms.v1.KeyManagement/"

/*
 * The three batch messages share one shape, read here by descriptor: a
 * request's items are its repeated field "requests", an answer's its
 * repeated field "results", and each result is a oneof of "response" (1)
 * and "error" (2).
 */
static size_t repeated_count(const ProtobufCMessage *m, const char *name, void ***items)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);

	*items = *(void ***)(void *)((char *)m + f->offset);
	return *(const size_t *)(const void *)((const char *)m + f->quantifier_offset);
}

/* Which field of a result's oneof is set: 1 (response), 2 (error), 0 (neither). */
static uint32_t result_which(const ProtobufCMessage *result)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field(result->descriptor, 1);

	return *(const uint32_t *)(const void *)((const char *)result + f->quantifier_offset);
}

/* The message of field id (1 or 2) of a result; both share the oneof's storage. */
static ProtobufCMessage *result_field(const ProtobufCMessage *result, unsigned id)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field(result->descriptor, id);

	return *(ProtobufCMessage **)(void *)((char *)result + f->offset);
}

/* The response of a result, or NULL for an error (or nothing). */
static ProtobufCMessage *result_response(const ProtobufCMessage *result)
{
	return result_which(result) == 1 ? result_field(result, 1) : NULL;
}

static int result_is_set(const ProtobufCMessage *result)
{
	uint32_t which = result_which(result);

	return which == 1 || which == 2;
}

void kms_client_batch_tally(const ProtobufCMessage *answer, size_t *ok, size_t *failed,
			    const char **first_error)
{
	void **results;
	size_t n = repeated_count(answer, "results", &results);

	*ok = *failed = 0;
	*first_error = NULL;
	for (size_t i = 0; i < n; i++) {
		if (result_which(results[i]) == 1) {
			(*ok)++;
			continue;
		}
		(*failed)++;
		if (*first_error == NULL && result_which(results[i]) == 2)
			*first_error = ((const Kms__V1__ItemError *)result_field(results[i], 2))
					       ->message;
	}
}

void kms_client_batch_free(ProtobufCMessage *resp)
{
	void **results;
	size_t n;

	if (resp == NULL)
		return;
	n = repeated_count(resp, "results", &results);
	for (size_t i = 0; i < n; i++) {
		ProtobufCMessage *r = result_response(results[i]);
		const ProtobufCFieldDescriptor *f;
		ProtobufCBinaryData *pt;

		if (r == NULL)
			continue;
		f = protobuf_c_message_descriptor_get_field_by_name(r->descriptor, "plaintext");
		if (f == NULL)
			continue;
		pt = (ProtobufCBinaryData *)(void *)((char *)r + f->offset);
		if (pt->data != NULL)
			kms_cleanse(pt->data, pt->len);
	}
	protobuf_c_message_free_unpacked(resp, NULL);
}

static int batch_call(kms_client *c, const char *method, const ProtobufCMessage *req,
		      const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
		      kms_rpc_status *st)
{
	void **items, **results;
	size_t want, got;

	if (kms_client_call(c, method, req, resp_desc, resp, st) != 0)
		return st->code;
	want = repeated_count(req, "requests", &items);
	got = repeated_count(*resp, "results", &results);
	if (got != want) {
		snprintf(st->details, sizeof(st->details),
			 "the server answered %zu results for %zu requests", got, want);
		goto bad;
	}
	for (size_t i = 0; i < got; i++) {
		if (!result_is_set(results[i])) {
			snprintf(st->details, sizeof(st->details),
				 "result %zu holds neither a response nor an error", i);
			goto bad;
		}
	}
	return st->code;
bad:
	st->code = GRPC_STATUS_INTERNAL;
	kms_client_batch_free(*resp);
	*resp = NULL;
	return st->code;
}

int kms_client_reencrypt(kms_client *c, const Kms__V1__ReEncryptRequest *req,
			 Kms__V1__ReEncryptResponse **resp, kms_rpc_status *st)
{
	return kms_client_call(c, KM "ReEncrypt", &req->base,
			       &kms__v1__re_encrypt_response__descriptor, (ProtobufCMessage **)resp,
			       st);
}

int kms_client_batch_decrypt(kms_client *c, const Kms__V1__BatchDecryptRequest *req,
			     Kms__V1__BatchDecryptResponse **resp, kms_rpc_status *st)
{
	return batch_call(c, KM "BatchDecrypt", &req->base,
			  &kms__v1__batch_decrypt_response__descriptor, (ProtobufCMessage **)resp,
			  st);
}

int kms_client_batch_generate_data_key(kms_client *c,
				       const Kms__V1__BatchGenerateDataKeyRequest *req,
				       Kms__V1__BatchGenerateDataKeyResponse **resp,
				       kms_rpc_status *st)
{
	return batch_call(c, KM "BatchGenerateDataKey", &req->base,
			  &kms__v1__batch_generate_data_key_response__descriptor,
			  (ProtobufCMessage **)resp, st);
}

int kms_client_batch_reencrypt(kms_client *c, const Kms__V1__BatchReEncryptRequest *req,
			       Kms__V1__BatchReEncryptResponse **resp, kms_rpc_status *st)
{
	return batch_call(c, KM "BatchReEncrypt", &req->base,
			  &kms__v1__batch_re_encrypt_response__descriptor,
			  (ProtobufCMessage **)resp, st);
}

void kms_client_batch_decrypt_free(Kms__V1__BatchDecryptResponse *resp)
{
	kms_client_batch_free(resp != NULL ? &resp->base : NULL);
}

void kms_client_batch_generate_data_key_free(Kms__V1__BatchGenerateDataKeyResponse *resp)
{
	kms_client_batch_free(resp != NULL ? &resp->base : NULL);
}

void kms_client_batch_reencrypt_free(Kms__V1__BatchReEncryptResponse *resp)
{
	kms_client_batch_free(resp != NULL ? &resp->base : NULL);
}

void kms_client_reencrypt_free(Kms__V1__ReEncryptResponse *resp)
{
	if (resp != NULL)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
}
