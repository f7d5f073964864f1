/* quorum_digest.c - what a quorum approval signs: the rules of root operations, their canonical encoding and digest, Ed25519 over it. */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/blob.h"
#include "kms/hostport.h"
#include "kms/quorum.h"

int kms_operator_name_check(const char *name, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	size_t n;

	KMS_ENSURE(name != NULL && name[0] != '\0', err, KMS_ERR_INVALID,
		   "an operator needs a name");
	n = strlen(name);
	KMS_ENSURE(n <= KMS_OPERATOR_NAME_MAX, err, KMS_ERR_INVALID,
		   "operator name '%s' is longer than %d bytes", kms_quote(name, q),
		   KMS_OPERATOR_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-'))
			return kms_errf(err, KMS_ERR_INVALID,
					"operator name '%s' may hold only a-z, 0-9, '.', '_', '-'",
					kms_quote(name, q));
	}
	return KMS_OK;
}

int kms_proposal_id_check(const char *id, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	if (id != NULL && strlen(id) == KMS_PROPOSAL_ID_HEX &&
	    strspn(id, "0123456789abcdef") == KMS_PROPOSAL_ID_HEX)
		return KMS_OK;
	return kms_errf(err, KMS_ERR_INVALID,
			"proposal id '%s' is not %d lowercase hex digits",
			kms_quote(id != NULL ? id : "", q), KMS_PROPOSAL_ID_HEX);
}

int kms_operator_set_check(Kms__V1__OperatorRecord *const *ops, size_t n, uint32_t threshold,
			   kms_err *err)
{
	KMS_ENSURE(n >= 1 && ops != NULL, err, KMS_ERR_INVALID,
		   "an operator set needs at least one operator");
	KMS_ENSURE(n <= KMS_OPERATORS_MAX, err, KMS_ERR_INVALID,
		   "%zu operators, more than %d", n, KMS_OPERATORS_MAX);
	KMS_ENSURE(threshold >= 1 && threshold <= n, err, KMS_ERR_INVALID,
		   "threshold %u cannot be reached by %zu operator(s): it must be 1..%zu",
		   threshold, n, n);
	for (size_t i = 0; i < n; i++) {
		KMS_ENSURE(ops[i] != NULL, err, KMS_ERR_INVALID, "operator %zu is empty", i + 1);
		KMS_TRY(kms_operator_name_check(ops[i]->name, err));
		KMS_ENSURE(ops[i]->public_key.len == KMS_ED25519_PUB_LEN, err, KMS_ERR_INVALID,
			   "operator '%s' has a %zu-byte key, not a %d-byte Ed25519 public key",
			   ops[i]->name, ops[i]->public_key.len, KMS_ED25519_PUB_LEN);
		for (size_t j = 0; j < i; j++) {
			KMS_ENSURE(strcmp(ops[i]->name, ops[j]->name) != 0, err, KMS_ERR_INVALID,
				   "operator '%s' is listed twice", ops[i]->name);
			/* One key counted twice would let one person count as two. */
			KMS_ENSURE(memcmp(ops[i]->public_key.data, ops[j]->public_key.data,
					  KMS_ED25519_PUB_LEN) != 0,
				   err, KMS_ERR_INVALID,
				   "operators '%s' and '%s' have the same public key", ops[j]->name,
				   ops[i]->name);
		}
	}
	return KMS_OK;
}

