#!/usr/bin/env bash
# Integration test: the kmsctl command-line client against a real kmsd (one
# node, fresh SoftHSM token, mTLS with certificates from ops/pki). Every
# positive case has a bad-input twin that checks kmsctl's exact exit status
# (1 usage or local error, 2 server error) and that stderr names the problem.
# Automake TEST protocol: exit 0 pass, 1 fail. One line per check, then a
# final "test_kmsctl: N passed, N failed" line.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	cat <<'USAGE'
usage: tests/integration/test_kmsctl.sh

Run by `make check` (KMS_SRCDIR, KMS_BUILDDIR set), or by hand from the
repository (defaults: the script's repository and its ./build). Set
KMS_KEEP_TMP=1 to keep the temporary directory for inspection, KMS_PYTHON to
use another interpreter than /usr/bin/python3 (used for free ports and JSON),
KMS_TEST_VERBOSE=1 to show kmsctl's stderr for passing checks too.
USAGE
	exit 0
fi

step() { echo "test_kmsctl: $*"; }
die() { echo "test_kmsctl: FAIL: $*" >&2; exit 1; }

SRCDIR=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
BUILDDIR=${KMS_BUILDDIR:-$SRCDIR/build}
MODULE=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PY=${KMS_PYTHON:-/usr/bin/python3}
OPS=$SRCDIR/ops
KMSCTL=$BUILDDIR/kmsctl
# Every kmsctl call is bounded twice: its own per-call deadline (--timeout)
# and, should it hang outside a call, timeout(1).
CALL_LIMIT=60

# Sanitizer builds: when run by hand, use the same options as `make check`.
: "${LSAN_OPTIONS:=suppressions=$SRCDIR/tests/lsan.supp:print_suppressions=0}"
: "${ASAN_OPTIONS:=detect_leaks=1:abort_on_error=0}"
: "${UBSAN_OPTIONS:=print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS ASAN_OPTIONS UBSAN_OPTIONS
# kmsctl reads these; the test passes every option explicitly.
unset KMS_ENDPOINT KMS_CA KMS_CERT KMS_KEY

"$PY" -c 'import json, socket' 2>/dev/null || die "$PY cannot run (needed for ports and JSON)"
for f in "$BUILDDIR/kmsd" "$KMSCTL"; do
	[[ -x $f ]] || die "$f not built"
done
[[ -r $MODULE ]] || die "PKCS#11 module $MODULE not found"
command -v timeout >/dev/null || die "timeout(1) (coreutils) is missing"

T=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-ctltest.XXXXXX")
KMSD_PID=""
# shellcheck source=tests/integration/node_lib.sh
. "$SRCDIR/tests/integration/node_lib.sh"
# shellcheck disable=SC2317 # run by the EXIT trap, which shellcheck does not follow
cleanup() {
	local rc=$?
	stop_kmsd
	if ((rc != 0)) && [[ -f $T/kmsd.log ]]; then
		echo "test_kmsctl: last lines of the kmsd log:" >&2
		tail -n 60 "$T/kmsd.log" >&2 || true
	fi
	if [[ -n ${KMS_KEEP_TMP:-} ]]; then
		echo "test_kmsctl: kept $T"
	else
		rm -rf "$T"
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

TD=kmsd.dev
ADMIN_ID=spiffe://$TD/ns/ops/sa/admin
APP_ID=spiffe://$TD/ns/demo/sa/app
OTHER_ID=spiffe://$TD/ns/other/sa/x
OPS_PREFIX="spiffe://$TD/ns/ops/*"
LABEL=kmsd-ctltest

step "temporary directory $T"
kms_test_node_up "other=$OTHER_ID" --other-ca

# kmsctl_as WHO ARGS...: kmsctl with WHO's client certificate ("none": none).
kmsctl_as() {
	local who=$1
	shift
	local id=()
	[[ $who == none ]] || id=(--cert "$T/pki/$who.pem" --key "$T/pki/$who.key")
	timeout -k 5 "$CALL_LIMIT" "$KMSCTL" --endpoint "$ENDPOINT" --ca "$T/pki/node-ca.pem" \
		"${id[@]}" "$@"
}

step "waiting for kmsd to report SERVING"
deadline=$((SECONDS + 60)) # sanitizer builds start slowly
until out=$(kmsctl_as admin health 2>&1) && grep -Eq '(^|[^A-Z_])SERVING' <<<"$out"; do
	kill -0 "$KMSD_PID" 2>/dev/null || die "kmsd exited during start-up"
	((SECONDS < deadline)) || die "kmsd not SERVING after 60 s (last answer: $out)"
	sleep 0.3
done
step "kmsd is SERVING"

# --- check helpers --------------------------------------------------------
# From here a failed check is counted, not fatal: every check runs.
set +e
OUT=$T/out ERR=$T/err
CHECK_NAME=test_kmsctl
# shellcheck source=tests/integration/check_lib.sh
. "$SRCDIR/tests/integration/check_lib.sh"
# field NAME FILE: the value of the first "NAME: value" line of FILE.
field() { sed -n "s/^$1: //p" "$2" | head -n 1; }
mode() { stat -c %a "$1"; }
# b64 FILE: the bytes of FILE in base64 on one line, as kmsctl prints them.
b64() { base64 -w0 "$1"; }

KEY=ctl-key
KEY2=ctl-key-2
CTX=(--context tenant=acme --context env=test)

# --- health ----------------------------------------------------------------
expect "health as admin: SERVING, exit 0" 0 "status: SERVING" admin health
expect "health as app: SERVING, exit 0" 0 "status: SERVING" app health

# --- create-key / describe-key -------------------------------------------------
expect "create-key with --description and two --grant" 0 "key_id: $KEY" admin \
	create-key "$KEY" --description "kmsctl test key" \
	--grant "$APP_ID=GenerateDataKey,Decrypt,Encrypt" --grant "$OPS_PREFIX=DescribeKey"
expect "create-key second key (app may only describe it)" 0 "key_id: $KEY2" admin \
	create-key "$KEY2" --grant "$APP_ID=DescribeKey"
if expect "describe-key after create-key" 0 "key_id: $KEY" admin describe-key "$KEY"; then
	verify "describe-key shows the description" grep -Fxq "description: kmsctl test key" "$OUT"
	verify "describe-key shows the app grant" \
		grep -Fxq "grant: $APP_ID=GenerateDataKey,Decrypt,Encrypt" "$OUT"
	verify "describe-key shows the prefix grant" grep -Fxq "grant: $OPS_PREFIX=DescribeKey" "$OUT"
	verify "describe-key shows exactly two grants" test "$(grep -c '^grant: ' "$OUT")" -eq 2
	verify "describe-key shows the creator" grep -Fxq "created_by: $ADMIN_ID" "$OUT"
fi
expect "create-key duplicate: exit 2 ALREADY_EXISTS" 2 "ALREADY_EXISTS|key '$KEY' already exists" admin \
	create-key "$KEY" --description "replaced?"
expect "duplicate left the key unchanged" 0 "description: kmsctl test key" admin \
	describe-key "$KEY"
expect "create-key as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	create-key app-made-key
expect "app's refused key does not exist: exit 2 NOT_FOUND" 2 "NOT_FOUND|'app-made-key'" admin \
	describe-key app-made-key
expect "create-key bad key id: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|key id" admin \
	create-key 'bad key!'
expect "create-key unknown grant operation: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|Frobnicate" admin \
	create-key grant-op-key --grant "$APP_ID=Frobnicate"
expect "create-key malformed --grant: exit 1" 1 "--grant 'no-equals-sign'" admin \
	create-key grant-bad-key --grant "no-equals-sign"
expect "malformed --grant created nothing: exit 2 NOT_FOUND" 2 "NOT_FOUND|'grant-bad-key'" admin \
	describe-key grant-bad-key
expect "describe-key as other: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|DescribeKey" other describe-key "$KEY"

# --- list-keys ------------------------------------------------------------------
if expect "list-keys as admin (human)" 0 "key_id: $KEY" admin list-keys; then
	verify "list-keys lists both keys" test "$(grep -Ec "^key_id: ($KEY|$KEY2)\$" "$OUT")" -eq 2
fi
if expect "list-keys as admin --json" 0 "" admin --json list-keys; then
	verify "list-keys --json parses, holds both keys" \
		json "$OUT" "sorted(k['key_id'] for k in j['keys']) == ['$KEY', '$KEY2']"
fi
if expect "list-keys as other (human)" 0 "" other list-keys; then
	verify "list-keys as other shows no keys" test "$(grep -c '^key_id:' "$OUT")" -eq 0
fi
if expect "list-keys as other --json" 0 "" other --json list-keys; then
	verify "list-keys --json as other: keys == []" json "$OUT" "j['keys'] == []"
fi
if expect "list-keys as app --json" 0 "" app --json list-keys; then
	verify "list-keys as app: only the key it may describe" \
		json "$OUT" "[k['key_id'] for k in j['keys']] == ['$KEY2']"
fi
expect "list-keys --page-size 0x: exit 1" 1 "--page-size" admin list-keys --page-size 0x

# Regions (issue #7): the node is region "default", the home of the multi-region keys it makes.
if expect "create-key --multi-region" 0 "key_id: $KEY-mr" admin create-key "$KEY-mr" --multi-region; then
	verify "create-key --multi-region: homed in this region" \
		grep -Fxq "home_region: default" "$OUT"
	verify "create-key --multi-region: marked multi-region" grep -Fxq "multi_region: true" "$OUT"
fi
expect "describe-key of a regional key: no home region" 0 "multi_region: false" admin \
	describe-key "$KEY"
expect "describe-key --multi-region: exit 1" 1 "--multi-region does not apply to describe-key" \
	admin describe-key "$KEY" --multi-region

# --- generate-data-key / decrypt --in ----------------------------------------------
DK=$T/dk
mkdir -m 700 "$DK"
if expect "generate-data-key --context --blob-out --plaintext-out" 0 "key_id: $KEY" app \
	generate-data-key "$KEY" "${CTX[@]}" --blob-out "$DK/blob" --plaintext-out "$DK/pt"; then
	verify "blob file is mode 0600" test "$(mode "$DK/blob")" = 600
	verify "plaintext file is mode 0600" test "$(mode "$DK/pt")" = 600
	verify "plaintext file holds 32 bytes" test "$(stat -c %s "$DK/pt")" -eq 32
	verify "stdout has neither plaintext nor blob" \
		test "$(grep -Ec '^(plaintext|ciphertext_blob):' "$OUT")" -eq 0
fi
if expect "decrypt --in blob --context (same context)" 0 "key_id: $KEY" app \
	decrypt --in "$DK/blob" "${CTX[@]}"; then
	verify "decrypt gives the data key's plaintext" \
		test "$(field plaintext "$OUT")" = "$(b64 "$DK/pt")"
fi
expect "decrypt with the context pairs in another order" 0 "plaintext: $(b64 "$DK/pt")" app \
	decrypt --in "$DK/blob" --context env=test --context tenant=acme
if expect "decrypt --plaintext-out" 0 "" app \
	decrypt --in "$DK/blob" "${CTX[@]}" --plaintext-out "$DK/pt2"; then
	verify "--plaintext-out bytes equal the data key" cmp -s "$DK/pt" "$DK/pt2"
	verify "--plaintext-out file is mode 0600" test "$(mode "$DK/pt2")" = 600
fi
expect "decrypt with a wrong context: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|failed authentication" app \
	decrypt --in "$DK/blob" --context tenant=evil --context env=test
expect "decrypt without the context: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|failed authentication" app \
	decrypt --in "$DK/blob"
expect "decrypt as other: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|may not Decrypt" other \
	decrypt --in "$DK/blob" "${CTX[@]}"
expect "generate-data-key --bytes 15: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|number_of_bytes 15" app \
	generate-data-key "$KEY" --bytes 15
expect "generate-data-key --bytes 65: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|number_of_bytes 65" app \
	generate-data-key "$KEY" --bytes 65
if expect "generate-data-key --bytes 64" 0 "key_id: $KEY" app \
	generate-data-key "$KEY" --bytes 64 --plaintext-out "$DK/pt64"; then
	verify "--bytes 64 gives 64 bytes" test "$(stat -c %s "$DK/pt64")" -eq 64
fi
if expect "generate-data-key --without-plaintext" 0 "ciphertext_blob: " app \
	generate-data-key "$KEY" --without-plaintext "${CTX[@]}"; then
	verify "--without-plaintext prints no plaintext" test "$(grep -c '^plaintext:' "$OUT")" -eq 0
	NOPT_BLOB=$(field ciphertext_blob "$OUT")
	if expect "--without-plaintext blob decrypts" 0 "plaintext: " app \
		decrypt --blob "$NOPT_BLOB" "${CTX[@]}"; then
		verify "--without-plaintext data key is 32 bytes" \
			test "$(field plaintext "$OUT" | base64 -d | wc -c)" -eq 32
	fi
fi
expect "generate-data-key as other: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|may not GenerateDataKey" other \
	generate-data-key "$KEY"
expect "generate-data-key unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin \
	generate-data-key no-such-key

# --- encrypt / decrypt --blob ------------------------------------------------------
PT_B64=$(printf 'kmsctl round trip \x00\x01\xfe\xff' | base64 -w0)
if expect "encrypt --plaintext BASE64 --context" 0 "ciphertext_blob: " app \
	encrypt "$KEY" --plaintext "$PT_B64" "${CTX[@]}"; then
	BLOB=$(field ciphertext_blob "$OUT")
	expect "decrypt --blob BASE64: round trip" 0 "plaintext: $PT_B64" app \
		decrypt --blob "$BLOB" "${CTX[@]}"
	# Tampered twin: flip the last byte of the blob (the GCM tag, SP 800-38D).
	TAMPERED=$("$PY" -c '
import base64, sys
b = bytearray(base64.b64decode(sys.argv[1])); b[-1] ^= 1
print(base64.b64encode(bytes(b)).decode())' "$BLOB")
	expect "decrypt a tampered blob: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|failed authentication" app \
		decrypt --blob "$TAMPERED" "${CTX[@]}"
fi
head -c 4096 /dev/urandom >"$T/in4096"
if expect "encrypt --in FILE (4096 bytes) --blob-out" 0 "key_id: $KEY" app \
	encrypt "$KEY" --in "$T/in4096" --blob-out "$T/blob4096"; then
	verify "encrypt --blob-out file is mode 0600" test "$(mode "$T/blob4096")" = 600
	expect "decrypt --blob BASE64 of the 4096-byte file: round trip" 0 \
		"plaintext: $(b64 "$T/in4096")" app decrypt --blob "$(b64 "$T/blob4096")"
fi
head -c 4097 /dev/urandom >"$T/in4097"
expect "encrypt a 4097-byte --in file: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|4097 bytes" app \
	encrypt "$KEY" --in "$T/in4097"
expect "encrypt invalid base64 --plaintext: exit 1" 1 "--plaintext is not valid base64" app \
	encrypt "$KEY" --plaintext 'not*base64!'
expect "decrypt invalid base64 --blob: exit 1" 1 "--blob is not valid base64" app decrypt --blob '@@@'
expect "encrypt with both --plaintext and --in: exit 1" 1 "exactly one of --plaintext and --in" app \
	encrypt "$KEY" --plaintext "$PT_B64" --in "$T/in4096"
expect "encrypt --in a missing file: exit 1" 1 "$T/missing" app encrypt "$KEY" --in "$T/missing"
expect "encrypt with a key app may only describe: exit 2 PERMISSION_DENIED" 2 \
	"PERMISSION_DENIED|may not Encrypt" app encrypt "$KEY2" --plaintext "$PT_B64"

# --- --json output -------------------------------------------------------------------
if expect "generate-data-key --json" 0 "" app --json generate-data-key "$KEY" "${CTX[@]}"; then
	verify "generate-data-key --json has key_id, key_version, plaintext, ciphertext_blob" \
		json "$OUT" "j['key_id'] == '$KEY' and j['key_version'] == 1 and
len(base64.b64decode(j['plaintext'])) == 32 and len(base64.b64decode(j['ciphertext_blob'])) > 32"
	cp "$OUT" "$T/gdk.json"
	GDK_BLOB=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ciphertext_blob"])' "$T/gdk.json")
	if expect "decrypt --json" 0 "" app --json decrypt --blob "$GDK_BLOB" "${CTX[@]}"; then
		verify "decrypt --json has key_id, key_version and the same plaintext" \
			"$PY" -c '
import json, sys
g, d = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
sys.exit(0 if d["key_id"] == g["key_id"] and d["key_version"] == 1 and
         d["plaintext"] == g["plaintext"] else 1)' "$T/gdk.json" "$OUT"
	fi
fi
if expect "generate-data-key --json --without-plaintext" 0 "" app \
	--json generate-data-key "$KEY" --without-plaintext; then
	verify "--json --without-plaintext has a blob and no plaintext" \
		json "$OUT" "'plaintext' not in j and len(j['ciphertext_blob']) > 0"
fi
if expect "describe-key --json" 0 "" admin --json describe-key "$KEY"; then
	verify "describe-key --json has key_id, description, enabled, grants" \
		json "$OUT" "j['key_id'] == '$KEY' and j['description'] == 'kmsctl test key' and
j['enabled'] is True and j['primary_version'] == 1 and
sorted((g['principal'], tuple(g['operations'])) for g in j['grants']) ==
sorted([('$APP_ID', ('GenerateDataKey', 'Decrypt', 'Encrypt')), ('$OPS_PREFIX', ('DescribeKey',))])"
fi
expect "describe-key --json unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin \
	--json describe-key no-such-key

# --- connection and usage errors ------------------------------------------------------
RC=0
timeout -k 5 "$CALL_LIMIT" "$KMSCTL" --endpoint "$ENDPOINT" --cert "$T/pki/admin.pem" \
	--key "$T/pki/admin.key" health >"$OUT" 2>"$ERR" || RC=$?
if ((RC == 1)) && grep -Fq "CA file" "$ERR"; then ok "no --ca: exit 1"; else bad "no --ca: exit 1" "exit status $RC"; fi
expect "--cert without --key: exit 1" 1 "client certificate and its key" none --cert "$T/pki/admin.pem" health
expect "unknown command: exit 1" 1 "unknown command" admin frobnicate
expect "client certificate from another CA: exit 2 UNAVAILABLE" 2 "UNAVAILABLE" none \
	--cert "$T/pki/other-client.pem" --key "$T/pki/other-client.key" health
expect "no client certificate: exit 2 UNAVAILABLE" 2 "UNAVAILABLE" none health
RC=0
timeout -k 5 "$CALL_LIMIT" "$KMSCTL" --endpoint "$ENDPOINT" --ca "$T/pki/other-ca.pem" \
	--cert "$T/pki/admin.pem" --key "$T/pki/admin.key" health >"$OUT" 2>"$ERR" || RC=$?
if ((RC == 2)) && grep -Fq UNAVAILABLE "$ERR"; then
	ok "server not under --ca: exit 2 UNAVAILABLE"
else
	bad "server not under --ca: exit 2 UNAVAILABLE" "exit status $RC"
fi

# --- cluster ----------------------------------------------------------------------------
if expect "cluster status as admin" 0 "leader: 1" admin cluster status; then
	verify "cluster status: exactly one member, node 1 the leader" \
		test "$(awk 'NR > 2 && NF' "$OUT" | wc -l)" -eq 1 -a \
		"$(awk 'NR == 3 { print $1, $2, $3, $4 }' "$OUT")" = "1 $ENDPOINT $RAFT leader"
	# The domain key at least: the HSM-KEYS column counts the node's secret keys.
	verify "cluster status: an HSM-KEYS column counting the domain key" \
		test "$(awk 'NR == 2 { print $10 }' "$OUT")" = HSM-KEYS -a \
		"$(awk 'NR == 3 { print ($10 >= 1) }' "$OUT")" = 1
fi
if expect "cluster status --json as admin" 0 "" admin --json cluster status; then
	verify "cluster status --json: leader_id 1, one voter member, region default" \
		json "$OUT" "j['leader_id'] == 1 and len(j['members']) == 1 and j['region'] == 'default' and
j['members'][0]['id'] == 1 and j['members'][0]['role'] == 'leader' and
j['members'][0]['raft_role'] == 'voter' and j['members'][0]['grpc_address'] == '$ENDPOINT' and
j['members'][0]['hsm_secret_keys'] >= 1 and j['members'][0]['not_serving_reason'] == ''"
fi
expect "cluster status as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app cluster status
expect "cluster join bad --raft: exit 1" 1 "--raft 'bogus'" admin \
	cluster join --id 2 --raft bogus --grpc 127.0.0.1:1
expect "cluster join --raft port 0: exit 1" 1 "--raft '127.0.0.1:0'" admin \
	cluster join --id 2 --raft 127.0.0.1:0 --grpc 127.0.0.1:1
expect "cluster join --id 0: exit 1" 1 "--id" admin \
	cluster join --id 0 --raft 127.0.0.1:1 --grpc 127.0.0.1:1
expect "unknown cluster subcommand: exit 1" 1 "frob" admin cluster frob
# Membership is a root operation: the direct calls name the quorum command.
expect "cluster remove: exit 2 FAILED_PRECONDITION naming the quorum command" 2 \
	"FAILED_PRECONDITION|kmsctl quorum propose remove-member --id N" admin cluster remove --id 9
expect "propose remove-member of a node that is not a member: exit 2" 2 "NOT_FOUND|node 9 is not a member" \
	admin quorum propose remove-member --id 9
expect "propose remove-member of the last member: exit 2" 2 "FAILED_PRECONDITION|only member" \
	admin quorum propose remove-member --id 1
expect "cluster remove as app: exit 2" 2 "PERMISSION_DENIED" app cluster remove --id 1
expect "propose remove-member as app: exit 2" 2 "PERMISSION_DENIED" app quorum propose remove-member --id 1
# cluster join: kmsctl checks the fingerprint's form and the ranges of --grant-ttl and
# --wait-timeout (exit 1, naming the option). The twin of each refusal passes kmsctl and
# reaches the server, which refuses it as a root operation called directly (naming the quorum
# command): no member is recorded either way.
FP=$(printf 'kmsctl test transport key' | sha256sum | cut -d' ' -f1)
JOIN=(cluster join --id 2 --raft 127.0.0.1:1 --grpc 127.0.0.1:2)
JOIN_SELF=(cluster join --id 1 --raft "$RAFT" --grpc "$ENDPOINT")
expect "cluster join without --transport-key-sha256: exit 1" 1 "needs --transport-key-sha256" admin \
	"${JOIN[@]}"
expect "cluster join --transport-key-sha256 of 63 digits: exit 1" 1 "--transport-key-sha256 must be 64 hex digits" \
	admin "${JOIN[@]}" --transport-key-sha256 "${FP:1}"
expect "cluster join --transport-key-sha256 of 65 digits: exit 1" 1 "--transport-key-sha256 must be 64 hex digits" \
	admin "${JOIN[@]}" --transport-key-sha256 "${FP}0"
expect "cluster join --transport-key-sha256 not hex: exit 1" 1 "--transport-key-sha256 has a character that is not a hex digit" \
	admin "${JOIN[@]}" --transport-key-sha256 "${FP:0:63}g"
expect "cluster join --transport-key-sha256 empty: exit 1" 1 "--transport-key-sha256 must be 64 hex digits" \
	admin "${JOIN[@]}" --transport-key-sha256 ""
expect "cluster join a well-formed fingerprint passes kmsctl: exit 2 FAILED_PRECONDITION" 2 \
	"FAILED_PRECONDITION|kmsctl quorum propose add-member" admin "${JOIN_SELF[@]}" --transport-key-sha256 "$FP"
expect "cluster join an upper-case fingerprint passes kmsctl too" 2 "FAILED_PRECONDITION|kmsctl quorum propose add-member" \
	admin "${JOIN_SELF[@]}" --transport-key-sha256 "${FP^^}"
for bad_ttl in 0 86401 -1 10s; do
	expect "cluster join --grant-ttl $bad_ttl: exit 1" 1 "--grant-ttl wants a whole number from 1 to 86400" \
		admin "${JOIN[@]}" --transport-key-sha256 "$FP" --grant-ttl "$bad_ttl"
done
for bad_wait in 0 301 -1 1m; do
	expect "cluster join --wait-timeout $bad_wait: exit 1" 1 "--wait-timeout wants a whole number from 1 to 300" \
		admin "${JOIN[@]}" --transport-key-sha256 "$FP" --wait-timeout "$bad_wait"
done
expect "cluster join --grant-ttl 1 --wait-timeout 1 pass kmsctl and the server's checks" 2 \
	"FAILED_PRECONDITION|kmsctl quorum propose add-member" admin "${JOIN_SELF[@]}" --transport-key-sha256 "$FP" \
	--grant-ttl 1 --wait-timeout 1
expect "cluster join --grant-ttl 86400 --wait-timeout 300 pass kmsctl and the server's checks" 2 \
	"FAILED_PRECONDITION|kmsctl quorum propose add-member" admin "${JOIN_SELF[@]}" --transport-key-sha256 "$FP" \
	--grant-ttl 86400 --wait-timeout 300
expect "cluster join as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	"${JOIN[@]}" --transport-key-sha256 "$FP"
expect "cluster status --grant-ttl: exit 1" 1 "--grant-ttl does not apply to cluster status" admin \
	cluster status --grant-ttl 60
expect "cluster remove --transport-key-sha256: exit 1" 1 "--transport-key-sha256 does not apply to cluster remove" \
	admin cluster remove --id 2 --transport-key-sha256 "$FP"
expect "propose add-member of node 1, a member already: exit 2" 2 "FAILED_PRECONDITION|node 1 is already a member" \
	admin quorum propose add-member --id 1 --raft "$RAFT" --grpc "$ENDPOINT" --transport-key-sha256 "$FP"
expect "propose add-member --grant-ttl 86401: exit 1" 1 "--grant-ttl" admin \
	quorum propose add-member --id 2 --raft 127.0.0.1:1 --grpc 127.0.0.1:2 --transport-key-sha256 "$FP" --grant-ttl 86401
expect "propose add-member without --transport-key-sha256: exit 1" 1 "add-member needs" admin \
	quorum propose add-member --id 2 --raft 127.0.0.1:1 --grpc 127.0.0.1:2
if expect "cluster status --json after the refused joins" 0 "" admin --json cluster status; then
	verify "refused joins left one member" json "$OUT" "len(j['members']) == 1"
fi

# --- admins -------------------------------------------------------------------------------
# kmsctl refuses locally (exit 1) what the command line alone decides: no ID, an empty entry,
# a string that is not a SPIFFE ID with a path, an ID given twice. The server refuses (exit 2
# INVALID_ARGUMENT) what its rules decide: another trust domain, a node identity, over 256.
# After every refusal the list is still the configuration's one administrator.
admins_unchanged() {
	local name="$1: the list is unchanged"
	run admin --json admins list
	if ((RC == 0)) && json "$OUT" "j == {'administrators': ['$ADMIN_ID']}"; then
		ok "$name"
	else
		bad "$name" "admins list: exit status $RC"
	fi
}
if expect "admins list as admin" 0 "$ADMIN_ID" admin admins list; then
	verify "admins list: the configuration's administrator, alone" test "$(cat "$OUT")" = "$ADMIN_ID"
fi
if expect "admins list --json as admin" 0 "" admin --json admins list; then
	verify "admins list --json: {\"administrators\": [admin]}" \
		json "$OUT" "j == {'administrators': ['$ADMIN_ID']}"
fi
expect "admins list as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app admins list
expect "admins set as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	admins set "$ADMIN_ID,$APP_ID"
admins_unchanged "admins set as app"
expect "admins list with an operand: exit 1" 1 "unexpected argument 'extra'" admin admins list extra
expect "admins without a subcommand: exit 1" 1 "admins needs a subcommand: list or set" admin admins
expect "admins unknown subcommand: exit 1" 1 "unknown admins subcommand 'add'" admin admins add "$APP_ID"
expect "admins set --id: exit 1" 1 "--id does not apply to admins" admin admins set "$ADMIN_ID" --id 1

# The administrators are a root operation: 'admins set' names the quorum command, and changes
# nothing; two of the three operators change the list with 'quorum propose' and 'quorum approve'.
expect "admins set as admin: exit 2 FAILED_PRECONDITION naming the quorum command" 2 \
	"FAILED_PRECONDITION|kmsctl quorum propose set-administrators" admin admins set "$ADMIN_ID,$APP_ID"
admins_unchanged "admins set, a root operation"
OPK=$T/pki/operators
# quorum_set NAME ID... : proposes set-administrators with the IDs and approves it with operator1
# and operator2; the proposal's JSON is in $OUT.
quorum_set() {
	local name=$1 id
	shift
	expect "$name: propose" 0 "" admin --json quorum propose set-administrators "$@" || return 1
	id=$(jget "$OUT" "j['proposal_id']")
	expect "$name: approve (operator1)" 0 "" admin --json quorum approve "$id" --operator operator1 \
		--signing-key "$OPK/operator1.key" --yes || return 1
	expect "$name: approve (operator2)" 0 "" admin --json quorum approve "$id" --operator operator2 \
		--signing-key "$OPK/operator2.key" --yes || return 1
	verify "$name: executed" json "$OUT" "j['state'] == 'executed'"
}
if quorum_set "quorum: ADMIN,APP" "$ADMIN_ID,$APP_ID"; then
	verify "the executed proposal names the new list" json "$OUT" \
		"j['administrators'] == ['$ADMIN_ID', '$APP_ID'] and len(j['approvals']) == 2"
fi
if expect "admins list as app, now an administrator" 0 "$APP_ID" app --json admins list; then
	verify "admins list --json: [admin, app]" json "$OUT" "j['administrators'] == ['$ADMIN_ID', '$APP_ID']"
fi
expect "create-key as app, now an administrator" 0 "created_by: $APP_ID" app create-key app-admin-key
quorum_set "quorum: ADMIN alone, proposed by the app" "$ADMIN_ID"
expect "create-key as app, no longer an administrator: exit 2 PERMISSION_DENIED" 2 \
	"PERMISSION_DENIED|not an administrator" app create-key app-admin-key-2
expect "the refused key does not exist: exit 2 NOT_FOUND" 2 "NOT_FOUND|'app-admin-key-2'" admin \
	describe-key app-admin-key-2
expect "admins list as app, no longer an administrator: exit 2" 2 "PERMISSION_DENIED" app admins list
admins_unchanged "after putting the list back"

# Refused by kmsctl: exit 1, nothing sent.
expect "admins set without an ID: exit 1" 1 "admins set needs ID[,ID...]" admin admins set
admins_unchanged "no ID"
expect "admins set '': exit 1" 1 "admins set: an empty ID" admin admins set ""
admins_unchanged "an empty argument"
expect "admins set with a trailing comma: exit 1" 1 "admins set: an empty ID (in '$ADMIN_ID,')" admin \
	admins set "$ADMIN_ID,"
admins_unchanged "a trailing comma"
expect "admins set a non-SPIFFE string: exit 1" 1 "'ops-admin' is not a SPIFFE ID" admin \
	admins set "$ADMIN_ID,ops-admin"
admins_unchanged "a non-SPIFFE string"
expect "admins set a trust domain without a path: exit 1" 1 "'spiffe://$TD' is not a SPIFFE ID|no workload" admin \
	admins set "$ADMIN_ID" "spiffe://$TD"
admins_unchanged "a trust domain without a path"
expect "admins set a duplicate in one operand: exit 1" 1 "'$APP_ID' is given twice" admin \
	admins set "$ADMIN_ID,$APP_ID,$APP_ID"
admins_unchanged "a duplicate in one operand"
expect "admins set a duplicate across operands: exit 1" 1 "'$ADMIN_ID' is given twice" admin \
	admins set "$ADMIN_ID,$APP_ID" "$ADMIN_ID"
admins_unchanged "a duplicate across operands"

# Refused by the server: exit 2 INVALID_ARGUMENT (the node identity and the size limit kmsctl
# refuses itself, with the server's own rules, before proposing).
expect "propose a node identity: exit 1" 1 "is a node identity" admin \
	quorum propose set-administrators "$ADMIN_ID,spiffe://$TD/kmsd/node/1"
admins_unchanged "a node identity"
expect "propose an ID of another trust domain: exit 2 INVALID_ARGUMENT" 2 \
	"INVALID_ARGUMENT|not in this cluster's trust domain '$TD'" admin \
	quorum propose set-administrators "$ADMIN_ID,spiffe://other.example/ns/ops/sa/admin"
admins_unchanged "another trust domain"
MANY=("$ADMIN_ID")
for ((i = 1; i <= 256; i++)); do MANY+=("spiffe://$TD/ns/ops/sa/admin-$i"); done
expect "propose 257 IDs: exit 1" 1 "257 administrators, more than 256" admin \
	quorum propose set-administrators "${MANY[@]}"
admins_unchanged "257 IDs"
if quorum_set "quorum: 256 IDs, the limit" "${MANY[@]:0:256}"; then
	verify "256 IDs: all of them in the executed proposal" json "$OUT" "len(j['administrators']) == 256"
fi
quorum_set "quorum: ADMIN alone again" "$ADMIN_ID"
admins_unchanged "after the 256"

# --- region (issue #7) --------------------------------------------------------------------------
expect "region status: this region, no link" 0 "region: default" admin region status
if expect "region status --json" 0 "" admin --json region status; then
	verify "region status --json: region default, no links" json "$OUT" \
		"j['region'] == 'default' and j['links'] == []"
fi
expect "region status as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" \
	app region status
expect "region link without --peer-node-ca: exit 1" 1 "link needs" admin region link --peer eu-west \
	--role secondary --peer-endpoints 127.0.0.1:1 --peer-trust-domain other.example
expect "region link --role sideways: exit 1" 1 "role" admin region link --peer eu-west \
	--role sideways --peer-endpoints 127.0.0.1:1 --peer-trust-domain other.example \
	--peer-node-ca "$T/pki/other-ca.pem"
expect "region link --peer EU: exit 1" 1 "region name 'EU'" admin region link --peer EU \
	--role secondary --peer-endpoints 127.0.0.1:1 --peer-trust-domain other.example \
	--peer-node-ca "$T/pki/other-ca.pem"
expect "region link --peer-node-ca of a key: exit 1" 1 "no PEM certificate" admin region link \
	--peer eu-west --role secondary --peer-endpoints 127.0.0.1:1 \
	--peer-trust-domain other.example --peer-node-ca "$T/pki/other-ca.key"
expect "region status --peer: exit 1" 1 "status takes no options" admin region status --peer x
if expect "region link: a proposal" 0 "" admin --json region link --peer eu-west --role secondary \
	--peer-endpoints 127.0.0.1:1,127.0.0.1:2 --peer-trust-domain other.example \
	--peer-node-ca "$T/pki/other-ca.pem" --ttl 600; then
	verify "region link prints proposal_id and digest" json "$OUT" \
		"len(j['proposal_id']) == 32 and len(j['digest']) == 64"
	RID=$(jget "$OUT" "j['proposal_id']")
	WANT_FP=$(openssl x509 -in "$T/pki/other-ca.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f')
	if expect "quorum show of the link" 0 "" admin --json quorum show "$RID"; then
		verify "quorum show: what operators approve, with the CA's fingerprint" json "$OUT" \
			"j['operation'] == 'link-region' and j['peer_region'] == 'eu-west' and j['role'] == 'secondary' and j['mode'] == 'async' and j['peer_node_ca_sha256'] == ['$WANT_FP'] and len(j['peer_endpoints']) == 2"
	fi
	expect "cancel the link proposal" 0 "" admin quorum cancel "$RID"
fi

# --- quorum ------------------------------------------------------------------------------------
if expect "quorum propose rotate-domain-key --ttl 600" 0 "" admin --json quorum propose rotate-domain-key \
	--ttl 600; then
	verify "propose prints proposal_id, digest and state pending" json "$OUT" \
		"len(j['proposal_id']) == 32 and len(j['digest']) == 64 and j['state'] == 'pending' and j['expires_at_unix'] - j['created_at_unix'] == 600"
fi
QID=$(jget "$OUT" "j['proposal_id']") QDIGEST=$(jget "$OUT" "j['digest']")
expect "quorum show: pending, text" 0 "state: pending" admin quorum show "$QID"
expect "quorum list: the proposal, text" 0 "$QID pending rotate-domain-key approvals 0/2" admin quorum list
if expect "quorum list --json" 0 "" admin --json quorum list; then
	verify "quorum list --json names it" json "$OUT" "any(p['proposal_id'] == '$QID' for p in j['proposals'])"
fi
# Offline signing: no server, no certificate.
if expect "quorum sign (offline)" 0 "" none --endpoint 127.0.0.1:1 quorum sign --digest "$QDIGEST" \
	--signing-key "$OPK/operator3.key"; then
	SIG=$(cat "$OUT")
	verify "the signature is 64 bytes of base64" test "$(base64 -d <<<"$SIG" | wc -c)" = 64
fi
expect "quorum sign --digest of 31 bytes: exit 1" 1 "digest" none quorum sign --digest "${QDIGEST:2}" \
	--signing-key "$OPK/operator3.key"
expect "quorum sign with a public key file: exit 1" 1 "private key" none \
	quorum sign --digest "$QDIGEST" --signing-key "$OPK/operator3.pub"
# Refusals: exit 2 and nothing recorded.
expect "approve with operator3's signature as operator1: exit 2 PERMISSION_DENIED" 2 \
	"PERMISSION_DENIED|does not verify" admin quorum approve "$QID" --operator operator1 --signature "$SIG" --yes
expect "approve as an unknown operator: exit 2 PERMISSION_DENIED" 2 \
	"PERMISSION_DENIED|'nobody' is not one of the cluster's operators" admin \
	quorum approve "$QID" --operator nobody --signature "$SIG" --yes
expect "approve as the app (not an administrator): exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app \
	quorum approve "$QID" --operator operator3 --signature "$SIG" --yes
if expect "after the refusals: still no approval" 0 "" admin --json quorum show "$QID"; then
	verify "show --json: pending, no approvals" json "$OUT" "j['state'] == 'pending' and j['approvals'] == []"
fi
expect "approve --signature made offline" 0 "" admin --json quorum approve "$QID" --operator operator3 \
	--signature "$SIG" --yes
expect "the same operator again: exit 2 FAILED_PRECONDITION" 2 "FAILED_PRECONDITION|already" admin \
	quorum approve "$QID" --operator operator3 --signature "$SIG" --yes
if expect "the second approval" 0 "" admin --json quorum approve "$QID" --operator operator1 \
	--signing-key "$OPK/operator1.key" --yes; then
	verify "the approval shows what was approved on stderr" grep -q '"operation": "rotate-domain-key"' "$ERR"
fi
# The leader begins the domain-key rotation, and the proposal records that.
for _ in $(seq 50); do
	run admin --json quorum show "$QID"
	json "$OUT" "j['state'] not in ('pending', 'approved')" && break
	sleep 0.2
done
verify "rotate-domain-key: executed" json "$OUT" "j['state'] == 'executed'"
# Usage errors: exit 1, nothing sent.
expect "quorum without a subcommand: exit 1" 1 "quorum needs a subcommand" admin quorum
expect "quorum propose an unknown operation: exit 1" 1 "unknown operation 'rotate-everything'" admin \
	quorum propose rotate-everything
expect "quorum approve without --operator: exit 1" 1 "needs --operator" admin quorum approve "$QID" \
	--signature "$SIG"
expect "quorum approve with both --signing-key and --signature: exit 1" 1 "one of them" admin \
	quorum approve "$QID" --operator operator1 --signature "$SIG" --signing-key "$OPK/operator1.key"
expect "quorum propose --ttl 86401: exit 1" 1 "--ttl" admin quorum propose rotate-domain-key --ttl 86401
expect "quorum propose remove-member without --id: exit 1" 1 "remove-member needs --id" admin \
	quorum propose remove-member
expect "quorum propose set-operators M over N: exit 1" 1 "cannot be reached" admin \
	quorum propose set-operators 3 "operator1:$OPK/operator1.pub,operator2:$OPK/operator2.pub"
expect "quorum show of an unknown proposal: exit 2 NOT_FOUND" 2 "NOT_FOUND" admin \
	quorum show 00000000000000000000000000000000
# Cancel: by its proposer; the app (no administrator) may not.
expect "propose to cancel" 0 "" admin --json quorum propose rotate-domain-key
CID=$(jget "$OUT" "j['proposal_id']")
expect "cancel as the app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app quorum cancel "$CID"
if expect "cancel as the proposer" 0 "" admin --json quorum cancel "$CID"; then
	verify "cancelled" json "$OUT" "j['state'] == 'cancelled'"
fi
expect "approve a cancelled proposal: exit 2 FAILED_PRECONDITION" 2 "FAILED_PRECONDITION|cancelled" admin \
	quorum approve "$CID" --operator operator1 --signing-key "$OPK/operator1.key" --yes

# --- key administration: rotate, rotation policy, enable/disable, deletion, policy -------------
# Every refusal is followed by a look at the key: nothing changed.
LC=ctl-life
ALL_OPS=Encrypt,Decrypt,GenerateDataKey,DescribeKey,ReEncryptFrom,ReEncryptTo
# key_is NAME KEY EXPR: describe-key --json KEY as admin satisfies EXPR.
key_is() {
	local name=$1 key=$2 expr=$3
	run admin --json describe-key "$key"
	if ((RC == 0)) && json "$OUT" "$expr"; then ok "$name"; else bad "$name" "describe-key: exit $RC"; fi
}
expect "create-key $LC with every operation for app" 0 "key_id: $LC" admin \
	create-key "$LC" --grant "$APP_ID=$ALL_OPS"
LC_PT=$(printf 'before the rotation' | base64 -w0)
LC_V1_BLOB=""
if expect "encrypt under $LC version 1" 0 "key_version: 1" app encrypt "$LC" --plaintext "$LC_PT" "${CTX[@]}"; then
	LC_V1_BLOB=$(field ciphertext_blob "$OUT")
fi
if expect "rotate-key $LC" 0 "primary_version: 2" admin rotate-key "$LC"; then
	verify "rotate-key prints versions 1,2" grep -Fxq "versions: 1,2" "$OUT"
	verify "rotate-key prints one line per version" test "$(grep -c '^version: ' "$OUT")" -eq 2
fi
if expect "rotate-key --json $LC" 0 "" admin --json rotate-key "$LC"; then
	verify "rotate-key --json: primary 3, versions [1,2,3], version_details with states" \
		json "$OUT" "j['key_id'] == '$LC' and j['primary_version'] == 3 and j['versions'] == [1, 2, 3] and
[v['version'] for v in j['version_details']] == [1, 2, 3] and
all(v['state'] == 'Enabled' for v in j['version_details'])"
fi
expect "rotate-key as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app rotate-key "$LC"
key_is "the refused rotation left primary 3" "$LC" "j['primary_version'] == 3"
expect "rotate-key unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|no-such-key" admin rotate-key no-such-key
expect "rotate-key without KEY_ID: exit 1" 1 "rotate-key needs a KEY_ID" admin rotate-key
expect "rotate-key with two operands: exit 1" 1 "unexpected argument 'extra'" admin rotate-key "$LC" extra
expect "rotate-key --days: exit 1" 1 "--days does not apply to rotate-key" admin rotate-key "$LC" --days 7
if [[ -n $LC_V1_BLOB ]]; then
	expect "a version-1 blob still decrypts after two rotations" 0 "plaintext: $LC_PT" app \
		decrypt --blob "$LC_V1_BLOB" "${CTX[@]}"
fi
expect "encrypt after the rotations uses version 3" 0 "key_version: 3" app \
	encrypt "$LC" --plaintext "$LC_PT"

if expect "set-rotation-policy --period 90d --max-encryptions 1000000" 0 "" admin --json \
	set-rotation-policy "$LC" --period 90d --max-encryptions 1000000; then
	verify "rotation policy: 7776000 s, 1000000 encryptions" json "$OUT" \
		"j['rotation_period_seconds'] == 7776000 and j['max_encryptions_per_version'] == 1000000 and
j['next_rotation_unix'] > 0"
fi
if expect "set-rotation-policy --period 24h alone" 0 "rotation_period_seconds: 86400" admin \
	set-rotation-policy "$LC" --period 24h; then
	verify "--period alone puts max_encryptions back to its default (2^30)" \
		grep -Fxq "max_encryptions_per_version: 1073741824" "$OUT"
fi
expect "set-rotation-policy --period 3600 (seconds)" 0 "rotation_period_seconds: 3600" admin \
	set-rotation-policy "$LC" --period 3600
for bad_period in 5x 1.5d -1 d '' 99999999999999999999; do
	expect "set-rotation-policy --period '$bad_period': exit 1" 1 "--period wants seconds" admin \
		set-rotation-policy "$LC" --period "$bad_period"
done
expect "set-rotation-policy --max-encryptions abc: exit 1" 1 "--max-encryptions wants a whole number" admin \
	set-rotation-policy "$LC" --max-encryptions abc
expect "set-rotation-policy without an option: exit 1" 1 "needs --period or --max-encryptions" admin \
	set-rotation-policy "$LC"
expect "set-rotation-policy --max-encryptions 2^32+1: exit 2 INVALID_ARGUMENT" 2 \
	"INVALID_ARGUMENT|max_encryptions_per_version 4294967297" admin \
	set-rotation-policy "$LC" --max-encryptions 4294967297
expect "set-rotation-policy --period 10 (under a minute): exit 2 INVALID_ARGUMENT" 2 \
	"INVALID_ARGUMENT|rotation_period_seconds 10" admin \
	set-rotation-policy "$LC" --period 10
expect "set-rotation-policy as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	set-rotation-policy "$LC" --period 1d
expect "set-rotation-policy unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin \
	set-rotation-policy no-such-key --period 1d
key_is "refused rotation policies left 3600 s and 2^30" "$LC" \
	"j['rotation_period_seconds'] == 3600 and j['max_encryptions_per_version'] in (0, 1073741824)"
expect "set-rotation-policy --period 0 turns rotation by age off" 0 "rotation_period_seconds: 0" admin \
	set-rotation-policy "$LC" --period 0

if expect "disable-key $LC" 0 "enabled: false" admin disable-key "$LC"; then
	verify "disable-key: key_state Disabled" grep -Fxq "key_state: Disabled" "$OUT"
fi
expect "encrypt with a disabled key: exit 2 FAILED_PRECONDITION" 2 "FAILED_PRECONDITION|is disabled" app \
	encrypt "$LC" --plaintext "$LC_PT"
if [[ -n $LC_V1_BLOB ]]; then
	expect "decrypt with a disabled key: exit 2 FAILED_PRECONDITION" 2 "FAILED_PRECONDITION|disabled" app \
		decrypt --blob "$LC_V1_BLOB" "${CTX[@]}"
fi
expect "enable-key as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app enable-key "$LC"
key_is "the refused enable-key left the key disabled" "$LC" "j['enabled'] is False and j['key_state'] == 'Disabled'"
if expect "enable-key $LC --json" 0 "" admin --json enable-key "$LC"; then
	verify "enable-key --json: enabled, key_state Enabled" json "$OUT" "j['enabled'] is True and j['key_state'] == 'Enabled'"
fi
expect "encrypt after enable-key" 0 "key_version: 3" app encrypt "$LC" --plaintext "$LC_PT"
expect "disable-key as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app disable-key "$LC"
key_is "the refused disable-key left the key enabled" "$LC" "j['enabled'] is True"
expect "disable-key unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin disable-key no-such-key
expect "enable-key unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin enable-key no-such-key

DEL=ctl-delete-me
expect "create-key $DEL" 0 "key_id: $DEL" admin create-key "$DEL" --grant "$APP_ID=Encrypt,Decrypt"
NOW=$(date +%s)
if expect "schedule-key-deletion --days 7" 0 "" admin --json schedule-key-deletion "$DEL" --days 7; then
	verify "schedule-key-deletion: PendingDeletion, deletion date about 7 days away" json "$OUT" \
		"j['key_state'] == 'PendingDeletion' and j['enabled'] is False and
abs(j['deletion_date_unix'] - ($NOW + 7 * 86400)) < 3600"
fi
expect "encrypt with a key pending deletion: exit 2 FAILED_PRECONDITION" 2 "FAILED_PRECONDITION|pending deletion" app \
	encrypt "$DEL" --plaintext "$LC_PT"
for bad_days in 0 x -3 ''; do
	expect "schedule-key-deletion --days '$bad_days': exit 1" 1 "--days wants a whole number" admin \
		schedule-key-deletion "$DEL" --days "$bad_days"
done
for bad_days in 6 31; do
	expect "schedule-key-deletion --days $bad_days: exit 2 INVALID_ARGUMENT" 2 \
		"INVALID_ARGUMENT|pending_window_days" admin \
		schedule-key-deletion "$LC" --days "$bad_days"
done
key_is "refused windows left $LC enabled" "$LC" "j['key_state'] == 'Enabled' and j['deletion_date_unix'] == 0"
expect "schedule-key-deletion as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	schedule-key-deletion "$LC" --days 7
expect "schedule-key-deletion unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin \
	schedule-key-deletion no-such-key --days 7
expect "cancel-key-deletion as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app cancel-key-deletion "$DEL"
key_is "the refused cancel left the deletion pending" "$DEL" "j['key_state'] == 'PendingDeletion'"
expect "cancel-key-deletion unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin cancel-key-deletion no-such-key
if expect "cancel-key-deletion" 0 "" admin --json cancel-key-deletion "$DEL"; then
	verify "cancel-key-deletion: Disabled, no deletion date" json "$OUT" \
		"j['key_state'] == 'Disabled' and j['deletion_date_unix'] == 0"
fi
expect "enable-key after the cancel" 0 "key_state: Enabled" admin enable-key "$DEL"
expect "encrypt with the key taken back" 0 "key_id: $DEL" app encrypt "$DEL" --plaintext "$LC_PT"
NOW=$(date +%s)
if expect "schedule-key-deletion without --days (30)" 0 "" admin --json schedule-key-deletion "$DEL"; then
	verify "the default window is 30 days" json "$OUT" "abs(j['deletion_date_unix'] - ($NOW + 30 * 86400)) < 3600"
fi

# put-key-policy: KEY2 lets app only describe it (from create-key above).
if expect "put-key-policy --grant" 0 "grant: $APP_ID=DescribeKey,Encrypt" admin \
	put-key-policy "$KEY2" --grant "$APP_ID=DescribeKey,Encrypt"; then
	verify "put-key-policy: one grant" test "$(grep -c '^grant: ' "$OUT")" -eq 1
fi
expect "encrypt allowed by the new policy" 0 "key_id: $KEY2" app encrypt "$KEY2" --plaintext "$PT_B64"
expect "describe-key --json as the policy file to edit" 0 "" admin --json describe-key "$KEY2"
cp "$OUT" "$T/policy-described.json"
if expect "put-key-policy --policy-file FILE (describe-key --json output)" 0 "" admin --json \
	put-key-policy "$KEY2" --policy-file "$T/policy-described.json"; then
	verify "the described policy went back unchanged" json "$OUT" \
		"j['grants'] == [{'principal': '$APP_ID', 'operations': ['DescribeKey', 'Encrypt']}]"
fi
printf '{"grants": [{"principal": "%s", "operations": ["DescribeKey"]}]}\n' "$APP_ID" >"$T/policy-narrow.json"
expect "put-key-policy --policy-file narrows the policy" 0 "grant: $APP_ID=DescribeKey" admin \
	put-key-policy "$KEY2" --policy-file "$T/policy-narrow.json"
expect "encrypt refused by the narrowed policy: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app \
	encrypt "$KEY2" --plaintext "$PT_B64"
POLICY_NOW="j['grants'] == [{'principal': '$APP_ID', 'operations': ['DescribeKey']}]"
expect "put-key-policy without --grant or --policy-file: exit 1" 1 "needs --grant or --policy-file" admin \
	put-key-policy "$KEY2"
expect "put-key-policy with both --grant and --policy-file: exit 1" 1 "exclude each other" admin \
	put-key-policy "$KEY2" --grant "$APP_ID=Encrypt" --policy-file "$T/policy-narrow.json"
expect "put-key-policy malformed --grant: exit 1" 1 "--grant 'nothing' is not PRINCIPAL=OP" admin \
	put-key-policy "$KEY2" --grant nothing
expect "put-key-policy --grant with an empty operation: exit 1" 1 "has an empty operation" admin \
	put-key-policy "$KEY2" --grant "$APP_ID=Encrypt,,Decrypt"
expect "put-key-policy --policy-file missing: exit 1" 1 "$T/no-policy.json" admin \
	put-key-policy "$KEY2" --policy-file "$T/no-policy.json"
printf '{"grants": [' >"$T/policy-broken.json"
expect "put-key-policy --policy-file not JSON: exit 1" 1 "is not JSON" admin \
	put-key-policy "$KEY2" --policy-file "$T/policy-broken.json"
printf '{"grant": []}' >"$T/policy-nogrants.json"
expect "put-key-policy --policy-file without grants: exit 1" 1 'has no "grants" array' admin \
	put-key-policy "$KEY2" --policy-file "$T/policy-nogrants.json"
printf '{"grants": [{"operations": ["Encrypt"]}]}' >"$T/policy-noprincipal.json"
expect "put-key-policy --policy-file grant without principal: exit 1" 1 "grant 1 needs a \"principal\"" admin \
	put-key-policy "$KEY2" --policy-file "$T/policy-noprincipal.json"
printf '{"grants": [{"principal": "%s", "operations": [7]}]}' "$APP_ID" >"$T/policy-badop.json"
expect "put-key-policy --policy-file operation not a string: exit 1" 1 "not a string" admin \
	put-key-policy "$KEY2" --policy-file "$T/policy-badop.json"
expect "put-key-policy unknown operation: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|Frobnicate" admin \
	put-key-policy "$KEY2" --grant "$APP_ID=Frobnicate"
expect "put-key-policy as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app \
	put-key-policy "$KEY2" --grant "$APP_ID=Encrypt"
expect "put-key-policy unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin \
	put-key-policy no-such-key --grant "$APP_ID=Encrypt"
key_is "refused policies left the narrowed one" "$KEY2" "$POLICY_NOW"
printf '{"grants": []}' >"$T/policy-empty.json"
if expect "put-key-policy an empty policy from a file" 0 "" admin --json \
	put-key-policy "$KEY2" --policy-file "$T/policy-empty.json"; then
	verify "the empty policy has no grants" json "$OUT" "j['grants'] == []"
fi
expect "describe-key as app under the empty policy: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app \
	describe-key "$KEY2"
expect "put-key-policy back to describe-only" 0 "" admin put-key-policy "$KEY2" --grant "$APP_ID=DescribeKey"

# --- aliases ----------------------------------------------------------------------------------
AL=alias/ctl-orders
if expect "create-alias $AL $LC" 0 "alias_name: $AL" admin create-alias "$AL" "$LC"; then
	verify "create-alias names the key" grep -Fxq "key_id: $LC" "$OUT"
fi
if expect "create-alias --json" 0 "" admin --json create-alias alias/ctl-second "$LC"; then
	verify "create-alias --json: alias_name, key_id, times" json "$OUT" \
		"j['alias_name'] == 'alias/ctl-second' and j['key_id'] == '$LC' and j['created_at_unix'] > 0"
fi
key_is "describe-key lists the key's aliases" "$LC" "sorted(j['aliases']) == ['alias/ctl-orders', 'alias/ctl-second']"
expect "describe-key through the alias names the real key" 0 "key_id: $LC" admin describe-key "$AL"
expect "encrypt through the alias names the real key" 0 "key_id: $LC" app encrypt "$AL" --plaintext "$LC_PT"
if expect "list-aliases --json" 0 "" admin --json list-aliases; then
	verify "list-aliases: both aliases, to $LC" json "$OUT" \
		"sorted((a['alias_name'], a['key_id']) for a in j['aliases']) == [('$AL', '$LC'), ('alias/ctl-second', '$LC')]"
fi
if expect "list-aliases (human)" 0 "alias_name: $AL" admin list-aliases; then
	verify "list-aliases (human): two blocks" test "$(grep -c '^alias_name: ' "$OUT")" -eq 2
fi
if expect "list-aliases --key-id $KEY (none)" 0 "" admin --json list-aliases --key-id "$KEY"; then
	verify "list-aliases --key-id of a key without aliases: []" json "$OUT" "j['aliases'] == []"
fi
if expect "list-aliases --page-size 1 --page-token ''" 0 "" admin --json list-aliases --page-size 1 --page-token ''; then
	verify "one page of one alias and a next token" json "$OUT" \
		"len(j['aliases']) == 1 and j['next_page_token'] != ''"
fi
if expect "update-alias $AL $KEY" 0 "key_id: $KEY" admin update-alias "$AL" "$KEY"; then
	verify "update-alias names the alias" grep -Fxq "alias_name: $AL" "$OUT"
fi
expect "describe-key through the updated alias" 0 "key_id: $KEY" admin describe-key "$AL"
expect "create-alias with a bad name: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|alias name" admin \
	create-alias 'alias/bad name!' "$LC"
expect "create-alias without the alias/ prefix: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|alias/" admin \
	create-alias ctl-noprefix "$LC"
expect "create-alias 'alias/' alone: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|alias name" admin create-alias alias/ "$LC"
expect "create-alias to an unknown key: exit 2 NOT_FOUND" 2 "NOT_FOUND|'no-such-key'" admin create-alias alias/ctl-x no-such-key
expect "create-alias to another alias: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|another alias" admin create-alias alias/ctl-y "$AL"
expect "create-alias of an existing alias: exit 2 ALREADY_EXISTS" 2 "ALREADY_EXISTS|already exists" admin create-alias "$AL" "$LC"
expect "create-alias as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app create-alias alias/ctl-app "$LC"
expect "update-alias as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app update-alias "$AL" "$LC"
expect "delete-alias as app: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED|not an administrator" app delete-alias "$AL"
expect "update-alias of a missing alias: exit 2 NOT_FOUND" 2 "NOT_FOUND|'alias/ctl-none'" admin update-alias alias/ctl-none "$LC"
expect "delete-alias of a missing alias: exit 2 NOT_FOUND" 2 "NOT_FOUND|'alias/ctl-none'" admin delete-alias alias/ctl-none
expect "create-alias without KEY_ID: exit 1" 1 "create-alias needs a KEY_ID" admin create-alias alias/ctl-z
expect "create-alias without operands: exit 1" 1 "create-alias needs an ALIAS" admin create-alias
expect "delete-alias with two operands: exit 1" 1 "unexpected argument" admin delete-alias "$AL" "$LC"
if expect "list-aliases after the refusals" 0 "" admin --json list-aliases; then
	verify "the refusals made no alias and changed none" json "$OUT" \
		"sorted((a['alias_name'], a['key_id']) for a in j['aliases']) == [('$AL', '$KEY'), ('alias/ctl-second', '$LC')]"
fi
expect "delete-alias" 0 "deleted $AL" admin delete-alias "$AL"
if expect "delete-alias --json" 0 "" admin --json delete-alias alias/ctl-second; then
	verify "delete-alias --json" json "$OUT" "j == {'deleted_alias': 'alias/ctl-second'}"
fi
expect "describe-key through a deleted alias: exit 2 NOT_FOUND" 2 "NOT_FOUND|'$AL'" admin describe-key "$AL"
key_is "the key outlives its aliases" "$LC" "j['aliases'] == []"

# --- re-encrypt -------------------------------------------------------------------------------
# KEY: app may Encrypt/Decrypt but not ReEncryptFrom/To; LC: app may do everything.
RE_PT=$(printf 're-encrypt me \x00\xff' | base64 -w0)
RE_BLOB=""
if expect "encrypt under $LC for re-encrypt" 0 "" app --json encrypt "$LC" --plaintext "$RE_PT" "${CTX[@]}"; then
	RE_BLOB=$(jget "$OUT" "j['ciphertext_blob']")
	RE_VER=$(jget "$OUT" "j['key_version']")
fi
expect "rotate $LC before re-encrypt" 0 "" admin rotate-key "$LC"
if expect "re-encrypt --blob --context --to (same key)" 0 "" app --json \
	re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --to "$LC" --to-context tenant=other; then
	verify "re-encrypt --json: the new primary and the source version" json "$OUT" \
		"j['key_id'] == '$LC' and j['key_version'] == $((RE_VER + 1)) and j['source_key_id'] == '$LC' and
j['source_key_version'] == $RE_VER and len(base64.b64decode(j['ciphertext_blob'])) > 0"
	NEW_BLOB=$(jget "$OUT" "j['ciphertext_blob']")
	expect "the re-encrypted blob decrypts with --to-context" 0 "plaintext: $RE_PT" app \
		decrypt --blob "$NEW_BLOB" --context tenant=other
	expect "the re-encrypted blob does not decrypt with the old context: exit 2" 2 "INVALID_ARGUMENT" app \
		decrypt --blob "$NEW_BLOB" "${CTX[@]}"
fi
printf '%s' "$RE_BLOB" | base64 -d >"$T/re.blob"
if expect "re-encrypt --in FILE --blob-out FILE" 0 "key_id: $LC" app \
	re-encrypt --in "$T/re.blob" "${CTX[@]}" --to "$LC" --blob-out "$T/re.out"; then
	verify "re-encrypt --blob-out file is mode 0600" test "$(mode "$T/re.out")" = 600
	verify "re-encrypt --blob-out: no ciphertext_blob on stdout" test "$(grep -c '^ciphertext_blob:' "$OUT")" -eq 0
	verify "re-encrypt prints source_key_version" grep -Fxq "source_key_version: $RE_VER" "$OUT"
	expect "the --blob-out blob decrypts with the same context (no --to-context)" 0 \
		"plaintext: $RE_PT" app decrypt --in "$T/re.out" "${CTX[@]}"
fi
expect "re-encrypt --key-id naming the blob's key" 0 "key_id: $LC" app \
	re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --key-id "$LC" --to "$LC"
expect "re-encrypt --key-id naming another key: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT|does not match" app \
	re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --key-id "$KEY" --to "$LC"
expect "re-encrypt without --to: exit 1" 1 "re-encrypt needs --to KEY_ID" app re-encrypt --blob "$RE_BLOB"
expect "re-encrypt with --blob and --in: exit 1" 1 "exactly one of --blob and --in" app \
	re-encrypt --blob "$RE_BLOB" --in "$T/re.blob" --to "$LC"
expect "re-encrypt bad base64: exit 1" 1 "--blob is not valid base64" app re-encrypt --blob '@@' --to "$LC"
expect "re-encrypt malformed --to-context: exit 1" 1 "--to-context 'x' is not K=V" app \
	re-encrypt --blob "$RE_BLOB" --to "$LC" --to-context x
expect "re-encrypt --to-context key twice: exit 1" 1 "--to-context key 'a' given twice" app \
	re-encrypt --blob "$RE_BLOB" --to "$LC" --to-context a=1 --to-context a=2
expect "re-encrypt with a wrong context: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT" app \
	re-encrypt --blob "$RE_BLOB" --context tenant=evil --to "$LC"
RE_TAMPERED=$("$PY" -c '
import base64, sys
b = bytearray(base64.b64decode(sys.argv[1])); b[-1] ^= 1
print(base64.b64encode(bytes(b)).decode())' "$RE_BLOB")
expect "re-encrypt a tampered blob: exit 2 INVALID_ARGUMENT" 2 "INVALID_ARGUMENT" app \
	re-encrypt --blob "$RE_TAMPERED" "${CTX[@]}" --to "$LC"
expect "re-encrypt to a key without ReEncryptTo: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app \
	re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --to "$KEY"
if expect "encrypt under $KEY (no ReEncryptFrom for app)" 0 "" app --json encrypt "$KEY" --plaintext "$RE_PT"; then
	expect "re-encrypt from a key without ReEncryptFrom: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" app \
		re-encrypt --blob "$(jget "$OUT" "j['ciphertext_blob']")" --to "$LC"
fi
expect "re-encrypt to an unknown key: exit 2 PERMISSION_DENIED (key ids cannot be probed)" 2 \
	"PERMISSION_DENIED|'no-such-key'" app re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --to no-such-key
expect "re-encrypt as admin without ReEncryptFrom on the blob's key: exit 2 PERMISSION_DENIED" 2 \
	"PERMISSION_DENIED|may not ReEncryptFrom" admin re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --to "$LC"
expect "re-encrypt as other: exit 2 PERMISSION_DENIED" 2 "PERMISSION_DENIED" other \
	re-encrypt --blob "$RE_BLOB" "${CTX[@]}" --to "$LC"

# --- kmsd shutdown ----------------------------------------------------------------------
step "stopping kmsd"
stop_kmsd
: >"$OUT"
: >"$ERR"
# Under the sanitizers a leak or UB report at exit makes this non-zero.
verify "kmsd exits 0 on SIGTERM (status $KMSD_STATUS)" test "$KMSD_STATUS" -eq 0
# shellcheck disable=SC2016 # eval expands it, when verify runs it
verify "no sanitizer report in the kmsd log" eval '! sanitizer_report "$T/kmsd.log"'

echo "test_kmsctl: $PASSED passed, $FAILED failed"
((FAILED == 0)) || exit 1
exit 0
