/* node.c - brings one kmsd node up in dependency order, takes it down in reverse, and routes writes to the leader. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <raft.h>
#include <uv.h>

#include "api/api.h"
#include "api/encryption_budget.h"
#include "node/coredump.h"
#include "node/dk_rotation.h"
#include "node/restore.h"
#include "node/forward.h"
#include "kms/alloc.h"
#include "kms/log.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/key_prefetch.h"
#include "node/node.h"
#include "raft/raft_tls.h"
#include "node/supervisor.h"
#include "region/region_sync.h"
#include "obs/audit_log.h"
#include "tls/tls_engine.h"
#include "tls/tls_policy.h"
#include "tls/tls_watch.h"

#define MAX_METHODS 64
#define READ_OWN_WRITE_TIMEOUT_MS 5000

static kms_method methods[MAX_METHODS];
static size_t n_methods;

static void release_handle(void *arg, unsigned long handle)
{
	kms_hsm_key_destroy(arg, handle);
}

/* Before Raft applies anything: grants are credited to this life only. */
static int new_incarnation(kms_node *node, kms_err *err)
{
	do {
		if (RAND_bytes((unsigned char *)&node->incarnation, sizeof(node->incarnation)) != 1)
			return kms_errf(err, KMS_ERR_INTERNAL,
					"no random incarnation number: OpenSSL's RAND_bytes failed");
	} while (node->incarnation == 0);
	kms_keyring_set_self(node->kr, node->cfg.node_id, node->incarnation);
	return KMS_OK;
}

/* A data directory with anything in it belongs to an existing cluster. */
static int data_dir_is_new(const char *dir)
{
	uv_fs_t req;
	uv_dirent_t ent;
	int fresh = 1;

	if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
		uv_fs_req_cleanup(&req);
		return 1;
	}
	/* The audit file is not Raft state: a node stopped before it had any
	 * (a joining node not yet admitted) still starts as new. */
	while (fresh && uv_fs_scandir_next(&req, &ent) != UV_EOF)
		if (strcmp(ent.name, "audit.log") != 0)
			fresh = 0;
	uv_fs_req_cleanup(&req);
	return fresh;
}

static int open_hsm(kms_node *node, kms_err *err)
{
	char *pin = NULL;
	int rc;

	KMS_TRY(kms_config_read_pin(&node->cfg, &pin, err));
	/* Our own open first: it tells a wrong module, a missing token and a
	 * wrong PIN apart. Then the engine gRPC signs TLS handshakes with. */
	rc = kms_hsm_open(node->cfg.hsm_module, node->cfg.hsm_token_label, pin, &node->hsm, err);
	if (rc == KMS_OK)
		rc = kms_tls_engine_init(node->cfg.hsm_module, pin, err);
	kms_free_secret(pin, strlen(pin));
	return rc;
}

/*
 * A new cluster's first node creates the domain key; a joining node gets it
 * from a member later (the supervisor); a node with state but no domain key
 * holds a token that is not this cluster's.
 */
static int find_domain_key(kms_node *node, int fresh, kms_err *err)
{
	int joining = node->cfg.join_seeds != NULL;
	char label[KMS_HSM_DK_LABEL_MAX];
	uint32_t gens[8];
	size_t n = 0;
	kms_hsm_key dk = 0;
	int rc;

	/*
	 * After rotations the token holds generation N (label.gN), and for a
	 * while N - 1 or N + 1 too: start with the newest; the rotation
	 * module picks the state's generation once the state is loaded.
	 */
	KMS_TRY(kms_hsm_dk_generations(node->hsm, node->cfg.domain_key_label, gens, 8, &n, err));
	KMS_TRY(kms_hsm_dk_label(node->cfg.domain_key_label, n > 0 ? gens[n - 1] : 1, label, err));
	rc = kms_hsm_domain_key(node->hsm, label, fresh && !joining, &dk, err);

	if (rc == KMS_ERR_NOT_FOUND && joining)
		return KMS_OK;
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(err, KMS_ERR_CONFIG,
				"token '%s' holds no domain key '%s', but %s already holds cluster "
				"state: this token does not belong to this node's cluster",
				node->cfg.hsm_token_label, node->cfg.domain_key_label,
				node->cfg.data_dir);
	KMS_TRY(rc);
	/* A joining node receives the cluster's domain key; one already in the
	 * token is another cluster's (or an earlier life's): refuse to mix them. */
	if (fresh && joining)
		return kms_errf(err, KMS_ERR_CONFIG,
				"token '%s' already holds a domain key '%s', but this node joins a "
				"cluster (%s is empty and [cluster] join is set): a joining node "
				"receives the cluster's domain key; give it a fresh token",
				node->cfg.hsm_token_label, node->cfg.domain_key_label,
				node->cfg.data_dir);
	atomic_store(&node->domain_key_gen, n > 0 ? gens[n - 1] : 1);
	atomic_store(&node->domain_key, dk);
	return KMS_OK;
}

