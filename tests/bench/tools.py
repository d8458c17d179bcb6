"""What the bench smoke tests need on the machine, checked up front: a missing tool fails the
test with the command that installs it, never skips it (a green CI must run every bench path).
"""

from __future__ import annotations

import shutil

import pytest

BENCH_TOOLS = {
    "go": "bench/setup.sh (Debian's golang-go: builds the compiled yardstick)",
    "nsenter": "bench/setup.sh (util-linux: the stock-tool rows)",
    "openssl": "bench/setup.sh (the API stand-in's TLS certificates)",
    "iptables-nft-restore": "scripts/setup.sh (iptables)",
}


def require_bench_tools(*extra: str) -> None:
    """Fail, naming the setup step, unless every tool the pod-start benches use is on PATH."""
    missing = [f"{tool} (from {BENCH_TOOLS.get(tool, 'scripts/setup.sh')})"
               for tool in (*BENCH_TOOLS, *extra) if shutil.which(tool) is None]
    if missing:
        pytest.fail("the benchmarks need " + ", ".join(missing), pytrace=False)
