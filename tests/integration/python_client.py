#!/usr/bin/python3
"""A kms.v1 client in Python, run by test_python.sh against a real kmsd.

It proves that a client written from proto/kms/v1/kms.proto alone, with the
stock Python gRPC stack and mutual TLS, interoperates with kmsd:
GenerateDataKey then Decrypt gives back the same data key, and Decrypt under
a different encryption context is refused with INVALID_ARGUMENT; a
BatchDecrypt answers each of its items in place.
The stubs (kms/v1/kms_pb2*.py) are generated at test time into --stubs.
"""

import argparse
import sys


def step(msg):
    print("python_client: " + msg, flush=True)


def fail(msg):
    print("python_client: FAIL: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--endpoint", required=True, help="host:port of kmsd")
    ap.add_argument("--ca", required=True, help="CA bundle the server chains to")
    ap.add_argument("--cert", required=True, help="client certificate (PEM)")
    ap.add_argument("--key", required=True, help="client private key (PEM)")
    ap.add_argument("--key-id", required=True, help="master key to use")
    ap.add_argument("--stubs", required=True, help="directory of generated stubs")
    args = ap.parse_args()

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
    with grpc.secure_channel(args.endpoint, creds) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            fail("no mTLS connection to %s within 10 s" % args.endpoint)
        stub = kms_pb2_grpc.KeyManagementStub(channel)
        ctx = {"tenant": "t1"}

        step("GenerateDataKey %s context %s" % (args.key_id, ctx))
        gen = stub.GenerateDataKey(
            kms_pb2.GenerateDataKeyRequest(key_id=args.key_id, encryption_context=ctx),
            timeout=10,
        )
        if len(gen.plaintext) != 32:
            fail("expected a 32-byte data key, got %d bytes" % len(gen.plaintext))
        if not gen.ciphertext_blob:
            fail("empty ciphertext blob")
        if gen.key_id != args.key_id:
            fail("response names key %r, not %r" % (gen.key_id, args.key_id))
        step("  got a %d-byte data key and a %d-byte blob (key version %d)"
             % (len(gen.plaintext), len(gen.ciphertext_blob), gen.key_version))

        step("Decrypt with the same context")
        dec = stub.Decrypt(
            kms_pb2.DecryptRequest(ciphertext_blob=gen.ciphertext_blob, encryption_context=ctx),
            timeout=10,
        )
        if dec.plaintext != gen.plaintext:
            fail("Decrypt returned a different plaintext")
        if dec.key_id != args.key_id or dec.key_version != gen.key_version:
            fail("Decrypt names %s v%d, expected %s v%d"
                 % (dec.key_id, dec.key_version, args.key_id, gen.key_version))
        step("  plaintexts match")

        wrong = {"tenant": "t2"}
        step("Decrypt with a wrong context %s must fail with INVALID_ARGUMENT" % wrong)
        try:
            bad = stub.Decrypt(
                kms_pb2.DecryptRequest(ciphertext_blob=gen.ciphertext_blob,
                                       encryption_context=wrong),
                timeout=10,
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                fail("wrong context gave %s (%s), expected INVALID_ARGUMENT"
                     % (e.code(), e.details()))
            if gen.plaintext.hex() in (e.details() or ""):
                fail("the error message carries the data key")
            step("  refused: %s: %s" % (e.code().name, e.details()))
        else:
            if bad.plaintext == gen.plaintext:
                fail("Decrypt under a wrong context returned the data key")
            fail("Decrypt under a wrong context succeeded")

        step("BatchDecrypt of the blob with the right and the wrong context")
        batch = stub.BatchDecrypt(
            kms_pb2.BatchDecryptRequest(requests=[
                kms_pb2.DecryptRequest(ciphertext_blob=gen.ciphertext_blob,
                                       encryption_context=ctx),
                kms_pb2.DecryptRequest(ciphertext_blob=gen.ciphertext_blob,
                                       encryption_context=wrong),
            ]),
            timeout=10,
        )
        if len(batch.results) != 2:
            fail("BatchDecrypt answered %d results for 2 requests" % len(batch.results))
        good, bad = batch.results
        if good.WhichOneof("result") != "response" or good.response.plaintext != gen.plaintext:
            fail("the good item did not give the data key back")
        if bad.WhichOneof("result") != "error" or \
                bad.error.code != grpc.StatusCode.INVALID_ARGUMENT.value[0]:
            fail("the item with a wrong context was not refused with INVALID_ARGUMENT")
        step("  item 1 decrypted; item 2 refused in place: %s" % bad.error.message)

    step("all checks passed")


if __name__ == "__main__":
    main()
