/* api_keyadmin.c - the key administration calls of kms.v1.KeyManagement (rotation, rotation policy, enable, disable, deletion, key policy, aliases), for administrators: each a Raft write answered once applied. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "api/key_ops.h"
#include "kms/alloc.h"
#include "kms/blob.h"
#include "kms/log.h"
#include "kms/policy.h"
#include "node/key_rotation.h"
#include "node/node.h"

#define ALIAS_PAGE_DEFAULT 100
#define ALIAS_PAGE_MAX 1000
/* ScheduleKeyDeletion's window, in days (as AWS KMS). */
#define WINDOW_MIN_DAYS 7
#define WINDOW_MAX_DAYS 30
/* How far apart the clocks of a follower and its leader may be when the
 * leader checks a deletion date the follower computed. */
#define CLOCK_SKEW_S 300

/* What an applied write answers with. */
enum admin_reply {
	R_ROTATE,
	R_ROTATION_POLICY,
	R_ENABLE,
	R_DISABLE,
	R_SCHEDULE,
	R_CANCEL,
	R_POLICY,
	R_CREATE_ALIAS,
	R_UPDATE_ALIAS,
	R_DELETE_ALIAS,
};

/* What the log says an applied write did. */
static const char *const done_text[] = {
	[R_ROTATE] = "rotated",
	[R_ROTATION_POLICY] = "rotation policy set",
	[R_ENABLE] = "enabled",
	[R_DISABLE] = "disabled",
	[R_SCHEDULE] = "deletion scheduled",
	[R_CANCEL] = "deletion cancelled",
	[R_POLICY] = "policy replaced",
	[R_CREATE_ALIAS] = "created",
	[R_UPDATE_ALIAS] = "moved",
	[R_DELETE_ALIAS] = "deleted",
};

static int admin_check(kms_node *node, const char *principal, const char *what, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];

	if (principal != NULL && kms_keyring_is_admin(node->kr, principal))
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PERMISSION,
			"principal '%s' is not an administrator and may not %s",
			kms_quote(principal != NULL ? principal : "", q), what);
}

/* --- a write, answered once it is applied --- */

struct admin_wait {
	kms_node *node;
	kms_call *call;
	enum admin_reply reply;
	char key_id[KMS_KEY_ID_MAX + 1];
	char alias[KMS_ALIAS_NAME_MAX + 1];
	char principal[KMS_PRINCIPAL_MAX + 1];
	kms_buf cmd; /* to say why, if apply refuses it */
};

static Kms__V1__KeyMetadata *describe_as_admin(kms_node *node, const char *key_id)
{
	Kms__V1__KeyMetadata *md = NULL;

	if (kms_keyring_describe(node->kr, key_id, "", 1, &md, NULL) != KMS_OK)
		return NULL;
	return md;
}

static void alias_entry(Kms__V1__AliasEntry *e, const kms_alias *a)
{
	kms__v1__alias_entry__init(e);
	e->alias_name = (char *)a->name;
	e->key_id = (char *)a->key_id;
	e->created_at_unix = a->created_at_unix;
	e->updated_at_unix = a->updated_at_unix;
}

static void reply_alias(struct admin_wait *w)
{
	Kms__V1__CreateAliasResponse cr = KMS__V1__CREATE_ALIAS_RESPONSE__INIT;
	Kms__V1__UpdateAliasResponse ur = KMS__V1__UPDATE_ALIAS_RESPONSE__INIT;
	Kms__V1__AliasEntry e;
	kms_alias a;
	kms_err err = {0};

	if (kms_keyring_alias(w->node->kr, w->alias, &a, &err) != KMS_OK) {
		kms_call_fail(w->call, KMS_ERR_INTERNAL, "the alias cannot be read back");
		return;
	}
	alias_entry(&e, &a);
	cr.alias = ur.alias = &e;
	kms_call_reply(w->call, w->reply == R_CREATE_ALIAS ? &cr.base : &ur.base, 0);
}

