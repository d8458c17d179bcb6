"""The test command fails on a skip outside tests/skip_allowlist.py (ISTIO_CNI_STRICT_SKIPS=1).

Run for real: pytest in a subprocess on a small module, with the suite's root conftest as a
plugin, so what is checked is the hook the test command runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.skip_allowlist import ALLOWED, allowed

REPO = Path(__file__).resolve().parents[1]
MODULE = """
    import pytest

    def test_runs():
        pass

    def test_needs_a_tool():
        pytest.skip("kubectl is not installed")

    @pytest.mark.skip(reason="tests the in-process path; the agent serves here")
    def test_by_design():
        pass
"""


def run(tmp_path: Path, source: str, strict: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_module.py").write_text(textwrap.dedent(source))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if strict:
        env["ISTIO_CNI_STRICT_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path),
         str(tmp_path / "test_module.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_skip_outside_the_allowlist_fails_the_test_command(tmp_path: Path) -> None:
    proc = run(tmp_path, MODULE, strict=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped" in proc.stdout
    assert "test_module.py::test_needs_a_tool: kubectl is not installed" in proc.stdout
    assert "test_by_design" not in proc.stdout.split("skips outside")[1]
    assert "1 unexpected skip(s), 1 allowed: the test command fails" in proc.stdout


def test_without_the_test_command_a_skip_is_reported_and_passes(tmp_path: Path) -> None:
    proc = run(tmp_path, MODULE, strict=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_module.py::test_needs_a_tool: kubectl is not installed" in proc.stdout


def test_only_allowed_skips_pass_the_test_command(tmp_path: Path) -> None:
    proc = run(tmp_path, MODULE.replace('pytest.skip("kubectl is not installed")', "pass"),
               strict=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skips outside" not in proc.stdout


def test_a_module_skipped_at_import_counts_too(tmp_path: Path) -> None:
    proc = run(tmp_path, """
        import pytest
        pytest.importorskip("no_such_module_here", reason="no_such_module_here is missing")

        def test_never():
            pass
    """, strict=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no_such_module_here is missing" in proc.stdout.split("skips outside")[1]


@pytest.mark.parametrize("reason", ["needs root: real network namespaces and iptables",
                                    "kubectl is not installed",
                                    "the openssl CLI is needed to make test TLS certificates",
                                    "no host xtables lock file on this machine",
                                    "needs curl"])
def test_a_missing_tool_or_privilege_is_never_allowed(reason: str) -> None:
    assert not allowed(reason)


def test_the_allowlist_stays_short_and_says_why() -> None:
    assert len(ALLOWED) <= 5
    assert all(len(a.why) > 40 for a in ALLOWED)
