"""The agent-served path and the in-process path, on the same hostile input, give the same answer
and do the same thing: same exit status, same CNI error (byte for byte), nothing programmed
where either refuses. The agent is never less safe than the plugin alone.

Two tiers:

- the netns corpus, through real processes: the plugin run as the runtime runs it, the node
  agent's real `cni.sock` server, the API stand-in, a meshed pod (so a netns that passed would
  be programmed) and an excluded one, and CNI_NETNS naming a FIFO, a regular file, a directory,
  a device, a socket, symlinks (to another pod's netns, to the host's, dangling), namespaces of
  other types, the host's netns, a netns that vanished, a relative and an empty path;
- junk environment and stdin (the strategies of `test_hostile_input.py`), property-based and
  in-process: each case handed to the thin client (`cni.agent_client.serve`) and the agent
  serving it in this process, and to `dispatch` alone, with CNI_NETNS drawn from the corpus.

Before the thin client, the served path opened CNI_NETNS with a plain `open()`: a symlink to
another pod's netns was refused in-process (code 8) and programmed through the agent (exit 0).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cni import agent_client, wire
from cni.plugin import Plugin
from cni.protocol import dispatch
from node_daemon.cni_server import CniServer, CniService
from node_daemon.metrics import Metrics
from testbed.agent import serve_plugin_calls
from testbed.cleanup import Cleanup
from testbed.cnirun import k8s_args
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.netns import create_netns, delete_netns
from testbed.netns import path as netns_path
from testbed.node import Node, missing_prerequisites, sandboxed_node, saved_rules
from testbed.pods import workload
from tests.hardening.test_hostile_input import PLAIN_POD, cni_args, configs, env_names

# --- the netns corpus, through real processes ---------------------------------------------------


def _corpus(tmp: Path, node: Node) -> dict[str, str]:
    """Every kind of CNI_NETNS the tier tries, by name; "other-pod" names a real pod netns (with
    an address, so it could be programmed) that must never be programmed through another
    path."""
    other = create_netns(node.cleanup, "icni-diff-other", v4="10.77.8.2").name
    fifo, regular, directory = tmp / "fifo", tmp / "regular", tmp / "dir"
    os.mkfifo(fifo)
    regular.write_text("not a netns")
    directory.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "sock"))
    node.cleanup.add("close the corpus socket", sock.close)
    links = {"link-other-pod": netns_path(other), "link-host": "/proc/self/ns/net",
             "link-dangling": str(tmp / "nothing")}
    for name, target in links.items():
        (tmp / name).symlink_to(target)
    gone = create_netns(node.cleanup, "icni-diff-gone")
    delete_netns(gone.name)
    return {
        "other-pod": netns_path(other),
        **{name: str(tmp / name) for name in links},
        "fifo": str(fifo), "regular": str(regular), "dir": str(directory),
        "char-device": "/dev/null", "socket": str(tmp / "sock"),
        "host-self": "/proc/self/ns/net", "host-by-pid": f"/proc/{os.getpid()}/ns/net",
        "mnt-ns": "/proc/self/ns/mnt", "uts-ns": "/proc/self/ns/uts",
        "vanished": gone.path, "relative": "var/run/netns/x", "empty": "",
    }


@pytest.fixture
def served_node(tmp_path: Path, kube_api: KubeApiServer) -> Iterator[Node]:
    if reason := missing_prerequisites():
        pytest.skip(reason)
    with sandboxed_node(tmp_path, kube_api, prefix="icni-diff", subnet_index=7,
                        subnet_v4="10.77.7.0/24",
                        istio={"pod_lookup_attempts": 1, "pod_lookup_deadline_seconds": 5}
                        ) as node:
        node.agent = serve_plugin_calls(node.cleanup, node.run_dir,
                                        kubernetes_api_client(kube_api), watch=False)
        yield node


def _call(node: Node, netns: str, pod: dict, *, served: bool, command: str = "ADD"):  # noqa: ANN202
    conf = {**node.istio_entry(), "name": node.conflist["name"],
            "cniVersion": node.conflist["cniVersion"], "agent_serve": served}
    meta = pod["metadata"]
    return node.runtime.call("istio-cni", command, netns, "c-diff", conf,
                             k8s_args(meta["namespace"], meta["name"]))


def _istio_lines_on_host() -> list[str]:
    out = []
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        proc = subprocess.run([tool], capture_output=True, text=True, check=False)
        out += [ln for ln in proc.stdout.splitlines() if "ISTIO" in ln]
    return out


EXCLUDED_KINDS = ("link-other-pod", "fifo", "host-self", "vanished")
"""The kinds also tried for a pod of an excluded namespace (which never needs its netns)."""


@pytest.mark.root
def test_every_netns_kind_gets_the_same_answer_and_effect_on_both_paths(
        served_node: Node, tmp_path: Path) -> None:
    node = served_node
    (tmp_path / "corpus").mkdir()
    corpus = _corpus(tmp_path / "corpus", node)
    other = corpus["other-pod"].rsplit("/", 1)[-1]
    host_before = _istio_lines_on_host()
    meshed = node.api.add_pod(workload("meshed-pod"))
    excluded = node.api.add_pod(workload("meshed-pod", name="sys", namespace="kube-system"))
    answers = {}
    for kind, path in corpus.items():
        if kind == "other-pod":
            continue
        for pod in (meshed, excluded) if kind in EXCLUDED_KINDS else (meshed,):
            served = _call(node, path, pod, served=True)
            alone = _call(node, path, pod, served=False)
            answers[kind, pod is excluded] = served.status, served.stdout
            assert (served.status, served.stdout) == (alone.status, alone.stdout), (kind, pod)
            assert "ISTIO" not in saved_rules(other), f"{kind}: another pod's netns programmed"
    assert _istio_lines_on_host() == host_before, "the host's netns was programmed"
    for kind in corpus.keys() - {"other-pod"}:  # the meshed pod needs its netns: all refused
        status, out = answers[kind, False]
        assert status == 1 and json.loads(out)["code"] == (4 if kind == "empty" else 8), (kind, out)
    # the excluded pod never needs its netns, but the host's own is refused before anything
    assert {kind: answers[kind, True][0] for kind in EXCLUDED_KINDS} == {
        "link-other-pod": 0, "fifo": 0, "host-self": 1, "vanished": 0}
    assert node.agent.served("ADD", "ok") == 0


@pytest.mark.root
def test_a_pod_netns_is_programmed_the_same_on_both_paths(served_node: Node) -> None:
    """The whole chain (bridge and host-local first: the pod needs an address), served and
    then in-process, each in its own pod netns."""
    node = served_node
    pod = node.api.add_pod(workload("meshed-pod"))
    served_ns, alone_ns = node.new_pod_netns(), node.new_pod_netns()
    served = node.add(served_ns, pod)
    node.istio_entry()["agent_serve"] = False
    alone = node.add(alone_ns, pod)
    assert [c.status for c in served] == [c.status for c in alone] == [0, 0], alone[-1].stdout
    assert node.agent.served("ADD", "ok") == 1
    assert _without_probe(saved_rules(served_ns)) == _without_probe(saved_rules(alone_ns))
    assert "-A OUTPUT -j ISTIO_OUTPUT" in saved_rules(served_ns)


PROBE_RESIDUE = "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n"
"""What upstream's nft probe (a rule added to `filter INPUT`, then deleted) leaves in a netns
it detects in: an empty `filter` table. The in-process plugin probes every pod netns, as
upstream does; the agent knows its node and probes none (`cni.backends.node_facts`)."""


def _without_probe(saved: str) -> str:
    return (saved + "\n").replace(PROBE_RESIDUE, "", 1)


# --- junk environment and stdin, property-based, in this process --------------------------------

class _Api:
    """The agent's API client for this tier: the same never-redirected pod for every GET."""

    def get_pod(self, namespace: str, name: str) -> dict:
        return PLAIN_POD


