"""The settings model: one parser per value type, one definition per variable, docs from them.

Pure tier. The docs tables of docs/installer.md and docs/node-daemon.md are rendered from the
definitions; `REFRESH_GOLDEN=1` rewrites them from the code (review the diff), by default the
test compares.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni import values
from cni.backends import select_backend
from cni.config import parse_plugin_config
from cni.iptables_config import IptablesConfig
from cni.podinfo import extract_pod_info
from cni.podlookup import RetryPolicy
from cni.redirect import redirect_from_pod
from cni.rules import build_ruleset
from cni.settings import BACKENDS, Setting, SettingError, markdown_table
from installer import config as installer_config
from installer.config import InstallerConfig
from node_daemon import config as daemon_config
from node_daemon.config import DaemonConfig
from tests.deploy.test_manifests import Recording

REPO = Path(__file__).resolve().parents[2]
TABLE_END = "<!-- end of settings table -->"


# --- one parser per value type ---------------------------------------------------------------

@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_bool_true(text):
    assert values.go_bool(text) is True and values.parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_bool_false(text):
    assert values.go_bool(text) is False and values.parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["yes", "TrUe", "on", "2", "", " true"])
def test_go_bool_refuses_what_strconv_refuses(text):
    assert values.parse_go_bool(text) is None
    with pytest.raises(values.BadValue, match="is not a boolean"):
        values.go_bool(text)


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("80", 80), (" 8080 ", 8080),
                                            ("080", 80), ("65535", 65535)])
def test_port(text, port):
    assert values.port(text) == port


@pytest.mark.parametrize("text", ["65536", "-1", "+80", "0x50", "http", "", "80\nCOMMIT",
                                  "123456"])
def test_port_refused(text):
    with pytest.raises(values.BadValue, match=r"is not a port number \(0-65535\)"):
        values.port(text)


@pytest.mark.parametrize(("text", "shown"), [
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("10.0.0.1/8", "10.0.0.1/8"),  # host bits kept, as upstream prints its rules
    ("10.0.0.0/08", "10.0.0.0/8"),  # net.ParseCIDR reads the length as decimal
    ("10.0.0.0/008", "10.0.0.0/8"),
    ("2001:DB8:0:0::/32", "2001:db8::/32"),
    ("::1/128", "::1/128"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_cidr_is_decided_like_go_net_parsecidr(text, shown):
    assert str(values.cidr(text)) == shown


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/255.0.0.0",
                                  "10.0.0.0/", "10.0.0.0/-8", "10.0.0.0/+8", "10.0.0.0/0008",
                                  "fe80::1%eth0/64", "010.0.0.0/8", "10.0.0.0/8 ", "host/8"])
def test_cidr_refused(text):
    with pytest.raises(values.BadValue, match="is not a CIDR"):
        values.cidr(text)


def test_cidr_facts():
    c = values.cidr("127.0.0.1/8")
    assert (c.version, c.loopback, c.bits) == (4, True, 8)
    assert values.cidr("fd00::/8").version == 6 and not values.cidr("fd00::/8").loopback


def test_the_plugin_decides_a_cidr_the_same_way_in_annotations_and_in_the_rule_builder():
    """One CIDR parser: `10.0.0.0/08` is /8 for the annotation and for istio-iptables' flags
    alike (the rule builder used to skip what the annotation accepted)."""
    pod = extract_pod_info({"metadata": {"name": "p", "namespace": "n", "annotations": {
        "sidecar.istio.io/status": "{}",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/08"}},
        "spec": {"containers": [{"name": "istio-proxy", "args": ["proxy", "sidecar"]}]}})
    r = redirect_from_pod(pod)
    assert r.exclude_cidrs == ("10.0.0.0/8",)
    ruleset = build_ruleset(IptablesConfig(outbound_ip_ranges_exclude=("10.0.0.0/08",)))
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN\n" in ruleset.v4.restore_payload()
    assert not ruleset.notes


@pytest.mark.parametrize(("text", "mode"), [("0600", 0o600), ("600", 0o600), ("0o640", 0o640),
                                            ("0O644", 0o644), ("7777", 0o7777)])
def test_octal_mode(text, mode):
    assert values.octal_mode(text) == mode


@pytest.mark.parametrize("text", ["384", "rw", "0x180", "17777", "-600"])
def test_octal_mode_refused(text):
    with pytest.raises(values.BadValue):
        values.octal_mode(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "5s", ""])
def test_seconds_refused(text):
    with pytest.raises(values.BadValue, match="seconds"):
        values.seconds(text)


def test_names_and_choices():
    assert values.names(" a, b ,,c,") == ("a", "b", "c")
    level = values.one_of(("debug", "warn"), fold_case=True, aliases={"warning": "warn"})
    assert level("WARNING") == "warn" and level("Debug") == "debug"
    with pytest.raises(values.BadValue, match="'loud' is not one of debug, warn"):
        level("loud")
    strict = values.one_of(("REDIRECT", "TPROXY"))
    with pytest.raises(values.BadValue):
        strict("redirect")


# --- one reading rule ----------------------------------------------------------------------

PORT = Setting("SOME_PORT", 8000, values.port, "A port.")
FREE = Setting("SOME_TEXT", "x", values.text, "Free text.", keep_empty=True)


@pytest.mark.parametrize(("env", "value"), [({}, 8000), ({"SOME_PORT": ""}, 8000),
                                            ({"SOME_PORT": "  "}, 8000),
                                            ({"SOME_PORT": " 9090\n"}, 9090)])
def test_unset_or_empty_is_the_default_and_values_are_trimmed(env, value):
    assert PORT.read(env) == value


def test_a_bad_value_names_the_variable_and_the_value():
    with pytest.raises(SettingError) as err:
        PORT.read({"SOME_PORT": " 99999 "})
    assert str(err.value).startswith("SOME_PORT='99999': ")


def test_free_text_keeps_empty_as_a_value():
    assert FREE.read({}) == "x" and FREE.read({"SOME_TEXT": ""}) == ""


# --- one definition per variable, and its consumers agree ------------------------------------

@pytest.mark.parametrize(("build", "settings"), [
    (InstallerConfig.from_env, installer_config.SETTINGS),
    (DaemonConfig.from_env, daemon_config.SETTINGS),
])
def test_every_variable_read_is_a_defined_setting_and_every_setting_is_read(build, settings):
    env = Recording({})
    assert build(env) is not None
    names = [s.name for s in settings]
    assert env.read == set(names)
    assert len(names) == len(set(names))


def test_defaults_of_the_configs_are_the_settings_defaults():
    assert InstallerConfig.from_env({}) == InstallerConfig()
    daemon = DaemonConfig.from_env({"REPAIR_NODE_NAME": "n"})
    assert daemon == DaemonConfig(repair=daemon.repair)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backend_list_is_one_list(backend):
    """Every backend the plugin config accepts can be selected and forced on the node."""
    conf = {"cniVersion": "1.0.0", "name": "n", "iptables_backend": backend}
    assert parse_plugin_config(conf).iptables_backend == backend
    assert select_backend(backend) is not None
    forced = DaemonConfig.from_env({"FORCE_IPTABLES_BINARY": backend}).iptables_backend
    assert forced == backend
    written = InstallerConfig.from_env({"FORCE_IPTABLES_BINARY": backend}).force_iptables_binary
    assert written == ("" if backend == "auto" else backend)


def test_one_pod_lookup_deadline():
    plugin = parse_plugin_config({"cniVersion": "1.0.0", "name": "n"})
    policy = RetryPolicy()
    assert (plugin.pod_lookup_attempts, plugin.pod_lookup_interval, plugin.pod_lookup_deadline
            ) == (policy.attempts, policy.interval, policy.deadline) == (30, 1.0, 45.0)


# --- the docs tables are the definitions -----------------------------------------------------

@pytest.mark.parametrize(("doc", "settings"), [
    ("installer.md", installer_config.SETTINGS),
    ("node-daemon.md", daemon_config.SETTINGS),
])
def test_docs_tables_are_generated_from_the_definitions(doc, settings):
    path = REPO / "docs" / doc
    text = path.read_text()
    start = text.index("| Variable | Default | Meaning | Origin |")
    end = text.index(TABLE_END, start)
    table = markdown_table(settings)
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(text[:start] + table + text[end:])
        return
    assert text[start:end] == table, f"docs/{doc} differs (REFRESH_GOLDEN=1 to regenerate)"
