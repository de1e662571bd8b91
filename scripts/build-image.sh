#!/usr/bin/env bash
# Builds the coordinator image FROM scratch out of the plugins as
# scripts/build.sh builds them (both static), and saves it as an OCI archive.
# No base image is pulled and nothing is pushed.
#
#   scripts/build-image.sh [--profile release|debug] [--no-build] [--out DIR] [--tag NAME]
#
# --profile  which target/<profile> binaries go in (default release)
# --no-build use the binaries already built (the test suite does)
# --out      where the archive goes (default target/image)
# --tag      the image's name in podman's store and in the archive
#            (default localhost/coordinator:<version>)
# Prints the archive's path. Load it with `podman load -i`, import it into a
# node's containerd with `ctr -n k8s.io images import`, or push it with
# `skopeo copy oci-archive:<path> docker://<registry>/coordinator:<version>`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
profile=release out=target/image build=1 tag="localhost/coordinator:$version"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo_profile=release ;;
  debug) cargo_profile=dev ;;
  *) echo "build-image: --profile release|debug" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
  scripts/build.sh --profile "$cargo_profile" --plugins >&2
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/coordinator-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
install -d -m 0755 "$ctx/usr/lib/cni" "$ctx/usr/share/coordinator/licenses"
for bin in coordinator coordinator-ipam; do
  # Nothing but the executable is in the image: a dynamic one would not start.
  if readelf -lW "target/$profile/$bin" | grep -q 'Requesting program interpreter'; then
    echo "build-image: target/$profile/$bin is dynamically linked (build it with scripts/build.sh)" >&2
    exit 1
  fi
  install -m 0755 "target/$profile/$bin" "$ctx/usr/lib/cni/$bin"
done
install -m 0644 conf-examples/defaults.json LICENSE NOTICE "$ctx/usr/share/coordinator/"
install -m 0644 licenses/*.txt "$ctx/usr/share/coordinator/licenses/"
cp deploy/Containerfile "$ctx/Containerfile"

mkdir -p "$out"
archive="$out/coordinator-$version.oci.tar"
rm -f "$archive"
podman build --quiet --network none --pull=never -f "$ctx/Containerfile" -t "$tag" "$ctx" >&2
podman save --quiet --format oci-archive -o "$archive" "$tag" >&2
realpath "$archive"
