/* proto_ctx.c - encryption-context map entries for any kms.v1 request (proto_ctx.h). */
#include <string.h>

#include "kms/alloc.h"
#include "proto_ctx.h"

void **ctx_entries(const struct kv *ctx, size_t n,
		   const ProtobufCMessageDescriptor *desc)
{
	const ProtobufCFieldDescriptor *fk =
	    protobuf_c_message_descriptor_get_field_by_name(desc, "key");
	const ProtobufCFieldDescriptor *fv =
	    protobuf_c_message_descriptor_get_field_by_name(desc, "value");
	void **ptrs;
	unsigned char *block;
	size_t i;

	if (fk == NULL || fv == NULL)
		return NULL;
	ptrs = kms_calloc(n + 1, sizeof(*ptrs));
	block = kms_calloc(n + 1, desc->sizeof_message);
	if (ptrs == NULL || block == NULL) {
		kms_free(ptrs);
		kms_free(block);
		return NULL;
	}
	for (i = 0; i < n; i++) {
		unsigned char *m = block + i * desc->sizeof_message;

		protobuf_c_message_init(desc, m);
		memcpy(m + fk->offset, &ctx[i].key, sizeof(char *));
		memcpy(m + fv->offset, &ctx[i].value, sizeof(char *));
		ptrs[i] = m;
	}
	ptrs[n] = block;
	return ptrs;
}

void ctx_entries_free(void **ptrs, size_t n)
{
	if (ptrs == NULL)
		return;
	kms_free(ptrs[n]);
	kms_free(ptrs);
}
