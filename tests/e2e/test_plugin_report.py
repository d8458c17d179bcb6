"""The in-process plugin's report to the node agent's `log.sock` is off the pod's critical path:
written once, non-blocking and bounded, never waiting for the agent. A sink that accepts and
reads nothing until the plugin has exited neither fails nor holds up the ADD, and still finds a
whole report (its last lines and the ADD's event) once it reads."""

from __future__ import annotations

import json
import os
import socket

import pytest

from cni.plugin_log import MAX_REPORT
from testbed.node import Node, istio_lines
from testbed.pods import workload

pytestmark = [pytest.mark.root, pytest.mark.in_process]


def _silent_sink(path: str) -> socket.socket:
    """A root-owned 0600 socket at `path` whose owner reads nothing until told to."""
    old = os.umask(0o177)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


def _requests(data: bytes) -> list[tuple[str, bytes]]:
    """The complete HTTP requests in `data`, in order: (path, body); AssertionError if the
    stream ends inside one."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"a request cut short in its headers ({len(data)} bytes)"
        lines = head.decode().split("\r\n")
        length = int(next(ln.split(":", 1)[1] for ln in lines
                          if ln.lower().startswith("content-length:")))
        assert len(rest) >= length, f"a request cut short: {len(rest)} of {length} body bytes"
        out.append((lines[0].split()[1], rest[:length]))
        data = rest[length:]
    return out


def test_a_sink_that_reads_nothing_neither_fails_nor_waits_for_the_add(node: Node) -> None:
    sink = _silent_sink(str(node.run_dir / "log.sock"))
    node.cleanup.add("close the sink", sink.close)
    # a 300 KB log line (istio-proxy's DNS capture flag is not a boolean): more than a Unix
    # socket's send buffer, so a report that tried to write it all would have to wait
    pod = node.api.add_pod(workload("meshed-pod",
                                    proxy_env={"ISTIO_META_DNS_CAPTURE": "x" * 300_000}))
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)  # returns once the plugin has exited; the sink read nothing
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))

    sink.settimeout(10)
    conn, _ = sink.accept()  # only now does the agent's side look
    with conn:
        conn.settimeout(10)
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    assert len(data) <= MAX_REPORT
    requests = _requests(data)
    assert [path for path, _ in requests] == ["/log", "/event"]
    lines = [json.loads(line) for line in json.loads(requests[0][1])]
    assert lines[-1]["msg"].startswith("redirected: ")
    assert lines[-1]["pod"] == f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    assert json.loads(requests[1][1])["outcome"] == "redirected"
