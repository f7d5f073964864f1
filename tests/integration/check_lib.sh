# shellcheck shell=bash
# check_lib.sh - counted checks for the shell integration tests that run kmsctl (sourced, not run).
#
# Needs: CHECK_NAME (the prefix of every line), OUT and ERR (files for a call's stdout and
# stderr), PY (a Python 3), SRCDIR (the source tree), and a function kmsctl_as WHO ARGS...
# that runs kmsctl as WHO.
# A failed check is counted, not fatal: every check runs, and the script ends with
#   echo "$CHECK_NAME: $PASSED passed, $FAILED failed"; ((FAILED == 0))
# KMS_TEST_VERBOSE=1 shows kmsctl's stderr for passing checks too.
# shellcheck disable=SC2034 # PASSED, FAILED and RC are for the sourcing script
PASSED=0 FAILED=0
ok() {
	PASSED=$((PASSED + 1))
	echo "$CHECK_NAME: ok   $1"
	if [[ -n ${KMS_TEST_VERBOSE:-} && -s $ERR ]]; then sed 's/^/    stderr: /' "$ERR"; fi
}
bad() {
	FAILED=$((FAILED + 1))
	echo "$CHECK_NAME: FAIL $1: $2"
	if [[ -s $ERR ]]; then sed 's/^/    stderr: /' "$ERR" | head -n 20; fi
	if [[ -s $OUT ]]; then sed 's/^/    stdout: /' "$OUT" | head -n 20; fi
}
# A sanitizer report in a client's stderr fails the check whatever the status.
sanitizer_report() {
	grep -Eq 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:' "$1"
}
# run WHO ARGS...: runs kmsctl, stdout to $OUT, stderr to $ERR, status to RC
# (under tests/lsan-client.supp: gRPC may still be closing its connection as
# kmsctl exits).
run() {
	RC=0
	LSAN_OPTIONS="suppressions=$SRCDIR/tests/lsan-client.supp:print_suppressions=0" \
		kmsctl_as "$@" >"$OUT" 2>"$ERR" || RC=$?
}
# expect NAME RC SUBSTRINGS WHO ARGS...: the call exits RC and prints each
# '|'-separated substring of SUBSTRINGS (none when empty) on stderr, or on
# stdout when RC is 0.
# Returns 0 when the check passed, so callers can chain content checks.
expect() {
	local name=$1 want=$2 sub=$3
	shift 3
	run "$@"
	if sanitizer_report "$ERR"; then
		bad "$name" "sanitizer report from kmsctl"
		return 1
	fi
	if ((RC != want)); then
		bad "$name" "exit status $RC, want $want"
		return 1
	fi
	local where=$ERR
	((want == 0)) && where=$OUT
	local subs=() one
	[[ -z $sub ]] || IFS='|' read -r -a subs <<<"$sub"
	for one in "${subs[@]}"; do
		if ! grep -Fq -- "$one" "$where"; then
			bad "$name" "'$one' not in $([[ $where == "$OUT" ]] && echo stdout || echo stderr)"
			return 1
		fi
	done
	ok "$name"
}
# verify NAME COMMAND...: a check on output already captured.
verify() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name" "condition failed: $*"; fi
}
# json FILE EXPR: evaluates the Python expression EXPR with j = the parsed
# JSON in FILE; succeeds when it is true. json.tool also validates it.
json() {
	"$PY" -m json.tool "$1" >/dev/null 2>&1 || return 1
	"$PY" -c '
import base64, json, sys
j = json.load(open(sys.argv[1]))
sys.exit(0 if eval("(" + sys.argv[2] + ")") else 1)' "$1" "$2"
}
# jget FILE EXPR: prints the Python expression EXPR over the JSON in FILE (j).
jget() { "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
