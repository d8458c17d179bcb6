"""Keeps `bench/nftables_latency.py` from rotting: every variant at n=2 with the plugin from
source (no PyInstaller build) and the compiled yardstick. No timing assertions: only that every
row has numbers, that each ADD (ours and the yardstick's) left its mode's rules (the benchmark
checks that itself and raises), and that no netns is left behind."""

from __future__ import annotations

import os

import pytest

from cni import nft_exec
from tests.bench.tools import require_bench_tools

pytestmark = pytest.mark.root


def test_every_variant_has_numbers() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, nftables")
    require_bench_tools("nft")
    assert nft_exec.LibNftables.load() is not None, "libnftables (scripts/setup.sh) is needed"
    from bench import nftables_latency as nl
    from bench.common import leftover_netns, source_plugin_argv

    before = set(leftover_netns())
    result = nl.measure(source_plugin_argv(), n=2, warmup=0)
    assert set(leftover_netns()) <= before, "the benchmark left an icni-bench-* netns behind"
    assert result.iterations == 2
    latency, phases = nl.tables(result)
    names = [row.name for row in latency.rows]
    for mode in nl.MODES:
        assert f"redirected ADD, {mode}" in names, names
    for row in latency.rows:
        assert row.n == 2 and float(row.median) > 0, row
    for mode in nl.MODES:
        assert f"compiled yardstick ADD, {nl.TOOL_OF[mode]}" in names, names
    assert all(row.ratio.endswith("x") for row in latency.rows
               if not row.name.startswith("compiled yardstick")), latency.render()
    assert {row.name.split(",")[0] for row in phases.rows} == set(nl.PHASES)
    assert all(row.n == 2 for row in phases.rows), phases.render()
