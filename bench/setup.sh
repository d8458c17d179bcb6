#!/usr/bin/env bash
# The benchmarks' own tools, on top of scripts/setup.sh (run that first), on Debian/Ubuntu as
# root: the distribution's Go, which builds the compiled yardstick (bench/yardstick/, a
# reference CNI plugin every pod-start benchmark measures ours against), nsenter for the stock
# tools' rows, and openssl for the API stand-in's TLS. The product never needs any of these.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(golang-go util-linux openssl)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bench setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Wait (up to 15 min) for another apt or dpkg to let go of its lock.
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi
go version >&2
echo "bench setup: ready (the yardstick is built by the first benchmark that needs it)" >&2
