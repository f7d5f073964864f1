/* fuzz_raft_preamble.c - libFuzzer target for what an authenticated Raft peer sends first: the link preamble, then raft's message stream as the bridge parses it (server/raft/raft_tls.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kms/error.h"
#include "raft/raft_tls.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Both parsers read bytes from any peer whose certificate the node CA
 * signed, before the link is handed to raft, so each must refuse what is
 * not its format without reading past it, and the verdict must not depend
 * on how TCP and TLS cut the bytes into pieces.
 *
 * Input: the first byte chooses the parser (bit 0) and, for the stream,
 * whether the link was dialled by this node (bit 1), the message cap (bits
 * 2-3: the default, 1024, 4096 or 65536 bytes) and a seed for the sizes of
 * the pieces the stream is fed in (bits 4-7). The rest is the peer's bytes.
 *
 * The seed corpus (tests/fuzz/corpus/raft_preamble) is written by this
 * program: FUZZ_WRITE_CORPUS=DIR fuzz_raft_preamble writes it into DIR and
 * exits; `ops/fuzz --write-corpus --target raft_preamble` does that into
 * the source tree.
 */

#define MODE_STREAM 0x01
#define MODE_DIALLED 0x02

static const uint64_t caps[4] = {0, 1024, 4096, 65536};

/*
 * The preamble: a refusal of a prefix is a refusal of every longer input,
 * an acceptance of the whole is an acceptance of every prefix (asking for
 * exactly the bytes still missing once the fixed part is in), and what is
 * accepted whole is exactly what the writer makes of its id and address.
 */
static void fuzz_preamble(const uint8_t *p, size_t n)
{
	uint8_t again[KMS_RAFT_TLS_PREAMBLE_MAX];
	kms_raft_tls_preamble pre;
	size_t more = 0, len = 0;
	int refused = 0, whole = 0;
	kms_err err = {0};

	for (size_t k = 0; k <= n; k++) {
		int rc;

		memset(&pre, 0, sizeof(pre));
		kms_err_clear(&err);
		rc = kms_raft_tls_preamble_parse(p, k, &pre, &more, &err);
		if (rc != KMS_OK) {
			if (rc != KMS_ERR_INVALID || err.msg[0] == '\0' || more != 0)
				abort();
			refused = 1;
			continue;
		}
		/* Accepted after a refusal, or more bytes after a whole one. */
		if (refused || whole)
			abort();
		if (k >= KMS_RAFT_TLS_PREAMBLE_FIXED && more > 0 &&
		    k + more > KMS_RAFT_TLS_PREAMBLE_MAX)
			abort();
		whole = more == 0;
	}
	if (refused)
		return;
	if (!whole)
		return;
	if (pre.id == 0 || strlen(pre.address) != n - KMS_RAFT_TLS_PREAMBLE_FIXED)
		abort();
	if (kms_raft_tls_preamble_write(pre.id, pre.address, again, sizeof(again), &len,
					&err) != KMS_OK)
		abort();
	if (len != n || memcmp(again, p, n) != 0)
		abort();
}

static kms_raft_tls_stream *stream_new(uint64_t cap, int dialled)
{
	kms_raft_tls_stream *s = NULL;
	kms_err err = {0};

	if (kms_raft_tls_stream_new(cap, dialled, &s, &err) != KMS_OK)
		abort();
	return s;
}

/*
 * The stream, fed whole, in pieces of seeded sizes and byte by byte: the
 * same verdict each time, with a reason when refused (the same reason
 * but on a dialled link, whose reason counts the piece's bytes), and no
 * acceptance after a refusal.
 */
