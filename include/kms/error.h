/* error.h - the one status family of kmsd: codes, caller-owned detail, guards. */
#ifndef KMS_ERROR_H
#define KMS_ERROR_H

#include <stddef.h>

/*
 * Every fallible function returns one of these and, when it fails, writes a
 * human sentence into a kms_err the caller owns. The sentence names the
 * problem; it never holds key material, a PIN or a plaintext.
 * The mapping to gRPC status codes lives in one table (server/api/status_map.c).
 */
enum kms_status {
	KMS_OK = 0,
	KMS_ERR_INVALID,      /* malformed or oversized input */
	KMS_ERR_NOT_FOUND,    /* unknown key or version */
	KMS_ERR_EXISTS,       /* a key with that id already exists */
	KMS_ERR_PERMISSION,   /* the policy does not allow it */
	KMS_ERR_UNAUTHENTICATED, /* no usable caller identity */
	KMS_ERR_AUTH_FAILED,  /* ciphertext failed authentication (tampered or wrong context) */
	KMS_ERR_PRECONDITION, /* the key is in a state that refuses the call */
	KMS_ERR_UNAVAILABLE,  /* HSM, Raft leader or quorum not reachable now */
	KMS_ERR_HSM,          /* the HSM refused an operation */
	KMS_ERR_CONFIG,       /* bad configuration */
	KMS_ERR_IO,           /* a file or socket operation failed */
	KMS_ERR_NOMEM,
	KMS_ERR_INTERNAL,     /* a bug or an impossible state */
	KMS_ERR_LIMIT,        /* over a size or count limit of the API */
	KMS_ERR_DEADLINE,     /* the caller's deadline passed before the outcome was known */
	KMS_ERR_UNIMPLEMENTED, /* this build cannot do it (a capability not built in) */
	KMS_STATUS_COUNT
};

#define KMS_ERRMSG_SIZE 256

typedef struct kms_err {
	int code;
	char msg[KMS_ERRMSG_SIZE];
} kms_err;

/* Short fixed name of a status ("not found"); never NULL. */
const char *kms_strerror(int code);

/*
 * Records code and a printf-style message in err (err may be NULL) and
 * returns code, so a failure path reads `return kms_errf(err, ...)`.
 */
int kms_errf(kms_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with "<prefix>: " keeping err->code; returns err->code. */
int kms_err_prefix(kms_err *err, const char *prefix);

void kms_err_clear(kms_err *err);

/* How much of a caller-supplied string an error message may quote. */
#define KMS_QUOTE_MAX 48

/*
 * Copies at most KMS_QUOTE_MAX bytes of s into out ("..." marks a cut), with
 * every byte outside printable ASCII replaced by '?': error messages reach
 * logs and gRPC status details and must not carry control characters from a
 * request. Returns out.
 */
const char *kms_quote(const char *s, char out[KMS_QUOTE_MAX + 4]);

/* Returns the status of expr from the enclosing function when it fails. */
#define KMS_TRY(expr)                                                          \
	do {                                                                   \
		int kms_try_rc_ = (expr);                                      \
		if (kms_try_rc_ != KMS_OK)                                     \
			return kms_try_rc_;                                    \
	} while (0)

/* Stores the status of expr in rc and jumps to label when it fails. */
#define KMS_TRY_GOTO(rc, expr, label)                                          \
	do {                                                                   \
		(rc) = (expr);                                                 \
		if ((rc) != KMS_OK)                                            \
			goto label;                                            \
	} while (0)

/* Fails with code and message unless cond holds. */
#define KMS_ENSURE(cond, err, code, ...)                                       \
	do {                                                                   \
		if (!(cond))                                                   \
			return kms_errf((err), (code), __VA_ARGS__);           \
	} while (0)

#endif
