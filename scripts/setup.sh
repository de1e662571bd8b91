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
# The router-advertisement tests run radvd in a lab's fabric netns (only there).
command -v radvd >/dev/null || [ -x /usr/sbin/radvd ] || need+=(radvd)
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

# --- kernel lab (issue 20): QEMU + Debian 6.1 and 6.12 kernels --------------
# The lab (scripts/kernel-lab.sh) boots distribution kernels under QEMU to run
# what this host's kernel cannot build (ipvlan, vlan, bond). Everything comes
# from Debian's archive with apt; the kernels are downloaded, never committed,
# and unpacked once under $LAB_CACHE so reruns cost nothing. Trixie's kernel
# comes through a private apt state (own sources.list, lists and cache) so the
# system's sources stay as they are.
LAB_CACHE=/var/cache/coordinator-lab
lab_need=()
command -v qemu-system-x86_64 >/dev/null || lab_need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || lab_need+=(busybox-static)
command -v depmod >/dev/null || lab_need+=(kmod)
command -v cpio >/dev/null || lab_need+=(cpio)
if [ ${#lab_need[@]} -gt 0 ]; then
  echo "setup: installing ${lab_need[*]} for the kernel lab" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${lab_need[@]}" >/dev/null
fi
# lab_kernel NAME APT_OPTS...: downloads the image linux-image-amd64 depends on
# in the given apt state and unpacks it to $LAB_CACHE/NAME (with modules.dep).
lab_kernel() {
  local name=$1; shift
  local dir=$LAB_CACHE/$name
  [ -f "$dir/.ready" ] && return 0
  local pkg
  pkg=$(apt-cache "$@" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    # Lists missing or stale (a machine whose packages were all there).
    apt-get "$@" update -qq
    pkg=$(apt-cache "$@" depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "setup: no kernel image package for $name" >&2; return 1; }
  echo "setup: downloading $pkg for the kernel lab ($name)" >&2
  rm -rf "$dir" "$LAB_CACHE/deb-$name"
  mkdir -p "$LAB_CACHE/deb-$name"
  # apt downloads as _apt when it can write there (no sandbox warning).
  chown _apt: "$LAB_CACHE/deb-$name" 2>/dev/null || true
  (cd "$LAB_CACHE/deb-$name" && apt-get "$@" download -qq "$pkg")
  dpkg-deb -x "$LAB_CACHE"/deb-"$name"/*.deb "$dir"
  rm -rf "$LAB_CACHE/deb-$name"
  local ver
  # trixie is merged-/usr: its modules live under usr/lib.
  [ -d "$dir/lib/modules" ] || ln -s usr/lib "$dir/lib"
  ver=$(ls "$dir/lib/modules" | head -n1)
  depmod -b "$dir" "$ver"
  echo "$ver" > "$dir/.ready"
}
mkdir -p "$LAB_CACHE"
lab_kernel 6.1
TRIXIE=$LAB_CACHE/apt-trixie
mkdir -p "$TRIXIE/lists/partial" "$TRIXIE/cache/archives/partial"
# The same Debian mirror the system's own sources use, with trixie's suite.
MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
  awk '$2 !~ /-/ {print $1; exit}')
[ -n "$MIRROR" ] || { echo "setup: no Debian mirror in the system's apt sources" >&2; exit 1; }
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
  > "$TRIXIE/sources.list"
trixie_opts=(-o "Dir::Etc::SourceList=$TRIXIE/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$TRIXIE/lists" -o "Dir::Cache=$TRIXIE/cache")
if [ ! -f "$LAB_CACHE/6.12/.ready" ]; then
  apt-get "${trixie_opts[@]}" update -qq
  lab_kernel 6.12 "${trixie_opts[@]}"
fi

# --- libcni (issue 24 item 4) -------------------------------------------------
# tests/tests/result_routes.rs runs a 1.1.0 ADD through the real libcni (the
# reference runtime library) and parses the result with its types. libcni
# reads spec 1.1.0 from v1.2.0 on: Debian 12 and 13 ship v1.1.2, unstable
# ships v1.3.x; Go 1.22 comes from bookworm-backports. Both are downloaded
# with apt from Debian's archive through a private apt state and unpacked
# under $LIBCNI_CACHE (nothing installed system-wide, the system's sources
# untouched); the test builds its program offline from there (GOPATH mode:
# libcni's packages need nothing outside the standard library).
LIBCNI_CACHE=/var/cache/coordinator-libcni
libcni_ok() {
  [ -f "$LIBCNI_CACHE/.ready" ] &&
    grep -q '"1.1.0"' "$LIBCNI_CACHE/root/usr/share/gocode/src/github.com/containernetworking/cni/pkg/types/100/types.go" 2>/dev/null &&
    "$LIBCNI_CACHE/root/usr/lib/go-1.22/bin/go" version >/dev/null 2>&1
}
if ! libcni_ok; then
  echo "setup: downloading Go 1.22 and libcni (Debian packages) into $LIBCNI_CACHE" >&2
  LAPT=$LIBCNI_CACHE/apt
  rm -rf "$LIBCNI_CACHE"
  mkdir -p "$LAPT/lists/partial" "$LAPT/cache/archives/partial" "$LIBCNI_CACHE/deb"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$MIRROR" bookworm-backports "$MIRROR" sid > "$LAPT/sources.list"
  lapt=(-o "Dir::Etc::SourceList=$LAPT/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$LAPT/lists" -o "Dir::Cache=$LAPT/cache")
  apt-get "${lapt[@]}" update -qq
  chown _apt: "$LIBCNI_CACHE/deb" 2>/dev/null || true
  (cd "$LIBCNI_CACHE/deb" &&
    apt-get "${lapt[@]}" download -qq golang-1.22-go golang-1.22-src golang-github-appc-cni-dev)
  for d in "$LIBCNI_CACHE"/deb/*.deb; do dpkg-deb -x "$d" "$LIBCNI_CACHE/root"; done
  rm -rf "$LIBCNI_CACHE/deb" "$LAPT/cache"
  touch "$LIBCNI_CACHE/.ready"
  libcni_ok || { echo "setup: the unpacked libcni does not read spec 1.1.0, or Go 1.22 does not run" >&2; exit 1; }
fi
