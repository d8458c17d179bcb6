"""Upstream's chart, read by our agent: every variable it sets is read or knowingly ignored,
its flags parse as upstream's, ambient mode is refused with one reason.

Pure tier: the rendered chart (istio-cni-chart.yaml) is fed to the real config parsers and
the real `install-cni` command; the frozen agent run the same way is in
test_chart_frozen.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from admin import log_options
from admin.install_cni import install_cni_command
from admin.run_cmd import read_configs
from cni.settings import markdown_table
from node_daemon import config as daemon_config
from node_daemon.agent import Agent
from tests.chart.chart import argv, configmap_data, host_mounts, pod_env
from tests.deploy.test_manifests import Recording

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DOC = REPO / "docs" / "deploy.md"
TABLE_END = "<!-- end of chart table -->"


# --- the environment ----------------------------------------------------------------------------

def test_every_variable_the_chart_sets_is_read_or_knowingly_ignored():
    env = Recording(pod_env("node-7"))
    read_configs(env)
    ignored = {s.name for s in daemon_config.IGNORED}
    assert set(env) - env.read - ignored == set()
    # and the ignored ones are really not read by the configs
    assert not (env.read & ignored)


def test_the_chart_environment_builds_the_intended_configs():
    cfg, installer = read_configs(pod_env("node-7"))
    assert cfg.repair.node_name == "node-7" and cfg.repair.mode == "repair"
    assert cfg.repair.sidecar_annotation == "sidecar.istio.io/status"
    assert not cfg.ambient_enabled and cfg.refusal == ""
    assert installer.chained and installer.exclude_namespaces == ("kube-system",)
    assert installer.pod_namespace == "istio-system" and not installer.native_nftables
    # upstream hard-codes the container paths the chart mounts; they are our defaults
    assert set(host_mounts()) >= {str(installer.mounted_cni_net_dir),
                                  str(installer.cni_agent_run_dir), str(cfg.host_proc),
                                  *map(str, installer.cni_bin_target_dirs)}
    assert (cfg.health_port, cfg.monitoring_port) == (8000, 15014)


def test_unused_chart_variables_are_listed_in_one_info_line():
    env = pod_env("node-7")
    cfg, _ = read_configs(env)
    notes = daemon_config.ignored_notes(env, cfg)
    assert [level for level, _ in notes] == [logging.INFO]
    listed = notes[0][1].split(": ", 1)[1].split(", ")
    assert listed == sorted(n for n in env if n in {s.name for s in daemon_config.IGNORED})
    assert "GOMEMLIMIT" in listed and "CURRENT_AGENT_VERSION" in listed


@pytest.mark.parametrize(("changes", "warning"), [
    ({"NODE_NAME": "other-node"}, "NODE_NAME=other-node differs from the node this agent "
                                  "watches (node-7"),
])
def test_a_chart_variable_asking_for_what_we_do_not_do_is_a_warning(changes, warning):
    env = {**pod_env("node-7"), **changes}
    cfg, _ = read_configs(env)
    warnings = [msg for level, msg in daemon_config.ignored_notes(env, cfg)
                if level == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings


def test_the_docs_table_of_unused_chart_variables_is_the_definitions():
    text = DEPLOY_DOC.read_text()
    start = text.index("| Variable | Default | Meaning | Origin |",
                       text.index("<!-- chart table"))
    end = text.index(TABLE_END, start)
    table = markdown_table((daemon_config.AMBIENT_ENABLED, *daemon_config.IGNORED))
    if os.environ.get("REFRESH_GOLDEN"):
        DEPLOY_DOC.write_text(text[:start] + table + text[end:])
        return
    assert text[start:end] == table, "docs/deploy.md differs (REFRESH_GOLDEN=1 to regenerate)"


# --- ambient: refused, not ready, one reason ---------------------------------------------------

class NeverCalledInstaller:
    """An installer that fails the test if the refusing agent touches the node."""

    ready = True
    metrics = type("M", (), {"snapshot": staticmethod(lambda: {"installs": {}})})()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the installer's {name} was called")


def test_ambient_enabled_keeps_the_agent_not_ready_and_touching_nothing():
    env = {**pod_env("node-7"), "AMBIENT_ENABLED": "true", "READINESS_PORT": "0",
           "MONITORING_PORT": "0", "HEALTH_BIND_ADDRESS": "127.0.0.1"}
    cfg, _ = read_configs(env)
    assert cfg.refusal.startswith("AMBIENT_ENABLED=true: ambient mode is not supported")
    agent = Agent(cfg, NeverCalledInstaller())
    assert agent.ready() == (False, cfg.refusal)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run(stop)), daemon=True)
    thread.start()
    try:
        import urllib.error
        import urllib.request

        from testbed.wait import wait_for

        wait_for(lambda: agent.health is not None, 10, "the health server")
        assert agent.health is not None
        url = f"http://127.0.0.1:{agent.health.port}/readyz"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(url, timeout=5)  # noqa: S310 - loopback test server
        assert answer.value.code == 503
        assert answer.value.read().decode().strip() == cfg.refusal
    finally:
        stop.set()
        thread.join(10)
    assert result == [0] and agent.controller is None


# --- the flags ------------------------------------------------------------------------------------

def PLUGIN_LOGGERS(level: int) -> dict[str, int]:  # noqa: N802 - reads as the table's constant
    """The `cni-plugin` scope's loggers: where plugin reports are re-emitted, and the plugin's
    own loggers (the agent runs the plugin's code for served calls)."""
    return {"cni-plugin": level, "istio-cni": level, "cni": level}


@pytest.mark.parametrize(("text", "loggers", "plugin"), [
    ("", {}, None),
    ("info", {"": logging.INFO}, None),  # the chart's default global.logging.level
    ("default:info", {"": logging.INFO}, None),
    ("default:warn,cni-plugin:debug", {"": logging.WARNING, **PLUGIN_LOGGERS(logging.DEBUG)},
     "debug"),
    ("install:debug, repair:error", {"installer": logging.DEBUG,
                                     **dict.fromkeys(log_options.SCOPES["repair"],
                                                     logging.ERROR)}, None),
    ("cni-plugin:none", PLUGIN_LOGGERS(log_options.LEVELS["none"]), "none"),
    ("cni-plugin:fatal", PLUGIN_LOGGERS(logging.CRITICAL), "error"),
])
def test_log_output_level_parses_as_upstreams(text, loggers, plugin):
    levels = log_options.parse_output_levels(text)
    assert levels.loggers == loggers and levels.plugin_level == plugin
    assert levels.unknown_scopes == ()


def test_all_sets_every_scope_and_unknown_scopes_are_reported():
    levels = log_options.parse_output_levels("all:debug,ambient:info")
    assert levels.plugin_level == "debug"
    assert set(levels.loggers.values()) == {logging.DEBUG}
    assert "" in levels.loggers and "installer" in levels.loggers
    assert levels.unknown_scopes == ("ambient",)


@pytest.mark.parametrize("bad", ["default:loud", "verbose", "a:b:info", ":info"])
def test_a_bad_log_output_level_item_is_named(bad):
    with pytest.raises(log_options.LogOptionsError, match=f"'{bad}' is not <scope>:<level>"):
        log_options.parse_output_levels(bad)


def test_json_lines_carry_upstreams_keys():
    record = logging.LogRecord("installer", logging.WARNING, __file__, 1, "wrote %s", ("x",),
                               None)
    entry = json.loads(log_options.JsonFormatter().format(record))
    assert set(entry) == {"time", "level", "scope", "msg"}
    assert (entry["level"], entry["scope"], entry["msg"]) == ("warn", "installer", "wrote x")
    assert entry["time"].endswith("Z")


def test_the_charts_args_are_what_install_cni_takes():
    assert argv()[0] == "install-cni"
    params = {opt for p in install_cni_command.params for opt in p.opts}
    for arg in argv()[1:]:
        assert arg.split("=", 1)[0] in params


@pytest.mark.parametrize(("args", "message"), [
    (["--log_output_level=default:loud"], "--log_output_level: 'default:loud' is not"),
    (["--log_as_json=perhaps"], "'perhaps' is not a boolean"),
    (["--log_level=debug"], "No such option '--log_level'"),
])
def test_bad_flags_are_one_clear_error(args, message):
    result = CliRunner().invoke(install_cni_command, args, env=pod_env("node-7"))
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_bad_chart_value_is_one_clear_error():
    env = {**pod_env("node-7"), "REPAIR_REPAIR_PODS": "yes please"}
    result = CliRunner().invoke(install_cni_command, argv()[1:], env=env)
    assert result.exit_code == 1
    assert "REPAIR_REPAIR_PODS='yes please'" in result.output and "Traceback" not in result.output


def test_configmap_keys_are_the_charts():
    assert "AMBIENT_ENABLED" in configmap_data() and "NATIVE_NFTABLES" in configmap_data()