/*
 * Our own certificate must name this node in the configured trust domain,
 * and come from the node CA: the same rule every peer applies to us.
 */
static int check_own_certificate(kms_node *node, kms_err *err)
{
	FILE *f = fopen(node->cfg.cert_file, "r");
	char pem[16384];
	size_t n;
	kms_peer self;
	kms_err sub = {0};

	if (f == NULL)
		return kms_errf(err, KMS_ERR_CONFIG, "cannot read %s: %m", node->cfg.cert_file);
	n = fread(pem, 1, sizeof(pem) - 1, f);
	fclose(f);
	pem[n] = '\0';
	if (kms_authn_identify(node->authn, pem, n, &self, &sub) != KMS_OK)
		return kms_errf(err, KMS_ERR_CONFIG, "%s: %s", node->cfg.cert_file, sub.msg);
	if (self.kind != KMS_PEER_NODE || self.node_id != node->cfg.node_id)
		return kms_errf(err, KMS_ERR_CONFIG,
				"%s names '%s', not spiffe://%s" KMS_NODE_PATH "%u: a node "
				"certificate names its node id",
				node->cfg.cert_file, self.id.id, node->cfg.trust_domain,
				node->cfg.node_id);
	return KMS_OK;
}

/*
 * Raft peer links: the certificate must name the node id the peer claims,
 * and that id must be a member. A node that knows no members yet (joining)
 * accepts node identities of its trust domain: the leader that adds it is
 * not in its empty key ring yet.
 */
void kms_node_set_join_members(kms_node *node, const kms_member *m, size_t n)
{
	pthread_mutex_lock(&node->join_mu);
	node->n_join_members = n < KMS_MEMBERS_MAX ? n : KMS_MEMBERS_MAX;
	memcpy(node->join_members, m, node->n_join_members * sizeof(*m));
	pthread_mutex_unlock(&node->join_mu);
}

static int join_member(kms_node *node, uint64_t id)
{
	int found = 0;

	pthread_mutex_lock(&node->join_mu);
	for (size_t i = 0; i < node->n_join_members && !found; i++)
		found = node->join_members[i].id == id;
	pthread_mutex_unlock(&node->join_mu);
	return found;
}

/*
 * Raft peer links: the certificate (from the node CA: the link's TLS
 * context trusts nothing else) must name the node id the peer claims, and
 * that node must be a member. The check is never off:
 *  - the key ring's member list, once it has one;
 *  - else the Raft configuration, which a restarted node has read from its
 *    log and snapshot before it listens (raft_start);
 *  - else, on a joining node, the members named in the answer that gave it
 *    the domain key; until then it accepts no link at all.
 */
static int authorize_peer(void *arg, const char *spiffe_id, unsigned long long raft_id)
{
	kms_node *node = arg;
	kms_member m;
	kms_spiffe_id id;
	uint64_t claimed = 0;

	if (kms_spiffe_parse_str(spiffe_id, 1, &id, NULL) != KMS_OK ||
	    !kms_spiffe_in_trust_domain(&id, node->cfg.trust_domain) ||
	    kms_spiffe_node_id(&id, &claimed) != KMS_OK || claimed != raft_id || raft_id == 0)
		return 0;
	if (kms_keyring_member(node->kr, raft_id, &m) == KMS_OK)
		return 1;
	if (kms_keyring_members(node->kr, NULL, 0) > 0)
		return 0;
	if (node->raft != NULL && kms_raft_configured(node->raft) > 0)
		return kms_raft_has_server(node->raft, raft_id);
	return join_member(node, raft_id);
}

static void raft_tls_opts(kms_node *node, kms_raft_tls_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->ca_file = node->cfg.node_ca_file;
	o->cert_file = node->cfg.cert_file;
	o->key = node->raft_key;
	o->authorize = authorize_peer;
	o->authorize_arg = node;
}

static int transport_init(void *arg, struct raft_uv_transport *t, struct uv_loop_s *loop,
			  kms_err *err)
{
	kms_node *node = arg;
	kms_raft_tls_opts o;

	raft_tls_opts(node, &o);
	KMS_TRY(kms_raft_tls_init(t, loop, &o, err));
	pthread_mutex_lock(&node->reload_mu);
	node->raft_transport = t;
	pthread_mutex_unlock(&node->reload_mu);
	return KMS_OK;
}

