/* keyring_flat.c - a protobuf-c message tree copied into one heap block, and the scratch allocator restore unpacks records with. */
#include <stdalign.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "state/keyring_internal.h"
#include "kms/alloc.h"

/*
 * Why one block: protobuf-c gives every sub-message, array and string of an
 * unpacked record a heap block of its own, about 16 per key, and a million
 * keys then spend more on malloc's headers and fragmentation than on the
 * records. The copy keeps the exact layout protobuf-c produces, so every
 * reader of e->rec stays as it is; only what changes a record's structure
 * (a new version, a new policy) builds a new block (kr_entry_rebuild).
 *
 * The block holds the structures first, each aligned, then the strings and
 * bytes unaligned: the copy is measured by one walk and written by a second
 * walk of the same code.
 */

/*
 * protobuf-c's structures hold pointers, size_t, 64-bit integers and
 * doubles, never long double: max_align_t's 16 bytes would only pad.
 */
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define FLAT_ALIGN MAX2(MAX2(alignof(void *), alignof(uint64_t)), alignof(double))

struct flat {
	const ProtobufCMessage *keep; /* a sub-message shared, not copied */
	uint8_t *base; /* NULL while measuring */
	size_t words;  /* the aligned region, used so far */
	size_t bytes;  /* the unaligned tail, used so far */
	size_t tail;   /* where the tail starts (writing only) */
};

static size_t round_up(size_t n)
{
	return (n + FLAT_ALIGN - 1) & ~(size_t)(FLAT_ALIGN - 1);
}

static void *take(struct flat *f, size_t size, int aligned)
{
	void *p = NULL;

	if (aligned) {
		if (f->base != NULL)
			p = f->base + f->words;
		f->words += round_up(size);
	} else {
		if (f->base != NULL)
			p = f->base + f->tail + f->bytes;
		f->bytes += size;
	}
	return p;
}

/* A present, empty bytes field keeps a non-NULL pointer, as unpack gives. */
static const uint8_t empty_bytes[1];

static void flat_bytes(struct flat *f, const ProtobufCBinaryData *src, ProtobufCBinaryData *dst,
		       const void *default_value)
{
	const ProtobufCBinaryData *def = default_value;
	uint8_t *p;

	if (src->data == NULL || (def != NULL && src->data == def->data))
		return; /* dst already holds the same pointer */
	if (src->len == 0) {
		if (dst != NULL)
			dst->data = (uint8_t *)empty_bytes;
		return;
	}
	p = take(f, src->len, 0);
	if (dst != NULL) {
		memcpy(p, src->data, src->len);
		dst->data = p;
	}
}

static void flat_string(struct flat *f, const char *src, char **dst, const void *default_value)
{
	size_t len;
	char *p;

	/* NULL and the descriptor's static default stay what they are. */
	if (src == NULL || src == default_value)
		return;
	len = strlen(src) + 1;
	p = take(f, len, 0);
	if (dst != NULL) {
		memcpy(p, src, len);
		*dst = p;
	}
}

static ProtobufCMessage *flat_message(struct flat *f, const ProtobufCMessage *src);

/* One value of a field: src and dst point at it in their messages. */
static void flat_value(struct flat *f, ProtobufCType type, const void *src, void *dst,
		       const void *default_value)
{
	switch (type) {
	case PROTOBUF_C_TYPE_STRING:
		flat_string(f, *(char *const *)src, dst, default_value);
		break;
	case PROTOBUF_C_TYPE_BYTES:
		flat_bytes(f, src, dst, default_value);
		break;
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *m = *(ProtobufCMessage *const *)src;
		ProtobufCMessage *copy;

		if (m == NULL || m == f->keep)
			break; /* dst already holds the same pointer */
		copy = flat_message(f, m);
		if (dst != NULL)
			*(ProtobufCMessage **)dst = copy;
		break;
	}
	default:
		break; /* a scalar: copied with its message */
	}
}

static size_t element_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_FIXED64:
		return sizeof(uint64_t);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	case PROTOBUF_C_TYPE_ENUM:
	default:
		return sizeof(uint32_t); /* the 32-bit integers and enums */
	}
}

