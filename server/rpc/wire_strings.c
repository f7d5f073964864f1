/* wire_strings.c - a small protobuf wire-format walker that finds NUL bytes in string fields. */
#include <stdio.h>
#include <string.h>

#include "rpc/wire_strings.h"

/* Requests are at most a few levels deep; a deeper one is not ours. */
#define MAX_DEPTH 8
#define PATH_MAX_LEN 128

enum { WT_VARINT = 0, WT_64BIT = 1, WT_LEN = 2, WT_32BIT = 5 };

/* 1 and *v on success, 0 when the varint is cut or longer than 10 bytes. */
static int read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *v)
{
	uint64_t x = 0;

	for (unsigned shift = 0; shift < 70 && *pos < len; shift += 7) {
		uint8_t b = buf[(*pos)++];

		x |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*v = x;
			return 1;
		}
	}
	return 0;
}

static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
		char *path, size_t path_len, unsigned depth, kms_err *err)
{
	size_t pos = 0;

	if (depth > MAX_DEPTH)
		return KMS_OK;
	while (pos < len) {
		uint64_t tag, n;
		const ProtobufCFieldDescriptor *f;
		size_t start;
		int here;

		if (!read_varint(buf, len, &pos, &tag))
			return KMS_OK; /* malformed: the unpacker says so */
		switch (tag & 7) {
		case WT_VARINT:
			if (!read_varint(buf, len, &pos, &n))
				return KMS_OK;
			continue;
		case WT_64BIT:
			if (len - pos < 8)
				return KMS_OK;
			pos += 8;
			continue;
		case WT_32BIT:
			if (len - pos < 4)
				return KMS_OK;
			pos += 4;
			continue;
		case WT_LEN:
			break;
		default:
			return KMS_OK;
		}
		if (!read_varint(buf, len, &pos, &n) || n > len - pos)
			return KMS_OK;
		start = pos;
		pos += (size_t)n;
		f = tag >> 3 <= UINT32_MAX
			    ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3))
			    : NULL;
		if (f == NULL)
			continue;
		here = snprintf(path + path_len, PATH_MAX_LEN - path_len, "%s%s",
				path_len > 0 ? "." : "", f->name);
		if (here < 0 || (size_t)here >= PATH_MAX_LEN - path_len)
			here = 0;
		if (f->type == PROTOBUF_C_TYPE_STRING) {
			const uint8_t *nul = memchr(buf + start, 0, (size_t)n);

			if (nul != NULL)
				return kms_errf(err, KMS_ERR_INVALID,
						"field '%s' holds a NUL byte at position %zu: "
						"strings must not contain NUL",
						path, (size_t)(nul - (buf + start)) + 1);
		} else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
			KMS_TRY(walk(f->descriptor, buf + start, (size_t)n, path,
				     path_len + (size_t)here, depth + 1, err));
		}
		path[path_len] = '\0';
	}
	return KMS_OK;
}

int kms_wire_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
			   size_t len, kms_err *err)
{
	char path[PATH_MAX_LEN] = "";

	if (desc == NULL || buf == NULL)
		return KMS_OK;
	return walk(desc, buf, len, path, 0, 0, err);
}
