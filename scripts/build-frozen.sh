#!/usr/bin/env bash
# Build the frozen binaries (build.spec) into dist/: the plugin dist/istio-cni/istio-cni and the
# node agent dist/istio-cni-node/istio-cni-node, both onedir. Idempotent: every run rebuilds from
# a clean PyInstaller work dir, so stale modules never survive into a bundle.
#
#   scripts/build-frozen.sh               build both (about 70 s on 2 cores)
#   scripts/build-frozen.sh --with-onefile  also dist/istio-cni-onefile (start-time comparison)
#   scripts/build-frozen.sh --old-glibc   build inside a Debian 11 (glibc 2.31) chroot instead,
#                                          into dist/old-glibc/ (first run ~10 min: debootstrap,
#                                          CPython 3.11 from source; later runs reuse both)
#
# Needs the dev extras (.venv/bin/pip install -e '.[dev]') and the host's libip4tc, libip6tc,
# libxtables and xtables extensions (Debian: iptables) and libnftables with the libraries it
# links (Debian: libnftables1), which are bundled into the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

PYINSTALLER="${PYINSTALLER:-.venv/bin/pyinstaller}"
onefile=0
for arg in "$@"; do
    case "$arg" in
        --with-onefile) onefile=1 ;;
        --old-glibc) old_glibc=1 ;;
        *) echo "usage: $0 [--with-onefile] [--old-glibc]" >&2; exit 2 ;;
    esac
done

# --- --old-glibc: the same build inside a Debian 11 chroot -----------------------------------
# The frozen binary needs the glibc of the machine that built it (docs/frozen-binary.md), so
# building on Debian 11 (glibc 2.31) makes it run on hosts back to 2.31. Debian 11 has only
# Python 3.9 and the project needs 3.11, so CPython is built from source in the chroot
# (--enable-shared: PyInstaller bundles libpython). Everything lives in build/old-glibc/ and is
# reused by later runs; only the PyInstaller step repeats.
OLD_SUITE=bullseye
OLD_ROOT=build/old-glibc/root
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# pip in the chroot trusts what the host trusts (a TLS-intercepting egress proxy's CA, say)
in_chroot() { chroot "$OLD_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca.crt \
    ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} /bin/bash -euo pipefail -c "$1"; }

old_glibc_build() {
    [[ $(id -u) == 0 ]] || { echo "build-frozen: --old-glibc needs root (chroot)" >&2; exit 1; }
    local t0 src
    t0=$(date +%s)
    if [[ ! -x "$OLD_ROOT/usr/bin/apt-get" ]]; then
        command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
        debootstrap --variant=minbase "$OLD_SUITE" "$OLD_ROOT" "$MIRROR" >/dev/null
    fi
    cp /etc/resolv.conf "$OLD_ROOT/etc/resolv.conf"
    mkdir -p "$OLD_ROOT/etc/ssl/certs"
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$OLD_ROOT/etc/ssl/certs/host-ca.crt"
    mountpoint -q "$OLD_ROOT/proc" || mount -t proc proc "$OLD_ROOT/proc"
    trap 'umount "$OLD_ROOT/proc" 2>/dev/null || true' EXIT
    if [[ ! -x "$OLD_ROOT/opt/python/bin/python3.11" ]]; then
        in_chroot "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            build-essential ca-certificates xz-utils libssl-dev libffi-dev zlib1g-dev \
            libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev \
            iptables libnftables1 binutils >/dev/null"
        # CPython's source from Debian's own archive (bookworm's python3.11 orig tarball,
        # 3.11.2): the chroot's mirror is the only download site needed
        echo "deb-src $MIRROR bookworm main" > "$OLD_ROOT/etc/apt/sources.list.d/src.list"
        in_chroot "apt-get update -qq && mkdir -p /usr/src/py && cd /usr/src \
            && apt-get source -qq --download-only python3.11 >/dev/null \
            && tar xf python3.11_*.orig.tar.* -C py --strip-components=1 && cd py \
            && ./configure -q --prefix=/opt/python --enable-shared \
               LDFLAGS=-Wl,-rpath,/opt/python/lib >/dev/null \
            && make -s -j$(nproc) >/dev/null 2>&1 && make -s install >/dev/null 2>&1 \
            && /opt/python/bin/python3.11 -m venv /opt/venv"
    fi
    src="$OLD_ROOT/usr/src/app"
    rm -rf "$src" && mkdir -p "$src"
    cp -a pyproject.toml build.spec cni installer node_daemon admin companions "$src/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    in_chroot "cd /usr/src/app && /opt/venv/bin/pip install -q --disable-pip-version-check \
            . 'pyinstaller>=6.10' \
        && /opt/venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
            --distpath dist --workpath build build.spec"
    rm -rf dist/old-glibc && mkdir -p dist/old-glibc
    cp -a "$src/dist/istio-cni" "$src/dist/istio-cni-node" dist/old-glibc/
    echo "build-frozen: --old-glibc done in $(( $(date +%s) - t0 )) s"
    for path in dist/old-glibc/istio-cni/istio-cni dist/old-glibc/istio-cni-node/istio-cni-node; do
        printf '  %-48s %s total\n' "$path" "$(du -sh "$(dirname "$path")" | cut -f1)"
    done
}

if [[ ${old_glibc:-0} == 1 ]]; then
    old_glibc_build
    exit 0
fi
if [[ ! -x "$PYINSTALLER" ]]; then
    echo "build-frozen: $PYINSTALLER not found; run .venv/bin/pip install -e '.[dev]'" >&2
    exit 1
fi

start=$(date +%s)
ISTIO_CNI_ONEFILE=$onefile "$PYINSTALLER" --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build build.spec
[[ $onefile == 1 ]] || rm -f dist/istio-cni-onefile  # never leave a stale onefile behind

echo "build-frozen: done in $(( $(date +%s) - start )) s"
for path in dist/istio-cni/istio-cni dist/istio-cni-node/istio-cni-node dist/istio-cni-onefile; do
    [[ -e "$path" ]] || continue
    dir=$path
    [[ "$path" == *onefile ]] || dir=$(dirname "$path")
    printf '  %-40s %s total\n' "$path" "$(du -sh "$dir" | cut -f1)"
done
