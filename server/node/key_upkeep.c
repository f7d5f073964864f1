/* key_upkeep.c - the leader's upkeep of the keys: the rotations that have come due, proposed through Raft, and a reminder of the keys whose deletion window has ended. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kms/alloc.h"
#include "kms/keyring.h"
#include "kms/log.h"
#include "node/key_rotation.h"
#include "node/key_upkeep.h"
#include "node/node.h"

/* A failure that repeats every pass is logged at most this often. */
#define FAIL_LOG_EVERY_S 10
/* The same keys awaiting destruction are named again at most this often. */
#define REMIND_EVERY_S 3600
/* Keys named per reminder, and counted at most (the count says "or more"). */
#define REMIND_NAMES 8
#define REMIND_COUNT_MAX 1024

struct kms_key_upkeep {
	kms_node *node;
	atomic_int in_flight;	     /* proposals of the last pass unanswered */
	_Atomic int64_t fail_logged; /* when a failure was last logged */
	/* The supervisor's alone: the last reminder of keys past their
	 * deletion date, and how many it named. */
	int64_t reminded_at;
	size_t reminded_n;
};

/* One proposal, until Raft answers it. */
struct proposal {
	kms_key_upkeep *u;
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t version; /* the new version of a rotation */
	char why[160];
	kms_buf cmd; /* to say why, if apply refuses it */
};

int kms_key_upkeep_new(kms_node *node, kms_key_upkeep **out, kms_err *err)
{
	kms_key_upkeep *u = kms_calloc(1, sizeof(*u));

	if (u == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory");
	u->node = node;
	*out = u;
	return KMS_OK;
}

void kms_key_upkeep_free(kms_key_upkeep *u)
{
	kms_free(u);
}

static void log_failure(kms_key_upkeep *u, const char *what, const char *key_id,
			const char *msg)
{
	int64_t now = (int64_t)time(NULL), last = atomic_load(&u->fail_logged);

	if (now - last < FAIL_LOG_EVERY_S ||
	    !atomic_compare_exchange_strong(&u->fail_logged, &last, now))
		return;
	KMS_LOG_W("key upkeep: %s key '%s' failed, tried again every pass: %s", what, key_id, msg);
}

static void proposal_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct proposal *p = arg;
	kms_key_upkeep *u = p->u;
	kms_err why = {0};

	(void)index;
	if (status == KMS_OK) {
		KMS_LOG_I("key '%s' rotated to version %u (%s)", p->key_id, p->version, p->why);
	} else {
		/* Raft carries a refusal's status only; the state gives its sentence. */
		if (msg == NULL &&
		    kms_keyring_check(u->node->kr, p->cmd.data, p->cmd.len, &why) == status)
			msg = why.msg;
		log_failure(u, "rotating", p->key_id, msg != NULL ? msg : kms_strerror(status));
	}
	kms_buf_free(&p->cmd);
	kms_free(p);
	atomic_fetch_sub(&u->in_flight, 1);
}

/* Commits p's command; takes p over. */
static void propose(kms_key_upkeep *u, struct proposal *p)
{
	p->u = u;
	atomic_fetch_add(&u->in_flight, 1);
	kms_raft_submit(u->node->raft, p->cmd.data, p->cmd.len, proposal_done, p);
}

/* Why key_id is due, from what kms_keyring_due_rotations looked at. */
static void rotation_reason(kms_key_upkeep *u, const char *key_id, char *out, size_t cap)
{
	kms_key_status s;

	if (kms_keyring_key_status(u->node->kr, key_id, &s, NULL) != KMS_OK) {
		snprintf(out, cap, "due");
		return;
	}
	if (s.primary_state == KMS__V1__KEY_VERSION_STATE__KEY_VERSION_EXHAUSTED)
		snprintf(out, cap, "version %u has made its maximum of %llu encryptions",
			 s.primary_version, (unsigned long long)s.max_encryptions);
	else if (s.primary_reserved * 1000 >=
		 s.max_encryptions * (uint64_t)KMS_UPKEEP_HIGH_WATER_PERMILLE)
		snprintf(out, cap, "version %u has reserved %llu of its %llu encryptions",
			 s.primary_version, (unsigned long long)s.primary_reserved,
			 (unsigned long long)s.max_encryptions);
	else
		snprintf(out, cap, "its rotation period of %llu s has elapsed since %lld",
			 (unsigned long long)s.rotation_period_seconds,
			 (long long)s.last_rotated_at_unix);
}

