"""What one crash-looping pod that repair cannot fix leaves in the agent and in the API.

    .venv/bin/python bench/crashloop_memory.py [--updates 300]

The repair controller in repair mode, on a machine where no netns has the pod's IP (so every
attempt fails, is retried 5 times and given up on), against the API stand-in in this process.
One broken pod's validation container restarts `--updates` times: one status update each,
each handled to the end (5 failed attempts) before the next. Then the pod is deleted. Printed
as JSON: the controller's dropped entries, the Event objects on the pod and the attempts they
tell (their `count`s), after the updates and after the deletion.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

ATTEMPTS = 5


def measure(updates: int) -> dict[str, int]:
    from node_daemon.config import RepairConfig
    from testbed.cleanup import Cleanup
    from testbed.controller import NoNetns, start_controller
    from testbed.kubeapi import KubeApiServer, kubernetes_api_client
    from testbed.pods import BROKEN_WAITING, NODE, make_pod
    from testbed.wait import wait_for

    with KubeApiServer() as api, Cleanup() as cleanup:
        cfg = replace(RepairConfig(node_name=NODE), repair_pods=True)
        c = start_controller(cleanup, kubernetes_api_client(api), cfg, finder=NoNetns())

        def failed() -> float:
            return c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                                   result="fail")

        def events() -> list[dict]:
            return [e for e in api.events if e["reason"] == "RepairBrokenPod"]

        api.add_pod(make_pod("crashy", init_status=BROKEN_WAITING))
        wait_for(lambda: failed() >= ATTEMPTS, 60, "the first attempts")
        for n in range(1, updates + 1):
            status = dict(BROKEN_WAITING, restartCount=n)
            api.update_pod("shop", "crashy", {"status": {"initContainerStatuses": [status]}})
            wait_for(lambda n=n: failed() >= ATTEMPTS * (n + 1), 60, f"update {n} handled")
        wait_for(c.queue.idle, 60, "the last attempt")
        figures = {"updates": updates, "attempts": int(failed()),
                   "dropped_entries": len(c.dropped), "event_objects": len(events()),
                   "event_count_total": sum(int(e.get("count") or 1) for e in events())}
        api.delete_pod("shop", "crashy")
        wait_for(lambda: "shop/crashy" not in c.informer.cache and c.queue.idle(), 60,
                 "the deletion handled")
        figures["dropped_entries_after_delete"] = len(c.dropped)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    logging.basicConfig(level=logging.ERROR)  # each failed attempt logs a warning
    print(json.dumps(measure(parser.parse_args().updates)))


if __name__ == "__main__":
    main()
