"""The demo's steps: one sandboxed node, the installer, three pods, the race and its repair.

With `--native-nftables` the node runs native nftables mode (`NATIVE_NFTABLES=true` for the
installer, which writes `native_nftables` into the plugin's config, and for the repair
controller): the same steps, the pods' rules shown as the host's `nft` lists our `inet
istio-proxy-*` tables, and the same proxy and validation probe proving the redirection.

Each step is a method that prints what it shows and raises `DemoError` with one line when
something is not as it should be; `cli.main` turns that (or Ctrl-C / SIGTERM) into one line,
then always runs `Demo.cleanup` and prints the timings. See `companions/demo/__init__.py`.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import ipaddress
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from companions.demo.console import CapturedLogs, Console, DemoError
from companions.demo.plugin_binary import PluginBinary, prepare
from companions.demo.sandbox import Sandbox
from testbed.cnirun import CniCall, Runtime, VethNetwork, k8s_args, pod_ip
from testbed.kubeapi import KubeApiServer
from testbed.netns import delete_netns, leftover_netns
from testbed.pods import workload
from testbed.procs import HarnessError, Proc, run

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "companions" / "validation_probe.py"
CNI_BIN = Path("/usr/lib/cni")
NODE = "demo-node"
PRIMARY_NAME = "10-demo-bridge.conflist"
BRIDGE = "icni-dbr0"
APP_UID, PROXY_UID = 1000, 1337
ECHO_PORT, APP_PORT = 8080, 9080
PY = sys.executable
NFT_PREFIX = "istio-proxy-"
"""Our nftables tables are `inet istio-proxy-nat`, `-mangle` and `-raw`."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Demo:
    def __init__(self, console: Console, args: argparse.Namespace) -> None:
        self.c = console
        self.args = args
        self.box: Sandbox | None = None
        self.logs = CapturedLogs()
        self.plugin: PluginBinary | None = None
        self.api: KubeApiServer | None = None
        self.installer: Any = None
        self.controller: Any = None
        self.runtime: Runtime | None = None
        self.node_ns = ""
        self.gateway = ""
        self.primary_bytes = b""
        self.pods: dict[str, dict[str, Any]] = {}
        self.veth = False
        self._last_call: CniCall | None = None
        self.nftables = bool(getattr(args, "native_nftables", False))
        self.mode_env = ({"NATIVE_NFTABLES": "true",
                          "NFTABLES_BACKEND": getattr(args, "nftables_backend", "auto")}
                         if self.nftables else {})
        """The agent's settings for the mode, for the installer and the repair controller."""

    @property
    def mode(self) -> str:
        """`iptables mode` or `native nftables mode`, as the demo's output names it."""
        return "native nftables mode" if self.nftables else "iptables mode"

    # -- steps -------------------------------------------------------------------------------

    def run(self) -> None:
        with self.c.step("preflight"):
            self.preflight()
        with self.c.step("node: netns, API stand-in, installer, repair controller"):
            self.node()
        with self.c.step("meshed pod: CNI ADD, rules, validation, proxy"):
            self.meshed()
        with self.c.step("plain pod: CNI ADD, skipped"):
            self.plain()
        with self.c.step("race: a pod created while the plugin was absent, repaired"):
            self.race()
        with self.c.step("uninstall: the primary config restored"):
            self.uninstall()

    def preflight(self) -> None:
        import os

        if os.geteuid() != 0:
            raise DemoError("must run as root (network namespaces, iptables): "
                            "run bash scripts/demo.sh as root")
        tools = ("ip", "nft", "sh", "sleep") if self.nftables else ("ip", "iptables",
                                                                     "iptables-save", "sh",
                                                                     "sleep")
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            raise DemoError(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")
        filt = run(["nft", "-v"] if self.nftables else ["iptables", "-V"]).stdout.strip()
        have_bridge = all((CNI_BIN / p).exists() for p in ("bridge", "host-local"))
        self.veth = self.args.primary == "veth" or (self.args.primary == "auto"
                                                    and not have_bridge)
        if self.args.primary == "bridge" and not have_bridge:
            raise DemoError(f"--primary bridge: {CNI_BIN}/bridge or host-local is missing")
        self.box = Sandbox.create()
        self.c.say(f"root; {filt}; ip {run(['ip', '-V']).stdout.split()[-1]}")
        self.c.say(f"mode: {self.mode}" + (
            f" (NATIVE_NFTABLES=true, NFTABLES_BACKEND={self.mode_env['NFTABLES_BACKEND']}): "
            "pods get upstream's inet istio-proxy-* tables" if self.nftables else ""))
        self.c.say(f"primary CNI: {CNI_BIN}/bridge + host-local" if not self.veth else
                   "primary CNI: bridge/host-local not installed: veth via pyroute2 instead")
        self.c.say(f"sandbox: {self.box.root}, netns {self.box.ns_name('*')}")
        self.c.aliases.append((f"{self.box.root}/node/", "/"))
        self.plugin = prepare(REPO, self.box.path("image", "opt", "cni", "bin"), self.c,
                              source=self.args.source, build=not self.args.no_build)
        self.c.say(f"plugin: {self.plugin.describe}")
        for note in self.plugin.notes:
            self.c.say(note)

    def node(self) -> None:
        assert self.box is not None and self.plugin is not None
        box = self.box
        net_d, bin_dir = box.path("node", "etc", "cni", "net.d"), box.path("node", "opt", "cni",
                                                                           "bin")
        run_dir = box.path("node", "var", "run", "istio-cni")
        sa_dir = box.path("node", "var", "run", "secrets", "kubernetes.io", "serviceaccount")
        token = f"demo-{box.run_id}-token"
        (sa_dir / "token").write_text(token)

        self.node_ns = box.add_netns("node")
        subnet = ipaddress.ip_network(f"10.251.{random.randint(1, 254)}.0/24")
        self.gateway = str(subnet.network_address + 1)
        self.c.say(f"node netns {self.node_ns}; pod network {subnet} on bridge {BRIDGE}")
        self.c.say(f"node filesystem: {box.root}/node (/etc/cni/net.d, /opt/cni/bin, /var/run "
                   "below are in it)")

        self.api = api = KubeApiServer(token=token)
        box.on_close("stop the API stand-in", api.stop)
        self.pods = {"meshed": workload("meshed-pod", node=NODE),
                     "plain": workload("plain-pod", node=NODE),
                     "race": workload("meshed-pod", name="productpage-v1-7d9f8b6c5-race1",
                                      node=NODE)}
        for pod in self.pods.values():
            api.add_pod(pod)
        self.c.say(f"API stand-in {api.url} (bearer token), serving the pods of {NODE}:")
        for role, what in (("meshed", "meshed: istio-proxy injected"), ("plain", "plain"),
                           ("race", "meshed, for the race")):
            self.c.say(f"{self._key(self.pods[role]):<42} {what}", indent=4)

        primary = {"cniVersion": "1.0.0", "name": "demo-pod-network", "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": str(box.path("node", "var", "lib", "cni")),
                      "ranges": [[{"subnet": str(subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
        self.primary_bytes = (json.dumps(primary, indent=2) + "\n").encode()
        (net_d / PRIMARY_NAME).write_bytes(self.primary_bytes)
        self.c.say(f"primary config {net_d / PRIMARY_NAME} (bridge + host-local): "
                   f"sha256 {_sha(self.primary_bytes)}")

        from installer import Installer, InstallerConfig

        env = {"MOUNTED_CNI_NET_DIR": str(net_d), "CNI_BIN_SOURCE_DIR": str(self.plugin.image_dir),
               "CNI_BIN_TARGET_DIRS": str(bin_dir), "CNI_AGENT_RUN_DIR": str(run_dir),
               "K8S_SERVICE_ACCOUNT_PATH": str(sa_dir), "KUBERNETES_SERVICE_HOST": api.host,
               "KUBERNETES_SERVICE_PORT": str(api.port), "KUBERNETES_SERVICE_PROTOCOL": "http",
               "SKIP_TLS_VERIFY": "true",  # plain HTTP on loopback: there is no CA to trust
               "EXCLUDE_NAMESPACES": "kube-system", "POD_NAMESPACE": "istio-system",
               "UNINSTALL_ON_SHUTDOWN": "true",
               "ISTIO_OWNED_CNI_CONFIG": "false",  # show the edit of the primary's file
               **self.mode_env}
        self.installer = Installer(InstallerConfig.from_env(env))
        box.on_close("uninstall istio-cni", self.installer.uninstall)
        self.installer.install(timeout=10)
        self.c.say("installer:")
        self.c.say("\n".join(self.logs.take("installer")), indent=4)
        installed = (net_d / PRIMARY_NAME).read_text()
        diff = [ln for ln in difflib.unified_diff(self.primary_bytes.decode().splitlines(),
                                                  installed.splitlines(), lineterm="", n=1)
                if not ln.startswith(("---", "+++"))]
        self.c.say(f"{net_d / PRIMARY_NAME} now (diff against the original):")
        self.c.say("\n".join(diff), indent=4)

        self.runtime = Runtime(node_netns=self.node_ns, cni_path=[bin_dir, CNI_BIN],
                               veth=VethNetwork(subnet, BRIDGE) if self.veth else None)
        self._start_controller(run_dir / "istio-cni-kubeconfig")

    def _start_controller(self, kubeconfig: Path) -> None:
        from node_daemon.config import DaemonConfig
        from node_daemon.kubeapi import load_api_client
        from node_daemon.netns_finder import NetnsFinder
        from testbed.controller import start_controller

        assert self.box is not None
        cfg = DaemonConfig.from_env({"REPAIR_REPAIR_PODS": "true", "REPAIR_NODE_NAME": NODE,
                                     "HOST_PROC": "/proc", "DRIFT_CHECK_INTERVAL": "0",
                                     **self.mode_env})
        rc = cfg.repair
        self.controller = start_controller(
            self.box.cleanup, load_api_client(str(kubeconfig)), rc,
            finder=NetnsFinder(cfg.host_proc), backend=cfg.rule_mode,
            watch_timeout=cfg.watch_timeout, synced_within=None)
        if not self.controller.informer.synced.wait(15):
            raise DemoError("the repair controller did not sync with the API stand-in in 15 s")
        settings = " ".join(f"{k}={v}" for k, v in {"REPAIR_REPAIR_PODS": "true",
                                                      "REPAIR_NODE_NAME": NODE,
                                                      **self.mode_env}.items())
        self.c.say(f"repair controller ({settings}):")
        self.c.say(f"watching pods with {rc.field_selector()}, synced", indent=4)

    def meshed(self) -> None:
        pod = self.pods["meshed"]
        ns, ip = self._sandbox(pod, "meshed", self._installed_conflist())
        self._decision_and_rules(ns)
        self._validate(pod, ns, expect=0, timeout=5)
        box = self.box
        assert box is not None
        proxy = box.start_in(ns, "proxy", [PY, "-m", "companions.proxy", "--uid", str(PROXY_UID)])
        proxy.wait_line(lambda ln: ln == "ready", 15, "ready line")
        echo = self._server(self.node_ns, "echo server (node)", self.gateway, ECHO_PORT)
        app = self._server(ns, "app server (pod)", "0.0.0.0", APP_PORT)
        self.c.say(f"proxy stand-in in the pod as uid {PROXY_UID}; echo server on the node at "
                   f"{self.gateway}:{ECHO_PORT}; app server in the pod on :{APP_PORT}")

        reply = self._connect(ns, self.gateway, ECHO_PORT, "hello from the app", APP_UID)
        line = proxy.wait_line(lambda ln: ln.startswith("outbound "), 10, "outbound line")
        want = f"-> {self.gateway}:{ECHO_PORT}"
        if not line.endswith(want):
            raise DemoError(f"proxy saw {line!r}, expected original destination {want}")
        seen = echo.wait_line(lambda ln: ln.startswith("connection from"), 10, "connection")
        self.c.say(f"outbound: app (uid {APP_UID}) connects to {self.gateway}:{ECHO_PORT}")
        self.c.say(f"proxy: {line}   (original destination, from SO_ORIGINAL_DST)", indent=4)
        self.c.say(f"echo server: {seen} (the proxy's own connection, not captured again)",
                   indent=4)
        self.c.say(f"app got {reply!r} back", indent=4)

        reply = self._connect(self.node_ns, ip, APP_PORT, "hello from the node", None)
        line = proxy.wait_line(lambda ln: ln.startswith("inbound "), 10, "inbound line")
        seen = app.wait_line(lambda ln: ln.startswith("connection from"), 10, "connection")
        self.c.say(f"inbound: a client on the node connects to {ip}:{APP_PORT}")
        self.c.say(f"proxy: {line}", indent=4)
        self.c.say(f"app server: {seen} (upstream's passthrough source)", indent=4)
        self.c.say(f"client got {reply!r} back", indent=4)
        if self.nftables:
            _, rules = self._rules(ns)
            counted = [ln.strip() for ln in rules if "redirect to" in ln]
            self.c.say("the redirect rules' counters now (nft):")
            self.c.say("\n".join(counted), indent=4)

    def plain(self) -> None:
        ns, _ = self._sandbox(self.pods["plain"], "plain", self._installed_conflist())
        rules = self._decision_and_rules(ns)
        if rules:
            raise DemoError(f"the plain pod got {len(rules)} ISTIO rules ({self.mode})")

    def race(self) -> None:
        assert self.api is not None
        pod = self.pods["race"]
        before = json.loads(self.primary_bytes)
        self.c.say("the runtime set this sandbox up from net.d as it was before the installer "
                   "ran: bridge only, no istio-cni")
        ns, ip = self._sandbox(pod, "race", before)
        self._validate(pod, ns, expect=126, timeout=3)
        meta = pod["metadata"]
        self.api.update_pod(meta["namespace"], meta["name"], {"status": {
            "initContainerStatuses": [{
                "name": "istio-validation", "ready": False, "restartCount": 1,
                "image": "docker.io/istio/proxyv2:1.27.0", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 126, "reason": "Error"}}}]}})
        self.c.say("kubelet reports istio-validation: last terminated exit code 126, "
                   "CrashLoopBackOff")
        def ours(e: dict[str, Any]) -> bool:
            return (e.get("reason") == "RepairBrokenPod"
                    and e["involvedObject"]["name"] == meta["name"])

        event = self.api.wait_for_event(lambda e: ours(e) and e.get("type") == "Normal", 30)
        for line in self.logs.take("node_daemon"):  # retries and failures; success is the event
            if line.startswith(("warning", "error")):
                self.c.say(f"repair controller: {line}")
        if event is None:
            failed = [e["message"] for e in self.api.events if ours(e)]
            raise DemoError("the repair controller did not repair the pod in 30 s"
                            + (f": {failed[-1]}" if failed else " (no event posted)"))
        self.c.say(f"event: {event['type']} {event['reason']} on {self._key(pod)} from "
                   f"{event['source']['component']}:")
        self.c.say(event["message"], indent=4)
        _, rules = self._rules(ns)
        if self.nftables:  # rule lines: every rule of ours has a counter
            count, what = sum(" counter " in ln for ln in rules), f"rules in {NFT_PREFIX}* tables"
        else:
            count, what = len(rules), "ISTIO rules"
        self.c.say(f"the pod netns ({ip}) now holds {count} {what}")
        self._validate(pod, ns, expect=0, timeout=5, again=True)

    def uninstall(self) -> None:
        assert self.controller is not None and self.installer is not None
        self.controller.stop()  # the agent's order on shutdown: controller, then uninstall
        self.installer.uninstall()
        self.c.say("installer, uninstalling:")
        self.c.say("\n".join(self.logs.take("installer")), indent=4)
        net_d = self.installer.config.mounted_cni_net_dir
        after = (net_d / PRIMARY_NAME).read_bytes()
        same = after == self.primary_bytes
        self.c.say(f"{PRIMARY_NAME}: sha256 before install {_sha(self.primary_bytes)}, "
                   f"after uninstall {_sha(after)}: "
                   + ("restored byte for byte" if same else "DIFFERENT"))
        if not same:
            raise DemoError(f"{PRIMARY_NAME} was not restored byte for byte")
        left = sorted(p.name for p in net_d.iterdir())
        self.c.say(f"net.d now holds: {', '.join(left)}")

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _key(pod: dict[str, Any]) -> str:
        return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    def _installed_conflist(self) -> dict[str, Any]:
        """What libcni would load: the first valid config file of net.d."""
        from installer.discovery import find_primary

        net_d = self.installer.config.mounted_cni_net_dir
        name = find_primary(net_d)
        if name is None:
            raise DemoError(f"no valid CNI config in {net_d}")
        return dict(json.loads((net_d / name).read_text()))

    def _sandbox(self, pod: dict[str, Any], role: str,
                 conflist: dict[str, Any]) -> tuple[str, str]:
        """The pod's netns and pause container, CNI ADD through `conflist`, podIP reported."""
        assert self.box is not None and self.runtime is not None and self.api is not None
        ns = self.box.add_netns(role)
        self.box.pause(ns, self._key(pod))
        meta = pod["metadata"]
        calls = self.runtime.run_list(conflist, "ADD", f"/var/run/netns/{ns}", f"demo-{role}",
                                      k8s_args(meta["namespace"], meta["name"]))
        chain = " -> ".join(str(p["type"]) for p in conflist["plugins"])
        self.c.say(f"pod {self._key(pod)}: netns {ns}, CNI ADD through [{chain}]")
        for call in calls:
            self._say_call(call)
        if calls[-1].status != 0:
            raise DemoError(f"CNI ADD failed in {calls[-1].plugin}: {calls[-1].error}")
        ip = pod_ip(calls)
        self.api.update_pod(meta["namespace"], meta["name"],
                            {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
        self._last_call = calls[-1]
        return ns, ip

    def _say_call(self, call: CniCall) -> None:
        what = "ok" if call.status == 0 else f"FAILED: {call.error}"
        if call.status == 0 and call.result.get("ips"):
            what += f", {call.result['ips'][0]['address']}"
        self.c.say(f"{call.plugin}: {what} ({call.seconds:.2f} s)", indent=4)

    def _rules(self, ns: str) -> tuple[str, list[str]]:
        """The tool that listed them and our rules in the pod netns: iptables `-A ...ISTIO...`
        lines, or in nftables mode every line of our `inet istio-proxy-*` tables (plus any
        iptables rule of ours, which that mode must not have left)."""
        if self.nftables:
            return self._nft_rules(ns)
        for tool in ("iptables-nft-save", "iptables-legacy-save", "iptables-save"):
            if shutil.which(tool):
                out = run(["ip", "netns", "exec", ns, tool, "-t", "nat"], check=False).stdout
                rules = [ln for ln in out.splitlines() if ln.startswith("-A") and "ISTIO" in ln]
                if rules:
                    return tool, rules
        return "", []

    def _nft_rules(self, ns: str) -> tuple[str, list[str]]:
        out = run(["ip", "netns", "exec", ns, "nft", "list", "ruleset", "inet"]).stdout
        lines: list[str] = []
        ours = False
        for line in out.splitlines():
            if line.startswith("table "):
                ours = line.split()[2].startswith(NFT_PREFIX)
            if ours and line.strip():
                lines.append(line.replace("\t", "  "))
        if shutil.which("iptables-save"):
            saved = run(["ip", "netns", "exec", ns, "iptables-save"], check=False).stdout
            lines += [ln for ln in saved.splitlines() if ln.startswith("-A") and "ISTIO" in ln]
        return "nft list ruleset inet", lines

    def _decision_and_rules(self, ns: str) -> list[str]:
        assert self._last_call is not None
        msgs = [m for m in self._last_call.log_messages()
                if m.startswith(("redirected", "skipped"))]
        self.c.say(f"decision: {msgs[0] if msgs else '(no decision line in the plugin log)'}")
        tool, rules = self._rules(ns)
        if rules and self.nftables:
            self.c.say(f"rules in the pod netns ({tool}, our tables; no iptables rules):")
            self.c.say("\n".join(rules), indent=4)
        elif rules:
            self.c.say(f"rules in the pod netns ({tool} -t nat, ISTIO lines):")
            self.c.say("\n".join(rules), indent=4)
        elif self.nftables:
            self.c.say(f"rules in the pod netns: no {NFT_PREFIX}* tables (the pod's traffic is "
                       "untouched)")
        else:
            self.c.say("rules in the pod netns: no ISTIO chains (the pod's traffic is untouched)")
        return rules

    def _validate(self, pod: dict[str, Any], ns: str, expect: int, timeout: float,
                  again: bool = False) -> None:
        argv = ["ip", "netns", "exec", ns, PY, "-I", str(PROBE), "--timeout", str(timeout),
                "--interval", "0.5"]
        t0 = time.monotonic()
        proc = run(argv, timeout=timeout + 30, check=False)
        took = time.monotonic() - t0
        last = (proc.stderr.strip().splitlines() or ["(no output)"])
        msg = last[0].removeprefix("error ") if proc.returncode else last[-1]
        label = "istio-validation again (restarted)" if again else "istio-validation"
        self.c.say(f"{label} (probe as uid {PROXY_UID}): exit {proc.returncode}: {msg} "
                   f"({took:.2f} s)")
        if proc.returncode != expect:
            raise DemoError(f"validation probe exited {proc.returncode}, expected {expect}: "
                            f"{msg}")
        if expect == 0 and self.api is not None:
            meta = pod["metadata"]
            self.api.update_pod(meta["namespace"], meta["name"], {"status": {
                "phase": "Running", "initContainerStatuses": [{
                    "name": "istio-validation", "ready": True, "restartCount": 1 if again else 0,
                    "image": "docker.io/istio/proxyv2:1.27.0", "imageID": "",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    "lastState": {}}]}})

    def _server(self, ns: str, name: str, host: str, port: int) -> Proc:
        assert self.box is not None
        proc = self.box.start_in(ns, name, [PY, "-m", "companions.demo.netcat", "serve", host,
                                            str(port)])
        proc.wait_line(lambda ln: ln == "ready", 15, "ready line")
        return proc

    def _connect(self, ns: str, host: str, port: int, message: str, uid: int | None) -> str:
        argv = ["ip", "netns", "exec", ns, PY, "-m", "companions.demo.netcat", "connect", host,
                str(port), message] + (["--uid", str(uid)] if uid is not None else [])
        out = run(argv, timeout=30, check=False).stdout.strip()
        if not out.startswith("reply: "):
            raise DemoError(f"connection to {host}:{port} failed: {out or 'no output'}")
        return out.removeprefix("reply: ")

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self) -> float | None:
        self.c.line()
        self.c.line("== Cleanup ==")
        if self.box is None:
            self.c.say("nothing was created yet")
            return None
        t0 = time.monotonic()
        procs, netns = len(self.box.procs), list(self.box.netns)
        problems = self.box.close()
        for name in leftover_netns(self.box.ns_name("")):  # made just before an interrupt
            try:
                delete_netns(name)
            except HarnessError as exc:
                problems.append(str(exc))
        for problem in problems:
            self.c.say(f"cleanup problem: {problem}")
        left = leftover_netns(self.box.ns_name(""))
        self.c.say(f"stopped {procs} processes; deleted netns {', '.join(netns) or '(none)'}; "
                   f"removed {self.box.root}")
        self.c.say("left behind: " + (", ".join(left) if left else "nothing"))
        return time.monotonic() - t0
