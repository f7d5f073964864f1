/* alloc.h - the one allocation wrapper, with secret wiping and failure injection for tests. */
#ifndef KMS_ALLOC_H
#define KMS_ALLOC_H

#include <stddef.h>

/* Same contracts as malloc/calloc/realloc/strdup/free; NULL on failure. */
void *kms_malloc(size_t n);
void *kms_calloc(size_t n, size_t size);
void *kms_realloc(void *p, size_t n);
char *kms_strdup(const char *s);
char *kms_strndup(const char *s, size_t n);
void kms_free(void *p);

/* Overwrites n bytes in a way the compiler cannot elide (OPENSSL_cleanse). */
void kms_cleanse(void *p, size_t n);

/* Cleanses n bytes at p, then frees p. For every buffer that held a secret. */
void kms_free_secret(void *p, size_t n);

/*
 * Test hook: after n more successful allocations, every allocation fails
 * until kms_alloc_fail_reset(). n = 0 fails the next one.
 */
void kms_alloc_fail_after(unsigned n);
void kms_alloc_fail_reset(void);

#endif
