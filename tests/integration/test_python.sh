#!/usr/bin/env bash
# Integration test: a Python gRPC client (stubs generated from the .proto at
# test time) talks mTLS to a real kmsd on a fresh SoftHSM token.
# Automake TEST protocol: exit 0 pass, 77 skip (python3-grpcio absent), 1 fail.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	cat <<'USAGE'
usage: tests/integration/test_python.sh

Run by `make check` (KMS_SRCDIR, KMS_BUILDDIR set), or by hand from the
repository (defaults: the script's repository and its ./build). Set
KMS_KEEP_TMP=1 to keep the temporary directory for inspection, KMS_PYTHON to
use another interpreter than /usr/bin/python3.
USAGE
	exit 0
fi

step() { echo "test_python: $*"; }
fail() { echo "test_python: FAIL: $*" >&2; exit 1; }

SRCDIR=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
BUILDDIR=${KMS_BUILDDIR:-$SRCDIR/build}
MODULE=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
# Debian's python3-grpcio is for the system interpreter; a python3 earlier
# on PATH (pyenv, venv) may lack it. KMS_PYTHON overrides (to test the skip).
PY=${KMS_PYTHON:-/usr/bin/python3}
OPS=$SRCDIR/ops

if ! "$PY" -c 'import grpc' 2>/dev/null; then
	echo "test_python: SKIP: python3-grpcio is not installed for $PY (ops/install-deps)"
	exit 77
fi
"$PY" -c 'import grpc_tools.protoc' 2>/dev/null ||
	fail "python3-grpc-tools is missing for $PY: run ops/install-deps"
for f in "$BUILDDIR/kmsd" "$BUILDDIR/kmsctl"; do
	[[ -x $f ]] || fail "$f not built"
done
[[ -r $MODULE ]] || fail "PKCS#11 module $MODULE not found"

T=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-pytest.XXXXXX")
KMSD_PID=""
# shellcheck source=tests/integration/node_lib.sh
. "$SRCDIR/tests/integration/node_lib.sh"
cleanup() {
	local rc=$?
	stop_kmsd
	if ((rc != 0 && rc != 77)) && [[ -f $T/kmsd.log ]]; then
		echo "test_python: last lines of the kmsd log:" >&2
		tail -n 60 "$T/kmsd.log" >&2 || true
	fi
	if [[ -n ${KMS_KEEP_TMP:-} ]]; then
		echo "test_python: kept $T"
	else
		rm -rf "$T"
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

TD=kmsd.dev
ADMIN_ID=spiffe://$TD/ns/ops/sa/admin
APP_ID=spiffe://$TD/ns/pytest/sa/app
LABEL=kmsd-pytest
KEY_ID=pytest-key

step "temporary directory $T"
kms_test_node_up

kmsctl_as() {
	local who=$1; shift
	"$BUILDDIR/kmsctl" --endpoint "$ENDPOINT" --ca "$T/pki/node-ca.pem" \
		--cert "$T/pki/$who.pem" --key "$T/pki/$who.key" "$@"
}

step "waiting for kmsd to report SERVING"
deadline=$((SECONDS + 60)) # sanitizer builds start slowly
until out=$(kmsctl_as admin health 2>&1) && grep -Eq '(^|[^A-Z_])SERVING' <<<"$out"; do
	kill -0 "$KMSD_PID" 2>/dev/null || fail "kmsd exited during start-up"
	((SECONDS < deadline)) || fail "kmsd not SERVING after 60 s (last answer: $out)"
	sleep 0.3
done
step "kmsd is SERVING"

step "creating key $KEY_ID as admin, granting $APP_ID GenerateDataKey,Decrypt"
kmsctl_as admin create-key "$KEY_ID" --description "python client test" \
	--grant "$APP_ID=GenerateDataKey,Decrypt" >"$T/create.out" 2>&1 ||
	{ cat "$T/create.out" >&2; fail "kmsctl create-key failed"; }

step "generating Python stubs from proto/kms/v1/kms.proto"
mkdir -p "$T/stubs"
"$PY" -m grpc_tools.protoc -I"$SRCDIR/proto" --python_out="$T/stubs" \
	--grpc_python_out="$T/stubs" "$SRCDIR/proto/kms/v1/kms.proto" ||
	fail "grpc_tools.protoc failed"

step "running python_client.py as $APP_ID"
"$PY" "$SRCDIR/tests/integration/python_client.py" --endpoint "$ENDPOINT" \
	--ca "$T/pki/node-ca.pem" --cert "$T/pki/app.pem" --key "$T/pki/app.key" \
	--key-id "$KEY_ID" --stubs "$T/stubs" || fail "python_client.py failed"

step "stopping kmsd"
stop_kmsd
# Under the sanitizers a leak or UB report at exit makes this non-zero.
((KMSD_STATUS == 0)) || fail "kmsd exited with status $KMSD_STATUS after SIGTERM"
step "PASS"
