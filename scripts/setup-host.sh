#!/usr/bin/env bash
# Install the Debian packages colo-xdp needs, idempotently.
# Installs nothing when everything is present; says clearly what it cannot do.
set -euo pipefail

PACKAGES=(python3 python3-venv python3-dev gcc make qemu-system-x86 iproute2 util-linux tcpdump
          clang libclang-rt-dev    # clang, libclang-rt-dev: make fuzz, the sanitizer tests
          vagrant vagrant-libvirt shellcheck   # tests/lab: vagrant validate, the provisioning scripts
          systemd)   # systemd-analyze: tests/unit/test_systemd.py verifies the unit files

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "colo-xdp setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    echo "colo-xdp setup: run 'sudo apt-get install ${missing[*]}' or run make as root." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "colo-xdp setup: no apt-get here; install these by hand: ${missing[*]}" >&2
    exit 1
fi
echo "colo-xdp setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
