#!/usr/bin/env bash
# The demo: builds the plugins, sets up the embedded lab (node, fabric, pod
# network namespaces), attaches a pod through macvlan + host-local +
# coordinator, shows its routes and a connectivity check, then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec target/release/demo "$@"
