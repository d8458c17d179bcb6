"""The agent acts only on pod state it has proven current, and remembers pods by UID (#17
classes 1, 6 and 7), against the API stand-in over real HTTP.

- Class 1: a watch that stops hearing from the API is no source (readiness, node condition and
  metrics say so); an action is taken on the pod the API has now, never on a cached one the
  watch has not caught up with; a drift pass checks the pods one LIST gives, not the cache.
- Class 6: a pod re-created under its name (across a watch gap, or in one burst of events) is
  another pod: repaired, not skipped as "already repaired".
- Class 7: what is remembered of a pod goes with it, and a repeated Event is one Event whose
  count grows (client-go's recorder), not a new object each time.

Root tests use real pod netns (the pod's IP on a veth, a "pause" process) found through /proc.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from cni.pipeline import check_pod, plan
from node_daemon.actions import Action, Actions, Reporter, Result
from node_daemon.agent import Agent
from node_daemon.config import RepairConfig
from node_daemon.controller import MAX_ATTEMPTS, RepairController
from node_daemon.kubeapi import PodApi
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed.cleanup import Cleanup
from testbed.controller import NoNetns, start_controller
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.nodes import make_node
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod, workload
from testbed.wait import wait_for
from tests.node_daemon.test_node_gate import _agent_cfg, agent_client, condition_is
from tests.node_daemon.test_servers import FakeInstaller, _get

CFG = RepairConfig(node_name=NODE)


def _uid(pod: dict) -> str:
    return pod["metadata"]["uid"]


def _events(kube_api: KubeApiServer, reason: str, uid: str | None = None) -> list[dict]:
    return [e for e in kube_api.events if e["reason"] == reason
            and (uid is None or e["involvedObject"]["uid"] == uid)]


# --- class 1: a watch that has stopped hearing from the API is no source ----------------------

def test_a_silent_watch_makes_the_agent_not_ready_and_says_why(kube_api: KubeApiServer,
                                                               tmp_path: Path) -> None:
    """The API goes silent (watch streams stall, lists hang): within the bound the agent is not
    ready (`/readyz`, the node condition's reason), so served ADDs defer to the plugin, and
    `/metrics` says the watch is stale; when the API answers again, a relist makes it current."""
    kube_api.store.bookmark_interval = 0.1  # the heartbeat of a healthy watch
    kube_api.add_node(make_node(NODE))
    installer = FakeInstaller()
    # as in a cluster with the manifests applied: the node gate publishes only under the
    # admission policy that confines it
    agent = Agent(replace(_agent_cfg(tmp_path), watch_stale_after=2.0), installer,
                  PodApi(agent_client(kube_api)))
    stop = threading.Event()
    thread = threading.Thread(target=lambda: agent.run(stop))
    thread.start()
    try:
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), 15, "ready")
        assert agent.health is not None and agent.metrics_http is not None
        kube_api.hang(r"/api/v1/pods$", method="GET")
        kube_api.stall_watches()
        wait_for(lambda: condition_is(kube_api, "False", "PodWatchStale"), 15,
                 "the stale watch on the node condition")
        assert _get(agent.health.port, "/readyz") == (
            503, "pod watch has not heard from the API within 2s\n")
        assert agent.ready()[0] is False  # what the served ADD asks first
        assert agent._cached_pod("shop/any") is None
        metrics = _get(agent.metrics_http.port, "/metrics")[1]
        assert "istio_cni_pod_watch_stale 1.0" in metrics
        kube_api.clear_faults()
        kube_api.release_watches()
        kube_api.drop_connections()  # the hung list fails; the next one is answered
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), 15, "current again")
        assert "istio_cni_pod_watch_stale 0.0" in _get(agent.metrics_http.port, "/metrics")[1]
        assert agent.controller is not None and agent.controller.informer.relists >= 2
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_quiet_api_without_bookmarks_is_relisted_not_declared_stale(
        kube_api: KubeApiServer, cleanup: Cleanup) -> None:
    """An API that sends no bookmarks: a watch silent for two thirds of the bound is replaced by
    a relist, which is word from the API, so the cache stays current."""
    kube_api.store.bookmark_interval = None
    c = start_controller(cleanup, kubernetes_api_client(kube_api), CFG, stale_after=1.5)
    wait_for(lambda: c.informer.relists >= 3, 30, "relists of a quiet watch")
    assert c.informer.silent_for() is not None
    assert c.state().relists == c.informer.relists


def test_an_action_is_taken_on_the_pod_the_api_has_now(kube_api: KubeApiServer,
                                                      cleanup: Cleanup) -> None:
    """Label mode; the first label PATCH hangs. Meanwhile the watch stalls and the pod is
    deleted and re-created healthy under its name. The retry finds the cached (broken) pod,
    reads it once from the API, sees another UID and labels nothing."""
    kube_api.hang(r"/pods/broken/status$", count=1, method="PATCH")
    c = start_controller(cleanup, kubernetes_api_client(kube_api), replace(CFG, label_pods=True))
    old = kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: kube_api.count("PATCH", "/pods/broken/status") == 1, what="first patch")
    kube_api.stall_watches()
    cleanup.add("release the watches", kube_api.release_watches)
    kube_api.delete_pod("shop", "broken")
    new = kube_api.add_pod(make_pod("broken", init_status=COMPLETED))
    kube_api.drop_connections()  # the hung PATCH fails: retried
    wait_for(lambda: kube_api.count("GET", "/pods/broken$") >= 2
             or kube_api.count("PATCH", "/pods/broken/status") >= 2, what="the retry")
    wait_for(c.queue.idle, what="the retry done")
    cached = c.informer.get("shop/broken")
    assert cached is not None and _uid(cached) == _uid(old), "the watch is still behind"
    assert "cni.istio.io/uninitialized" not in (kube_api.get_pod("shop", "broken")["metadata"]
                                                .get("labels") or {})
    assert _uid(kube_api.get_pod("shop", "broken")) == _uid(new)
    assert kube_api.count("PATCH", "/pods/broken/status") == 1


def test_a_label_patch_never_lands_on_a_pod_re_created_since_it_was_read(
        kube_api: KubeApiServer) -> None:
    """The label action's PATCH carries the pod's UID as a precondition: a pod deleted and
    re-created under its name between the controller's read and the PATCH is not labelled, and
    the action fails (retried, when the pod is read again)."""
    old = kube_api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    kube_api.delete_pod("shop", "broken")
    new = kube_api.add_pod(make_pod("broken", init_status=COMPLETED))
    api = PodApi(kubernetes_api_client(kube_api))
    actions = Actions(replace(CFG, label_pods=True), api, Reporter(api, Metrics(), NODE))
    result = actions.label(old)
    assert result.result == Result.FAIL and "409" in result.message
    now = kube_api.get_pod("shop", "broken")
    assert _uid(now) == _uid(new) and "cni.istio.io/uninitialized" not in (
        now["metadata"].get("labels") or {})
    assert actions.label(new).result == Result.SUCCESS  # the pod it was read as: labelled
    assert "cni.istio.io/uninitialized" in kube_api.get_pod("shop", "broken")["metadata"]["labels"]


@pytest.mark.root
def test_a_drift_pass_checks_the_pods_the_api_has_not_the_cache(kube_api: KubeApiServer,
                                                                cleanup: Cleanup,
                                                                pod_netns) -> None:
    """A meshed pod's IP is taken by a pod without a sidecar while the watch is stalled: the
    pass lists this node's pods and leaves the new pod's netns alone (from the cache it put the
    gone pod's redirect into it)."""
    ns = pod_netns()
    gone = make_pod("app", ip=ns.ip, init_status=COMPLETED, phase="Running")
    kube_api.add_pod(gone)
    c = start_controller(cleanup, kubernetes_api_client(kube_api), CFG,
                         finder=NetnsFinder(Path("/proc")), drift=True)
    wait_for(lambda: "shop/app" in c.informer.cache, what="cached")
    kube_api.stall_watches()
    cleanup.add("release the watches", kube_api.release_watches)
    kube_api.delete_pod("shop", "app")
    plain = workload("plain-pod", name="other", namespace="shop", node=NODE)
    plain["status"] = {"phase": "Running", "podIP": ns.ip, "podIPs": [{"ip": ns.ip}]}
    kube_api.add_pod(plain)
    lists = kube_api.count("GET", r"/api/v1/pods$")
    c.check_drift_now()
    wait_for(lambda: kube_api.count("GET", r"/api/v1/pods$") > lists
             or c.metrics.value("istio_cni_drift_pods_total", result="success") > 0,
             what="the drift pass")
    wait_for(c.queue.idle, what="the drift pass done")
    assert check_pod(ns.path, plan(gone)[2]).clean, "the other pod's netns was programmed"
    assert not _events(kube_api, "RulesDrift")


# --- class 6: identity is the UID --------------------------------------------------------------

def _recreate_across_a_410_gap(kube_api: KubeApiServer, c: RepairController,
                               pod: dict) -> dict:
    """Delete and re-create `pod` under its name while the controller is disconnected and the
    history is compacted: its relist sees the name "changed", not gone."""
    kube_api.hang(r"/api/v1/pods$", count=1, method="GET")
    kube_api.drop_connections()
    wait_for(lambda: c.informer.rewatches >= 2, what="second watch sent")
    kube_api.delete_pod("shop", pod["metadata"]["name"])
    new = kube_api.add_pod(pod)
    kube_api.compact()
    kube_api.clear_faults()
    kube_api.drop_connections()
    wait_for(lambda: c.informer.relists == 2, what="relist after 410")
    return new


def _recreate_in_one_burst(kube_api: KubeApiServer, c: RepairController, pod: dict) -> dict:
    """Delete and re-create `pod` under its name while the watch is stalled: DELETED and ADDED
    arrive together and the queue holds one item for the name."""
    kube_api.stall_watches()
    kube_api.delete_pod("shop", pod["metadata"]["name"])
    new = kube_api.add_pod(pod)
    kube_api.release_watches()
    return new


@pytest.mark.root
@pytest.mark.parametrize("recreate", [_recreate_across_a_410_gap, _recreate_in_one_burst],
                         ids=["410-relist", "event-burst"])
def test_a_pod_re_created_under_its_name_is_repaired_again(kube_api: KubeApiServer,
                                                           cleanup: Cleanup, pod_netns,
                                                           recreate) -> None:
    ns = pod_netns()
    c = start_controller(cleanup, kubernetes_api_client(kube_api),
                         replace(CFG, repair_pods=True), finder=NetnsFinder(Path("/proc")))
    first = kube_api.add_pod(make_pod("web-0", ip=ns.ip, init_status=BROKEN_WAITING))
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                                     result="success") == 1, what="first pod repaired")
    ns.run("iptables-nft", "-t", "nat", "-F", check=False)  # the new pod's netns: no rules
    ns.run("iptables-legacy", "-t", "nat", "-F", check=False)
    second = recreate(kube_api, c, make_pod("web-0", ip=ns.ip, init_status=BROKEN_WAITING))
    assert _uid(second) != _uid(first)
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                                     result="success") == 2, what="the new pod repaired")
    assert check_pod(ns.path, plan(second)[2]).missing == ()
    assert _events(kube_api, "RepairBrokenPod", _uid(second))
    wait_for(lambda: not c.actions.repaired(_uid(first)), what="the first pod forgotten")
    assert c.actions.repaired(_uid(second))


