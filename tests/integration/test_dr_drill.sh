#!/usr/bin/env bash
# Integration test: `ops/dr-drill --quick --json --out F` (two linked one-node
# regions behind the delaying proxy, sync then async, a restore, the
# refusals, the old primary fenced) with the kmsd of the build tree, and its
# JSON checked field by field.
#
# Exit status (automake): 0 pass; 99 hard error: a check failed, or the
# drill could not run.
set -uo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	cat <<'USAGE'
usage: tests/integration/test_dr_drill.sh

Run by `make check` (KMS_SRCDIR, KMS_BUILDDIR set), or by hand from the
repository (defaults: the script's repository and its ./build). Set
KMS_KEEP_TMP=1 to keep the drill's output and JSON.
USAGE
	exit 0
fi

hard() { echo "test_dr_drill: ERROR: $*" >&2; exit 99; }
SRCDIR=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
BUILDDIR=${KMS_BUILDDIR:-$SRCDIR/build}
for f in kmsd kmsctl; do [[ -x $BUILDDIR/$f ]] || hard "$BUILDDIR/$f not built"; done
command -v jq >/dev/null || hard "jq is missing (ops/install-deps)"

T=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-drilltest.XXXXXX")
trap '[[ ${KMS_KEEP_TMP:-0} == 1 ]] && echo "kept $T" || rm -rf "$T"' EXIT
rc=0
KMSD_BUILD_DIR=$BUILDDIR SOFTHSM_MODULE=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so} \
	timeout 600 "$SRCDIR/ops/dr-drill" --quick --json --out "$T/drill.json" >"$T/drill.out" 2>&1 || rc=$?
cat "$T/drill.out"
[[ -s $T/drill.json ]] || hard "the drill wrote no JSON (exit $rc)"
J=$T/drill.json
want() { # JQ-EXPRESSION WHAT: the expression must be true
	jq -e "$1" "$J" >/dev/null || hard "$2: $(jq -c "$1" "$J" 2>&1) for $1 in $(jq -c . "$J")"
}
want '.sync.blobs_failed == 0 and .async.blobs_failed == 0' "blobs failed in B"
want '.sync.blobs_checked > 0 and .async.blobs_checked > 0' "no blob checked in B"
want '.restore.blobs_failed == 0 and .restore.blobs_checked > 0' "blobs failed in C"
want '.sync.rpo_writes == 0 and .sync.blobs_lost_in_rpo == 0' "sync mode lost acknowledged writes"
want '.async.rpo_writes >= 0 and (.async.rpo_s | type) == "number"' "async RPO missing"
want '(.async.rto_s | type) == "number"' "async promotion: no write acknowledged"
want '(.sync.rto_s | type) == "number"' "sync promotion: no write acknowledged"
want '.refusals | [.promotion_without_quorum, .restore_m_minus_1, .wrong_share, .changed_file] | all' \
	"a refusal did not refuse, or not with its message"
want '.sync.old_primary_fenced and .async.old_primary_fenced' "the old primary did not fence itself"
want '(.restore_s | type) == "number" and .restore_s > 0' "restore time missing"
want '.wan | test("^proxy [0-9]+ms$")' "the WAN is not named"
want '.checks_failed == 0' "the drill failed a check"
((rc == 0)) || hard "every field passed but the drill exited $rc"
echo "test_dr_drill: PASS"
