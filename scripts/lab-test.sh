#!/usr/bin/env bash
# The kernel-lab step of scripts/test.sh: the tests that need ipvlan, vlan or
# bond links run inside Debian 6.1 and 6.12 guests (scripts/kernel-lab.sh),
# one guest per kernel, both at once (QEMU TCG with -smp 1 keeps one core
# busy each). Each guest boots once and runs every lab test in it.
#
#   scripts/lab-test.sh [KERNEL...]     default: 6.1 6.12
#
# MATRIX_CELL=<part of a cell name> narrows the matrix cells, as on the host.
# Expects the plugins built (scripts/build.sh) and the kernels unpacked
# (scripts/setup.sh); a guest that does not boot fails the step.
set -euo pipefail
cd "$(dirname "$0")/.."
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(6.1 6.12)

# The test binaries, built for the host and run as they are in the guests.
tests=(matrix kernel_lab)
bins=()
for t in "${tests[@]}"; do
  bin=$(cargo test -p cni-tests --test "$t" --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
  [ -x "$bin" ] || { echo "lab-test: no test binary for $t" >&2; exit 1; }
  bins+=("$bin")
done
# In the guest: every binary's ignored (lab-only) tests, then one status.
guest_cmd='rc=0; for b in "$@"; do echo "== $b"; "$b" --ignored --test-threads=1 --nocapture || rc=1; done; exit $rc'

logs=$(mktemp -d /tmp/lab-test.XXXXXX)
trap 'rm -rf "$logs"' EXIT
start=$(date +%s)
pids=()
for k in "${kernels[@]}"; do
  scripts/kernel-lab.sh run --kernel "$k" -- bash -c "$guest_cmd" lab "${bins[@]}" \
    > "$logs/$k.log" 2>&1 &
  pids+=($!)
done
fail=0
for i in "${!kernels[@]}"; do
  k=${kernels[$i]}
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "=================== kernel lab $k: exit $rc"
  cat "$logs/$k.log"
  [ "$rc" = 0 ] || fail=1
done
echo "kernel lab: ${kernels[*]} in $(($(date +%s) - start)) s wall"
for i in "${!kernels[@]}"; do
  grep -h '^test result' "$logs/${kernels[$i]}.log" | sed "s/^/  ${kernels[$i]}: /"
done
[ "$fail" = 0 ] || { echo "kernel lab: FAILED" >&2; exit 1; }
