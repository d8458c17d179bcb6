"""The repair controller against the API stand-in: detection, each mode, retries, resumption.

The real `kubernetes` client talks HTTP to `KubeApiServer`; the controller runs its real
threads. Tests wait on conditions (bounded polls), never on sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from node_daemon.config import RepairConfig
from node_daemon.controller import MAX_ATTEMPTS, RepairController
from testbed.controller import NoNetns, start_controller
from testbed.kubeapi import kubernetes_api_client
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod, terminated, validation_status
from testbed.wait import wait_for

CFG = RepairConfig(node_name=NODE)


@pytest.fixture
def controller(kube_api, cleanup) -> Callable[..., RepairController]:
    """Factory: a started, synced controller for a config; stopped after the test."""

    def make(cfg: RepairConfig, finder=None, watch_timeout: int = 300) -> RepairController:
        return start_controller(cleanup, kubernetes_api_client(kube_api), cfg, finder=finder,
                                watch_timeout=watch_timeout)

    return make


def _events(kube_api, reason):
    return [e for e in kube_api.events if e["reason"] == reason]


def test_watch_is_scoped_to_this_node_and_extra_selectors(kube_api, controller):
    cfg = replace(CFG, delete_pods=True, field_selectors="metadata.namespace=shop",
                  label_selectors="app=productpage")
    c = controller(cfg)
    kube_api.add_pod(make_pod("other-node", node="node-b", init_status=BROKEN_WAITING))
    kube_api.add_pod(make_pod("mine", init_status=BROKEN_WAITING))
    wait_for(lambda: not any(p["metadata"]["name"] == "mine" for p in kube_api.store.list(
        _all())[0]), what="mine deleted")
    assert [p["metadata"]["name"] for p in kube_api.store.list(_all())[0]] == ["other-node"]
    lists = [r for r in kube_api.requests if r.path == "/api/v1/pods"]
    assert lists and all(r.query["fieldSelector"] == f"metadata.namespace=shop,spec.nodeName="
                         f"{NODE}" and r.query["labelSelector"] == "app=productpage"
                         for r in lists)
    # the DELETED event reaches the informer after the API has deleted the pod
    wait_for(lambda: not c.informer.cache, what="the deletion seen by the informer")


def _all():
    from testbed.kubeapi.store import parse_selector

    return parse_selector(None, "", "")


def test_delete_mode_uses_preconditions_and_posts_an_event(kube_api, controller):
    c = controller(replace(CFG, delete_pods=True))
    healthy = kube_api.add_pod(make_pod("healthy", init_status=COMPLETED))
    broken = kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    # the metric is bumped last (after the Event is posted), so it is what to wait on
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="delete",
                                     result="success") == 1, what="delete counted")
    deletes = [r for r in kube_api.requests if r.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].path.endswith("/pods/broken")
    assert deletes[0].body["preconditions"] == {
        "uid": broken["metadata"]["uid"],
        "resourceVersion": broken["metadata"]["resourceVersion"]}
    ev = _events(kube_api, "DeleteBrokenPod")[0]
    assert ev["message"] == "pod detected as broken, deleted" and ev["type"] == "Warning"
    assert ev["involvedObject"]["uid"] == broken["metadata"]["uid"]
    assert ev["source"]["component"] == "cni-repair"
    assert kube_api.get_pod("shop", "healthy")["metadata"]["uid"] == healthy["metadata"]["uid"]
    assert c.metrics.value("istio_cni_repair_pods_repaired_total", type="delete",
                           result="success") == 1


def test_delete_conflict_is_retried_then_succeeds(kube_api, controller):
    kube_api.fail_next(r"/pods/broken$", 409, count=2, method="DELETE")
    c = controller(replace(CFG, delete_pods=True))
    kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="delete",
                                     result="success") == 1, what="delete after retries")
    assert c.metrics.value("istio_cni_repair_pods_repaired_total", type="delete",
                           result="fail") == 2
    assert kube_api.count("DELETE", r"/pods/broken$") == 3


def test_label_mode_merge_patches_status_and_skips_labelled(kube_api, controller):
    c = controller(replace(CFG, label_pods=True))
    pod = kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: kube_api.get_pod("shop", "broken")["metadata"]["labels"].get(
        "cni.istio.io/uninitialized") == "true", what="label")
    patch = [r for r in kube_api.requests if r.method == "PATCH"][0]
    assert patch.path.endswith("/pods/broken/status")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    # the UID is the patch's precondition: never the label of a pod re-created under the name
    assert patch.body == {"metadata": {"uid": pod["metadata"]["uid"],
                                       "labels": {"cni.istio.io/uninitialized": "true"}}}
    # The label's own MODIFIED event brings the pod back: now it is skipped, not patched again.
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="label",
                                     result="skip") >= 1, what="skip")
    assert kube_api.count("PATCH", "/pods/") == 1
    assert [e["message"] for e in _events(kube_api, "LabelBrokenPod")] == [
        "pod detected as broken, labeled"]


def test_pod_becoming_broken_later_is_caught_from_the_watch(kube_api, controller):
    c = controller(replace(CFG, label_pods=True))
    kube_api.add_pod(make_pod("later", init_status=validation_status({"running": {}})))
    wait_for(lambda: "shop/later" in c.informer.cache, what="pod cached")
    assert kube_api.count("PATCH", "/pods/") == 0
    kube_api.update_pod("shop", "later", {"status": {"initContainerStatuses": [BROKEN_WAITING]}})
    wait_for(lambda: kube_api.count("PATCH", "/pods/later/status") == 1, what="label patch")


def test_repair_mode_failure_retries_five_times_then_gives_up(kube_api, controller):
    finder = NoNetns()
    c = controller(replace(CFG, repair_pods=True, delete_pods=True), finder)
    broken = kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: c.dropped == {broken["metadata"]["uid"]: "shop/broken"}, what="given up")
    assert finder.calls == MAX_ATTEMPTS
    assert c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                           result="fail") == MAX_ATTEMPTS
    assert kube_api.count("DELETE", "/pods/") == 0  # repair wins over delete: one mode only
    [event] = _events(kube_api, "RepairBrokenPod")  # one Event, told five times
    assert "no network namespace on this node has IP 10.213.0.9" in event["message"]
    assert event["count"] == MAX_ATTEMPTS


def test_no_mode_enabled_does_nothing(kube_api, controller):
    c = controller(CFG)
    kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: "shop/broken" in c.informer.cache and c.queue.idle(), what="reconciled")
    assert not [r for r in kube_api.requests if r.method in ("PATCH", "DELETE", "POST")]


def test_watch_resumes_from_last_version_after_disconnect(kube_api, controller):
    c = controller(replace(CFG, label_pods=True))
    kube_api.add_pod(make_pod("one", init_status=COMPLETED))
    wait_for(lambda: "shop/one" in c.informer.cache, what="one cached")
    kube_api.bookmark()
    wait_for(lambda: c.informer.resource_version == str(kube_api.store.resource_version),
             what="bookmark seen")
    seen = c.informer.resource_version
    kube_api.drop_connections()
    wait_for(lambda: c.informer.rewatches >= 2, what="re-watch")
    kube_api.add_pod(make_pod("two", init_status=BROKEN_WAITING))
    wait_for(lambda: kube_api.count("PATCH", "/pods/two/status") == 1, what="two labelled")
    watches = [r for r in kube_api.requests if r.query.get("watch") == "true"]
    assert watches[1].query["resourceVersion"] == seen
    assert watches[0].query["allowWatchBookmarks"] == "true"
    assert c.informer.relists == 1  # a disconnect resumes; it does not relist


def test_410_gone_relists_and_notices_deletions(kube_api, controller):
    c = controller(replace(CFG, label_pods=True))
    kube_api.add_pod(make_pod("stays", init_status=COMPLETED))
    kube_api.add_pod(make_pod("goes", init_status=COMPLETED))
    wait_for(lambda: len(c.informer.cache) == 2, what="both cached")
    kube_api.hang(r"/api/v1/pods$", count=1, method="GET")  # hold the next watch request
    kube_api.drop_connections()
    wait_for(lambda: c.informer.rewatches >= 2, what="second watch sent")
    # While the controller is disconnected: changes, then history compaction.
    kube_api.delete_pod("shop", "goes")
    kube_api.add_pod(make_pod("new", init_status=BROKEN_WAITING))
    kube_api.compact()
    kube_api.clear_faults()
    kube_api.drop_connections()
    wait_for(lambda: c.informer.relists == 2, what="relist after 410")
    assert set(c.informer.cache) == {"shop/stays", "shop/new"}
    wait_for(lambda: kube_api.count("PATCH", "/pods/new/status") == 1, what="new labelled")


def test_api_errors_on_list_are_retried(kube_api, controller):
    kube_api.fail_next(r"/api/v1/pods$", 500, count=2, method="GET")
    c = controller(replace(CFG, label_pods=True))
    assert c.informer.relists == 1
    assert kube_api.count("GET", r"/api/v1/pods$") >= 3


def test_event_failure_never_fails_the_action(kube_api, controller):
    kube_api.fail_next(r"/events$", 403, count=10, method="POST")
    c = controller(replace(CFG, label_pods=True))
    kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="label",
                                     result="success") == 1, what="labelled")
    assert kube_api.count("PATCH", "/pods/") == 1


def test_terminated_broken_pod_variant_is_acted_on(kube_api, controller):
    controller(replace(CFG, delete_pods=True))
    kube_api.add_pod(make_pod("term", init_status=validation_status(
        {"terminated": terminated(126)}, terminated(126))))
    wait_for(lambda: kube_api.count("DELETE", "/pods/term") == 1, what="delete")
