/* dk_rotation.c - domain-key rotation on one node: the root operation that
 * begins it, and the steps every node's supervisor takes until the old key is
 * gone everywhere. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <raft.h>

#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/keyring_dk.h"
#include "kms/log.h"
#include "kms/spiffe.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/dk_rotation.h"
#include "node/node.h"

#define HELD_MAX 8
/* How long the old key stays after this node saw the switch: calls that
 * read the old material just before it may still unwrap under it. */
#define OLD_KEY_GRACE_S 3
#define FETCH_TIMEOUT_MS 10000

struct held_key {
	uint32_t gen;
	kms_hsm_key h;
};

struct kms_dk_rotation {
	struct kms_node *node;
	/* Guards held[] and the node's domain_key / _gen / _alt together, so
	 * that a reader never pairs a key with another key's generation. */
	pthread_mutex_t mu;
	struct held_key held[HELD_MAX];
	size_t n_held;
	/* A Begin of this node's is on its way: its new key is not stray. */
	atomic_int busy;
	atomic_int write_in_flight;
	/* The member side: a transport key pair for the rotation it receives.
	 */
	uint32_t transport_gen;
	kms_hsm_key transport_priv, transport_pub;
	kms_buf modulus, exponent;
	uint8_t fingerprint[KMS_SHA256_LEN];
	/* When this node first saw switched_gen current (monotonic s): after a
	 * switch, or at start, with older keys still in the token. */
	uint32_t switched_gen;
	time_t switched_seen;
	unsigned fetch_attempts;
	char self[KMS_SPIFFE_ID_MAX + 1];
};

static time_t mono_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec;
}

/* --- the keys in the token ----------------------------------------------- */

static kms_hsm_key held_find(struct kms_dk_rotation *r, uint32_t gen)
{
	for (size_t i = 0; i < r->n_held; i++)
		if (r->held[i].gen == gen)
			return r->held[i].h;
	return 0;
}

static void held_add(struct kms_dk_rotation *r, uint32_t gen, kms_hsm_key h)
{
	pthread_mutex_lock(&r->mu);
	if (held_find(r, gen) == 0 && r->n_held < HELD_MAX)
		r->held[r->n_held++] = (struct held_key){gen, h};
	pthread_mutex_unlock(&r->mu);
}

static void held_remove(struct kms_dk_rotation *r, uint32_t gen)
{
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n_held; i++)
		if (r->held[i].gen == gen)
			r->held[i] = r->held[--r->n_held];
	pthread_mutex_unlock(&r->mu);
}

void kms_dk_add_held(struct kms_node *node, uint32_t gen, kms_hsm_key dk)
{
	if (node->dkrot != NULL)
		held_add(node->dkrot, gen, dk);
}

kms_hsm_key kms_dk_held(struct kms_node *node, uint32_t gen)
{
	struct kms_dk_rotation *r = node->dkrot;
	kms_hsm_key h;

	if (r == NULL)
		return gen == atomic_load(&node->domain_key_gen)
			   ? atomic_load(&node->domain_key)
			   : 0;
	pthread_mutex_lock(&r->mu);
	h = held_find(r, gen);
	pthread_mutex_unlock(&r->mu);
	return h;
}

void kms_dk_current(struct kms_node *node, kms_hsm_key *dk, uint32_t *gen)
{
	struct kms_dk_rotation *r = node->dkrot;

	if (r != NULL)
		pthread_mutex_lock(&r->mu);
	*dk = atomic_load(&node->domain_key);
	*gen = atomic_load(&node->domain_key_gen);
	if (r != NULL)
		pthread_mutex_unlock(&r->mu);
}

int kms_dk_token_generations(struct kms_node *node, uint32_t *gens, size_t max,
			     size_t *n, kms_err *err)
{
	return kms_hsm_dk_generations(node->hsm, node->cfg.domain_key_label,
				      gens, max, n, err);
}

