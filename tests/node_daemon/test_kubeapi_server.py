"""The test API server speaks well enough for the official `kubernetes` client.

What the node agent relies on: LIST with field/label selectors, WATCH replay from a
resourceVersion, 410 expiry and resume by re-listing, bookmarks (also periodic), stalled
watches, PATCH of pods/status, DELETE with preconditions, events through both events APIs and
their PATCH, and its node: GET, and PATCH of
nodes and nodes/status with the patch types the API applies (strategic merge by merge key).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.nodes import READINESS_TAINT, make_node
from testbed.wait import wait_for

NODE = "node-a"
GUARD = 30


def make_pod(name: str, node: str = NODE, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Pending"},
    }


@pytest.fixture
def core(kube_api: KubeApiServer) -> Iterator[client.CoreV1Api]:
    api_client = kubernetes_api_client(kube_api)
    yield client.CoreV1Api(api_client)
    api_client.close()


def take(n: int, func: Any, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """The first `n` events of a watch as (type, name), then stop it (no waiting for a timeout).

    `timeoutSeconds` is only a guard: a bug fails the test instead of hanging it.
    """
    w = watch.Watch()
    seen = []
    for event in w.stream(func, *args, timeout_seconds=GUARD, **kwargs):
        seen.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
        if len(seen) == n:
            w.stop()
    return seen


def test_list_with_field_and_label_selectors(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a", app="web"))
    kube_api.add_pod(make_pod("b", app="db"))
    kube_api.add_pod(make_pod("c", node="node-b", app="web"))
    kube_api.add_pod(make_pod("d", ns="other", app="web"))

    on_node = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}")
    web_on_node = core.list_pod_for_all_namespaces(
        field_selector=f"spec.nodeName={NODE}", label_selector="app=web"
    )
    in_default = core.list_namespaced_pod("default", label_selector="app!=db")

    assert [p.metadata.name for p in on_node.items] == ["a", "b", "d"]
    assert [p.metadata.name for p in web_on_node.items] == ["a", "d"]
    assert [p.metadata.name for p in in_default.items] == ["a", "c"]
    assert int(on_node.metadata.resource_version) == kube_api.store.resource_version
    (request,) = [r for r in kube_api.requests if r.query.get("labelSelector") == "app=web"]
    assert request.query["fieldSelector"] == f"spec.nodeName={NODE}"


def test_unsupported_field_selector_is_a_400(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as caught:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=x")

    assert caught.value.status == 400


def test_watch_replays_changes_after_resource_version(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.add_pod(make_pod("b"))
    kube_api.update_pod("default", "a", {"status": {"phase": "Running"}})
    kube_api.delete_pod("default", "b")

    events = take(3, core.list_namespaced_pod, "default", resource_version=rv)

    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_watch_without_resource_version_starts_with_current_state(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a"))
    kube_api.add_pod(make_pod("b", node="node-b"))

    events = take(1, core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={NODE}")

    assert events == [("ADDED", "a")]


def test_watch_with_selector_sees_a_pod_leave_as_deleted(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a", app="web"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.update_pod("default", "a", {"metadata": {"labels": {"app": "other"}}})
    kube_api.add_pod(make_pod("z", app="web"))

    events = take(
        2, core.list_namespaced_pod, "default", label_selector="app=web", resource_version=rv
    )

    assert events == [("DELETED", "a"), ("ADDED", "z")]


def test_watch_bookmarks_only_when_asked(kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.bookmark()
    kube_api.add_pod(make_pod("a"))

    with_bookmarks = take(
        2, core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True
    )
    without = take(1, core.list_namespaced_pod, "default", resource_version=rv)

    assert [t for t, _ in with_bookmarks] == ["BOOKMARK", "ADDED"]
    assert without == [("ADDED", "a")]


def test_watch_from_expired_resource_version_is_410_then_resumes(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a"))
    old_rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.update_pod("default", "a", {"status": {"phase": "Running"}})
    kube_api.compact()

    with pytest.raises(client.ApiException) as caught:
        take(1, core.list_namespaced_pod, "default", resource_version=old_rv)
    assert caught.value.status == 410

    # Resume the way informers do: re-list, then watch from the list's resourceVersion.
    fresh = core.list_namespaced_pod("default")
    assert fresh.items[0].status.phase == "Running"
    kube_api.add_pod(make_pod("b"))
    resumed = take(
        1, core.list_namespaced_pod, "default", resource_version=fresh.metadata.resource_version
    )
    assert resumed == [("ADDED", "b")]


def test_expired_watch_is_an_error_event_with_a_status(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    old_rv = kube_api.add_pod(make_pod("a"))["metadata"]["resourceVersion"]
    kube_api.update_pod("default", "a", {"status": {"phase": "Running"}})
    kube_api.compact()

    resp = core.list_namespaced_pod(
        "default", watch=True, resource_version=old_rv, _preload_content=False
    )
    lines = [json.loads(line) for line in resp.data.splitlines() if line]

    assert len(lines) == 1
    assert lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_patch_status_subresource(kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    before = kube_api.add_pod(make_pod("a"))

    patched = core.patch_namespaced_pod_status(
        "a",
        "default",
        {
            "metadata": {"labels": {"cni.istio.io/uninitialized": "true"}},
            "spec": {"nodeName": "elsewhere"},
            "status": {"phase": "Failed"},
        },
    )

    assert patched.metadata.labels == {"cni.istio.io/uninitialized": "true"}
    assert patched.spec.node_name == NODE  # the status subresource leaves spec alone
    assert patched.status.phase == "Failed"
    assert int(patched.metadata.resource_version) > int(before["metadata"]["resourceVersion"])
    (request,) = [r for r in kube_api.requests if r.method == "PATCH"]
    assert request.path == "/api/v1/namespaces/default/pods/a/status"
    assert "merge-patch+json" in request.headers["Content-Type"]


def test_patch_pod_with_json_patch_leaves_status_alone(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a", app="web"))

    patched = core.patch_namespaced_pod(
        "a",
        "default",
        [
            {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
            {"op": "replace", "path": "/metadata/labels/app", "value": "api"},
            {"op": "replace", "path": "/status/phase", "value": "Failed"},
        ],
    )

    assert patched.metadata.annotations == {"k": "v"}
    assert patched.metadata.labels == {"app": "api"}
    assert patched.status.phase == "Pending"


def test_patch_with_stale_resource_version_conflicts(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_pod(make_pod("a"))

    with pytest.raises(client.ApiException) as caught:
        core.patch_namespaced_pod("a", "default", {"metadata": {"resourceVersion": "1"}})

    assert caught.value.status == 409


def test_delete_with_preconditions(kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    pod = kube_api.add_pod(make_pod("a"))
    uid, rv = pod["metadata"]["uid"], pod["metadata"]["resourceVersion"]

    for wrong in (client.V1Preconditions(uid="other-uid"),
                  client.V1Preconditions(uid=uid, resource_version="1")):  # fmt: skip
        with pytest.raises(client.ApiException) as caught:
            core.delete_namespaced_pod(
                "a", "default", body=client.V1DeleteOptions(preconditions=wrong)
            )
        assert caught.value.status == 409
        assert json.loads(caught.value.body)["reason"] == "Conflict"

    right = client.V1Preconditions(uid=uid, resource_version=rv)
    core.delete_namespaced_pod("a", "default", body=client.V1DeleteOptions(preconditions=right))

    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod("a", "default")
    assert caught.value.status == 404
    assert json.loads(caught.value.body)["reason"] == "NotFound"


def test_an_idle_watch_gets_periodic_bookmarks_only_when_asked(
        kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    """As kube-apiserver's watch cache, about once a minute there (here: as set)."""
    rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.store.bookmark_interval = 0.05
    assert take(3, core.list_namespaced_pod, "default", resource_version=rv,
                allow_watch_bookmarks=True) == [("BOOKMARK", "")] * 3
    kube_api.add_pod(make_pod("a"))
    assert take(1, core.list_namespaced_pod, "default", resource_version=rv) == [("ADDED", "a")]


