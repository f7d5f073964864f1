/* test_backup_file.c - Check suite for the backup file: Shamir M of N with libgfshare, sealing to custodians, share files, and the refusals of a restore. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "kms/alloc.h"
#include "kms/backup_file.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "check_run.h"

#define N 3
#define M 2

#define ASSERT_MSG_HAS(err, s)                                                                    \
	ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' does not name '%s'",          \
		      (err).msg, (s))

static const char *names[N] = {"alice", "bob", "carol"};
static uint8_t privs[N][KMS_X25519_LEN];
static kms_backup_custodian cust[N];
static uint8_t key[KMS_BACKUP_KEY_LEN];
static const uint8_t cid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t wrapped_dk[40] = {0xaa, 0xbb};
static const uint8_t ring[] = "a key ring, wrapped";
static kms_buf file;

static void make_custodian(size_t i)
{
	EVP_PKEY_CTX *g = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);
	EVP_PKEY *k = NULL;
	size_t n = KMS_X25519_LEN;

	ck_assert(g != NULL && EVP_PKEY_keygen_init(g) == 1 && EVP_PKEY_keygen(g, &k) == 1);
	ck_assert(EVP_PKEY_get_raw_private_key(k, privs[i], &n) == 1);
	n = KMS_X25519_LEN;
	ck_assert(EVP_PKEY_get_raw_public_key(k, cust[i].public_key, &n) == 1);
	cust[i].name = names[i];
	EVP_PKEY_free(k);
	EVP_PKEY_CTX_free(g);
}

static void content(kms_backup_content *c, uint32_t m)
{
	memset(c, 0, sizeof(*c));
	ck_assert(RAND_bytes(c->backup_id, KMS_BACKUP_ID_LEN) == 1);
	c->cluster_id = cid;
	c->cluster_id_len = sizeof(cid);
	c->proposal_id = "0123456789abcdef0123456789abcdef";
	c->created_at_unix = 1700000000;
	c->threshold = m;
	c->custodians = cust;
	c->n_custodians = N;
	c->domain_key_generation = 3;
	c->wrapped_domain_key = wrapped_dk;
	c->wrapped_domain_key_len = sizeof(wrapped_dk);
	c->key_ring = ring;
	c->key_ring_len = sizeof(ring);
}

static void setup(void)
{
	kms_backup_content c;
	kms_err err = {0};

	for (size_t i = 0; i < N; i++)
		make_custodian(i);
	ck_assert(RAND_bytes(key, sizeof(key)) == 1);
	content(&c, M);
	ck_assert_int_eq(kms_backup_build(&c, key, &file, &err), KMS_OK);
}

static void teardown(void)
{
	kms_buf_free(&file);
}

static void unseal(const kms_buf *f, size_t i, kms_backup_share *out)
{
	kms_backup b;
	kms_err err = {0};

	ck_assert_int_eq(kms_backup_parse(f->data, f->len, &b, &err), KMS_OK);
	ck_assert_msg(kms_backup_unseal_share(&b, names[i], privs[i], out, &err) == KMS_OK, "%s",
		      err.msg);
	kms_backup_free(&b);
}

/* Opens the global file with the shares of custodians idx[0..n). */
static int open_with(const kms_buf *f, const size_t *idx, size_t n, uint8_t out[32],
		     kms_err *err)
{
	kms_backup_share sh[N];
	kms_backup b;
	int rc;

	for (size_t i = 0; i < n; i++)
		unseal(f, idx[i], &sh[i]);
	rc = kms_backup_parse(f->data, f->len, &b, err);
	if (rc == KMS_OK)
		rc = kms_backup_open(&b, sh, n, out, err);
	kms_backup_free(&b);
	return rc;
}

START_TEST(any_m_of_n_shares_rebuild_the_key)
{
	static const size_t sets[][M] = {{0, 1}, {1, 2}, {2, 0}};
	uint8_t out[32];
	kms_err err = {0};

	for (size_t s = 0; s < 3; s++) {
		ck_assert_msg(open_with(&file, sets[s], M, out, &err) == KMS_OK, "%s", err.msg);
		ck_assert_mem_eq(out, key, sizeof(key));
	}
	{
		const size_t all[N] = {0, 1, 2};

		ck_assert_int_eq(open_with(&file, all, N, out, &err), KMS_OK);
		ck_assert_mem_eq(out, key, sizeof(key));
	}
}
END_TEST

START_TEST(m_minus_one_shares_are_refused)
{
	const size_t one[1] = {2};
	uint8_t out[32];
	kms_err err = {0};

	ck_assert_int_eq(open_with(&file, one, 1, out, &err), KMS_ERR_PRECONDITION);
	ASSERT_MSG_HAS(err, "needs 2 shares to restore, 1 given");
}
END_TEST