static int load_held(struct kms_dk_rotation *r, kms_err *err)
{
	struct kms_node *node = r->node;
	uint32_t gens[HELD_MAX];
	char label[KMS_HSM_DK_LABEL_MAX];
	size_t n = 0;

	KMS_TRY(kms_dk_token_generations(node, gens, HELD_MAX, &n, err));
	for (size_t i = 0; i < n; i++) {
		kms_hsm_key h = 0;

		KMS_TRY(kms_hsm_dk_label(node->cfg.domain_key_label, gens[i],
					 label, err));
		KMS_TRY(kms_hsm_domain_key(node->hsm, label, 0, &h, err));
		held_add(r, gens[i], h);
	}
	return KMS_OK;
}

int kms_dk_rotation_new(struct kms_node *node, struct kms_dk_rotation **out,
			kms_err *err)
{
	struct kms_dk_rotation *r = kms_calloc(1, sizeof(*r));
	kms_spiffe_id self;

	if (r == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	r->node = node;
	pthread_mutex_init(&r->mu, NULL);
	if (kms_spiffe_node_format(node->cfg.trust_domain, node->cfg.node_id,
				   &self, err) != KMS_OK ||
	    load_held(r, err) != KMS_OK) {
		kms_dk_rotation_free(r);
		return err->code;
	}
	snprintf(r->self, sizeof(r->self), "%s", self.id);
	*out = r;
	return KMS_OK;
}

static void drop_transport(struct kms_dk_rotation *r)
{
	if (r->transport_priv != 0)
		kms_hsm_key_destroy(r->node->hsm, r->transport_priv);
	if (r->transport_pub != 0)
		kms_hsm_key_destroy(r->node->hsm, r->transport_pub);
	r->transport_priv = r->transport_pub = 0;
	r->transport_gen = 0;
	kms_buf_free(&r->modulus);
	kms_buf_free(&r->exponent);
}

void kms_dk_rotation_free(struct kms_dk_rotation *r)
{
	if (r == NULL)
		return;
	drop_transport(r);
	pthread_mutex_destroy(&r->mu);
	kms_free(r);
}

/*
 * The node's current key is the state's generation once the token holds
 * it; the alternate is the other live one: the new key before the switch,
 * any older one after it (until destroyed).
 */
static void sync_node_keys(struct kms_dk_rotation *r, const kms_dk_state *st)
{
	struct kms_node *node = r->node;
	kms_hsm_key cur, alt = 0;

	pthread_mutex_lock(&r->mu);
	cur = held_find(r, st->generation);
	if (st->rotating && !st->switched)
		alt = held_find(r, st->rot_generation);
	for (size_t i = 0; i < r->n_held && alt == 0; i++)
		if (r->held[i].gen < st->generation)
			alt = r->held[i].h;
	if (cur != 0) {
		atomic_store(&node->domain_key, cur);
		atomic_store(&node->domain_key_gen, st->generation);
	}
	atomic_store(&node->domain_key_alt, cur != 0 ? alt : 0);
	pthread_mutex_unlock(&r->mu);
}

int kms_dk_probe_checkable(struct kms_dk_rotation *r, int *fatal)
{
	kms_dk_state st;
	int ok = 0;

	*fatal = 0;
	kms_keyring_dk_state(r->node->kr, &st);
	sync_node_keys(r, &st);
	pthread_mutex_lock(&r->mu);
	if (held_find(r, st.generation) != 0) {
		ok = 1;
	} else {
		/* A newer key than the state knows: the state is still catching
		 * up. */
		*fatal = 1;
		for (size_t i = 0; i < r->n_held; i++)
			if (r->held[i].gen > st.generation)
				*fatal = 0;
	}
	pthread_mutex_unlock(&r->mu);
	return ok;
}

/* --- writes
 * ------------------------------------------------------------------- */

static void write_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct kms_dk_rotation *r = arg;

	(void)index;
	if (status != KMS_OK && status != KMS_ERR_EXISTS)
		KMS_LOG_W("domain-key rotation: a write failed: %s",
			  msg != NULL ? msg : kms_strerror(status));
	atomic_store(&r->write_in_flight, 0);
}