def test_stalled_watches_hold_their_events_until_released(
        kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    kube_api.stall_watches()
    seen: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: seen.extend(
        take(1, core.list_namespaced_pod, "default", resource_version=rv)))
    reader.start()
    kube_api.add_pod(make_pod("a"))
    wait_for(lambda: kube_api.count("GET", "/namespaces/default/pods$") == 2, what="the watch")
    assert core.read_namespaced_pod("a", "default").metadata.name == "a"  # the rest is served
    assert seen == [] and reader.is_alive()
    kube_api.release_watches()
    reader.join(GUARD)
    assert seen == [("ADDED", "a")]


def test_an_event_is_patched_as_client_go_counts_a_repeat(
        kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    created = core.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="a."), reason="RepairBrokenPod",
        involved_object=client.V1ObjectReference(kind="Pod", namespace="default", name="a"),
        message="m", count=1, last_timestamp="2024-01-01T00:00:00Z"))
    name = created.metadata.name
    core.patch_namespaced_event(name, "default",
                                {"count": 2, "lastTimestamp": "2024-01-01T00:01:00Z"})
    [event] = kube_api.events
    assert (event["count"], event["lastTimestamp"], event["message"]) == (
        2, "2024-01-01T00:01:00Z", "m")
    assert int(event["metadata"]["resourceVersion"]) > int(created.metadata.resource_version)
    kube_api.expire_events()
    with pytest.raises(client.ApiException) as gone:
        core.patch_namespaced_event(name, "default", {"count": 3})
    assert gone.value.status == 404


