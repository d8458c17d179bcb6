"""A pod from the API that is not the shape of a Pod, or asks for an impossible proxy identity:
a clear error naming the field, before any rule is built; never an internal error (pure tier,
plus the plugin through the CNI protocol with a pod source serving the bad pod)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import InvalidAnnotation, InvalidPod
from cni.pipeline import plan
from cni.plugin import Plugin
from cni.podinfo import extract_pod_info
from cni.protocol import dispatch

STATUS = {"sidecar.istio.io/status": "{}"}


def meshed(**proxy_extra: Any) -> dict[str, Any]:
    proxy = {"name": "istio-proxy", "args": ["proxy", "sidecar"], **proxy_extra}
    return {"metadata": {"name": "p", "namespace": "n", "annotations": dict(STATUS)},
            "spec": {"containers": [{"name": "app"}, proxy]},
            "status": {"podIPs": [{"ip": "10.1.0.5"}]}}


def set_field(path: list[Any], value: Any) -> dict[str, Any]:
    root = meshed()
    node: Any = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return root


MALFORMED = [
    (["metadata"], "x", "metadata is a string"),
    (["status"], "x", "status is a string"),
    (["spec"], [1], "spec is an array"),
    (["metadata", "annotations"], ["a"], "metadata.annotations is an array"),
    (["metadata", "annotations", "sidecar.istio.io/status"], 5,
     "metadata.annotations['sidecar.istio.io/status'] is a number"),
    (["metadata", "labels"], "app=x", "metadata.labels is a string"),
    (["metadata", "name"], {"a": 1}, "metadata.name is an object"),
    (["spec", "containers"], {"name": "istio-proxy"}, "spec.containers is an object"),
    (["spec", "containers", 0], "app", "spec.containers[0] is a string"),
    (["spec", "containers", 1, "env"], 7, "spec.containers[1].env is a number"),
    (["spec", "containers", 1, "env"], [{"name": 1, "value": "x"}],
     "spec.containers[1].env[0].name is a number"),
    (["spec", "containers", 1, "args"], ["proxy", 3], "spec.containers[1].args[1] is a number"),
    (["spec", "containers", 1, "securityContext"], "root",
     "spec.containers[1].securityContext is a string"),
    (["spec", "containers", 1, "securityContext"], {"runAsUser": "1337"},
     "spec.containers[1].securityContext.runAsUser is a string"),
    (["spec", "containers", 1, "securityContext"], {"runAsGroup": 1.5},
     "spec.containers[1].securityContext.runAsGroup is a number"),
    (["spec", "containers", 1, "securityContext"], {"runAsUser": True},
     "spec.containers[1].securityContext.runAsUser is a boolean"),
    (["status", "podIPs"], [{"ip": 10}], "status.podIPs[0].ip is a number"),
    (["status", "podIP"], ["10.0.0.1"], "status.podIP is an array"),
]


@pytest.mark.parametrize(("path", "value", "says"), MALFORMED)
def test_malformed_pod_names_the_field(path: list[Any], value: Any, says: str) -> None:
    with pytest.raises(InvalidPod) as err:
        extract_pod_info(set_field(path, value))
    assert says in err.value.msg
    assert err.value.code == 100


def test_a_pod_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(InvalidPod, match="pod is an array"):
        extract_pod_info([{"metadata": {}}])


def test_absent_and_null_fields_are_unset_not_errors() -> None:
    info = extract_pod_info({"metadata": {"name": "p", "annotations": None, "labels": None},
                             "spec": {"containers": [{"name": "istio-proxy", "env": None,
                                                      "securityContext": None,
                                                      "args": None}],
                                      "initContainers": None},
                             "status": None})
    assert info.has_proxy and info.annotations == {} and info.pod_ips == ()
    assert info.proxy_uid is None and info.proxy_env == {}


def test_env_from_value_from_is_ignored_not_an_error() -> None:
    pod = meshed(env=[{"name": "ISTIO_DUAL_STACK", "valueFrom": {"fieldRef": {}}},
                      {"name": "INVALID_DROP", "value": "true"}])
    assert extract_pod_info(pod).proxy_env == {"INVALID_DROP": "true"}


@pytest.mark.parametrize(("field", "value"), [
    ("runAsUser", 2**64), ("runAsUser", -5), ("runAsUser", 4294967295),
    ("runAsGroup", -1), ("runAsGroup", 2**32),
])
def test_proxy_ids_outside_the_kernel_range_are_invalid_values(field: str, value: int) -> None:
    with pytest.raises(InvalidAnnotation) as err:
        plan(meshed(securityContext={field: value}))
    assert f"securityContext.{field}={value}" in err.value.msg
    assert "0-4294967294" in err.value.msg


def test_proxy_ids_at_the_range_ends_are_kept() -> None:
    _, _, redirect = plan(meshed(securityContext={"runAsUser": 4294967294, "runAsGroup": 1}))
    assert redirect is not None
    assert (redirect.proxy_uid, redirect.proxy_gid) == (4294967294, 1)


def test_an_out_of_range_id_on_a_skipped_pod_does_not_fail_it() -> None:
    pod = meshed(securityContext={"runAsUser": -5})
    del pod["metadata"]["annotations"]["sidecar.istio.io/status"]
    info, decision, redirect = plan(pod)
    assert not decision.redirect and redirect is None


class Source:
    def __init__(self, pod: Any) -> None:
        self.pod = pod

    def get_pod(self, namespace: str, name: str) -> Any:
        return self.pod


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/icni-none",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=n;K8S_POD_NAME=p"}


def add(pod: Any, tmp_path: Any) -> tuple[dict[str, Any], bytes, int, list[BaseException]]:
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
            "cni_agent_run_dir": str(tmp_path)}
    internal: list[BaseException] = []
    out, err, status = dispatch(ENV, json.dumps(conf).encode(),
                                Plugin(pod_source_factory=lambda c: Source(pod)),
                                on_internal_error=internal.append)
    return json.loads(out), err, status, internal


@pytest.mark.parametrize(("pod", "says"), [
    ({"metadata": "x"}, "metadata is a string"),
    ({"metadata": {"name": "p"}, "status": "Running"}, "status is a string"),
])
def test_plugin_answers_a_malformed_pod_with_its_field_not_999(pod: Any, says: str,
                                                               tmp_path: Any) -> None:
    body, err, status, internal = add(pod, tmp_path)
    assert (status, body["code"], internal) == (1, 100, [])
    assert says in body["msg"] and b"Traceback" not in err


def test_plugin_refuses_an_out_of_range_uid_before_touching_the_netns(tmp_path: Any) -> None:
    """The netns does not exist: reaching it would be code 8; the uid is refused first."""
    body, _, status, internal = add(meshed(securityContext={"runAsUser": 2**64}), tmp_path)
    assert (status, body["code"], internal) == (1, 101, [])
    assert "runAsUser=18446744073709551616" in body["msg"]
