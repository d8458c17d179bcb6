"""A failed install or uninstall leaves a node that can still create pods.

The kubelet execs `istio-cni` for as long as the config it loads names it, so every multi-step
change is ordered: the binary and kubeconfig are in place before our entry goes in, and our
entry is out of the loaded config before they go. A write error stops at the first failure.
Faults come from a real full tmpfs as net.d, and, for every step, from an OSError injected at
the os call (the one boundary every installer write goes through).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from admin.cli import cli
from installer import Installer, InstallError
from testbed.nodedirs import NodeDirs, loaded_plugins, make_node_dirs, node_works


@pytest.fixture
def full_net_dir(tmp_path: Path) -> Iterator[NodeDirs]:
    """A node whose net.d is a 256 KiB tmpfs (filled up by the test), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    dirs = make_node_dirs(tmp_path)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                           str(dirs.net_dir)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield dirs
    finally:
        subprocess.run(["umount", str(dirs.net_dir)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem is full (ENOSPC); returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_uninstall_on_a_full_net_d_stops_with_the_node_working(full_net_dir: NodeDirs):
    dirs = full_net_dir
    path = dirs.put("10-calico.conflist", "calico.conflist")
    original = path.read_bytes()
    installer = Installer(dirs.config())
    installer.install()
    filler = fill(dirs.net_dir)

    with pytest.raises(InstallError, match="uninstall incomplete.*CNI config entry"):
        installer.uninstall()
    assert loaded_plugins(dirs.net_dir)[-1] == "istio-cni"
    assert (dirs.bin_dst / "istio-cni").is_file()  # still there: the entry still names it
    assert (dirs.run_dir / "istio-cni-kubeconfig").is_file()
    assert node_works(dirs)

    filler.unlink()
    installer.uninstall()  # running it again finishes the job
    assert path.read_bytes() == original
    assert not (dirs.bin_dst / "istio-cni").exists()
    assert not (dirs.run_dir / "istio-cni-kubeconfig").exists()


def test_the_admin_uninstall_on_a_full_net_d_fails_and_keeps_the_plugin(full_net_dir: NodeDirs):
    dirs = full_net_dir
    dirs.put("10-bridge.conf", "bridge.conf")  # converted: the uninstall writes the .conf back
    result = CliRunner().invoke(cli, ["install"], env=dirs.env())
    assert result.exit_code == 0, result.output
    fill(dirs.net_dir)
    result = CliRunner().invoke(cli, ["uninstall"], env=dirs.env())
    assert result.exit_code == 1
    assert "uninstall incomplete" in result.output and "Traceback" not in result.output
    assert loaded_plugins(dirs.net_dir) == ["bridge", "istio-cni"] and node_works(dirs)


WRITES = ("write", "replace", "rename", "unlink", "symlink", "mkdir", "rmdir", "fchmod")
ERRNOS = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES)


class Fault:
    """Makes the `at`-th write-like os call (counting from 0) fail with `code`; `at=None` only
    counts them. `fired` says whether the fault was injected (the run reached call `at`)."""

    def __init__(self, mocker, at: int | None, code: int) -> None:  # noqa: ANN001 - pytest-mock
        self.at, self.code, self.calls, self.fired = at, code, 0, False
        for name in WRITES:
            mocker.patch.object(os, name, self._wrap(getattr(os, name)))
        real_open = os.open

        def open_(path, flags, *args, **kwargs):  # noqa: ANN001, ANN202 - os.open's signature
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self._tick(path)
            return real_open(path, flags, *args, **kwargs)

        mocker.patch.object(os, "open", open_)

    def _tick(self, what: object) -> None:
        self.calls += 1
        if self.calls - 1 == self.at:
            self.fired = True
            raise OSError(self.code, os.strerror(self.code), str(what))

    def _wrap(self, real):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._tick(args[0] if args else "")
            return real(*args, **kwargs)
        return call


SOURCES = {"10-calico.conflist": "calico.conflist", "10-net.conf": "bridge.conf",
           "10-flannel.json": "flannel.json"}


def _run(mocker, tmp_path_factory, name: str, phase: str,  # noqa: ANN001
         at: int | None, code: int) -> tuple[NodeDirs, bytes, Fault]:
    """`phase` (install, or uninstall after a clean install) on a fresh node with the `at`-th
    write failing; an InstallError (the clear refusal) is the expected way to fail."""
    dirs = make_node_dirs(tmp_path_factory.mktemp("node"))
    original = dirs.put(name, SOURCES[name]).read_bytes()
    installer = Installer(dirs.config())
    if phase == "uninstall":
        installer.install()
    fault = Fault(mocker, at, code)
    try:
        (installer.install if phase == "install" else installer.uninstall)()
    except InstallError:
        pass
    finally:
        mocker.stopall()
    return dirs, original, fault


@pytest.mark.parametrize("phase", ["install", "uninstall"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_write_error_at_every_step_leaves_the_node_working(tmp_path_factory, mocker,
                                                              name: str, phase: str):
    """Every write-like call of the phase fails once, in turn (the errnos in rotation): first a
    clean run counts the calls, then each index is injected, and the fault is seen to fire.
    (A property that drew the index from 0-40 injected nothing in 35 of its 60 examples.)"""
    writes = _run(mocker, tmp_path_factory, name, phase, None, 0)[2].calls
    assert writes >= (8 if phase == "install" else 4), writes
    for at in range(writes):
        code = ERRNOS[at % len(ERRNOS)]
        dirs, original, fault = _run(mocker, tmp_path_factory, name, phase, at, code)
        where = f"{phase} failing at write #{at} of {writes} ({errno.errorcode[code]})"
        assert fault.fired, where
        assert node_works(dirs), where
        Installer(dirs.config()).uninstall()  # and a clean retry converges to the original
        assert dirs.names() == [name] and (dirs.net_dir / name).read_bytes() == original, where
        assert not (dirs.bin_dst / "istio-cni").exists(), where


def test_the_agents_shutdown_uninstall_on_a_full_net_d_keeps_the_node_working(
        full_net_dir: NodeDirs):
    """`istio-cni-node run` on SIGTERM: the uninstall fails, the agent says so and exits, and
    the node still creates pods. Its metrics counted the one install once."""
    import threading
    import urllib.request

    from node_daemon.agent import Agent
    from node_daemon.config import DaemonConfig, RepairConfig

    dirs = full_net_dir
    dirs.put("10-calico.conflist", "calico.conflist")
    cfg = DaemonConfig(repair=RepairConfig(node_name="node-a", enabled=False),
                       run_dir=dirs.run_dir, health_port=0, monitoring_port=0,
                       bind_address="127.0.0.1")
    agent = Agent(cfg, Installer(dirs.config()), None)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run(stop)), daemon=True)
    thread.start()
    try:
        assert agent.started.wait(30), "the agent did not start"
        assert agent.metrics_http is not None
        url = f"http://127.0.0.1:{agent.metrics_http.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local
            metrics = resp.read().decode()
        assert 'istio_cni_installs_total{result="SUCCESS"} 1.0' in metrics
        fill(dirs.net_dir)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]
    assert loaded_plugins(dirs.net_dir)[-1] == "istio-cni" and node_works(dirs)