def test_events_through_both_apis(kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    involved = client.V1ObjectReference(kind="Pod", namespace="default", name="a", uid="u-1")
    core.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="a."),
            involved_object=involved,
            reason="DeleteBrokenPod",
            message="pod detected as broken, deleted",
            type="Warning",
            source=client.V1EventSource(component="cni-repair"),
        ),
    )
    events_v1 = client.EventsV1Api(core.api_client)
    events_v1.create_namespaced_event(
        "default",
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="a.repair"),
            event_time="2024-01-01T00:00:00.000000Z",
            reason="RepairedPod",
            action="Repair",
            reporting_controller="istio.io/cni-repair",
            reporting_instance="istio-cni-node-x",
            regarding=involved,
            type="Normal",
        ),
    )

    first, second = kube_api.events
    assert (first["reason"], first["source"]["component"]) == ("DeleteBrokenPod", "cni-repair")
    assert first["metadata"]["name"].startswith("a.")
    assert (second["reason"], second["regarding"]["name"]) == ("RepairedPod", "a")
    assert [r.path for r in kube_api.requests] == [
        "/api/v1/namespaces/default/events",
        "/apis/events.k8s.io/v1/namespaces/default/events",
    ]


def test_token_required(kube_api: KubeApiServer) -> None:
    kube_api.require_token("good-token")
    anonymous = client.CoreV1Api(kubernetes_api_client(kube_api, token="bad-token"))
    authorised = client.CoreV1Api(kubernetes_api_client(kube_api))

    with pytest.raises(client.ApiException) as caught:
        anonymous.list_pod_for_all_namespaces()
    assert caught.value.status == 401
    assert authorised.list_pod_for_all_namespaces().items == []


def test_injected_server_error(kube_api: KubeApiServer, core: client.CoreV1Api) -> None:
    kube_api.fail_next(r"/pods$", 500)

    with pytest.raises(client.ApiException) as caught:
        core.list_pod_for_all_namespaces()
    assert caught.value.status == 500
    assert core.list_pod_for_all_namespaces().items == []


def test_tls_with_the_servers_ca(kube_api_tls: KubeApiServer) -> None:
    kube_api_tls.add_pod(make_pod("a"))
    core = client.CoreV1Api(kubernetes_api_client(kube_api_tls))

    assert core.read_namespaced_pod("a", "default").spec.node_name == NODE


# --- nodes --------------------------------------------------------------------------------------

def _conditions(node: Any) -> dict[str, str]:
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}


