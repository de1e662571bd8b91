#!/usr/bin/env bash
# The full test suite: formatting, lints, unit tests, and the root tests that
# run the real plugins in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Tests exec the plugin binaries: build them first.
cargo build --workspace --bins
cargo test --workspace
