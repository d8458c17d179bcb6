#!/usr/bin/env bash
# Build the istio-cni-node image from the Containerfile with buildah, with no container registry:
# the Debian 12 base is made here with debootstrap from the Debian mirror apt uses.
#
#   scripts/build-image.sh                 # -> localhost/istio-cni-node:<version> (buildah storage)
#   scripts/build-image.sh --archive F.tar # also write it as an OCI archive (to load into a node's
#                                          # containerd: ctr -n k8s.io images import F.tar)
#
# Needs root and Debian's buildah + debootstrap (installed when missing). Not run by CI. First run
# about 5-10 min (debootstrap, the build stage's apt + pip, PyInstaller); later runs reuse the
# base image and the cached layers.
#   DEBIAN_MIRROR   the mirror for debootstrap (default: the first one in apt's sources)
#   IMAGE           the tag (default localhost/istio-cni-node:<pyproject version>)
set -euo pipefail
cd "$(dirname "$0")/.."

archive=""
while (($#)); do
    case "$1" in
        --archive) archive="${2:?--archive needs a file}"; shift 2 ;;
        *) echo "usage: $0 [--archive FILE.tar]" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "build-image: needs root (debootstrap, buildah)" >&2; exit 1; }

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE="${IMAGE:-localhost/istio-cni-node:${version:-dev}}"
BASE=localhost/istio-cni-base:bookworm
WORK=build/image
# chroot isolation and vfs storage work inside an unprivileged-looking container too (no
# user namespaces, no overlayfs-on-overlayfs); both are fine on a normal host as well.
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    # the first non-security mirror of apt's sources (one-line or deb822 format), no comments
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' \
        | grep -oE 'https?://[^ ]+' | grep -v security | head -1 || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

start=$(date +%s)
# --- the base: debootstrap minbase bookworm, imported as an image --------------------------
if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "build-image: debootstrap bookworm from $mirror" >&2
    rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >/dev/null
    # an image's apt must find the same mirror; drop what debootstrap leaves behind
    echo "deb $mirror bookworm main" > "$WORK/rootfs/etc/apt/sources.list"
    rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
    tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "$ctr"
    "${BUILDAH[@]}" commit -q "$ctr" "$BASE" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    rm -rf "$WORK/rootfs" "$WORK/rootfs.tar"
fi

# --- a clean build context: only what the Containerfile copies -----------------------------
ctx="$WORK/context"
rm -rf "$ctx" && mkdir -p "$ctx/scripts"
cp -a Containerfile pyproject.toml README.md build.spec cni installer node_daemon admin companions "$ctx/"
cp -a scripts/build-frozen.sh "$ctx/scripts/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +

# pip inside the build trusts what this host trusts (e.g. a TLS-intercepting proxy's CA)
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
ca_args=()
if [[ -f "$ca" ]]; then
    ca_args=(--volume "$ca:/etc/ssl/certs/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi

"${BUILDAH[@]}" bud --isolation chroot --layers --build-arg "BASE=$BASE" "${ca_args[@]}" \
    -f "$ctx/Containerfile" -t "$IMAGE" "$ctx"

if [[ -n "$archive" ]]; then
    rm -f "$archive"
    "${BUILDAH[@]}" push "$IMAGE" "oci-archive:$archive:$IMAGE"
fi
echo "build-image: $IMAGE in $(( $(date +%s) - start )) s" >&2
"${BUILDAH[@]}" images "$IMAGE"
