#!/usr/bin/env bash
# Build the istio-cni-node image from the Containerfile with buildah, with no container registry:
# the Debian 12 base is made here with debootstrap from the Debian mirror apt uses.
#
#   scripts/build-image.sh                 # -> localhost/istio-cni-node:<version> (buildah storage)
#   scripts/build-image.sh --archive F.tar # also write it as an OCI archive (to load into a node's
#                                          # containerd: ctr -n k8s.io images import F.tar)
#   scripts/build-image.sh --archive F.tar --clean
#                                          # ...and leave nothing in buildah's storage: no layer
#                                          # cache, and the image and the base removed once
#                                          # archived (the next build starts from scratch)
#   scripts/build-image.sh --print-image   # print the tag it would build, and exit
#
# buildah keeps what it builds in /var/lib/containers/storage: with the vfs driver every layer
# is a full copy, about 11 GB after one build with the layer cache. Without --clean that stays
# there for the next build (remove it with: buildah --storage-driver vfs rmi --all).
#
# Needs root and Debian's buildah + debootstrap (installed when missing). Not run by CI. First run
# about 5-10 min (debootstrap, the build stage's apt + pip, PyInstaller); later runs reuse the
# base image and the cached layers.
#   DEBIAN_MIRROR   the mirror for debootstrap (default: the first one in apt's sources)
#   IMAGE           the tag (default localhost/istio-cni-node:<version>, the version pyproject.toml
#                   takes from cni.__version__, the same tag daemonset.yaml deploys)
set -euo pipefail
cd "$(dirname "$0")/.."

# The version as pyproject.toml reads it: `version = { attr = "cni.__version__" }`.
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' cni/__init__.py)
[[ -n "$version" ]] || { echo "build-image: no __version__ in cni/__init__.py" >&2; exit 1; }
IMAGE="${IMAGE:-localhost/istio-cni-node:$version}"

archive=""
clean=""
while (($#)); do
    case "$1" in
        --archive) archive="${2:?--archive needs a file}"; shift 2 ;;
        --clean) clean=1; shift ;;
        --print-image) echo "$IMAGE"; exit 0 ;;
        *) echo "usage: $0 [--archive FILE.tar [--clean]] [--print-image]" >&2; exit 2 ;;
    esac
done
if [[ -n "$clean" && -z "$archive" ]]; then
    echo "build-image: --clean removes the image once built: use it with --archive" >&2
    exit 2
fi
[[ $(id -u) == 0 ]] || { echo "build-image: needs root (debootstrap, buildah)" >&2; exit 1; }

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

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
base_made=""
if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    base_made=1
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

# --layers keeps each step's result as a cached image for the next build; --clean keeps none
layers=(--layers)
[[ -n "$clean" ]] && layers=(--layers=false --rm --force-rm)
"${BUILDAH[@]}" bud --isolation chroot "${layers[@]}" --build-arg "BASE=$BASE" "${ca_args[@]}" \
    -f "$ctx/Containerfile" -t "$IMAGE" "$ctx"

if [[ -n "$archive" ]]; then
    rm -f "$archive"
    "${BUILDAH[@]}" push "$IMAGE" "oci-archive:$archive:$IMAGE"
fi
echo "build-image: $IMAGE in $(( $(date +%s) - start )) s" >&2
if [[ -n "$clean" ]]; then
    # what this run put in buildah's storage: the image, and the base if it made it
    "${BUILDAH[@]}" rmi "$IMAGE" >/dev/null
    [[ -n "$base_made" ]] && "${BUILDAH[@]}" rmi "$BASE" >/dev/null
    rm -rf "$WORK"
    echo "build-image: $archive written; removed from buildah's storage what this run made" >&2
else
    "${BUILDAH[@]}" images "$IMAGE"
fi
