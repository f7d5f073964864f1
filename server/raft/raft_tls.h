/* raft_tls.h - a canonical/raft transport that carries Raft peer traffic over
 * mutually authenticated TLS 1.3, with node identities bound to certificates.
 */
#ifndef KMS_RAFT_TLS_H
#define KMS_RAFT_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "kms/error.h"

struct raft_uv_transport;
struct uv_loop_s;

/*
 * Decides whether the peer whose certificate carries spiffe_id may act as
 * Raft server raft_id: 1 = allowed, anything else = refused. Called on the
 * transport's own threads (never the loop thread), once per connection, so
 * it must be thread-safe and quick. On an accepted connection raft_id is the
 * id the peer claims in its preamble; on an outgoing one it is the id raft
 * asked to connect to.
 */
typedef int (*kms_raft_tls_authorize_fn)(void *arg, const char *spiffe_id,
					 unsigned long long raft_id);

/*
 * Defaults of the limits below (an option left 0 takes its default).
 *
 * Why these: a legitimate peer sends its ClientHello at once and finishes
 * the handshake and preamble in milliseconds (one signature in each HSM),
 * so the deadlines are long only for a loaded host. A connection that has
 * sent nothing costs the listener one descriptor and no thread, so many may
 * wait; a per-source share keeps one address from taking them all, and the
 * global bound keeps the listener well inside the default limit of 1024
 * descriptors, which gRPC shares. Handshakes each hold a thread: a 5-node
 * cluster needs at most 4 at once, re-dialling peers a few more. A message
 * carries at most one snapshot of the key ring (InstallSnapshot sends it
 * whole, and raft allocates it whole on arrival) or one batch of entries:
 * 256 MiB holds a ring of about a million wrapped key versions.
 */
#define KMS_RAFT_TLS_MAX_PENDING 256
#define KMS_RAFT_TLS_MAX_PENDING_PER_SOURCE 64
#define KMS_RAFT_TLS_MAX_HANDSHAKES 16
#define KMS_RAFT_TLS_HELLO_TIMEOUT_MS 1000
#define KMS_RAFT_TLS_HANDSHAKE_TIMEOUT_MS 3000
#define KMS_RAFT_TLS_MAX_MESSAGE_BYTES (256ULL << 20)

typedef struct kms_raft_tls_opts {
	const char *ca_file;   /* PEM: peers must chain to it */
	const char *cert_file; /* PEM chain of this node */
	EVP_PKEY *key; /* this node's key; NOT owned (production: from the
			  HSM via kms_tls_engine_load_key in
			  server/tls/tls_engine.h; tests: PEM) */
	kms_raft_tls_authorize_fn
	    authorize; /* called on bridge threads; 1 = allowed */
	void *authorize_arg;

	/* Limits of the listener and the links (see "Limits" below); 0 takes
	 * the KMS_RAFT_TLS_* default. */
	unsigned max_pending;		 /* accepted, not yet authenticated */
	unsigned max_pending_per_source; /* the same, per source IP address */
	unsigned max_handshakes;	 /* handshake threads at once */
	unsigned hello_timeout_ms;	 /* accept to the first byte */
	unsigned handshake_timeout_ms;	 /* accept (or dial) to "KMSA" */
	uint64_t max_message_bytes;	 /* one Raft message, all parts */
} kms_raft_tls_opts;