START_TEST(a_share_does_not_unseal_with_another_custodians_key)
{
	kms_backup b;
	kms_backup_share s;
	kms_err err = {0};

	ck_assert_int_eq(kms_backup_parse(file.data, file.len, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_unseal_share(&b, "alice", privs[1], &s, &err),
			 KMS_ERR_AUTH_FAILED);
	ASSERT_MSG_HAS(err, "does not open with this private key");
	ck_assert_int_eq(kms_backup_unseal_share(&b, "dave", privs[0], &s, &err), KMS_ERR_NOT_FOUND);
	ASSERT_MSG_HAS(err, "no share for custodian 'dave'");
	kms_backup_free(&b);
}
END_TEST

START_TEST(a_wrong_or_foreign_share_is_named)
{
	kms_backup_share sh[M];
	kms_backup b;
	kms_buf other = {0};
	kms_backup_content c;
	uint8_t out[32];
	kms_err err = {0};

	unseal(&file, 0, &sh[0]);
	unseal(&file, 1, &sh[1]);
	sh[1].share[5] ^= 1;
	ck_assert_int_eq(kms_backup_parse(file.data, file.len, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_open(&b, sh, M, out, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "custodian 'bob''s (index 2) is wrong");
	/* bob's share of another backup of the same key */
	content(&c, M);
	ck_assert_int_eq(kms_backup_build(&c, key, &other, &err), KMS_OK);
	unseal(&other, 1, &sh[1]);
	ck_assert_int_eq(kms_backup_open(&b, sh, M, out, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "belongs to backup");
	ASSERT_MSG_HAS(err, "not to this backup");
	/* the same share twice counts once */
	sh[1] = sh[0];
	ck_assert_int_eq(kms_backup_open(&b, sh, M, out, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "given twice");
	kms_backup_free(&b);
	kms_buf_free(&other);
}
END_TEST

/* The checksum refuses a flipped byte anywhere. */
START_TEST(a_flipped_byte_anywhere_is_refused)
{
	const size_t idx[M] = {0, 1};
	kms_backup_share sh[M];
	kms_backup b;
	kms_err err = {0};

	unseal(&file, 0, &sh[0]);
	unseal(&file, 1, &sh[1]);
	for (size_t at = 0; at < file.len; at++) {
		uint8_t out[32];
		int rc;

		file.data[at] ^= 0x10;
		rc = kms_backup_parse(file.data, file.len, &b, &err);
		if (rc == KMS_OK) {
			rc = kms_backup_open(&b, sh, M, out, &err);
			kms_backup_free(&b);
		}
		ck_assert_msg(rc != KMS_OK, "a flip at byte %zu was not refused", at);
		file.data[at] ^= 0x10;
	}
	{
		uint8_t out[32];

		ck_assert_int_eq(open_with(&file, idx, M, out, &err), KMS_OK);
	}
}
END_TEST

/*
 * A changed body with a recomputed checksum (an attacker, not an accident)
 * parses, and the HMAC under the rebuilt key refuses it.
 */
START_TEST(a_rechecksummed_change_fails_the_hmac)
{
	kms_backup_share sh[M];
	kms_backup b;
	uint8_t out[32];
	kms_err err = {0};
	size_t at;

	unseal(&file, 0, &sh[0]);
	unseal(&file, 1, &sh[1]);
	/* a byte of the key ring's text, in the body */
	for (at = 0; at + sizeof(ring) - 1 <= file.len; at++)
		if (memcmp(file.data + at, ring, sizeof(ring) - 1) == 0)
			break;
	ck_assert(at + sizeof(ring) - 1 <= file.len);
	file.data[at] ^= 1;
	EVP_Digest(file.data, file.len - 32, file.data + file.len - 32, NULL, EVP_sha256(), NULL);
	ck_assert_int_eq(kms_backup_parse(file.data, file.len, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_open(&b, sh, M, out, &err), KMS_ERR_AUTH_FAILED);
	ASSERT_MSG_HAS(err, "was changed: its HMAC does not verify");
	kms_backup_free(&b);
}
END_TEST

START_TEST(share_files_round_trip_and_refuse_damage)
{
	kms_backup_share s, back;
	kms_buf enc = {0};
	kms_err err = {0};

	unseal(&file, 2, &s);
	ck_assert_int_eq(kms_backup_share_encode(&s, &enc, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_share_decode(enc.data, enc.len, &back, &err), KMS_OK);
	ck_assert_mem_eq(&back.share, &s.share, sizeof(s.share));
	ck_assert_str_eq(back.custodian, "carol");
	ck_assert_int_eq(back.index, 3);
	enc.data[enc.len - 40] ^= 1;
	ck_assert_int_eq(kms_backup_share_decode(enc.data, enc.len, &back, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "damaged or was changed");
	ck_assert_int_eq(kms_backup_share_decode(enc.data, enc.len - 1, &back, &err),
			 KMS_ERR_INVALID);
	ck_assert_int_eq(kms_backup_share_decode(file.data, file.len, &back, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "not an unsealed backup share");
	kms_buf_free_secret(&enc);
}
END_TEST

START_TEST(bad_custodian_lists_are_refused)
{
	kms_backup_custodian two[2];
	kms_err err = {0};

	ck_assert_int_eq(kms_backup_custodians_check(cust, N, 4, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "it must be 1..3");
	ck_assert_int_eq(kms_backup_custodians_check(cust, N, 0, &err), KMS_ERR_INVALID);
	two[0] = cust[0];
	two[1] = cust[1];
	two[1].name = "alice";
	ck_assert_int_eq(kms_backup_custodians_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "listed twice");
	two[1] = cust[0];
	two[1].name = "bob";
	ck_assert_int_eq(kms_backup_custodians_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "same key");
	two[1].name = "Bob!";
	ck_assert_int_eq(kms_backup_custodians_check(two, 2, 1, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "custodian");
}
END_TEST

START_TEST(garbage_is_not_a_backup)
{
	kms_backup b;
	kms_err err = {0};
	uint8_t junk[100] = {0};

	ck_assert_int_eq(kms_backup_parse(junk, sizeof(junk), &b, &err), KMS_ERR_INVALID);
	ASSERT_MSG_HAS(err, "not a kmsd backup file");
	ck_assert_int_eq(kms_backup_parse(file.data, 20, &b, &err), KMS_ERR_INVALID);
	ck_assert_int_eq(kms_backup_parse(file.data, file.len - 1, &b, &err), KMS_ERR_AUTH_FAILED);
	ASSERT_MSG_HAS(err, "damaged or was changed");
}
END_TEST

/* One custodian with M = 1, and 16 with M = 16: the ends of the range. */
START_TEST(the_ends_of_the_range_work)
{
	kms_backup_custodian many[KMS_BACKUP_CUSTODIANS_MAX];
	uint8_t mp[KMS_BACKUP_CUSTODIANS_MAX][KMS_X25519_LEN];
	char nm[KMS_BACKUP_CUSTODIANS_MAX][8];
	kms_backup_share sh[KMS_BACKUP_CUSTODIANS_MAX];
	kms_backup_content c;
	kms_buf f = {0};
	kms_backup b;
	uint8_t out[32];
	kms_err err = {0};

	for (size_t i = 0; i < KMS_BACKUP_CUSTODIANS_MAX; i++) {
		make_custodian(0);
		many[i] = cust[0];
		memcpy(mp[i], privs[0], KMS_X25519_LEN);
		snprintf(nm[i], sizeof(nm[i]), "c%zu", i);
		many[i].name = nm[i];
	}
	content(&c, KMS_BACKUP_CUSTODIANS_MAX);
	c.custodians = many;
	c.n_custodians = KMS_BACKUP_CUSTODIANS_MAX;
	ck_assert_int_eq(kms_backup_build(&c, key, &f, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_parse(f.data, f.len, &b, &err), KMS_OK);
	for (size_t i = 0; i < KMS_BACKUP_CUSTODIANS_MAX; i++)
		ck_assert_int_eq(kms_backup_unseal_share(&b, nm[i], mp[i], &sh[i], &err), KMS_OK);
	ck_assert_int_eq(kms_backup_open(&b, sh, KMS_BACKUP_CUSTODIANS_MAX - 1, out, &err),
			 KMS_ERR_PRECONDITION);
	ck_assert_int_eq(kms_backup_open(&b, sh, KMS_BACKUP_CUSTODIANS_MAX, out, &err), KMS_OK);
	ck_assert_mem_eq(out, key, sizeof(key));
	kms_backup_free(&b);
	kms_buf_free(&f);
	content(&c, 1);
	c.n_custodians = 1;
	ck_assert_int_eq(kms_backup_build(&c, key, &f, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_parse(f.data, f.len, &b, &err), KMS_OK);
	ck_assert_int_eq(kms_backup_unseal_share(&b, cust[0].name, privs[0], &sh[0], &err), KMS_OK);
	ck_assert_int_eq(kms_backup_open(&b, sh, 1, out, &err), KMS_OK);
	ck_assert_mem_eq(out, key, sizeof(key));
	kms_backup_free(&b);
	kms_buf_free(&f);
}
END_TEST

static Suite *backup_file_suite(void)
{
	Suite *s = suite_create("backup_file");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, any_m_of_n_shares_rebuild_the_key);
	tcase_add_test(tc, m_minus_one_shares_are_refused);
	tcase_add_test(tc, a_share_does_not_unseal_with_another_custodians_key);
	tcase_add_test(tc, a_wrong_or_foreign_share_is_named);
	tcase_add_test(tc, a_flipped_byte_anywhere_is_refused);
	tcase_add_test(tc, a_rechecksummed_change_fails_the_hmac);
	tcase_add_test(tc, share_files_round_trip_and_refuse_damage);
	tcase_add_test(tc, bad_custodian_lists_are_refused);
	tcase_add_test(tc, garbage_is_not_a_backup);
	tcase_add_test(tc, the_ends_of_the_range_work);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return kms_check_run(srunner_create(backup_file_suite()));
}