int kms_root_operation_check(const Kms__V1__RootOperation *op, kms_err *err)
{
	KMS_ENSURE(op != NULL, err, KMS_ERR_INVALID, "the proposal holds no operation");
	switch (op->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS:
		KMS_ENSURE(op->set_operators != NULL, err, KMS_ERR_INVALID, "set-operators is empty");
		return kms_operator_set_check(op->set_operators->operators,
					      op->set_operators->n_operators,
					      op->set_operators->threshold, err);
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS:
		KMS_ENSURE(op->set_administrators != NULL, err, KMS_ERR_INVALID,
			   "set-administrators is empty");
		return kr_admins_check(op->set_administrators->administrators,
				       op->set_administrators->n_administrators, err);
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER: {
		const Kms__V1__AddMemberOperation *a = op->add_member;

		KMS_ENSURE(a != NULL && a->id >= 1, err, KMS_ERR_INVALID,
			   "add-member needs a node id of 1 or more");
		KMS_TRY(kms_hostport_check(a->raft_address, "raft_address", err));
		KMS_TRY(kms_hostport_check(a->grpc_address, "grpc_address", err));
		KMS_ENSURE(a->transport_key_sha256.len == KMS_FINGERPRINT_LEN, err,
			   KMS_ERR_INVALID,
			   "add-member needs the joining node's transport key SHA-256 (%d bytes)",
			   KMS_FINGERPRINT_LEN);
		KMS_ENSURE(a->grant_ttl_seconds >= 1 && a->grant_ttl_seconds <= KMS_GRANT_TTL_MAX,
			   err, KMS_ERR_INVALID, "add-member grant_ttl_seconds %u is not 1..%d",
			   a->grant_ttl_seconds, KMS_GRANT_TTL_MAX);
		return KMS_OK;
	}
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		KMS_ENSURE(op->remove_member != NULL && op->remove_member->id >= 1, err,
			   KMS_ERR_INVALID, "remove-member needs a node id of 1 or more");
		return KMS_OK;
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		KMS_ENSURE(op->destroy_key != NULL, err, KMS_ERR_INVALID, "destroy-key is empty");
		KMS_ENSURE(!kms_is_alias_name(op->destroy_key->key_id), err, KMS_ERR_INVALID,
			   "destroy-key names a key id, not an alias");
		return kms_key_id_check(op->destroy_key->key_id, err);
	case KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY:
		return KMS_OK;
	case KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL:
		KMS_ENSURE(op->cancel_proposal != NULL, err, KMS_ERR_INVALID,
			   "cancel-proposal is empty");
		return kms_proposal_id_check(op->cancel_proposal->proposal_id, err);
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		return kms_backup_export_check(op->backup_export, NULL, err);
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		return kms_link_region_check(op->link_region, err);
	case KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION:
		KMS_ENSURE(op->promote_region != NULL, err, KMS_ERR_INVALID,
			   "promote-region is empty");
		return kms_region_name_check(op->promote_region->peer_region, err);
	case KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION:
		KMS_ENSURE(op->unlink_region != NULL, err, KMS_ERR_INVALID,
			   "unlink-region is empty");
		return kms_region_name_check(op->unlink_region->peer_region, err);
	case KMS__V1__ROOT_OPERATION__OP__NOT_SET:
	default:
		return kms_errf(err, KMS_ERR_INVALID, "the proposal names no root operation");
	}
}

const char *kms_root_operation_name(const Kms__V1__RootOperation *op)
{
	switch (op != NULL ? op->op_case : KMS__V1__ROOT_OPERATION__OP__NOT_SET) {
	case KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS:
		return "set-operators";
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS:
		return "set-administrators";
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER:
		return "add-member";
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		return "remove-member";
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		return "destroy-key";
	case KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY:
		return "rotate-domain-key";
	case KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL:
		return "cancel-proposal";
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		return "backup-export";
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		return "link-region";
	case KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION:
		return "promote-region";
	case KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION:
		return "unlink-region";
	default:
		return "unknown";
	}
}

int kms_root_operation_in_state(const Kms__V1__RootOperation *op)
{
	return op != NULL && op->op_case != KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY &&
	       op->op_case != KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT;
}

int kms_backup_export_check(const Kms__V1__BackupExportOperation *b,
			    kms_backup_custodian out[KMS_BACKUP_CUSTODIANS_MAX], kms_err *err)
{
	kms_backup_custodian c[KMS_BACKUP_CUSTODIANS_MAX];

	KMS_ENSURE(b != NULL && b->n_custodians >= 1, err, KMS_ERR_INVALID,
		   "backup-export needs at least one custodian");
	KMS_ENSURE(b->n_custodians <= KMS_BACKUP_CUSTODIANS_MAX, err, KMS_ERR_INVALID,
		   "backup-export names %zu custodians, more than %d", b->n_custodians,
		   KMS_BACKUP_CUSTODIANS_MAX);
	for (size_t i = 0; i < b->n_custodians; i++) {
		KMS_ENSURE(b->custodians[i] != NULL &&
				   b->custodians[i]->public_key.len == KMS_X25519_LEN,
			   err, KMS_ERR_INVALID,
			   "custodian %zu has no %d-byte X25519 public key", i + 1, KMS_X25519_LEN);
		c[i].name = b->custodians[i]->name;
		memcpy(c[i].public_key, b->custodians[i]->public_key.data, KMS_X25519_LEN);
	}
	KMS_TRY(kms_backup_custodians_check(c, b->n_custodians, b->threshold, err));
	if (out != NULL)
		memcpy(out, c, b->n_custodians * sizeof(*c));
	return KMS_OK;
}

/* --- the canonical encoding --- */

/* A growing buffer; a failed append marks it failed and appends nothing more. */
struct enc {
	uint8_t *data;
	size_t len, cap;
	int failed;
};

static void put(struct enc *e, const void *p, size_t n)
{
	if (e->failed)
		return;
	if (e->len + n > e->cap) {
		size_t cap = e->cap ? e->cap : 256;
		uint8_t *grown;

		while (cap < e->len + n)
			cap *= 2;
		grown = kms_realloc(e->data, cap);
		if (grown == NULL) {
			e->failed = 1;
			return;
		}
		e->data = grown;
		e->cap = cap;
	}
	if (n > 0)
		memcpy(e->data + e->len, p, n);
	e->len += n;
}

