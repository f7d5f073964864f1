/* proto_ctx.h - encryption-context maps (K=V pairs) as the protobuf-c map entries of kms.v1 requests. */
#ifndef KMSCTL_PROTO_CTX_H
#define KMSCTL_PROTO_CTX_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* One K=V pair; who owns the strings is said where a list is made. */
struct kv {
	char *key;
	char *value;
};

/*
 * The *EncryptionContextEntry types of the requests are distinct
 * generated structs with the same fields; this builds any of them through
 * its descriptor. The entries borrow the strings of ctx. Slot n of the
 * array holds the entries' memory; free with ctx_entries_free(ptrs, n).
 * NULL when memory runs out or desc is not a map entry.
 */
void **ctx_entries(const struct kv *ctx, size_t n,
		   const ProtobufCMessageDescriptor *desc);
void ctx_entries_free(void **ptrs, size_t n);

#endif