/* One write of this node's at a time, as this node's own identity. */
static void submit(struct kms_dk_rotation *r, kms_buf *cmd)
{
	if (cmd->data == NULL)
		return;
	atomic_store(&r->write_in_flight, 1);
	kms_node_commit(r->node, r->self, cmd->data, cmd->len, write_done, r);
	kms_buf_free(cmd);
}

/* --- the root operation ------------------------------------------------------
 */

static int make_probe(struct kms_node *node, kms_hsm_key dk, kms_buf *probe,
		      kms_err *err)
{
	kms_hsm_session *s = NULL;
	int rc;

	KMS_TRY(kms_hsm_session_open(node->hsm, &s, err));
	rc = kms_hsm_master_key_create(s, dk, probe, err);
	kms_hsm_session_close(s);
	return rc;
}

int kms_dk_rotation_begin(struct kms_node *node, const char *proposal_id, uint32_t *generation,
			  kms_err *err)
{
	struct kms_dk_rotation *r = node->dkrot;
	char label[KMS_HSM_DK_LABEL_MAX];
	kms_buf probe = {0}, cmd = {0};
	kms_hsm_key dk = 0;
	kms_dk_state st;
	uint32_t gen;
	int rc, expected = 0;

	if (r == NULL || !kms_node_is_leader(node))
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"a domain-key rotation starts on the leader; "
				"retry the call");
	if (!atomic_compare_exchange_strong(&r->busy, &expected, 1))
		return kms_errf(
		    err, KMS_ERR_PRECONDITION,
		    "another call is starting a domain-key rotation");
	kms_keyring_dk_state(node->kr, &st);
	if (st.rotating &&
	    !(st.switched &&
	      st.n_destroyed >= kms_keyring_members(node->kr, NULL, 0))) {
		rc = kms_errf(err, KMS_ERR_PRECONDITION,
			      "a domain-key rotation to generation %u is "
			      "already in progress "
			      "(%s)",
			      st.rot_generation,
			      st.switched ? "destroying the old key"
					  : "handing the new key out");
		goto out;
	}
	gen = st.highest + 1;
	KMS_TRY_GOTO(
	    rc, kms_hsm_dk_label(node->cfg.domain_key_label, gen, label, err),
	    out);
	/* A stray key of this generation (a Begin that never committed) goes
	 * first. */
	if (kms_hsm_domain_key(node->hsm, label, 0, &dk, err) == KMS_OK) {
		held_remove(r, gen);
		KMS_TRY_GOTO(rc, kms_hsm_domain_key_destroy(node->hsm, dk, err),
			     out);
		dk = 0;
	}
	kms_err_clear(err);
	KMS_TRY_GOTO(rc, kms_hsm_domain_key(node->hsm, label, 1, &dk, err),
		     out);
	KMS_TRY_GOTO(rc, make_probe(node, dk, &probe, err), fail);
	KMS_TRY_GOTO(rc,
		     kms_keyring_cmd_dk_begin_for(gen, probe.data, probe.len, node->cfg.node_id,
						  (int64_t)time(NULL), proposal_id, &cmd, err),
		     fail);
	held_add(r, gen, dk);
	rc = kms_node_commit_wait(node, r->self, cmd.data, cmd.len, NULL, err);
	if (rc != KMS_OK) {
		held_remove(r, gen);
		goto fail;
	}
	KMS_LOG_I("domain-key rotation: generation %u generated in token '%s' "
		  "and begun",
		  gen, node->cfg.hsm_token_label);
	*generation = gen;
	goto out;
fail : {
	kms_err derr = {0};

	if (kms_hsm_domain_key_destroy(node->hsm, dk, &derr) != KMS_OK)
		KMS_LOG_W("domain-key rotation: %s", derr.msg);
}
out:
	kms_buf_free(&probe);
	kms_buf_free(&cmd);
	atomic_store(&r->busy, 0);
	return rc;
}

