/* hostport.c - host:port as kmsd.conf, the member list, kmsctl and the Raft transport all take it. */
#include <string.h>

#include "kms/hostport.h"

/* sizeof(sockaddr_un.sun_path) - 1 on Linux. */
#define UNIX_PATH_MAX 107

static int host_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_';
}

static int hex_char(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int kms_hostport_check(const char *s, const char *what, kms_err *err)
{
	char q[KMS_QUOTE_MAX + 4];
	const char *colon, *p;
	size_t len;
	unsigned long port = 0;

	if (s == NULL || s[0] == '\0')
		return kms_errf(err, KMS_ERR_INVALID, "%s is empty: want HOST:PORT", what);
	len = strnlen(s, KMS_HOSTPORT_MAX + 1);
	if (len > KMS_HOSTPORT_MAX)
		return kms_errf(err, KMS_ERR_INVALID, "%s is longer than %d bytes", what,
				KMS_HOSTPORT_MAX);
	colon = strrchr(s, ':');
	if (colon == NULL || colon == s)
		return kms_errf(err, KMS_ERR_INVALID, "%s '%s' is not HOST:PORT", what,
				kms_quote(s, q));
	if (s[0] == '[') {
		if (colon - s < 3 || colon[-1] != ']')
			return kms_errf(err, KMS_ERR_INVALID,
					"%s '%s': an IPv6 host is written [ADDRESS]:PORT", what,
					kms_quote(s, q));
		for (p = s + 1; p < colon - 1; p++)
			if (*p != ':' && *p != '.' && !hex_char((unsigned char)*p))
				return kms_errf(err, KMS_ERR_INVALID,
						"%s '%s': the IPv6 address has a character "
						"outside [0-9a-fA-F:.]",
						what, kms_quote(s, q));
	} else {
		for (p = s; p < colon; p++)
			if (!host_char((unsigned char)*p))
				return kms_errf(err, KMS_ERR_INVALID,
						"%s '%s': the host has a character outside "
						"[A-Za-z0-9._-]",
						what, kms_quote(s, q));
	}
	p = colon + 1;
	if (*p < '1' || *p > '9')
		return kms_errf(err, KMS_ERR_INVALID,
				"%s '%s': the port must be a number from 1 to 65535", what,
				kms_quote(s, q));
	for (; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || port > 65535)
			return kms_errf(err, KMS_ERR_INVALID,
					"%s '%s': the port must be a number from 1 to 65535", what,
					kms_quote(s, q));
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port > 65535)
		return kms_errf(err, KMS_ERR_INVALID,
				"%s '%s': the port must be a number from 1 to 65535", what,
				kms_quote(s, q));
	return KMS_OK;
}

int kms_hostport_check_listen(const char *s, const char *what, kms_err *err)
{
	if (s != NULL && strncmp(s, "unix:", 5) == 0) {
		size_t n = strnlen(s + 5, UNIX_PATH_MAX + 1);

		if (n == 0 || n > UNIX_PATH_MAX)
			return kms_errf(err, KMS_ERR_INVALID,
					"%s: a Unix socket path is 1 to %d bytes", what,
					UNIX_PATH_MAX);
		for (const char *p = s + 5; *p != '\0'; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				return kms_errf(err, KMS_ERR_INVALID,
						"%s: the Unix socket path holds a control character",
						what);
		return KMS_OK;
	}
	return kms_hostport_check(s, what, err);
}