static void put_u32(struct enc *e, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	put(e, b, sizeof(b));
}

static void put_u64(struct enc *e, uint64_t v)
{
	put_u32(e, (uint32_t)(v >> 32));
	put_u32(e, (uint32_t)v);
}

/* A field: its length (u32) and its bytes. */
static void put_field(struct enc *e, const void *p, size_t n)
{
	if (n > UINT32_MAX) {
		e->failed = 1;
		return;
	}
	put_u32(e, (uint32_t)n);
	put(e, p, n);
}

static void put_str(struct enc *e, const char *s)
{
	put_field(e, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

static void put_operation(struct enc *e, const Kms__V1__RootOperation *op)
{
	put_str(e, kms_root_operation_name(op));
	switch (op->op_case) {
	case KMS__V1__ROOT_OPERATION__OP_SET_OPERATORS:
		put_u32(e, op->set_operators->threshold);
		put_u32(e, (uint32_t)op->set_operators->n_operators);
		for (size_t i = 0; i < op->set_operators->n_operators; i++) {
			const Kms__V1__OperatorRecord *o = op->set_operators->operators[i];

			put_str(e, o->name);
			put_field(e, o->public_key.data, o->public_key.len);
		}
		break;
	case KMS__V1__ROOT_OPERATION__OP_SET_ADMINISTRATORS:
		put_u32(e, (uint32_t)op->set_administrators->n_administrators);
		for (size_t i = 0; i < op->set_administrators->n_administrators; i++)
			put_str(e, op->set_administrators->administrators[i]);
		break;
	case KMS__V1__ROOT_OPERATION__OP_ADD_MEMBER:
		put_u64(e, op->add_member->id);
		put_str(e, op->add_member->raft_address);
		put_str(e, op->add_member->grpc_address);
		put_field(e, op->add_member->transport_key_sha256.data,
			  op->add_member->transport_key_sha256.len);
		put_u32(e, op->add_member->grant_ttl_seconds);
		break;
	case KMS__V1__ROOT_OPERATION__OP_REMOVE_MEMBER:
		put_u64(e, op->remove_member->id);
		break;
	case KMS__V1__ROOT_OPERATION__OP_DESTROY_KEY:
		put_str(e, op->destroy_key->key_id);
		break;
	case KMS__V1__ROOT_OPERATION__OP_CANCEL_PROPOSAL:
		put_str(e, op->cancel_proposal->proposal_id);
		break;
	case KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT:
		put_u32(e, op->backup_export->threshold);
		put_u32(e, (uint32_t)op->backup_export->n_custodians);
		for (size_t i = 0; i < op->backup_export->n_custodians; i++) {
			const Kms__V1__CustodianRecord *c = op->backup_export->custodians[i];

			put_str(e, c->name);
			put_field(e, c->public_key.data, c->public_key.len);
		}
		break;
	case KMS__V1__ROOT_OPERATION__OP_LINK_REGION:
		put_str(e, op->link_region->peer_region);
		put_u32(e, (uint32_t)op->link_region->role);
		put_u32(e, (uint32_t)op->link_region->mode);
		put_u32(e, (uint32_t)op->link_region->n_peer_endpoints);
		for (size_t i = 0; i < op->link_region->n_peer_endpoints; i++)
			put_str(e, op->link_region->peer_endpoints[i]);
		put_str(e, op->link_region->peer_trust_domain);
		put_field(e, op->link_region->peer_node_ca_pem.data,
			  op->link_region->peer_node_ca_pem.len);
		break;
	case KMS__V1__ROOT_OPERATION__OP_PROMOTE_REGION:
		put_str(e, op->promote_region->peer_region);
		break;
	case KMS__V1__ROOT_OPERATION__OP_UNLINK_REGION:
		put_str(e, op->unlink_region->peer_region);
		break;
	case KMS__V1__ROOT_OPERATION__OP_ROTATE_DOMAIN_KEY:
	default:
		break;
	}
}

int kms_quorum_encode(const uint8_t *cluster_id, size_t cluster_id_len, const char *proposal_id,
		      int64_t expires_at_unix, const Kms__V1__RootOperation *op, kms_buf *out,
		      kms_err *err)
{
	struct enc e = {0};

	out->data = NULL;
	out->len = 0;
	KMS_TRY(kms_root_operation_check(op, err));
	KMS_TRY(kms_proposal_id_check(proposal_id, err));
	KMS_ENSURE(cluster_id != NULL && cluster_id_len == KMS_CLUSTER_ID_LEN, err,
		   KMS_ERR_INVALID, "a proposal needs the %d-byte cluster id", KMS_CLUSTER_ID_LEN);
	put(&e, KMS_QUORUM_TAG, strlen(KMS_QUORUM_TAG));
	put_field(&e, cluster_id, cluster_id_len);
	put_str(&e, proposal_id);
	put_u64(&e, (uint64_t)expires_at_unix);
	put_operation(&e, op);
	if (e.failed) {
		kms_free(e.data);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory encoding a proposal");
	}
	out->data = e.data;
	out->len = e.len;
	return KMS_OK;
}

int kms_quorum_digest(const uint8_t *cluster_id, size_t cluster_id_len, const char *proposal_id,
		      int64_t expires_at_unix, const Kms__V1__RootOperation *op,
		      uint8_t out[KMS_QUORUM_DIGEST_LEN], kms_err *err)
{
	kms_buf enc = {0};

	KMS_TRY(kms_quorum_encode(cluster_id, cluster_id_len, proposal_id, expires_at_unix, op,
				  &enc, err));
	SHA256(enc.data, enc.len, out);
	kms_buf_free(&enc);
	return KMS_OK;
}

/* --- Ed25519 --- */

int kms_ed25519_verify(const uint8_t pub[KMS_ED25519_PUB_LEN],
		       const uint8_t digest[KMS_QUORUM_DIGEST_LEN], const uint8_t *sig,
		       size_t sig_len, kms_err *err)
{
	EVP_PKEY *pk;
	EVP_MD_CTX *ctx;
	int ok;

	if (sig == NULL || sig_len != KMS_ED25519_SIG_LEN)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"the signature is %zu bytes, not a %d-byte Ed25519 signature",
				sig_len, KMS_ED25519_SIG_LEN);
	pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, KMS_ED25519_PUB_LEN);
	if (pk == NULL)
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot load an Ed25519 public key");
	ctx = EVP_MD_CTX_new();
	if (ctx == NULL) {
		EVP_PKEY_free(pk);
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory verifying a signature");
	}
	/* Pure Ed25519 (RFC 8032 5.1): no digest is named. */
	ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) == 1 &&
	     EVP_DigestVerify(ctx, sig, sig_len, digest, KMS_QUORUM_DIGEST_LEN) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	if (!ok)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"the signature does not verify over this proposal's digest with "
				"the operator's key");
	return KMS_OK;
}