static void flat_field(struct flat *f, const ProtobufCFieldDescriptor *fd,
		       const ProtobufCMessage *src, ProtobufCMessage *dst)
{
	const uint8_t *s = (const uint8_t *)src;
	uint8_t *d = (uint8_t *)dst;

	if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
		size_t n = *(const size_t *)(s + fd->quantifier_offset);
		const uint8_t *arr = *(uint8_t *const *)(s + fd->offset);
		size_t esz = element_size(fd->type);
		uint8_t *copy;

		if (n == 0 || arr == NULL)
			return;
		copy = take(f, n * esz, 1);
		if (d != NULL) {
			memcpy(copy, arr, n * esz);
			*(uint8_t **)(d + fd->offset) = copy;
		}
		for (size_t i = 0; i < n; i++)
			flat_value(f, fd->type, arr + i * esz, copy != NULL ? copy + i * esz : NULL,
				   NULL);
		return;
	}
	if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 &&
	    *(const uint32_t *)(s + fd->quantifier_offset) != fd->id)
		return; /* another member of the oneof is set */
	flat_value(f, fd->type, s + fd->offset, d != NULL ? d + fd->offset : NULL,
		   fd->default_value);
}

static ProtobufCMessage *flat_message(struct flat *f, const ProtobufCMessage *src)
{
	const ProtobufCMessageDescriptor *desc = src->descriptor;
	ProtobufCMessage *m = take(f, desc->sizeof_message, 1);

	if (m != NULL)
		memcpy(m, src, desc->sizeof_message);
	if (src->n_unknown_fields > 0) {
		size_t n = src->n_unknown_fields;
		ProtobufCMessageUnknownField *u = take(f, n * sizeof(*u), 1);

		if (m != NULL) {
			memcpy(u, src->unknown_fields, n * sizeof(*u));
			m->unknown_fields = u;
		}
		for (size_t i = 0; i < n; i++) {
			const ProtobufCMessageUnknownField *su = &src->unknown_fields[i];
			uint8_t *p = take(f, su->len, 0);

			if (m != NULL) {
				if (su->len > 0)
					memcpy(p, su->data, su->len);
				u[i].data = p;
			}
		}
	}
	for (unsigned i = 0; i < desc->n_fields; i++)
		flat_field(f, &desc->fields[i], src, m);
	return m;
}

int kr_flat_copy(const ProtobufCMessage *src, const ProtobufCMessage *keep, size_t extra,
		 ProtobufCMessage **out, void **extra_out, kms_err *err)
{
	struct flat f = {.keep = keep};
	size_t extra_at;

	*out = NULL;
	if (extra_out != NULL)
		*extra_out = NULL;
	(void)flat_message(&f, src);
	extra_at = f.words;
	f.words += round_up(extra);
	f.tail = f.words;
	f.base = kms_malloc(f.tail + f.bytes);
	if (f.base == NULL)
		return kms_errf(err, KMS_ERR_NOMEM, "out of memory copying a %s",
				src->descriptor->name);
	f.words = 0;
	f.bytes = 0;
	*out = flat_message(&f, src);
	memset(f.base + extra_at, 0, extra);
	if (extra_out != NULL)
		*extra_out = f.base + extra_at;
	return KMS_OK;
}

/* --- the scratch allocator ---------------------------------------------- */

/*
 * Chunks are chained, the newest (and largest) first; a reset keeps only
 * that one, so after the largest record of a snapshot every record unpacks
 * into one chunk without a call to malloc.
 */
struct kr_arena_chunk {
	struct kr_arena_chunk *next;
	size_t cap, used;
	alignas(max_align_t) uint8_t data[];
};

#define ARENA_FIRST_CHUNK 16384

static void *arena_alloc(void *data, size_t size)
{
	struct kr_arena *a = data;
	struct kr_arena_chunk *c = a->head;

	size = round_up(size > 0 ? size : 1);
	if (c == NULL || c->cap - c->used < size) {
		size_t cap = c != NULL ? c->cap * 2 : ARENA_FIRST_CHUNK;

		if (cap < size)
			cap = size;
		c = kms_malloc(sizeof(*c) + cap);
		if (c == NULL) {
			a->failed = 1;
			return NULL;
		}
		c->cap = cap;
		c->used = 0;
		c->next = a->head;
		a->head = c;
	}
	c->used += size;
	return c->data + c->used - size;
}

static void arena_free(void *data, void *p)
{
	/* Everything goes at the next reset. */
	(void)data;
	(void)p;
}

void kr_arena_init(struct kr_arena *a)
{
	memset(a, 0, sizeof(*a));
	a->pb.alloc = arena_alloc;
	a->pb.free = arena_free;
	a->pb.allocator_data = a;
}

void kr_arena_reset(struct kr_arena *a)
{
	struct kr_arena_chunk *c = a->head;

	if (c == NULL)
		return;
	while (c->next != NULL) {
		struct kr_arena_chunk *old = c->next;

		c->next = old->next;
		kms_free(old);
	}
	c->used = 0;
	a->failed = 0;
}

void kr_arena_free(struct kr_arena *a)
{
	kr_arena_reset(a);
	kms_free(a->head);
	a->head = NULL;
}
