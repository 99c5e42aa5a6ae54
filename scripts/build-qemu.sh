#!/usr/bin/env bash
# Build the QEMU that the real COLO pair (tests/colo) runs, once, and cache it.
#
# Debian 12's QEMU 7.2 cannot run COLO under TCG (see the headers of
# tests/colo/patches/*.patch).  This script
#
#  1. fetches Debian's qemu source package with `apt-get source`, using a
#     private apt configuration (its own deb-src entry and lists under a temp
#     dir; /etc/apt is never touched),
#  2. installs the few Debian packages the build needs, by name, when missing,
#  3. applies tests/colo/patches/*.patch,
#  4. configures a minimal x86_64-softmmu build (TCG, virtio-net, tap,
#     socket chardevs, net filters, colo-compare, migration, replication,
#     fw_cfg), builds it on every core and installs it into
#
#        ${COLO_XDP_QEMU_CACHE:-/var/cache/colo-xdp/qemu}/<version>-<hash>/
#
#     where <hash> covers the patches and the configure options,
#  5. prints the path of the qemu-system-x86_64 binary.
#
# With --check it builds nothing: it prints the path and exits 0 when the
# build is cached, else says so and exits 1.
#
# When that directory already holds the binary it only prints the path.  The
# cache lives outside the clone so that every worktree shares one build.
# Firmware (SeaBIOS) comes from Debian's seabios package: run the binary with
# `-L /usr/share/seabios`.
set -euo pipefail
# The whole script is one compound command, parsed before it runs: editing
# this file during a build cannot derail the build.
{

HERE=$(cd "$(dirname "$0")/.." && pwd)
PATCH_DIR=$HERE/tests/colo/patches
CACHE=${COLO_XDP_QEMU_CACHE:-/var/cache/colo-xdp/qemu}
DEB_VERSION=${COLO_XDP_QEMU_DEB_VERSION:-1:7.2+dfsg-7+deb12u18}
CONFIGURE_OPTS=(
    --target-list=x86_64-softmmu
    --without-default-features
    --enable-tcg
    --enable-replication
    --disable-kvm
    --disable-docs
    --disable-werror
    --disable-user
    --disable-tools
    --disable-guest-agent
    --disable-install-blobs
    --disable-debug-info
)
BUILD_PACKAGES=(dpkg-dev patch gcc pkg-config ninja-build meson python3
                libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev
                seabios)

say() { echo "colo-xdp build-qemu: $*" >&2; }
fail() { say "$*"; exit 1; }

key() {
    local h
    h=$( { cat "$PATCH_DIR"/*.patch; printf '%s\n' "${CONFIGURE_OPTS[@]}"; } |
         sha256sum | cut -c1-12)
    echo "${DEB_VERSION#*:}-$h"
}

KEY=$(key)
DEST=$CACHE/$KEY
BIN=$DEST/bin/qemu-system-x86_64

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi
# --check: only say whether the build is there (for the tests' fixtures).
[ "${1:-}" != --check ] || { say "no build in $DEST: run scripts/build-qemu.sh (or make setup)"; exit 1; }

[ "$(id -u)" -eq 0 ] || [ -w "$(dirname "$CACHE")" ] ||
    fail "no cached build in $DEST and no right to make one: run as root, or set COLO_XDP_QEMU_CACHE to a writable directory."
mkdir -p "$CACHE"

# One build at a time per cache; a second caller waits and then finds the binary.
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
missing=()
for p in "${BUILD_PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || fail "missing Debian packages ${missing[*]}: install them (as root) and run again."
    say "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

WORK=$CACHE/.work-$KEY
rm -rf "$WORK"
mkdir -p "$WORK/apt/sources.list.d" "$WORK/apt/lists/partial"
trap 'rm -rf "$WORK"' EXIT

# A private apt view with only deb-src entries, so that /etc/apt stays as it is.
cat > "$WORK/apt/sources.list.d/colo-xdp-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT_PRIVATE=(
    -o Dir::Etc::SourceList=/dev/null
    -o "Dir::Etc::SourceParts=$WORK/apt/sources.list.d"
    -o "Dir::State::Lists=$WORK/apt/lists"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Sandbox::User=root
)
say "fetching qemu $DEB_VERSION source into $WORK"
apt-get "${APT_PRIVATE[@]}" -q update >&2
(cd "$WORK" && apt-get "${APT_PRIVATE[@]}" -q source --download-only "qemu=$DEB_VERSION" >&2)
dpkg-source -x "$WORK"/qemu_"${DEB_VERSION#*:}".dsc "$WORK/src" >&2

for p in "$PATCH_DIR"/*.patch; do
    say "applying $(basename "$p")"
    patch -d "$WORK/src" -p1 --forward --quiet < "$p" >&2
done

STAGE=$CACHE/.stage-$KEY
rm -rf "$STAGE"
mkdir -p "$WORK/build"
start=$(date +%s)
(cd "$WORK/build" && ../src/configure --prefix="$STAGE" "${CONFIGURE_OPTS[@]}" >&2)
ninja -C "$WORK/build" -j "$(nproc)" qemu-system-x86_64 >&2
mkdir -p "$STAGE/bin"
install -m 0755 "$WORK/build/qemu-system-x86_64" "$STAGE/bin/"
printf 'debian-version %s\npatches %s\nbuild-seconds %s\n' "$DEB_VERSION" \
    "$(cd "$PATCH_DIR" && ls ./*.patch | xargs)" "$(( $(date +%s) - start ))" > "$STAGE/BUILD-INFO"
"$STAGE/bin/qemu-system-x86_64" --version >&2
rm -rf "$DEST"
mv "$STAGE" "$DEST"
say "built in $(( $(date +%s) - start )) s"
echo "$BIN"
exit 0
}
