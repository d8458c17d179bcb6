"""kill -9 at every point: the primary CNI config is never truncated, missing or lost.

A real child process (crash_child.py) runs install or uninstall and SIGKILLs itself before its
Nth write/fsync/rename/unlink, for every N until it completes. After each kill, the file the
runtime would load is either the original, byte for byte, or exactly our edit of it; and a
fresh installer (a restarted pod) recovers to a byte-exact original on uninstall. A second test
kills a child looping install/uninstall at random moments. The last test does the same for our
own conflist, also while taking over from a chained edit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from installer import Installer
from installer.conflist import chained_entry, insert_plugin, istio_entries
from installer.discovery import check_config, first_valid, loaded_config
from testbed.nodedirs import NodeDirs, node_works

CHILD = str(Path(__file__).with_name("crash_child.py"))
MAX_OPS = 80


def run_child(node_dirs: NodeDirs, action: str, crash_at: int) -> int:
    proc = subprocess.run([sys.executable, CHILD, action, str(crash_at)],
                          env={**os.environ, **node_dirs.env()}, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
    return proc.returncode


def assert_primary_intact(node_dirs: NodeDirs, original: bytes) -> None:
    name = first_valid(node_dirs.net_dir)
    assert name is not None, f"no loadable CNI config left: {node_dirs.names()}"
    path = node_dirs.net_dir / name
    assert check_config(path) is None
    data = path.read_bytes()
    if data == original:
        return
    entry = chained_entry(Installer(node_dirs.config()).entry())
    assert istio_entries(data.decode()), f"{name} changed but has no istio entry"
    assert data.decode() == insert_plugin(original.decode(), entry), f"{name} is not our edit"


def assert_exact_restore(node_dirs: NodeDirs, name: str, original: bytes) -> None:
    Installer(node_dirs.config()).uninstall()
    assert node_dirs.names() == [name]
    assert (node_dirs.net_dir / name).read_bytes() == original


def fresh(node_dirs: NodeDirs, name: str, source: str) -> bytes:
    for entry in os.listdir(node_dirs.net_dir):
        os.unlink(node_dirs.net_dir / entry)
    return node_dirs.put(name, source).read_bytes()


@pytest.mark.parametrize("name, source", [("10-bridge.conf", "bridge.conf"),
                                          ("10-calico.conflist", "calico.conflist")])
def test_kill_at_every_step_of_install_and_uninstall(node_dirs: NodeDirs, name: str,
                                                     source: str):
    kills = {"install": 0, "uninstall": 0}
    for action in ("install", "uninstall"):
        for crash_at in range(1, MAX_OPS):
            original = fresh(node_dirs, name, source)
            if action == "uninstall":
                Installer(node_dirs.config()).install()
            if run_child(node_dirs, action, crash_at) == 0:
                break  # ran to completion: every earlier step has been a kill point
            kills[action] += 1
            assert_primary_intact(node_dirs, original)
            if crash_at % 2:  # recovery by a restarted agent: install again, then uninstall
                Installer(node_dirs.config()).install()
                assert_primary_intact(node_dirs, original)
            assert_exact_restore(node_dirs, name, original)
        else:
            pytest.fail(f"{action} did not complete within {MAX_OPS} file operations")
    assert kills["install"] >= 8 and kills["uninstall"] >= 4, kills


def test_kill_at_random_moments_of_an_install_uninstall_loop(node_dirs: NodeDirs):
    """Six SIGKILLs from outside, each once the looping child has done a seeded-random number
    of net.d operations (it reports each one): the kill lands inside the loop, after that
    operation, wherever the child then is (not at an operation boundary it chose). A kill
    timed by the clock alone could land before the loop started on a loaded machine."""
    rng = random.Random(int(os.environ.get("KILL9_SEED", "9")))
    original = fresh(node_dirs, "10-net.conf", "bridge.conf")
    landed = []
    for _ in range(6):
        target = rng.randint(1, 60)  # about three install/uninstall cycles
        proc = subprocess.Popen([sys.executable, CHILD, "loop", "0"],
                                env={**os.environ, **node_dirs.env()},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            done = _wait_for_ops(proc, target)
            proc.kill()
            proc.wait(timeout=30)
            done = max([done, *(int(n) for n in proc.stdout.read().split())])
        finally:
            proc.kill()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        assert done >= target, (done, target)
        landed.append(done)
        assert_primary_intact(node_dirs, original)
    assert len(set(landed)) >= 3, landed  # at different points of the loop
    assert_exact_restore(node_dirs, "10-net.conf", original)


def _wait_for_ops(proc: subprocess.Popen, target: int, timeout: float = 60) -> int:
    """Read the child's reports until it has done `target` net.d operations (a generous
    deadline: the child's start and loop may be slow on a loaded machine)."""
    found: list[int] = [0]

    def read() -> None:
        for line in proc.stdout:
            found[0] = int(line)
            if found[0] >= target:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found[0] >= target, f"the child did {found[0]} of {target} operations in {timeout} s"
    return found[0]


