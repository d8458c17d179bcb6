#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) to run istio-cni-py and its tests:
# the host tools the plugin and the tests use, and a Python venv in .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iptables iproute2 containernetworking-plugins conntrack util-linux procps)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "setup: ready (.venv/bin/istio-cni, .venv/bin/istio-cni-node)" >&2
