# shellcheck shell=bash
# node_lib.sh - one-node kmsd set-up shared by the shell integration tests (sourced, not run).
#
# Sourced right after T is made; the caller's cleanup trap calls stop_kmsd.
#
# kms_test_node_up [CLIENT=SPIFFE_ID ...] [--other-ca]
#   Makes, under $T: a SoftHSM token $LABEL, a CA for trust domain $TD, client certificates
#   admin ($ADMIN_ID), app ($APP_ID) and each CLIENT given, optionally an unrelated CA with
#   a client (--other-ca), the node key in the token and its certificate, picks two free ports,
#   writes kmsd.conf and starts kmsd. Sets ENDPOINT, RAFT and KMSD_PID; the log is $T/kmsd.log.
#   Needs: T OPS LABEL MODULE TD ADMIN_ID APP_ID BUILDDIR PY, and a step function.
# stop_kmsd: stops $KMSD_PID (SIGTERM; SIGKILL after 15 s) and sets KMSD_STATUS to
#   its exit status; does nothing when KMSD_PID is empty.
# shellcheck disable=SC2034 # KMSD_STATUS is for the sourcing script
stop_kmsd() {
	KMSD_STATUS=0
	[[ -n $KMSD_PID ]] || return 0
	kill -TERM "$KMSD_PID" 2>/dev/null || true
	local i
	for ((i = 0; i < 150; i++)); do
		kill -0 "$KMSD_PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$KMSD_PID" 2>/dev/null; then
		echo "${0##*/}: kmsd did not stop within 15 s: SIGKILL" >&2
		kill -KILL "$KMSD_PID" 2>/dev/null || true
	fi
	wait "$KMSD_PID" 2>/dev/null || KMSD_STATUS=$?
	KMSD_PID=""
}

# shellcheck disable=SC2034 # ENDPOINT, RAFT and KMSD_PID are for the sourcing script
kms_test_node_up() {
	local other_ca=0 c name
	local clients=()

	for c in "$@"; do
		case $c in
			--other-ca) other_ca=1 ;;
			*=*) clients+=("$c") ;;
			*) echo "kms_test_node_up: bad argument $c" >&2; return 1 ;;
		esac
	done
	step "creating SoftHSM token $LABEL"
	"$OPS/softhsm-token" init "$T/node/token" "$LABEL" --module "$MODULE" >/dev/null
	step "creating the CA and the client certificates"
	"$OPS/pki" ca "$T/pki" --trust-domain "$TD" >/dev/null
	"$OPS/pki" node-ca "$T/pki" --trust-domain "$TD" >/dev/null
	"$OPS/pki" client "$T/pki" admin "$ADMIN_ID" --hours 1 >/dev/null
	"$OPS/pki" client "$T/pki" app "$APP_ID" --hours 1 >/dev/null
	for c in "${clients[@]}"; do
		name=${c%%=*}
		"$OPS/pki" client "$T/pki" "$name" "${c#*=}" --hours 1 >/dev/null
	done
	((other_ca == 0)) || "$OPS/pki" other-ca "$T/pki" "$ADMIN_ID" >/dev/null
	# The quorum: three operators, two of whom approve a root operation.
	for o in operator1 operator2 operator3; do
		"$OPS/pki" operator "$T/pki" "$o" >/dev/null
	done
	step "creating the node key in the token and its certificate"
	"$OPS/pki" node "$T/pki" node "spiffe://$TD/kmsd/node/1" --token-dir "$T/node/token" \
		--label "$LABEL" --module "$MODULE" --hours 1 >/dev/null
	cp "$T/pki/node.pem" "$T/node/node.pem"

	# Two distinct free ports: both sockets stay bound until both are chosen.
	local grpc_port raft_port
	read -r grpc_port raft_port < <("$PY" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
	ENDPOINT=127.0.0.1:$grpc_port
	RAFT=127.0.0.1:$raft_port
	step "writing kmsd.conf (gRPC $ENDPOINT, Raft $RAFT)"
	"$OPS/node-config" --dir "$T/node" --id 1 --grpc "$ENDPOINT" --raft "$RAFT" \
		--label "$LABEL" --ca "$T/pki/ca.pem" --node-ca "$T/pki/node-ca.pem" --admins "$ADMIN_ID" \
		--operators "operator1:$T/pki/operators/operator1.pub,operator2:$T/pki/operators/operator2.pub,operator3:$T/pki/operators/operator3.pub" \
		--threshold 2 --module "$MODULE" >/dev/null

	step "starting kmsd"
	SOFTHSM2_CONF=$T/node/token/softhsm2.conf "$BUILDDIR/kmsd" --config "$T/node/kmsd.conf" \
		</dev/null >"$T/kmsd.log" 2>&1 &
	KMSD_PID=$!
}