# --- our own conflist (ISTIO_OWNED_CNI_CONFIG=true) ------------------------------------------

OWNED = {"ISTIO_OWNED_CNI_CONFIG": "true"}


def run_owned_child(node_dirs: NodeDirs, action: str, crash_at: int) -> int:
    proc = subprocess.run([sys.executable, CHILD, action, str(crash_at)],
                          env={**os.environ, **node_dirs.env(**OWNED)}, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
    return proc.returncode


def assert_node_works(node_dirs: NodeDirs, original: bytes) -> None:
    """The config the runtime loads is the primary's network, byte for byte, or exactly that
    network with our entry appended (ours, or the primary still edited in chained mode); a
    config naming istio-cni only while its binary and kubeconfig are there."""
    name = loaded_config(node_dirs.net_dir)
    assert name is not None, f"no loadable CNI config left: {node_dirs.names()}"
    data = (node_dirs.net_dir / name).read_bytes()
    entry = chained_entry(Installer(node_dirs.config()).entry())
    assert data == original or data.decode() == insert_plugin(original.decode(), entry), \
        f"{name} is neither the primary's network nor that network with our entry"
    assert node_works(node_dirs), f"{name} names istio-cni without its binary or kubeconfig"
    assert sum(1 for n in node_dirs.names()
               if n.endswith(".conflist") and istio_entries((node_dirs.net_dir / n)
                                                            .read_bytes().decode())
               and (node_dirs.net_dir / n).read_bytes() != data) == 0, \
        f"another file names istio-cni with a different network: {node_dirs.names()}"


@pytest.mark.parametrize("migrate", [False, True], ids=["owned", "chained-to-owned"])
def test_owned_kill_at_every_step(node_dirs: NodeDirs, migrate: bool):
    name, source = "10-bridge.conf", "bridge.conf"
    kills = {"install": 0, "uninstall": 0}
    for action in ("install", "uninstall"):
        for crash_at in range(1, MAX_OPS):
            original = fresh(node_dirs, name, source)
            if migrate:
                Installer(node_dirs.config()).install()  # chained edit first
            if action == "uninstall":
                Installer(node_dirs.config(owned_config=True)).install()
            if run_owned_child(node_dirs, action, crash_at) == 0:
                break
            kills[action] += 1
            assert_node_works(node_dirs, original)
            if crash_at % 2:  # a restarted agent installs again, and cleans up after the kill
                Installer(node_dirs.config(owned_config=True)).install()
                assert_node_works(node_dirs, original)
                assert (node_dirs.net_dir / name).read_bytes() == original
                assert node_dirs.names() == sorted(["02-istio-cni.conflist", name])
            Installer(node_dirs.config(owned_config=True)).uninstall()
            assert node_dirs.names() == [name]
            assert (node_dirs.net_dir / name).read_bytes() == original
        else:
            pytest.fail(f"{action} did not complete within {MAX_OPS} file operations")
    assert kills["install"] >= (10 if migrate else 4) and kills["uninstall"] >= 2, kills