/*
 * Fills t as a raft_uv_transport (the way raft_uv_tcp_init does; t->data is
 * kept) whose links are TLS 1.3 connections over TCP. Both ends present a
 * certificate chained to opts->ca_file, and each end passes the other's
 * SPIFFE ID (the certificate's single spiffe:// URI SAN) to
 * opts->authorize before any Raft byte flows.
 *
 * Wire protocol, inside TLS, before Raft's own messages:
 *   connecting side: "KMSR" | uint64 BE raft id | uint16 BE address length |
 *                    address (1..256 printable bytes)
 *   accepting side:  "KMSA" once it has authorized the preamble, so that a
 *                    refused peer sees a failed connect (and raft's retry
 *                    delay) instead of a link that dies after it is handed
 *                    over.
 * A plaintext client, a certificate from another CA, a certificate whose
 * SPIFFE ID is not the claimed member, or a preamble not complete within
 * the handshake deadline is refused, with a warning that names the reason
 * (at most 10 such lines per 10 s; the rest are counted in a summary).
 *
 * Limits (each an option above). On loopback, or behind NAT, every peer,
 * legitimate or not, has the same source address, so a bound per source
 * cannot tell an attacker from a peer by address; it tells them apart by
 * behaviour instead: a peer sends its ClientHello at once, an idle
 * connection sends nothing.
 *   - An accepted connection waits in the listener thread, with no thread
 *     and no TLS state of its own, until its first byte arrives; then it
 *     gets a handshake thread. One that sends nothing for hello_timeout_ms
 *     is closed.
 *   - At most max_pending_per_source connections from one IP address, and
 *     max_pending in all, are pending (waiting or in their handshake). A
 *     new connection over either bound is accepted and the oldest pending
 *     one of that source (or of all) is closed instead: first one that has
 *     sent nothing, then one waiting for a thread, last a handshake in
 *     progress. Refusing the newcomer instead would let any idle flood
 *     lock every peer out (a legitimate peer is always the newcomer); with
 *     eviction a flood of idle connections can only ever evict idle
 *     connections, and a peer is out of their reach once its ClientHello
 *     has arrived, which takes it milliseconds. (A flood larger than the
 *     bound that re-opens what is closed churns: a peer's connection then
 *     survives max_pending_per_source newer arrivals before its ClientHello
 *     lands, and if evicted raft dials again after its retry delay.)
 *   - At most max_handshakes handshakes run at once; a connection whose
 *     first byte arrives when all are busy waits, and the oldest handshake
 *     is ended so that it does not wait long.
 *   - The handshake, the preamble and the acknowledgement must be done
 *     within handshake_timeout_ms of the accept (or of the dial).
 *   - Evictions and silent connections are counted and logged as one
 *     summary line per 10 s at most ("raft-tls: closed N pending
 *     connections over the per-source bound ..."), the first one after a
 *     quiet spell at once, so a flood cannot flood the log.
 *
 * After the acknowledgement each link carries canonical/raft's own
 * messages (libuv backend, 0.15: src/uv_encoding.c, uv_send.c, uv_recv.c)
 * from the connecting side to the accepting side only: raft's uvClient
 * writes and never reads, its uvServer reads and never writes. (raft's TCP
 * handshake, protocol | id | address, is part of its TCP transport and
 * replaced here by the preamble above: it is not on this wire.) So that an
 * authenticated peer cannot make raft allocate what it likes (raft
 * allocates each header and each payload whole, at the length the peer
 * announces), the bridge parses the stream raft reads just far enough to
 * know each message's length, all integers little-endian:
 *   preamble: uint64 type | uint64 header length H
 *   header (H bytes), by type:
 *     1 AppendEntries: term | prev index | prev term | commit | uint64 n |
 *                      n x (uint64 term | uint8 type | 3 unused |
 *                      uint32 length), then 8 unused bytes; payload:
 *                      the n entries, unpadded, the sum of their lengths
 *     5 InstallSnapshot: term | last index | last term | conf index |
 *                      uint64 C | C bytes of configuration | uint64 D;
 *                      payload: D bytes
 *     2 AppendEntriesResult (24 bytes read), 3 RequestVote (32, or 40 and
 *     more with the flags word), 4 RequestVoteResult (16, or 24 and more),
 *     6 TimeoutNow (24): no payload
 *   payload: as above.
 * The link is dropped, with a warning naming the peer and the size, when
 * 16 + H + payload exceeds max_message_bytes, when the type is none of the
 * six (raft asserts on type 0 and drops others only after allocating the
 * header), or when H is shorter than the fields raft reads for that type
 * (raft reads them without checking H). Any byte arriving on a link this
 * node dialled drops that link too. The other direction, raft's own bytes,
 * is not parsed.
 *
 * Each established link is a socketpair: raft reads and writes one end as a
 * uv_pipe_t on loop, and a thread per link moves the bytes between the other
 * end and the TLS connection. The uv_pipe_t handed to raft is allocated with
 * raft_malloc; raft uv_close()s it and releases it with raft_free, as it
 * does with the TCP transport's handles.
 *
 * The callbacks raft passes to listen and connect run on the loop thread.
 * Call from the loop's thread, before or while the loop runs. The
 * certificate, key and CA are read now; opts->key gets its own reference
 * and the caller keeps (and frees) its own. opts->authorize_arg must stay
 * valid until kms_raft_tls_close. KMS_ERR_INVALID for missing options,
 * KMS_ERR_CONFIG naming the file or step that failed, KMS_ERR_IO or
 * KMS_ERR_NOMEM.
 */
int kms_raft_tls_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
		      const kms_raft_tls_opts *opts, kms_err *err);

