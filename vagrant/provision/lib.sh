# shellcheck shell=bash
# What the role scripts share: the lab's names and addresses, a dry run, the
# install, the guest namespace and its service.  Sourced, never run.
#
# PROVISION_DRY_RUN=1 prints every command that changes the host (prefixed
# with "+ ") instead of running it.

COLO_SRC=${COLO_SRC:-/colo-xdp}
LAB_NET=${LAB_NET:-192.168.77.0/24}
PRIMARY_HOST=${PRIMARY_HOST:-192.168.77.10}
SECONDARY_HOST=${SECONDARY_HOST:-192.168.77.11}
CLIENT_MAC=${CLIENT_MAC:-52:54:00:77:00:12}
COLO_PORT=${COLO_PORT:-9004}        # the secondary's frames, forwarded over TCP

# The guest: the same address and MAC on both hosts, as a COLO pair has.
GUEST_NS=guest
GUEST_IP=10.77.0.2
GUEST_MAC=52:54:00:77:00:02
CLIENT_IP=10.77.0.1
SERVICE_PORT=7007
TAP=tap0                            # host side of the guest's veth
MIRROR=mir0                         # gretap primary <-> secondary: the client's frames

VENV=$COLO_SRC/.venv
# shellcheck disable=SC2034  # used by the role scripts
COLO_XDP=$VENV/bin/colo-xdp

say() { echo "colo-xdp lab: $*" >&2; }

dry() { [ "${PROVISION_DRY_RUN:-0}" = 1 ]; }

# Run a command, or print it in a dry run.
run() {
    if dry; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# The interface that carries the lab network (eth1 in a dry run).
lab_iface() {
    if dry; then
        echo eth1
        return
    fi
    local dev
    dev=$(ip -o -4 addr show to "$LAB_NET" | awk '{print $2; exit}')
    [ -n "$dev" ] || { say "no interface has an address in $LAB_NET"; exit 1; }
    echo "$dev"
}

# The README's command: Debian packages, .venv, the C helper, bcc.
install_colo_xdp() {
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make
    run make -C "$COLO_SRC" setup
}

# A long-running process as a transient systemd unit (replaced if it exists).
start_unit() {
    local unit=$1
    shift
    run systemctl stop "$unit" 2>/dev/null || true
    run systemctl reset-failed "$unit" 2>/dev/null || true
    run systemd-run --unit "$unit" --collect "$@"
}

# The guest: namespace $GUEST_NS behind veth $TAP, running the lab's responder.
make_guest() {
    local diverge_flag=${1:-}
    if ! dry && ip netns list | grep -qw "$GUEST_NS"; then
        run ip netns del "$GUEST_NS"
    fi
    run ip netns add "$GUEST_NS"
    run ip link add "$TAP" numtxqueues 1 numrxqueues 1 type veth peer name eth0 \
        netns "$GUEST_NS" numtxqueues 1 numrxqueues 1
    run ip link set "$TAP" up
    run ip -n "$GUEST_NS" link set eth0 address "$GUEST_MAC"
    run ip -n "$GUEST_NS" addr add "$GUEST_IP/24" dev eth0
    run ip -n "$GUEST_NS" link set eth0 up
    run ip -n "$GUEST_NS" link set lo up
    run ip -n "$GUEST_NS" neigh replace "$CLIENT_IP" lladdr "$CLIENT_MAC" dev eth0 nud permanent
    # shellcheck disable=SC2086  # the flag is one word or none
    start_unit colo-guest ip netns exec "$GUEST_NS" "$VENV/bin/python" -m colo_xdp.lab.xdp_demo \
        responder "$SERVICE_PORT" $diverge_flag
}

# gretap between the two COLO hosts, carrying the client's frames.
make_mirror() {
    local local_ip=$1 remote_ip=$2
    run ip link del "$MIRROR" 2>/dev/null || true
    run ip link add "$MIRROR" type gretap local "$local_ip" remote "$remote_ip"
    run ip link set "$MIRROR" up
}