int kms_ed25519_public_from_file(const char *path, uint8_t pub[KMS_ED25519_PUB_LEN],
				 kms_err *err)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *pk;
	size_t n = KMS_ED25519_PUB_LEN;
	int rc = KMS_OK;

	if (f == NULL)
		return kms_errf(err, KMS_ERR_IO, "cannot open %s: %m", path);
	pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (pk == NULL)
		return kms_errf(err, KMS_ERR_CONFIG, "%s holds no PEM public key", path);
	if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519 ||
	    EVP_PKEY_get_raw_public_key(pk, pub, &n) != 1 || n != KMS_ED25519_PUB_LEN)
		rc = kms_errf(err, KMS_ERR_CONFIG, "%s is not an Ed25519 public key", path);
	EVP_PKEY_free(pk);
	return rc;
}

int kms_ed25519_sign_file(const char *path, const uint8_t digest[KMS_QUORUM_DIGEST_LEN],
			  uint8_t sig[KMS_ED25519_SIG_LEN], uint8_t pub[KMS_ED25519_PUB_LEN],
			  kms_err *err)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *pk;
	EVP_MD_CTX *ctx = NULL;
	size_t n = KMS_ED25519_SIG_LEN, pn = KMS_ED25519_PUB_LEN;
	int rc = KMS_OK;

	if (f == NULL)
		return kms_errf(err, KMS_ERR_IO, "cannot open signing key %s: %m", path);
	pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (pk == NULL)
		return kms_errf(err, KMS_ERR_INVALID, "%s holds no PEM private key", path);
	if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519) {
		rc = kms_errf(err, KMS_ERR_INVALID, "%s is not an Ed25519 private key", path);
		goto out;
	}
	ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, NULL, NULL, pk) != 1 ||
	    EVP_DigestSign(ctx, sig, &n, digest, KMS_QUORUM_DIGEST_LEN) != 1 ||
	    n != KMS_ED25519_SIG_LEN) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "Ed25519 signing with %s failed", path);
		goto out;
	}
	if (pub != NULL && (EVP_PKEY_get_raw_public_key(pk, pub, &pn) != 1 ||
			    pn != KMS_ED25519_PUB_LEN))
		rc = kms_errf(err, KMS_ERR_INTERNAL, "cannot read the public half of %s", path);
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk); /* frees (and OpenSSL cleanses) the private key */
	return rc;
}
