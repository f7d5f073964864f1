/* fuzz_frame.c - libFuzzer target for the Raft log-entry frame (server/raft/raft_node.c) and the command it carries. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/error.h"
#include "kms/keyring.h"
#include "raft/raft_node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Every log entry a node loads from disk or receives from the leader goes
 * through kms_raft_unframe before the key ring sees it, so unframe must
 * refuse anything that is not a whole frame without reading past it, and a
 * frame it accepts must be exactly the one kms_raft_frame writes for that
 * payload, zero padding included (one encoding per command).
 */
#define FRAME_HEADER 8

static void apply_payload(const uint8_t *payload, size_t len)
{
	kms_keyring *kr = NULL;
	kms_err err = {0};

	if (kms_keyring_new(&kr, &err) != KMS_OK)
		abort();
	/* What the FSM does with the payload; any verdict is fine. */
	(void)kms_keyring_apply(kr, payload, len, &err);
	kms_keyring_free(kr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *payload = NULL;
	size_t payload_len = 0, framed_len;
	uint8_t *out;
	kms_err err = {0};

	if (kms_raft_unframe(data, size, &payload, &payload_len, &err) !=
	    KMS_OK) {
		if (err.code != KMS_ERR_INVALID || err.msg[0] == '\0')
			abort();
		return 0;
	}
	if (payload != data + FRAME_HEADER || payload_len > size - FRAME_HEADER)
		abort();
	framed_len = kms_raft_frame_size(payload_len);
	if (framed_len != size || framed_len % 8 != 0)
		abort();
	out = malloc(framed_len);
	if (out == NULL)
		abort();
	kms_raft_frame(payload, payload_len, out);
	if (memcmp(out, data, FRAME_HEADER + payload_len) != 0)
		abort();
	if (memcmp(out, data, framed_len) != 0)
		abort();
	free(out);
	apply_payload(payload, payload_len);
	return 0;
}