/* The answer of a key write: the key as it is now. */
static void reply_key(struct admin_wait *w)
{
	Kms__V1__RotateKeyResponse rot = KMS__V1__ROTATE_KEY_RESPONSE__INIT;
	Kms__V1__SetRotationPolicyResponse pol = KMS__V1__SET_ROTATION_POLICY_RESPONSE__INIT;
	Kms__V1__EnableKeyResponse en = KMS__V1__ENABLE_KEY_RESPONSE__INIT;
	Kms__V1__DisableKeyResponse dis = KMS__V1__DISABLE_KEY_RESPONSE__INIT;
	Kms__V1__ScheduleKeyDeletionResponse sch = KMS__V1__SCHEDULE_KEY_DELETION_RESPONSE__INIT;
	Kms__V1__CancelKeyDeletionResponse can = KMS__V1__CANCEL_KEY_DELETION_RESPONSE__INIT;
	Kms__V1__PutKeyPolicyResponse put = KMS__V1__PUT_KEY_POLICY_RESPONSE__INIT;
	Kms__V1__KeyMetadata *md = describe_as_admin(w->node, w->key_id);
	const ProtobufCMessage *resp;

	if (md == NULL) {
		kms_call_fail(w->call, KMS_ERR_INTERNAL, "the key cannot be read back");
		return;
	}
	rot.key = pol.key = en.key = dis.key = sch.key = can.key = put.key = md;
	sch.key_id = md->key_id;
	sch.deletion_date_unix = md->deletion_date_unix;
	switch (w->reply) {
	case R_ROTATE:
		resp = &rot.base;
		break;
	case R_ROTATION_POLICY:
		resp = &pol.base;
		break;
	case R_ENABLE:
		resp = &en.base;
		break;
	case R_DISABLE:
		resp = &dis.base;
		break;
	case R_SCHEDULE:
		resp = &sch.base;
		break;
	case R_CANCEL:
		resp = &can.base;
		break;
	default:
		resp = &put.base;
		break;
	}
	kms_call_reply(w->call, resp, 0);
	kms_keyring_metadata_free(md);
}

static void admin_done(void *arg, int status, const char *msg, uint64_t index)
{
	struct admin_wait *w = arg;
	Kms__V1__DeleteAliasResponse del = KMS__V1__DELETE_ALIAS_RESPONSE__INIT;
	kms_err why = {0};

	(void)index;
	if (status != KMS_OK) {
		/*
		 * Raft brings back the status of a refused apply, not its
		 * sentence; the state that refused it gives the same one again
		 * (a rotation that lost a race, a key disabled meanwhile).
		 */
		if (msg == NULL && kms_keyring_check(w->node->kr, w->cmd.data, w->cmd.len, &why) ==
					   status)
			msg = why.msg;
		kms_call_fail(w->call, status, msg != NULL ? msg : kms_strerror(status));
		goto out;
	}
	if (w->alias[0] != '\0')
		KMS_LOG_I("alias '%s'%s%s%s: %s by '%s'", w->alias,
			  w->key_id[0] != '\0' ? " of key '" : "", w->key_id,
			  w->key_id[0] != '\0' ? "'" : "", done_text[w->reply], w->principal);
	else
		KMS_LOG_I("key '%s': %s by '%s'", w->key_id, done_text[w->reply], w->principal);
	if (w->reply == R_DELETE_ALIAS)
		kms_call_reply(w->call, &del.base, 0);
	else if (w->reply == R_CREATE_ALIAS || w->reply == R_UPDATE_ALIAS)
		reply_alias(w);
	else
		reply_key(w);
out:
	kms_buf_free(&w->cmd);
	kms_free(w);
}

/*
 * Checks cmd on this node's state (apply's own decision and sentence),
 * then commits it through the leader; the call is answered once the
 * command is applied. Takes cmd over in every case.
 */
static int submit(kms_node *node, kms_call *call, enum admin_reply reply, const char *key_id,
		  const char *alias, kms_buf *cmd, kms_err *err)
{
	const char *principal = kms_call_principal(call);
	struct admin_wait *w;
	int rc;

	KMS_TRY_GOTO(rc, kms_keyring_check(node->kr, cmd->data, cmd->len, err), out);
	KMS_TRY_GOTO(rc, kms_api_can_write(node, err), out);
	w = kms_calloc(1, sizeof(*w));
	if (w == NULL) {
		rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory committing a key change");
		goto out;
	}
	w->node = node;
	w->call = call;
	w->reply = reply;
	snprintf(w->key_id, sizeof(w->key_id), "%s", key_id != NULL ? key_id : "");
	snprintf(w->alias, sizeof(w->alias), "%s", alias != NULL ? alias : "");
	snprintf(w->principal, sizeof(w->principal), "%s", principal);
	w->cmd = *cmd;
	cmd->data = NULL;
	cmd->len = 0;
	/* Through a follower, the write ends by the caller's deadline. */
	kms_node_commit_deadline(node, principal, kms_call_deadline_ms(call), w->cmd.data,
				 w->cmd.len, admin_done, w);
	return KMS_OK;
out:
	kms_buf_free(cmd);
	return rc;
}

