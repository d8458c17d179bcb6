"""With hostile content already in the pod netns, success means redirection (#17, the property).

A pod's root with NET_ADMIN can leave anything in its own netns: foreign nftables tables and
iptables chains, comments holding braces, quotes and newlines (some spelling rules of ours),
chains named like ours, rules of ours partly deleted. Whatever Hypothesis puts there, through
the CNI protocol (the conflist: bridge + host-local, then istio-cni; the agent serves it when
the tier runs with ISTIO_CNI_E2E_AGENT=1):

- ADD exit 0 for a meshed pod => a real connection from the app's uid lands on the proxy;
- after more of the same (our rules partly deleted, their text spelled back by comments and
  raw names), CHECK exit 0 => the same;
- a drift pass leaves the pod redirected and CHECK passing, and leaves a netns that is not
  the pod's (a decoy holding rules of ours, partly deleted) exactly as it was.

For iptables (nft and legacy) and native nftables, and for a user-namespaced pod. "Lands on
the proxy": a server on 15001 in the pod says "proxy", the real destination (the node's
gateway, port 8080) says "direct", and the app asks as uid 1000.

Every example needs real netns, processes and traffic: a few examples per mode (seeded,
derandomized), each mode with an explicit example of the two attacks of class 4 (a hiding
comment before the ADD; deleted rules spelled back after it).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cni import apply
from cni.backends import RuleMode
from cni.pipeline import plan, program_pod, rules_for
from node_daemon.actions import Reporter
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed import netns as nsutil
from testbed.cnirun import pod_ip
from testbed.node import Node, gateway
from testbed.pods import COMPLETED, NODE, make_pod
from testbed.traffic import Launcher, Server, netns_launcher
from testbed.userns import create_userns_netns, inside, inside_binary

pytestmark = pytest.mark.root
APP_UID = 1000
NFTABLES = {"native_nftables": True}
CASES = [  # (the node's istio-cni keys, a user-namespaced pod)
    pytest.param("nft", False, id="iptables-nft"),
    pytest.param("legacy", False, id="iptables-legacy"),
    pytest.param(NFTABLES, False, id="nftables"),
    pytest.param("nft", True, id="iptables-nft-userns"),
    pytest.param(NFTABLES, True, id="nftables-userns"),
]
EXAMPLES = settings(max_examples=2)
"""Two generated examples per mode, plus the explicit ones: each costs seconds of real work."""
_names = itertools.count()

# What comments are made of: the characters that end blocks, lines and quotes, and fragments
# of our own rules' text in both modes.
FRAGMENTS = ["{", "}", "{ ", "} ", "\n", "'", ";", " ", "table inet istio-proxy-nat {",
             "chain istio-redirect {", "meta l4proto tcp counter redirect to :15001",
             "chain output {", "counter jump istio-output"]
IPT_FRAGMENTS = [*FRAGMENTS, '"', "\\", "\\\"", "*nat", "COMMIT", ":ISTIO_OUTPUT - [0:0]",
                 "-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_REDIRECT -p tcp -j REDIRECT "
                 "--to-ports 15001", "-j ISTIO_OUTPUT"]


def text(fragments: list[str], limit: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(fragments), min_size=1, max_size=8).map(
        lambda parts: "".join(parts).encode()[:limit].decode(errors="ignore") or "x")


NFT_DELETES = ["redirect", "output-jump", "flush-output"]
IPT_DELETES = ["-t nat -D OUTPUT -j ISTIO_OUTPUT", "-t nat -F ISTIO_REDIRECT",
               "-t nat -F ISTIO_OUTPUT", "-t nat -D PREROUTING -p tcp -j ISTIO_INBOUND"]
foreign = st.fixed_dictionaries({
    "nft_comments": st.lists(text(FRAGMENTS, 120), max_size=2),
    "ipt_comments": st.lists(text(IPT_FRAGMENTS, 250), max_size=2),
    "lookalikes": st.booleans(),
    "ours": st.none() | st.sets(st.integers(0, 3)),
})
"""Before the ADD: foreign tables and rules with comments, chains named like ours, and maybe
our own rules already there with some deleted (indexes into the mode's deletions)."""
attack = st.fixed_dictionaries({
    "delete": st.sets(st.integers(0, 3)),
    "spell_back": st.booleans(),
    "nft_comments": st.lists(text(FRAGMENTS, 120), max_size=1),
    "ipt_comments": st.lists(text(IPT_FRAGMENTS, 250), max_size=1),
})
"""After the ADD: some of our rules deleted, maybe spelled back by comments and raw names."""
HIDE = {"nft_comments": ["{ { { table inet istio-proxy-nat {"],
        "ipt_comments": ['x\n-A OUTPUT -j ISTIO_OUTPUT\n"q\\'], "lookalikes": True,
        "ours": None}
QUIET = {"delete": set(), "spell_back": False, "nft_comments": [], "ipt_comments": []}
SPELL_BACK = {"delete": {0, 1}, "spell_back": True, "nft_comments": [], "ipt_comments": []}
CALM = {"nft_comments": [], "ipt_comments": [], "lookalikes": False, "ours": None}


class Pod:
    """One pod netns of the node (plain, or owned by its own user namespace) and how to run
    things in it: as the app, as the pod's root."""

    def __init__(self, node: Node, userns: bool) -> None:
        self.node = node
        if userns:
            ns = create_userns_netns(node.cleanup, f"{node.prefix}-pod")
            self.name, self.path = ns.name, ns.path
            self.launch: Launcher = lambda uid, args: inside(ns, uid, "testbed.sockets", *args)
            self.root: Callable[..., list[str]] = lambda *argv: inside_binary(ns, 0, *argv)
        else:
            self.name = node.new_pod_netns()
            self.path = nsutil.path(self.name)
            self.launch = netns_launcher(self.name)
            self.root = lambda *argv: ["ip", "netns", "exec", self.name, *argv]
            # the pause container: what the drift check finds the netns by
            nsutil.start_in(node.cleanup, self.name, "pause", ["sh", "-c", "echo ready; "
                            "exec sleep infinity"]).wait_line(lambda ln: ln == "ready", 30,
                                                              "ready")

    def run(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        """A command as the pod's root (NET_ADMIN in its own netns)."""
        out = subprocess.run(self.root(*argv), input=stdin, capture_output=True, text=True,
                             timeout=60, check=False,
                             env={**os.environ, "XTABLES_LOCKFILE": "/proc/self/ns/net"})
        assert out.returncode == 0 or not check, (argv, out.stderr)
        return out.stdout

    def lands_on(self) -> str:
        """Where one connection from the app's uid to the gateway lands."""
        argv = self.launch(APP_UID, ["probe", gateway(self.node), "8080", str(APP_UID), "1"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return out.stdout.split(" ")[1] if out.stdout.startswith("got ") else out.stdout


def iptables(param: str | dict) -> str:
    return f"iptables-{param}" if isinstance(param, str) else "iptables-nft"


def mode_of(param: str | dict) -> RuleMode:
    return RuleMode(native_nftables=True) if isinstance(param, dict) else RuleMode(
        iptables_backend=param)


def put_foreign(pod: Pod, param: str | dict, content: dict) -> None:
    tool = iptables(param)
    for i, comment in enumerate(content["nft_comments"]):
        pod.run("nft", "-f", "-", stdin=f'add table inet foreign{i} {{ comment "{comment}" ; }}\n')
    for comment in content["ipt_comments"]:
        pod.run(tool, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-m", "comment",
                "--comment", comment, "-j", "RETURN")
    if content.get("lookalikes"):
        pod.run(tool, "-t", "filter", "-N", "ISTIO_OUTPUT")
        pod.run(tool, "-t", "filter", "-A", "OUTPUT", "-d", "192.0.2.2", "-j", "ISTIO_OUTPUT")
        pod.run(tool, "-t", "nat", "-N", "ISTIO_CUSTOM")


def delete_ours(pod: Pod, param: str | dict, which: set[int]) -> None:
    if isinstance(param, dict):
        for i in sorted(which):
            if i >= len(NFT_DELETES):
                continue
            what = NFT_DELETES[i]
            if what == "flush-output":
                pod.run("nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-output",
                        check=False)
                continue
            chain, key = (("istio-redirect", "redirect") if what == "redirect"
                          else ("output", "jump"))
            listing = pod.run("nft", "-j", "list", "chain", "inet", "istio-proxy-nat", chain,
                              check=False)
            for obj in json.loads(listing or '{"nftables": []}')["nftables"]:
                rule = obj.get("rule")
                if rule and any(key in s for s in rule["expr"]):
                    pod.run("nft", "delete", "rule", "inet", "istio-proxy-nat", chain,
                            "handle", str(rule["handle"]), check=False)
    else:
        for i in sorted(which):
            pod.run(iptables(param), *IPT_DELETES[i].split(), check=False)


NFT_SPELLED = {  # what a table's comment spells for each of NFT_DELETES
    0: "chain istio-redirect {\nmeta l4proto tcp counter redirect to :15001\n}\n",
    1: "chain output {\ncounter jump istio-output\n}\n",
}
IPT_SPELLED = {0: "-A OUTPUT -j ISTIO_OUTPUT",  # what a raw name spells for IPT_DELETES
               1: "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
               3: "-A PREROUTING -p tcp -j ISTIO_INBOUND"}


def spell_back(pod: Pod, param: str | dict, deleted: set[int]) -> None:
    """Comments and raw names that spell back exactly the rules deleted (class 4's
    forgeries): a reader that counts braces or lines sees nothing missing."""
    if isinstance(param, dict):
        for i, body in enumerate(NFT_SPELLED[d] for d in sorted(deleted) if d in NFT_SPELLED):
            forged = f"\n}}\ntable inet istio-proxy-nat {{\n{body}}}\ntable inet x {{\n"
            pod.run("nft", "-f", "-", stdin=f'add table inet zz{i} {{ comment "{forged}" ; }}\n')
        return
    tool = iptables(param)
    spelled = [IPT_SPELLED[d] for d in sorted(deleted) if d in IPT_SPELLED]
    builtin = [line for line in spelled if "ISTIO_REDIRECT -p" not in line]
    if builtin:  # a comment (quoted, newlines kept) spells the built-in chains' lines
        pod.run(tool, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-m", "comment",
                "--comment", "x\n" + "\n".join(builtin) + '\n"q', "-j", "RETURN")
    if len(builtin) < len(spelled):  # a raw name spells the line of our chain
        pod.run(tool, "-t", "nat", "-N", "AAA", check=False)
        pod.run(tool, "-t", "nat", "-A", "AAA", "-m", "recent", "--rcheck", "--name",
                f"x\n{IPT_SPELLED[1]}\n-A AAA", "-j", "RETURN")


def state(ns_name: str) -> str:
    """Everything a netns holds in both packet filters (counters left out)."""
    out = []
    for argv in (("iptables-nft-save",), ("iptables-legacy-save",), ("nft", "list", "ruleset")):
        text = nsutil.ns_exec(ns_name, *argv, check=False)
        out += [ln.split(" [", 1)[0] for ln in text.splitlines()
                if ln.strip() and not ln.startswith("#") and "packets" not in ln]
    return "\n".join(out)


@pytest.mark.parametrize(("node", "userns"), CASES, indirect=["node"])
def test_success_means_redirection_whatever_the_netns_holds(node: Node, userns: bool) -> None:
    entry = node.istio_entry()
    param = NFTABLES if entry.get("native_nftables") else entry["iptables_backend"]
    mode = mode_of(param)
    Server(netns_launcher(node.name), 8080, "direct", node.cleanup)
    decoy = nsutil.create_netns(node.cleanup, f"{node.prefix}-decoy", v4="10.250.0.9",
                                pause=True)
    program_pod(decoy.path, plan(make_pod("decoy", init_status=COMPLETED))[2], mode)
    decoy.run(*(("nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-output")
                if param == NFTABLES else (iptables(param), "-t", "nat", "-F", "ISTIO_REDIRECT")))
    decoy_state = state(decoy.name)
    drift = DriftChecker(RepairConfig(node_name=NODE), Reporter(None, Metrics(), NODE),
                         NetnsFinder(Path("/proc")), mode)
    seen = {"add ok": 0, "add refused": 0, "check ok": 0, "check refused": 0}

    @EXAMPLES
    @given(before=foreign, after=attack)
    @example(before=HIDE, after=QUIET)
    @example(before=CALM, after=SPELL_BACK)
    def property_holds(before: dict, after: dict) -> None:
        pod_ns = Pod(node, userns)
        name = f"adv-{next(_names)}"
        pod = node.api.add_pod(make_pod(name, ip="10.0.0.0", init_status=COMPLETED,
                                        phase="Running"))
        put_foreign(pod_ns, param, before)
        if before["ours"] is not None:  # (no address yet: the pod's IPv4-only rules)
            ours = rules_for(plan(pod)[2], False, mode.native_nftables)
            apply.program(pod_ns.path, ours, mode, ipv6=False)
            delete_ours(pod_ns, param, before["ours"])
        calls = node.add(pod_ns.name, pod)
        assert calls[0].status == 0, calls[0].stderr
        added = calls[-1]
        if added.status != 0:  # refused: a clean CNI error, nothing claimed
            assert added.result.get("code") in (102, 103, 104), added.stdout + added.stderr
            seen["add refused"] += 1
            return
        seen["add ok"] += 1
        Server(pod_ns.launch, 15001, "proxy", node.cleanup)
        assert pod_ns.lands_on() == "proxy", "ADD exit 0, app traffic not redirected"

        ip = pod_ip(calls)
        pod = node.api.update_pod("shop", name, {"status": {"podIP": ip,
                                                            "podIPs": [{"ip": ip}]}})
        delete_ours(pod_ns, param, after["delete"])
        put_foreign(pod_ns, param, {**after, "lookalikes": False})
        if after["spell_back"]:
            spell_back(pod_ns, param, after["delete"])
        checked = node.call_istio(pod_ns.name, pod, "CHECK", prev=added.result)
        if checked.status == 0:
            seen["check ok"] += 1
            assert pod_ns.lands_on() == "proxy", "CHECK exit 0, app traffic not redirected"
        else:
            seen["check refused"] += 1
            assert checked.result.get("code") in (102, 104), checked.stdout + checked.stderr

        [result] = drift.check_all([pod])
        assert result.result in ("success", "in_sync"), result.message
        again = node.call_istio(pod_ns.name, pod, "CHECK", prev=added.result)
        assert again.status == 0, again.stdout + again.stderr
        assert pod_ns.lands_on() == "proxy", "after the drift pass"
        assert state(decoy.name) == decoy_state, "the drift pass touched another netns"

    property_holds()
    # the explicit examples reach both sides of both implications
    assert seen["add ok"] and seen["check ok"] and seen["check refused"], seen
