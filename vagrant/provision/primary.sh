#!/usr/bin/env bash
# The primary host: its guest, the client's frames to the guest and (over
# gretap) to the secondary host, and colo-xdp compare in XDP mode.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${COLO_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}/vagrant/provision/lib.sh"

install_colo_xdp
UPLINK=$(lab_iface)
make_guest ""                             # the primary never diverges
make_mirror "$PRIMARY_HOST" "$SECONDARY_HOST"

# Frames for the guest arrive on the uplink (promiscuous: their MAC is the
# guest's); tc hands them to the guest and mirrors them to the secondary.
run ip link set "$UPLINK" promisc on
run tc qdisc replace dev "$UPLINK" ingress
run tc filter add dev "$UPLINK" parent ffff: protocol ip u32 match ip dst "$GUEST_IP/32" \
    action mirred egress mirror dev "$MIRROR" \
    action mirred egress redirect dev "$TAP"

run mkdir -p /var/log/colo-xdp
start_unit colo-compare "$COLO_XDP" compare \
    --primary-xdp "$TAP" \
    --secondary-in "tcp:0.0.0.0:$COLO_PORT,server=on" \
    --outdev "xdp:$UPLINK" \
    --xdp-mode generic \
    --control /run/colo-xdp/colo-xdp.sock \
    --miscompare-pcap /var/log/colo-xdp/miscompare.pcapng
say "primary ready: colo-xdp compare on $TAP, secondary-in tcp:0.0.0.0:$COLO_PORT, outdev xdp:$UPLINK"