int kms_dk_rotation_abort(struct kms_node *node,
				       uint32_t *generation, kms_err *err)
{
	kms_dk_state st;
	kms_buf cmd = {0};
	int rc;

	if (!kms_node_is_leader(node))
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"a domain-key rotation is aborted on the "
				"leader; retry the call");
	kms_keyring_dk_state(node->kr, &st);
	if (!st.rotating)
		return kms_errf(err, KMS_ERR_PRECONDITION,
				"no domain-key rotation is in progress");
	KMS_TRY(kms_keyring_cmd_dk_abort(st.rot_generation, &cmd, err));
	rc = kms_node_commit_wait(node, node->dkrot->self, cmd.data, cmd.len,
				  NULL, err);
	kms_buf_free(&cmd);
	if (rc == KMS_OK) {
		*generation = st.rot_generation;
		KMS_LOG_I("domain-key rotation to generation %u aborted",
			  st.rot_generation);
	}
	return rc;
}

/* --- a member receives the new key ---------------------------------------- */

static int make_transport(struct kms_dk_rotation *r, uint32_t gen, kms_err *err)
{
	drop_transport(r);
	KMS_TRY(kms_hsm_transport_keypair(r->node->hsm, &r->transport_priv,
					  &r->transport_pub, &r->modulus,
					  &r->exponent, err));
	KMS_TRY(kms_rsa_public_sha256(r->modulus.data, r->modulus.len,
				      r->exponent.data, r->exponent.len,
				      r->fingerprint, err));
	r->transport_gen = gen;
	return KMS_OK;
}

/* Asks each holder in turn; KMS_OK once the key is installed. */
static int fetch_from_holders(struct kms_dk_rotation *r, const kms_dk_state *st,
			      kms_hsm_key *dk, kms_err *err)
{
	struct kms_node *node = r->node;
	Kms__V1__FetchRotationDomainKeyRequest req =
	    KMS__V1__FETCH_ROTATION_DOMAIN_KEY_REQUEST__INIT;
	char label[KMS_HSM_DK_LABEL_MAX];
	kms_rpc_status rst = {0};

	KMS_TRY(kms_hsm_dk_label(node->cfg.domain_key_label, st->rot_generation,
				 label, err));
	req.node_id = node->cfg.node_id;
	req.generation = st->rot_generation;
	req.rsa_modulus.data = r->modulus.data;
	req.rsa_modulus.len = r->modulus.len;
	req.rsa_public_exponent.data = r->exponent.data;
	req.rsa_public_exponent.len = r->exponent.len;
	for (size_t i = 0; i < st->n_installed; i++) {
		Kms__V1__FetchRotationDomainKeyResponse *resp = NULL;
		kms_member m;
		int rc;

		if (st->installed[i] == node->cfg.node_id ||
		    kms_keyring_member(node->kr, st->installed[i], &m) !=
			KMS_OK)
			continue;
		if (kms_peers_call(
			node->peers, m.grpc_address, m.id,
			"/kms.v1.Internal/FetchRotationDomainKey", &req.base,
			&kms__v1__fetch_rotation_domain_key_response__descriptor,
			(ProtobufCMessage **)&resp, FETCH_TIMEOUT_MS,
			&rst) != 0)
			continue;
		rc = kms_hsm_domain_key_install(
		    node->hsm, r->transport_priv, label,
		    resp->wrapped_domain_key.data, resp->wrapped_domain_key.len,
		    dk, err);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (rc == KMS_OK)
			KMS_LOG_I("domain-key rotation: generation %u received "
				  "from node %llu and "
				  "installed in token '%s'",
				  st->rot_generation, (unsigned long long)m.id,
				  node->cfg.hsm_token_label);
		return rc;
	}
	return kms_errf(err, KMS_ERR_UNAVAILABLE,
			"no holder of domain key generation %u answered: %s",
			st->rot_generation, rst.details);
}