# --- class 7: bounded memory, deduplicated Events ---------------------------------------------

def _crash_loop(kube_api: KubeApiServer, name: str, restarts: int) -> None:
    for n in range(1, restarts + 1):
        status = dict(BROKEN_WAITING, restartCount=n)
        kube_api.update_pod("shop", name, {"status": {"initContainerStatuses": [status]}})


def test_a_crash_looping_pod_leaves_one_entry_and_one_event(kube_api: KubeApiServer,
                                                            cleanup: Cleanup) -> None:
    """Repair cannot succeed (no netns here); 60 status updates of the crash loop each bring
    the pod back. One dropped entry (while the pod exists), one Event whose count is every
    failed attempt; nothing of the pod remembered once it is deleted."""
    c = start_controller(cleanup, kubernetes_api_client(kube_api),
                         replace(CFG, repair_pods=True), finder=NoNetns())
    pod = kube_api.add_pod(make_pod("crashy", init_status=BROKEN_WAITING))
    _crash_loop(kube_api, "crashy", 60)
    last = kube_api.get_pod("shop", "crashy")["metadata"]["resourceVersion"]
    wait_for(lambda: (c.informer.get("shop/crashy") or {}).get("metadata", {}).get(
        "resourceVersion") == last and c.dropped and c.queue.idle(), 30,
        "the last update given up on")
    assert len(c.dropped) == 1
    assert c.dropped == {_uid(pod): "shop/crashy"}
    failed = c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                             result="fail")
    assert failed >= MAX_ATTEMPTS
    [event] = _events(kube_api, "RepairBrokenPod")
    assert event["count"] == failed and event["type"] == "Warning"
    assert c.state().remembered_events == 1
    kube_api.delete_pod("shop", "crashy")
    wait_for(lambda: not c.dropped and c.actions.reporter.remembered() == 0,
             what="the pod forgotten")


