"""`istio-cni-node install` / `uninstall` wiring: env and flags reach the installer, errors are
one line with exit 1. Real directories, the real Installer (no patching needed: it is fast)."""

from __future__ import annotations

from click.testing import CliRunner

from admin.cli import cli
from testbed.nodedirs import GOLDEN, NodeDirs


def test_install_then_uninstall_from_the_environment(node_dirs: NodeDirs):
    path = node_dirs.put("10-net.conflist", "list.conflist")
    runner = CliRunner()
    result = runner.invoke(cli, ["install", "--wait-timeout", "5"], env=node_dirs.env())
    assert result.exit_code == 0, result.output
    assert "istio-cni" in path.read_text()
    result = runner.invoke(cli, ["uninstall"], env=node_dirs.env())
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == (GOLDEN / "list.conflist").read_bytes()


def test_a_flag_overrides_its_environment_variable(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    env = node_dirs.env(CHAINED_CNI_PLUGIN="true")
    result = CliRunner().invoke(cli, ["install", "--chained-cni-plugin", "false",
                                      "--cni-conf-name", "ours.conf"], env=env)
    assert result.exit_code == 0, result.output
    assert (node_dirs.net_dir / "ours.conf").exists()


def test_errors_are_one_line_and_exit_1(node_dirs: NodeDirs):
    result = CliRunner().invoke(cli, ["install", "--wait-timeout", "0.05"], env=node_dirs.env())
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"no valid CNI config (.conf/.conflist/.json) in {node_dirs.net_dir}" in result.output
    bad = CliRunner().invoke(cli, ["install"], env=node_dirs.env(KUBECONFIG_MODE="rw"))
    assert bad.exit_code == 1 and "KUBECONFIG_MODE='rw'" in bad.output


def test_help_names_every_variable():
    out = CliRunner().invoke(cli, ["install", "--help"]).output
    for env in ("MOUNTED_CNI_NET_DIR", "CNI_CONF_NAME", "CHAINED_CNI_PLUGIN", "CNI_AGENT_RUN_DIR",
                "KUBECONFIG_MODE", "EXCLUDE_NAMESPACES"):
        assert env in out
