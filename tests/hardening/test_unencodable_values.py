"""A value that cannot be encoded where it must go is one clear error, in every command.

Three kinds of character have no bytes to become: a byte of argv or the environment that is not
UTF-8 (Python holds it as a lone surrogate U+DC80-U+DCFF: a valid path byte, but no UTF-8 file,
JSON string or log line can carry it), any other lone surrogate (from a JSON escape such as
`"\\ud800"` in the plugin's config or the agent's socket, or an in-process caller) and NUL (where
a path or an argv ends). Each is swept through every place a setting, path, name or token is
encoded: the settings of every component (`cni.values.encodable_text`, read by
`Setting.read`), every option of every CLI command, the plugin's environment and config strings
for every CNI command, the pod lookup's URL and header, and the
plugin's log file in a real exec. The answer is always an error that names what is wrong (a CNI
error with its code, a click error, a `SettingError`), never a traceback or an internal error.

Found by `tests/admin/test_cli_sweep.py` running unseeded: `istio-cni-node uninstall` with such a
`CNI_AGENT_RUN_DIR` ended in a `UnicodeEncodeError` traceback from the kubeconfig writer.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from admin.cli import cli
from admin.run_cmd import read_configs
from cni.plugin import Plugin
from cni.protocol import dispatch
from cni.settings import SettingError
from installer import config as installer_config
from node_daemon import config as daemon_config
from testbed.kubeapi import KubeApiServer
from testbed.nodedirs import NodeDirs, make_node_dirs
from tests.admin.test_cli_sweep import assert_clean

BAD = {"lone-surrogate": "a\ud800b", "non-utf8-byte": "a\udcffb", "nul": "a\x00b"}
"""U+D800 has no bytes at all; U+DCFF is the byte 0xff of an argv or environment; NUL ends
a path, an argv or a C string (it reaches the plugin as the JSON escape "\\u0000")."""
SHOWN = {"lone-surrogate": "U+D800", "non-utf8-byte": "0xff", "nul": "NUL"}
SETTINGS = {s.name: s for s in (*daemon_config.SETTINGS, *installer_config.SETTINGS)}


# --- settings: every variable of every component -----------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_refuses_a_value_with_no_bytes(name: str, kind: str) -> None:
    """What `run` and `install-cni` read (the agent's and the installer's settings, one
    reading); `install`, `uninstall`, `repair`, `drift` and `explain` read subsets of it."""
    with pytest.raises(SettingError) as err:
        read_configs({name: BAD[kind]})
    assert str(err.value).startswith(f"{name}: {BAD[kind]!r} ")
    assert SHOWN[kind] in str(err.value)


# --- the CLI: every option, and a setting through every command that reads settings -------------

@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeDirs:
    return make_node_dirs(tmp_path_factory.mktemp("node"))


def invoke(node: NodeDirs, args: list[str], **env: str) -> Result:
    cwd = Path(tempfile.mkdtemp(dir=node.root))
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args, env=node.env(
            KUBECONFIG=str(node.root / "no-such-kubeconfig"), REPAIR_NODE_NAME="node-a",
            HOST_PROC="/proc", **env))
    finally:
        os.chdir(before)


PARAMS = [(name, p) for name, command in sorted(cli.commands.items()) for p in command.params
          if p.name and not (isinstance(p, click.Option) and p.is_flag)]
SETTING_OPTIONS = {p.name for _, p in PARAMS
                   if p.envvar in SETTINGS and not isinstance(p.type, click.Path)}
"""Options that stand for a setting (`envvar=`) and are read through `Setting.read`, as the
variable is. (`--kubeconfig` is a file to open, a `click.Path`: any byte a name can hold.)"""
BASE_ARGS = {"install": ["--wait-timeout", "0.2"]}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize(("command", "param"), PARAMS, ids=[f"{c}:{p.name}" for c, p in PARAMS])
def test_every_option_refuses_a_value_with_no_bytes_or_takes_it_as_bytes(
        node: NodeDirs, command: str, param: click.Parameter, kind: str) -> None:
    """A lone surrogate or a NUL is refused by every option. The byte 0xff is refused by every
    option backed by a setting; a plain path may hold it (it is a valid file name byte)."""
    value = "junk-" + BAD[kind]
    if isinstance(param, click.Argument):
        args = [command, value]
    else:
        args = [command, *BASE_ARGS.get(command, []), param.opts[0], value]
        if command == "explain" and param.name != "pod_file":
            args = [command, "shop/cart", param.opts[0], value]
    must_fail = kind != "non-utf8-byte" or param.name in SETTING_OPTIONS
    res = invoke(node, args)
    assert_clean(res, must_fail)
    if param.name in SETTING_OPTIONS:
        assert f"{param.envvar}: " in res.stderr and SHOWN[kind] in res.stderr, res.stderr


COMMANDS_READING_SETTINGS = {
    "install": (["install", "--wait-timeout", "0.2"], "CNI_AGENT_RUN_DIR"),
    "uninstall": (["uninstall"], "CNI_AGENT_RUN_DIR"),
    "repair": (["repair", "--dry-run"], "EXCLUDE_NAMESPACES"),
    "drift": (["drift", "--dry-run"], "EXCLUDE_NAMESPACES"),
    "explain": (["explain", "shop/cart"], "EXCLUDE_NAMESPACES"),
    "run": (["run"], "CNI_AGENT_RUN_DIR"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS_READING_SETTINGS))
def test_every_command_names_the_setting_it_cannot_use(node: NodeDirs, command: str) -> None:
    """The environment's form (an environment cannot hold a lone surrogate at all)."""
    args, name = COMMANDS_READING_SETTINGS[command]
    res = invoke(node, args, **{name: BAD["non-utf8-byte"]})
    assert_clean(res, must_fail=True)
    assert res.stderr.strip().splitlines()[-1].startswith(f"Error: {name}: "), res.stderr


