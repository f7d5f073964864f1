/* client_batch.h - typed client calls of ReEncrypt and the batch calls (kms.v1.KeyManagement), on the client of kms/client.h. */
#ifndef KMS_CLIENT_BATCH_H
#define KMS_CLIENT_BATCH_H

#include "kms/client.h"
#include "kms/v1/kms.pb-c.h"

/*
 * Each makes one call with the client's deadline. On OK, *resp is the
 * answer, the caller's to free with the matching *_free below (which
 * wipes any plaintext in it first); otherwise *resp is NULL. Returns
 * st->code.
 *
 * A batch answer is checked before it is handed out: exactly one result
 * per request, each holding a response or an error. Anything else is
 * GRPC_STATUS_INTERNAL with details saying what was wrong, and *resp NULL.
 * An item's error is in its result (ItemError: a gRPC code and the message
 * the single call would have given), never in st.
 */
int kms_client_reencrypt(kms_client *c, const Kms__V1__ReEncryptRequest *req,
			 Kms__V1__ReEncryptResponse **resp, kms_rpc_status *st);
int kms_client_batch_decrypt(kms_client *c, const Kms__V1__BatchDecryptRequest *req,
			     Kms__V1__BatchDecryptResponse **resp, kms_rpc_status *st);
int kms_client_batch_generate_data_key(kms_client *c,
				       const Kms__V1__BatchGenerateDataKeyRequest *req,
				       Kms__V1__BatchGenerateDataKeyResponse **resp,
				       kms_rpc_status *st);
int kms_client_batch_reencrypt(kms_client *c, const Kms__V1__BatchReEncryptRequest *req,
			       Kms__V1__BatchReEncryptResponse **resp, kms_rpc_status *st);

/*
 * Any batch answer, read by descriptor (the three share one shape): *ok
 * results hold a response, *failed an error; *first_error is the message of
 * the first that failed (inside answer), or NULL.
 */
void kms_client_batch_tally(const ProtobufCMessage *answer, size_t *ok, size_t *failed,
			    const char **first_error);
/* Frees any batch answer, wiping the plaintext of every response first. */
void kms_client_batch_free(ProtobufCMessage *answer);

/* Free an answer; the first two wipe the plaintexts of every item. NULL is ignored. */
void kms_client_batch_decrypt_free(Kms__V1__BatchDecryptResponse *resp);
void kms_client_batch_generate_data_key_free(Kms__V1__BatchGenerateDataKeyResponse *resp);
void kms_client_batch_reencrypt_free(Kms__V1__BatchReEncryptResponse *resp);
void kms_client_reencrypt_free(Kms__V1__ReEncryptResponse *resp);

#endif
