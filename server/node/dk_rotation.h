/* dk_rotation.h - domain-key rotation on one node: the root operation that
 * starts it, the steps each node takes on its own, and the domain keys this
 * node's token holds. */
#ifndef KMS_DK_ROTATION_H
#define KMS_DK_ROTATION_H

#include <stdint.h>

#include "kms/buf.h"
#include "kms/error.h"
#include "kms/hsm.h"

struct kms_node;
struct kms_dk_rotation;

/*
 * The root operation (issue #6): on the leader, generates the domain key
 * of the next generation in this node's HSM, a probe under it, and commits
 * BeginDomainKeyRotation for the approved proposal proposal_id, which the
 * state records; *generation is the new one. The rest runs on
 * every node's supervisor (kms_dk_rotation_tick): the members receive the
 * new key HSM to HSM, the leader switches the cluster to it, and each node
 * destroys its old key. KMS_ERR_PRECONDITION while a rotation is in
 * progress (or another call is starting one); KMS_ERR_UNAVAILABLE off the
 * leader. A key made for a Begin that fails is destroyed again. Worker
 * threads only (it waits for the commit).
 */
int kms_dk_rotation_begin(struct kms_node *node, const char *proposal_id, uint32_t *generation,
			  kms_err *err);

/* Ends the rotation in progress before its switch (leader, worker thread). */
int kms_dk_rotation_abort(struct kms_node *node, uint32_t *generation, kms_err *err);

/* Loads the domain keys of the token (all generations); the node's
 * domain_key must be set (find_domain_key). */
int kms_dk_rotation_new(struct kms_node *node, struct kms_dk_rotation **out,
			kms_err *err);
void kms_dk_rotation_free(struct kms_dk_rotation *r);

/*
 * One pass of this node's part, on the supervisor thread: keeps the
 * node's current and alternate domain keys in step with the replicated
 * generation; receives the new key of a rotation (grant, fetch, install,
 * confirm); on the leader, switches once every member holds it; destroys
 * the old key once switched (and stray keys of aborted or unrecorded
 * generations) and confirms. Each step is idempotent, so a node restarted
 * at any point picks up where the state says it is.
 */
void kms_dk_rotation_tick(struct kms_dk_rotation *r);

/*
 * True when the probe may be checked now: the current domain key is of
 * the state's generation. *fatal is set when it never will be (the token
 * holds no key of that generation nor a newer one).
 */
int kms_dk_probe_checkable(struct kms_dk_rotation *r, int *fatal);

/* The current domain key and its generation, read together (any thread). */
void kms_dk_current(struct kms_node *node, kms_hsm_key *dk, uint32_t *gen);

/* Records a domain key installed by a join (supervisor). */
void kms_dk_add_held(struct kms_node *node, uint32_t gen, kms_hsm_key dk);

/* The handle of generation gen in this token, or 0 (any thread). */
kms_hsm_key kms_dk_held(struct kms_node *node, uint32_t gen);

/* The generations in the token now (a fresh look), ascending. */
int kms_dk_token_generations(struct kms_node *node, uint32_t *gens, size_t max,
			     size_t *n, kms_err *err);

#endif