static void fuzz_stream(uint8_t mode, const uint8_t *p, size_t n)
{
	uint64_t cap = caps[(mode >> 2) & 3];
	int dialled = (mode & MODE_DIALLED) != 0;
	kms_raft_tls_stream *whole = stream_new(cap, dialled);
	kms_raft_tls_stream *pieces = stream_new(cap, dialled);
	kms_raft_tls_stream *bytes = stream_new(cap, dialled);
	const char *w1 = NULL, *w2 = NULL, *w3 = NULL;
	uint32_t seed = 0x9e3779b9u * (uint32_t)((mode >> 4) + 1);
	int r1, r2 = 0, r3 = 0;
	size_t i;

	r1 = kms_raft_tls_stream_feed(whole, p, n, &w1);
	for (i = 0; i < n && r2 == 0;) {
		size_t piece;

		seed = seed * 1103515245u + 12345u;
		piece = 1 + (seed >> 16) % 64;
		if (piece > n - i)
			piece = n - i;
		r2 = kms_raft_tls_stream_feed(pieces, p + i, piece, &w2);
		i += piece;
	}
	for (i = 0; i < n && r3 == 0; i++)
		r3 = kms_raft_tls_stream_feed(bytes, p + i, 1, &w3);
	if (r1 != r2 || r1 != r3)
		abort();
	if (r1 != 0) {
		if (w1 == NULL || w1[0] == '\0' || w2 == NULL || w3 == NULL)
			abort();
		if (!dialled && (strcmp(w1, w2) != 0 || strcmp(w1, w3) != 0))
			abort();
		if (kms_raft_tls_stream_feed(whole, p, 0, &w1) != -1)
			abort();
	} else if (w1 != NULL || w2 != NULL || w3 != NULL) {
		abort();
	}
	kms_raft_tls_stream_free(whole);
	kms_raft_tls_stream_free(pieces);
	kms_raft_tls_stream_free(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] & MODE_STREAM)
		fuzz_stream(data[0], data + 1, size - 1);
	else
		fuzz_preamble(data + 1, size - 1);
	return 0;
}

/* ---- the seed corpus ---- */

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A raft message start: preamble (type, header length) and a zeroed
 * header, after the mode byte. Returns the length so far. */
static size_t msg(uint8_t *out, size_t at, uint64_t type, uint64_t hdr_len)
{
	put_le64(out + at, type);
	put_le64(out + at + 8, hdr_len);
	memset(out + at + 16, 0, (size_t)hdr_len);
	return at + 16 + (size_t)hdr_len;
}

/* AppendEntries with n entries of len bytes each, payload included. */
static size_t append_entries(uint8_t *out, size_t at, uint64_t n, uint32_t len)
{
	size_t end = msg(out, at, 1 /* RAFT_IO_APPEND_ENTRIES */, 48 + 16 * n);

	put_le64(out + at + 16, 3);	 /* term */
	put_le64(out + at + 16 + 32, n); /* entries */
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *e = out + at + 16 + 40 + 16 * i;

		put_le64(e, 3);
		e[8] = 1; /* RAFT_COMMAND */
		for (int k = 0; k < 4; k++)
			e[12 + k] = (uint8_t)(len >> (8 * k));
	}
	memset(out + end, 0xab, (size_t)(n * len));
	return end + (size_t)(n * len);
}

/* InstallSnapshot with a configuration of conf bytes and a snapshot of
 * snap bytes, payload included. */
static size_t install_snapshot(uint8_t *out, size_t at, uint64_t conf, uint64_t snap)
{
	size_t end = msg(out, at, 5 /* RAFT_IO_INSTALL_SNAPSHOT */, 48 + conf);

	put_le64(out + at + 16 + 32, conf);
	memset(out + at + 16 + 40, 0x01, (size_t)conf);
	put_le64(out + at + 16 + 40 + conf, snap);
	memset(out + end, 0xcd, (size_t)snap);
	return end + (size_t)snap;
}

static void write_seed(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[4096];
	FILE *f;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		abort();
	f = fopen(path, "wb");
	if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "fuzz_raft_preamble: cannot write %s: %s\n", path,
			strerror(errno));
		exit(1);
	}
}

/* A preamble seed: mode byte 0, then the preamble for id and address. */
static void preamble_seed(const char *dir, const char *name, unsigned long long id,
			  const char *address)
{
	uint8_t p[1 + KMS_RAFT_TLS_PREAMBLE_MAX];
	size_t len = 0;
	kms_err err = {0};

	p[0] = 0;
	if (kms_raft_tls_preamble_write(id, address, p + 1, sizeof(p) - 1, &len, &err) !=
	    KMS_OK)
		abort();
	write_seed(dir, name, p, 1 + len);
}

