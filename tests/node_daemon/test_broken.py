"""`diagnose` against upstream's repair controller TestMatchesFilter cases, pure tier."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node_daemon.broken import diagnose
from node_daemon.config import RepairConfig
from testbed.pods import BROKEN_WAITING, COMPLETED, make_pod, terminated, validation_status

CFG = RepairConfig()
MSG = "Died for some reason"

CASES = [
    # (id, pod, config, broken)
    ("broken pod waiting (CrashLoopBackOff, last 126)", make_pod(init_status=BROKEN_WAITING),
     CFG, True),
    ("broken pod terminating (state 126, last 126)",
     make_pod(init_status=validation_status({"terminated": terminated(126)}, terminated(126))),
     CFG, True),
    ("working pod that died previously (Completed now, last 126)",
     make_pod(init_status=validation_status({"terminated": terminated(0, "Completed")},
                                            terminated(126))), CFG, False),
    ("current exit 0 with another reason still counts as completed",
     make_pod(init_status=validation_status({"terminated": terminated(0, "Other")},
                                            terminated(126))), CFG, False),
    ("current reason Completed with non-zero code counts as completed",
     make_pod(init_status=validation_status({"terminated": terminated(3, "Completed")},
                                            terminated(126))), CFG, False),
    ("working pod", make_pod(init_status=COMPLETED), CFG, False),
    ("no lastState yet (first failure still running)",
     make_pod(init_status=validation_status({"running": {}})), CFG, False),
    ("broken pod without the sidecar annotation",
     make_pod(init_status=BROKEN_WAITING, annotations={"sidecar.istio.io/status": None}),
     CFG, False),
    ("no annotation needed when REPAIR_SIDECAR_ANNOTATION is empty",
     make_pod(init_status=BROKEN_WAITING, annotations={"sidecar.istio.io/status": None}),
     replace(CFG, sidecar_annotation=""), True),
    ("termination message matches",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(126, message=MSG))),
     replace(CFG, init_termination_msg=MSG), True),
    ("termination message matches after trimming spaces",
     make_pod(init_status=validation_status({"waiting": {}},
                                            terminated(126, message=f"  {MSG}\n"))),
     replace(CFG, init_termination_msg=f"\t{MSG} "), True),
    ("termination message differs",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(126, message="x"))),
     replace(CFG, init_termination_msg=MSG), False),
    ("exit code 55 vs 126",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(55))), CFG, False),
    ("exit code 121 vs configured 126",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(121))), CFG, False),
    ("exit code filter 0 accepts any code",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(55))),
     replace(CFG, init_exit_code=0), True),
    ("another init container name is ignored",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(126), name="other")),
     CFG, False),
    ("empty REPAIR_INIT_CONTAINER_NAME matches any init container",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(126), name="other")),
     replace(CFG, init_container_name=""), True),
    ("custom exit code",
     make_pod(init_status=validation_status({"waiting": {}}, terminated(7))),
     replace(CFG, init_exit_code=7), True),
    # upstream since 1.24: repair leaves EXCLUDE_NAMESPACES alone (the plugin never touches it)
    ("broken pod in an excluded namespace",
     make_pod(init_status=BROKEN_WAITING, namespace="kube-system"),
     replace(CFG, exclude_namespaces=("kube-system",)), False),
    ("broken pod in a namespace not excluded",
     make_pod(init_status=BROKEN_WAITING, namespace="shop"),
     replace(CFG, exclude_namespaces=("kube-system",)), True),
]


@pytest.mark.parametrize(("pod", "cfg", "broken"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_matches_upstream_filter(pod, cfg, broken):
    assert diagnose(pod, cfg).broken is broken


def test_an_excluded_namespace_is_the_reason():
    verdict = diagnose(make_pod(init_status=BROKEN_WAITING, namespace="kube-system"),
                       replace(CFG, exclude_namespaces=("istio-system", "kube-system")))
    assert verdict.reasons == ("namespace kube-system is in EXCLUDE_NAMESPACES",)


def test_reasons_name_the_container_and_code():
    v = diagnose(make_pod(init_status=BROKEN_WAITING), CFG)
    assert v.broken and "istio-validation" in v.reasons[0] and "126" in v.reasons[0]
    v = diagnose(make_pod(init_status=validation_status({"waiting": {}}, terminated(55))), CFG)
    assert not v.broken and "exit code 55, not 126" in v.reasons[0]
    assert "no status for istio-validation" in diagnose(make_pod(), CFG).reasons[0]
