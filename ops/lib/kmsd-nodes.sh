# shellcheck shell=bash
# Shell functions for the ops scripts that start kmsd nodes of their own on
# one machine (ops/bench-restore, ops/dr-drill). Sourced, not run. The caller
# sets ROOT, BUILD, MODULE and TD, and defines die (message, exit 1).

KN_TAKEN=" "
# kn_port: sets KN_PORT to a TCP port nothing listens on and that this script
# has not handed out yet (nodes are provisioned before any of them listens,
# so this must not run in a subshell: it remembers what it gave).
kn_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 20000))
		[[ $KN_TAKEN == *" $p "* ]] && continue
		ss -Htln "sport = :$p" 2>/dev/null | grep -q . && continue
		KN_TAKEN+="$p "
		KN_PORT=$p
		return 0
	done
	die "no free port found"
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'; }

# kn_pki DIR: a client CA, a node CA, the admin and app client certificates
# and three operators (threshold 2 in kn_node's configs) in DIR.
kn_pki() {
	local pki=$1 o
	"$ROOT/ops/pki" ca "$pki" --trust-domain "$TD" >/dev/null
	"$ROOT/ops/pki" node-ca "$pki" --trust-domain "$TD" >/dev/null
	"$ROOT/ops/pki" client "$pki" admin "spiffe://$TD/ns/ops/sa/admin" >/dev/null
	"$ROOT/ops/pki" client "$pki" app "spiffe://$TD/ns/demo/sa/app" >/dev/null
	for o in operator1 operator2 operator3; do "$ROOT/ops/pki" operator "$pki" "$o" >/dev/null; done
}

# kn_node DIR PKI ID GRPC RAFT LABEL [NODE-CONFIG ARGS...]: a fresh SoftHSM
# token in DIR/token, node ID's certificate (its key in the token), an empty
# DIR/data and DIR/kmsd.conf with PKI's administrator and operators.
kn_node() {
	local dir=$1 pki=$2 id=$3 grpc=$4 raft=$5 label=$6 ops="" o
	shift 6
	for o in operator1 operator2 operator3; do ops+="${ops:+,}$o:$pki/operators/$o.pub"; done
	"$ROOT/ops/softhsm-token" init "$dir/token" "$label" --module "$MODULE" >/dev/null
	SOFTHSM2_CONF=$dir/token/softhsm2.conf "$ROOT/ops/pki" node "$pki" "${dir##*/}" \
		"spiffe://$TD/kmsd/node/$id" --token-dir "$dir/token" --label "$label" \
		--module "$MODULE" >/dev/null
	"$ROOT/ops/node-config" --dir "$dir" --id "$id" --grpc "$grpc" --raft "$raft" \
		--label "$label" --ca "$pki/ca.pem" --node-ca "$pki/node-ca.pem" \
		--admins "spiffe://$TD/ns/ops/sa/admin" --cert "$pki/${dir##*/}.pem" \
		--token-dir "$dir/token" --module "$MODULE" --operators "$ops" --threshold 2 \
		--log-level info "$@" >/dev/null
	mkdir -p "$dir/data"
	chmod 700 "$dir/data"
}

# kn_start DIR [KMSD ARGS...]: starts the node of DIR in the background, on
# its own token (stdin closed: nothing may prompt for a PIN); sets KN_PID.
# shellcheck disable=SC2034 # KN_PID is for the caller
kn_start() {
	local dir=$1; shift
	(cd "$dir" && SOFTHSM2_CONF=$dir/token/softhsm2.conf exec "$BUILD/kmsd" \
		--config "$dir/kmsd.conf" "$@" </dev/null >>"$dir/kmsd.log" 2>&1) &
	KN_PID=$!
}

# kn_ctl PKI ENDPOINT WHO ARGS...: kmsctl as PKI's admin or app.
kn_ctl() {
	local pki=$1 ep=$2 who=$3; shift 3
	"$BUILD/kmsctl" --endpoint "$ep" --ca "$pki/node-ca.pem" --cert "$pki/$who.pem" \
		--key "$pki/$who.key" "$@"
}

# kn_wait_serving PKI ENDPOINT PID LOG: until the node answers SERVING.
kn_wait_serving() {
	local deadline=$((SECONDS + 600))
	until kn_ctl "$1" "$2" admin health 2>/dev/null | grep -Eq '(^|[^A-Z_])SERVING'; do
		kill -0 "$3" 2>/dev/null || { tail -n 20 "$4" >&2; die "kmsd exited (log above)"; }
		((SECONDS < deadline)) || die "kmsd not SERVING after 600 s; see $4"
		sleep 0.05
	done
}

# kn_approve PKI ENDPOINT ID: operator1 and operator2 approve proposal ID;
# prints the last approval's answer.
kn_approve() {
	local o out
	for o in operator1 operator2; do
		out=$(kn_ctl "$1" "$2" admin quorum approve "$3" --operator "$o" \
			--signing-key "$1/operators/$o.key" --yes 2>&1) ||
			{ echo "$out" >&2; die "approval of proposal $3 by $o failed"; }
	done
	echo "$out"
}

# kn_backup PKI ENDPOINT FILE CUSTODIANS-PKI OUT: a backup for custodians
# alice, bob and carol (2 to restore), proposed in the background and
# approved by two operators; the answer of backup create goes to OUT.
kn_backup() {
	local pki=$1 ep=$2 file=$3 cpki=$4 out=$5 pid id="" i
	kn_ctl "$pki" "$ep" admin backup create --custodian "alice=$cpki/custodians/alice.pub" \
		--custodian "bob=$cpki/custodians/bob.pub" --custodian "carol=$cpki/custodians/carol.pub" \
		--threshold 2 --out "$file" --wait-timeout 600 >"$out" 2>&1 &
	pid=$!
	for ((i = 0; i < 200; i++)); do
		id=$(kn_ctl "$pki" "$ep" admin --json quorum list 2>/dev/null |
			jq -r '[.proposals[] | select(.state == "pending" and .operation == "backup-export")][0].proposal_id // empty') || true
		[[ -n $id ]] && break
		sleep 0.1
	done
	[[ -n $id ]] || { kill "$pid" 2>/dev/null; die "no pending backup-export proposal appeared"; }
	kn_approve "$pki" "$ep" "$id" >/dev/null
	wait "$pid" || { cat "$out" >&2; die "backup create failed"; }
}
