#!/usr/bin/env bash
# Installs what a fresh Debian 12 root machine lacks to build, test and demo
# the plugins. Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
[ -x /usr/lib/cni/macvlan ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v iperf3 >/dev/null || need+=(iperf3)
# bench profile (scripts/profile-add.sh and its smoke test) samples with perf.
command -v perf >/dev/null || need+=(linux-perf)
command -v etcd >/dev/null || need+=(etcd-server)
# The etcd TLS test makes its own CA with the openssl CLI (tests only).
command -v openssl >/dev/null || need+=(openssl)
# unshare for the labs, setpriv for the DEL-without-CAP_NET_ADMIN test.
command -v unshare >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# scripts/build.sh checks with readelf that coordinator came out static.
command -v readelf >/dev/null || need+=(binutils)
# The image test builds the image with podman and runs it with runc (crun
# refuses the hybrid cgroup layout of these machines).
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
# The manifest tests validate deploy/ offline with kubernetes-validate (PyPI),
# kept in a private venv so the system Python is never touched.
KV_VENV=/opt/coordinator-tools/venv
KV_VERSION=1.37.0
kv_ok() { "$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KV_VERSION"; }
if ! kv_ok && ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3 python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! kv_ok; then
  echo "setup: installing kubernetes-validate $KV_VERSION in $KV_VENV" >&2
  rm -rf "$KV_VENV"
  /usr/bin/python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  kv_ok
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# The third-party licence notices (scripts/notices.sh) are generated, and
# checked to be current, with cargo-about.
ABOUT_VERSION=0.9.3
if ! cargo about --version 2>/dev/null | grep -q " $ABOUT_VERSION"; then
  echo "setup: installing cargo-about $ABOUT_VERSION" >&2
  cargo install --quiet --locked --features cli cargo-about --version "$ABOUT_VERSION"
fi
for comp in clippy rustfmt; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "setup: the tests and the demo create network namespaces and need root" >&2
  exit 1
fi