static void receive_new_key(struct kms_dk_rotation *r, const kms_dk_state *st)
{
	struct kms_node *node = r->node;
	const kms_dk_grant *g = kms_dk_grant_of(st, node->cfg.node_id);
	kms_buf cmd = {0};
	kms_hsm_key dk = 0;
	kms_err err = {0};

	if (r->transport_gen != st->rot_generation &&
	    make_transport(r, st->rot_generation, &err) != KMS_OK) {
		KMS_LOG_E("domain-key rotation: no transport key: %s", err.msg);
		return;
	}
	/* A grant for this very transport key, unused; else (again) ask for
	 * one. */
	if (g == NULL || g->used ||
	    memcmp(g->transport_key_sha256, r->fingerprint,
		   KMS_FINGERPRINT_LEN) != 0) {
		if (kms_keyring_cmd_dk_grant(node->cfg.node_id,
					     st->rot_generation, r->fingerprint,
					     &cmd, &err) != KMS_OK) {
			KMS_LOG_E("domain-key rotation: %s", err.msg);
			return;
		}
		submit(r, &cmd);
		return;
	}
	if (fetch_from_holders(r, st, &dk, &err) != KMS_OK) {
		if (r->fetch_attempts++ % 25 == 0)
			KMS_LOG_W("domain-key rotation: cannot receive "
				  "generation %u yet: %s",
				  st->rot_generation, err.msg);
		return;
	}
	drop_transport(r);
	held_add(r, st->rot_generation, dk);
}

/* --- the leader switches ----------------------------------------------------
 */

static int all_installed(struct kms_node *node, const kms_dk_state *st)
{
	kms_member m[KMS_MEMBERS_MAX];
	size_t n = kms_keyring_members(node->kr, m, KMS_MEMBERS_MAX);

	for (size_t i = 0; i < n && i < KMS_MEMBERS_MAX; i++)
		if (!kms_dk_has(st->installed, st->n_installed, m[i].id))
			return 0;
	return 1;
}

/* Every version rewrapped under the new key in this HSM, then one commit. */
static int switch_over(struct kms_dk_rotation *r, const kms_dk_state *st,
		       kms_err *err)
{
	struct kms_node *node = r->node;
	kms_hsm_key from = kms_dk_held(node, st->generation);
	kms_hsm_key to = kms_dk_held(node, st->rot_generation);
	kms_wrapped_version *v = NULL;
	kms_hsm_rewrapper *rw = NULL;
	kms_buf cmd = {0};
	size_t n = 0;
	int rc;

	if (from == 0 || to == 0)
		return kms_errf(
		    err, KMS_ERR_UNAVAILABLE,
		    "this leader does not hold generations %u and %u",
		    st->generation, st->rot_generation);
	KMS_TRY(kms_keyring_wrapped_versions(node->kr, &v, &n, err));
	KMS_TRY_GOTO(rc, kms_hsm_rewrap_open(node->hsm, from, &rw, err), out);
	for (size_t i = 0; i < n; i++) {
		kms_buf nw = {0};

		KMS_TRY_GOTO(
		    rc,
		    kms_hsm_rewrap(rw, to, v[i].wrapped, v[i].len, &nw, err),
		    out);
		memcpy(v[i].wrapped, nw.data, nw.len);
		v[i].len = nw.len;
		kms_buf_free(&nw);
	}
	KMS_TRY_GOTO(rc,
		     kms_keyring_cmd_dk_switch(st->rot_generation, v, n,
					       (int64_t)time(NULL), &cmd, err),
		     out);
	rc = kms_node_commit_wait(node, r->self, cmd.data, cmd.len, NULL, err);
	if (rc == KMS_OK)
		KMS_LOG_I("domain-key rotation: %zu versions rewrapped; the "
			  "cluster switched to "
			  "generation %u",
			  n, st->rot_generation);
out:
	kms_hsm_rewrap_close(rw);
	kms_buf_free(&cmd);
	kms_free(v);
	return rc;
}

/* --- old and stray keys ------------------------------------------------------
 */

/*
 * Which held keys go: older than the current generation once the switch
 * has been seen for the grace period; of an aborted generation; of one
 * the state never recorded (a Begin that did not commit), once this node
 * is caught up and begins none itself.
 */