/*
 * Reads opts->ca_file, opts->cert_file and opts->key again into a new TLS
 * context, for links made from now on (any thread, between init and
 * close). Links already up keep the context they were made with (OpenSSL
 * counts its references), so a reload never cuts Raft traffic. On failure
 * the old context stays in force: KMS_ERR_CONFIG naming the file.
 */
int kms_raft_tls_reload(struct raft_uv_transport *t,
			const kms_raft_tls_opts *opts, kms_err *err);

/*
 * Releases what kms_raft_tls_init allocated. After raft has closed the
 * transport (like raft_uv_tcp_close): the close callback passed to
 * t->close must have fired, unless the transport never listened nor
 * connected. Called too early it logs an error and frees nothing, since
 * the loop may still reference its handle.
 */
void kms_raft_tls_close(struct raft_uv_transport *t);

/* ---- the preamble, as pure functions (in_main and out_main use them) ---- */

#define KMS_RAFT_TLS_PREAMBLE_FIXED 14 /* "KMSR", raft id, address length */
#define KMS_RAFT_TLS_ADDRESS_MAX 256
#define KMS_RAFT_TLS_PREAMBLE_MAX                                              \
	(KMS_RAFT_TLS_PREAMBLE_FIXED + KMS_RAFT_TLS_ADDRESS_MAX)

typedef struct kms_raft_tls_preamble {
	unsigned long long id;			    /* 1 or more */
	char address[KMS_RAFT_TLS_ADDRESS_MAX + 1]; /* printable, NUL-ended */
} kms_raft_tls_preamble;

/*
 * Reads the preamble of the wire protocol above from the first n bytes a
 * connecting peer sent; no I/O, p is only read.
 *  - KMS_OK and *more == 0: p holds exactly one whole preamble, now in *out
 *    (whose id and address still have to be authorized).
 *  - KMS_OK and *more > 0: p is a good start; read *more bytes more and
 *    call again with all of them. Once the fixed part is in, *more is
 *    exact: the accepting side reads the 14 fixed bytes, then exactly the
 *    address length they announce, and so never reads an address whose
 *    length it has not checked. *out is not touched.
 *  - KMS_ERR_INVALID saying why: no bytes that follow can make it a
 *    preamble (not "KMSR", raft id 0, an address length outside 1..256, an
 *    address byte outside printable ASCII 0x21..0x7e), or n runs past the
 *    end of one.
 * A refusal of p[0..n) is a refusal of every longer input that starts
 * with it, and an acceptance is an acceptance of every shorter one.
 */
int kms_raft_tls_preamble_parse(const uint8_t *p, size_t n,
				kms_raft_tls_preamble *out, size_t *more,
				kms_err *err);

/*
 * Writes the preamble for id and address into buf (cap bytes; at most
 * KMS_RAFT_TLS_PREAMBLE_MAX), *len bytes, which parse reads back as id and
 * address. KMS_ERR_INVALID when id is 0, the address is not 1 to 256
 * printable bytes, or cap is too small.
 */
int kms_raft_tls_preamble_write(unsigned long long id, const char *address,
				uint8_t *buf, size_t cap, size_t *len,
				kms_err *err);

/* ---- test-visible: the bridge's parser of raft's message stream ---- */

/*
 * For unit tests and tests/fuzz/fuzz_raft_preamble.c only; nothing else
 * calls these. The parser each link's bridge runs over the bytes a peer
 * sends for raft to read ("the bridge parses the stream raft reads" above),
 * unchanged: the same code, behind an allocation of its own.
 *
 * new: the parser at the start of a link's stream, with the cap of
 * kms_raft_tls_opts.max_message_bytes (0: the default; below 1024:
 * KMS_ERR_INVALID, as kms_raft_tls_init); dialled set for a link this node
 * dialled, on which any byte is refused. Free with _free.
 * feed: follows n more bytes of the stream, in any pieces; 0 when they are
 * fine so far, -1 when the bridge would drop the link before raft sees
 * them, with *why saying what crossed the line (valid until the next call).
 * Once refused, every later feed is refused too.
 */
typedef struct kms_raft_tls_stream kms_raft_tls_stream;

int kms_raft_tls_stream_new(uint64_t max_message_bytes, int dialled,
			    kms_raft_tls_stream **out, kms_err *err);
int kms_raft_tls_stream_feed(kms_raft_tls_stream *s, const uint8_t *p,
			     size_t n, const char **why);
void kms_raft_tls_stream_free(kms_raft_tls_stream *s);

#endif
