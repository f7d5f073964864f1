/* api_region.c - the region calls: RegionStatus and PromoteRegion (kms.v1.Operator, administrators), RegionPull and RegionEpoch (kms.v1.Internal, the nodes of linked regions only). */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "api/api.h"
#include "kms/alloc.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "kms/region.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/dk_rotation.h"
#include "node/node.h"
#include "region/region_sync.h"
#include "tls/tls_files.h"

/* --- RegionStatus --- */

static void link_status(kms_node *node, const Kms__V1__RegionLinkRecord *l,
			Kms__V1__RegionLinkStatus *out, kms_region_link_info *info, int64_t now)
{
	uint64_t head;

	kms__v1__region_link_status__init(out);
	kms_region_sync_info(node->region_sync, l->peer_region, info);
	out->peer_region = l->peer_region;
	out->role = (char *)kms_region_role_name(l->role);
	out->mode = (char *)kms_region_mode_name(l->mode);
	out->epoch = l->epoch;
	out->peer_endpoints = l->peer_endpoints;
	out->n_peer_endpoints = l->n_peer_endpoints;
	out->conflicts = l->conflicts;
	out->last_conflict = l->last_conflict;
	out->last_error = info->last_error;
	out->last_pull_unix = info->last_pull_unix;
	out->peer_cursor = info->peer_cursor;
	out->awaiting_follow = l->awaiting_follow;
	if (l->role != KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY)
		return;
	/* The leader's puller saw the newest head; the state has the one of
	 * the last commit. */
	head = info->peer_head > l->peer_head ? info->peer_head : l->peer_head;
	out->cursor = l->cursor;
	out->peer_head = head;
	out->lag_entries = head > l->cursor ? head - l->cursor : 0;
	/*
	 * Behind, or not hearing from the primary: the time since this region
	 * last held every change it knew of. Off the leader only the state's
	 * last commit is known.
	 */
	if (out->lag_entries > 0 || info->last_error[0] != '\0') {
		int64_t since = info->caught_up_unix > 0 ? info->caught_up_unix
							 : l->applied_at_unix > 0 ? l->applied_at_unix
										  : l->linked_at_unix;

		out->lag_seconds = now > since ? now - since : 0;
	}
}