/* --- the handlers --- */

/* The first steps of every handler that names a key: the caller is an
 * administrator, and name (a key id or an alias) is a key it knows. */
static int key_of(kms_node *node, kms_call *call, const char *name, const char *what,
		  char *key_id, kms_err *err)
{
	kms_call_audit_key(call, name, 0);
	KMS_TRY(admin_check(node, kms_call_principal(call), what, err));
	KMS_TRY(kms_keyring_real_key_id(node->kr, name, key_id, err));
	kms_call_audit_key(call, key_id, 0);
	return KMS_OK;
}

static void finish(kms_call *call, int rc, const kms_err *err)
{
	if (rc != KMS_OK)
		kms_key_ops_fail(call, err);
}

static void rotate_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__RotateKeyRequest *req = kms__v1__rotate_key_request__unpack(NULL, len, data);
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	uint32_t version = 0;
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed RotateKeyRequest");
		return;
	}
	KMS_TRY_GOTO(rc, key_of(node, call, req->key_id, "rotate keys", key_id, &err), out);
	/* The same rotation as the leader's own when a policy makes one due. */
	KMS_TRY_GOTO(rc, kms_node_rotation_cmd(node, kms_call_worker(call), key_id,
					       (int64_t)time(NULL), &version, &cmd, &err), out);
	rc = submit(node, call, R_ROTATE, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
	kms_buf_free(&cmd);
	kms__v1__rotate_key_request__free_unpacked(req, NULL);
}

/* A rotation period the API takes: 0 (none), or from the configured floor. */
static int period_check(kms_node *node, uint64_t period, kms_err *err)
{
	if (period != 0 && period < node->cfg.min_rotation_period_s)
		return kms_errf(err, KMS_ERR_INVALID,
				"rotation_period_seconds %llu is shorter than the minimum of %u s "
				"([keys] min_rotation_period); 0 turns rotation by age off",
				(unsigned long long)period, node->cfg.min_rotation_period_s);
	return KMS_OK;
}

static void set_rotation_policy(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__SetRotationPolicyRequest *req =
		kms__v1__set_rotation_policy_request__unpack(NULL, len, data);
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed SetRotationPolicyRequest");
		return;
	}
	KMS_TRY_GOTO(rc, key_of(node, call, req->key_id, "set rotation policies", key_id, &err),
		     out);
	KMS_TRY_GOTO(rc, period_check(node, req->rotation_period_seconds, &err), out);
	/* 0 stays 0: the default (2^30), as DescribeKey shows it. */
	KMS_TRY_GOTO(rc, kms_keyring_cmd_set_rotation_policy(key_id, req->rotation_period_seconds,
							     req->max_encryptions_per_version,
							     &cmd, &err), out);
	rc = submit(node, call, R_ROTATION_POLICY, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
	kms__v1__set_rotation_policy_request__free_unpacked(req, NULL);
}

/* EnableKey and DisableKey: both requests hold only a key_id (field 1). */
static void set_enabled(kms_node *node, kms_call *call, const char *key_name, int enabled)
{
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	KMS_TRY_GOTO(rc, key_of(node, call, key_name, enabled ? "enable keys" : "disable keys",
				key_id, &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_set_key_enabled(key_id, enabled, &cmd, &err), out);
	rc = submit(node, call, enabled ? R_ENABLE : R_DISABLE, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
}

static void enable_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__EnableKeyRequest *req = kms__v1__enable_key_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed EnableKeyRequest");
		return;
	}
	set_enabled(app, call, req->key_id, 1);
	kms__v1__enable_key_request__free_unpacked(req, NULL);
}