static int doomed(struct kms_dk_rotation *r, const kms_dk_state *st,
		  uint32_t gen, int ready)
{
	if (gen == st->generation)
		return 0;
	if (gen < st->generation)
		return r->switched_gen == st->generation &&
		       mono_now() - r->switched_seen >= OLD_KEY_GRACE_S;
	if (st->rotating && !st->switched && gen == st->rot_generation)
		return 0;
	if (gen <= st->highest)
		return 1;
	return ready && !atomic_load(&r->busy);
}

static void destroy_doomed(struct kms_dk_rotation *r, const kms_dk_state *st,
			   int ready)
{
	struct kms_node *node = r->node;

	for (;;) {
		kms_hsm_key h = 0;
		uint32_t gen = 0;
		kms_err err = {0};

		pthread_mutex_lock(&r->mu);
		for (size_t i = 0; i < r->n_held; i++)
			if (doomed(r, st, r->held[i].gen, ready)) {
				h = r->held[i].h;
				gen = r->held[i].gen;
				r->held[i] = r->held[--r->n_held];
				break;
			}
		/* No unwrap reaches for it any more. */
		if (h != 0 && atomic_load(&node->domain_key_alt) == h)
			atomic_store(&node->domain_key_alt, 0);
		pthread_mutex_unlock(&r->mu);
		if (h == 0)
			return;
		if (kms_hsm_domain_key_destroy(node->hsm, h, &err) != KMS_OK)
			KMS_LOG_E("domain-key rotation: %s", err.msg);
		else
			KMS_LOG_I("domain-key rotation: domain key generation "
				  "%u destroyed in token "
				  "'%s'",
				  gen, node->cfg.hsm_token_label);
	}
}

static int holds_older(struct kms_dk_rotation *r, uint32_t gen)
{
	int older = 0;

	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n_held; i++)
		if (r->held[i].gen < gen)
			older = 1;
	pthread_mutex_unlock(&r->mu);
	return older;
}

void kms_dk_rotation_tick(struct kms_dk_rotation *r)
{
	struct kms_node *node = r->node;
	uint64_t self = node->cfg.node_id;
	kms_dk_state st;
	kms_raft_view v;
	kms_buf cmd = {0};
	kms_err err = {0};
	int ready, member;
	kms_member me;

	if (atomic_load(&node->domain_key) == 0 ||
	    !atomic_load(&node->probe_verified))
		return;
	kms_keyring_dk_state(node->kr, &st);
	sync_node_keys(r, &st);
	if (r->switched_gen != st.generation) {
		r->switched_gen = st.generation;
		r->switched_seen = mono_now();
	}
	ready = kms_node_ready(node);
	member = kms_keyring_member(node->kr, self, &me) == KMS_OK;
	destroy_doomed(r, &st, ready);
	if (!ready || !member || !st.rotating ||
	    atomic_load(&r->write_in_flight))
		return;
	if (!st.switched) {
		if (kms_dk_held(node, st.rot_generation) == 0) {
			receive_new_key(r, &st);
			return;
		}
		if (!kms_dk_has(st.installed, st.n_installed, self)) {
			if (kms_keyring_cmd_dk_confirm(self, st.rot_generation,
						       KMS_DK_INSTALLED, &cmd,
						       &err) == KMS_OK)
				submit(r, &cmd);
			return;
		}
		kms_raft_view_get(node->raft, &v);
		if (v.state == RAFT_LEADER && all_installed(node, &st) &&
		    switch_over(r, &st, &err) != KMS_OK)
			KMS_LOG_W("domain-key rotation: switch to generation "
				  "%u not made yet: %s",
				  st.rot_generation, err.msg);
		return;
	}
	if (!kms_dk_has(st.destroyed, st.n_destroyed, self) &&
	    !holds_older(r, st.generation) &&
	    kms_keyring_cmd_dk_confirm(self, st.rot_generation,
				       KMS_DK_OLD_DESTROYED, &cmd,
				       &err) == KMS_OK)
		submit(r, &cmd);
}