static void region_status(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RegionStatusRequest *req = kms__v1__region_status_request__unpack(NULL, len, data);
	Kms__V1__RegionStatusResponse resp = KMS__V1__REGION_STATUS_RESPONSE__INIT;
	Kms__V1__RegionLinkStatus st[KMS_REGION_LINKS_MAX], *stp[KMS_REGION_LINKS_MAX];
	kms_region_link_info info[KMS_REGION_LINKS_MAX];
	Kms__V1__RegionLinkRecord **links = NULL;
	char region[KMS_REGION_NAME_MAX + 1];
	int64_t now = (int64_t)time(NULL);
	size_t n = 0;
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RegionStatusRequest");
		return;
	}
	kms__v1__region_status_request__free_unpacked(req, NULL);
	if (kms_api_admin_check(node, kms_call_principal(call), &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	if (kms_keyring_region_links(node->kr, &links, &n, &resp.region_rev, &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	kms_keyring_region(node->kr, region);
	resp.region = region;
	for (size_t i = 0; i < n && i < KMS_REGION_LINKS_MAX; i++) {
		link_status(node, links[i], &st[i], &info[i], now);
		stp[i] = &st[i];
	}
	resp.links = stp;
	resp.n_links = n;
	kms_call_reply(call, &resp.base, 0);
	kms_keyring_region_links_free(links, n);
}

/* --- RegionPull --- */

/* The certificate names the caller's region; the request must agree. */
static int caller_region_check(const char *peer, const char *claimed, kms_err *err)
{
	if (strcmp(claimed, peer) != 0)
		return kms_errf(err, KMS_ERR_PERMISSION,
				"the caller is a node of region '%s', not of region '%s'", peer,
				claimed);
	return KMS_OK;
}

/* The link that makes this region the primary of peer, or NULL. */
static const Kms__V1__RegionLinkRecord *primary_of(Kms__V1__RegionLinkRecord **links, size_t n,
						   const char *peer)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(links[i]->peer_region, peer) == 0 &&
		    links[i]->role == KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY)
			return links[i];
	return NULL;
}

/* Moves each version's material from this region's DK to a new carrier
 * key wrapped to the caller's transport key. */
static int export_keys(kms_node *node, const Kms__V1__RegionPullRequest *req,
		       Kms__V1__KeyRecord **keys, size_t n, kms_buf *wrapped_carrier,
		       kms_err *err)
{
	kms_hsm_rewrapper *rw = NULL;
	kms_hsm_key carrier = 0, dk;
	uint32_t gen;
	int rc;

	kms_dk_current(node, &dk, &gen);
	KMS_TRY(kms_hsm_carrier_create(node->hsm, req->rsa_modulus.data, req->rsa_modulus.len,
				       req->rsa_public_exponent.data, req->rsa_public_exponent.len,
				       &carrier, wrapped_carrier, err));
	rc = kms_hsm_rewrap_open(node->hsm, dk, &rw, err);
	for (size_t i = 0; i < n && rc == KMS_OK; i++)
		for (size_t j = 0; j < keys[i]->n_versions && rc == KMS_OK; j++) {
			ProtobufCBinaryData *m = &keys[i]->versions[j]->wrapped_material;
			kms_buf out = {0};

			if (m->len == 0)
				continue;
			rc = kms_hsm_rewrap(rw, carrier, m->data, m->len, &out, err);
			if (rc != KMS_OK) {
				/* Under another generation: a domain-key rotation is
				 * switching; the next pull finds it done. */
				kms_errf(err, KMS_ERR_UNAVAILABLE,
					 "key '%s' version %u cannot be sent now (%s)",
					 keys[i]->key_id, keys[i]->versions[j]->version,
					 err != NULL ? err->msg : "");
				break;
			}
			/* The copies are the key ring's, made with kms_malloc. */
			kms_free(m->data);
			m->data = out.data;
			m->len = out.len;
		}
	kms_hsm_rewrap_close(rw);
	kms_hsm_key_destroy(node->hsm, carrier);
	if (rc != KMS_OK)
		kms_buf_free(wrapped_carrier);
	return rc;
}

static void region_pull(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RegionPullRequest *req = kms__v1__region_pull_request__unpack(NULL, len, data);
	Kms__V1__RegionPullResponse resp = KMS__V1__REGION_PULL_RESPONSE__INIT;
	Kms__V1__RegionLinkRecord **links = NULL;
	const Kms__V1__RegionLinkRecord *link;
	Kms__V1__KeyRecord **keys = NULL;
	Kms__V1__AliasRecord **aliases = NULL;
	size_t n_aliases = 0;
	const char *peer = kms_call_peer_region(call);
	char region[KMS_REGION_NAME_MAX + 1];
	kms_buf carrier = {0};
	size_t n_links = 0, n = 0;
	uint64_t head = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RegionPullRequest");
		return;
	}
	KMS_TRY_GOTO(rc, caller_region_check(peer, req->region, &err), out);
	KMS_TRY_GOTO(rc, kms_node_serving(node, &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_region_links(node->kr, &links, &n_links, NULL, &err), out);
	link = primary_of(links, n_links, peer);
	if (link == NULL) {
		kms_keyring_region(node->kr, region);
		rc = kms_errf(&err, KMS_ERR_PERMISSION,
			      "region '%s' is not linked as the primary of region '%s'",
			      region[0] != '\0' ? region : "unnamed", peer);
		goto out;
	}
	if (req->epoch != link->epoch) {
		rc = kms_errf(&err, KMS_ERR_PRECONDITION,
			      "the link to region '%s' is at epoch %llu, not %llu", peer,
			      (unsigned long long)link->epoch, (unsigned long long)req->epoch);
		goto out;
	}
	if (req->max_keys > KMS_REGION_APPLY_MAX) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "max_keys %u is over %d", req->max_keys,
			      KMS_REGION_APPLY_MAX);
		goto out;
	}
	kms_region_sync_served(node->region_sync, peer, req->after_rev);
	KMS_TRY_GOTO(rc,
		     kms_keyring_region_changes(node->kr, req->after_rev,
						req->max_keys != 0 ? req->max_keys
								   : KMS_REGION_APPLY_MAX,
						&keys, &n, &head, &err),
		     out);
	if (n > 0) {
		KMS_TRY_GOTO(rc, export_keys(node, req, keys, n, &carrier, &err), out);
		KMS_TRY_GOTO(rc,
			     kms_keyring_aliases_of_keys(node->kr, keys, n, &aliases, &n_aliases,
							 &err),
			     out);
	}
	kms_keyring_region(node->kr, region);
	resp.region = region;
	resp.epoch = link->epoch;
	resp.head_rev = head;
	resp.now_unix = (int64_t)time(NULL);
	resp.wrapped_carrier.data = carrier.data;
	resp.wrapped_carrier.len = carrier.len;
	resp.keys = keys;
	resp.n_keys = n;
	resp.aliases = aliases;
	resp.n_aliases = n_aliases;
	/*
	 * A full page ends at its last key; a short one held every key changed
	 * after the cursor, so everything up to the head is sent (a rev not
	 * sent belongs to a key changed again since, sent at its newer rev).
	 */
	resp.next_rev = n == (req->max_keys != 0 ? req->max_keys : KMS_REGION_APPLY_MAX)
			    ? keys[n - 1]->region_rev
			    : head;
	kms_call_reply(call, &resp.base, 0);
	rc = KMS_OK;
out:
	if (rc != KMS_OK)
		kms_call_fail(call, rc, err.msg);
	kms_keyring_records_free(keys, n);
	kms_keyring_aliases_free(aliases, n_aliases);
	kms_keyring_region_links_free(links, n_links);
	kms_buf_free(&carrier);
	kms__v1__region_pull_request__free_unpacked(req, NULL);
}

