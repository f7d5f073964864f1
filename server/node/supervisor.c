/* supervisor.c - the chores that keep a node's place in its cluster, on one background thread. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <raft.h>

#include "kms/alloc.h"
#include "kms/fingerprint.h"
#include "kms/keyring_dk.h"
#include "kms/log.h"
#include "kms/v1/cluster.pb-c.h"
#include "node/dk_rotation.h"
#include "node/key_prefetch.h"
#include "node/key_upkeep.h"
#include "node/node.h"
#include "node/supervisor.h"
#include "node/quorum_exec.h"
#include "node/restore.h"

#define TICK_MS 200
#define FETCH_EVERY_TICKS 5
/* The member commits the grant's use through Raft before it answers. */
#define FETCH_TIMEOUT_MS 10000

struct kms_supervisor {
	kms_node *node;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int stop;
	int kicked; /* (mu) work was queued for the thread: no sleep before it */
	atomic_int write_in_flight;
	unsigned ticks;
	kms_key_upkeep *upkeep; /* the leader's rotations and destructions */
	kms_quorum_exec *qexec; /* the leader's run of approved root operations */
	struct timespec upkeep_at; /* the last upkeep pass (monotonic) */
	/* joining: the transport key pair made in our HSM, and its fingerprint */
	kms_hsm_key transport_priv, transport_pub;
	kms_buf modulus, exponent;
	char fingerprint[KMS_SHA256_HEX_LEN + 1];
	unsigned fetch_attempts;
};

static void write_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct kms_supervisor *s = arg;

	if (status != KMS_OK && status != KMS_ERR_EXISTS)
		KMS_LOG_W("supervisor: cluster bookkeeping write failed: %s",
			  msg != NULL ? msg : kms_strerror(status));
	atomic_store(&s->write_in_flight, 0);
}

/*
 * The leader makes sure the cluster records, in this order, this node (the
 * first node, or its new addresses after a restart), the first administrators (from its configuration, when the replicated list is
 * still empty), the first operators and their threshold with a new random
 * cluster id (likewise, when the cluster has none) and the domain-key
 * probe. The probe comes last: a node serves only once it verified the
 * probe, and so only once the administrators list it decides with is in.
 */
static void leader_bookkeeping(struct kms_supervisor *s)
{
	kms_node *node = s->node;
	kms_member self;
	uint8_t probe[KMS_WRAPPED_MAX];
	kms_buf cmd = {0};
	kms_err err = {0};
	kms_hsm_session *hs = NULL;
	kms_buf wrapped = {0};
	int listed;

	if (!kms_raft_ready(node->raft) || atomic_load(&s->write_in_flight))
		return;
	listed = kms_keyring_member(node->kr, node->cfg.node_id, &self) == KMS_OK;
	/* A list of others without this node is its removal, approved while
	 * it leads: it hands leadership over (raft_node.c) and must not write
	 * itself back in meanwhile. Only the first node records itself. */
	if (!listed && kms_keyring_members(node->kr, NULL, 0) > 0)
		return;
	if (!listed || strcmp(self.grpc_address, node->cfg.grpc_listen) != 0 ||
	    strcmp(self.raft_address, node->cfg.raft_listen) != 0) {
		if (kms_keyring_cmd_add_member(node->cfg.node_id, node->cfg.raft_listen,
					       node->cfg.grpc_listen, NULL, &cmd, &err) != KMS_OK) {
			KMS_LOG_E("supervisor: %s", err.msg);
			return;
		}
	} else if (kms_keyring_admin_count(node->kr) == 0 && node->cfg.n_admins > 0) {
		if (kms_keyring_cmd_set_administrators(node->cfg.admins, node->cfg.n_admins, &cmd,
						       &err) != KMS_OK) {
			KMS_LOG_E("supervisor: the administrators in the configuration: %s",
				  err.msg);
			return;
		}
		KMS_LOG_I("supervisor: recording the %zu administrator(s) of the configuration in "
			  "the cluster's state",
			  node->cfg.n_admins);
	} else if (!kms_keyring_has_quorum(node->kr) && node->n_cfg_operators > 0) {
		uint8_t cid[KMS_CLUSTER_ID_LEN];

		if (RAND_bytes(cid, sizeof(cid)) != 1) {
			KMS_LOG_E("supervisor: no random bytes for the cluster id");
			return;
		}
		if (kms_keyring_cmd_quorum_init(cid, node->cfg_operator_ptrs, node->n_cfg_operators,
						node->cfg.quorum_threshold, node->cfg.region, &cmd,
						&err) != KMS_OK) {
			KMS_LOG_E("supervisor: the operators in the configuration: %s", err.msg);
			return;
		}
		KMS_LOG_I("supervisor: recording the %zu operator(s) of the configuration, "
			  "threshold %u, and region '%s' in the cluster's state",
			  node->n_cfg_operators, node->cfg.quorum_threshold, node->cfg.region);
	} else if (kms_keyring_domain_key_probe(node->kr, probe) == 0 &&
		   node->restore_ring.data != NULL) {
		/* A restored cluster's probe, keys and aliases come from the backup. */
		if (kms_restore_command(node, &cmd, &err) != KMS_OK) {
			KMS_LOG_E("supervisor: restore: %s", err.msg);
			return;
		}
		KMS_LOG_I("supervisor: restore: recording the backup's key ring in the cluster's "
			  "state");
	} else if (kms_keyring_domain_key_probe(node->kr, probe) == 0) {
		/* The probe is a random key wrapped under the domain key: only
		 * the same domain key unwraps it (RFC 5649 integrity check). */
		if (kms_hsm_session_open(node->hsm, &hs, &err) != KMS_OK ||
		    kms_hsm_master_key_create(hs, atomic_load(&node->domain_key), &wrapped, &err) !=
			    KMS_OK ||
		    kms_keyring_cmd_domain_key_check(wrapped.data, wrapped.len, &cmd, &err) !=
			    KMS_OK)
			KMS_LOG_E("supervisor: cannot make the domain-key probe: %s", err.msg);
		kms_hsm_session_close(hs);
		kms_buf_free(&wrapped);
		if (cmd.data == NULL)
			return;
	} else {
		return;
	}
	atomic_store(&s->write_in_flight, 1);
	kms_raft_submit(node->raft, cmd.data, cmd.len, write_done, s);
	kms_buf_free(&cmd);
}

