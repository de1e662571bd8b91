#!/usr/bin/env bash
# The kernel lab: runs one program inside a QEMU guest booted from a Debian
# kernel (6.1 bookworm or 6.12 trixie, unpacked by scripts/setup.sh), for what
# this host's kernel cannot build (ipvlan, vlan, bond).
#
#   scripts/kernel-lab.sh run --kernel 6.1 [--mem MB] -- PROGRAM [ARGS...]
#
# The guest's root is this machine's own root, shared read-only over 9p with a
# tmpfs overlay on top, so PROGRAM is the very binary the host built and sees
# the host's ip, nft and reference plugins. The guest has no NIC (-nic none):
# every namespace, link and packet stays inside it. PROGRAM runs in the current
# directory with the current environment's RUST_*, LAB_*, MATRIX_* (and a few
# more, see run()) variables;
# its output streams to this terminal and its exit status becomes ours. A guest
# that cannot boot fails with the reason (never a skip).
#
# Under TCG (no usable KVM here) -smp 1 is single-threaded: two guests of
# different kernels can run side by side on two cores.
set -euo pipefail

LAB_CACHE=${LAB_CACHE:-/var/cache/coordinator-lab}
SELF=$(readlink -f "$0")

die() { echo "kernel-lab: $*" >&2; exit 2; }

# Builds (once per kernel) a busybox initramfs that loads 9p and overlay,
# mounts the host's root and switches into this script's `guest` stage.
initrd_for() {
  local kdir=$1 ver=$2
  local out=$kdir/initrd.cpio.gz stamp
  stamp=$(sha256sum "$SELF" | cut -c1-16)
  if [ -f "$out" ] && [ "$(cat "$kdir/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$out"; return
  fi
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp"/{bin,dev,proc,sys,mnt/lower,mnt/upper,newroot,mods}
  cp /bin/busybox "$tmp/bin/busybox"
  local mods="" m f n=0
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    while read -r kind f _; do
      [ "$kind" = insmod ] || continue
      case " $mods " in *" $f "*) continue ;; esac
      mods="$mods $f"
    done < <(modprobe -d "$kdir" -S "$ver" --show-depends "$m")
  done
  for f in $mods; do
    n=$((n + 1))
    # busybox insmod cannot read .ko.xz (trixie): unpack them here.
    case $f in
      *.xz) xz -dc "$f" > "$tmp/mods/$(printf %02d $n).ko" ;;
      *) cp "$f" "$tmp/mods/$(printf %02d $n).ko" ;;
    esac
  done
  cat > "$tmp/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" || echo "kernel-lab: insmod $m failed"; done
