#!/usr/bin/env bash
# The demo, on a fresh Debian/Ubuntu machine, as root: set up the host tools and the venv
# (scripts/setup.sh), then run `python -m companions.demo` with the venv's python: a sandboxed
# node of network namespaces, the installer, the frozen plugin (built on first use) through the
# CNI protocol for a meshed and a plain pod, and the CNI race repaired in place. It cleans up
# after itself, also on Ctrl-C. Arguments go to the demo (--help lists them).
#
#   bash scripts/demo.sh
#   DEMO_SKIP_SETUP=1 bash scripts/demo.sh --source   # already set up; plugin from source
#   bash scripts/demo.sh --native-nftables            # pods get upstream's nftables tables
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) != 0 ]]; then
    echo "demo: needs root (network namespaces, iptables): run bash scripts/demo.sh as root" >&2
    exit 1
fi
if [[ ${DEMO_SKIP_SETUP:-0} != 1 ]]; then
    SETUP_TEST_TOOLS=0 bash scripts/setup.sh  # the tests' own tools come with the test command
fi
exec .venv/bin/python -m companions.demo "$@"
