"""Suite-wide fixtures and gates: the Kubernetes API stand-in (from `testbed`), the root tier's
stated skips, the Hypothesis profiles (loaded here, before any test module is imported, and
checked on every collected property: `tests/hypothesis_profiles.py`) and the skip allowlist of
the test command (`tests/skip_allowlist.py`).

`kube_api` / `kube_api_tls` are function-scoped: each test gets fresh state and the server is
stopped after it. The TLS material is made once per session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from testbed.cleanup import Cleanup
from testbed.kubeapi import KubeApiServer, TLSMaterial, make_tls_material, openssl_available
from tests import hypothesis_profiles
from tests.skip_allowlist import STRICT, SkipLedger

PROFILE = hypothesis_profiles.load()  # at import: before the first test module is collected
_SKIPS = SkipLedger()


def pytest_configure(config: pytest.Config) -> None:
    """Under a deterministic profile the interpreter's hash seed is fixed too: Hypothesis's
    generation depends on it (its mutation step goes through hashed labels), so with a random
    seed the same derandomized property drew different examples in every process. A pytest run
    started without PYTHONHASHSEED is started again, the same command with the seed 0, before
    anything is collected; one started any other way is refused with the fix."""
    reason = hypothesis_profiles.hash_seed_problem(PROFILE, os.environ, sys.flags)
    if not reason:
        return
    argv = list(sys.orig_argv)
    if not hypothesis_profiles.is_pytest_command(argv):
        raise pytest.UsageError(f"{reason}: run with PYTHONHASHSEED=0")
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # the new process writes to the real stdout/stderr
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {**os.environ, "PYTHONHASHSEED": "0"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every property runs under the suite's deterministic profile (or, by hand, explores);
    root-tier tests skip with a reason when not root (CI runs as root, so they run there)."""
    unseeded = sorted({f"{item.nodeid.split('[')[0]}: {'; '.join(reasons)}" for item in items
                       if (reasons := hypothesis_profiles.check_item(item, PROFILE))})
    if PROFILE in hypothesis_profiles.DETERMINISTIC:
        unseeded += [found for path in sorted({str(item.path) for item in items})
                     for found in hypothesis_profiles.source_overrides(path)]
    if unseeded:
        raise pytest.UsageError(
            f"Hypothesis tests that would not run the same way twice under the {PROFILE!r} "
            "profile (tests/hypothesis_profiles.py; remove the setting that overrides it):\n  "
            + "\n  ".join(unseeded))
    if PROFILE == hypothesis_profiles.EXPLORE:
        for item in items:
            hypothesis_profiles.explore_item(item)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces and iptables")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _SKIPS.record(report.nodeid, report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.record(report.nodeid, report.longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under the test command (ISTIO_CNI_STRICT_SKIPS=1) a skip outside the allowlist fails
    the run, even when every test that ran passed."""
    if STRICT and _SKIPS.unexpected and exitstatus in (pytest.ExitCode.OK,
                                                       pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    if not _SKIPS.unexpected:
        return
    say = terminalreporter.write_line
    terminalreporter.section("skips outside tests/skip_allowlist.py", sep="=", red=STRICT)
    for nodeid, reason in _SKIPS.unexpected:
        say(f"{nodeid}: {reason}")
    say(f"{len(_SKIPS.unexpected)} unexpected skip(s), {_SKIPS.expected} allowed"
        + (": the test command fails (ISTIO_CNI_STRICT_SKIPS=1)" if STRICT else ""))


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    """A plain-HTTP API server with fresh state, stopped after the test."""
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="session")
def kube_api_tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    if not openssl_available():
        pytest.skip("the openssl CLI is needed to make test TLS certificates")
    return make_tls_material(tmp_path_factory.mktemp("kubeapi-tls"))


@pytest.fixture
def kube_api_tls(kube_api_tls_material: TLSMaterial) -> Iterator[KubeApiServer]:
    """An HTTPS API server (certificate for 127.0.0.1/::1/localhost), stopped after the test."""
    with KubeApiServer(tls=kube_api_tls_material) as server:
        yield server


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    """The test's undo stack (testbed's one cleanup convention): what a test or fixture creates
    is registered on it at once and removed after the test, newest first."""
    with Cleanup() as undo:
        yield undo
