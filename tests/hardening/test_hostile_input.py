"""Hostile input to the plugin, property-based: whatever arrives on stdin or in the environment,
the answer is a valid CNI result or error on stdout, never a traceback, never an internal error,
and nothing is programmed.

Runs the protocol in-process (`dispatch`, exactly what the binary runs) with a recording pod
source, so 10,000 cases per property fit in seconds. The source answers with a plain pod or a
meshed one (drawn); the netns does not exist. The full contract, checked on every example:

- the exit status is 0 or 1 and stdout is what that status means: a CNI error object (a code of
  the spec's or ours, never 999) on 1; on 0, a result object for ADD, the version object for
  VERSION, nothing for DEL, CHECK, STATUS and GC;
- nothing is programmed: the ADD never enters its apply phase and never answers "redirected";
  a meshed pod that was looked up is never answered ok (its netns cannot be reached: fail
  closed);
- the pod source is asked only by ADD and CHECK, only for the pod CNI_ARGS names.

Each property records what its examples reached (`hypothesis.event`; `--hypothesis-show-
statistics` shows them) and asserts that the deep cases (a config that parses, a pod looked up,
a meshed pod refused) were reached often enough: a strategy that stops short of them fails.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Callable

from hypothesis import event, given, settings
from hypothesis import strategies as st

from cni.plugin import Plugin
from cni.protocol import SUPPORTED_VERSIONS, dispatch
from testbed.pods import workload

SPEC_CODES = {1, 2, 4, 5, 6, 7, 8, 11, 50, 51}
OUR_CODES = set(range(100, 106))
PLAIN_POD = {"metadata": {"name": "p", "namespace": "default"},
             "spec": {"containers": [{"name": "app"}]}}
MESHED_POD = workload("meshed-pod", name="p", namespace="default")


def setup_module() -> None:
    logging.disable(logging.CRITICAL)  # 30,000 decisions' log lines would dominate the run


def teardown_module() -> None:
    logging.disable(logging.NOTSET)


class RecordingSource:
    def __init__(self, pod: dict) -> None:
        self.pod = pod
        self.calls: list[tuple[str, str]] = []

    def get_pod(self, namespace: str, name: str) -> dict:
        self.calls.append((namespace, name))
        return self.pod


def run(env: dict[str, str], stdin: bytes, meshed: bool = False) -> str:
    """One call through `dispatch`, checked against the whole contract; returns what it
    reached (for the property's counts)."""
    source = RecordingSource(MESHED_POD if meshed else PLAIN_POD)
    plugin = Plugin(pod_source_factory=lambda conf: source)
    out, _, status = dispatch(env, stdin, plugin)
    command = env.get("CNI_COMMAND", "")
    assert status in (0, 1)
    assert b"Traceback" not in out
    if status == 1:
        err = json.loads(out)
        assert set(err) <= {"cniVersion", "code", "msg", "details"}
        assert err["code"] in SPEC_CODES | OUR_CODES, err
        assert isinstance(err["msg"], str) and err["msg"]
    elif command == "ADD":
        result = json.loads(out)
        assert isinstance(result, dict) and isinstance(result.get("cniVersion"), str), out
    elif command == "VERSION":
        assert "supportedVersions" in json.loads(out), out
    else:
        assert out == b"", (command, out)
    # nothing is programmed, and the pod source is asked only for the named pod
    assert "apply" not in plugin.phases, plugin.phases
    assert (plugin.event or {}).get("outcome") != "redirected", plugin.event
    if source.calls:
        assert command in ("ADD", "CHECK") and len(source.calls) == 1, (command, source.calls)
        assert status == 1 or not meshed, "a meshed pod was answered ok with nothing programmed"
    if status == 1:
        reached = f"error {json.loads(out)['code']}"
    else:
        reached = "ok"
    if source.calls:
        reached += ", pod looked up" + (" (meshed)" if meshed else "")
    event(f"{command or '-'}: {reached}")
    return reached


def reach_counts(cases: Callable[[], None], counts: Counter) -> Counter:
    """Run the property `cases`; the counts its examples added."""
    counts.clear()
    cases()
    return counts


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/nope",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}

TEXT = st.one_of(st.text(max_size=30), st.builds(
    lambda a, c, b: a + c + b, st.text(max_size=10), st.characters(categories=["Cs"]),
    st.text(max_size=10)))
"""Any text, lone surrogates included (st.text() leaves them out: they reach the plugin as
JSON escapes such as "\\ud800", and once made an internal error of a run dir)."""
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         TEXT)
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=6)
# each key of ours with a value it accepts (drawn three times in four, so that the other keys'
# hostile values get past the checks before them, to the stages that use them)
VALID = {
    "plugin_log_level": st.sampled_from(["debug", "info", "warn", "error", "none"]),
    "log_level": st.sampled_from(["debug", "info"]), "cni_agent_run_dir": TEXT,
    "pod_namespace": TEXT, "log_uds_address": TEXT,
    "exclude_namespaces": st.lists(TEXT, max_size=3) | st.just(["default"]),
    "kubernetes": st.fixed_dictionaries({}, optional={
        "kubeconfig": TEXT, "exclude_namespaces": st.lists(TEXT, max_size=2),
        "intercept_type": st.sampled_from(["", "iptables"])}),
    "iptables_backend": st.sampled_from(["auto", "nft", "legacy", "python-iptables"]),
    "pod_lookup_attempts": st.integers(1, 5), "native_nftables": st.booleans(),
    "pod_lookup_interval_seconds": st.floats(0, 0.001),
    "pod_lookup_deadline_seconds": st.floats(0.01, 5),
}
KEYS = ["cniVersion", "name", "type", "prevResult", *VALID]
versions = st.one_of(st.sampled_from(SUPPORTED_VERSIONS), st.text(max_size=8), json_scalars)
prev_results = st.one_of(json_values, st.fixed_dictionaries(
    {"ips": json_values, "interfaces": json_values, "routes": json_values, "dns": json_values}))
