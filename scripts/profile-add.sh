#!/bin/sh
# Where the coordinator's ADD spends its CPU (issue 15), re-runnable by anyone
# (as root, perf installed: Debian's linux-perf):
#   scripts/profile-add.sh [bench profile options, e.g. --pairs 400 --keep-data]
# Builds the release binaries and the `profiling` profile (release with
# symbols and line tables; frame pointers so perf can walk user stacks), then
# runs `target/release/bench profile`, which writes
# integration/results/profile-add.{md,json}. About 2 min of build and 1 min
# of run on 2 cores.
set -eu
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "profile-add: perf not found (apt-get install linux-perf)" >&2; exit 1; }
scripts/build.sh
# Frame pointers only in this profile's own target directory (target/profiling):
# the release build above is untouched. Linked statically, as shipped.
RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" \
    scripts/build.sh --profile profiling --coordinator
exec target/release/bench profile --profiled target/profiling "$@"
