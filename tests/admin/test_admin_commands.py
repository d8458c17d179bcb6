"""`repair`, `explain NAMESPACE/POD` and `drift` through click, against the API stand-in."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from admin.cli import cli
from testbed.kubeapi import down_url, write_kubeconfig
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod


@pytest.fixture
def invoke(kube_api, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path, kube_api)

    def run(*args: str, env: dict[str, str] | None = None):
        full_env = {"KUBECONFIG": str(kubeconfig), "REPAIR_NODE_NAME": NODE,
                    "HOST_PROC": "/proc", **(env or {})}
        return CliRunner().invoke(cli, list(args), env=full_env)

    return run


@pytest.fixture
def pods(kube_api):
    kube_api.add_pod(make_pod("broken-here", init_status=BROKEN_WAITING))
    kube_api.add_pod(make_pod("broken-there", node="node-b", init_status=BROKEN_WAITING))
    kube_api.add_pod(make_pod("fine", init_status=COMPLETED))


def test_dry_run_lists_broken_pods_of_this_node_and_changes_nothing(invoke, pods, kube_api):
    res = invoke("repair", "--dry-run", "--mode", "delete", "-o", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["pod"], r["action"], r["result"]) for r in rows] == [
        ("shop/broken-here", "delete", "dry-run")]
    assert "exit code 126" in rows[0]["why"]
    assert not [r for r in kube_api.requests if r.method != "GET"]


def test_all_nodes_delete_deletes_every_broken_pod(invoke, pods, kube_api):
    res = invoke("repair", "--all-nodes", "--mode", "delete")
    assert res.exit_code == 0, res.output
    assert "shop/broken-here" in res.output and "shop/broken-there" in res.output
    assert kube_api.count("DELETE", "/pods/") == 2
    assert len([e for e in kube_api.events if e["reason"] == "DeleteBrokenPod"]) == 2
    assert kube_api.get_pod("shop", "fine")


def test_label_mode_from_env_and_failures_exit_1(invoke, pods, kube_api):
    kube_api.fail_next(r"/pods/broken-there/status$", 403, method="PATCH")
    res = invoke("repair", "--node", "node-b", env={"REPAIR_LABEL_PODS": "true"})
    assert res.exit_code == 1
    assert "failed to label" in res.output and "Traceback" not in res.output


def test_repair_mode_skips_pods_of_other_nodes(invoke, pods):
    res = invoke("repair", "--node", "node-b", "--mode", "repair", "-o", "json")
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.output)
    assert row["result"] == "skip" and "not node-a" in row["message"]


def test_no_broken_pods_and_usage_errors(invoke, kube_api):
    kube_api.add_pod(make_pod("fine", init_status=COMPLETED))
    assert invoke("repair").output == "no broken pods\n"
    res = invoke("repair", "--node", "x", "--all-nodes")
    assert res.exit_code == 2 and "not both" in res.output


def test_unreachable_api_is_one_line(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path, down_url())
    res = CliRunner().invoke(cli, ["repair", "--dry-run"], env={"KUBECONFIG": str(kubeconfig),
                                                                 "REPAIR_NODE_NAME": NODE})
    assert res.exit_code == 1
    assert res.output.startswith("Error: list pods:") and len(res.output.splitlines()) == 1


def test_explain_live_pod_gives_decision_repair_verdict_and_live_state(invoke, pods):
    res = invoke("explain", "shop/broken-here")
    assert res.exit_code == 0, res.output
    assert "REDIRECTED" in res.output and "repair: BROKEN" in res.output
    assert "live rules: not on this node" in res.output or "live rules: unknown" in res.output
    out = json.loads(invoke("explain", "shop/fine", "-o", "json").output)
    assert out["redirected"] is True and out["broken"] is False and out["node"] == NODE
    assert "v4" in out["payloads"]


def test_explain_errors(invoke, pods):
    res = invoke("explain", "shop/missing")
    assert res.exit_code == 1 and "404" in res.output and "Traceback" not in res.output
    assert invoke("explain").exit_code == 2
    assert "expected NAMESPACE/POD" in invoke("explain", "nopod").output


def test_drift_checks_only_programmed_pods_and_skips_those_not_running_here(invoke, pods):
    res = invoke("drift", "--dry-run", "-o", "json")
    assert res.exit_code == 0, res.output
    assert [(r["pod"], r["result"]) for r in json.loads(res.output)] == [("shop/fine", "skip")]