fail() { echo "kernel-lab: $*"; echo "KERNEL-LAB-EXIT=125"; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /mnt/lower \
  || fail "cannot mount the host root over 9p"
mount -t tmpfs -o size=512m upper /mnt/upper
mkdir -p /mnt/upper/u /mnt/upper/w
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/upper/u,workdir=/mnt/upper/w root /newroot \
  || fail "cannot mount the overlay root"
for d in proc sys dev; do mount --move /$d /newroot/$d; done
stage=$(sed -n 's/.*lab\.stage=\([^ ]*\).*/\1/p' /newroot/proc/cmdline)
exec switch_root /newroot /bin/bash "$stage" guest
EOF
  chmod +x "$tmp/init"
  (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
  mv "$out.tmp" "$out"
  echo "$stamp" > "$kdir/initrd.stamp"
  rm -rf "$tmp"
  echo "$out"
}

# Runs inside the guest after switch_root, as PID 1.
guest() {
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  mount -t tmpfs run /run
  mount -t tmpfs tmp /tmp
  mkdir -p /run/netns /dev/pts /dev/shm /lab-job
  mount -t devpts devpts /dev/pts 2>/dev/null || true
  mount -t 9p -o trans=virtio,version=9p2000.L job /lab-job
  # shellcheck disable=SC1091
  . /lab-job/env
  # The host has no /lib/modules; the unpacked kernel's tree stands in, so
  # the kernel's on-demand module loads (rtnl-link-ipvlan, nft-*) work.
  mkdir -p /lib/modules
  ln -sfn "$LAB_KDIR/lib/modules/$(uname -r)" "/lib/modules/$(uname -r)"
  echo /sbin/modprobe > /proc/sys/kernel/modprobe
  for m in veth macvlan ipvlan 8021q bonding bridge nf_tables nft_ct nft_nat nft_chain_nat \
    nf_conntrack nft_fib_inet nft_reject_inet; do
    modprobe -q "$m" 2>/dev/null || true
  done
  ip link set lo up
  hostname "lab-$(uname -r | cut -d. -f1-2)"
  local rc=0
  cd "$LAB_CWD"
  bash /lab-job/cmd || rc=$?
  echo "$rc" > /lab-job/rc
  sync
  echo "KERNEL-LAB-EXIT=$rc"
  echo o > /proc/sysrq-trigger
  sleep 30
}

run() {
  local kernel="" mem=1024
  while [ $# -gt 0 ]; do
    case $1 in
      --kernel) kernel=$2; shift 2 ;;
      --mem) mem=$2; shift 2 ;;
      --) shift; break ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ -n "$kernel" ] || die "--kernel 6.1|6.12 is required"
  [ $# -gt 0 ] || die "no program given after --"
  local kdir=$LAB_CACHE/$kernel
  [ -f "$kdir/.ready" ] || die "kernel $kernel is not unpacked in $kdir: run scripts/setup.sh"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run scripts/setup.sh"
  local ver initrd job
  ver=$(cat "$kdir/.ready")
  initrd=$(initrd_for "$kdir" "$ver")
  job=$(mktemp -d /tmp/kernel-lab.XXXXXX)
  trap 'rm -rf "$job"' EXIT
  {
    printf 'export LAB_KDIR=%q LAB_CWD=%q LAB_KERNEL=%q\n' "$kdir" "$PWD" "$kernel"
    env | grep -E '^(RUST_[A-Z_]*|LAB_[A-Z_]*|MATRIX_[A-Z_]*|COORDINATOR_[A-Z_]*|CNI_[A-Z_]*|CARGO_[A-Z_]*)=' \
      | grep -vE '^LAB_(KDIR|CWD|KERNEL)=' | while IFS='=' read -r k v; do
      printf 'export %s=%q\n' "$k" "$v"
    done
  } > "$job/env"
  printf '%q ' "$@" > "$job/cmd"
  echo >> "$job/cmd"
  local accel=tcg cpu=max
  # kvm-pvm (this project's CI hosts) cannot run stock kernels: use KVM only
  # where a real VMX/SVM module is loaded.
  if [ -w /dev/kvm ] && grep -qE '^kvm_(intel|amd) ' /proc/modules 2>/dev/null; then
    accel=kvm cpu=host
  fi
  local kernel_img
  kernel_img=$(ls "$kdir"/boot/vmlinuz-*)
  local rc=0
  # clocksource=hpet: the TSC, calibrated at boot on a loaded host, ran a
  # 6.12 guest's clock ~4x fast (every timeout in it 4x short); QEMU's HPET
  # follows the host's clock.
  # stdin from /dev/null: the serial console must not eat the caller's input.
  qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m "$mem" -smp 1 -nodefaults -no-user-config \
    -display none -monitor none -serial stdio -no-reboot -nic none \
    -kernel "$kernel_img" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=3 mitigations=off nokaslr clocksource=hpet tsc=unstable no_timer_check i8042.noaux i8042.nokbd i8042.nopnp norandmaps panic=-1 rdinit=/init lab.stage=$SELF" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$job,mount_tag=job,security_model=none" </dev/null || rc=$?
  if [ ! -f "$job/rc" ]; then
    echo "kernel-lab: the $kernel guest ended without an exit status (qemu rc $rc): it did not boot or crashed" >&2
    exit 3
  fi
  exit "$(cat "$job/rc")"
}

case ${1:-} in
  run) shift; run "$@" ;;
  guest) guest ;;
  *) die "usage: $0 run --kernel 6.1|6.12 [--mem MB] -- PROGRAM [ARGS...]" ;;
esac
