/* keyring_policies.c - key policies interned: one shared, reference-counted copy per distinct policy. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/*
 * Why: a key's policy (its grants, principals and operation names) was a
 * third of each key's block, and keys are mostly made by a few services
 * with the same few policies. Entries hold a reference to one immutable
 * copy per distinct policy instead; a policy is identified by its packed
 * bytes, which protobuf-c produces the same for equal messages.
 *
 * One table for the process, not one per key ring: an entry is freed
 * (kr_entries_drop) where its key ring is not at hand, and equal policies
 * are interchangeable between key rings. The mutex is taken by the Raft
 * thread's apply and restore and by kms_keyring_free, never by a reader:
 * readers use rec->policy under the key ring's lock, and an entry's
 * reference keeps it alive.
 */

struct kr_policy {
	struct kr_policy *next; /* the bucket's chain */
	uint64_t hash;
	size_t refs;
	Kms__V1__KeyPolicy *policy; /* a flat copy, in the same block */
	size_t packed_len;
	uint8_t packed[];
};

static struct {
	pthread_mutex_t lock;
	struct kr_policy **buckets;
	size_t n_buckets; /* a power of two, or 0 */
	size_t n;
} table = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3u;
	}
	return h;
}

/* Doubles the buckets when they hold as many policies; a failure only
 * leaves the chains longer. */
static void maybe_grow(void)
{
	size_t nb = table.n_buckets ? table.n_buckets * 2 : 64;
	struct kr_policy **b;

	if (table.n < table.n_buckets)
		return;
	b = kms_calloc(nb, sizeof(*b));
	if (b == NULL)
		return;
	for (size_t i = 0; i < table.n_buckets; i++) {
		struct kr_policy *p = table.buckets[i], *next;

		for (; p != NULL; p = next) {
			next = p->next;
			p->next = b[p->hash & (nb - 1)];
			b[p->hash & (nb - 1)] = p;
		}
	}
	kms_free(table.buckets);
	table.buckets = b;
	table.n_buckets = nb;
}

static struct kr_policy *policy_new(const Kms__V1__KeyPolicy *policy, const uint8_t *packed,
				    size_t len, uint64_t hash, kms_err *err)
{
	struct kr_policy *p;
	ProtobufCMessage *copy;
	void *head;
	size_t head_len = sizeof(*p) + len;

	/* The header and packed bytes go in the copy's extra space. */
	if (kr_flat_copy(&policy->base, NULL, head_len, &copy, &head, err) != KMS_OK)
		return NULL;
	p = head;
	p->next = NULL;
	p->hash = hash;
	p->refs = 1;
	p->policy = (Kms__V1__KeyPolicy *)copy;
	p->packed_len = len;
	memcpy(p->packed, packed, len);
	return p;
}

int kr_policy_intern(const Kms__V1__KeyPolicy *policy, struct kr_policy **out, kms_err *err)
{
	uint8_t stack[512], *packed = stack;
	size_t len;
	uint64_t hash;
	struct kr_policy *p;
	int rc = KMS_OK;

	*out = NULL;
	if (policy == NULL)
		return KMS_OK;
	len = protobuf_c_message_get_packed_size(&policy->base);
	if (len > sizeof(stack) && (packed = kms_malloc(len)) == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory copying a key policy");
	if (protobuf_c_message_pack(&policy->base, packed) != len) {
		rc = kms_errf(err, KMS_ERR_INTERNAL, "packing a key policy gave a wrong size");
		goto out;
	}
	hash = fnv1a(packed, len);
	pthread_mutex_lock(&table.lock);
	for (p = table.n_buckets ? table.buckets[hash & (table.n_buckets - 1)] : NULL; p != NULL;
	     p = p->next)
		if (p->hash == hash && p->packed_len == len && memcmp(p->packed, packed, len) == 0)
			break;
	if (p != NULL) {
		p->refs++;
	} else {
		maybe_grow();
		if (table.n_buckets == 0) {
			rc = kms_errf(err, KMS_ERR_NOMEM, "out of memory copying a key policy");
		} else if ((p = policy_new(policy, packed, len, hash, err)) == NULL) {
			rc = KMS_ERR_NOMEM; /* kr_flat_copy said so in err */
		} else {
			p->next = table.buckets[hash & (table.n_buckets - 1)];
			table.buckets[hash & (table.n_buckets - 1)] = p;
			table.n++;
		}
	}
	pthread_mutex_unlock(&table.lock);
	*out = p;
out:
	if (packed != stack)
		kms_free(packed);
	return rc;
}

void kr_policy_release(struct kr_policy *p)
{
	struct kr_policy **link;

	if (p == NULL)
		return;
	pthread_mutex_lock(&table.lock);
	if (--p->refs > 0) {
		pthread_mutex_unlock(&table.lock);
		return;
	}
	for (link = &table.buckets[p->hash & (table.n_buckets - 1)]; *link != p;
	     link = &(*link)->next)
		;
	*link = p->next;
	table.n--;
	pthread_mutex_unlock(&table.lock);
	/* The header lives in the copy's block. */
	kms_free(p->policy);
}

const Kms__V1__KeyPolicy *kr_policy_get(const struct kr_policy *p)
{
	return p != NULL ? p->policy : NULL;
}