static void fatal(kms_node *node, const char *msg)
{
	KMS_LOG_E("%s", msg);
	atomic_store(&node->fatal, 1);
	kill(getpid(), SIGTERM);
}

/* True if probe (n bytes) and generation gen are still the state's. */
static int probe_still(kms_node *node, const uint8_t *probe, size_t n, uint32_t gen)
{
	uint8_t now[KMS_WRAPPED_MAX];
	kms_dk_state dks;
	size_t m = kms_keyring_domain_key_probe(node->kr, now);

	kms_keyring_dk_state(node->kr, &dks);
	return m == n && memcmp(now, probe, n) == 0 && dks.generation == gen;
}

/* Every node checks once that its token's domain key is the cluster's. */
static void verify_probe(struct kms_supervisor *s)
{
	kms_node *node = s->node;
	uint8_t probe[KMS_WRAPPED_MAX];
	size_t n;
	kms_hsm_key k = 0;
	kms_err err = {0};
	char msg[KMS_ERRMSG_SIZE + 200];
	kms_dk_state dks;
	int never = 0;

	if (atomic_load(&node->probe_verified) || atomic_load(&node->domain_key) == 0)
		return;
	/* The generation first: a probe read before the state moved on is not refused below. */
	kms_keyring_dk_state(node->kr, &dks);
	n = kms_keyring_domain_key_probe(node->kr, probe);
	if (n == 0)
		return;
	/* Only against the key of the state's generation; a state still
	 * behind a rotation this token already followed waits. */
	if (!kms_dk_probe_checkable(node->dkrot, &never)) {
		if (!never)
			return;
		kms_keyring_dk_state(node->kr, &dks);
		snprintf(msg, sizeof(msg),
			 "token '%s' holds no domain key of the cluster's generation %u nor a newer "
			 "one (it missed a rotation, or is not this cluster's); refusing to serve",
			 node->cfg.hsm_token_label, dks.generation);
		fatal(node, msg);
		return;
	}
	if (kms_hsm_master_key_unwrap(node->hsm, atomic_load(&node->domain_key), probe, n, &k,
				      &err) != KMS_OK) {
		/*
		 * A node replaying its log after a restart can apply a rotation's
		 * switch between the probe's read and the key's choice: the old
		 * probe against the new key. Only a probe and a generation that
		 * are still the state's prove the token wrong; else look again at
		 * the next tick.
		 */
		if (!probe_still(node, probe, n, dks.generation)) {
			KMS_LOG_D("domain key: the cluster's check blob changed while it was being "
				  "checked; checking again");
			return;
		}
		snprintf(msg, sizeof(msg),
			 "the domain key '%s' in token '%s' is not this cluster's domain key "
			 "(it cannot unwrap the cluster's check blob: %s); refusing to join or serve",
			 node->cfg.domain_key_label, node->cfg.hsm_token_label, err.msg);
		fatal(node, msg);
		return;
	}
	kms_hsm_key_destroy(node->hsm, k);
	atomic_store(&node->probe_verified, 1);
	KMS_LOG_I("domain key verified against the cluster's check blob");
	if (node->restore_ring.data != NULL) {
		/* The state holds the backup's probe, so it holds its keys too. */
		kms_buf_free(&node->restore_ring);
		KMS_LOG_I("restore: done: the backup's %zu keys are in the cluster's state",
			  kms_keyring_count(node->kr));
	}
}

