/* keyring_dk.h - the replicated state of the domain key: its generation and a rotation in progress (issue #6). */
#ifndef KMS_KEYRING_DK_H
#define KMS_KEYRING_DK_H

#include <stddef.h>
#include <stdint.h>

#include "kms/blob.h"
#include "kms/buf.h"
#include "kms/error.h"
#include "kms/keyring.h"

/*
 * A rotation moves the cluster from the domain key of generation g to a
 * new one, g + 1, in four kinds of steps, each a Raft command:
 *   Begin      the node that generated the new key (and the new probe under
 *              it) starts the rotation; it is the first holder.
 *   Grant, Consume, Confirm(INSTALLED)
 *              each other member receives the new key HSM to HSM, as a
 *              joining node does: a one-time grant for its transport key,
 *              used once, then its confirmation that the key is installed.
 *   Switch     once every member holds it: every version's material and
 *              the probe change to the new wrap in one commit.
 *   Confirm(OLD_DESTROYED)
 *              each member destroyed the old key; with the last one the
 *              rotation is over.
 * Abort ends a rotation before its switch. Generations only grow (an
 * aborted one is never reused). CreateKey and RotateKey name the
 * generation their material is under, and are refused unless it is the
 * current one, so no material under an old key lands after a switch.
 *
 * Every rule is decided alike on every node, from the command and the
 * state alone (keyring_domain_key.c); a refused command changes nothing.
 */

typedef struct kms_dk_grant {
	uint64_t node_id;
	uint8_t transport_key_sha256[KMS_FINGERPRINT_LEN];
	int used;
} kms_dk_grant;

/* The longest proposal id a rotation records. */
#define KMS_DK_PROPOSAL_ID_MAX 64

typedef struct kms_dk_state {
	uint32_t generation; /* >= 1 */
	uint32_t highest;    /* >= generation */
	int64_t last_rotated_at_unix;
	char proposal_id[KMS_DK_PROPOSAL_ID_MAX + 1]; /* of the last rotation begun */
	int rotating; /* a rotation is in progress: the fields below */
	uint32_t rot_generation;
	uint8_t probe[KMS_WRAPPED_MAX];
	size_t probe_len;
	uint64_t started_by;
	int64_t started_at_unix;
	uint64_t installed[KMS_MEMBERS_MAX];
	size_t n_installed;
	kms_dk_grant grants[KMS_MEMBERS_MAX];
	size_t n_grants;
	int switched;
	int64_t switched_at_unix;
	uint64_t destroyed[KMS_MEMBERS_MAX];
	size_t n_destroyed;
} kms_dk_state;

/* A copy of the state (any thread). */
void kms_keyring_dk_state(kms_keyring *kr, kms_dk_state *out);

/* True if id is among the n ids (installed, destroyed). */
int kms_dk_has(const uint64_t *ids, size_t n, uint64_t id);

/* The grant of node id, or NULL. */
const kms_dk_grant *kms_dk_grant_of(const kms_dk_state *s, uint64_t id);

/* Commands (out->data kms_malloc'd, the caller's); the same input checks
 * as apply. stage: 0 installed, 1 old key destroyed. */
int kms_keyring_cmd_dk_begin(uint32_t generation, const uint8_t *probe, size_t probe_len,
			     uint64_t node_id, int64_t now_unix, kms_buf *out, kms_err *err);
/* The same, for the approved proposal proposal_id (NULL: none). */
int kms_keyring_cmd_dk_begin_for(uint32_t generation, const uint8_t *probe, size_t probe_len,
				 uint64_t node_id, int64_t now_unix, const char *proposal_id,
				 kms_buf *out, kms_err *err);
int kms_keyring_cmd_dk_grant(uint64_t node_id, uint32_t generation,
			     const uint8_t fp[KMS_FINGERPRINT_LEN], kms_buf *out, kms_err *err);
int kms_keyring_cmd_dk_consume(uint64_t node_id, uint32_t generation,
			       const uint8_t fp[KMS_FINGERPRINT_LEN], kms_buf *out, kms_err *err);
#define KMS_DK_INSTALLED 0
#define KMS_DK_OLD_DESTROYED 1
int kms_keyring_cmd_dk_confirm(uint64_t node_id, uint32_t generation, int stage, kms_buf *out,
			       kms_err *err);
int kms_keyring_cmd_dk_abort(uint32_t generation, kms_buf *out, kms_err *err);

/* One version's material, for the switch. */
typedef struct kms_wrapped_version {
	char key_id[KMS_KEY_ID_MAX + 1];
	uint32_t version;
	uint8_t wrapped[KMS_WRAPPED_MAX];
	size_t len;
} kms_wrapped_version;

/*
 * Every version that is not destroyed, in key-ring order, as of now:
 * *out is kms_malloc'd (the caller's, kms_free), *n of them.
 */
int kms_keyring_wrapped_versions(kms_keyring *kr, kms_wrapped_version **out, size_t *n,
				 kms_err *err);
int kms_keyring_cmd_dk_switch(uint32_t generation, const kms_wrapped_version *v, size_t n,
			      int64_t now_unix, kms_buf *out, kms_err *err);

/*
 * Sets the domain-key generation a serialized CreateKey or RotateKey
 * command's material is under (rewrites *cmd). Other commands: KMS_ERR_INVALID.
 */
int kms_keyring_cmd_set_dk_generation(kms_buf *cmd, uint32_t generation, kms_err *err);

#endif
