/* raft_contact.h - when this node last heard from a Raft leader (a leader: from a majority of voters), the bound on how stale its key ring may be when it serves a crypto call. */
#ifndef KMS_RAFT_CONTACT_H
#define KMS_RAFT_CONTACT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/error.h"

/* Voters a leader keeps acknowledgements of (the view's bound, raft_node.h). */
#define KMS_CONTACT_MAX_SERVERS 16
/* kms_contact_age_ms of a node that never heard from a leader. */
#define KMS_CONTACT_NEVER UINT64_MAX

/*
 * The facts come from the Raft thread (raft_node.c, which sees every
 * message raft receives); any thread reads the outcome. Times are
 * milliseconds of CLOCK_MONOTONIC (kms_contact_now_ms), passed in so that
 * the rules below are plain functions of their arguments.
 *
 * A follower has heard from its leader when an AppendEntries or an
 * InstallSnapshot of the current term arrives from it (heartbeats are
 * empty AppendEntries). A leader counts as heard from when a majority of
 * the voters (itself included) have answered one of its AppendEntries in
 * its term: the time is that of the oldest answer within the newest
 * majority. Winning an election is such a majority too. A sole voter is
 * always its own majority, and never stale.
 */
typedef struct kms_contact {
	/* Raft thread only: the last answer of each voter in term. */
	uint64_t term;
	size_t n_acks;
	struct {
		uint64_t id;
		uint64_t at_ms;
	} acks[KMS_CONTACT_MAX_SERVERS];
	/* Any thread. */
	_Atomic uint64_t last_ms; /* the last contact; 0: none yet */
	atomic_int sole_voter;
} kms_contact;

uint64_t kms_contact_now_ms(void);

/* Zeroes c: no contact yet, not a sole voter. */
void kms_contact_init(kms_contact *c);

/* A follower heard its leader, or this node just won an election. The
 * published time never goes back. */
void kms_contact_heard(kms_contact *c, uint64_t now_ms);

/* Leading in term, this node got an answer from voter id. Answers of an
 * earlier term are forgotten. */
void kms_contact_ack(kms_contact *c, uint64_t term, uint64_t id, uint64_t now_ms);

/*
 * Leading, with voters[0..n) the voting configuration (self among them or
 * not: a leader being removed still counts itself): publishes the time by
 * which a majority of them had last answered, self counting as now.
 */
void kms_contact_majority(kms_contact *c, uint64_t self, const uint64_t *voters, size_t n,
			  uint64_t now_ms);

void kms_contact_set_sole_voter(kms_contact *c, int sole);

/* Milliseconds since the last contact at now_ms: 0 for a sole voter,
 * KMS_CONTACT_NEVER before the first contact. Thread-safe. */
uint64_t kms_contact_age_ms(const kms_contact *c, uint64_t now_ms);

/*
 * KMS_OK while the age at now_ms is at most max_staleness_s seconds, else
 * KMS_ERR_UNAVAILABLE with "node N has not heard from a Raft leader for
 * 7.3 s (max_staleness 5 s): refusing crypto calls until it rejoins its
 * cluster" (or "since it started"). Thread-safe.
 */
int kms_contact_check(const kms_contact *c, unsigned node_id, unsigned max_staleness_s,
		      uint64_t now_ms, kms_err *err);

#endif