anything = st.fixed_dictionaries(
    {"cniVersion": versions, "name": st.one_of(st.just("net"), json_scalars)},
    optional={k: json_values for k in KEYS[2:]} | {"prevResult": prev_results})
"""Anything in every key: mostly stopped by the protocol's own checks."""
one_hostile_key = st.builds(
    lambda conf, key, value: {**conf, key: value},
    st.fixed_dictionaries({"cniVersion": st.sampled_from(["1.0.0", "1.1.0"]),
                           "name": st.just("net"), "type": st.just("istio-cni")},
                          optional=VALID | {"prevResult": prev_results}),
    st.sampled_from([*VALID, "prevResult"]), st.one_of(json_values, TEXT))
"""A config the protocol accepts, every key of ours valid but one, which holds anything: the
hostile value reaches the stage that uses it."""
configs = st.sampled_from([one_hostile_key] * 3 + [anything]).flatmap(lambda kind: kind)
valid_config_bytes = st.builds(lambda conf: json.dumps(conf).encode(), configs)


def _damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` cut short, or with a byte replaced or inserted: bytes that are almost a config."""
    if not data:
        return st.just(data)
    at = st.integers(0, len(data) - 1)
    return st.one_of(
        st.just(data),
        at.map(lambda i: data[:i]),
        st.tuples(at, st.integers(0, 255)).map(lambda t: data[:t[0]] + bytes([t[1]])
                                               + data[t[0] + 1:]),
        st.tuples(at, st.binary(min_size=1, max_size=3)).map(lambda t: data[:t[0]] + t[1]
                                                             + data[t[0]:]))


def test_arbitrary_stdin_bytes() -> None:
    counts: Counter = Counter()

    @settings()  # the profile's size: 10,000 in CI
    @given(st.one_of(st.binary(max_size=300), valid_config_bytes.flatmap(_damaged)))
    def cases(stdin: bytes) -> None:
        counts[run(ENV, stdin)] += 1

    reached = reach_counts(cases, counts)
    total = sum(reached.values())
    assert reached["error 6"] >= total // 10, reached  # undecodable
    assert total - reached["error 6"] >= total // 5, reached  # decoded: the config was read
    assert sum(n for k, n in reached.items() if "looked up" in k) >= total // 50, reached


def test_structured_but_wrong_configs() -> None:
    counts: Counter = Counter()

    @settings()
    @given(configs, st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]),
           st.booleans())
    def cases(conf: dict, command: str, meshed: bool) -> None:
        counts[run({**ENV, "CNI_COMMAND": command}, json.dumps(conf).encode(), meshed)] += 1

    reached = reach_counts(cases, counts)
    total = sum(reached.values())
    assert reached["error 7"] >= total // 10, reached  # a config value refused by name
    # (6.6 % of 1,000 in dev, 4.6 % of 10,000 in ci)
    assert sum(n for k, n in reached.items() if "looked up" in k) >= total // 40, reached
    # a meshed pod whose netns cannot be reached: refused (8), never ok
    assert reached["error 8, pod looked up (meshed)"] >= total // 200, reached


@settings(max_examples=20)
@given(st.integers(min_value=100_000, max_value=2_000_000))
def test_huge_documents(size: int) -> None:
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
            "exclude_namespaces": ["x" * 50] * (size // 50), "junk": "y" * size}
    run(ENV, json.dumps(conf).encode())
    nested = ("[" * 100_000 + "]" * 100_000).encode()  # deeper than the JSON decoder recurses
    assert run(ENV, nested) == "error 6"


env_names = st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                             "CNI_PATH", "CNI_ARGS", "CNI_NETNS_OVERRIDE"])
cni_args = st.one_of(st.just(ENV["CNI_ARGS"]), st.builds(
    "K8S_POD_NAMESPACE={};K8S_POD_NAME={}".format, st.sampled_from(["default", "kube-system"]),
    st.text(string.printable, max_size=12)), st.lists(st.one_of(
    st.tuples(st.sampled_from(["K8S_POD_NAME", "K8S_POD_NAMESPACE", "IgnoreUnknown", "FOO",
                               "K8S_POD_UID", ""]), st.text(string.printable, max_size=12))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(string.printable, max_size=12)), max_size=5).map(";".join))
"""CNI_ARGS: as a runtime sends it (so that the call reaches the pod lookup), with a pod name
of any printable text, or any list of pairs and words."""


def test_hostile_environment() -> None:
    counts: Counter = Counter()
    conf = json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
                       "exclude_namespaces": ["kube-system"]}).encode()

    @settings()
    @given(st.dictionaries(env_names, st.one_of(st.text(max_size=20), st.just("")),
                           max_size=3), cni_args, st.booleans())
    def cases(env_over: dict[str, str], args: str, meshed: bool) -> None:
        env = {**ENV, **env_over}
        if "CNI_ARGS" not in env_over:
            env["CNI_ARGS"] = args
        counts[run(env, conf, meshed)] += 1

    reached = reach_counts(cases, counts)
    total = sum(reached.values())
    assert reached["error 4"] >= total // 10, reached  # the environment refused
    assert sum(n for k, n in reached.items() if "looked up" in k) >= total // 20, reached
    assert reached["error 8, pod looked up (meshed)"] >= total // 100, reached
