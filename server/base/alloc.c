/* alloc.c - the one allocation wrapper: secret wiping and test-time failure injection. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms/alloc.h"

/* -1: injection off; otherwise allocations left before they start failing. */
static atomic_long fail_countdown = -1;

static int should_fail(void)
{
	long left = atomic_load(&fail_countdown);

	while (left >= 0) {
		if (left == 0)
			return 1;
		if (atomic_compare_exchange_weak(&fail_countdown, &left, left - 1))
			return 0;
	}
	return 0;
}

void kms_alloc_fail_after(unsigned n)
{
	atomic_store(&fail_countdown, (long)n);
}

void kms_alloc_fail_reset(void)
{
	atomic_store(&fail_countdown, -1);
}

void *kms_malloc(size_t n)
{
	if (should_fail())
		return NULL;
	return malloc(n == 0 ? 1 : n);
}

void *kms_calloc(size_t n, size_t size)
{
	if (should_fail())
		return NULL;
	return calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
}

void *kms_realloc(void *p, size_t n)
{
	if (should_fail())
		return NULL;
	return realloc(p, n == 0 ? 1 : n);
}

char *kms_strndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *d = kms_malloc(len + 1);

	if (d == NULL)
		return NULL;
	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

char *kms_strdup(const char *s)
{
	return kms_strndup(s, strlen(s));
}

void kms_free(void *p)
{
	free(p);
}

void kms_cleanse(void *p, size_t n)
{
	if (p != NULL && n > 0)
		OPENSSL_cleanse(p, n);
}

void kms_free_secret(void *p, size_t n)
{
	kms_cleanse(p, n);
	free(p);
}
