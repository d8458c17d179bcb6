"""Hostile input to the plugin, property-based: whatever arrives on stdin or in the environment,
the answer is a valid CNI result or error on stdout, never a traceback, never an internal error,
and nothing is programmed.

Runs the protocol in-process (`dispatch`, exactly what the binary runs) with a recording pod
source, so 10,000 cases per property fit in seconds. The recording source returns a pod that is
never redirected; any attempt to reach a netns would need a redirect decision first.
"""

from __future__ import annotations

import json
import logging
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from cni.plugin import Plugin
from cni.protocol import SUPPORTED_VERSIONS, dispatch

SPEC_CODES = {1, 2, 4, 5, 6, 7, 8, 11, 50, 51}
OUR_CODES = set(range(100, 106))
PLAIN_POD = {"metadata": {"name": "p", "namespace": "default"},
             "spec": {"containers": [{"name": "app"}]}}
HOSTILE = settings()  # the profile from conftest: 10,000 examples under HYPOTHESIS_PROFILE=ci


def setup_module() -> None:
    logging.disable(logging.CRITICAL)  # 30,000 decisions' log lines would dominate the run


def teardown_module() -> None:
    logging.disable(logging.NOTSET)


class RecordingSource:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def get_pod(self, namespace: str, name: str) -> dict:
        self.calls.append((namespace, name))
        return PLAIN_POD


def run(env: dict[str, str], stdin: bytes) -> tuple[bytes, int, RecordingSource]:
    source = RecordingSource()
    plugin = Plugin(pod_source_factory=lambda conf: source)
    out, _, status = dispatch(env, stdin, plugin)
    return out, status, source


def assert_valid_answer(out: bytes, status: int) -> None:
    assert status in (0, 1)
    assert b"Traceback" not in out
    if status == 1:
        err = json.loads(out)
        assert set(err) <= {"cniVersion", "code", "msg", "details"}
        assert err["code"] in SPEC_CODES | OUR_CODES, err
        assert isinstance(err["msg"], str) and err["msg"]
    elif out:
        assert isinstance(json.loads(out), dict)


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/nope",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=6)
KEYS = ["cniVersion", "name", "type", "prevResult", "plugin_log_level", "log_level",
        "cni_agent_run_dir", "exclude_namespaces", "kubernetes", "pod_namespace",
        "iptables_backend", "pod_lookup_attempts", "pod_lookup_interval_seconds",
        "pod_lookup_deadline_seconds", "native_nftables", "log_uds_address"]
versions = st.one_of(st.sampled_from(SUPPORTED_VERSIONS), st.text(max_size=8), json_scalars)
configs = st.fixed_dictionaries(
    {"cniVersion": versions, "name": st.one_of(st.just("net"), json_scalars)},
    optional={k: json_values for k in KEYS[2:]} | {"prevResult": st.one_of(
        json_values, st.fixed_dictionaries({"ips": json_values, "interfaces": json_values,
                                            "routes": json_values, "dns": json_values}))},
)


@HOSTILE
@given(st.binary(max_size=300))
def test_arbitrary_stdin_bytes(stdin: bytes) -> None:
    out, status, source = run(ENV, stdin)
    assert_valid_answer(out, status)


@HOSTILE
@given(configs, st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]))
def test_structured_but_wrong_configs(conf: dict, command: str) -> None:
    out, status, _ = run({**ENV, "CNI_COMMAND": command}, json.dumps(conf).encode())
    assert_valid_answer(out, status)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=100_000, max_value=2_000_000))
def test_huge_documents(size: int) -> None:
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
            "exclude_namespaces": ["x" * 50] * (size // 50), "junk": "y" * size}
    out, status, _ = run(ENV, json.dumps(conf).encode())
    assert_valid_answer(out, status)
    nested = ("[" * 100_000 + "]" * 100_000).encode()  # deeper than the JSON decoder recurses
    out, status, _ = run(ENV, nested)
    assert_valid_answer(out, status)
    assert status == 1 and json.loads(out)["code"] == 6


env_names = st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                             "CNI_PATH", "CNI_ARGS", "CNI_NETNS_OVERRIDE"])
cni_args = st.lists(st.one_of(
    st.tuples(st.sampled_from(["K8S_POD_NAME", "K8S_POD_NAMESPACE", "IgnoreUnknown", "FOO",
                               "K8S_POD_UID", ""]), st.text(string.printable, max_size=12))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(string.printable, max_size=12)), max_size=5).map(";".join)


@HOSTILE
@given(st.dictionaries(env_names, st.one_of(st.text(max_size=20), st.just("")), max_size=7),
       cni_args)
def test_hostile_environment(env_over: dict[str, str], args: str) -> None:
    env = {**ENV, **env_over}
    if "CNI_ARGS" not in env_over:
        env["CNI_ARGS"] = args
    conf = json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
                       "exclude_namespaces": ["kube-system"]}).encode()
    out, status, source = run(env, conf)
    assert_valid_answer(out, status)