def test_the_agents_own_entry_point_names_the_setting(tmp_path: Path) -> None:
    """`install-cni` (the chart's command) in a real process: the byte 0xff in its environment
    is one line naming the variable, exit 1."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    environ = {k.encode(): v.encode() for k, v in env.items()}
    environ[b"CNI_AGENT_RUN_DIR"] = b"/tmp/a\xffb"
    proc = subprocess.run([sys.executable, "-c", "from admin.install_cni import main; main()"],
                          env=environ, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(b"Error: CNI_AGENT_RUN_DIR: "), \
        proc.stderr


# --- the plugin: environment and config strings, every CNI command ---------------------------

SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, *range(100, 106)}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/nope",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
CONF = {"cniVersion": "1.1.0", "name": "net", "type": "istio-cni"}
STRING_KEYS = ["cni_agent_run_dir", "pod_namespace", "log_uds_address", "plugin_log_level",
               "log_level", "iptables_backend", "nftables_backend", "kubernetes.kubeconfig",
               "kubernetes.intercept_type", "exclude_namespaces", "kubernetes.exclude_namespaces"]
CNI_COMMANDS = ["ADD", "CHECK", "DEL", "STATUS", "GC", "VERSION"]


class PlainPods:
    """A pod source whose every pod is skipped (no netns is ever needed)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def get_pod(self, namespace: str, name: str) -> dict:
        self.calls.append((namespace, name))
        return {"metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "app"}]}}


def call(env: dict[str, str], conf: dict) -> tuple[int, dict]:
    logging.disable(logging.CRITICAL)
    try:
        out, _, status = dispatch(env, json.dumps(conf).encode(),
                                  Plugin(pod_source_factory=lambda c: PlainPods()))
    finally:
        logging.disable(logging.NOTSET)
    assert status in (0, 1) and b"Traceback" not in out
    answer = json.loads(out) if out.strip() else {}
    if status == 1:
        assert answer["code"] in SPEC_CODES, answer  # never 999, an internal error
    return status, answer


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", CNI_COMMANDS)
@pytest.mark.parametrize("key", STRING_KEYS)
def test_a_config_string_with_no_bytes_is_an_invalid_config(key: str, command: str,
                                                            kind: str) -> None:
    """JSON carries `"\\ud800"` and `"\\udcff"` as escapes; Go would read U+FFFD instead, so
    the plugin would use another path or name than the config says."""
    conf = dict(CONF)
    value: object = [BAD[kind]] if key.endswith("exclude_namespaces") else BAD[kind]
    if key.startswith("kubernetes."):
        conf["kubernetes"] = {key.split(".", 1)[1]: value}
    else:
        conf[key] = value
    status, answer = call({**ENV, "CNI_COMMAND": command}, conf)
    if command in ("ADD", "CHECK"):
        assert status == 1 and answer["code"] == 7, answer
        assert key.split(".")[-1] in answer["msg"], answer


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", CNI_COMMANDS)
@pytest.mark.parametrize("name", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                                  "CNI_PATH", "CNI_NETNS_OVERRIDE"])
def test_a_cni_variable_with_no_bytes_is_a_clear_error(name: str, command: str,
                                                       kind: str) -> None:
    """Through execve only the byte form arrives (a valid path byte); the agent's socket and
    in-process callers can also hand a lone surrogate, which is refused with code 4."""
    status, answer = call({**ENV, "CNI_COMMAND": command, name: ENV.get(name, "") + BAD[kind]},
                          CONF)
    if kind != "non-utf8-byte" and command != "VERSION":
        assert status == 1 and answer["code"] == 4 and name in answer["msg"], answer


