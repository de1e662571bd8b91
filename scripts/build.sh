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
# Both plugins are linked statically against glibc (static-pie executables):
# - they are exec'd for every CNI call, and a static executable skips the
#   dynamic loader (mapping libc and libgcc_s, symbol lookup): about 0.4 ms of
#   CPU per ADD and per DEL (integration/results, README Performance);
# - the DaemonSet copies them into the node's /opt/cni/bin, where they run
#   against the node's own libraries: a static executable does not care
#   which glibc the node has, like the reference plugins;
# - the image holds nothing else (deploy/Containerfile is FROM scratch).
# They resolve no names through the C library and load nothing at run time
# (no NSS, no dlopen), which is what a static glibc cannot do well:
# coordinator-ipam looks etcd endpoint names up itself (hosts file, DNS;
# ipam/src/store/etcd/resolve.rs).
#
# The flag goes to the final link only (cargo rustc), so dependencies are
# shared with plain `cargo build`; a later plain `cargo build` (or `cargo
# test` of the plugin's package) relinks it dynamically, and this script
# statically again.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release others=(--workspace --bins --exclude coordinator --exclude coordinator-ipam) hooks=() ipam=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --plugins) others=(); shift ;;
    --coordinator) others=() ipam=0; shift ;;
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
static=(coordinator)
cargo rustc --profile "$profile" "$@" "${hooks[@]}" -p coordinator --bin coordinator -- -C target-feature=+crt-static
if [ "$ipam" = 1 ]; then
  cargo rustc --profile "$profile" "$@" -p coordinator-ipam --bin coordinator-ipam -- -C target-feature=+crt-static
  static+=(coordinator-ipam)
fi
for bin in "${static[@]}"; do
  if readelf -lW "$dir/$bin" | grep -q INTERP; then
    echo "build.sh: $dir/$bin still asks for a dynamic loader" >&2
    exit 1
  fi
done
