#!/usr/bin/env bash
# Builds the Debian package coordinator-cni: both plugins in /usr/lib/cni
# (where Debian's containernetworking-plugins puts the reference plugins) and
# an example node defaults file. Uses dpkg-deb only (present on every Debian).
#
#   scripts/build-deb.sh [--profile release|debug] [--out DIR] [--no-build] [--fast]
#
# --profile  which target/<profile> binaries to package (default release)
# --no-build package the binaries already built (the test suite uses this)
# --fast     no compression (debug binaries are large; CI only checks contents)
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release out=target/deb build=1 compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --fast) compress=(-Znone); shift ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo_profile=release ;;
  debug) cargo_profile=dev ;;
  *) echo "build-deb: --profile release|debug" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
  scripts/build.sh --profile "${cargo_profile}" --plugins >&2
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
pkg=coordinator-cni
mkdir -p "$out"
root=$(mktemp -d "${TMPDIR:-/tmp}/$pkg-root.XXXXXX")
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT

install -d -m 0755 "$root/DEBIAN" "$root/usr/lib/cni" "$root/usr/share/doc/$pkg/examples"
for bin in coordinator coordinator-ipam; do
  install -m 0755 "target/$profile/$bin" "$root/usr/lib/cni/$bin"
done
install -m 0644 conf-examples/defaults.json "$root/usr/share/doc/$pkg/examples/defaults.json"
install -m 0644 LICENSE "$root/usr/share/doc/$pkg/copyright"
# coordinator is linked statically with glibc (LGPL): what that means, and where its source is.
install -m 0644 NOTICE "$root/usr/share/doc/$pkg/NOTICE"
# Every third-party crate linked into each binary, with its licence text
# (scripts/notices.sh).
install -d -m 0755 "$root/usr/share/doc/$pkg/licenses"
install -m 0644 licenses/coordinator.txt licenses/coordinator-ipam.txt "$root/usr/share/doc/$pkg/licenses/"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: coordinator maintainers <coordinator@example.org>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Recommends: containernetworking-plugins
Section: net
Priority: optional
Homepage: https://github.com/example/coordinator
Description: CNI meta-plugin and IPAM plugin for underlay pods
 coordinator makes a multi-NIC pod's routing coherent (per-NIC policy
 tables, a host veth for Service and probe traffic, conflict and gateway
 checks); coordinator-ipam allocates underlay addresses per subnet, node
 and NIC. Both are installed in /usr/lib/cni. An example node defaults file
 is in /usr/share/doc/$pkg/examples/defaults.json; copy it to
 /etc/cni/coordinator/defaults.json and adapt it.
CONTROL
deb="$out/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >&2
echo "$deb"