/*
 * The transport key pair a joining node receives the domain key with, made
 * once per process in its HSM; the operator admits exactly this key by its
 * fingerprint.
 */
static int make_transport_key(struct kms_supervisor *s, kms_err *err)
{
	kms_node *node = s->node;
	uint8_t fp[KMS_SHA256_LEN];

	KMS_TRY(kms_hsm_transport_keypair(node->hsm, &s->transport_priv, &s->transport_pub,
					  &s->modulus, &s->exponent, err));
	KMS_TRY(kms_rsa_public_sha256(s->modulus.data, s->modulus.len, s->exponent.data,
				      s->exponent.len, fp, err));
	kms_hex_encode(fp, sizeof(fp), s->fingerprint);
	KMS_LOG_I("joining: transport key sha256 %s", s->fingerprint);
	return KMS_OK;
}

/* Keeps the members the answer named: the joining node's Raft peers. */
static void keep_join_members(kms_node *node, const Kms__V1__FetchDomainKeyResponse *resp)
{
	kms_member m[KMS_MEMBERS_MAX];
	size_t n = 0;

	memset(m, 0, sizeof(m));
	for (size_t i = 0; i < resp->n_members && n < KMS_MEMBERS_MAX; i++) {
		const Kms__V1__Member *r = resp->members[i];

		if (r == NULL || r->id == 0 || r->raft_address == NULL || r->grpc_address == NULL)
			continue;
		m[n].id = r->id;
		snprintf(m[n].raft_address, sizeof(m[n].raft_address), "%s", r->raft_address);
		snprintf(m[n].grpc_address, sizeof(m[n].grpc_address), "%s", r->grpc_address);
		n++;
	}
	kms_node_set_join_members(node, m, n);
}

/* A joining node asks the seeds for the domain key until it is admitted. */
static void fetch_domain_key(struct kms_supervisor *s)
{
	kms_node *node = s->node;
	Kms__V1__FetchDomainKeyRequest req = KMS__V1__FETCH_DOMAIN_KEY_REQUEST__INIT;
	Kms__V1__FetchDomainKeyResponse *resp = NULL;
	char seeds[1024], *save = NULL, *seed;
	kms_rpc_status st = {0};
	char label[KMS_HSM_DK_LABEL_MAX];
	kms_hsm_key dk = 0;
	uint32_t gen;
	kms_err err = {0};

	if (s->transport_priv == 0 && make_transport_key(s, &err) != KMS_OK) {
		fatal(node, err.msg);
		return;
	}
	req.node_id = node->cfg.node_id;
	req.rsa_modulus.data = s->modulus.data;
	req.rsa_modulus.len = s->modulus.len;
	req.rsa_public_exponent.data = s->exponent.data;
	req.rsa_public_exponent.len = s->exponent.len;
	snprintf(seeds, sizeof(seeds), "%s", node->cfg.join_seeds);
	for (seed = strtok_r(seeds, ",", &save); seed != NULL; seed = strtok_r(NULL, ",", &save)) {
		if (kms_peers_call(node->peers, seed, 0, "/kms.v1.Internal/FetchDomainKey", &req.base,
				   &kms__v1__fetch_domain_key_response__descriptor,
				   (ProtobufCMessage **)&resp, FETCH_TIMEOUT_MS, &st) == 0)
			break;
	}
	if (resp == NULL) {
		if (s->fetch_attempts++ % 15 == 0)
			KMS_LOG_I("joining: waiting to be admitted (kmsctl quorum propose add-member "
				  "--id %u --raft %s --grpc %s --transport-key-sha256 %s, approved by "
				  "M operators); last answer: %s",
				  node->cfg.node_id, node->cfg.raft_listen, node->cfg.grpc_listen,
				  s->fingerprint, st.details);
		return;
	}
	keep_join_members(node, resp);
	gen = resp->domain_key_generation != 0 ? resp->domain_key_generation : 1;
	if (kms_hsm_dk_label(node->cfg.domain_key_label, gen, label, &err) != KMS_OK ||
	    kms_hsm_domain_key_install(node->hsm, s->transport_priv, label,
				       resp->wrapped_domain_key.data, resp->wrapped_domain_key.len,
				       &dk, &err) != KMS_OK) {
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		fatal(node, err.msg);
		return;
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	kms_hsm_key_destroy(node->hsm, s->transport_priv);
	kms_hsm_key_destroy(node->hsm, s->transport_pub);
	s->transport_priv = s->transport_pub = 0;
	kms_dk_add_held(node, gen, dk);
	atomic_store(&node->domain_key_gen, gen);
	atomic_store(&node->domain_key, dk);
	KMS_LOG_I("joined: domain key '%s' received wrapped from %s and installed in token '%s'",
		  label, seed, node->cfg.hsm_token_label);
}

/* The leader's key upkeep, every [keys] upkeep_interval_ms. */
static void upkeep(struct kms_supervisor *s)
{
	struct timespec now;
	long elapsed_ms;

	clock_gettime(CLOCK_MONOTONIC, &now);
	elapsed_ms = (now.tv_sec - s->upkeep_at.tv_sec) * 1000L +
		     (now.tv_nsec - s->upkeep_at.tv_nsec) / 1000000L;
	if (elapsed_ms < (long)s->node->cfg.upkeep_interval_ms)
		return;
	s->upkeep_at = now;
	kms_key_upkeep_pass(s->upkeep, (int64_t)time(NULL));
}

/* The prefetch's wake-up: a rotation was applied (on the Raft thread). */
static void kick(void *arg)
{
	struct kms_supervisor *s = arg;

	pthread_mutex_lock(&s->mu);
	s->kicked = 1;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->mu);
}

