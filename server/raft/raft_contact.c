/* raft_contact.c - when this node last heard from a Raft leader, or as leader from a majority; the staleness check of crypto calls. */
#include <string.h>
#include <time.h>

#include "raft/raft_contact.h"

uint64_t kms_contact_now_ms(void)
{
	struct timespec t;

	/* CLOCK_MONOTONIC cannot fail with a valid pointer (clock_gettime(2)). */
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

void kms_contact_init(kms_contact *c)
{
	memset(c, 0, sizeof(*c));
	atomic_init(&c->last_ms, 0);
	atomic_init(&c->sole_voter, 0);
}

/* Only the Raft thread writes: a load and a store cannot race another write. */
static void publish(kms_contact *c, uint64_t at_ms)
{
	if (at_ms > atomic_load(&c->last_ms))
		atomic_store(&c->last_ms, at_ms);
}

void kms_contact_heard(kms_contact *c, uint64_t now_ms)
{
	publish(c, now_ms);
}

void kms_contact_ack(kms_contact *c, uint64_t term, uint64_t id, uint64_t now_ms)
{
	size_t i;

	if (term != c->term) {
		c->term = term;
		c->n_acks = 0;
	}
	for (i = 0; i < c->n_acks && c->acks[i].id != id; i++)
		;
	if (i == c->n_acks) {
		if (c->n_acks == KMS_CONTACT_MAX_SERVERS)
			return;
		c->n_acks++;
		c->acks[i].id = id;
	}
	c->acks[i].at_ms = now_ms;
}

static uint64_t last_ack(const kms_contact *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_acks; i++)
		if (c->acks[i].id == id)
			return c->acks[i].at_ms;
	return 0;
}

void kms_contact_majority(kms_contact *c, uint64_t self, const uint64_t *voters, size_t n,
			  uint64_t now_ms)
{
	uint64_t at[KMS_CONTACT_MAX_SERVERS];
	size_t majority = n / 2 + 1;

	if (n == 0 || n > KMS_CONTACT_MAX_SERVERS)
		return;
	for (size_t i = 0; i < n; i++)
		at[i] = voters[i] == self ? now_ms : last_ack(c, voters[i]);
	/* Newest first; n is at most 16. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && at[j] > at[j - 1]; j--) {
			uint64_t t = at[j];

			at[j] = at[j - 1];
			at[j - 1] = t;
		}
	/* The majority-th newest answer: by then, a majority had answered. */
	if (at[majority - 1] != 0)
		publish(c, at[majority - 1]);
}

void kms_contact_set_sole_voter(kms_contact *c, int sole)
{
	atomic_store(&c->sole_voter, sole != 0);
}

uint64_t kms_contact_age_ms(const kms_contact *c, uint64_t now_ms)
{
	uint64_t last;

	if (atomic_load(&c->sole_voter))
		return 0;
	last = atomic_load(&c->last_ms);
	if (last == 0)
		return KMS_CONTACT_NEVER;
	/* Published on another thread an instant after now_ms was read. */
	return now_ms > last ? now_ms - last : 0;
}

int kms_contact_check(const kms_contact *c, unsigned node_id, unsigned max_staleness_s,
		      uint64_t now_ms, kms_err *err)
{
	uint64_t age = kms_contact_age_ms(c, now_ms);

	if (age == KMS_CONTACT_NEVER)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"node %u has not heard from a Raft leader since it started "
				"(max_staleness %u s): refusing crypto calls until it joins its "
				"cluster",
				node_id, max_staleness_s);
	if (age > (uint64_t)max_staleness_s * 1000u)
		return kms_errf(err, KMS_ERR_UNAVAILABLE,
				"node %u has not heard from a Raft leader for %.1f s (max_staleness "
				"%u s): refusing crypto calls until it rejoins its cluster",
				node_id, (double)age / 1000.0, max_staleness_s);
	return KMS_OK;
}
