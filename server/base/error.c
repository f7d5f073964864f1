/* error.c - status names and the caller-owned error detail. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kms/error.h"

static const char *const status_names[KMS_STATUS_COUNT] = {
	[KMS_OK] = "ok",
	[KMS_ERR_INVALID] = "invalid argument",
	[KMS_ERR_NOT_FOUND] = "not found",
	[KMS_ERR_EXISTS] = "already exists",
	[KMS_ERR_PERMISSION] = "permission denied",
	[KMS_ERR_UNAUTHENTICATED] = "unauthenticated",
	[KMS_ERR_AUTH_FAILED] = "authentication failed",
	[KMS_ERR_PRECONDITION] = "failed precondition",
	[KMS_ERR_UNAVAILABLE] = "unavailable",
	[KMS_ERR_HSM] = "HSM error",
	[KMS_ERR_CONFIG] = "configuration error",
	[KMS_ERR_IO] = "I/O error",
	[KMS_ERR_NOMEM] = "out of memory",
	[KMS_ERR_INTERNAL] = "internal error",
	[KMS_ERR_LIMIT] = "over a limit",
	[KMS_ERR_DEADLINE] = "deadline exceeded",
	[KMS_ERR_UNIMPLEMENTED] = "not implemented",
};

const char *kms_strerror(int code)
{
	if (code < 0 || code >= KMS_STATUS_COUNT || status_names[code] == NULL)
		return "unknown status";
	return status_names[code];
}

int kms_errf(kms_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

/* Appends as much of s as fits, keeping room for the terminating NUL. */
static size_t append(char *dst, size_t at, const char *s)
{
	size_t n = strnlen(s, KMS_ERRMSG_SIZE);

	if (n > KMS_ERRMSG_SIZE - 1 - at)
		n = KMS_ERRMSG_SIZE - 1 - at;
	memcpy(dst + at, s, n);
	return at + n;
}

int kms_err_prefix(kms_err *err, const char *prefix)
{
	char tmp[KMS_ERRMSG_SIZE];
	size_t at;

	if (err == NULL)
		return KMS_ERR_INTERNAL;
	/* Like snprintf("%s: %s") cut at the buffer's end, without gcc's
	 * truncation warning: the message is bounded by design. */
	at = append(tmp, 0, prefix);
	at = append(tmp, at, ": ");
	at = append(tmp, at, err->msg);
	tmp[at] = '\0';
	memcpy(err->msg, tmp, sizeof(tmp));
	return err->code;
}

void kms_err_clear(kms_err *err)
{
	if (err == NULL)
		return;
	err->code = KMS_OK;
	err->msg[0] = '\0';
}

const char *kms_quote(const char *s, char out[KMS_QUOTE_MAX + 4])
{
	size_t i;

	for (i = 0; s[i] != '\0' && i < KMS_QUOTE_MAX; i++)
		out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i] != '\0') {
		memcpy(out + i, "...", 3);
		i += 3;
	}
	out[i] = '\0';
	return out;
}
