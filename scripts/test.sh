#!/usr/bin/env bash
# Run the checks and the whole test suite, as root (the root tiers skip, with a reason, without).
# Exits non-zero on the first failing step.
#
# The frozen plugin is built once (plugin only, ~25 s): the frozen-binary tests use it, and then
# the whole CNI-protocol end-to-end suite runs a second time against it, so the binary that
# ships passes the same tests as the source. Set ISTIO_CNI_FROZEN to reuse an existing build.
#
# Every tool the tests run comes from scripts/setup.sh (kubectl and helm in .tools/bin, first on
# PATH here), and a test that skips for a reason outside tests/skip_allowlist.py fails the run
# (ISTIO_CNI_STRICT_SKIPS=1): a green here covers every test, on CI as on a developer's machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
export ISTIO_CNI_STRICT_SKIPS=1
export PYTHONHASHSEED=0  # the deterministic Hypothesis profiles draw the same examples everywhere
.venv/bin/ruff check .
.venv/bin/lint-imports
if [[ -z "${ISTIO_CNI_FROZEN:-}" ]]; then
    echo "test: building the frozen plugin (build/test-dist)" >&2
    ISTIO_CNI_PLUGIN_ONLY=1 .venv/bin/pyinstaller --noconfirm --log-level WARN \
        --distpath build/test-dist --workpath build/test-work build.spec
    export ISTIO_CNI_FROZEN="$PWD/build/test-dist/istio-cni/istio-cni"
fi
.venv/bin/python -m pytest -q "$@"
# The CNI-protocol e2e suite both ways (the node agent serving ADD/CHECK over cni.sock, and no
# agent: the plugin alone), from source and from the frozen binary that ships.
echo "test: the CNI-protocol e2e suite with the node agent serving" >&2
ISTIO_CNI_E2E_AGENT=1 .venv/bin/python -m pytest -q tests/e2e/test_plugin_chain.py \
    tests/e2e/test_plugin_chain_nftables.py tests/e2e/test_userns_pod.py \
    tests/e2e/test_adversarial_property.py
echo "test: the CNI-protocol e2e suite again, against the frozen plugin, both ways" >&2
ISTIO_CNI_BINARY="$ISTIO_CNI_FROZEN" .venv/bin/python -m pytest -q tests/e2e/test_plugin_chain.py \
    tests/e2e/test_agent_served.py tests/hardening/test_served_differential.py
ISTIO_CNI_BINARY="$ISTIO_CNI_FROZEN" ISTIO_CNI_E2E_AGENT=1 \
    .venv/bin/python -m pytest -q tests/e2e/test_plugin_chain.py tests/e2e/test_userns_pod.py
