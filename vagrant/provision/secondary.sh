#!/usr/bin/env bash
# The secondary host: its guest gets the client's frames from the primary host
# (gretap); its output goes to the primary's colo-xdp, never to the network.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${COLO_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}/vagrant/provision/lib.sh"

install_colo_xdp
make_guest /run/colo-guest-diverges      # touch it to make this guest answer differently
make_mirror "$SECONDARY_HOST" "$PRIMARY_HOST"

run tc qdisc replace dev "$MIRROR" ingress
run tc filter add dev "$MIRROR" parent ffff: protocol ip u32 match ip dst "$GUEST_IP/32" \
    action mirred egress redirect dev "$TAP"

start_unit colo-forward "$COLO_XDP" forward \
    --xdp "$TAP" \
    --to "tcp:$PRIMARY_HOST:$COLO_PORT,reconnect=1"
say "secondary ready: colo-xdp forward $TAP -> tcp:$PRIMARY_HOST:$COLO_PORT"