static void transport_close(void *arg, struct raft_uv_transport *t)
{
	kms_node *node = arg;

	/* Not while a reload swaps its TLS context. */
	pthread_mutex_lock(&node->reload_mu);
	node->raft_transport = NULL;
	pthread_mutex_unlock(&node->reload_mu);
	kms_raft_tls_close(t);
}

/* --- certificate reload --- */

void kms_node_reload_tls(kms_node *node, const char *trigger)
{
	kms_tls_files next, old;
	kms_raft_tls_opts o;
	kms_err err = {0};

	pthread_mutex_lock(&node->reload_mu);
	if (kms_tls_files_load(&node->cfg, node->raft_key, &next, &err) != KMS_OK) {
		KMS_LOG_W("tls: reload (%s) refused, the previous certificates stay in force: %s",
			  trigger, err.msg);
		goto out;
	}
	/* Raft first: building its context is the step most likely to fail,
	 * and nothing has changed yet if it does. */
	raft_tls_opts(node, &o);
	if (node->raft_transport != NULL &&
	    kms_raft_tls_reload(node->raft_transport, &o, &err) != KMS_OK) {
		KMS_LOG_W("tls: reload (%s) refused, the previous certificates stay in force: %s",
			  trigger, err.msg);
		kms_tls_files_free(&next);
		goto out;
	}
	if (node->rpc != NULL && kms_rpc_server_set_tls(node->rpc, &next, &err) != KMS_OK)
		KMS_LOG_E("tls: reload (%s): the gRPC server keeps its previous certificates: %s",
			  trigger, err.msg);
	if (kms_authn_reload(node->authn, node->cfg.node_ca_file, &err) != KMS_OK)
		KMS_LOG_E("tls: reload (%s): the node CA that tells nodes apart stays the "
			  "previous one: %s", trigger, err.msg);
	kms_peers_reset(node->peers);
	old = node->tls;
	node->tls = next;
	kms_tls_files_free(&old);
	KMS_LOG_I("tls: reloaded (%s): %s", trigger, node->tls.summary);
out:
	pthread_mutex_unlock(&node->reload_mu);
}

static void tls_files_changed(void *arg)
{
	kms_node_reload_tls(arg, "a file changed");
}

/*
 * Holds the cluster's verified domain key, and is the ready leader or a
 * follower of a known leader (that has applied what it knows to be
 * committed, if caught_up). KMS_ERR_UNAVAILABLE with the first reason not.
 */
static int serve_check(kms_node *node, int caught_up, kms_err *why)
{
	kms_raft_view v;

	if (atomic_load(&node->domain_key) == 0)
		return kms_errf(why, KMS_ERR_UNAVAILABLE,
				"no domain key yet (a joining node waits to be admitted and "
				"fetches it)");
	if (!atomic_load(&node->probe_verified))
		return kms_errf(why, KMS_ERR_UNAVAILABLE,
				"the domain key is not yet checked against the cluster's probe");
	kms_raft_view_get(node->raft, &v);
	if (v.state == RAFT_LEADER)
		return kms_raft_ready(node->raft)
			   ? KMS_OK
			   : kms_errf(why, KMS_ERR_UNAVAILABLE,
				      "leader of term %llu, applying its log before it serves",
				      (unsigned long long)v.term);
	if (v.state != RAFT_FOLLOWER || v.leader_id == 0)
		return kms_errf(why, KMS_ERR_UNAVAILABLE, "no Raft leader known (Raft state %s)",
				kms_raft_state_name(v.state));
	if (caught_up && v.applied_index < v.commit_index)
		return kms_errf(why, KMS_ERR_UNAVAILABLE,
				"catching up: %llu of %llu committed entries applied",
				(unsigned long long)v.applied_index,
				(unsigned long long)v.commit_index);
	return KMS_OK;
}

static int can_serve(kms_node *node, int caught_up)
{
	return serve_check(node, caught_up, NULL) == KMS_OK;
}

int kms_node_ready(kms_node *node)
{
	return can_serve(node, 1) && kms_raft_check_fresh(node->raft, NULL) == KMS_OK;
}

int kms_node_serving(kms_node *node, kms_err *why)
{
	/* First the audit log: a node that cannot write it refuses every
	 * call, however healthy its Raft. */
	if (node->audit != NULL)
		KMS_TRY(kms_audit_log_status(node->audit, why));
	KMS_TRY(serve_check(node, 1, why));
	return kms_raft_check_fresh(node->raft, why);
}

/* A write does not need the follower caught up: the forward waits. */
int kms_node_can_write(kms_node *node)
{
	return can_serve(node, 0);
}

