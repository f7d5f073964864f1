#!/usr/bin/env bash
# Integration test: `kmsctl rewrap` against a real kmsd (one node, fresh SoftHSM token).
# 100,000 data keys (made with BatchGenerateDataKey) are rewrapped to their key's new
# primary version; the run is interrupted with SIGINT mid-way, a partial tail is left
# after the last commit as a crash would, and a second run resumes: the output has one
# line per input line, in order, each decrypting to its data key under the new version,
# and the part committed before the interruption is unchanged byte for byte (no line
# was rewrapped twice). Then bad input of every kind: failed lines, --stop-on-error,
# refused resumes, usage errors.
# Automake TEST protocol: exit 0 pass, 77 skip (python3-grpcio absent), 1 fail.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	cat <<'USAGE'
usage: tests/integration/test_kmsctl_rewrap.sh

Run by `make check` (KMS_SRCDIR, KMS_BUILDDIR set), or by hand from the
repository (defaults: the script's repository and its ./build). Set
KMS_KEEP_TMP=1 to keep the temporary directory, KMS_PYTHON to use another
interpreter than /usr/bin/python3, KMS_REWRAP_N to change the number of blobs
(default 100000), KMS_TEST_VERBOSE=1 to show kmsctl's stderr for passing checks.
USAGE
	exit 0
fi

step() { echo "test_kmsctl_rewrap: $*"; }
die() { echo "test_kmsctl_rewrap: FAIL: $*" >&2; exit 1; }

SRCDIR=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
BUILDDIR=${KMS_BUILDDIR:-$SRCDIR/build}
MODULE=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PY=${KMS_PYTHON:-/usr/bin/python3}
OPS=$SRCDIR/ops
KMSCTL=$BUILDDIR/kmsctl
N=${KMS_REWRAP_N:-100000}
CALL_LIMIT=300

: "${LSAN_OPTIONS:=suppressions=$SRCDIR/tests/lsan.supp:print_suppressions=0}"
: "${ASAN_OPTIONS:=detect_leaks=1:abort_on_error=0}"
: "${UBSAN_OPTIONS:=print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS ASAN_OPTIONS UBSAN_OPTIONS
unset KMS_ENDPOINT KMS_CA KMS_CERT KMS_KEY

if ! "$PY" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
	echo "test_kmsctl_rewrap: SKIP: python3-grpcio/grpc-tools are not installed for $PY (ops/install-deps)"
	exit 77
fi
for f in "$BUILDDIR/kmsd" "$KMSCTL"; do
	[[ -x $f ]] || die "$f not built"
done
[[ -r $MODULE ]] || die "PKCS#11 module $MODULE not found"

T=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-rewrap.XXXXXX")
KMSD_PID=""
REWRAP_PID=""
# shellcheck source=tests/integration/node_lib.sh
. "$SRCDIR/tests/integration/node_lib.sh"
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	[[ -z $REWRAP_PID ]] || kill -KILL "$REWRAP_PID" 2>/dev/null || true
	stop_kmsd
	if ((rc != 0 && rc != 77)) && [[ -f $T/kmsd.log ]]; then
		echo "test_kmsctl_rewrap: last lines of the kmsd log:" >&2
		tail -n 40 "$T/kmsd.log" >&2 || true
	fi
	if [[ -n ${KMS_KEEP_TMP:-} ]]; then
		echo "test_kmsctl_rewrap: kept $T"
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
LABEL=kmsd-rewraptest
KEY=rw-key
KEY2=rw-key-2

step "temporary directory $T"
kms_test_node_up "other=$OTHER_ID"

kmsctl_as() {
	local who=$1
	shift
	timeout -k 5 "$CALL_LIMIT" "$KMSCTL" --endpoint "$ENDPOINT" --ca "$T/pki/node-ca.pem" \
		--cert "$T/pki/$who.pem" --key "$T/pki/$who.key" "$@"
}
data_as() {
	local who=$1
	shift
	"$PY" "$SRCDIR/tests/integration/rewrap_data.py" --endpoint "$ENDPOINT" \
		--ca "$T/pki/node-ca.pem" --cert "$T/pki/$who.pem" --key "$T/pki/$who.key" \
		--key-id "$KEY" --stubs "$T/stubs" "$@"
}

step "waiting for kmsd to report SERVING"
deadline=$((SECONDS + 60))
until out=$(kmsctl_as admin health 2>&1) && grep -Eq '(^|[^A-Z_])SERVING' <<<"$out"; do
	kill -0 "$KMSD_PID" 2>/dev/null || die "kmsd exited during start-up"
	((SECONDS < deadline)) || die "kmsd not SERVING after 60 s (last answer: $out)"
	sleep 0.3
done

kmsctl_as admin create-key "$KEY" \
	--grant "$APP_ID=GenerateDataKey,Decrypt,ReEncryptFrom,ReEncryptTo" >/dev/null ||
	die "create-key $KEY failed"
# app may make data keys under KEY2 but not move them (no ReEncryptFrom).
kmsctl_as admin create-key "$KEY2" --grant "$APP_ID=GenerateDataKey,Decrypt" >/dev/null ||
	die "create-key $KEY2 failed"
mkdir -p "$T/stubs"
"$PY" -m grpc_tools.protoc -I"$SRCDIR/proto" --python_out="$T/stubs" \
	--grpc_python_out="$T/stubs" "$SRCDIR/proto/kms/v1/kms.proto" || die "grpc_tools.protoc failed"

IN=$T/in.jsonl OUTF=$T/out.jsonl PTS=$T/plaintexts
STATE=$OUTF.rewrap-state ERRS=$OUTF.rewrap-errors
t0=$SECONDS
step "making $N data keys under $KEY version 1 (BatchGenerateDataKey)"
data_as app make "$N" "$IN" "$PTS" || die "making the input failed"
step "made $N in $((SECONDS - t0)) s; rotating $KEY to version 2"
kmsctl_as admin rotate-key "$KEY" | grep -Fxq "primary_version: 2" || die "rotate-key did not make version 2"

# --- checks -----------------------------------------------------------------------------
set +e
OUT=$T/stdout ERR=$T/stderr
CHECK_NAME=test_kmsctl_rewrap
# shellcheck source=tests/integration/check_lib.sh
. "$SRCDIR/tests/integration/check_lib.sh"
lines() { wc -l <"$1"; }

# --- 100,000 blobs, stopped three ways, resumed -------------------------------------------
REWRAP=(rewrap --in "$IN" --out "$OUTF" --to "$KEY")
IN_BYTES=$(stat -c %s "$IN")
# start_rewrap RUN: the job in the background, its stdout and stderr in $T/RUN.out and .err.
# Not through timeout(1), which does not pass SIGINT on, and with SIGINT back to its default,
# which a script's background jobs are started without.
start_rewrap() {
	env --default-signal=INT "$KMSCTL" --endpoint "$ENDPOINT" --ca "$T/pki/node-ca.pem" \
		--cert "$T/pki/app.pem" --key "$T/pki/app.key" --json "${REWRAP[@]}" \
		>"$T/$1.out" 2>"$T/$1.err" &
	REWRAP_PID=$!
}
# stop_rewrap FIFTHS SIGNAL...: once the output holds FIFTHS/5 of the input's bytes, sends each
# SIGNAL (10 ms apart) and waits; RC gets the exit status.
stop_rewrap() {
	local want=$(($1 * IN_BYTES / 5)) size sig
	shift
	while kill -0 "$REWRAP_PID" 2>/dev/null; do
		size=$(stat -c %s "$OUTF" 2>/dev/null || echo 0)
		((size < want)) || break
		sleep 0.02
	done
	for sig in "$@"; do
		kill "-$sig" "$REWRAP_PID" 2>/dev/null
		sleep 0.01
	done
	RC=0
	wait "$REWRAP_PID" || RC=$?
	REWRAP_PID=""
}
# committed NAME: the state's lines, and a copy of the output's committed bytes as $T/NAME.
committed() {
	jget "$STATE" "j['lines']"
	head -c "$(jget "$STATE" "j['output_bytes']")" "$OUTF" >"$T/$1"
}

step "rewrap of $N blobs; SIGINT once the output holds 1/5 of them"
start_rewrap run1
stop_rewrap 1 INT
OUT=$T/run1.out ERR=$T/run1.err
verify "the interrupted run exits 130 (status $RC)" test "$RC" -eq 130
# shellcheck disable=SC2016 # eval expands it, when verify runs it
verify "... without a sanitizer report" eval '! sanitizer_report "$ERR"'
verify "... says it finishes the batches in flight" grep -q "Interrupt: finishing the" "$ERR"
verify "... printed progress lines" grep -q "^{\"progress\":{\"done\":[0-9]*,\"total\":$N," "$ERR"
verify "... and a summary: stopped interrupted, not complete" json "$OUT" \
	"j['stopped'] == 'interrupted' and j['complete'] is False and 0 < j['lines_done'] < $N and
j['rewrapped'] == j['lines_done'] and j['failed'] == 0 and j['lines_total'] == $N"
DONE1=$(jget "$OUT" "j['lines_done']")
REWRAPPED1=$(jget "$OUT" "j['rewrapped']")
OUT=$T/stdout ERR=$T/stderr
verify "after a SIGINT the state holds the summary's lines and all of the output" json "$STATE" \
	"j['lines'] == $DONE1 and j['output_bytes'] == $(stat -c %s "$OUTF") and j['complete'] == 0"
verify "... which is exactly those lines" test "$(lines "$OUTF")" -eq "$DONE1"
committed committed1 >/dev/null
# A crash after a write and before its commit leaves a tail the state does not count.
printf '{"id": -1, "blob": "partial' >>"$OUTF"
printf '{"line": 0, "code": "partial' >>"$ERRS"

step "resumed; two SIGINTs once the output holds 2/5 (the second abandons the calls in flight)"
start_rewrap run2
stop_rewrap 2 INT INT
OUT=$T/run2.out ERR=$T/run2.err
verify "the run stopped twice exits 130 (status $RC)" test "$RC" -eq 130
# shellcheck disable=SC2016 # eval expands it, when verify runs it
verify "... without a sanitizer report" eval '! sanitizer_report "$ERR"'
verify "... resumed at the first run's end" json "$OUT" \
	"j['resumed_at'] == $DONE1 and j['stopped'] in ('abandoned', 'interrupted') and
j['lines_done'] == $DONE1 + j['rewrapped']"
REWRAPPED2=$(jget "$OUT" "j['rewrapped']")
OUT=$T/stdout ERR=$T/stderr
verify "... and committed all it wrote" json "$STATE" \
	"j['lines'] == $((DONE1 + REWRAPPED2)) and j['output_bytes'] == $(stat -c %s "$OUTF")"
DONE2=$(committed committed2)

step "resumed; SIGKILL once the output holds 3/5"
start_rewrap run3
# (bash says on stderr that its job was killed: not news here)
stop_rewrap 3 KILL 2>/dev/null
verify "the killed run died of SIGKILL (status $RC)" test "$RC" -eq 137
DONE3=$(committed committed3)

step "resumed to the end"
expect "the last run exits 0" 0 "" app --json "${REWRAP[@]}"
verify "... resumed at the killed run's last commit, and completed" json "$OUT" \
	"j['resumed_at'] == $DONE3 and j['rewrapped'] == $N - $DONE3 and j['lines_done'] == $N and
j['complete'] is True and j['stopped'] == '' and j['failed_total'] == 0"
verify "the four runs rewrapped $N lines between them" test \
	"$((REWRAPPED1 + REWRAPPED2 + DONE3 - DONE2 + $(jget "$OUT" "j['rewrapped']")))" -eq "$N"
verify "the output has one line per input line" test "$(lines "$OUTF")" -eq "$N"
for c in 1 2 3; do
	verify "the lines committed by run $c are unchanged, byte for byte" \
		cmp -s "$T/committed$c" <(head -c "$(stat -c %s "$T/committed$c")" "$OUTF")
done
verify "the partial tail is gone, the errors file is empty" test ! -s "$ERRS"
verify "every output line is its input line's, with a new blob that decrypts to its data key under version 2" \
	data_as app verify "$IN" "$OUTF" "$PTS" 2
verify "no blob appears twice" test "$(cut -d'"' -f6 "$OUTF" | sort -u | wc -l)" -eq "$N"
step "rate of the last run: $(jget "$OUT" "round(j['items_per_second'])") items/s"
sum_before=$(sha256sum <"$OUTF")
expect "a finished job run again does nothing" 0 "complete: true" app "${REWRAP[@]}"
verify "... and says it resumed at the end" grep -Fxq "resumed_at: $N" "$OUT"
verify "... and leaves the output alone" test "$(sha256sum <"$OUTF")" = "$sum_before"

# --- failed lines go through unchanged and into the errors file ---------------------------
head -n 3 "$IN" >"$T/good3"
GOOD1=$(sed -n 1p "$T/good3")
GOOD2=$(sed -n 2p "$T/good3")
GOOD3=$(sed -n 3p "$T/good3")
WRONGCTX=$("$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); j["context"]["tenant"]="evil"; print(json.dumps(j))' "$GOOD2")
# blob_line KEY: a line with a blob of KEY made without a context, and no "context" field.
blob_line() {
	kmsctl_as app --json generate-data-key "$1" --without-plaintext |
		"$PY" -c 'import json,sys; print(json.dumps({"blob": json.load(sys.stdin)["ciphertext_blob"]}))'
}
NOCTX=$(blob_line "$KEY")
OTHERKEY=$(blob_line "$KEY2")
# Written another way (spaces, key order, an escaped character): kept as it is but the blob.
SPACED=$("$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); j["note"]="caf\u00e9"
print(json.dumps({"note": j["note"], "blob": j["blob"], "context": j["context"], "id": j["id"]},
                 separators=(" , ", " : ")))' "$(sed -n 4p "$IN")")
# A blob with an escaped '/' (JSON allows it, PHP writes it): the line is written anew.
ESCAPED=$("$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    if "/" in json.loads(l)["blob"]:
        print(l.strip().replace("/", "\\/")); break' "$IN")
cat >"$T/mixed.jsonl" <<EOF
$GOOD1
not json at all
{"blob": "@@@not base64@@@", "context": {}}
{"context": {"a": "b"}}
{"blob": "AAAA", "context": ["a"]}
{"blob": "AAAA", "context": {"n": 7}}
$WRONGCTX
$OTHERKEY

[1, 2]
$NOCTX
$GOOD3
$SPACED
$ESCAPED
EOF
printf '%s' "$GOOD1" >>"$T/mixed.jsonl" # a last line without a newline
M=$T/mixed.out
expect "rewrap of a mix of good and bad lines: exit 2" 2 "9 lines failed|$M.rewrap-errors" app \
	rewrap --in "$T/mixed.jsonl" --out "$M" --to "$KEY" --batch 4 --parallel 2
verify "mixed: one output line per input line" test "$(lines "$M")" -eq 15
if verify "mixed: nine entries in the errors file" test "$(lines "$M.rewrap-errors")" -eq 9; then
	verify "mixed: each error names its line, status and source" "$PY" -c '
import json, sys
errs = [json.loads(l) for l in open(sys.argv[1])]
want = [(2, "INVALID_ARGUMENT", "input"), (3, "INVALID_ARGUMENT", "input"),
        (4, "INVALID_ARGUMENT", "input"), (5, "INVALID_ARGUMENT", "input"),
        (6, "INVALID_ARGUMENT", "input"), (7, "INVALID_ARGUMENT", "server"),
        (8, "PERMISSION_DENIED", "server"), (9, "INVALID_ARGUMENT", "input"),
        (10, "INVALID_ARGUMENT", "input")]
got = [(e["line"], e["code"], e["source"]) for e in errs]
sys.exit(0 if got == want and all(e["message"] for e in errs) else 1)' "$M.rewrap-errors"
fi
verify "mixed: the failed lines went through unchanged" "$PY" -c '
import sys
a = open(sys.argv[1]).read().split("\n")
b = open(sys.argv[2]).read().split("\n")
sys.exit(0 if all(a[i] == b[i] for i in range(1, 10)) else 1)' "$T/mixed.jsonl" "$M"
verify "mixed: the good lines, one without a context and the last without a newline, were rewrapped" \
	"$PY" -c '
import json, sys
a = open(sys.argv[1]).read().split("\n")
b = open(sys.argv[2]).read().split("\n")
sys.exit(0 if all(json.loads(a[i])["blob"] != json.loads(b[i])["blob"] and
                  {k: v for k, v in json.loads(a[i]).items() if k != "blob"} ==
                  {k: v for k, v in json.loads(b[i]).items() if k != "blob"}
                  for i in (0, 10, 11, 12, 13, 14)) and len(b) == 16 and b[15] == "" else 1)' \
	"$T/mixed.jsonl" "$M"
verify "mixed: a line written another way is kept byte for byte but its blob" "$PY" -c '
import json, sys
a = open(sys.argv[1]).read().split("\n")[12]
b = open(sys.argv[2]).read().split("\n")[12]
sys.exit(0 if b == a.replace(json.loads(a)["blob"], json.loads(b)["blob"]) and "\\u00e9" in b else 1)' \
	"$T/mixed.jsonl" "$M"
verify "mixed: its state counts 6 rewrapped and 9 failed" json "$M.rewrap-state" \
	"j['rewrapped'] == 6 and j['failed'] == 9 and j['complete'] == 1"

S=$T/stop.out
expect "--stop-on-error stops before the first bad line: exit 2" 2 "line 2: INVALID_ARGUMENT" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY" --stop-on-error
verify "--stop-on-error: only line 1 written and committed" json "$S.rewrap-state" \
	"j['lines'] == 1 and j['failed'] == 0 and j['complete'] == 0"
verify "--stop-on-error: nothing in the errors file" test ! -s "$S.rewrap-errors"
expect "--stop-on-error resumed stops at the same line" 2 "line 2: INVALID_ARGUMENT" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY" --stop-on-error
verify "--stop-on-error resumed: still one line" test "$(lines "$S")" -eq 1
expect "without --stop-on-error the same job goes on to the end: exit 2" 2 "9 lines failed" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY"
verify "the resumed job's output equals the one-run output but for its new blobs" \
	test "$(lines "$S")" -eq 15 -a "$(sed -n 2,10p "$S" | sha256sum)" = "$(sed -n 2,10p "$M" | sha256sum)"

expect "rewrap with the server unreachable stops after its retries: exit 2" 2 \
	"BatchReEncrypt (lines 1 to 3): UNAVAILABLE" app --endpoint 127.0.0.1:1 \
	rewrap --in "$T/good3" --out "$T/down.out" --to "$KEY"
verify "... with nothing committed" json "$T/down.out.rewrap-state" "j['lines'] == 0"
expect "the same job resumes once the server answers: exit 0" 0 "lines_done: 3" app \
	rewrap --in "$T/good3" --out "$T/down.out" --to "$KEY"
expect "rewrap as a principal without grants: every line fails, exit 2" 2 "3 lines failed" other \
	rewrap --in "$T/good3" --out "$T/other.out" --to "$KEY"
verify "... PERMISSION_DENIED for each, lines unchanged" test \
	"$(grep -c '"code":"PERMISSION_DENIED"' "$T/other.out.rewrap-errors")" -eq 3 -a \
	"$(sha256sum <"$T/other.out")" = "$(sha256sum <"$T/good3")"
expect "rewrap to an unknown key: exit 2" 2 "3 lines failed" app \
	rewrap --in "$T/good3" --out "$T/unknown.out" --to no-such-key
expect "rewrap to a key without ReEncryptTo: exit 2" 2 "3 lines failed" app \
	rewrap --in "$T/good3" --out "$T/noto.out" --to "$KEY2"
verify "... PERMISSION_DENIED" grep -q '"code":"PERMISSION_DENIED"' "$T/noto.out.rewrap-errors"

# --- standard input, a terminal, aliases, JSON ------------------------------------------------
kmsctl_as admin create-alias alias/rw "$KEY" >/dev/null
RC=0
kmsctl_as app rewrap --out "$T/stdin.out" --to alias/rw --errors "$T/stdin.errs" \
	--state "$T/stdin.state" <"$T/good3" >"$OUT" 2>"$ERR" || RC=$?
verify "rewrap from standard input to an alias: exit 0 (status $RC)" test "$RC" -eq 0
verify "... three lines, --errors and --state where asked" \
	test "$(lines "$T/stdin.out")" -eq 3 -a -e "$T/stdin.errs" -a -s "$T/stdin.state"
RC=0
# shellcheck disable=SC2002 # a pipe, not a file, is what is tested
cat "$T/good3" | kmsctl_as app rewrap --out "$T/pipe.out" --to "$KEY" >"$OUT" 2>"$ERR" || RC=$?
verify "rewrap from a pipe: exit 0 (status $RC), total unknown" test "$RC" -eq 0 -a \
	"$(grep -c '^lines_total: 0$' "$OUT")" -eq 1
if command -v script >/dev/null; then
	head -n 20000 "$IN" >"$T/tty.jsonl"
	script -qec "$KMSCTL --endpoint $ENDPOINT --ca $T/pki/node-ca.pem --cert $T/pki/app.pem \
--key $T/pki/app.key rewrap --in $T/tty.jsonl --out $T/tty.out --to $KEY" /dev/null \
		>"$T/tty.log" 2>&1
	verify "on a terminal: a progress bar with done/total, rate and ETA" \
		grep -aq "\[=*>* *\] *[0-9.]*%  [0-9,]*/20,000  [0-9,]*/s  ETA" "$T/tty.log"
fi

# --- refused jobs and resumes: exit 1, nothing written --------------------------------------
printf 'x\n' >"$T/taken.out"
expect "an output with data and no state: exit 1" 1 "not empty and there is no state file" app \
	rewrap --in "$T/good3" --out "$T/taken.out" --to "$KEY"
verify "... left as it was" test "$(cat "$T/taken.out")" = x
expect "resume with another --to: exit 1" 1 "job to '$KEY', not to '$KEY2'" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY2"
rm -f "$S" "$S".rewrap-*
expect "a --stop-on-error job to resume" 2 "line 2" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY" --stop-on-error
sed '1s/"id":0/"id":99/' "$T/mixed.jsonl" >"$T/mixed-changed.jsonl"
expect "resume with an input whose done lines changed: exit 1" 1 "differ from those the state file" app \
	rewrap --in "$T/mixed-changed.jsonl" --out "$S" --to "$KEY"
head -n 0 "$T/mixed.jsonl" >"$T/empty.jsonl"
expect "resume with a shorter input: exit 1" 1 "the input has 0 lines" app \
	rewrap --in "$T/empty.jsonl" --out "$S" --to "$KEY"
cp "$S" "$T/s.keep"
: >"$S"
expect "resume with an output shorter than the state: exit 1" 1 "is not this job's file" app \
	rewrap --in "$T/mixed.jsonl" --out "$S" --to "$KEY"
cp "$T/s.keep" "$S"
printf 'garbage' >"$T/garbage.state"
expect "a state file that is not one: exit 1" 1 "is not a rewrap state file" app \
	rewrap --in "$T/good3" --out "$T/g.out" --to "$KEY" --state "$T/garbage.state"
expect "an input that does not exist: exit 1" 1 "$T/nothing" app \
	rewrap --in "$T/nothing" --out "$T/n.out" --to "$KEY"
"$PY" -c 'print("{\"blob\": \"" + "A" * (1 << 20) + "\"}")' >"$T/long.jsonl"
expect "a line over 1 MiB stops the job: exit 1" 1 "input line 1: the line is longer than" app \
	rewrap --in "$T/long.jsonl" --out "$T/long.out" --to "$KEY"
expect "the same input as output: exit 1" 1 "the output is the input" app \
	rewrap --in "$T/s.keep" --out "$T/s.keep" --to "$KEY" --state "$T/self.state"
expect "rewrap without --to: exit 1" 1 "rewrap needs --to KEY_ID" app rewrap --in "$IN" --out "$T/x.out"
expect "rewrap without --out: exit 1" 1 "rewrap needs --out FILE" app rewrap --in "$IN" --to "$KEY"
for b in 0 1025 x; do
	expect "rewrap --batch $b: exit 1" 1 "--batch wants a whole number from 1 to 1024" app \
		rewrap --in "$IN" --out "$T/x.out" --to "$KEY" --batch "$b"
done
expect "rewrap --parallel 0: exit 1" 1 "--parallel wants a whole number from 1 to 32" app \
	rewrap --in "$IN" --out "$T/x.out" --to "$KEY" --parallel 0
expect "rewrap --context: exit 1" 1 "--context does not apply to rewrap" app \
	rewrap --in "$IN" --out "$T/x.out" --to "$KEY" --context a=b
verify "the refused jobs wrote no output" test ! -e "$T/x.out" -a ! -e "$T/n.out"

step "stopping kmsd"
stop_kmsd
verify "kmsd exits 0 on SIGTERM (status $KMSD_STATUS)" test "$KMSD_STATUS" -eq 0

echo "test_kmsctl_rewrap: $PASSED passed, $FAILED failed"
((FAILED == 0)) || exit 1
exit 0
