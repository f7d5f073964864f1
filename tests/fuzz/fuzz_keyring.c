/* fuzz_keyring.c - libFuzzer target for the key ring's Raft FSM: apply a command, restore and re-snapshot a snapshot. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/alloc.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Log entries and snapshots reach apply and restore from peers and from disk,
 * so both must refuse any byte string cleanly. Both are also deterministic
 * (Raft thesis 3.1): a snapshot restored and taken again must give the same
 * bytes, or followers that caught up from a snapshot would drift from the
 * leader.
 */

static void *plain_alloc(size_t n)
{
	return malloc(n);
}

static kms_keyring *keyring_new(void)
{
	kms_keyring *kr = NULL;
	kms_err err = {0};

	if (kms_keyring_new(&kr, &err) != KMS_OK)
		abort();
	return kr;
}

/*
 * A key, an alias of it and a member already in the ring, so that the
 * "exists", "update" and "remove" paths of apply, and every lifecycle
 * command, are reachable from a one-command input.
 */
static void keyring_preload(kms_keyring *kr)
{
	static const uint8_t wrapped[40] = {0xa6, 0x59, 0x59, 0xa6};
	kms_buf cmd = {0};
	kms_err err = {0};

	if (kms_keyring_cmd_create_key("fuzz-key", "preloaded", NULL,
				       "spiffe://fuzz/admin", 1700000000,
				       wrapped, sizeof(wrapped), &cmd,
				       &err) != KMS_OK ||
	    kms_keyring_apply(kr, cmd.data, cmd.len, &err) != KMS_OK)
		abort();
	kms_buf_free(&cmd);
	if (kms_keyring_cmd_create_alias("alias/fuzz", "fuzz-key", 1700000000, &cmd, &err) !=
		    KMS_OK ||
	    kms_keyring_apply(kr, cmd.data, cmd.len, &err) != KMS_OK)
		abort();
	kms_buf_free(&cmd);
	if (kms_keyring_cmd_add_member(1, "127.0.0.1:7501", "127.0.0.1:7401", NULL,
				       &cmd, &err) != KMS_OK ||
	    kms_keyring_apply(kr, cmd.data, cmd.len, &err) != KMS_OK)
		abort();
	kms_buf_free(&cmd);
}

static void fuzz_apply(const uint8_t *data, size_t size)
{
	kms_keyring *kr = keyring_new(), *kr2 = NULL;
	kms_buf before = {0}, after = {0}, again = {0};
	kms_err err = {0};
	int rc;

	keyring_preload(kr);
	if (kms_keyring_snapshot(kr, plain_alloc, &before, &err) != KMS_OK)
		abort();
	rc = kms_keyring_apply(kr, data, size, &err);
	if (rc != KMS_OK && err.msg[0] == '\0')
		abort();
	if (kms_keyring_snapshot(kr, plain_alloc, &after, &err) != KMS_OK)
		abort();
	if (rc != KMS_OK) {
		/* A refused command changes nothing. */
		if (before.len != after.len ||
		    memcmp(before.data, after.data, before.len) != 0)
			abort();
	} else {
		/*
		 * Whatever apply accepts, restore accepts back: otherwise a
		 * node could not load its own snapshot after a restart.
		 */
		kr2 = keyring_new();
		if (kms_keyring_restore(kr2, after.data, after.len, &err) !=
			KMS_OK)
			abort();
		if (kms_keyring_count(kr2) != kms_keyring_count(kr) ||
		    kms_keyring_snapshot(kr2, plain_alloc, &again, &err) !=
			KMS_OK ||
		    again.len != after.len ||
		    memcmp(again.data, after.data, after.len) != 0)
			abort();
	}
	free(before.data);
	free(after.data);
	free(again.data);
	kms_keyring_free(kr);
	if (kr2 != NULL)
		kms_keyring_free(kr2);
}

static void fuzz_restore(const uint8_t *data, size_t size)
{
	kms_keyring *kr2 = keyring_new(), *kr3 = NULL;
	kms_buf snap2 = {0}, snap3 = {0};
	kms_member m2[KMS_MEMBERS_MAX], m3[KMS_MEMBERS_MAX];
	uint8_t p2[KMS_WRAPPED_MAX], p3[KMS_WRAPPED_MAX];
	size_t n2, n3, pl2, pl3;
	kms_err err = {0};

	if (kms_keyring_restore(kr2, data, size, &err) != KMS_OK) {
		if (err.msg[0] == '\0' || kms_keyring_count(kr2) != 0)
			abort();
		goto out;
	}
	if (kms_keyring_snapshot(kr2, plain_alloc, &snap2, &err) != KMS_OK)
		abort();
	kr3 = keyring_new();
	if (kms_keyring_restore(kr3, snap2.data, snap2.len, &err) != KMS_OK)
		abort();
	if (kms_keyring_count(kr2) != kms_keyring_count(kr3))
		abort();
	n2 = kms_keyring_members(kr2, m2, KMS_MEMBERS_MAX);
	n3 = kms_keyring_members(kr3, m3, KMS_MEMBERS_MAX);
	if (n2 != n3 || n2 > KMS_MEMBERS_MAX)
		abort();
	for (size_t i = 0; i < n2; i++)
		if (m2[i].id != m3[i].id ||
		    strcmp(m2[i].raft_address, m3[i].raft_address) != 0 ||
		    strcmp(m2[i].grpc_address, m3[i].grpc_address) != 0)
			abort();
	pl2 = kms_keyring_domain_key_probe(kr2, p2);
	pl3 = kms_keyring_domain_key_probe(kr3, p3);
	if (pl2 != pl3 || memcmp(p2, p3, pl2) != 0)
		abort();
	if (kms_keyring_snapshot(kr3, plain_alloc, &snap3, &err) != KMS_OK)
		abort();
	if (snap2.len != snap3.len ||
	    memcmp(snap2.data, snap3.data, snap2.len) != 0)
		abort();
out:
	free(snap2.data);
	free(snap3.data);
	kms_keyring_free(kr2);
	if (kr3 != NULL)
		kms_keyring_free(kr3);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_apply(data, size);
	fuzz_restore(data, size);
	return 0;
}
