"""Fixtures for the node daemon: pod builders, a bounded condition wait, pod netns (root tier).

Pods are built from the meshed workload in `companions/workloads`, so they carry what istiod's
injector writes. Pod netns are `icni-r-<random>` with a veth carrying a random 10.213.x.y (other
suites run in parallel and use other ranges), plus a long-lived process inside (the "pause
container") that the daemon finds through /proc; all are removed afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import run, unique

WORKLOADS = Path(__file__).resolve().parents[2] / "companions" / "workloads"
MESHED = json.loads((WORKLOADS / "meshed-pod.json").read_text())
NODE = "node-a"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll `predicate` until truthy; fail the test after `timeout` (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def validation_status(state: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
                      name: str = "istio-validation") -> dict[str, Any]:
    st: dict[str, Any] = {"name": name, "ready": False, "restartCount": 1 if last else 0,
                          "image": "proxyv2", "imageID": "", "state": state or {}}
    st["lastState"] = {"terminated": last} if last else {}
    return st


def terminated(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message:
        out["message"] = message
    return out


BROKEN_WAITING = validation_status({"waiting": {"reason": "CrashLoopBackOff"}},
                                   terminated(126))
COMPLETED = validation_status({"terminated": terminated(0, "Completed")})


def make_pod(name: str = "app-1", namespace: str = "shop", node: str = NODE,
             init_status: dict[str, Any] | None = None, ip: str = "10.213.0.9",
             annotations: dict[str, str | None] | None = None, phase: str = "Pending",
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The meshed workload renamed and placed; `init_status` is istio-validation's status."""
    pod = copy.deepcopy(MESHED)
    meta = pod["metadata"]
    meta.update(name=name, namespace=namespace)
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    for k, v in (annotations or {}).items():
        if v is None:
            meta["annotations"].pop(k, None)
        else:
            meta["annotations"][k] = v
    if labels:
        meta["labels"].update(labels)
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}],
                     "initContainerStatuses": [init_status] if init_status else []}
    return pod


def random_ip() -> str:
    return f"10.213.{random.randint(1, 254)}.{random.randint(2, 254)}"


def _netns_ino(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@dataclass
class PodNetns:
    name: str
    ip: str
    pause: subprocess.Popen

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True) -> str:
        return run("ip", "netns", "exec", self.name, *argv, check=check)


@pytest.fixture
def pod_netns() -> Iterator[Callable[[], PodNetns]]:
    """Factory: a pod netns with an IP and a "pause" process; all removed afterwards."""
    made: list[PodNetns] = []

    def make() -> PodNetns:
        name = unique("icni-r")
        ip = random_ip()
        run("ip", "netns", "add", name)
        a, b = f"{name[-8:]}a", f"{name[-8:]}b"
        pause = None
        try:
            run("ip", "-n", name, "link", "set", "lo", "up")
            run("ip", "-n", name, "link", "add", a, "type", "veth", "peer", "name", b)
            run("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", a)
            run("ip", "-n", name, "link", "set", a, "up")
            run("ip", "-n", name, "link", "set", b, "up")
            pause = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "infinity"])
            ns_ino = os.stat(f"/var/run/netns/{name}").st_ino
            wait_for(lambda: _netns_ino(pause.pid) == ns_ino, what="pause process in netns")
        finally:
            made.append(PodNetns(name, ip, pause))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for ns in made:
        if ns.pause is not None:
            ns.pause.kill()
            ns.pause.wait()
        run("ip", "netns", "delete", ns.name, check=False)
