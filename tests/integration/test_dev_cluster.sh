#!/usr/bin/env bash
# Integration test: `ops/dev-cluster up --nodes 3`, `status` and `down` on a
# busy machine, in a private state directory on free ports, with the kmsd of
# the build tree the test runs in.
#
# It guards against a start-up race: start_node used to return right after
# forking the subshell that execs kmsd, and its callers' liveness check
# (running_pid, which reads /proc/PID/cmdline) could run before that exec, so
# a node that was starting was reported as "node N exited" (with no log yet)
# and `up` failed. To make that window wide on every run, not only on an
# unlucky one, the bash that runs `up` gets tests/integration/exec_delay.c
# (built here) through LD_PRELOAD: it sleeps KMS_TEST_EXEC_DELAY_MS (1500)
# before each execve of kmsd, i.e. between start_node's fork and its exec,
# and leaves every other exec alone (and keeps itself out of the children's
# environment). ops/dev-cluster itself runs unchanged. Throughout, 4
# CPU-bound loops (KMS_TEST_BUSY_LOOPS) at the test's own priority keep the
# machine busy (alone, they did not show the race in three runs on 2 cores:
# the window is a few forks wide). Without the fix `up` fails as soon as it has started node 1
# ("node 1 exited", with an empty log).
#
# `up` runs ops/install-deps and a build: both do nothing when the
# packages are installed and the tree is built (`make check` builds it first),
# and the test skips when a package is missing rather than install it.
# Automake TEST protocol: exit 0 pass, 77 skip, 1 fail.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	cat <<'USAGE'
usage: tests/integration/test_dev_cluster.sh

Run by `make check` (KMS_SRCDIR, KMS_BUILDDIR set), or by hand from the
repository (defaults: the script's repository and its ./build). Set
KMS_KEEP_TMP=1 to keep the temporary directory (state, outputs) for
inspection, KMS_PYTHON to use another interpreter than /usr/bin/python3 (used
for free ports), KMS_TEST_EXEC_DELAY_MS to change the injected delay (0: none),
KMS_TEST_BUSY_LOOPS to change the number of CPU-bound loops.
USAGE
	exit 0
fi

step() { echo "test_dev_cluster: $*"; }
die() { echo "test_dev_cluster: FAIL: $*" >&2; exit 1; }
skip() { echo "test_dev_cluster: SKIP: $*"; exit 77; }

SRCDIR=${KMS_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
BUILDDIR=${KMS_BUILDDIR:-$SRCDIR/build}
MODULE=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PY=${KMS_PYTHON:-/usr/bin/python3}
DELAY_MS=${KMS_TEST_EXEC_DELAY_MS:-1500}
BUSY_LOOPS=${KMS_TEST_BUSY_LOOPS:-4}
CC=${CC:-cc}
NODES=3

[[ $DELAY_MS =~ ^[0-9]+$ ]] || die "KMS_TEST_EXEC_DELAY_MS must be a number of milliseconds: $DELAY_MS"
[[ $BUSY_LOOPS =~ ^[0-9]+$ ]] || die "KMS_TEST_BUSY_LOOPS must be a number: $BUSY_LOOPS"
for f in kmsd kmsctl kms-bench; do
	[[ -x $BUILDDIR/$f ]] || die "$BUILDDIR/$f not built"
done
[[ -r $MODULE ]] || die "PKCS#11 module $MODULE not found"
"$PY" -c 'import socket' 2>/dev/null || die "$PY cannot run (needed for free ports)"
command -v timeout >/dev/null || die "timeout(1) (coreutils) is missing"
command -v "$CC" >/dev/null || die "no C compiler ($CC) for tests/integration/exec_delay.c"
# `up` would install what is missing (apt-get, sudo): not from a test.
while IFS= read -r pkg; do
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) == installed ]] ||
		skip "package $pkg is not installed, and ops/dev-cluster up would install it (run ops/install-deps)"
done < <("$SRCDIR/ops/install-deps" --list)
[[ ! -f $SRCDIR/config.status ]] ||
	skip "$SRCDIR is configured in place; ops/dev-cluster builds out of tree only"

T=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-devtest.XXXXXX")
STATE=$T/state
BUSY_PIDS=() UP_PGID="" DOWN_DONE=0

# dev LIMIT NAME ARGS...: ops/dev-cluster ARGS with this test's state
# directory, ports and build tree, output to $T/NAME.out (shown), status in
# RC. timeout(1) bounds it and puts it in a process group of its own (its
# pid): the nodes `up` starts stay in that group, which the clean-up stops
# should `down` miss any. Outside make's environment: it is run like a user
# runs it.
dev() {
	local limit=$1 name=$2 pid
	shift 2
	timeout -k 10 "$limit" env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		KMSD_DEV_DIR="$STATE" KMSD_BUILD_DIR="$BUILDDIR" KMSD_DEV_PORT_BASE="$PORT_BASE" \
		SOFTHSM_MODULE="$MODULE" "$@" >"$T/$name.out" 2>&1 &
	pid=$!
	[[ $name != up ]] || UP_PGID=$pid
	RC=0
	wait "$pid" || RC=$?
	sed 's/^/    | /' "$T/$name.out"
}