def test_nodes_are_cluster_scoped_get_and_list(kube_api: KubeApiServer,
                                               core: client.CoreV1Api) -> None:
    kube_api.add_node(make_node("node-a", taints=[READINESS_TAINT]))
    kube_api.add_node(make_node("node-b"))
    node = core.read_node("node-a")
    assert node.metadata.namespace is None and node.metadata.uid
    assert [(t.key, t.effect) for t in node.spec.taints] == [("cni.istio.io/not-ready",
                                                              "NoSchedule")]
    names = [n.metadata.name for n in core.list_node().items]
    assert names == ["node-a", "node-b"]
    with pytest.raises(client.ApiException) as err:
        core.read_node("node-x")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'nodes "node-x" not found'


def test_strategic_merge_on_node_status_merges_conditions_by_type(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_node(make_node("node-a"))
    mine = {"type": "IstioCNIReady", "status": "False", "reason": "PluginNotInstalled"}
    core.patch_node_status("node-a", {"status": {"conditions": [mine]}},
                           _content_type="application/strategic-merge-patch+json")
    after = kube_api.get_node("node-a")
    assert _conditions(after) == {"MemoryPressure": "False", "DiskPressure": "False",
                                  "PIDPressure": "False", "Ready": "True",
                                  "IstioCNIReady": "False"}
    core.patch_node_status("node-a", {"status": {"conditions": [
        {"type": "IstioCNIReady", "status": "True"}]}},
        _content_type="application/strategic-merge-patch+json")
    condition = [c for c in kube_api.get_node("node-a")["status"]["conditions"]
                 if c["type"] == "IstioCNIReady"]
    assert condition == [{**mine, "status": "True"}]  # merged into the one item, not added
    core.patch_node_status("node-a", {"status": {"conditions": [
        {"type": "IstioCNIReady", "$patch": "delete"}]}},
        _content_type="application/strategic-merge-patch+json")
    assert "IstioCNIReady" not in _conditions(kube_api.get_node("node-a"))
    assert len(kube_api.get_node("node-a")["status"]["addresses"]) == 2


def test_a_json_merge_patch_replaces_the_whole_condition_list(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    """Why the agent patches its condition with a strategic merge patch."""
    kube_api.add_node(make_node("node-a"))
    core.patch_node_status("node-a", {"status": {"conditions": [{"type": "X", "status": "True"}]}},
                           _content_type="application/merge-patch+json")
    assert _conditions(kube_api.get_node("node-a")) == {"X": "True"}


def test_node_patch_and_status_patch_change_only_their_part(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_node(make_node("node-a", taints=[READINESS_TAINT]))
    core.patch_node("node-a", {"spec": {"taints": None}, "status": {"conditions": None}})
    node = kube_api.get_node("node-a")
    assert "taints" not in node["spec"] and len(node["status"]["conditions"]) == 4
    core.patch_node_status("node-a", {"spec": {"unschedulable": True},
                                      "status": {"phase": "Running"}})
    node = kube_api.get_node("node-a")
    assert "unschedulable" not in node["spec"] and node["status"]["phase"] == "Running"


def test_json_patch_test_op_guards_the_node_s_taints(
    kube_api: KubeApiServer, core: client.CoreV1Api
) -> None:
    kube_api.add_node(make_node("node-a", taints=[READINESS_TAINT]))
    stale = [{"op": "test", "path": "/spec/taints", "value": []},
             {"op": "replace", "path": "/spec/taints", "value": []}]
    with pytest.raises(client.ApiException) as err:
        core.patch_node("node-a", stale, _content_type="application/json-patch+json")
    assert err.value.status == 422
    assert kube_api.get_node("node-a")["spec"]["taints"] == [READINESS_TAINT]
    fresh = [{"op": "test", "path": "/spec/taints", "value": [READINESS_TAINT]},
             {"op": "replace", "path": "/spec/taints", "value": []}]
    core.patch_node("node-a", fresh, _content_type="application/json-patch+json")
    assert kube_api.get_node("node-a")["spec"]["taints"] == []