/* --- link-region, checked against this node --- */

/* True when a certificate of a is one of b's. */
static int shares_a_certificate(STACK_OF(X509) *a, STACK_OF(X509) *b)
{
	for (int i = 0; i < sk_X509_num(a); i++)
		for (int j = 0; j < sk_X509_num(b); j++)
			if (X509_cmp(sk_X509_value(a, i), sk_X509_value(b, j)) == 0)
				return 1;
	return 0;
}

int kms_api_link_region_check(kms_node *node, const Kms__V1__LinkRegionOperation *op,
			      kms_err *err)
{
	STACK_OF(X509) *peer = NULL, *own = NULL;
	int rc;

	KMS_TRY(kms_tls_parse_certs((const char *)op->peer_node_ca_pem.data,
				    op->peer_node_ca_pem.len, "peer node CA", KMS_ERR_INVALID, &peer,
				    err));
	pthread_mutex_lock(&node->reload_mu);
	rc = node->tls.node_ca == NULL
		 ? KMS_OK
		 : kms_tls_parse_certs(node->tls.node_ca, strlen(node->tls.node_ca), "node CA",
				       KMS_ERR_INTERNAL, &own, err);
	pthread_mutex_unlock(&node->reload_mu);
	/* Its nodes could not be told from this region's own. */
	if (rc == KMS_OK && own != NULL && shares_a_certificate(peer, own))
		rc = kms_errf(err, KMS_ERR_INVALID,
			      "link-region: the peer node CA is this region's own node CA; each "
			      "region needs a node CA of its own");
	sk_X509_pop_free(peer, X509_free);
	sk_X509_pop_free(own, X509_free);
	return rc;
}

/* --- PromoteRegion, RegionEpoch --- */

static void promote_region(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__PromoteRegionRequest *req = kms__v1__promote_region_request__unpack(NULL, len, data);
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed PromoteRegionRequest");
		return;
	}
	kms__v1__promote_region_request__free_unpacked(req, NULL);
	if (kms_api_admin_check(node, kms_call_principal(call), &err) != KMS_OK) {
		kms_call_fail(call, err.code, err.msg);
		return;
	}
	/* A promotion takes another region's keys: only M operators decide it. */
	kms_call_fail(call, KMS_ERR_PRECONDITION,
		      "promoting a region is a root operation that M operators approve: kmsctl "
		      "region promote --peer REGION (or kmsctl quorum propose promote-region "
		      "REGION), then kmsctl quorum approve");
}

static void region_epoch(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RegionEpochRequest *req = kms__v1__region_epoch_request__unpack(NULL, len, data);
	Kms__V1__RegionEpochResponse resp = KMS__V1__REGION_EPOCH_RESPONSE__INIT;
	Kms__V1__RegionLinkRecord **links = NULL;
	const char *peer = kms_call_peer_region(call);
	char region[KMS_REGION_NAME_MAX + 1];
	size_t n = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RegionEpochRequest");
		return;
	}
	KMS_TRY_GOTO(rc, caller_region_check(peer, req->region, &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_region_links(node->kr, &links, &n, NULL, &err), out);
	kms_keyring_region(node->kr, region);
	rc = kms_errf(&err, KMS_ERR_PERMISSION, "region '%s' is not linked to region '%s'",
		      region[0] != '\0' ? region : "unnamed", peer);
	for (size_t i = 0; i < n; i++)
		if (strcmp(links[i]->peer_region, peer) == 0) {
			resp.region = region;
			resp.role = (char *)kms_region_role_name(links[i]->role);
			resp.epoch = links[i]->epoch;
			resp.cursor = links[i]->cursor;
			kms_call_reply(call, &resp.base, 0);
			rc = KMS_OK;
			break;
		}
out:
	if (rc != KMS_OK)
		kms_call_fail(call, rc, err.msg);
	kms_keyring_region_links_free(links, n);
	kms__v1__region_epoch_request__free_unpacked(req, NULL);
}

const kms_method kms_api_region_methods[] = {
    {"/kms.v1.Operator/RegionStatus", region_status, KMS_CALLERS_SERVICES,
     &kms__v1__region_status_request__descriptor, 0},
    {"/kms.v1.Operator/PromoteRegion", promote_region, KMS_CALLERS_SERVICES,
     &kms__v1__promote_region_request__descriptor, 0},
    {"/kms.v1.Internal/RegionPull", region_pull, KMS_CALLERS_REGIONS,
     &kms__v1__region_pull_request__descriptor, 0},
    {"/kms.v1.Internal/RegionEpoch", region_epoch, KMS_CALLERS_REGIONS,
     &kms__v1__region_epoch_request__descriptor, 0},
};
const size_t kms_api_region_n_methods =
    sizeof(kms_api_region_methods) / sizeof(kms_api_region_methods[0]);