cleanup() {
	local rc=$? pid t
	trap - EXIT
	if ((!DOWN_DONE)) && [[ -d $STATE && -n ${PORT_BASE:-} ]]; then
		step "clean-up: ops/dev-cluster down"
		dev 60 cleanup-down bash "$SRCDIR/ops/dev-cluster" down || true
	fi
	# Whatever `down` did not stop (a node still between fork and exec when
	# `up` failed has no running kmsd for `down` to see).
	if [[ -n $UP_PGID ]] && kill -0 -- "-$UP_PGID" 2>/dev/null; then
		step "clean-up: stopping what is left of process group $UP_PGID"
		kill -TERM -- "-$UP_PGID" 2>/dev/null || true
		for ((t = 0; t < 150; t++)); do
			kill -0 -- "-$UP_PGID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$UP_PGID" 2>/dev/null || true
	fi
	for pid in "${BUSY_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	for pid in "${BUSY_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if ((rc != 0 && rc != 77)); then
		for ((t = 1; t <= NODES; t++)); do
			[[ -f $STATE/node$t/kmsd.log ]] || continue
			echo "test_dev_cluster: last lines of node $t's log:" >&2
			tail -n 30 "$STATE/node$t/kmsd.log" >&2 || true
		done
	fi
	if [[ -n ${KMS_KEEP_TMP:-} ]]; then
		echo "test_dev_cluster: kept $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

step "temporary directory $T"

step "building the exec delay library"
"$CC" -shared -fPIC -O2 -Wall -Wextra -o "$T/exec_delay.so" \
	"$SRCDIR/tests/integration/exec_delay.c" -ldl || die "cannot build exec_delay.so"
# The test is only worth something if the window really opens: a bash with
# the library must take at least DELAY_MS to exec a program named kmsd.
mkdir "$T/probe"
printf '#!/bin/sh\nexit 0\n' >"$T/probe/kmsd"
chmod 755 "$T/probe/kmsd"
t0=${EPOCHREALTIME/[.,]/}
# shellcheck disable=SC2016 # $1 is for the inner bash
env LD_PRELOAD="$T/exec_delay.so" KMS_EXEC_DELAY_MS="$DELAY_MS" bash -c 'exec "$1"' probe "$T/probe/kmsd" ||
	die "bash with exec_delay.so cannot exec $T/probe/kmsd"
elapsed_ms=$(((${EPOCHREALTIME/[.,]/} - t0) / 1000))
((elapsed_ms >= DELAY_MS)) ||
	die "exec_delay.so did not delay the exec ($elapsed_ms ms, want $DELAY_MS): the race would not be reproduced"
step "an exec of kmsd from bash takes $elapsed_ms ms with the library (delay $DELAY_MS ms)"

# A port base whose NODES gRPC and NODES Raft ports are all free, below the
# ephemeral range so that no outgoing connection takes one meanwhile.
PORT_BASE=$("$PY" - "$NODES" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(500):
    base = random.randrange(20000, 32000)
    ports = [base + i for i in range(1, n + 1)] + [base + 100 + i for i in range(1, n + 1)]
    socks, free = [], True
    for p in ports:
        s = socket.socket()
        socks.append(s)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            free = False
            break
    for s in socks:
        s.close()
    if free:
        print(base)
        sys.exit(0)
sys.exit(1)
PY
) || die "no port base with $((2 * NODES)) free ports found"
step "port base $PORT_BASE (gRPC $((PORT_BASE + 1))-$((PORT_BASE + NODES)), Raft $((PORT_BASE + 101))-$((PORT_BASE + 100 + NODES)))"

step "keeping the machine busy: $BUSY_LOOPS CPU-bound loops"
for ((i = 0; i < BUSY_LOOPS; i++)); do
	(while :; do :; done) </dev/null >/dev/null 2>&1 &
	BUSY_PIDS+=("$!")
done

step "ops/dev-cluster up --nodes $NODES (kmsd exec delayed by $DELAY_MS ms)"
start=$SECONDS
# Each join is a proposal and two approvals (three kmsctl runs, each exec
# delayed too): a sanitizer build on a busy machine needs more than 300 s.
dev 600 up env LD_PRELOAD="$T/exec_delay.so" KMS_EXEC_DELAY_MS="$DELAY_MS" \
	bash "$SRCDIR/ops/dev-cluster" up --nodes "$NODES"
step "up exited with status $RC after $((SECONDS - start)) s"
((RC == 0)) || die "ops/dev-cluster up failed (status $RC)"
if grep -q "exited" "$T/up.out"; then die "up reported a node as exited"; fi
grep -Fqx "dev-cluster: $NODES node(s) up; client endpoints written to $STATE/endpoints" "$T/up.out" ||
	die "up did not report $NODES nodes up"
for ((i = 1; i <= NODES; i++)); do
	grep -Fq "dev-cluster: node $i is SERVING on 127.0.0.1:$((PORT_BASE + i))" "$T/up.out" ||
		die "up did not report node $i SERVING"
done
[[ $(cat "$STATE/endpoints") == "$(for ((i = 1; i <= NODES; i++)); do echo "127.0.0.1:$((PORT_BASE + i))"; done)" ]] ||
	die "$STATE/endpoints does not list the $NODES nodes"

step "ops/dev-cluster status"
dev 60 status bash "$SRCDIR/ops/dev-cluster" status
((RC == 0)) || die "status exited $RC, want 0 (every node up and SERVING)"
grep -Fqx "dev-cluster: all $NODES node(s) are up" "$T/status.out" || die "status did not report all nodes up"
pids=()
for ((i = 1; i <= NODES; i++)); do
	pids+=("$(<"$STATE/node$i/kmsd.pid")")
done

# A certificate about to expire is renewed by `up` and reloaded by the
# running node on SIGHUP: same pid, new certificate on new handshakes.
step "renewal: node 2's certificate expires within the hour; ops/dev-cluster up again"
"$SRCDIR/ops/pki" node "$STATE/pki" node2 spiffe://kmsd.dev/kmsd/node/2 \
	--token-dir "$STATE/node2/token" --label kmsd-node2 --module "$MODULE" --hours 1 >/dev/null
install -m 644 "$STATE/pki/node2.pem" "$STATE/node2/node.pem"
old_serial=$(openssl x509 -noout -serial -in "$STATE/node2/node.pem")
dev 600 up-renew bash "$SRCDIR/ops/dev-cluster" up
((RC == 0)) || die "the second up failed (status $RC)"
grep -Fq "dev-cluster: node 2 reloaded its TLS files" "$T/up-renew.out" || die "up did not reload node 2"
if grep -q "stopping node" "$T/up-renew.out"; then die "up stopped a node to renew its certificate"; fi
for ((i = 1; i <= NODES; i++)); do
	[[ $(<"$STATE/node$i/kmsd.pid") == "${pids[i - 1]}" ]] || die "node $i was restarted"
done
new_serial=$(openssl x509 -noout -serial -in "$STATE/node2/node.pem")
[[ $new_serial != "$old_serial" ]] || die "node 2's certificate was not renewed"
served=""
for ((t = 0; t < 25; t++)); do
	served=$(openssl s_client -connect "127.0.0.1:$((PORT_BASE + 2))" -CAfile "$STATE/pki/node-ca.pem" \
		-cert "$STATE/pki/app.pem" -key "$STATE/pki/app.key" </dev/null 2>/dev/null |
		openssl x509 -noout -serial) || true
	[[ $served == "$new_serial" ]] && break
	sleep 0.2
done
[[ $served == "$new_serial" ]] || die "node 2 serves $served, not the renewed $new_serial"

step "ops/dev-cluster renew: every certificate now, no restart"
dev 120 renew bash "$SRCDIR/ops/dev-cluster" renew
((RC == 0)) || die "renew failed (status $RC)"
for ((i = 1; i <= NODES; i++)); do
	grep -Fq "dev-cluster: node $i reloaded its TLS files" "$T/renew.out" || die "renew did not reload node $i"
	[[ $(<"$STATE/node$i/kmsd.pid") == "${pids[i - 1]}" ]] || die "renew restarted node $i"
done
dev 60 status-renewed bash "$SRCDIR/ops/dev-cluster" status
((RC == 0)) || die "status after renew exited $RC, want 0"

step "ops/dev-cluster down"
dev 60 down bash "$SRCDIR/ops/dev-cluster" down
((RC == 0)) || die "down exited $RC"
DOWN_DONE=1
for ((i = 1; i <= NODES; i++)); do
	grep -Fqx "dev-cluster: node $i stopped" "$T/down.out" || die "down did not stop node $i"
	[[ ! -e $STATE/node$i/kmsd.pid ]] || die "node $i's pid file is still there after down"
	! kill -0 "${pids[i - 1]}" 2>/dev/null || die "node $i (pid ${pids[i - 1]}) still runs after down"
done

step "ops/dev-cluster status after down"
dev 60 status-down bash "$SRCDIR/ops/dev-cluster" status
((RC == 3)) || die "status after down exited $RC, want 3"
grep -Fqx "dev-cluster: 0 of $NODES node(s) are up" "$T/status-down.out" || die "status after down did not report 0 nodes up"

step "PASS in $SECONDS s"
