"""The admin CLI's answers to inputs that are not what they should be, one case each.

`test_cli_sweep.py` checks the general property over every option; these pin the specific
answers: what the message says, what is left unchanged, and what `version` reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from admin.cli import cli
from cni import __version__
from testbed.nodedirs import GOLDEN, NodeDirs, make_node_dirs
from testbed.wait import wait_for

WORKLOADS = Path(__file__).resolve().parents[2] / "companions" / "workloads"
PLUGIN = Path(sys.executable).with_name("istio-cni")  # the console script, as installed


def _pod_file(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(doc))
    return str(path)


# --- explain --pod-file: only a Pod is explained ----------------------------------------------

@pytest.mark.parametrize(("doc", "said"), [
    ({}, 'not a Pod: no kind, expected "kind": "Pod"'),
    ({"kind": "List", "apiVersion": "v1", "items": []},
     'not a Pod: kind "List", expected "kind": "Pod" (one pod: kubectl get pod NAME -o json)'),
    ({"kind": "Pod", "apiVersion": "apps/v1", "metadata": {"name": "p"}},
     'not a Pod: apiVersion "apps/v1", expected "v1"'),
    ({"kind": "Pod", "metadata": {"namespace": "shop"}}, "not a Pod: no metadata.name"),
    ({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"},
      "spec": {"template": {"spec": {"containers": [{"name": "app"}]}}, "containers": 3}},
     'not a Pod: kind "Deployment", expected "kind": "Pod"'),
    ({"metadata": "x"}, "malformed pod: metadata is a string ('x'), not an object"),
    ({"kind": "Pod", "metadata": {"name": "p"},
      "spec": {"containers": [{"name": "istio-proxy", "env": 5}]}},
     "malformed pod: spec.containers[0].env is a number (5), not an array"),
])
def test_a_file_that_is_not_a_pod_is_an_error_not_a_verdict(tmp_path: Path, doc: object,
                                                             said: str) -> None:
    path = _pod_file(tmp_path, doc)
    res = CliRunner().invoke(cli, ["explain", "--pod-file", path])
    assert res.exit_code == 1
    assert res.stdout == "" and "REDIRECTED" not in res.output
    assert res.stderr == f"Error: {path}: {said}\n"


def test_a_pod_file_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"kind": "Pod", "metadata": {"annotations": ' + "[" * 100_000 + "}}")
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(path)])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == f"Error: {path} is not JSON we read: nested too deeply\n"


def test_a_pod_from_a_pipe_is_still_explained() -> None:
    """`--pod-file <(kubectl get pod ...)`: the descriptor is a pipe, read with a deadline."""
    read_end, write_end = os.pipe()
    os.write(write_end, (WORKLOADS / "meshed-pod.json").read_bytes())
    os.close(write_end)
    try:
        res = CliRunner().invoke(cli, ["explain", "--pod-file", f"/proc/self/fd/{read_end}"])
    finally:
        os.close(read_end)
    assert res.exit_code == 0, res.output
    assert "REDIRECTED" in res.stdout


# --- the kubeconfig: a malformed one is one line -----------------------------------------------

@pytest.mark.parametrize(("text", "said"), [
    ("apiVersion: v1\nclusters: [\n  - {", "not YAML: expected the node content, but found '-' "
                                          "at line 3, column 3"),
    ("- a\n", "not a kubeconfig (a mapping with clusters, users and contexts): it holds a "
              "YAML list"),
    ("", "not a kubeconfig (a mapping with clusters, users and contexts): it holds nothing"),
    ("a: " + "[" * 5000, "not YAML we read: nested too deeply"),
])
@pytest.mark.parametrize("command", [["explain", "shop/cart"], ["repair", "--dry-run"],
                                     ["drift", "--dry-run"]])
def test_a_malformed_kubeconfig_is_one_line_naming_it(tmp_path: Path, command: list[str],
                                                      text: str, said: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(text)
    res = CliRunner().invoke(cli, [*command, "--kubeconfig", str(kubeconfig)],
                             env={"REPAIR_NODE_NAME": "node-a", "HOST_PROC": "/proc"})
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == f"Error: kubeconfig {kubeconfig}: {said}\n"


def test_a_kubeconfig_the_client_library_cannot_load_is_one_line(tmp_path: Path) -> None:
    """Valid YAML of the wrong shape reaches the client library's loader, which raises
    TypeError and AttributeError on such files; those are one line too."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": 5}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    res = CliRunner().invoke(cli, ["explain", "shop/cart", "--kubeconfig", str(kubeconfig)])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith(f"Error: no Kubernetes API access: kubeconfig {kubeconfig}: ")
    assert len(res.stderr.splitlines()) == 1


