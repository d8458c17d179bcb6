"""One fresh interpreter's cold timings of the plugin's in-process stages (bench/phases.py).

Run as a script, it imports nothing but the plugin (not bench/ or tests/), so each import is
measured cold, as in a real plugin process; prints one JSON object of stage → seconds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POD = ROOT / "companions" / "workloads" / "meshed-pod.json"


def child() -> None:
    """In a fresh interpreter: cold timings of each in-process stage, as JSON on stdout."""
    out: dict[str, float] = {}
    clock = time.perf_counter

    t = clock()
    from cni import plugin_log
    from cni.plugin import Plugin  # noqa: F401
    from cni.protocol import parse_request
    out["entry imports"] = clock() - t

    from cni.kubeconfig import render_kubeconfig

    pod = json.loads(POD.read_text())
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as run_dir:
        kubeconfig = Path(run_dir) / "istio-cni-kubeconfig"
        kubeconfig.write_text(render_kubeconfig("http://127.0.0.1:1", "token", None, False))
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
                "cni_agent_run_dir": run_dir, "exclude_namespaces": ["kube-system"],
                "pod_namespace": "istio-system", "iptables_backend": "nft",
                "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.217.0.2/24"}]}}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bookinfo;K8S_POD_NAME=p"}
        from cni.config import parse_plugin_config
        from cni.protocol import parse_cni_args

        t = clock()
        args = parse_request(env, json.dumps(conf).encode())
        pconf = parse_plugin_config(args.conf)
        parse_cni_args(args.args)
        out["config parse"] = clock() - t

        t = clock()
        plugin_log.configure(pconf.log_level, pconf.cni_agent_run_dir)
        out["log setup (file handler)"] = clock() - t

        t = clock()
        from cni.kubeconfig import load_kubeconfig
        from cni.podinfo import extract_pod_info
        from cni.podlookup import ApiPodSource  # noqa: F401
        out["lookup imports (http.client, ssl, ...)"] = clock() - t

        t = clock()
        load_kubeconfig(pconf.kubeconfig)
        out["kubeconfig load"] = clock() - t

    t = clock()
    from cni.decision import decide
    info = extract_pod_info(pod)
    decide(info)
    out["decision"] = clock() - t

    t = clock()
    from cni import apply  # noqa: F401
    from cni.backends.restore import RestoreBackend  # noqa: F401
    from cni.redirect import redirect_from_pod, to_iptables_config
    from cni.rules import build_ruleset
    out["rules imports (rules, apply, backend)"] = clock() - t

    t = clock()
    ruleset = build_ruleset(to_iptables_config(redirect_from_pod(info)))
    for fam in ruleset.families():
        fam.restore_payload()
    out["rule rendering"] = clock() - t
    print(json.dumps(out))


if __name__ == "__main__":
    child()