static void write_corpus(const char *dir)
{
	static uint8_t m[8192];
	char longest[KMS_RAFT_TLS_ADDRESS_MAX + 1];
	size_t n;

	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "fuzz_raft_preamble: cannot create %s: %s\n", dir,
			strerror(errno));
		exit(1);
	}
	/* Preambles: valid ones, then each kind of refusal. */
	preamble_seed(dir, "preamble-ipv4", 2, "127.0.0.1:7502");
	preamble_seed(dir, "preamble-ipv6", 0x100000003ULL, "[::1]:7503");
	memset(longest, 'n', KMS_RAFT_TLS_ADDRESS_MAX);
	longest[KMS_RAFT_TLS_ADDRESS_MAX] = '\0';
	preamble_seed(dir, "preamble-longest-address", 7, longest);
	write_seed(dir, "preamble-plaintext", (const uint8_t *)"\0GET / HTTP/1.1\r\n", 18);
	n = 1 + KMS_RAFT_TLS_PREAMBLE_FIXED + 11;
	memcpy(m, "\0KMSR\0\0\0\0\0\0\0\0\0\x0b" "127.0.0.1:1", n);
	write_seed(dir, "preamble-id-0", m, n);
	memcpy(m, "\0KMSR\0\0\0\0\0\0\0\x02\x01\x01", 15);
	write_seed(dir, "preamble-address-too-long", m, 15);
	memcpy(m, "\0KMSR\0\0\0\0\0\0\0\x02\0\x05" "a b:1", 20);
	write_seed(dir, "preamble-address-space", m, 20);
	memcpy(m, "\0KMSR\0\0\0\0\0\0\0\x02\0\x03" "h:1trailing", 26);
	write_seed(dir, "preamble-trailing-bytes", m, 26);
	memcpy(m, "\0KMSR\0\0\0", 8);
	write_seed(dir, "preamble-cut", m, 8);

	/* Streams: mode byte, then raft's messages. */
	m[0] = MODE_STREAM;
	n = msg(m, 1, 3 /* RequestVote with flags */, 40);
	n = msg(m, n, 4 /* RequestVoteResult */, 24);
	n = msg(m, n, 2 /* AppendEntriesResult */, 24);
	n = msg(m, n, 6 /* TimeoutNow */, 24);
	write_seed(dir, "stream-votes-and-results", m, n);
	n = append_entries(m, 1, 0, 0); /* a heartbeat */
	n = append_entries(m, n, 3, 17);
	write_seed(dir, "stream-append-entries", m, n);
	n = install_snapshot(m, 1, 24, 300);
	write_seed(dir, "stream-install-snapshot", m, n);
	m[0] = MODE_STREAM | (1 << 2); /* cap 1024 */
	n = append_entries(m, 1, 1, 2000);
	write_seed(dir, "stream-entry-over-cap", m, n);
	m[0] = MODE_STREAM;
	n = msg(m, 1, 0, 40);
	write_seed(dir, "stream-type-0", m, n);
	n = msg(m, 1, 9, 8);
	write_seed(dir, "stream-unknown-type", m, n);
	n = msg(m, 1, 3, 8);
	write_seed(dir, "stream-short-header", m, n);
	n = msg(m, 1, 1, 48);
	put_le64(m + 1 + 16 + 32, 2); /* two entries announced, none fit */
	write_seed(dir, "stream-entries-past-header", m, n);
	n = msg(m, 1, 5, 48);
	put_le64(m + 1 + 16 + 32, 100); /* configuration past the header */
	write_seed(dir, "stream-configuration-past-header", m, n);
	m[0] = MODE_STREAM | MODE_DIALLED;
	n = msg(m, 1, 2, 24);
	write_seed(dir, "stream-on-dialled-link", m, n);
	printf("fuzz_raft_preamble: wrote the seed corpus into %s\n", dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_WRITE_CORPUS");

	(void)argc;
	(void)argv;
	if (dir != NULL && dir[0] != '\0') {
		write_corpus(dir);
		exit(0);
	}
	return 0;
}