static void disable_key(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__DisableKeyRequest *req = kms__v1__disable_key_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed DisableKeyRequest");
		return;
	}
	set_enabled(app, call, req->key_id, 0);
	kms__v1__disable_key_request__free_unpacked(req, NULL);
}

static void schedule_key_deletion(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ScheduleKeyDeletionRequest *req =
		kms__v1__schedule_key_deletion_request__unpack(NULL, len, data);
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	kms_err err = {0};
	uint32_t days;
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ScheduleKeyDeletionRequest");
		return;
	}
	KMS_TRY_GOTO(rc, key_of(node, call, req->key_id, "schedule key deletions", key_id, &err),
		     out);
	days = req->pending_window_days == 0 ? WINDOW_MAX_DAYS : req->pending_window_days;
	if (days < WINDOW_MIN_DAYS || days > WINDOW_MAX_DAYS) {
		rc = kms_errf(&err, KMS_ERR_INVALID,
			      "pending_window_days must be %d to %d (0 means %d), not %u",
			      WINDOW_MIN_DAYS, WINDOW_MAX_DAYS, WINDOW_MAX_DAYS,
			      req->pending_window_days);
		goto out;
	}
	/* A "day" is 86400 s but in a test cluster (deletion_day_seconds). */
	KMS_TRY_GOTO(rc, kms_keyring_cmd_schedule_key_deletion(
				 key_id,
				 (int64_t)time(NULL) +
					 (int64_t)days * node->cfg.deletion_day_seconds,
				 &cmd, &err), out);
	rc = submit(node, call, R_SCHEDULE, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
	kms__v1__schedule_key_deletion_request__free_unpacked(req, NULL);
}

static void cancel_key_deletion(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__CancelKeyDeletionRequest *req =
		kms__v1__cancel_key_deletion_request__unpack(NULL, len, data);
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed CancelKeyDeletionRequest");
		return;
	}
	KMS_TRY_GOTO(rc, key_of(node, call, req->key_id, "cancel key deletions", key_id, &err),
		     out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_cancel_key_deletion(key_id, &cmd, &err), out);
	rc = submit(node, call, R_CANCEL, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
	kms__v1__cancel_key_deletion_request__free_unpacked(req, NULL);
}

static void put_key_policy(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__PutKeyPolicyRequest *req = kms__v1__put_key_policy_request__unpack(NULL, len, data);
	char key_id[KMS_KEY_ID_MAX + 1];
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed PutKeyPolicyRequest");
		return;
	}
	KMS_TRY_GOTO(rc, key_of(node, call, req->key_id, "change key policies", key_id, &err),
		     out);
	/* A policy submitted now gets every rule (kms_policy_check). */
	KMS_TRY_GOTO(rc, kms_policy_check(req->policy, KMS_POLICY_NEW, node->cfg.trust_domain,
					  &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_put_key_policy(key_id, req->policy, &cmd, &err), out);
	rc = submit(node, call, R_POLICY, key_id, NULL, &cmd, &err);
out:
	finish(call, rc, &err);
	kms__v1__put_key_policy_request__free_unpacked(req, NULL);
}

/* CreateAlias and UpdateAlias: both requests are {alias_name, key_id}. */
static void write_alias(kms_node *node, kms_call *call, const char *name, const char *key_id,
			int update)
{
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	kms_call_audit_key(call, key_id, 0);
	KMS_TRY_GOTO(rc, admin_check(node, kms_call_principal(call),
				     update ? "update aliases" : "create aliases", &err), out);
	rc = update ? kms_keyring_cmd_update_alias(name, key_id, (int64_t)time(NULL), &cmd, &err)
		    : kms_keyring_cmd_create_alias(name, key_id, (int64_t)time(NULL), &cmd, &err);
	if (rc != KMS_OK)
		goto out;
	rc = submit(node, call, update ? R_UPDATE_ALIAS : R_CREATE_ALIAS, key_id, name, &cmd,
		    &err);
out:
	finish(call, rc, &err);
}

static void create_alias(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__CreateAliasRequest *req = kms__v1__create_alias_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed CreateAliasRequest");
		return;
	}
	write_alias(app, call, req->alias_name, req->key_id, 0);
	kms__v1__create_alias_request__free_unpacked(req, NULL);
}