def test_a_fifo_as_kubeconfig_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "kubeconfig"
    os.mkfifo(fifo)
    res = CliRunner().invoke(cli, ["explain", "shop/cart", "--kubeconfig", str(fifo)])
    assert res.exit_code == 1
    assert res.stderr == f"Error: kubeconfig {fifo}: not a regular file (a FIFO)\n"


# --- uninstall: a missing directory is not "removed" -----------------------------------------

@pytest.fixture
def node_dirs(tmp_path: Path) -> NodeDirs:
    return make_node_dirs(tmp_path)


def test_uninstall_with_a_missing_net_dir_says_so_and_changes_nothing(node_dirs: NodeDirs):
    conflist = node_dirs.put("10-net.conflist", "list.conflist")
    assert CliRunner().invoke(cli, ["install", "--wait-timeout", "5"],
                              env=node_dirs.env()).exit_code == 0
    installed = conflist.read_bytes()
    plugin = (node_dirs.bin_dst / "istio-cni").read_bytes()
    missing = node_dirs.root / "no-net.d"

    res = CliRunner().invoke(cli, ["uninstall", "--mounted-cni-net-dir", str(missing)],
                             env=node_dirs.env())

    assert res.exit_code == 1 and res.stdout == ""
    assert f"nothing removed: MOUNTED_CNI_NET_DIR {missing} does not exist" in res.stderr
    assert "removed\n" not in res.stderr and len(res.stderr.splitlines()) == 1
    assert conflist.read_bytes() == installed and b"istio-cni" in installed
    assert (node_dirs.bin_dst / "istio-cni").read_bytes() == plugin


def test_uninstall_names_a_missing_bin_dir_too(node_dirs: NodeDirs):
    missing = node_dirs.root / "no-bin"
    res = CliRunner().invoke(cli, ["uninstall", "--cni-bin-target-dirs",
                                   f"{node_dirs.bin_dst},{missing}"], env=node_dirs.env())
    assert res.exit_code == 1
    assert f"CNI_BIN_TARGET_DIRS {missing} does not exist" in res.stderr
    assert str(node_dirs.bin_dst) not in res.stderr.replace(str(missing), "")


def test_uninstall_of_an_installed_node_still_removes(node_dirs: NodeDirs):
    conflist = node_dirs.put("10-net.conflist", "list.conflist")
    CliRunner().invoke(cli, ["install", "--wait-timeout", "5"], env=node_dirs.env())
    res = CliRunner().invoke(cli, ["uninstall"], env=node_dirs.env())
    assert res.exit_code == 0, res.output
    assert res.stderr.endswith("istio-cni removed\n")
    assert conflist.read_bytes() == (GOLDEN / "list.conflist").read_bytes()


def test_uninstall_help_lists_only_what_it_acts_on_and_still_takes_the_rest(node_dirs: NodeDirs):
    """`install`'s flags that change nothing in an uninstall are not in its help, but a
    command line copied from `install` still works."""
    text = CliRunner().invoke(cli, ["uninstall", "--help"]).stdout
    for flag in ("--mounted-cni-net-dir", "--cni-conf-name", "--chained-cni-plugin",
                 "--cni-agent-run-dir", "--cni-bin-source-dir", "--cni-bin-target-dirs"):
        assert flag in text
    for flag in ("--kubeconfig-mode", "--exclude-namespaces", "--plugin-log-level"):
        assert flag not in text
    res = CliRunner().invoke(cli, ["uninstall", "--plugin-log-level", "debug",
                                   "--kubeconfig-mode", "0600"], env=node_dirs.env())
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(cli, ["uninstall", "--kubeconfig-mode", "rw"], env=node_dirs.env())
    assert bad.exit_code == 1 and "KUBECONFIG_MODE='rw'" in bad.stderr


# --- one name for the output format -----------------------------------------------------------

@pytest.mark.parametrize("spelling", ["--output", "-o", "--format"])
def test_explain_output_format_under_every_spelling(spelling: str) -> None:
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(WORKLOADS / "meshed-pod.json"),
                                   spelling, "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["redirected"] is True


@pytest.mark.parametrize("command", ["explain", "repair", "drift"])
def test_every_output_option_is_called_output(command: str) -> None:
    params = {p.name: p for p in cli.commands[command].params}
    assert {"--output", "-o"} <= set(params["output"].opts)