void kms_node_local_status(kms_node *node, Kms__V1__NodeStatusResponse *r,
			   char reason[KMS_ERRMSG_SIZE])
{
	kms_raft_view v;
	kms_err err = {0}, why = {0};
	size_t keys = 0;

	kms_raft_view_get(node->raft, &v);
	r->id = node->cfg.node_id;
	r->role = (char *)kms_raft_state_name(v.state);
	r->term = v.term;
	r->commit_index = v.commit_index;
	r->applied_index = v.applied_index;
	r->leader_id = v.leader_id;
	r->has_domain_key = atomic_load(&node->domain_key) != 0;
	r->region = node->cfg.region;
	/* Counted by the HSM itself: what a destroyed key left behind shows. */
	if (kms_hsm_audit_secret_keys(node->hsm, &keys, &err) == KMS_OK)
		r->hsm_secret_keys = keys;
	else
		KMS_LOG_E("hsm: counting the secret keys failed: %s", err.msg);
	reason[0] = '\0';
	if (kms_node_serving(node, &why) != KMS_OK)
		snprintf(reason, KMS_ERRMSG_SIZE, "%s", why.msg);
	r->not_serving_reason = reason;
}

int kms_node_is_leader(kms_node *node)
{
	kms_raft_view v;

	kms_raft_view_get(node->raft, &v);
	return v.state == RAFT_LEADER;
}

/* The leader's member record, for calls to it. */
int kms_node_leader(kms_node *node, kms_member *out, kms_err *err)
{
	kms_raft_view v;

	kms_raft_view_get(node->raft, &v);
	if (v.leader_id == 0)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"no Raft leader is known: the cluster has no quorum now");
	if (kms_keyring_member(node->kr, v.leader_id, out) != KMS_OK)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"the leader (node %llu) is not in the member list yet",
				(unsigned long long)v.leader_id);
	return KMS_OK;
}

int kms_node_sync_read(kms_node *node, const char *principal, const char *key_id,
		       enum kms_op op, long deadline_ms, kms_err *err)
{
	Kms__V1__ReadIndexRequest req = KMS__V1__READ_INDEX_REQUEST__INIT;
	Kms__V1__ReadIndexResponse *resp = NULL;
	int wait_ms = deadline_ms < READ_OWN_WRITE_TIMEOUT_MS ? (int)deadline_ms
							      : READ_OWN_WRITE_TIMEOUT_MS;
	kms_raft_view v;
	kms_member leader;
	kms_rpc_status st;
	uint64_t commit;
	int rc;

	if (wait_ms <= 0)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"leader-commit consistency: the call's deadline has passed");
	kms_raft_view_get(node->raft, &v);
	if (v.state == RAFT_LEADER) {
		/* The caller's own check ran on this, the leader's, state. */
		commit = v.commit_index;
	} else {
		if (kms_node_leader(node, &leader, err) != KMS_OK)
			return kms_err_prefix(err, "leader-commit consistency");
		req.principal = (char *)principal;
		req.key_id = (char *)(key_id != NULL ? key_id : "");
		req.operation = (char *)kms_op_name(op);
		if (kms_peers_call(node->peers, leader.grpc_address, leader.id,
				   "/kms.v1.Internal/ReadIndex", &req.base,
				   &kms__v1__read_index_response__descriptor,
				   (ProtobufCMessage **)&resp, wait_ms, &st) != 0)
			return kms_errf(err, KMS_ERR_UNAVAILABLE,
					"leader-commit consistency: the leader did not answer: %.150s",
					st.details);
		rc = resp->status < KMS_STATUS_COUNT ? (int)resp->status : KMS_ERR_INTERNAL;
		if (rc != KMS_OK)
			kms_errf(err, rc, "%s", resp->message);
		commit = resp->commit_index;
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		KMS_TRY(rc);
	}
	if (kms_raft_wait_applied(node->raft, commit, wait_ms) != KMS_OK)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"leader-commit consistency: this node did not reach the leader's "
				"commit index %llu in time",
				(unsigned long long)commit);
	return KMS_OK;
}

/* --- writes: to Raft on the leader, forwarded from a follower --- */

/*
 * A write to a multi-region key, answered once the sync secondaries hold
 * it. An approval is one when it executes a destroy-key: a key destroyed
 * here must not outlive its destruction in a region that could be
 * promoted over this one.
 */
struct sync_hold {
	kms_node *node;
	kms_raft_done_fn done;
	void *arg;
	long deadline_ms;
	char key_id[KMS_KEY_ID_MAX + 1];
	char proposal_id[KMS_PROPOSAL_ID_HEX + 1]; /* an Approve's; "" otherwise */
};