class _Source:
    def get_pod(self, namespace: str, name: str) -> dict:
        return PLAIN_POD


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """An agent serving in this process at `<run dir>/cni.sock`, and CNI_NETNS values to draw
    from: a real netns, and every kind the process tier uses that needs no node."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's socket and a network namespace")
    run_dir = tmp_path_factory.mktemp("diff-run")
    tmp = tmp_path_factory.mktemp("diff-corpus")
    with Cleanup() as cleanup:
        pod = create_netns(cleanup, "icni-diffh")
        fifo = tmp / "fifo"
        os.mkfifo(fifo)
        (tmp / "link").symlink_to(pod.path)
        server = CniServer(run_dir / "cni.sock",
                           CniService(Metrics(), lambda: (True, ""), None, _Api()))
        cleanup.add("stop the agent", server.stop)
        logging.disable(logging.CRITICAL)
        cleanup.add("logging back on", lambda: logging.disable(logging.NOTSET))
        yield run_dir, [pod.path, str(fifo), str(tmp / "link"), "/proc/self/ns/net",
                        "/proc/self/ns/uts", "/dev/null", str(tmp), str(tmp / "nothing")]


def _both_paths(env: dict[str, str], stdin: bytes,
                socket_path: str | None = None) -> None:
    """The call in-process, and as the thin client hands it over (or, with `socket_path`,
    straight to that agent with the netns a runtime would hand it): the same exit status and
    stdout, whichever path answered (a fallback is answered in-process)."""
    alone = dispatch(env, stdin, Plugin(lambda conf: _Source()))
    environb = {k.encode(): v.encode() for k, v in env.items()}
    if socket_path is None:
        served = agent_client.serve(environb, stdin)
    else:
        fd = os.open(env["CNI_NETNS"], os.O_RDONLY)
        try:
            served = agent_client.call(socket_path, wire.request(environb, stdin), fd, 20)
        finally:
            os.close(fd)
    if isinstance(served, agent_client.Fallback):
        got = dispatch(env, stdin, Plugin(lambda conf: _Source()))
    else:
        got = served.stdout, b"", served.status
    assert (got[2], got[0]) == (alone[2], alone[0])


DIFF = settings(max_examples=min(settings().max_examples, 500))
"""Each case is two calls, one over the socket: 500 keep the tier to a few seconds."""


@DIFF
@given(st.dictionaries(env_names, st.text(string.printable, max_size=20), max_size=7), cni_args,
       configs, st.integers(min_value=0, max_value=7), st.sampled_from(["ADD", "CHECK"]))
def test_junk_env_and_config_get_the_same_answer_served_or_not(
        harness: tuple[Path, list[str]], env_over: dict[str, str], args: str, conf: dict,
        netns_index: int, command: str) -> None:
    run_dir, netns = harness
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns[netns_index],
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args, **env_over}
    assume("\x00" not in "".join(env.values()))
    conf = {**conf, "cni_agent_run_dir": str(run_dir)}
    _both_paths(env, json.dumps(conf).encode())


@DIFF
@given(st.binary(max_size=300), st.sampled_from(["ADD", "CHECK"]))
def test_junk_stdin_gets_the_same_answer_served_or_not(
        harness: tuple[Path, list[str]], stdin: bytes, command: str) -> None:
    run_dir, netns = harness
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns[0],
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
    # junk names no run dir, so it goes straight to this agent, as a client would send it
    _both_paths(env, stdin, str(run_dir / "cni.sock"))
