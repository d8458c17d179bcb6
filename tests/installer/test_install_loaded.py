"""Ready means the runtime loads our entry (docs/reliability.md, 18.1): readiness is computed from
the file libcni would load (the first valid one in byte order), not from the file we wrote, and
names the file that wins when it is not ours or does not chain istio-cni. Real files, the watch
loop running; waits are bounded polls of conditions."""

from __future__ import annotations

from pathlib import Path

import pytest

from installer import Installer
from installer.discovery import loaded_config
from node_daemon.agent import Agent
from node_daemon.config import DaemonConfig, RepairConfig
from testbed.nodedirs import NodeDirs, has_entry, loaded_plugins, watching
from testbed.wait import wait_for

OURS = "02-istio-cni.conflist"
KUBE_OVN = """{"cniVersion": "0.3.1", "name": "kube-ovn", "plugins": [
  {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock"},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
"""


def leftover(node_dirs: NodeDirs, name: str = "01-kube-ovn.conflist",
             text: str = KUBE_OVN) -> Path:
    """A valid config an earlier CNI left behind, sorting before everything of ours."""
    return node_dirs.put(name, text=text)


@pytest.mark.parametrize("owned", [False, True], ids=["chained", "owned"])
def test_a_leftover_config_sorting_first_means_not_ready_and_names_it(node_dirs: NodeDirs,
                                                                      owned: bool):
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    early = leftover(node_dirs)
    installer = Installer(node_dirs.config(cni_conf_name="10-calico.conflist",
                                           owned_config=owned))
    installer.install()
    ours = node_dirs.net_dir / OURS if owned else primary
    assert has_entry(ours)  # our file is in place ...
    assert loaded_config(node_dirs.net_dir) == early.name  # ... but libcni loads this one
    assert "istio-cni" not in loaded_plugins(node_dirs.net_dir)
    assert not installer.ready
    why = installer.not_loaded
    assert str(early) in why and "does not chain istio-cni" in why
    assert ("ISTIO_OWNED_CNI_CONF_FILENAME" if owned else "CNI_CONF_NAME") in why
    with watching(installer):
        early.unlink()  # the operator removes the leftover: the runtime loads ours
        wait_for(lambda: installer.ready, what="ready once the leftover is gone")
        assert installer.not_loaded == ""
        leftover(node_dirs)  # and back: not ready again, by the watch loop
        wait_for(lambda: not installer.ready and str(early) in installer.not_loaded,
                 what="not ready again")
    installer.uninstall()
    assert node_dirs.names() == [early.name, "10-calico.conflist"]


def test_an_invalid_leftover_is_skipped_as_libcni_skips_it(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    leftover(node_dirs, text='{"cniVersion": "0.3.1", "name": "kube-ovn", "plugins": []}')
    installer = Installer(node_dirs.config(cni_conf_name="10-calico.conflist"))
    installer.install()
    assert installer.ready and installer.not_loaded == ""


def test_our_standalone_file_left_from_another_mode_is_named(node_dirs: NodeDirs):
    """A config naming istio-cni is not enough: it must be the one we keep (this one carries
    no network: a pod would get none)."""
    node_dirs.put("10-calico.conflist", "calico.conflist")
    stale = node_dirs.put("00-istio-cni.conf", text='{"cniVersion": "0.3.1", "name": '
                          '"istio-cni", "type": "istio-cni"}')
    installer = Installer(node_dirs.config())
    installer.install()
    assert not installer.ready
    assert str(stale) in installer.not_loaded
    assert "names istio-cni but is not the file this installer keeps" in installer.not_loaded


def test_chained_without_a_name_follows_the_first_file_and_is_ready(node_dirs: NodeDirs):
    """What upstream does without CNI_CONF_NAME: our entry goes into the file that wins."""
    node_dirs.put("10-calico.conflist", "calico.conflist")
    early = leftover(node_dirs)
    installer = Installer(node_dirs.config())
    installer.install()
    assert installer.ready and installer.config_path == early and has_entry(early)


def test_the_agent_reports_the_winning_file(node_dirs: NodeDirs, tmp_path: Path):
    """/readyz, istio_cni_install_ready and the gate's condition reason all say it."""
    node_dirs.put("10-calico.conflist", "calico.conflist")
    early = leftover(node_dirs)
    installer = Installer(node_dirs.config(cni_conf_name="10-calico.conflist",
                                           owned_config=True))
    installer.install()
    agent = Agent(DaemonConfig(repair=RepairConfig(node_name="n", enabled=False),
                               run_dir=tmp_path / "agent-run"), installer, None)
    readiness = agent.readiness()
    assert not readiness.ready and readiness.reason == "CNIConfigNotLoaded"
    assert str(early) in readiness.message
    assert agent.ready() == (False, readiness.message)
    assert "istio_cni_install_ready 0.0" in agent.render_metrics().decode()
    installer.uninstall()


def test_the_install_command_exits_1_naming_the_winner(node_dirs: NodeDirs):
    from click.testing import CliRunner

    from admin.cli import cli

    node_dirs.put("10-calico.conflist", "calico.conflist")
    early = leftover(node_dirs)
    result = CliRunner().invoke(cli, ["install", "--wait-timeout", "5"],
                                env=node_dirs.env(CNI_CONF_NAME="10-calico.conflist"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "installed but not in use" in result.output and str(early) in result.output