def test_rules_keeps_minus_o_as_istio_iptables_does_and_says_so() -> None:
    res = CliRunner().invoke(cli, ["rules", "-o", "json"])
    assert res.exit_code == 2 and res.stdout == ""
    assert "-o is istio-iptables' --istio-local-outbound-ports-exclude" in res.stderr
    ok = CliRunner().invoke(cli, ["rules", "-o", "15020"])
    assert ok.exit_code == 0 and "--dport 15020 -j RETURN" in ok.stdout
    assert "-o is --istio-local-outbound-ports-exclude" in " ".join(
        CliRunner().invoke(cli, ["rules", "--help"]).stdout.split())


# --- version: the agent's and the installed plugin's ------------------------------------------

def _bin_dir(tmp_path: Path, name: str, script: str | None = None) -> Path:
    d = tmp_path / name
    d.mkdir()
    if script is None:
        (d / "istio-cni").symlink_to(PLUGIN)
    else:
        (d / "istio-cni").write_text(script)
        (d / "istio-cni").chmod(0o755)
    return d


def test_version_prints_the_installed_plugins_own_answer(tmp_path: Path) -> None:
    if not PLUGIN.exists():
        pytest.skip("the istio-cni console script is not installed next to this Python")
    bin_dir = _bin_dir(tmp_path, "bin")
    res = CliRunner().invoke(cli, ["version", "--cni-bin-target-dirs", str(bin_dir)])
    assert res.exit_code == 0, res.output
    agent, plugin = res.stdout.splitlines()
    assert agent.startswith(f"istio-cni-node {__version__} (Python ")
    assert plugin == (f"istio-cni plugin {bin_dir}/istio-cni: CNI plugin istio-cni (Python) "
                      f"v{__version__}; CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, "
                      "0.3.1, 0.4.0, 1.0.0, 1.1.0")


def test_version_says_when_no_plugin_is_installed(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["version"], env={"CNI_BIN_TARGET_DIRS": str(tmp_path)})
    assert res.exit_code == 0
    assert res.stdout.splitlines()[1] == (
        f"istio-cni plugin: not installed in {tmp_path} (CNI_BIN_TARGET_DIRS)")


def test_version_of_a_plugin_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    failing = _bin_dir(tmp_path, "failing", "#!/bin/sh\necho broken >&2\nexit 3\n")
    res = CliRunner().invoke(cli, ["version", "--cni-bin-target-dirs", str(failing)])
    assert res.exit_code == 1
    assert res.stdout.startswith("istio-cni-node ") and len(res.stdout.splitlines()) == 1
    assert res.stderr == (f"Error: istio-cni plugin {failing}/istio-cni: no answer: exited "
                          "with status 3: broken\n")


def test_a_plugin_that_hangs_is_killed_with_what_it_started(tmp_path: Path) -> None:
    marker = tmp_path / "child-pid"
    hanging = _bin_dir(tmp_path, "hanging", f"#!/bin/sh\nsleep 300 &\necho $! > {marker}\n"
                                            "wait\n")
    from admin.version_cmd import ask_plugin

    # The kill must land after the plugin started its child (the marker holds its pid): on a
    # loaded machine the shell may not get that far in 0.5 s, so the bound doubles until it
    # does (at most 32 s), and every try must end as "no answer" at its own bound.
    for timeout in (0.5, 1, 2, 4, 8, 16, 32):
        answer = ask_plugin(hanging / "istio-cni", timeout=timeout)
        assert answer.error == f"no answer within {timeout:g} s"
        if marker.exists() and marker.read_text().strip():
            break
    else:
        pytest.fail("the hanging plugin never started its child")
    child = int(marker.read_text())
    wait_for(lambda: _gone(child), timeout=30, what=f"the plugin's child {child} killed")


def _gone(pid: int) -> bool:
    """The process is gone, or killed and not yet reaped by init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_an_argument_that_is_not_utf8_is_echoed_escaped_not_a_traceback(tmp_path: Path):
    """Through the real entry point: argv bytes that are not UTF-8 reach Python as lone
    surrogates; printing them back must not fail. The flag stands for a setting, and no setting
    may hold them (tests/hardening/test_unencodable_values.py): one line names both."""
    proc = subprocess.run(
        [sys.executable, "-m", "admin.cli", "version", "--cni-bin-target-dirs",
         os.fsencode(tmp_path) + b"/\xff"],
        capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.decode().strip() == (
        f"Error: CNI_BIN_TARGET_DIRS: '{tmp_path}/\\udcff' has the byte 0xff, which is not "
        f"UTF-8 (character {len(str(tmp_path)) + 1})")
