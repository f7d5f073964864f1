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

/*
 * Steps over the field at *pos: 1 with its tag and, for a length-delimited
 * field, its bytes at *start (*n of them); 0 at the end, and on bytes that
 * do not parse (groups, cut fields), which are left to the unpacker.
 */
static int next_field(const uint8_t *buf, size_t len, size_t *pos, uint64_t *tag, size_t *start,
		      uint64_t *n)
{
	if (*pos >= len || !read_varint(buf, len, pos, tag))
		return 0;
	switch (*tag & 7) {
	case WT_VARINT:
		return read_varint(buf, len, pos, n);
	case WT_64BIT:
	case WT_32BIT:
		*n = (*tag & 7) == WT_64BIT ? 8 : 4;
		if (len - *pos < *n)
			return 0;
		*pos += (size_t)*n;
		return 1;
	case WT_LEN:
		if (!read_varint(buf, len, pos, n) || *n > len - *pos)
			return 0;
		*start = *pos;
		*pos += (size_t)*n;
		return 1;
	default:
		return 0;
	}
}

static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
		char *path, size_t path_len, unsigned depth, kms_err *err)
{
	size_t pos = 0, start = 0;
	uint64_t tag, n;

	if (depth > MAX_DEPTH)
		return KMS_OK;
	while (next_field(buf, len, &pos, &tag, &start, &n)) {
		const ProtobufCFieldDescriptor *f;
		int here;

		if ((tag & 7) != WT_LEN)
			continue;
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

size_t kms_wire_check_items(const ProtobufCMessageDescriptor *item, uint32_t field,
			    const uint8_t *buf, size_t len, kms_wire_bad_item_fn bad, void *arg)
{
	size_t pos = 0, start = 0, index = 0;
	uint64_t tag, n;

	if (item == NULL || buf == NULL)
		return 0;
	while (next_field(buf, len, &pos, &tag, &start, &n)) {
		kms_err err = {0};

		if ((tag & 7) != WT_LEN || tag >> 3 != field)
			continue;
		if (bad != NULL &&
		    kms_wire_check_strings(item, buf + start, (size_t)n, &err) != KMS_OK)
			bad(arg, index, &err);
		index++;
	}
	return index;
}
