/* region_sync.c - a secondary region's leader pulls its primary's multi-region changes and records them through Raft; and what each side remembers of the stream for region status. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "kms/alloc.h"
#include "kms/hsm.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/dk_rotation.h"
#include "node/node.h"
#include "identity/authn.h"
#include "raft/raft_node.h"
#include "region/region_sync.h"
#include "rpc/peers.h"
#include "rpc/rpc_server.h"

/* How long a commit of pulled changes may take before the pull is retried. */
#define COMMIT_TIMEOUT_MS 10000
/* A sync secondary's cursor is asked with this deadline: one that is
 * stopped must not hold the other links' work for long. */
#define SYNC_ASK_TIMEOUT_MS 1000
/* A held answer goes this long before the caller's deadline. */
#define SYNC_ANSWER_MARGIN_MS 300
/* A failure that repeats every pull is logged at most this often. */
#define FAIL_LOG_EVERY_S 30

struct link_slot {
	char peer[KMS_REGION_NAME_MAX + 1];
	kms_region_link_info info; /* under mu */
	/* The puller thread's alone: the channels to the peer's nodes, for
	 * the trust domain and CA they were made with, and the endpoint to
	 * try first. */
	kms_peers *peers;
	char td[256];
	uint8_t ca_sha256[SHA256_DIGEST_LENGTH];
	size_t next;
	int64_t fail_logged;
	int64_t epoch_asked; /* a primary's last look at the peer's epoch */
};

/* A write's answer held for the sync secondaries. */
struct held {
	struct held *next;
	uint64_t rev;
	int64_t until_ms; /* monotonic */
	kms_raft_done_fn done;
	void *arg;
	uint64_t index;
};

struct kms_region_sync {
	kms_node *node;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int stop, started;
	struct link_slot slots[KMS_REGION_LINKS_MAX];
	size_t n;
	/* The puller's transport key pair, made on its first pull: each
	 * pull's carrier is wrapped to it. */
	kms_hsm_key priv, pub;
	kms_buf modulus, exponent;
	/* The links whose peers authn and the TLS roots know now (the
	 * thread's alone): a digest of their names, trust domains and CAs. */
	uint8_t idents_sha256[SHA256_DIGEST_LENGTH];
	int idents_set;
	/* Commits (under mu): the last one made, the last one answered and
	 * its status. An answer may come after its wait gave up. */
	uint64_t commit_seq, answered_seq;
	int commit_status;
	/* Sync mode: set each round from the links; the held answers (mu). */
	atomic_int sync_primary, sync_secondary;
	struct held *held;
};

static int64_t mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int kms_region_sync_acks(kms_region_sync *s)
{
	return s != NULL && atomic_load(&s->sync_primary);
}

void kms_region_sync_hold(kms_region_sync *s, uint64_t rev, long wait_ms, kms_raft_done_fn done,
			  void *arg, uint64_t index)
{
	struct held *h = kms_calloc(1, sizeof(*h));

	if (h == NULL) {
		done(arg, KMS_ERR_NOMEM, "committed, but out of memory waiting for the sync "
					 "secondaries",
		     index);
		return;
	}
	h->rev = rev;
	/* Answered before the caller's own deadline, so that it learns why. */
	wait_ms = wait_ms > SYNC_ANSWER_MARGIN_MS ? wait_ms - SYNC_ANSWER_MARGIN_MS : 0;
	h->until_ms = mono_ms() + (wait_ms < KMS_REGION_SYNC_WAIT_MS ? wait_ms
								    : KMS_REGION_SYNC_WAIT_MS);
	h->done = done;
	h->arg = arg;
	h->index = index;
	pthread_mutex_lock(&s->mu);
	if (s->stop) {
		pthread_mutex_unlock(&s->mu);
		kms_free(h);
		done(arg, KMS_ERR_UNAVAILABLE, "committed, but kmsd is stopping before the sync "
					       "secondaries confirmed it",
		     index);
		return;
	}
	h->next = s->held;
	s->held = h;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
}

