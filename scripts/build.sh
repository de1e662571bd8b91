#!/usr/bin/env bash
# Builds the workspace's binaries the way they ship:
#   scripts/build.sh [--profile release|dev|profiling] [--plugins|--coordinator]
#                    [--fault-injection] [cargo flags, e.g. --locked]
# (default: release, every binary of the workspace; --plugins: coordinator and
# coordinator-ipam, as the image and the .deb ship them; --coordinator: that one).
# --fault-injection (dev profile only, used by scripts/test.sh): coordinator
# with the sweep tests' kill/panic hooks (cni/src/netlink/fault.rs); nothing
# that ships is built with it.
#
# coordinator is linked statically against glibc (a static-pie executable):
# - it is exec'd for every CNI call, and a static executable skips the
#   dynamic loader (mapping libc and libgcc_s, symbol lookup): about 0.4 ms of
#   CPU per ADD and per DEL (integration/results, README Performance);
# - the DaemonSet copies it into the node's /opt/cni/bin, where it runs
#   against the node's own libraries: a static executable does not care
#   which glibc the node has, like the reference plugins.
# It resolves no names and loads nothing at run time (no NSS, no dlopen),
# which is what a static glibc cannot do well. coordinator-ipam resolves its
# etcd endpoints' host names through NSS, so it stays dynamic.
#
# The flag goes to the final link only (cargo rustc), so dependencies are
# shared with plain `cargo build`; a later plain `cargo build` relinks it
# dynamically, and this script statically again.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release others=(--workspace --bins --exclude coordinator) hooks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --plugins) others=(-p coordinator-ipam --bins); shift ;;
    --coordinator) others=(); shift ;;
    --fault-injection) hooks=(--features fault-injection); shift ;;
    *) break ;;
  esac
done
case "$profile" in
  dev) dir=target/debug ;;
  release|profiling) dir=target/$profile ;;
  *) echo "build.sh: --profile release|dev|profiling" >&2; exit 2 ;;
esac
if [ ${#hooks[@]} -gt 0 ] && [ "$profile" != dev ]; then
  echo "build.sh: --fault-injection is for test builds (--profile dev) only" >&2
  exit 2
fi
if [ ${#others[@]} -gt 0 ]; then
  cargo build --profile "$profile" "$@" "${others[@]}"
fi
cargo rustc --profile "$profile" "$@" "${hooks[@]}" -p coordinator --bin coordinator -- -C target-feature=+crt-static
if readelf -lW "$dir/coordinator" | grep -q INTERP; then
  echo "build.sh: $dir/coordinator still asks for a dynamic loader" >&2
  exit 1
fi
