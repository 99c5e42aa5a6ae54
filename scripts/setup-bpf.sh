#!/usr/bin/env bash
# Make bcc able to compile colo-xdp's XDP program, idempotently.
#
#  1. Debian packages: python3-bpfcc (bcc's Python bindings and libbpfcc) and
#     linux-headers-amd64 (Debian's kernel headers; pulls the matching
#     linux-headers-*-amd64 and linux-headers-*-common).
#  2. Kernel headers for the running kernel.  bcc looks for them in
#     /lib/modules/$(uname -r)/build and .../source.  A kernel that is not
#     Debian's (a cloud or VM kernel) has none; Debian's headers serve an XDP
#     program, so the two directories are linked to them.  Existing real
#     headers are never touched; links this script made are re-pointed when
#     Debian's headers move on.
#  3. A check that bcc compiles and loads an XDP program.
#
# Does nothing but the check when everything is in place.  When it cannot do
# a step it prints one sentence saying what to do and exits non-zero.
set -euo pipefail

PACKAGES=(python3-bpfcc linux-headers-amd64)
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
SYSPY=/usr/bin/python3

say() { echo "colo-xdp setup-bpf: $*" >&2; }
fail() { say "$*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Do build/ and source/ of $MODDIR hold usable headers?  bcc needs the
# generated headers (build) and the main include tree (source, or build
# itself for a full tree).
have_kernel_headers() {
    [ -e "$MODDIR/build/include/generated/autoconf.h" ] &&
        { [ -e "$MODDIR/source/include/linux/kconfig.h" ] ||
          [ -e "$MODDIR/build/include/linux/kconfig.h" ]; }
}

# The Debian headers pair (…-amd64, …-common) that linux-headers-amd64 depends on.
debian_headers_dirs() {
    local pkg ver
    pkg=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null |
          grep -o 'linux-headers-[^ ,]*-amd64' | head -n1) || true
    [ -n "$pkg" ] || return 1
    ver=${pkg#linux-headers-}      # e.g. 6.1.0-56-amd64
    ver=${ver%-amd64}              # e.g. 6.1.0-56
    [ -d "/usr/src/linux-headers-$ver-amd64" ] && [ -d "/usr/src/linux-headers-$ver-common" ] || return 1
    echo "/usr/src/linux-headers-$ver-amd64 /usr/src/linux-headers-$ver-common"
}

# Point $MODDIR/$1 at $2 unless it is a real directory (the kernel's own headers).
link_dir() {
    local name=$1 target=$2 path=$MODDIR/$1
    if [ -L "$path" ]; then
        [ "$(readlink "$path")" = "$target" ] && return 0
        ln -sfn "$target" "$path"
    elif [ -e "$path" ]; then
        fail "$path exists but holds no usable kernel headers; remove it or install the headers of kernel $KREL, then run this again."
    else
        ln -s "$target" "$path"
    fi
    say "linked $path -> $target"
}

# --- 1. packages ------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || fail "installing ${missing[*]} needs root: run 'sudo apt-get install ${missing[*]}' or run make as root."
    command -v apt-get >/dev/null || fail "there is no apt-get here: install ${missing[*]} (Debian names) by hand."
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. kernel headers for the running kernel -------------------------------
if ! have_kernel_headers; then
    dirs=$(debian_headers_dirs) ||
        fail "Debian's kernel headers are not under /usr/src: run 'apt-get install --reinstall linux-headers-amd64'."
    read -r build_dir source_dir <<<"$dirs"
    is_root || fail "kernel $KREL has no headers and linking Debian's needs root: run 'sudo $0' or run make as root."
    mkdir -p "$MODDIR"
    link_dir build "$build_dir"
    link_dir source "$source_dir"
    have_kernel_headers ||
        fail "$MODDIR/build and /source still hold no usable headers: install the headers of kernel $KREL there."
fi

# --- 3. bcc compiles and loads an XDP program -------------------------------
# Loading needs root (CAP_BPF); without it only the compile is checked.
check=$(is_root && echo load || echo compile)
if ! err=$("$SYSPY" - "$check" 2>&1 <<'EOF'
import sys
from bcc import BPF
prog = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
int xdp_check(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    return XDP_PASS;
}
"""
b = BPF(text=prog)
if sys.argv[1] == "load":
    b.load_func("xdp_check", BPF.XDP)
b.cleanup()
EOF
); then
    say "bcc output: $(printf '%s' "$err" | tail -n 3 | tr '\n' ' ')"
    fail "bcc cannot compile an XDP program against the headers in $MODDIR: check that python3-bpfcc is installed and that $MODDIR/build and /source point at kernel headers."
fi
