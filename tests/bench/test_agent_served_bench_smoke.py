"""Keeps `bench/agent_served.py` from rotting: every variant at n=2 with the plugin from source,
the compiled yardstick built with the machine's Go (bench/setup.sh). No timing assertions: only
that every row has numbers, the GET counts are what each path promises (0 via the agent, in
both modes, 1 without, 1 for the yardstick), the agent's phases were read per served ADD, and
no netns is left behind."""

from __future__ import annotations

import os

import pytest

from tests.bench.tools import require_bench_tools

pytestmark = pytest.mark.root


def test_every_variant_has_numbers_and_the_agent_needs_no_get() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, iptables")
    require_bench_tools()
    from bench import agent_served
    from bench.common import leftover_netns, source_plugin_argv

    before = set(leftover_netns())
    latency, start, gets, phases = agent_served.run(source_plugin_argv(), n=2, warmup=0)
    assert set(leftover_netns()) <= before, "the benchmark left an icni-bench-* netns behind"
    for table in (latency, start):
        for row in table.rows:
            assert row.n == 2 and float(row.median) > 0, table.render()
    assert {row.name: row.median for row in gets.rows} == {
        "ADD via the agent": "0", "ADD via the agent, nftables mode": "0", "ADD, no agent": "1",
        "compiled yardstick": "1"}
    assert latency.rows[0].name.startswith("compiled yardstick, meshed pod")
    assert all(row.ratio.endswith("x") for row in latency.rows[2:]), latency.render()
    assert all(row.ratio.endswith("x") for row in start.rows[1:]), start.render()
    assert all(row.n >= 2 for row in phases.rows), phases.render()