static void sync_hold_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct sync_hold *h = arg;
	uint64_t rev;

	if (status == KMS_OK && h->proposal_id[0] != '\0' &&
	    !kms_keyring_executed_destroy(h->node->kr, h->proposal_id, h->key_id))
		h->key_id[0] = '\0';
	if (status == KMS_OK && h->key_id[0] != '\0' &&
	    kms_keyring_stream_rev(h->node->kr, h->key_id, &rev))
		kms_region_sync_hold(h->node->region_sync, rev, h->deadline_ms, h->done, h->arg,
				     index);
	else
		h->done(h->arg, status, msg, index);
	kms_free(h);
}

void kms_node_commit_deadline(kms_node *node, const char *principal, long deadline_ms,
			      const uint8_t *cmd, size_t len, kms_raft_done_fn done, void *arg)
{
	/* Only with a sync link: the command is parsed for its key. */
	if (kms_region_sync_acks(node->region_sync)) {
		struct sync_hold *h = kms_calloc(1, sizeof(*h));

		if (h != NULL && (kms_keyring_command_key(cmd, len, h->key_id) ||
				  kms_keyring_command_approval(cmd, len, h->proposal_id))) {
			h->node = node;
			h->done = done;
			h->arg = arg;
			h->deadline_ms = deadline_ms;
			done = sync_hold_done;
			arg = h;
		} else {
			kms_free(h);
		}
	}
	if (kms_node_is_leader(node))
		kms_raft_submit(node->raft, cmd, len, done, arg);
	else
		kms_forwarder_submit(node->fwd, principal, deadline_ms, cmd, len, done, arg);
}

void kms_node_commit(kms_node *node, const char *principal, const uint8_t *cmd, size_t len,
		     kms_raft_done_fn done, void *arg)
{
	kms_node_commit_deadline(node, principal, LONG_MAX, cmd, len, done, arg);
}

struct commit_wait {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int done;
	int status;
	uint64_t index;
	char msg[KMS_ERRMSG_SIZE];
};

static void commit_wait_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct commit_wait *w = arg;

	pthread_mutex_lock(&w->mu);
	w->status = status;
	w->index = index;
	snprintf(w->msg, sizeof(w->msg), "%s", msg != NULL ? msg : kms_strerror(status));
	w->done = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

int kms_node_commit_wait(kms_node *node, const char *principal, const uint8_t *cmd, size_t len,
			 uint64_t *index, kms_err *err)
{
	struct commit_wait w;

	memset(&w, 0, sizeof(w));
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cond, NULL);
	kms_node_commit(node, principal, cmd, len, commit_wait_done, &w);
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.mu);
	pthread_mutex_unlock(&w.mu);
	pthread_mutex_destroy(&w.mu);
	pthread_cond_destroy(&w.cond);
	if (index != NULL)
		*index = w.index;
	if (w.status != KMS_OK)
		return kms_errf(err, w.status, "%s", w.msg);
	return KMS_OK;
}

/* --- start and stop --- */

/* A node reserves encryptions as itself: the leader checks that a node
 * reserves for no node but itself. */
static void budget_commit(void *arg, const uint8_t *cmd, size_t len, kms_raft_done_fn done,
			  void *done_arg)
{
	kms_node *node = arg;
	kms_spiffe_id self;
	kms_err err = {0};

	if (kms_spiffe_node_format(node->cfg.trust_domain, node->cfg.node_id, &self, &err) !=
	    KMS_OK) {
		done(done_arg, err.code, err.msg, 0);
		return;
	}
	kms_node_commit(node, self.id, cmd, len, done, done_arg);
}

/* After new_incarnation: the budget reserves for this life of this node. */
static int start_budget(kms_node *node, kms_err *err)
{
	kms_budget_opts o;

	memset(&o, 0, sizeof(o));
	o.incarnation = node->incarnation;
	o.kr = node->kr;
	o.node_id = node->cfg.node_id;
	o.commit = budget_commit;
	o.commit_arg = node;
	/*
	 * As long as the node would go on serving without a leader: a node
	 * installing a large snapshot credits its reservation only after the
	 * install, which takes seconds on a busy machine.
	 */
	o.wait_ms = node->cfg.max_staleness_s * 1000u;
	return kms_budget_new(&o, &node->budget, err);
}