static void update_alias(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	Kms__V1__UpdateAliasRequest *req = kms__v1__update_alias_request__unpack(NULL, len, data);

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed UpdateAliasRequest");
		return;
	}
	write_alias(app, call, req->alias_name, req->key_id, 1);
	kms__v1__update_alias_request__free_unpacked(req, NULL);
}

static void delete_alias(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__DeleteAliasRequest *req = kms__v1__delete_alias_request__unpack(NULL, len, data);
	kms_buf cmd = {0};
	kms_err err = {0};
	int rc;

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed DeleteAliasRequest");
		return;
	}
	KMS_TRY_GOTO(rc, admin_check(node, kms_call_principal(call), "delete aliases", &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_cmd_delete_alias(req->alias_name, &cmd, &err), out);
	rc = submit(node, call, R_DELETE_ALIAS, NULL, req->alias_name, &cmd, &err);
out:
	finish(call, rc, &err);
	kms__v1__delete_alias_request__free_unpacked(req, NULL);
}

static void list_aliases(void *app, kms_call *call, const uint8_t *data, size_t len)
{
	kms_node *node = app;
	Kms__V1__ListAliasesRequest *req = kms__v1__list_aliases_request__unpack(NULL, len, data);
	Kms__V1__ListAliasesResponse resp = KMS__V1__LIST_ALIASES_RESPONSE__INIT;
	Kms__V1__AliasEntry *entries = NULL, **ptrs = NULL;
	char key_id[KMS_KEY_ID_MAX + 1] = "";
	kms_alias *page = NULL;
	size_t n = 0, size;
	int more = 0, rc;
	kms_err err = {0};

	if (req == NULL) {
		kms_call_fail(call, KMS_ERR_INVALID, "malformed ListAliasesRequest");
		return;
	}
	KMS_TRY_GOTO(rc, admin_check(node, kms_call_principal(call), "list aliases", &err), out);
	size = req->page_size == 0 ? ALIAS_PAGE_DEFAULT : req->page_size;
	if (size > ALIAS_PAGE_MAX) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "page_size %u is over the limit of %d",
			      req->page_size, ALIAS_PAGE_MAX);
		goto out;
	}
	/* The page token is the last alias name of the previous page. */
	if (req->page_token[0] != '\0' && kms_alias_name_check(req->page_token, NULL) != KMS_OK) {
		rc = kms_errf(&err, KMS_ERR_INVALID, "page_token is not one this server issued");
		goto out;
	}
	if (req->key_id[0] != '\0')
		KMS_TRY_GOTO(rc, kms_keyring_real_key_id(node->kr, req->key_id, key_id, &err), out);
	KMS_TRY_GOTO(rc, kms_keyring_list_aliases(node->kr, key_id, req->page_token, size, &page,
						  &n, &more, &err), out);
	entries = kms_calloc(n > 0 ? n : 1, sizeof(*entries));
	ptrs = kms_calloc(n > 0 ? n : 1, sizeof(*ptrs));
	if (entries == NULL || ptrs == NULL) {
		rc = kms_errf(&err, KMS_ERR_NOMEM, "out of memory listing aliases");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		alias_entry(&entries[i], &page[i]);
		ptrs[i] = &entries[i];
	}
	resp.aliases = ptrs;
	resp.n_aliases = n;
	resp.next_page_token = (char *)(more && n > 0 ? page[n - 1].name : "");
	kms_call_reply(call, &resp.base, 0);
out:
	finish(call, rc, &err);
	kms_free(entries);
	kms_free(ptrs);
	kms_free(page);
	kms__v1__list_aliases_request__free_unpacked(req, NULL);
}

/* --- what the leader checks of a forwarded key administration command --- */

int kms_api_keyadmin_command(const Kms__V1__Command *c)
{
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_ROTATE_KEY:
	case KMS__V1__COMMAND__CMD_SET_KEY_ENABLED:
	case KMS__V1__COMMAND__CMD_SCHEDULE_KEY_DELETION:
	case KMS__V1__COMMAND__CMD_CANCEL_KEY_DELETION:
	case KMS__V1__COMMAND__CMD_PUT_KEY_POLICY:
	case KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY:
	case KMS__V1__COMMAND__CMD_CREATE_ALIAS:
	case KMS__V1__COMMAND__CMD_UPDATE_ALIAS:
	case KMS__V1__COMMAND__CMD_DELETE_ALIAS:
		return 1;
	default:
		return 0;
	}
}