def test_a_pod_deleted_across_a_watch_gap_is_forgotten(kube_api: KubeApiServer,
                                                       cleanup: Cleanup) -> None:
    c = start_controller(cleanup, kubernetes_api_client(kube_api),
                         replace(CFG, repair_pods=True), finder=NoNetns())
    kube_api.add_pod(make_pod("crashy", init_status=BROKEN_WAITING))
    wait_for(lambda: c.dropped, what="given up")
    kube_api.hang(r"/api/v1/pods$", count=1, method="GET")
    kube_api.drop_connections()
    wait_for(lambda: c.informer.rewatches >= 2, what="second watch sent")
    kube_api.delete_pod("shop", "crashy")
    kube_api.compact()
    kube_api.clear_faults()
    kube_api.drop_connections()
    wait_for(lambda: not c.dropped and c.actions.reporter.remembered() == 0,
             what="forgotten on the relist")


def test_repeated_events_are_one_event_with_a_count(kube_api: KubeApiServer) -> None:
    """client-go's recorder: the same pod, reason, type and message again is a PATCH of the
    Event's count and lastTimestamp; an Event the API has expired (404) is posted anew."""
    reporter = Reporter(PodApi(kubernetes_api_client(kube_api)), Metrics(), NODE)
    pod = kube_api.add_pod(make_pod("p"))
    for _ in range(3):
        reporter.record(pod, Action.REPAIR, Result.FAIL, "no netns")
    reporter.record(pod, Action.REPAIR, Result.FAIL, "another message")
    [first, other] = _events(kube_api, "RepairBrokenPod")
    assert (first["message"], first["count"]) == ("no netns", 3)
    assert (other["message"], other["count"]) == ("another message", 1)
    patches = [r for r in kube_api.requests if r.method == "PATCH"]
    assert len(patches) == 2 and patches[-1].body["count"] == 3
    assert patches[-1].headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert set(patches[-1].body) == {"count", "lastTimestamp"}
    assert kube_api.count("POST", "/events$") == 2

    kube_api.expire_events()
    reporter.record(pod, Action.REPAIR, Result.FAIL, "no netns")
    [again] = _events(kube_api, "RepairBrokenPod")
    assert (again["message"], again["count"]) == ("no netns", 1)
    assert again["metadata"]["name"] != first["metadata"]["name"]

    reporter.forget(_uid(pod))
    assert reporter.remembered() == 0
    reporter.record(pod, Action.REPAIR, Result.FAIL, "no netns")
    assert len(_events(kube_api, "RepairBrokenPod")) == 2  # a new pod's first: posted

    other_pod = kube_api.add_pod(make_pod("q"))
    reporter.record(other_pod, Action.REPAIR, Result.FAIL, "no netns")
    assert len(_events(kube_api, "RepairBrokenPod", _uid(other_pod))) == 1


def test_the_event_cache_is_bounded_oldest_first(kube_api: KubeApiServer) -> None:
    reporter = Reporter(PodApi(kubernetes_api_client(kube_api)), Metrics(), NODE, cache_size=3)
    pod = kube_api.add_pod(make_pod("p"))
    for i in range(5):
        reporter.record(pod, Action.REPAIR, Result.FAIL, f"attempt {i}")
    assert reporter.remembered() == 3
    reporter.record(pod, Action.REPAIR, Result.FAIL, "attempt 0")  # forgotten: posted again
    reporter.record(pod, Action.REPAIR, Result.FAIL, "attempt 4")  # remembered: counted
    assert [(e["message"], e["count"]) for e in _events(kube_api, "RepairBrokenPod")] == [
        ("attempt 0", 1), ("attempt 1", 1), ("attempt 2", 1), ("attempt 3", 1),
        ("attempt 4", 2), ("attempt 0", 1)]