static void *supervisor_main(void *arg)
{
	struct kms_supervisor *s = arg;
	kms_raft_view v;

	pthread_mutex_lock(&s->mu);
	while (!s->stop) {
		struct timespec until;

		pthread_mutex_unlock(&s->mu);
		if (atomic_load(&s->node->domain_key) == 0) {
			if (s->ticks % FETCH_EVERY_TICKS == 0)
				fetch_domain_key(s);
		} else {
			verify_probe(s);
			/* First: a new primary's first encryption may come any moment. */
			if (kms_key_prefetch_run(s->node->prefetch) > 0)
				kick(s);
			kms_dk_rotation_tick(s->node->dkrot);
			kms_quorum_exec_tidy(s->qexec);
			kms_raft_view_get(s->node->raft, &v);
			if (v.state == RAFT_LEADER)
				leader_bookkeeping(s);
			if (v.state == RAFT_LEADER)
				upkeep(s);
			if (v.state == RAFT_LEADER)
				kms_quorum_exec_pass(s->qexec);
		}
		s->ticks++;
		pthread_mutex_lock(&s->mu);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += TICK_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		if (!s->stop && !s->kicked)
			pthread_cond_timedwait(&s->cond, &s->mu, &until);
		s->kicked = 0;
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int kms_supervisor_start(kms_node *node, struct kms_supervisor **out, kms_err *err)
{
	struct kms_supervisor *s = kms_calloc(1, sizeof(*s));

	if (s == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	s->node = node;
	if (kms_key_upkeep_new(node, &s->upkeep, err) != KMS_OK) {
		kms_free(s);
		return err->code;
	}
	if (kms_quorum_exec_new(node, &s->qexec, err) != KMS_OK) {
		kms_key_upkeep_free(s->upkeep);
		kms_free(s);
		return err->code;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (pthread_create(&s->thread, NULL, supervisor_main, s) != 0) {
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cond);
		kms_key_upkeep_free(s->upkeep);
		kms_quorum_exec_free(s->qexec);
		kms_free(s);
		return kms_errf(err, KMS_ERR_INTERNAL, "cannot start the supervisor thread");
	}
	kms_key_prefetch_set_wake(node->prefetch, kick, s);
	*out = s;
	return KMS_OK;
}

void kms_supervisor_stop(struct kms_supervisor *s)
{
	if (s == NULL)
		return;
	/* Before the thread goes: a rotation applied from now on only queues. */
	kms_key_prefetch_set_wake(s->node->prefetch, NULL, NULL);
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
}

void kms_supervisor_free(struct kms_supervisor *s)
{
	if (s == NULL)
		return;
	if (s->transport_priv != 0)
		kms_hsm_key_destroy(s->node->hsm, s->transport_priv);
	if (s->transport_pub != 0)
		kms_hsm_key_destroy(s->node->hsm, s->transport_pub);
	kms_buf_free(&s->modulus);
	kms_buf_free(&s->exponent);
	kms_key_upkeep_free(s->upkeep);
	kms_quorum_exec_free(s->qexec);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	kms_free(s);
}
