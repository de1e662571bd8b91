#!/usr/bin/env bash
# The full test suite: formatting, lints, unit tests, and the root tests that
# run the real plugins in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Tests exec the plugin binaries: build them first, as they ship (coordinator
# linked statically, see scripts/build.sh), and run every crate's tests that
# exec them against that build. The test build of coordinator carries the
# sweep tests' fault-injection hooks (tests/tests/matrix.rs); the plugins as
# they ship must not: tests/tests/deploy.rs checks the release coordinator,
# and builds the image from both release plugins and runs it, so those are
# built too (up to date after a release build, else a minute or two of LTO).
scripts/build.sh --profile dev --fault-injection
scripts/build.sh --plugins
# The third-party notices that ship with the binaries must match the
# dependencies they are built from.
scripts/notices.sh --check
cargo test --workspace --exclude coordinator
# --- kernel lab (issue 20) ---
# ipvlan, VLAN and bond cells need a distribution kernel: run them in Debian
# 6.1 and 6.12 guests under QEMU, both at once, against the same build.
scripts/lab-test.sh
# --- end kernel lab ---
# coordinator's own unit and netns tests last: cargo relinks its binary
# (dynamically) for them, which the tests above must not run against.
cargo test -p coordinator
