"""Upstream's skip rules, one table row each, in upstream's order (pure tier)."""

from __future__ import annotations

import pytest

from cni.decision import decide, decide_before_lookup, parse_go_bool
from cni.podinfo import extract_pod_info

STATUS = {"sidecar.istio.io/status": '{"initContainers":["istio-validation"]}'}


def pod(containers=("app", "istio-proxy"), init=(), annotations=STATUS, labels=None, env=None,
        args=("proxy", "sidecar")):
    def c(name):
        out = {"name": name}
        if name == "istio-proxy":
            out["args"] = list(args)
            out["env"] = [{"name": k, "value": v} for k, v in (env or {}).items()]
        return out

    return extract_pod_info({
        "metadata": {"name": "p", "namespace": "ns", "annotations": dict(annotations or {}),
                     "labels": dict(labels or {})},
        "spec": {"containers": [c(n) for n in containers],
                 "initContainers": [c(n) for n in init]},
    })


@pytest.mark.parametrize(
    ("p", "redirect", "reason_part"),
    [
        (pod(), True, "redirecting"),
        (pod(init=("istio-init",)), False, "istio-init"),
        (pod(containers=("istio-init", "istio-proxy")), False, "istio-init"),
        (pod(env={"DISABLE_ENVOY": "true"}), False, "DISABLE_ENVOY"),
        (pod(env={"DISABLE_ENVOY": "nope"}), True, "redirecting"),
        (pod(containers=("app",)), False, "no istio-proxy"),
        (pod(containers=("app",), init=("istio-validation", "istio-proxy")), True, "redirecting"),
        (pod(args=("proxy", "router")), False, "proxy type 'router'"),
        (pod(args=("proxy",)), True, "redirecting"),
        (pod(annotations={**STATUS, "sidecar.istio.io/inject": "false"}), False, "injection"),
        (pod(annotations={**STATUS, "sidecar.istio.io/inject": "enabled"}), True, "redirecting"),
        (pod(labels={"sidecar.istio.io/inject": "false"},
             annotations={**STATUS, "sidecar.istio.io/inject": "true"}), False, "injection"),
        (pod(labels={"sidecar.istio.io/inject": "true"},
             annotations={**STATUS, "sidecar.istio.io/inject": "false"}), True, "redirecting"),
        (pod(annotations={}), False, "sidecar.istio.io/status"),
        (pod(annotations={**STATUS, "sidecar.istio.io/interceptionMode": "NONE"}), False, "NONE"),
        # order: istio-init wins over a missing status annotation
        (pod(init=("istio-init",), annotations={}), False, "istio-init"),
    ],
)
def test_decide(p, redirect, reason_part):
    d = decide(p)
    assert d.redirect is redirect
    assert reason_part in d.reason


@pytest.mark.parametrize(
    ("name", "ns", "agent_ns", "excluded", "reason_part"),
    [
        ("istio-cni-node-abcde", "istio-system", "istio-system", frozenset(), "agent pod"),
        ("", "", "istio-system", frozenset(), "not a kubernetes pod"),
        ("web", "", "istio-system", frozenset(), "not a kubernetes pod"),
        ("web", "kube-system", "istio-system", frozenset({"kube-system"}), "excluded"),
    ],
)
def test_skips_before_lookup(name, ns, agent_ns, excluded, reason_part):
    d = decide_before_lookup(name, ns, agent_ns, excluded)
    assert d is not None and not d.redirect and reason_part in d.reason


@pytest.mark.parametrize(
    ("name", "ns", "agent_ns", "excluded"),
    [
        ("istio-cni-node-abcde", "default", "istio-system", frozenset()),  # wrong namespace
        ("web", "default", "istio-system", frozenset({"kube-system"})),
        ("web", "kube-systemx", "istio-system", frozenset({"kube-system"})),  # exact match only
    ],
)
def test_needs_lookup(name, ns, agent_ns, excluded):
    assert decide_before_lookup(name, ns, agent_ns, excluded) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("t", True), ("TRUE", True), ("True", True), ("0", False), ("F", False),
     ("false", False), ("yes", None), ("", None), ("tRuE", None)],
)
def test_go_parse_bool(text, value):
    assert parse_go_bool(text) is value
