#!/usr/bin/env bash
# test_fuzz.sh - `make check`: every libFuzzer target for 10 s on a copy of its seed corpus (ops/fuzz --smoke).
#
# Exit 77 (automake: SKIP) when clang-14 or libFuzzer is not installed, with
# the reason on stderr. The six targets run side by side (--jobs 6) so the
# test takes about 10 s plus the build, whatever the CPU count; the handlers
# target spends the first seconds of its 10 making its node, then runs its
# seed corpus and mutates for what is left. Binaries, logs and any crash
# input stay in $KMS_BUILDDIR/build-fuzz.
set -euo pipefail

src=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
build=${KMS_BUILDDIR:-$src/build}

rc=0
"$src/ops/fuzz" --smoke --jobs 6 --build-dir "$build" --out "$build/build-fuzz" || rc=$?
if ((rc == 77)); then
	echo "test_fuzz: SKIP: clang-14 with libFuzzer is needed (Debian: clang-14 libclang-rt-14-dev)" >&2
fi
exit "$rc"