/* The audit log, before the first call can arrive. */
static int start_audit(kms_node *node, kms_err *err)
{
	kms_audit_opts o;
	char path[PATH_MAX];

	if (!node->cfg.audit_enabled) {
		KMS_LOG_W("audit: [audit] enabled = false: calls leave no audit record (for "
			  "benchmarks and tests only)");
		return KMS_OK;
	}
	if (node->cfg.audit_path != NULL)
		snprintf(path, sizeof(path), "%s", node->cfg.audit_path);
	else if (snprintf(path, sizeof(path), "%s/audit.log", node->cfg.data_dir) >=
		 (int)sizeof(path))
		return kms_errf(err, KMS_ERR_CONFIG, "the audit log path is too long");
	KMS_TRY(kms_tls_engine_load_key(node->cfg.tls_key_uri, &node->audit_key, err));
	memset(&o, 0, sizeof(o));
	o.path = path;
	o.node = node->cfg.node_id;
	o.sign_key = node->audit_key;
	o.checkpoint_records = node->cfg.audit_checkpoint_records;
	o.checkpoint_seconds = node->cfg.audit_checkpoint_seconds;
	KMS_TRY(kms_audit_log_open(&o, &node->audit, err));
	KMS_LOG_I("audit: records go to %s (a signed checkpoint every %u records or %u s)", path,
		  o.checkpoint_records, o.checkpoint_seconds);
	return KMS_OK;
}