static struct proposal *proposal_new(const char *key_id)
{
	struct proposal *p = kms_calloc(1, sizeof(*p));

	if (p != NULL)
		snprintf(p->key_id, sizeof(p->key_id), "%s", key_id);
	return p;
}

static void rotate_due(kms_key_upkeep *u, int64_t now)
{
	kms_node *node = u->node;
	kms_hsm_session *hs = NULL;
	char **ids = NULL;
	size_t n = 0;
	kms_err err = {0};

	if (kms_keyring_due_rotations(node->kr, now, KMS_UPKEEP_HIGH_WATER_PERMILLE,
				      KMS_UPKEEP_MAX_PER_PASS, &ids, &n, &err) != KMS_OK) {
		log_failure(u, "listing the keys due for rotation, first", "", err.msg);
		return;
	}
	if (n > 0 && kms_hsm_session_open(node->hsm, &hs, &err) != KMS_OK) {
		log_failure(u, "opening an HSM session to rotate", ids[0], err.msg);
		kms_keyring_ids_free(ids, n);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		struct proposal *p = proposal_new(ids[i]);

		if (p == NULL)
			break;
		rotation_reason(u, ids[i], p->why, sizeof(p->why));
		if (kms_node_rotation_cmd(node, hs, ids[i], now, &p->version, &p->cmd, &err) !=
		    KMS_OK) {
			log_failure(u, "rotating", ids[i], err.msg);
			kms_free(p);
			continue;
		}
		propose(u, p);
	}
	kms_hsm_session_close(hs);
	kms_keyring_ids_free(ids, n);
}

/*
 * Destroying key material is a root operation (M operators approve a
 * destroy-key proposal), so the end of a deletion window destroys
 * nothing: it names the keys that now wait for the operators, when that
 * list grows and once an hour while it lasts.
 */
static void remind_due(kms_key_upkeep *u, int64_t now)
{
	char **ids = NULL, names[REMIND_NAMES * (KMS_KEY_ID_MAX + 4)];
	size_t n = 0, used = 0;
	kms_err err = {0};

	if (kms_keyring_due_destructions(u->node->kr, now, REMIND_COUNT_MAX, &ids, &n, &err) !=
	    KMS_OK) {
		log_failure(u, "listing the keys past their deletion date, first", "", err.msg);
		return;
	}
	if (n > 0 && (n > u->reminded_n || now - u->reminded_at >= REMIND_EVERY_S)) {
		names[0] = '\0';
		for (size_t i = 0; i < n && i < REMIND_NAMES; i++)
			used += (size_t)snprintf(names + used, sizeof(names) - used, "%s'%s'",
						 i > 0 ? ", " : "", ids[i]);
		KMS_LOG_W("%zu%s key(s) past the end of their deletion window await destruction "
			  "by the operators (kmsctl quorum propose destroy-key KEY_ID): %s%s",
			  n, n == REMIND_COUNT_MAX ? " or more" : "", names,
			  n > REMIND_NAMES ? ", ..." : "");
		u->reminded_at = now;
	}
	u->reminded_n = n;
	kms_keyring_ids_free(ids, n);
}

void kms_key_upkeep_pass(kms_key_upkeep *u, int64_t now_unix)
{
	if (!kms_node_is_leader(u->node) || !kms_raft_ready(u->node->raft) ||
	    atomic_load(&u->in_flight) > 0)
		return;
	rotate_due(u, now_unix);
	remind_due(u, now_unix);
}
