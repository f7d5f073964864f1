/* test_keyring_backup.c - Check suite for the key ring's side of backups: the part a backup holds, RestoreBackup into an empty ring and its refusals, the last backup's file through snapshots, and the backup-export digest. */
#include <stdint.h>
#include <string.h>

#include <check.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"
#include "kms/quorum.h"
#include "kms/v1/state.pb-c.h"
#include "check_run.h"

#define ADMIN "spiffe://example.org/ns/ops/sa/admin"

static kms_keyring *kr;

static void setup(void)
{
	kms_err err = {0};

	ck_assert_int_eq(kms_keyring_new(&kr, &err), KMS_OK);
}

static void teardown(void)
{
	kms_keyring_free(kr);
}

static int apply(kms_keyring *k, kms_buf *cmd, kms_err *err)
{
	int rc = kms_keyring_apply(k, cmd->data, cmd->len, err);

	kms_buf_free(cmd);
	return rc;
}

/* Two keys, an alias, the probe: a cluster worth backing up. */
static void fill(kms_keyring *k)
{
	uint8_t w[40], probe[40];
	kms_buf cmd = {0};
	kms_err err = {0};

	memset(w, 0x11, sizeof(w));
	memset(probe, 0x22, sizeof(probe));
	ck_assert_int_eq(kms_keyring_cmd_create_key("k1", "", NULL, ADMIN, 1700000000, w,
						    sizeof(w), &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(k, &cmd, &err) == KMS_OK, "%s", err.msg);
	w[0] = 0x33;
	ck_assert_int_eq(kms_keyring_cmd_create_key("k2", "", NULL, ADMIN, 1700000000, w,
						    sizeof(w), &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(k, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_create_alias("alias/orders", "k2", 1700000000, &cmd, &err),
			 KMS_OK);
	ck_assert_msg(apply(k, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_domain_key_check(probe, sizeof(probe), &cmd, &err), KMS_OK);
	ck_assert_msg(apply(k, &cmd, &err) == KMS_OK, "%s", err.msg);
}

START_TEST(a_backup_ring_restores_into_an_empty_ring)
{
	kms_keyring *fresh = NULL;
	kms_buf ring = {0}, cmd = {0};
	uint8_t probe[64];
	uint32_t gen = 0;
	kms_err err = {0};

	fill(kr);
	ck_assert_int_eq(kms_keyring_backup_ring(kr, &ring, &gen, &err), KMS_OK);
	ck_assert_uint_eq(gen, 1);
	ck_assert_int_eq(kms_keyring_new(&fresh, &err), KMS_OK);
	ck_assert_int_eq(kms_keyring_cmd_restore_backup(ring.data, ring.len, &cmd, &err), KMS_OK);
	ck_assert_msg(apply(fresh, &cmd, &err) == KMS_OK, "%s", err.msg);
	ck_assert_uint_eq(kms_keyring_count(fresh), 2);
	ck_assert(kms_keyring_has_key(fresh, "k1"));
	ck_assert_uint_eq(kms_keyring_domain_key_probe(fresh, probe), 40);
	/* A second restore, or one into a ring that has keys, changes nothing. */
	ck_assert_int_eq(kms_keyring_cmd_restore_backup(ring.data, ring.len, &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(fresh, &cmd, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "only into a new cluster") != NULL, "%s", err.msg);
	ck_assert_uint_eq(kms_keyring_count(fresh), 2);
	kms_keyring_free(fresh);
	kms_buf_free(&ring);
}
END_TEST

START_TEST(bad_rings_are_refused_and_nothing_backs_up_before_the_probe)
{
	kms_buf ring = {0}, cmd = {0};
	uint32_t gen = 0;
	kms_err err = {0};
	static const uint8_t junk[] = {0xff, 0xff, 0xff};

	ck_assert_int_eq(kms_keyring_backup_ring(kr, &ring, &gen, &err), KMS_ERR_PRECONDITION);
	ck_assert_msg(strstr(err.msg, "no domain-key probe") != NULL, "%s", err.msg);
	ck_assert_int_eq(kms_keyring_cmd_restore_backup(junk, sizeof(junk), &cmd, &err), KMS_OK);
	ck_assert_int_eq(apply(kr, &cmd, &err), KMS_ERR_INVALID);
	ck_assert_uint_eq(kms_keyring_count(kr), 0);
	ck_assert_int_eq(kms_keyring_cmd_restore_backup(NULL, 0, &cmd, &err), KMS_ERR_INVALID);
}
END_TEST

/* The canonical encoding of docs/FORMAT.md, byte by byte. */
START_TEST(backup_export_encodes_as_documented)
{
	static const uint8_t cid[KMS_CLUSTER_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8,
							 9, 10, 11, 12, 13, 14, 15, 16};
	Kms__V1__RootOperation op = KMS__V1__ROOT_OPERATION__INIT;
	Kms__V1__BackupExportOperation be = KMS__V1__BACKUP_EXPORT_OPERATION__INIT;
	Kms__V1__CustodianRecord c[2], *cp[2];
	uint8_t keys[2][32], want[256];
	kms_buf enc = {0};
	kms_err err = {0};
	size_t n = 0;
	const char *name = "backup-export", *pid = "0123456789abcdef0123456789abcdef";

#define PUT_U32(v)                                                                                \
	do {                                                                                      \
		want[n++] = (uint8_t)((v) >> 24);                                                 \
		want[n++] = (uint8_t)((v) >> 16);                                                 \
		want[n++] = (uint8_t)((v) >> 8);                                                  \
		want[n++] = (uint8_t)(v);                                                         \
	} while (0)
#define PUT(p, l)                                                                                 \
	do {                                                                                      \
		memcpy(want + n, (p), (l));                                                       \
		n += (l);                                                                         \
	} while (0)
	for (int i = 0; i < 2; i++) {
		memset(keys[i], 0xa0 + i, 32);
		kms__v1__custodian_record__init(&c[i]);
		c[i].name = (char *)(i == 0 ? "alice" : "bob");
		c[i].public_key.data = keys[i];
		c[i].public_key.len = 32;
		cp[i] = &c[i];
	}
	be.custodians = cp;
	be.n_custodians = 2;
	be.threshold = 2;
	op.op_case = KMS__V1__ROOT_OPERATION__OP_BACKUP_EXPORT;
	op.backup_export = &be;
	ck_assert_int_eq(kms_quorum_encode(cid, sizeof(cid), pid, 1700000000, &op, &enc, &err),
			 KMS_OK);
	PUT(KMS_QUORUM_TAG, strlen(KMS_QUORUM_TAG));
	PUT_U32(16u);
	PUT(cid, 16);
	PUT_U32(32u);
	PUT(pid, 32);
	PUT_U32(0u);
	PUT_U32(1700000000u);
	PUT_U32((uint32_t)strlen(name));
	PUT(name, strlen(name));
	PUT_U32(2u); /* M */
	PUT_U32(2u); /* n */
	PUT_U32(5u);
	PUT("alice", 5);
	PUT_U32(32u);
	PUT(keys[0], 32);
	PUT_U32(3u);
	PUT("bob", 3);
	PUT_U32(32u);
	PUT(keys[1], 32);
	ck_assert_uint_eq(enc.len, n);
	ck_assert_mem_eq(enc.data, want, n);
	kms_buf_free(&enc);
	ck_assert(!kms_root_operation_in_state(&op));
	ck_assert_str_eq(kms_root_operation_name(&op), "backup-export");
	/* M above N, a short key: refused before any digest */
	be.threshold = 3;
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	be.threshold = 1;
	c[1].public_key.len = 31;
	ck_assert_int_eq(kms_root_operation_check(&op, &err), KMS_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "X25519") != NULL, "%s", err.msg);
}
END_TEST

static Suite *keyring_backup_suite(void)
{
	Suite *s = suite_create("keyring_backup");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, a_backup_ring_restores_into_an_empty_ring);
	tcase_add_test(tc, bad_rings_are_refused_and_nothing_backs_up_before_the_probe);
	tcase_add_test(tc, backup_export_encodes_as_documented);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(keyring_backup_suite()));
}
