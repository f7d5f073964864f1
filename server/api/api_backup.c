/* api_backup.c - a backup's file in pieces: Operator/FetchBackup on any member, served from the member that made it (Internal/FetchBackupPiece). */
#include <string.h>

#include <grpc/status.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/backup_store.h"
#include "node/node.h"
#include "rpc/peers.h"

/* A piece from the maker takes a disk read and one message. */
#define PIECE_TIMEOUT_MS 5000

/*
 * The bytes req may have of a file of total bytes, in *max: its offset
 * within the file, at most KMS_BACKUP_PIECE_MAX of them (max_bytes 0, as
 * older clients ask, is the whole rest, refused when larger than that).
 */
static int piece_bounds(const Kms__V1__FetchBackupRequest *req, uint64_t total, uint32_t *max,
			kms_err *err)
{
	*max = req->max_bytes;
	if (*max > KMS_BACKUP_PIECE_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "max_bytes %u is over the limit of %u", *max,
				KMS_BACKUP_PIECE_MAX);
	if (req->offset > total)
		return kms_errf(err, KMS_ERR_INVALID,
				"offset %llu is past the end of the backup file (%llu bytes)",
				(unsigned long long)req->offset, (unsigned long long)total);
	if (*max == 0) {
		if (total - req->offset > KMS_BACKUP_PIECE_MAX)
			return kms_errf(err, KMS_ERR_LIMIT,
					"the backup file is %llu bytes, too large for one answer: "
					"ask for it in pieces (max_bytes; kmsctl backup fetch does)",
					(unsigned long long)total);
		*max = KMS_BACKUP_PIECE_MAX;
	}
	return KMS_OK;
}

/* The piece of an in-state file (a backup made before files left the state) req asks for. */
static int inline_piece(const Kms__V1__FetchBackupRequest *req, const kms_buf *file,
			Kms__V1__FetchBackupResponse *resp, kms_buf *piece, kms_err *err)
{
	size_t left, n;
	uint32_t max;

	KMS_TRY(piece_bounds(req, file->len, &max, err));
	left = file->len - (size_t)req->offset;
	n = left < max ? left : max;
	piece->data = kms_malloc(n > 0 ? n : 1);
	if (piece->data == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory for a piece of the backup file");
	memcpy(piece->data, file->data + req->offset, n);
	piece->len = n;
	resp->total_bytes = file->len;
	return KMS_OK;
}

/* The same piece from the maker's copy on another member. */
static int remote_piece(kms_node *node, const kms_backup_ref *ref, uint64_t offset,
			uint32_t max_bytes, kms_buf *piece, kms_err *err)
{
	Kms__V1__FetchBackupPieceRequest req = KMS__V1__FETCH_BACKUP_PIECE_REQUEST__INIT;
	Kms__V1__FetchBackupResponse *resp = NULL;
	kms_rpc_status st = {0};
	kms_member m;
	int rc = KMS_OK;

	if (kms_keyring_member(node->kr, ref->holder_node_id, &m) != KMS_OK)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"the backup file is kept by node %llu, which made it and is no "
				"longer a member: make a new backup",
				(unsigned long long)ref->holder_node_id);
	req.backup_id.data = (uint8_t *)ref->backup_id;
	req.backup_id.len = KMS_BACKUP_ID_LEN;
	req.offset = offset;
	req.max_bytes = max_bytes;
	if (kms_peers_call(node->peers, m.grpc_address, m.id, "/kms.v1.Internal/FetchBackupPiece",
			   &req.base, &kms__v1__fetch_backup_response__descriptor,
			   (ProtobufCMessage **)&resp, PIECE_TIMEOUT_MS, &st) != 0) {
		/* The maker's own refusal (its copy is gone or changed) passes through. */
		if (st.code == GRPC_STATUS_NOT_FOUND || st.code == GRPC_STATUS_FAILED_PRECONDITION)
			return kms_errf(err,
					st.code == GRPC_STATUS_NOT_FOUND ? KMS_ERR_NOT_FOUND
									 : KMS_ERR_PRECONDITION,
					"node %llu: %.300s", (unsigned long long)m.id, st.details);
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"the backup file is kept by node %llu, which made it; it did not "
				"answer: %.200s",
				(unsigned long long)m.id, st.details);
	}
	if (resp->total_bytes != ref->size || resp->backup_file.len > max_bytes ||
	    resp->backup_file.len > ref->size - offset) {
		rc = kms_errf(err, KMS_ERR_INTERNAL,
			      "node %llu sent a piece that does not fit the recorded file (%zu bytes "
			      "at %llu of %llu)",
			      (unsigned long long)m.id, resp->backup_file.len,
			      (unsigned long long)offset, (unsigned long long)ref->size);
		goto out;
	}
	piece->data = kms_malloc(resp->backup_file.len > 0 ? resp->backup_file.len : 1);
	if (piece->data == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory for a piece of the backup file");
		goto out;
	}
	if (resp->backup_file.len > 0)
		memcpy(piece->data, resp->backup_file.data, resp->backup_file.len);
	piece->len = resp->backup_file.len;