/*
 * The handler's own rules, taken again on the leader for the principal the
 * follower served: an administrator; a policy by the rules of a new one; a
 * deletion date inside the window (on the leader's clock, give or take
 * CLOCK_SKEW_S); a rotation period from the floor. Then apply's decision
 * on the leader's state, so that the refusal carries its sentence back.
 */
int kms_api_keyadmin_gate(kms_node *node, const char *principal, const Kms__V1__Command *c,
			  const uint8_t *cmd, size_t len, kms_err *err)
{
	int64_t now = (int64_t)time(NULL), day = (int64_t)node->cfg.deletion_day_seconds;

	KMS_TRY(admin_check(node, principal, "administer keys", err));
	switch (c->cmd_case) {
	case KMS__V1__COMMAND__CMD_PUT_KEY_POLICY:
		if (c->put_key_policy->policy == NULL)
			return kms_errf(err, KMS_ERR_INVALID, "policy is missing");
		KMS_TRY(kms_policy_check(c->put_key_policy->policy, KMS_POLICY_NEW,
					 node->cfg.trust_domain, err));
		break;
	case KMS__V1__COMMAND__CMD_SCHEDULE_KEY_DELETION: {
		int64_t at = c->schedule_key_deletion->deletion_at_unix;

		if (at < now + WINDOW_MIN_DAYS * day - CLOCK_SKEW_S ||
		    at > now + WINDOW_MAX_DAYS * day + CLOCK_SKEW_S)
			return kms_errf(err, KMS_ERR_INVALID,
					"the deletion date is not %d to %d days from now",
					WINDOW_MIN_DAYS, WINDOW_MAX_DAYS);
		break;
	}
	case KMS__V1__COMMAND__CMD_SET_ROTATION_POLICY:
		KMS_TRY(period_check(node, c->set_rotation_policy->rotation_period_seconds, err));
		break;
	default:
		break;
	}
	return kms_keyring_check(node->kr, cmd, len, err);
}

const kms_method kms_api_keyadmin_methods[] = {
	{"/kms.v1.KeyManagement/RotateKey", rotate_key, KMS_CALLERS_SERVICES,
	 &kms__v1__rotate_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/SetRotationPolicy", set_rotation_policy, KMS_CALLERS_SERVICES,
	 &kms__v1__set_rotation_policy_request__descriptor, 0},
	{"/kms.v1.KeyManagement/EnableKey", enable_key, KMS_CALLERS_SERVICES,
	 &kms__v1__enable_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/DisableKey", disable_key, KMS_CALLERS_SERVICES,
	 &kms__v1__disable_key_request__descriptor, 0},
	{"/kms.v1.KeyManagement/ScheduleKeyDeletion", schedule_key_deletion, KMS_CALLERS_SERVICES,
	 &kms__v1__schedule_key_deletion_request__descriptor, 0},
	{"/kms.v1.KeyManagement/CancelKeyDeletion", cancel_key_deletion, KMS_CALLERS_SERVICES,
	 &kms__v1__cancel_key_deletion_request__descriptor, 0},
	{"/kms.v1.KeyManagement/PutKeyPolicy", put_key_policy, KMS_CALLERS_SERVICES,
	 &kms__v1__put_key_policy_request__descriptor, 0},
	{"/kms.v1.KeyManagement/CreateAlias", create_alias, KMS_CALLERS_SERVICES,
	 &kms__v1__create_alias_request__descriptor, 0},
	{"/kms.v1.KeyManagement/UpdateAlias", update_alias, KMS_CALLERS_SERVICES,
	 &kms__v1__update_alias_request__descriptor, 0},
	{"/kms.v1.KeyManagement/DeleteAlias", delete_alias, KMS_CALLERS_SERVICES,
	 &kms__v1__delete_alias_request__descriptor, 0},
	{"/kms.v1.KeyManagement/ListAliases", list_aliases, KMS_CALLERS_SERVICES,
	 &kms__v1__list_aliases_request__descriptor, 0},
};
const size_t kms_api_keyadmin_n_methods =
	sizeof(kms_api_keyadmin_methods) / sizeof(kms_api_keyadmin_methods[0]);
