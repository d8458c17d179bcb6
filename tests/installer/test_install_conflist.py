"""The pure conflist edits against golden files (pure tier: no root, no I/O but the goldens).

Regenerate the .golden files with REFRESH_GOLDEN=1 and review them in the diff.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from installer import InstallerConfig
from installer.conflist import (
    ConfigFormatError,
    chained_entry,
    converted_name,
    insert_plugin,
    istio_entries,
    plugin_entry,
    remove_plugin,
    render_standalone,
)
from testbed.nodedirs import GOLDEN

CFG = InstallerConfig(plugin_log_level="debug", cni_agent_run_dir=Path("/path/to/run"),
                      pod_namespace="my-namespace", exclude_namespaces=("istio-system",))
ENTRY = chained_entry(plugin_entry(CFG))
INPUTS = ["bridge.conf", "list.conflist", "list-with-istio.conflist", "calico.conflist",
          "compact.conflist", "flannel.json"]


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_bytes(actual.encode())
    assert actual == text(path.name), f"{name} differs (REFRESH_GOLDEN=1 to regenerate)"


def text(name: str) -> str:
    """A golden file's exact text (no newline translation: flannel.json ends in CRLF)."""
    return (GOLDEN / name).read_bytes().decode()


@pytest.mark.parametrize("name", INPUTS)
def test_insert_matches_golden(name: str):
    out = insert_plugin(text(name), ENTRY)
    check_golden(f"{name}.golden", out)


@pytest.mark.parametrize("name", INPUTS)
def test_insert_is_idempotent_and_ours_is_last_and_only(name: str):
    once = insert_plugin(text(name), ENTRY)
    assert insert_plugin(once, ENTRY) == once
    doc = json.loads(once)
    types = [p["type"] for p in doc["plugins"]]
    assert types[-1] == "istio-cni" and types.count("istio-cni") == 1
    assert doc["plugins"][-1] == ENTRY


@pytest.mark.parametrize("name", ["list.conflist", "calico.conflist", "compact.conflist"])
def test_remove_gives_back_the_exact_original_list(name: str):
    original = text(name)
    assert remove_plugin(insert_plugin(original, ENTRY)) == original


def test_remove_drops_every_old_istio_entry_and_keeps_the_rest_verbatim():
    out = remove_plugin(text("list-with-istio.conflist"))
    check_golden("list-with-istio.conflist.removed.golden", out)
    assert [p["type"] for p in json.loads(out)["plugins"]] == ["bridge", "tuning"]


def test_other_vendors_numbers_escapes_and_key_order_are_untouched():
    original = text("calico.conflist")
    out = insert_plugin(original, ENTRY)
    for raw in ('"ratio": 1.0', '"big": 123456789012345678901234567890', '"tiny": 1e-7',
                r'"note": "a <b> & \u00e9 \u2028"'):
        assert raw in out
    calico = json.loads(out, parse_float=Decimal)["plugins"][0]
    assert list(calico)[:3] == ["type", "log_level", "log_file_path"]
    assert out.startswith('{\n    "name": "k8s-pod-network",\n    "cniVersion": "0.3.1"')


def test_single_conf_keeps_its_name_and_version_and_itself():
    original = text("bridge.conf")
    doc = json.loads(insert_plugin(original, ENTRY))
    assert (doc["name"], doc["cniVersion"]) == ("mynet", "0.4.0")  # upstream: k8s-pod-network
    assert doc["plugins"][0] == json.loads(original)
    assert list(doc) == ["cniVersion", "name", "plugins"]


def test_single_conf_without_name_gets_upstreams_network_name():
    doc = json.loads(insert_plugin('{"type": "ptp"}', ENTRY))
    assert doc["name"] == "k8s-pod-network" and "cniVersion" not in doc


@pytest.mark.parametrize("text, reason", [
    ("{}", "neither"),
    ("[]", "not a JSON object"),
    ("not json", "not valid JSON"),
    ('{"name": "x", "plugins": {"type": "a"}}', "'plugins' is not a list"),
    ('{"name": "x", "plugins": ["a"]}', "plugins[0] is not an object"),
    ('{"name": "x", "plugins": [{"type": "a", "mtu": NaN}]}', "not valid JSON"),
    ('{"type": "istio-cni"}', "istio-cni config itself"),
])
def test_invalid_existing_config_is_refused_with_a_reason(text: str, reason: str):
    with pytest.raises(ConfigFormatError, match=re.escape(reason)):
        insert_plugin(text, ENTRY)


def test_standalone_file_matches_golden():
    check_golden("istio-cni.conf.golden", render_standalone(plugin_entry(CFG)))


def test_entry_has_the_fields_the_plugin_reads():
    from cni.config import parse_plugin_config

    conf = {**plugin_entry(CFG)}
    parsed = parse_plugin_config(conf)
    assert parsed.kubeconfig == "/path/to/run/istio-cni-kubeconfig"
    assert parsed.exclude_namespaces == frozenset({"istio-system"})
    assert parsed.pod_namespace == "my-namespace" and parsed.log_level == "debug"
    assert "iptables_backend" not in conf
    forced = plugin_entry(InstallerConfig(force_iptables_binary="legacy"))
    assert parse_plugin_config(forced).iptables_backend == "legacy"


def test_istio_entries_and_converted_names():
    assert istio_entries(text("list.conflist")) == []
    assert len(istio_entries(text("list-with-istio.conflist"))) == 2
    single, listed = '{"type": "bridge"}', '{"name": "n", "plugins": [{"type": "a"}]}'
    assert converted_name("10-a.conf", single) == "10-a.conflist"
    assert converted_name("10-a.json", single) == "10-a.conflist"
    assert converted_name("undetectable.file", single) == "undetectable.file"
    assert converted_name("10-a.conf", listed) == "10-a.conf"


def test_agent_serving_off_is_written_into_the_plugin_entry():
    from installer.conflist import plugin_entry

    assert "agent_serve" not in plugin_entry(CFG)
    entry = plugin_entry(replace(CFG, agent_serve=False))
    assert entry["agent_serve"] is False
    from cni.config import parse_plugin_config

    assert parse_plugin_config({**entry, "name": "n"}).agent_serve is False