struct commit_wait {
	kms_region_sync *s;
	uint64_t seq;
};


static int64_t now_unix(void)
{
	return (int64_t)time(NULL);
}

/* The slot of peer, made when missing (mu held); NULL when full. */
static struct link_slot *slot_for(kms_region_sync *s, const char *peer)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->slots[i].peer, peer) == 0)
			return &s->slots[i];
	if (s->n == KMS_REGION_LINKS_MAX)
		return NULL;
	memset(&s->slots[s->n], 0, sizeof(s->slots[s->n]));
	snprintf(s->slots[s->n].peer, sizeof(s->slots[s->n].peer), "%s", peer);
	return &s->slots[s->n++];
}

void kms_region_sync_info(kms_region_sync *s, const char *peer, kms_region_link_info *out)
{
	memset(out, 0, sizeof(*out));
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->slots[i].peer, peer) == 0)
			*out = s->slots[i].info;
	pthread_mutex_unlock(&s->mu);
}

void kms_region_sync_served(kms_region_sync *s, const char *peer, uint64_t after_rev)
{
	struct link_slot *l;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	l = slot_for(s, peer);
	if (l != NULL)
		l->info.peer_cursor = after_rev;
	pthread_mutex_unlock(&s->mu);
}

/* Records the outcome of a pull of peer (msg NULL: it went well). */
static void record(kms_region_sync *s, struct link_slot *l, const char *msg, int caught_up)
{
	int64_t now = now_unix();

	pthread_mutex_lock(&s->mu);
	l->info.last_pull_unix = now;
	snprintf(l->info.last_error, sizeof(l->info.last_error), "%s", msg != NULL ? msg : "");
	if (msg == NULL && caught_up)
		l->info.caught_up_unix = now;
	pthread_mutex_unlock(&s->mu);
	if (msg != NULL && now - l->fail_logged >= FAIL_LOG_EVERY_S) {
		l->fail_logged = now;
		KMS_LOG_W("region: pulling from region '%s' failed, tried again every %d ms: %s",
			  l->peer, KMS_REGION_PULL_INTERVAL_MS, msg);
	}
}

