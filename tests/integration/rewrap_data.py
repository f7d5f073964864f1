#!/usr/bin/python3
"""Data for test_kmsctl_rewrap.sh: makes rewrap input with BatchGenerateDataKey
and checks rewrap output with BatchDecrypt, against a real kmsd.

  make N INPUT PLAINTEXTS: N data keys of --key-id, each with its own context
    ({"tenant": "t<i % 13>", "row": "<i>"}), written as rewrap input lines
    {"id": i, "blob": B64, "context": {...}} and their plaintexts (base64, one
    per line, same order).
  verify INPUT OUTPUT PLAINTEXTS VERSION: OUTPUT has one line per INPUT line,
    in order (same id and context), every blob new, and each decrypts with its
    context to its plaintext under --key-id version VERSION.
The stubs (kms/v1/kms_pb2*.py) are generated at test time into --stubs.
"""

import argparse
import base64
import json
import sys

BATCH = 1000


def fail(msg):
    print("rewrap_data: FAIL: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def connect(args):
    sys.path.insert(0, args.stubs)
    import grpc
    from kms.v1 import kms_pb2, kms_pb2_grpc

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    # Batch answers exceed gRPC's default 4 MiB receive limit.
    channel = grpc.secure_channel(
        args.endpoint, creds, options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    return kms_pb2, kms_pb2_grpc.KeyManagementStub(channel)


def context(i):
    return {"tenant": "t%d" % (i % 13), "row": str(i)}


def make(args, pb, stub):
    n = int(args.args[0])
    with open(args.args[1], "w") as inp, open(args.args[2], "w") as pts:
        for start in range(0, n, BATCH):
            ids = range(start, min(n, start + BATCH))
            req = pb.BatchGenerateDataKeyRequest(
                requests=[
                    pb.GenerateDataKeyRequest(key_id=args.key_id, encryption_context=context(i))
                    for i in ids
                ]
            )
            resp = stub.BatchGenerateDataKey(req, timeout=60)
            if len(resp.results) != len(ids):
                fail("BatchGenerateDataKey answered %d results for %d" % (len(resp.results), len(ids)))
            for i, r in zip(ids, resp.results):
                if r.WhichOneof("result") != "response":
                    fail("item %d: %s" % (i, r.error.message))
                blob = base64.b64encode(r.response.ciphertext_blob).decode()
                inp.write(json.dumps({"id": i, "blob": blob, "context": context(i)},
                                     separators=(",", ":")) + "\n")
                pts.write(base64.b64encode(r.response.plaintext).decode() + "\n")


def verify(args, pb, stub):
    inp_path, out_path, pts_path, version = args.args[0], args.args[1], args.args[2], int(args.args[3])
    with open(inp_path) as f:
        inp = [json.loads(l) for l in f]
    with open(out_path) as f:
        out = [json.loads(l) for l in f]
    with open(pts_path) as f:
        pts = [base64.b64decode(l) for l in f]
    if len(out) != len(inp):
        fail("%d output lines for %d input lines" % (len(out), len(inp)))
    for n, (a, b) in enumerate(zip(inp, out)):
        if a["id"] != b["id"] or a["context"] != b["context"] or set(a) != set(b):
            fail("output line %d is not input line %d's" % (n + 1, n + 1))
        if a["blob"] == b["blob"]:
            fail("output line %d has its old blob" % (n + 1))
    for start in range(0, len(out), BATCH):
        chunk = out[start:start + BATCH]
        req = pb.BatchDecryptRequest(
            requests=[
                pb.DecryptRequest(ciphertext_blob=base64.b64decode(o["blob"]),
                                  encryption_context=o["context"])
                for o in chunk
            ]
        )
        resp = stub.BatchDecrypt(req, timeout=60)
        for k, (o, r) in enumerate(zip(chunk, resp.results)):
            line = start + k + 1
            if r.WhichOneof("result") != "response":
                fail("output line %d does not decrypt: %s" % (line, r.error.message))
            if r.response.plaintext != pts[o["id"]]:
                fail("output line %d decrypts to another plaintext" % line)
            if r.response.key_id != args.key_id or r.response.key_version != version:
                fail("output line %d is under %s version %d, not version %d"
                     % (line, r.response.key_id, r.response.key_version, version))
    print("rewrap_data: %d lines verified" % len(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--key-id", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("command", choices=["make", "verify"])
    ap.add_argument("args", nargs="*")
    args = ap.parse_args()
    pb, stub = connect(args)
    (make if args.command == "make" else verify)(args, pb, stub)


if __name__ == "__main__":
    main()
