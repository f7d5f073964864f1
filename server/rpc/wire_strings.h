/* wire_strings.h - refuses a request whose string fields hold a NUL byte, read from the protobuf wire bytes before protobuf-c turns them into C strings. */
#ifndef KMS_WIRE_STRINGS_H
#define KMS_WIRE_STRINGS_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "kms/error.h"

/*
 * Walks buf (a serialized message of type desc) and every sub-message and
 * map entry in it, and checks each string field's bytes. protobuf-c hands a
 * string to C code as a NUL-terminated copy, so "acme\0evil" would reach the
 * handler as "acme": refuse it here instead (KMS_ERR_INVALID, "field
 * 'encryption_context.value' holds a NUL byte"). Bytes that do not parse as
 * protobuf are left to the unpacker, which refuses them with its own
 * message; unknown fields are skipped.
 */
int kms_wire_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
			   size_t len, kms_err *err);

/*
 * The same for a batch, item by item, so that a NUL fails one item and not
 * its neighbours: for each occurrence of field (a repeated message of type
 * item) at the top level of buf, in wire order, which is the order
 * protobuf-c unpacks them in, checks its strings, and calls bad with the
 * occurrence's index (from 0) and the error when one holds a NUL. The
 * field's path in the message starts at the item. Returns how many
 * occurrences there are, up to bytes that do not parse; with bad NULL it
 * only counts them (to bound a batch before protobuf-c unpacks it).
 */
typedef void (*kms_wire_bad_item_fn)(void *arg, size_t index, const kms_err *err);
size_t kms_wire_check_items(const ProtobufCMessageDescriptor *item, uint32_t field,
			    const uint8_t *buf, size_t len, kms_wire_bad_item_fn bad, void *arg);

#endif