static int start_rpc(kms_node *node, kms_err *err)
{
	kms_rpc_server_opts o;
	char *key = kms_tls_engine_key_string(node->cfg.tls_key_uri);
	int rc;

	if (key == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	if (kms_api_keymgmt_n_methods + kms_api_keyadmin_n_methods + kms_api_batch_n_methods +
		    kms_api_health_n_methods + kms_api_operator_n_methods +
		    kms_api_quorum_n_methods + kms_api_internal_n_methods +
		    kms_api_domain_key_n_methods + kms_api_region_n_methods +
		    kms_api_backup_n_methods >
	    MAX_METHODS) {
		kms_free(key);
		return kms_errf(err, KMS_ERR_INTERNAL, "more gRPC methods than MAX_METHODS (%d)",
				MAX_METHODS);
	}
	n_methods = 0;
	for (size_t i = 0; i < kms_api_keymgmt_n_methods; i++)
		methods[n_methods++] = kms_api_keymgmt_methods[i];
	for (size_t i = 0; i < kms_api_keyadmin_n_methods; i++)
		methods[n_methods++] = kms_api_keyadmin_methods[i];
	for (size_t i = 0; i < kms_api_batch_n_methods; i++)
		methods[n_methods++] = kms_api_batch_methods[i];
	for (size_t i = 0; i < kms_api_health_n_methods; i++)
		methods[n_methods++] = kms_api_health_methods[i];
	for (size_t i = 0; i < kms_api_operator_n_methods; i++)
		methods[n_methods++] = kms_api_operator_methods[i];
	for (size_t i = 0; i < kms_api_quorum_n_methods; i++)
		methods[n_methods++] = kms_api_quorum_methods[i];
	for (size_t i = 0; i < kms_api_internal_n_methods; i++)
		methods[n_methods++] = kms_api_internal_methods[i];
	for (size_t i = 0; i < kms_api_domain_key_n_methods; i++)
		methods[n_methods++] = kms_api_domain_key_methods[i];
	for (size_t i = 0; i < kms_api_region_n_methods; i++)
		methods[n_methods++] = kms_api_region_methods[i];
	for (size_t i = 0; i < kms_api_backup_n_methods; i++)
		methods[n_methods++] = kms_api_backup_methods[i];
	memset(&o, 0, sizeof(o));
	o.listen = node->cfg.grpc_listen;
	o.tls = &node->tls;
	o.private_key = key;
	o.limits.max_concurrent_streams = node->cfg.max_concurrent_streams;
	o.limits.handshake_timeout_s = node->cfg.handshake_timeout_s;
	o.limits.keepalive_time_s = node->cfg.keepalive_time_s;
	o.limits.keepalive_timeout_s = node->cfg.keepalive_timeout_s;
	o.limits.min_ping_interval_s = node->cfg.min_ping_interval_s;
	o.limits.max_connection_idle_s = node->cfg.max_connection_idle_s;
	o.limits.max_connection_age_s = node->cfg.max_connection_age_s;
	o.limits.max_connection_age_grace_s = node->cfg.max_connection_age_grace_s;
	o.limits.request_timeout_s = node->cfg.request_timeout_s;
	o.workers = node->cfg.grpc_workers;
	o.methods = methods;
	o.n_methods = n_methods;
	o.app = node;
	o.authn = node->authn;
	o.worker_init = kms_api_worker_init;
	o.worker_fini = kms_api_worker_fini;
	o.audit = node->audit;
	o.node_id = node->cfg.node_id;
	rc = kms_rpc_server_start(&o, &node->rpc, err);
	kms_free(key);
	return rc;
}

/* The operators of [quorum]: each public key file read, the set checked. */
static int load_operators(kms_node *node, kms_err *err)
{
	kms_config *cfg = &node->cfg;

	if (cfg->n_operators == 0)
		return KMS_OK;
	KMS_ENSURE(cfg->n_operators <= KMS_OPERATORS_MAX, err, KMS_ERR_CONFIG,
		   "more than %d operators in [quorum]", KMS_OPERATORS_MAX);
	for (size_t i = 0; i < cfg->n_operators; i++) {
		Kms__V1__OperatorRecord *o = &node->cfg_operators[i];

		KMS_TRY(kms_ed25519_public_from_file(cfg->operator_files[i],
						     node->cfg_operator_keys[i], err));
		kms__v1__operator_record__init(o);
		o->name = cfg->operator_names[i];
		o->public_key.data = node->cfg_operator_keys[i];
		o->public_key.len = KMS_ED25519_PUB_LEN;
		node->cfg_operator_ptrs[i] = o;
	}
	if (kms_operator_set_check(node->cfg_operator_ptrs, cfg->n_operators,
				   cfg->quorum_threshold, err) != KMS_OK)
		return kms_err_prefix(err, "[quorum] operators");
	node->n_cfg_operators = cfg->n_operators;
	return KMS_OK;
}

int kms_node_start(const char *config_path, kms_node **out, kms_err *err)
{
	return kms_node_start_restore(config_path, NULL, out, err);
}

int kms_node_start_restore(const char *config_path, const kms_restore_opts *restore,
			   kms_node **out, kms_err *err)
{
	kms_node *node = kms_calloc(1, sizeof(*node));
	kms_raft_opts ropts;
	kms_tls_stamp stamp;
	int rc, fresh;

	if (node == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&node->join_mu, NULL);
	pthread_mutex_init(&node->reload_mu, NULL);
	KMS_TRY_GOTO(rc, kms_config_load(config_path, &node->cfg, err), fail_free);
	{
		int level = kms_log_level_parse(node->cfg.log_level);

		if (level >= 0)
			kms_log_set_level((enum kms_log_level)level);
	}
	KMS_TRY_GOTO(rc, load_operators(node, err), fail);
	/* First thing after the configuration: before the PIN is read. */
	KMS_TRY_GOTO(rc, kms_coredump_policy(node->cfg.allow_core_dumps, err), fail);
	/* Before anything builds a TLS context. */
	KMS_TRY_GOTO(rc, kms_tls_policy_apply(node->cfg.min_tls_version, err), fail);
	fresh = data_dir_is_new(node->cfg.data_dir);
	if (mkdir(node->cfg.data_dir, 0700) != 0 && errno != EEXIST) {
		rc = kms_errf(err, KMS_ERR_IO, "cannot create data_dir %s: %m", node->cfg.data_dir);
		goto fail;
	}
	KMS_TRY_GOTO(rc, kms_authn_new(node->cfg.trust_domain, node->cfg.node_ca_file,
				       &node->authn, err), fail);
	KMS_TRY_GOTO(rc, check_own_certificate(node, err), fail);
	KMS_TRY_GOTO(rc, open_hsm(node, err), fail);
	if (restore != NULL)
		KMS_TRY_GOTO(rc, kms_restore_prepare(node, restore, fresh, err), fail);
	KMS_TRY_GOTO(rc, find_domain_key(node, fresh, err), fail);
	KMS_TRY_GOTO(rc, kms_dk_rotation_new(node, &node->dkrot, err), fail);
	KMS_TRY_GOTO(rc, kms_keyring_new(&node->kr, err), fail);
	kms_keyring_set_release(node->kr, release_handle, node->hsm);
	kms_keyring_set_handle_limit(node->kr, node->cfg.max_unwrapped_versions);
	KMS_LOG_I("hsm: at most %u master-key versions stay unwrapped (max_unwrapped_versions)",
		  node->cfg.max_unwrapped_versions);
	KMS_TRY_GOTO(rc, new_incarnation(node, err), fail);
	KMS_TRY_GOTO(rc, start_budget(node, err), fail);
	KMS_TRY_GOTO(rc, kms_key_prefetch_new(node, &node->prefetch, err), fail);
	kms_keyring_set_rotated(node->kr, kms_key_prefetch_rotated, node->prefetch);
	KMS_TRY_GOTO(rc, kms_peers_new(&node->cfg, &node->peers, err), fail);
	KMS_TRY_GOTO(rc, kms_tls_engine_load_key(node->cfg.tls_key_uri, &node->raft_key, err), fail);
	kms_tls_files_stamp(&node->cfg, &stamp);
	KMS_TRY_GOTO(rc, kms_tls_files_load(&node->cfg, node->raft_key, &node->tls, err), fail);
	memset(&ropts, 0, sizeof(ropts));
	ropts.bootstrap = fresh && node->cfg.join_seeds == NULL;
	/* The first administrators of a new cluster come from this file; later
	 * the list lives in the replicated state. */
	if (ropts.bootstrap && node->cfg.n_admins == 0) {
		rc = kms_errf(err, KMS_ERR_CONFIG,
			      "%s: a node that starts a new cluster needs 'admins' in [authz]",
			      config_path);
		goto fail;
	}
	if (fresh)
		KMS_LOG_I("raft: %s is empty: %s", node->cfg.data_dir,
			  ropts.bootstrap ? "this node starts a new cluster"
					  : "waiting for a leader to add this node");
	ropts.transport_init = transport_init;
	ropts.transport_close = transport_close;
	ropts.transport_arg = node;
	KMS_TRY_GOTO(rc, kms_forwarder_new(node, &node->fwd, err), fail);
	ropts.applied = kms_forwarder_applied;
	ropts.applied_arg = node->fwd;
	KMS_TRY_GOTO(rc, kms_raft_start(&node->cfg, node->kr, &ropts, &node->raft, err), fail);
	KMS_TRY_GOTO(rc, start_audit(node, err), fail);
	KMS_TRY_GOTO(rc, start_rpc(node, err), fail);
	KMS_TRY_GOTO(rc, kms_tls_policy_probe(node->cfg.grpc_listen, node->cfg.min_tls_version, err),
		     fail);
	KMS_TRY_GOTO(rc, kms_supervisor_start(node, &node->sup, err), fail);
	KMS_TRY_GOTO(rc, kms_region_sync_start(node, &node->region_sync, err), fail);
	KMS_TRY_GOTO(rc, kms_tls_watch_start(&node->cfg, node->cfg.tls_reload_interval_s, &stamp,
					     tls_files_changed, node, &node->tls_watch, err),
		     fail);
	KMS_LOG_I("tls: %s; the files are looked at every %u s and on SIGHUP", node->tls.summary,
		  node->cfg.tls_reload_interval_s);
	KMS_LOG_I("node %u serving kms.v1 on %s (Raft on %s)", node->cfg.node_id,
		  node->cfg.grpc_listen, node->cfg.raft_listen);
	*out = node;
	return KMS_OK;
fail:
	kms_restore_undo(node);
	kms_node_stop(node);
	return rc;
fail_free:
	pthread_mutex_destroy(&node->join_mu);
	pthread_mutex_destroy(&node->reload_mu);
	kms_free(node);
	return rc;
}

void kms_node_stop(kms_node *node)
{
	if (node == NULL)
		return;
	kms_tls_watch_stop(node->tls_watch);
	kms_supervisor_stop(node->sup);
	/* Before Raft: its last commit is answered while Raft still runs. */
	kms_region_sync_stop(node->region_sync);
	node->region_sync = NULL;
	/* Raft first: writes waiting on it are answered UNAVAILABLE, so the gRPC
	 * server has no call left hanging when it drains. */
	kms_raft_stop(node->raft);
	/* Then forwarded writes: those waiting for the leader are cancelled and
	 * those waiting to be applied here are answered, likewise. */
	kms_forwarder_stop(node->fwd);
	kms_rpc_server_stop(node->rpc);
	/* After the server: every call has had its record and its answer. */
	kms_audit_log_close(node->audit);
	EVP_PKEY_free(node->audit_key);
	kms_forwarder_free(node->fwd);
	kms_raft_free(node->raft);
	kms_supervisor_free(node->sup);
	/* After Raft: no apply queues a key any more. */
	kms_key_prefetch_free(node->prefetch);
	EVP_PKEY_free(node->raft_key);
	kms_tls_files_free(&node->tls);
	kms_peers_free(node->peers);
	/* After Raft and the workers: every reservation has had its answer. */
	kms_budget_free(node->budget);
	kms_keyring_free(node->kr);
	kms_dk_rotation_free(node->dkrot);
	kms_buf_free(&node->restore_ring);
	kms_hsm_close(node->hsm);
	kms_authn_free(node->authn);
	kms_config_free(&node->cfg);
	pthread_mutex_destroy(&node->join_mu);
	pthread_mutex_destroy(&node->reload_mu);
	kms_free(node);
}
