/* key_ops.h - the per-item cores of the KeyManagement crypto calls (gate, seal, open), shared by the single and the batch handlers. */
#ifndef KMS_API_KEY_OPS_H
#define KMS_API_KEY_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "kms/blob.h"
#include "kms/error.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/policy.h"
#include "kms/v1/kms.pb-c.h"
#include "rpc/rpc_server.h"

struct kms_node;

#define KMS_DATA_KEY_DEFAULT_BYTES 32
#define KMS_DATA_KEY_MAX_BYTES 64

/*
 * The message a caller sees for err: a failed GCM authentication says the
 * same thing for a tampered blob and for a wrong context, so that the two
 * cannot be told apart; every other error says its own message.
 */
const char *kms_key_ops_message(const kms_err *err);

/* kms_call_fail with kms_key_ops_message. */
void kms_key_ops_fail(kms_call *call, const kms_err *err);

/*
 * Whether a call whose local decision was rc must be decided again on
 * newer state (the kms-consistency metadata, docs/CONSISTENCY.md). The
 * metadata is read only here, after the local decision; the wait happens
 * only if the leader authorizes principal for op on key_id, and never past
 * the call's deadline. KMS_OK with *again set, or the error that ends the
 * call.
 */
int kms_key_ops_fresh_read(struct kms_node *node, kms_call *call, int rc, const char *key_id,
			   enum kms_op op, int *again, kms_err *err);

/*
 * The master key version of use (as kms_keyring_resolve or
 * kms_keyring_primary_use filled it) as an HSM handle, unwrapping it on
 * first use on this node (under the domain key, or the other live one
 * during a domain-key rotation) and recording it in the key ring's handle
 * cache, within [hsm] max_unwrapped_versions. KMS_ERR_UNAVAILABLE before
 * this node holds and verified the domain key. On success use holds a
 * reference to the handle (the caller releases it with
 * kms_keyring_use_release when its HSM operation is done). Any thread but
 * the Raft thread: C_UnwrapKey may take milliseconds.
 */
int kms_key_ops_handle(struct kms_node *node, const char *key_id, kms_key_use *use,
		       kms_err *err);

/*
 * The two halves every crypto operation is made of, for one item, as the
 * caller of call (principal, metadata, deadline), with the worker's HSM
 * session s. Each returns KMS_OK or the error of that item alone; neither
 * fails the call.
 *
 * open: decodes blob, checks that it names expect_key_id when that is not
 * empty, gates op on the blob's key and version, and decrypts it with the
 * encryption context (n_ctx protobuf map entries) into pt
 * (KMS_PLAINTEXT_MAX bytes, the caller cleanses it) and *pt_len; *h gets
 * the blob's header (its key id and version).
 *
 * seal: gates op on key_id's primary version and encrypts pt under it
 * with the encryption context into *blob (kms_malloc'd, the caller's, also
 * on failure: free it); *version gets the version used and real_id
 * (KMS_KEY_ID_MAX + 1 bytes) the id of the key used.
 */
int kms_key_ops_open(struct kms_node *node, kms_call *call, kms_hsm_session *s,
		     const uint8_t *blob, size_t blob_len, ProtobufCMessage **ctx, size_t n_ctx,
		     const char *expect_key_id, enum kms_op op, kms_blob_header *h, uint8_t *pt,
		     size_t *pt_len, kms_err *err);
int kms_key_ops_seal(struct kms_node *node, kms_call *call, kms_hsm_session *s,
		     const char *key_id, enum kms_op op, ProtobufCMessage **ctx, size_t n_ctx,
		     const uint8_t *pt, size_t pt_len, char *real_id, uint32_t *version,
		     kms_buf *blob, kms_err *err);

/*
 * The three crypto operations on one item, built on open and seal. Each
 * fills resp with pointers into req and into the caller's buffers.
 *
 * decrypt: pt (KMS_PLAINTEXT_MAX bytes) receives the plaintext;
 * resp->key_id points into *h (the caller's).
 * generate_data_key: dek (KMS_DATA_KEY_MAX_BYTES) receives the data key,
 * *blob the new ciphertext blob as seal's; resp->key_id points into
 * real_id (KMS_KEY_ID_MAX + 1 bytes, the caller's).
 * encrypt: *blob and real_id as above.
 * The caller cleanses pt and dek.
 */
int kms_key_op_decrypt(struct kms_node *node, kms_call *call, kms_hsm_session *s,
		       const Kms__V1__DecryptRequest *req, kms_blob_header *h,
		       Kms__V1__DecryptResponse *resp, uint8_t *pt, kms_err *err);
int kms_key_op_generate_data_key(struct kms_node *node, kms_call *call, kms_hsm_session *s,
				 const Kms__V1__GenerateDataKeyRequest *req,
				 Kms__V1__GenerateDataKeyResponse *resp, uint8_t *dek,
				 char *real_id, kms_buf *blob, kms_err *err);
int kms_key_op_encrypt(struct kms_node *node, kms_call *call, kms_hsm_session *s,
		       const Kms__V1__EncryptRequest *req, Kms__V1__EncryptResponse *resp,
		       char *real_id, kms_buf *blob, kms_err *err);

/*
 * reencrypt: opens req's blob as ReEncryptFrom on its key (source_key_id,
 * when set, must name that key) with the source context, and seals the
 * plaintext under destination_key_id's primary version as ReEncryptTo with
 * the destination context. The plaintext stays in this function's frame
 * and is cleansed before it returns. *blob and real_id as encrypt's;
 * resp->source_key_id points into *h (the caller's). The destination key
 * id and both contexts are checked before the HSM is used.
 */
int kms_key_op_reencrypt(struct kms_node *node, kms_call *call, kms_hsm_session *s,
			 const Kms__V1__ReEncryptRequest *req, kms_blob_header *h,
			 Kms__V1__ReEncryptResponse *resp, char *real_id, kms_buf *blob,
			 kms_err *err);

#endif
