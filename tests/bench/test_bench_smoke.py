"""Keeps the benchmarks (bench/) from rotting: every code path of `bench/run_all.py` with n=2.

No timing assertions (timings belong in the benchmarks): only that every table has numbers,
that the plugin's API usage is exactly 1 GET per redirected ADD and 0 per skipped ADD, and
that the daemon uses one watch. The plugin runs from source here (`python -m cni`) and a
`python -c` stands in for the frozen hello-world, so no PyInstaller build is needed; the
compiled yardstick is built with the machine's Go (bench/setup.sh).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from tests.bench.tools import require_bench_tools

if TYPE_CHECKING:
    from bench.common import Row, Table

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tables() -> dict[str, Table]:
    """One run of every benchmark at n=2; tables by title (without the parenthesised part)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, iptables")
    require_bench_tools()
    from bench import run_all
    from bench.common import leftover_netns, source_plugin_argv

    sizes = run_all.Sizes(iterations=2, warmup=0, interpreters=2, pods=20, churn_seconds=0.5,
                          idle_seconds=0.3, repairs=2, reinserts=2, concurrent=3, rounds=1,
                          served=4, agent_concurrent=3)
    before = set(leftover_netns())
    out = run_all.run(sizes, source_plugin_argv(), [sys.executable, "-c", "print('hello')"],
                      echo=False)
    assert set(leftover_netns()) <= before, "a benchmark left an icni-bench-* netns behind"
    return {t.title.split(" (")[0]: t for t in out}


def _row(table: Table, prefix: str) -> Row:
    return next(r for r in table.rows if r.name.startswith(prefix))


def test_every_table_has_numbers(tables: dict[str, Table]) -> None:
    assert len(tables) == 7, list(tables)
    for title, table in tables.items():
        assert table.rows, title
        assert "n/a" not in table.render()
    latency = tables["ADD / CHECK / DEL latency of the frozen plugin vs the compiled yardstick"]
    for name in ("redirected ADD, nft", "redirected ADD, legacy",
                 "redirected ADD, python-iptables", "skipped ADD", "CHECK, nft", "DEL, nft",
                 "compiled yardstick ADD, iptables-nft-restore",
                 "compiled yardstick ADD, iptables-legacy-restore",
                 "compiled yardstick ADD, excluded namespace", "stock tool: nsenter",
                 "bare interpreter", "frozen hello-world start"):
        row = _row(latency, name)
        assert row.n == 2 and float(row.median) > 0 and float(row.p99) > 0, row
    assert _row(latency, "redirected ADD, nft").ratio.endswith("x")
    assert float(_row(tables["Phase breakdown of a redirected ADD"], "apply").median) > 0


def test_api_load_counts_are_exact(tables: dict[str, Table]) -> None:
    api = tables["API load"]
    redirected = _row(api, "pod GETs per redirected ADD")
    skipped = _row(api, "pod GETs per skipped ADD")
    watches = _row(api, "daemon WATCH requests")
    assert (redirected.median, redirected.p99) == ("1", "1 / 1")  # median, min / max
    assert (skipped.median, skipped.p99) == ("0", "0 / 0")
    assert watches.median == "1"
    assert redirected.ok and skipped.ok and watches.ok


def test_daemon_and_concurrency_tables_report_success(tables: dict[str, Table]) -> None:
    assert float(_row(tables["Node daemon latencies"], "repair in place").median) > 0
    assert float(_row(tables["Node daemon latencies"], "installer re-insertion").median) > 0
    assert all(float(r.median) > 0 for r in tables["Node daemon footprint"].rows
               if not r.name.startswith("  growth"))  # RSS MiB
    for how in ("with no agent", "through the agent"):
        conc = next(t for title, t in tables.items() if f"concurrent ADDs {how}" in title)
        assert _row(conc, "ADDs succeeded").ok
    assert _row(conc, "ADDs served by the agent").ok  # through the agent: none fell back
    footprint = tables["Node daemon footprint"]
    assert float(_row(footprint, "after 4 served ADDs").median) > 0, footprint.render()
    assert _row(footprint, "  growth from served ADD").median.startswith(("+", "-"))