@pytest.mark.parametrize("name", ["p\udcff", "\udcff\udcfe"])
def test_a_pod_name_byte_that_is_not_utf8_goes_into_the_url_as_that_byte(tmp_path: Path,
                                                                          name: str) -> None:
    """The pod lookup's URL %-escapes the bytes of CNI_ARGS' name; the API then says no such
    pod (100), where `quote` once raised UnicodeEncodeError (an internal error, 999)."""
    with KubeApiServer() as api:
        (tmp_path / "istio-cni-kubeconfig").write_text(_kubeconfig(api.url, "tok"))
        conf = {**CONF, "cni_agent_run_dir": str(tmp_path), "pod_lookup_attempts": 1}
        env = {**ENV, "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"}
        out, _, status = dispatch(env, json.dumps(conf).encode(), Plugin())
        paths = [r.path for r in api.requests]
    assert status == 1 and json.loads(out)["code"] == 100, out
    escaped = "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c
                      for c in name)
    assert paths == [f"/api/v1/namespaces/default/pods/{escaped}"]


def _kubeconfig(server: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]})


@pytest.mark.parametrize(("token", "shown"), [("ab\u20acc", "character 2: U+20AC"),
                                              ("ab\ud800c", "character 2: U+D800"),
                                              ("ab\ncd", "character 2: U+000A"),
                                              ("ab cd", "character 2: space")])
def test_a_token_no_http_header_can_carry_is_a_kubeconfig_error(tmp_path: Path, token: str,
                                                                shown: str) -> None:
    """Sent as `Authorization: Bearer <token>`: http.client encodes header values as Latin-1
    and refuses line breaks, so such a token was an internal error (999) at the request."""
    (tmp_path / "istio-cni-kubeconfig").write_text(_kubeconfig("http://127.0.0.1:9", token))
    conf = {**CONF, "cni_agent_run_dir": str(tmp_path)}
    out, _, status = dispatch(ENV, json.dumps(conf).encode(), Plugin())
    err = json.loads(out)
    assert status == 1 and err["code"] == 50, err
    assert "the token holds a character no HTTP header can carry" in err["msg"] and shown in \
        err["msg"], err
    assert token not in out.decode()


def test_a_server_url_that_is_not_ascii_is_a_kubeconfig_error(tmp_path: Path) -> None:
    (tmp_path / "istio-cni-kubeconfig").write_text(_kubeconfig("https://\ud800:6443", "tok"))
    out, _, status = dispatch(ENV, json.dumps({**CONF, "cni_agent_run_dir": str(tmp_path)})
                              .encode(), Plugin())
    assert status == 1 and json.loads(out)["code"] == 50 and "not printable ASCII" in \
        json.loads(out)["msg"], out


@pytest.mark.parametrize("name", ["CNI_ARGS", "CNI_NETNS"])
def test_the_plugin_logs_a_byte_that_is_not_utf8_escaped(tmp_path: Path, name: str) -> None:
    """A real exec: the byte 0xff in the pod's name or netns path reaches the log file as
    `\\udcff`, where the file handler once printed a "Logging error" traceback on stderr."""
    env = {k.encode(): v.encode() for k, v in {**ENV, "PATH": os.environ["PATH"]}.items()}
    env[b"CNI_ARGS"] = b"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=p"
    env[name.encode()] += b"\xff"
    conf = {**CONF, "cni_agent_run_dir": str(tmp_path), "plugin_log_level": "debug",
            "exclude_namespaces": ["kube-system"]}
    proc = subprocess.run([sys.executable, "-m", "cni"], input=json.dumps(conf).encode(),
                          env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr and b"Logging error" not in proc.stderr, proc.stderr
    logged = (tmp_path / "istio-cni.log").read_text()
    assert "skipped: namespace kube-system is excluded" in logged and "\\udcff" in logged


def test_the_installer_names_a_service_account_token_that_is_not_utf8(tmp_path: Path) -> None:
    from installer import Installer, InstallError

    dirs = make_node_dirs(tmp_path)
    dirs.put("10-calico.conflist", "calico.conflist")
    (dirs.sa_dir / "token").write_bytes(b"tok\xff")
    with pytest.raises(InstallError, match=r"token .* is not UTF-8 text"):
        Installer(dirs.config()).install()