/* Writes the peer's node CA where the channels read it (0600, renamed in). */
static int write_ca(kms_node *node, const char *peer, const ProtobufCBinaryData *pem, char *path,
		    size_t cap, kms_err *err)
{
	char dir[PATH_MAX], tmp[PATH_MAX + 8];
	int fd;
	size_t off = 0;

	if (snprintf(dir, sizeof(dir), "%s/regions", node->cfg.data_dir) >= (int)sizeof(dir) ||
	    snprintf(path, cap, "%s/%s-node-ca.pem", dir, peer) >= (int)cap ||
	    snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return kms_errf(err, KMS_ERR_IO, "region: data_dir path too long");
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return kms_errf(err, KMS_ERR_IO, "region: cannot make %s: %s", dir, strerror(errno));
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return kms_errf(err, KMS_ERR_IO, "region: cannot write %s: %s", tmp, strerror(errno));
	while (off < pem->len) {
		ssize_t n = write(fd, pem->data + off, pem->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	if (off < pem->len || fsync(fd) != 0) {
		close(fd);
		unlink(tmp);
		return kms_errf(err, KMS_ERR_IO, "region: cannot write %s: %s", tmp,
				strerror(errno));
	}
	if (close(fd) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return kms_errf(err, KMS_ERR_IO, "region: cannot write %s: %s", path,
				strerror(errno));
	}
	return KMS_OK;
}

/* The channels to the link's peer, made again when its CA or trust domain
 * changed. */
static int channels(kms_region_sync *s, struct link_slot *l, const Kms__V1__RegionLinkRecord *link,
		    kms_err *err)
{
	uint8_t sha[SHA256_DIGEST_LENGTH];
	char path[PATH_MAX];

	SHA256(link->peer_node_ca_pem.data, link->peer_node_ca_pem.len, sha);
	if (l->peers != NULL && memcmp(sha, l->ca_sha256, sizeof(sha)) == 0 &&
	    strcmp(l->td, link->peer_trust_domain) == 0)
		return KMS_OK;
	kms_peers_free(l->peers);
	l->peers = NULL;
	KMS_TRY(write_ca(s->node, link->peer_region, &link->peer_node_ca_pem, path, sizeof(path),
			 err));
	KMS_TRY(kms_peers_new_region(&s->node->cfg, link->peer_trust_domain, path, &l->peers, err));
	memcpy(l->ca_sha256, sha, sizeof(sha));
	snprintf(l->td, sizeof(l->td), "%s", link->peer_trust_domain);
	return KMS_OK;
}

/* Moves each version's material from the carrier to this region's DK. */
static int import_keys(kms_region_sync *s, Kms__V1__RegionPullResponse *resp, kms_hsm_key dk,
		       kms_err *err)
{
	kms_hsm_rewrapper *rw = NULL;
	int rc = KMS_OK;

	if (resp->n_keys == 0)
		return KMS_OK;
	KMS_TRY(kms_hsm_carrier_install(s->node->hsm, s->priv, resp->wrapped_carrier.data,
					resp->wrapped_carrier.len, &rw, err));
	for (size_t i = 0; i < resp->n_keys && rc == KMS_OK; i++) {
		Kms__V1__KeyRecord *k = resp->keys[i];

		for (size_t j = 0; j < k->n_versions && rc == KMS_OK; j++) {
			ProtobufCBinaryData *m = &k->versions[j]->wrapped_material;
			kms_buf out = {0};

			if (m->len == 0)
				continue;
			rc = kms_hsm_rewrap(rw, dk, m->data, m->len, &out, err);
			if (rc != KMS_OK) {
				kms_err_prefix(err, k->key_id);
				break;
			}
			/* The response is protobuf-c's, unpacked with malloc. */
			free(m->data);
			m->data = out.data;
			m->len = out.len;
		}
	}
	kms_hsm_rewrap_close(rw);
	return rc;
}

static void commit_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct commit_wait *w = arg;
	kms_region_sync *s = w->s;

	(void)msg;
	(void)index;
	pthread_mutex_lock(&s->mu);
	/* Raft answers in log order; the highest answer counts. */
	if (w->seq > s->answered_seq) {
		s->answered_seq = w->seq;
		s->commit_status = status;
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
	kms_free(w);
}

/* Commits cmd and waits for its answer. */
static int commit(kms_region_sync *s, const kms_buf *cmd, kms_err *err)
{
	struct commit_wait *w = kms_calloc(1, sizeof(*w));
	struct timespec until;
	int status;

	if (w == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory committing pulled changes");
	pthread_mutex_lock(&s->mu);
	w->s = s;
	w->seq = ++s->commit_seq;
	pthread_mutex_unlock(&s->mu);
	kms_raft_submit(s->node->raft, cmd->data, cmd->len, commit_done, w);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += COMMIT_TIMEOUT_MS / 1000;
	pthread_mutex_lock(&s->mu);
	while (s->answered_seq != s->commit_seq)
		if (pthread_cond_timedwait(&s->cond, &s->mu, &until) == ETIMEDOUT)
			break;
	status = s->answered_seq == s->commit_seq ? s->commit_status : KMS_ERR_UNAVAILABLE;
	pthread_mutex_unlock(&s->mu);
	if (status == KMS_OK)
		return KMS_OK;
	/* Raft carries a refusal's status only; the state gives its sentence. */
	if (kms_keyring_check(s->node->kr, cmd->data, cmd->len, err) == KMS_OK)
		kms_errf(err, status, "committing the pulled changes failed (status %d)", status);
	return status;
}

/* Asks the link's endpoints in turn; the answer or NULL with msg set. */
static Kms__V1__RegionPullResponse *ask(kms_region_sync *s, struct link_slot *l,
					const Kms__V1__RegionLinkRecord *link,
					const Kms__V1__RegionPullRequest *req, char *msg, size_t cap)
{
	Kms__V1__RegionPullResponse *resp = NULL;
	kms_rpc_status st = {0};

	for (size_t k = 0; k < link->n_peer_endpoints; k++) {
		const char *ep = link->peer_endpoints[(l->next + k) % link->n_peer_endpoints];

		if (kms_peers_call(l->peers, ep, 0, "/kms.v1.Internal/RegionPull", &req->base,
				   &kms__v1__region_pull_response__descriptor,
				   (ProtobufCMessage **)&resp, KMS_REGION_PULL_TIMEOUT_MS, &st) == 0) {
			l->next = (l->next + k) % link->n_peer_endpoints;
			return resp;
		}
		snprintf(msg, cap, "%.64s: %.170s (%d)", ep, st.details, st.code);
		/* Refused, not unreachable: another node would say the same. */
		if (st.code == 7 /* PERMISSION_DENIED */ || st.code == 9 /* FAILED_PRECONDITION */ ||
		    st.code == 16 /* UNAUTHENTICATED */)
			break;
	}
	l->next++;
	return NULL;
}

long kms_region_pull_wait_ms(int caught_up, size_t n_keys)
{
	if (!caught_up)
		return 0;
	/* A primary that is being written to has more by the time these are
	 * applied; the floor keeps a pull's fixed cost (a carrier unwrapped
	 * in the HSM, a Raft entry) from taking the CPU the writes need. */
	return n_keys > 0 ? KMS_REGION_PULL_BUSY_MS : KMS_REGION_PULL_INTERVAL_MS;
}

/* One pull of one link; how long from now until the next one: what
 * kms_region_pull_wait_ms leaves of its wait, the interval after a
 * failure. */
static long pull_link(kms_region_sync *s, const Kms__V1__RegionLinkRecord *link,
		     const char *region)
{
	Kms__V1__RegionPullRequest req = KMS__V1__REGION_PULL_REQUEST__INIT;
	Kms__V1__RegionPullResponse *resp = NULL;
	struct link_slot *l;
	kms_buf cmd = {0};
	kms_hsm_key dk;
	uint32_t gen;
	char msg[256] = "";
	kms_err err = {0};
	long more = KMS_REGION_PULL_INTERVAL_MS;
	int caught_up;
	int64_t t0, t1, t2;

	pthread_mutex_lock(&s->mu);
	l = slot_for(s, link->peer_region);
	pthread_mutex_unlock(&s->mu);
	if (l == NULL)
		return more;
	if (s->priv == 0 && kms_hsm_transport_keypair(s->node->hsm, &s->priv, &s->pub, &s->modulus,
						      &s->exponent, &err) != KMS_OK) {
		record(s, l, err.msg, 0);
		return more;
	}
	if (channels(s, l, link, &err) != KMS_OK) {
		record(s, l, err.msg, 0);
		return more;
	}
	req.region = (char *)region;
	req.epoch = link->epoch;
	req.after_rev = link->cursor;
	req.max_keys = KMS_REGION_APPLY_MAX;
	req.rsa_modulus.data = s->modulus.data;
	req.rsa_modulus.len = s->modulus.len;
	req.rsa_public_exponent.data = s->exponent.data;
	req.rsa_public_exponent.len = s->exponent.len;
	t0 = mono_ms();
	resp = ask(s, l, link, &req, msg, sizeof(msg));
	t1 = mono_ms();
	if (resp == NULL) {
		record(s, l, msg, 0);
		return more;
	}
	if (strcmp(resp->region, link->peer_region) != 0 || resp->epoch != link->epoch ||
	    resp->n_keys > KMS_REGION_APPLY_MAX) {
		snprintf(msg, sizeof(msg),
			 "the answer is from region '%.64s' at epoch %llu with %zu keys, not "
			 "from region '%s' at epoch %llu",
			 resp->region, (unsigned long long)resp->epoch, resp->n_keys,
			 link->peer_region, (unsigned long long)link->epoch);
		record(s, l, msg, 0);
		goto out;
	}
	pthread_mutex_lock(&s->mu);
	l->info.peer_head = resp->head_rev;
	pthread_mutex_unlock(&s->mu);
	caught_up = resp->next_rev >= resp->head_rev;
	/* Nothing new: no entry in the log for it. */
	if (resp->n_keys == 0 && resp->next_rev <= link->cursor) {
		record(s, l, NULL, caught_up);
		goto out;
	}
	kms_dk_current(s->node, &dk, &gen);
	if (import_keys(s, resp, dk, &err) != KMS_OK) {
		record(s, l, err.msg, 0);
		goto out;
	}
	t2 = mono_ms();
	if (kms_keyring_cmd_region_apply(link->peer_region, link->epoch, resp->keys, resp->n_keys,
					 resp->aliases, resp->n_aliases, resp->next_rev,
					 resp->head_rev, now_unix(), gen, &cmd, &err) != KMS_OK ||
	    commit(s, &cmd, &err) != KMS_OK) {
		record(s, l, err.msg, 0);
		goto out;
	}
	record(s, l, NULL, caught_up);
	/* Where a pull's time goes, for tuning the lag ([log] level = debug). */
	KMS_LOG_D("region: pulled %zu keys from region '%s' (%llu more): ask %lld ms, rewrap "
		  "%lld ms, commit %lld ms",
		  resp->n_keys, link->peer_region,
		  (unsigned long long)(caught_up ? 0 : resp->head_rev - resp->next_rev),
		  (long long)(t1 - t0), (long long)(t2 - t1), (long long)(mono_ms() - t2));
	more = kms_region_pull_wait_ms(caught_up, resp->n_keys) - (long)(mono_ms() - t0);
	more = more > 0 ? more : 0;
out:
	kms_buf_free(&cmd);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return more;
}

/*
 * Every node, leader or not: the linked regions' nodes are identified by
 * their node CAs and trust domains (authn), and those CAs verify their
 * handshakes (the server's roots), as soon as the state links them and no
 * longer once it does not.
 */
static void refresh_identities(kms_region_sync *s, Kms__V1__RegionLinkRecord **links, size_t n)
{
	kms_authn_region r[KMS_REGION_LINKS_MAX];
	uint8_t sha[SHA256_DIGEST_LENGTH];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	kms_buf pem = {0};
	kms_err err = {0};
	size_t total = 0;
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

	for (size_t i = 0; ok && i < n; i++) {
		ok = EVP_DigestUpdate(ctx, links[i]->peer_region,
				      strlen(links[i]->peer_region) + 1) == 1 &&
		     EVP_DigestUpdate(ctx, links[i]->peer_trust_domain,
				      strlen(links[i]->peer_trust_domain) + 1) == 1 &&
		     EVP_DigestUpdate(ctx, links[i]->peer_node_ca_pem.data,
				      links[i]->peer_node_ca_pem.len) == 1;
		total += links[i]->peer_node_ca_pem.len + 1;
	}
	ok = ok && EVP_DigestFinal_ex(ctx, sha, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		KMS_LOG_E("region: SHA-256 of the links failed");
		return;
	}
	if (s->idents_set && memcmp(sha, s->idents_sha256, sizeof(sha)) == 0)
		return;
	pem.data = kms_malloc(total + 1);
	if (pem.data == NULL)
		return;
	for (size_t i = 0; i < n && i < KMS_REGION_LINKS_MAX; i++) {
		r[i].name = links[i]->peer_region;
		r[i].trust_domain = links[i]->peer_trust_domain;
		r[i].node_ca_pem = (const char *)links[i]->peer_node_ca_pem.data;
		r[i].node_ca_pem_len = links[i]->peer_node_ca_pem.len;
		memcpy(pem.data + pem.len, links[i]->peer_node_ca_pem.data,
		       links[i]->peer_node_ca_pem.len);
		pem.len += links[i]->peer_node_ca_pem.len;
		pem.data[pem.len++] = '\n';
	}
	pem.data[pem.len] = '\0';
	if (kms_authn_set_regions(s->node->authn, r, n, &err) != KMS_OK ||
	    kms_rpc_server_set_extra_roots(s->node->rpc, (const char *)pem.data, &err) != KMS_OK)
		/* Until the links change (a CA this node cannot tell from its
		 * own, say): logged once, and the set before stays in force. */
		KMS_LOG_E("region: the linked regions' node identities are refused, and the "
			  "links' peers cannot call this node: %s",
			  err.msg);
	else if (n > 0)
		KMS_LOG_I("region: the nodes of %zu linked region(s) are known by their node CAs",
			  n);
	memcpy(s->idents_sha256, sha, sizeof(sha));
	s->idents_set = 1;
	kms_buf_free(&pem);
}

/*
 * RegionEpoch of the link's peer at the endpoint l->next, with a short
 * deadline (a peer that hangs must not hold this thread's other work); the
 * answer, or NULL and the next endpoint for the next ask.
 */
static Kms__V1__RegionEpochResponse *ask_epoch(kms_region_sync *s, struct link_slot *l,
						const Kms__V1__RegionLinkRecord *link,
						const char *region)
{
	Kms__V1__RegionEpochRequest req = KMS__V1__REGION_EPOCH_REQUEST__INIT;
	Kms__V1__RegionEpochResponse *resp = NULL;
	kms_rpc_status st = {0};
	kms_err err = {0};

	if (channels(s, l, link, &err) != KMS_OK) {
		record(s, l, err.msg, 0);
		return NULL;
	}
	req.region = (char *)region;
	if (kms_peers_call(l->peers, link->peer_endpoints[l->next % link->n_peer_endpoints], 0,
			   "/kms.v1.Internal/RegionEpoch", &req.base,
			   &kms__v1__region_epoch_response__descriptor, (ProtobufCMessage **)&resp,
			   SYNC_ASK_TIMEOUT_MS, &st) != 0) {
		l->next++;
		return NULL;
	}
	return resp;
}

/*
 * A primary's leader asks its secondary for the epoch of their link, once
 * a second: a secondary promoted since (PRIMARY at a higher epoch) fences
 * this region, which becomes its secondary (FenceRegion).
 */
static void watch_epoch(kms_region_sync *s, const Kms__V1__RegionLinkRecord *link,
			const char *region)
{
	Kms__V1__RegionEpochResponse *resp;
	struct link_slot *l;
	kms_buf cmd = {0};
	kms_err err = {0};
	int64_t now = now_unix();

	pthread_mutex_lock(&s->mu);
	l = slot_for(s, link->peer_region);
	pthread_mutex_unlock(&s->mu);
	if (l == NULL || now - l->epoch_asked < KMS_REGION_EPOCH_EVERY_S)
		return;
	l->epoch_asked = now;
	/* One endpoint a look: another one the next second if it did not answer. */
	resp = ask_epoch(s, l, link, region);
	if (resp == NULL)
		return; /* A secondary that cannot be reached promoted nothing we know of. */
	if (link->awaiting_follow && strcmp(resp->role, "secondary") == 0 &&
	    resp->epoch == link->epoch) {
		KMS_LOG_I("region: region '%s' follows this region at epoch %llu%s",
			  link->peer_region, (unsigned long long)link->epoch,
			  link->mode == KMS__V1__REGION_MODE__REGION_MODE_SYNC
			      ? ": sync writes wait for it again"
			      : "");
		if (kms_keyring_cmd_region_followed(link->peer_region, link->epoch, &cmd, &err) !=
			    KMS_OK ||
		    commit(s, &cmd, &err) != KMS_OK)
			KMS_LOG_E("region: recording that region '%s' follows failed, tried again "
				  "in %d s: %s",
				  link->peer_region, KMS_REGION_EPOCH_EVERY_S, err.msg);
	} else if (strcmp(resp->role, "primary") == 0 && resp->epoch > link->epoch) {
		KMS_LOG_W("region: region '%s' was promoted (epoch %llu): this region becomes its "
			  "secondary, and its multi-region keys are changed there from now on",
			  link->peer_region, (unsigned long long)resp->epoch);
		if (kms_keyring_cmd_fence_region(link->peer_region, resp->epoch, now, &cmd, &err) !=
			    KMS_OK ||
		    commit(s, &cmd, &err) != KMS_OK)
			KMS_LOG_E("region: fencing this region after region '%s''s promotion "
				  "failed, tried again in %d s: %s",
				  link->peer_region, KMS_REGION_EPOCH_EVERY_S, err.msg);
	}
	kms_buf_free(&cmd);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/*
 * The held answers whose rev every sync secondary has committed, or whose
 * time ran out. The cursors are asked now, of each sync secondary (one
 * that cannot be reached has confirmed nothing).
 */
static void release_held(kms_region_sync *s, Kms__V1__RegionLinkRecord **links, size_t n,
			 const char *region)
{
	uint64_t confirmed = UINT64_MAX;
	char lagging[KMS_REGION_NAME_MAX + 1] = "";
	struct held *ready = NULL, **pp, *h;
	int64_t now = mono_ms();

	pthread_mutex_lock(&s->mu);
	h = s->held;
	pthread_mutex_unlock(&s->mu);
	if (h == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		Kms__V1__RegionEpochResponse *resp = NULL;
		struct link_slot *l;
		uint64_t c = 0;

		/* A region promoted over, not following yet, is not waited for. */
		if (links[i]->role != KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY ||
		    links[i]->mode != KMS__V1__REGION_MODE__REGION_MODE_SYNC ||
		    links[i]->awaiting_follow)
			continue;
		pthread_mutex_lock(&s->mu);
		l = slot_for(s, links[i]->peer_region);
		pthread_mutex_unlock(&s->mu);
		/* The endpoint that answered last; another one next round if not. */
		if (l != NULL)
			resp = ask_epoch(s, l, links[i], region);
		if (resp != NULL && resp->epoch == links[i]->epoch &&
		    strcmp(resp->role, "secondary") == 0)
			c = resp->cursor;
		if (resp != NULL)
			protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (c < confirmed) {
			confirmed = c;
			snprintf(lagging, sizeof(lagging), "%s", links[i]->peer_region);
		}
	}
	pthread_mutex_lock(&s->mu);
	for (pp = &s->held; (h = *pp) != NULL;) {
		if (h->rev <= confirmed || now >= h->until_ms) {
			*pp = h->next;
			h->next = ready;
			ready = h;
		} else {
			pp = &h->next;
		}
	}
	pthread_mutex_unlock(&s->mu);
	while ((h = ready) != NULL) {
		char msg[256];

		ready = h->next;
		if (h->rev <= confirmed) {
			h->done(h->arg, KMS_OK, NULL, h->index);
		} else {
			snprintf(msg, sizeof(msg),
				 "the write is committed in region '%s', but its sync secondary '%s' "
				 "has not confirmed it within %d ms (the secondary holds changes up to "
				 "%llu, this one is %llu)",
				 region, lagging, KMS_REGION_SYNC_WAIT_MS,
				 (unsigned long long)confirmed, (unsigned long long)h->rev);
			h->done(h->arg, KMS_ERR_UNAVAILABLE, msg, h->index);
		}
		kms_free(h);
	}
}

static void sync_flags(kms_region_sync *s, Kms__V1__RegionLinkRecord **links, size_t n)
{
	int sp = 0, ss = 0;

	for (size_t i = 0; i < n; i++) {
		int sync = links[i]->mode == KMS__V1__REGION_MODE__REGION_MODE_SYNC;

		if (links[i]->role == KMS__V1__REGION_ROLE__REGION_ROLE_PRIMARY)
			sp |= sync;
		else
			ss |= sync;
	}
	atomic_store(&s->sync_primary, sp);
	atomic_store(&s->sync_secondary, ss);
}

/* One round over the links; how long from now until the next one (the
 * soonest any link needs). */
static long pull_round(kms_region_sync *s)
{
	Kms__V1__RegionLinkRecord **links = NULL;
	char region[KMS_REGION_NAME_MAX + 1];
	size_t n = 0;
	kms_err err = {0};
	long wait = KMS_REGION_PULL_INTERVAL_MS;

	if (kms_keyring_region_links(s->node->kr, &links, &n, NULL, &err) != KMS_OK)
		return wait;
	refresh_identities(s, links, n);
	kms_keyring_region(s->node->kr, region);
	sync_flags(s, links, n);
	/* Every node: a write it answers may have come through it. */
	release_held(s, links, n, region);
	if (!kms_raft_ready(s->node->raft) || atomic_load(&s->node->domain_key) == 0) {
		kms_keyring_region_links_free(links, n);
		return wait;
	}
	for (size_t i = 0; i < n; i++)
		if (links[i]->role == KMS__V1__REGION_ROLE__REGION_ROLE_SECONDARY) {
			long w = pull_link(s, links[i], region);

			wait = w < wait ? w : wait;
		} else {
			watch_epoch(s, links[i], region);
		}
	kms_keyring_region_links_free(links, n);
	return wait;
}

static void *sync_main(void *arg)
{
	kms_region_sync *s = arg;

	pthread_mutex_lock(&s->mu);
	while (!s->stop) {
		struct timespec until;
		long wait;

		pthread_mutex_unlock(&s->mu);
		wait = pull_round(s);
		pthread_mutex_lock(&s->mu);
		/* Sync mode: held answers and sync pulls wait on this loop. */
		if ((s->held != NULL || atomic_load(&s->sync_secondary)) &&
		    wait > KMS_REGION_SYNC_POLL_MS)
			wait = KMS_REGION_SYNC_POLL_MS;
		if (wait <= 0 || s->stop)
			continue;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += wait * 1000000L;
		while (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->cond, &s->mu, &until);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int kms_region_sync_start(kms_node *node, kms_region_sync **out, kms_err *err)
{
	kms_region_sync *s = kms_calloc(1, sizeof(*s));

	if (s == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	s->node = node;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (pthread_create(&s->thread, NULL, sync_main, s) != 0) {
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cond);
		kms_free(s);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot start the region puller thread");
	}
	s->started = 1;
	*out = s;
	return KMS_OK;
}

void kms_region_sync_stop(kms_region_sync *s)
{
	struct held *held, *h;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
	if (s->started)
		pthread_join(s->thread, NULL);
	/* Raft still runs: a commit whose wait gave up is answered before its
	 * callback could find s freed. */
	pthread_mutex_lock(&s->mu);
	while (s->answered_seq != s->commit_seq)
		pthread_cond_wait(&s->cond, &s->mu);
	held = s->held;
	s->held = NULL;
	pthread_mutex_unlock(&s->mu);
	while ((h = held) != NULL) {
		held = h->next;
		h->done(h->arg, KMS_ERR_UNAVAILABLE,
			"the write is committed, but kmsd stopped before its sync secondaries "
			"confirmed it",
			h->index);
		kms_free(h);
	}
	for (size_t i = 0; i < s->n; i++)
		kms_peers_free(s->slots[i].peers);
	if (s->priv != 0)
		kms_hsm_key_destroy(s->node->hsm, s->priv);
	if (s->pub != 0)
		kms_hsm_key_destroy(s->node->hsm, s->pub);
	kms_buf_free(&s->modulus);
	kms_buf_free(&s->exponent);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	kms_free(s);
}
