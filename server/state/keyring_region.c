/* keyring_region.c - the cluster's region in the replicated state, and the scope of a key: which region may change it. */
#include <string.h>

#include "state/keyring_internal.h"
#include "kms/region.h"

/*
 * A record's scope: a multi-region key names a valid home region, and a
 * regional key names none, so that "homed here" has one reading.
 */
int kr_scope_check(const Kms__V1__KeyRecord *rec, kms_err *err)
{
	const char *home = rec->home_region != NULL ? rec->home_region : "";
	kms_err sub;

	if (!rec->multi_region) {
		KMS_ENSURE(home[0] == '\0', err, KMS_ERR_INVALID,
			   "key '%s' is regional but names a home region", rec->key_id);
		return KMS_OK;
	}
	if (kms_region_name_check(home, &sub) != KMS_OK)
		return kms_errf(err, KMS_ERR_INVALID, "multi-region key '%s': %s", rec->key_id,
				sub.msg);
	return KMS_OK;
}

int kr_home_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec, kms_err *err)
{
	if (!rec->multi_region || strcmp(rec->home_region, kr->region) == 0)
		return KMS_OK;
	return kms_errf(err, KMS_ERR_PRECONDITION,
			"key '%s' is a multi-region key of primary region '%s' (this is region "
			"'%s'): change it in region '%s'",
			rec->key_id, rec->home_region, kr->region[0] != '\0' ? kr->region : "unnamed",
			rec->home_region);
}

int kr_entry_for_write(const struct kms_keyring *kr, const char *key_id, struct kr_entry **e,
		       kms_err *err)
{
	KMS_TRY(kr_entry_for(kr, key_id, e, err));
	return kr_home_check(kr, (*e)->rec, err);
}

int kr_create_scope_check(const struct kms_keyring *kr, const Kms__V1__KeyRecord *rec,
			  kms_err *err)
{
	if (!rec->multi_region)
		return KMS_OK;
	KMS_ENSURE(kr->region[0] != '\0', err, KMS_ERR_PRECONDITION,
		   "this cluster's state names no region (it was made before regions, or "
		   "without [quorum] operators): it cannot create multi-region keys");
	KMS_ENSURE(strcmp(rec->home_region, kr->region) == 0, err, KMS_ERR_PRECONDITION,
		   "key '%s' would be homed in region '%s', but this is region '%s'", rec->key_id,
		   rec->home_region, kr->region);
	return KMS_OK;
}

int kr_region_set(char out[KMS_REGION_NAME_MAX + 1], const char *region, kms_err *err)
{
	if (region == NULL || region[0] == '\0') {
		out[0] = '\0';
		return KMS_OK;
	}
	KMS_TRY(kms_region_name_check(region, err));
	memcpy(out, region, strlen(region) + 1);
	return KMS_OK;
}

void kms_keyring_region(kms_keyring *kr, char out[KMS_REGION_NAME_MAX + 1])
{
	pthread_rwlock_rdlock(&kr->lock);
	memcpy(out, kr->region, sizeof(kr->region));
	pthread_rwlock_unlock(&kr->lock);
}

int kms_keyring_cmd_set_home_region(kms_buf *cmd, const char *region, kms_err *err)
{
	struct pb_state st = {0};
	ProtobufCAllocator a = {.alloc = kr_pb_alloc, .free = kr_pb_free, .allocator_data = &st};
	Kms__V1__Command *c;
	kms_buf fresh = {0};
	char *own;
	int rc;

	KMS_ENSURE(cmd != NULL && cmd->data != NULL, err, KMS_ERR_INVALID, "no command to stamp");
	KMS_TRY(kms_region_name_check(region, err));
	c = kms__v1__command__unpack(&a, cmd->len, cmd->data);
	if (c == NULL)
		return kms_errf(err, st.failed ? KMS_ERR_NOMEM : KMS_ERR_INVALID,
				"command is not a valid kms.v1.Command");
	if (c->cmd_case != KMS__V1__COMMAND__CMD_CREATE_KEY || c->create_key == NULL ||
	    c->create_key->key == NULL) {
		kr_pb_message_free(&c->base);
		return kms_errf(err, KMS_ERR_INVALID, "only CreateKey names a home region");
	}
	c->create_key->key->multi_region = 1;
	/* Borrowed while packed; c's own string goes back before c is freed. */
	own = c->create_key->key->home_region;
	c->create_key->key->home_region = (char *)region;
	rc = kr_command_pack(c, &fresh, err);
	c->create_key->key->home_region = own;
	kr_pb_message_free(&c->base);
	if (rc != KMS_OK)
		return rc;
	kms_buf_free(cmd);
	*cmd = fresh;
	return KMS_OK;
}
