#!/usr/bin/env bash
# The client host: an address on the guests' subnet and the guests' MAC as a
# static neighbour (no ARP: the secondary never answers on the network).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${COLO_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}/vagrant/provision/lib.sh"

install_colo_xdp
UPLINK=$(lab_iface)
run ip addr replace "$CLIENT_IP/24" dev "$UPLINK"
run ip neigh replace "$GUEST_IP" lladdr "$GUEST_MAC" dev "$UPLINK" nud permanent
say "client ready: $VENV/bin/python -m colo_xdp.lab.xdp_demo client $GUEST_IP $SERVICE_PORT 10"
