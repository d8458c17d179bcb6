"""Two agents on one node (docs/reliability.md, 18.6): the second sees the first through the run
dir's lock, says so, and waits, not ready, leaving the first's sockets alone; it takes over once
the first is gone, however it went. Real agent processes (`istio-cni-node run`) on one node's
dirs; waits are bounded polls of conditions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_daemon.runlock import LOCK_NAME, RunDirLock
from testbed.agent import AgentProcess
from testbed.cleanup import Cleanup
from testbed.nodedirs import NodeDirs, has_entry, make_node_dirs
from testbed.wait import wait_for

pytestmark = pytest.mark.root
STARTED = ("another istio-cni agent", "istio-cni installed")


def node(tmp_path: Path) -> tuple[NodeDirs, dict[str, str]]:
    dirs = make_node_dirs(tmp_path)
    dirs.put("10-calico.conflist", "calico.conflist")
    return dirs, dirs.env(ISTIO_OWNED_CNI_CONFIG="true", UNINSTALL_ON_SHUTDOWN="false")


def inodes(run_dir: Path) -> tuple[int, int]:
    return os.stat(run_dir / "cni.sock").st_ino, os.stat(run_dir / "log.sock").st_ino


def started(agent: AgentProcess) -> str:
    """The line an agent logs once it has either installed or found another agent."""
    return agent.proc.wait_line(lambda ln: any(s in ln for s in STARTED), 60, "its start")


@pytest.mark.parametrize("first_goes", ["sigterm", "sigkill"])
def test_the_second_agent_waits_and_takes_over(tmp_path: Path, cleanup: Cleanup,
                                               first_goes: str):
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent chmods its run dir and installs into the node dirs")
    dirs, env = node(tmp_path)
    first = AgentProcess(cleanup, "first", env)
    wait_for(lambda: first.readyz()[0] == 200, 60, "the first agent ready")
    sockets = inodes(dirs.run_dir)

    second = AgentProcess(cleanup, "second", env)
    line = started(second)
    assert "another istio-cni agent" in line, second.log()[-3000:]
    status, body = second.readyz()
    assert status == 503
    assert f"pid {first.proc.pid}" in body and LOCK_NAME in body, body
    # the first agent's sockets are untouched, it stays ready, and so does the node
    assert inodes(dirs.run_dir) == sockets
    assert first.readyz() == (200, "ok\n")
    assert "recreated it" not in first.log()
    assert second.readyz()[0] == 503 and second.alive()

    if first_goes == "sigterm":
        assert first.stop() == 0
    else:
        os.killpg(first.proc.pid, signal.SIGKILL)  # the kernel drops its lock with it
        first.proc.popen.wait(timeout=30)
    second.saw("the other agent is gone")
    # ready includes: both sockets in the run dir are the second agent's own
    wait_for(lambda: second.readyz()[0] == 200, 60, "the second agent ready")
    assert has_entry(dirs.net_dir / "02-istio-cni.conflist")
    assert second.stop() == 0


def test_the_lock(tmp_path: Path):
    """The lock itself: one holder, the waiter told its pid, nothing stale after a holder's
    death or a file left behind, and the file gone after a clean release."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text("4242\n")  # left by an agent long gone: no holder
    first, second = RunDirLock(run_dir), RunDirLock(run_dir)
    assert first.acquire() and first.held
    assert not second.acquire() and second.holder() == str(os.getpid())
    first.release()
    assert not (run_dir / LOCK_NAME).exists()
    assert second.acquire()
    second.release()
    # a holder killed outright leaves a file and no lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from node_daemon.runlock import RunDirLock; "
         "assert RunDirLock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
         "sys.stdin.read()", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not first.acquire() and first.holder() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (run_dir / LOCK_NAME).exists() and first.acquire()
    first.release()