out:
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/* The piece of a file kept out of the state: from this node's disk, or from its maker. */
static int ref_piece(kms_node *node, const Kms__V1__FetchBackupRequest *req,
		     const kms_backup_ref *ref, Kms__V1__FetchBackupResponse *resp, kms_buf *piece,
		     kms_err *err)
{
	uint32_t max;

	KMS_TRY(piece_bounds(req, ref->size, &max, err));
	if (ref->holder_node_id == node->cfg.node_id)
		KMS_TRY(kms_backup_store_read(node->cfg.data_dir, ref, req->offset, max, piece,
					      err));
	else
		KMS_TRY(remote_piece(node, ref, req->offset, max, piece, err));
	resp->total_bytes = ref->size;
	resp->sha256.data = (uint8_t *)ref->sha256;
	resp->sha256.len = sizeof(ref->sha256);
	return KMS_OK;
}

static void fetch_backup(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__FetchBackupRequest *req = kms__v1__fetch_backup_request__unpack(NULL, len, data);
	Kms__V1__FetchBackupResponse resp = KMS__V1__FETCH_BACKUP_RESPONSE__INIT;
	kms_backup_ref ref;
	kms_buf file = {0}, piece = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed FetchBackupRequest");
		return;
	}
	kms_call_audit_proposal(call, req->proposal_id, NULL, 0);
	rc = kms_api_admin_check(node, kms_call_principal(call), &err);
	if (rc == KMS_OK)
		rc = kms_keyring_backup_find(node->kr, req->proposal_id, &ref, &file, &err);
	if (rc == KMS_OK)
		rc = file.len > 0 ? inline_piece(req, &file, &resp, &piece, &err)
				  : ref_piece(node, req, &ref, &resp, &piece, &err);
	if (rc == KMS_OK) {
		resp.backup_file.data = piece.data;
		resp.backup_file.len = piece.len;
		kms_call_reply(call, &resp.base, 0);
	} else {
		kms_call_fail(call, err.code, err.msg);
	}
	kms_buf_free(&piece);
	kms_buf_free(&file);
	kms__v1__fetch_backup_request__free_unpacked(req, NULL);
}

/*
 * Another member's caller wants a piece of the file this node made. Only
 * the state's last backup is served, and only from the file this node
 * made: any other id is NOT_FOUND.
 */
static void fetch_backup_piece(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__FetchBackupPieceRequest *req =
		kms__v1__fetch_backup_piece_request__unpack(NULL, len, data);
	Kms__V1__FetchBackupResponse resp = KMS__V1__FETCH_BACKUP_RESPONSE__INIT;
	kms_backup_ref ref;
	kms_buf piece = {0};
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed FetchBackupPieceRequest");
		return;
	}
	if (kms_api_require_member_node(node, call) == 0)
		goto out;
	if (req->backup_id.len != KMS_BACKUP_ID_LEN) {
		kms_call_fail(call, KMS_ERR_INVALID, "a backup id is 16 bytes");
		goto out;
	}
	if (!kms_keyring_last_backup_ref(node->kr, &ref) ||
	    memcmp(ref.backup_id, req->backup_id.data, KMS_BACKUP_ID_LEN) != 0 ||
	    ref.holder_node_id != node->cfg.node_id) {
		kms_call_fail(call, KMS_ERR_NOT_FOUND,
			      "this node does not keep that backup's file: it is not the cluster's "
			      "last backup, or another node made it");
		goto out;
	}
	if (kms_backup_store_read(node->cfg.data_dir, &ref, req->offset, req->max_bytes, &piece,
				  &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		goto out;
	}
	resp.backup_file.data = piece.data;
	resp.backup_file.len = piece.len;
	resp.total_bytes = ref.size;
	kms_call_reply(call, &resp.base, 0);
out:
	kms_buf_free(&piece);
	kms__v1__fetch_backup_piece_request__free_unpacked(req, NULL);
}

const kms_method kms_api_backup_methods[] = {
	{"/kms.v1.Operator/FetchBackup", fetch_backup, KMS_CALLERS_SERVICES,
	 &kms__v1__fetch_backup_request__descriptor, 0},
	{"/kms.v1.Internal/FetchBackupPiece", fetch_backup_piece, KMS_CALLERS_NODES,
	 &kms__v1__fetch_backup_piece_request__descriptor, 0},
};
const size_t kms_api_backup_n_methods =
	sizeof(kms_api_backup_methods) / sizeof(kms_api_backup_methods[0]);
