"""cni.netns: entering a netns by path, reading its addresses, and upstream's getLocalIP."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from cni.errors import InvalidNetNS, NoPodAddress
from cni.netns import detect_ipv6, in_netns, pod_addresses


def ips(*texts: str) -> list:
    return [ipaddress.ip_address(t) for t in texts]


@pytest.mark.parametrize(
    ("addresses", "dual", "want"),
    [
        (("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), False, False),
        (("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), True, True),
        (("::1", "fe80::1", "fd00::5", "10.0.0.5"), False, True),
        (("169.254.1.1", "10.0.0.5"), False, False),
        (("10.0.0.5",), True, False),
        (("::ffff:10.0.0.5", "fd00::1"), False, False),
        (("ff02::1", "2001:db8::1"), False, True),
    ],
)
def test_detect_ipv6_follows_get_local_ip(addresses: tuple, dual: bool, want: bool) -> None:
    assert detect_ipv6(ips(*addresses), dual) is want


def test_detect_ipv6_without_usable_address() -> None:
    with pytest.raises(NoPodAddress):
        detect_ipv6(ips("127.0.0.1", "::1", "fe80::1"), dual_stack=True)


def test_missing_netns_path_is_invalid_netns(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "no-such-netns"
    with pytest.raises(InvalidNetNS, match="does not exist"), in_netns(str(missing)):
        pytest.fail("entered a missing netns")
    assert not missing.exists()  # never created


def test_regular_file_is_not_a_netns(tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "ns"
    f.write_text("")
    with pytest.raises(InvalidNetNS, match="not a namespace"), in_netns(str(f)):
        pytest.fail("entered a regular file")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Opening a FIFO for reading blocks until a writer comes: if the check regresses, the child
# hangs, and the deadline turns the hang into a failure instead of a stuck test session.
FIFO_CHILD = r"""
import json, sys
from cni.errors import InvalidNetNS
from cni.netns import in_netns
from cni.plugin import Plugin
from cni.protocol import dispatch
path = sys.argv[1]
try:
    with in_netns(path):
        print("entered")
except InvalidNetNS as exc:
    print(exc.msg)
status = {"sidecar.istio.io/status": "{}"}
pod = {"metadata": {"name": "p", "namespace": "n", "annotations": status},
       "spec": {"containers": [{"name": "istio-proxy", "args": ["proxy", "sidecar"]}]}}
class Source:
    def get_pod(self, namespace, name):
        return pod
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": path, "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=n;K8S_POD_NAME=p"}
conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni", "cni_agent_run_dir": sys.argv[2]}
out, _, status = dispatch(env, json.dumps(conf).encode(), Plugin(lambda c: Source()))
print(out.decode())
"""


def _enter_in_child(path: str, run_dir: str) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, "-c", FIFO_CHILD, path, run_dir], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    entered, answer = proc.stdout.splitlines()[:2]
    return entered, json.loads(answer)


def test_fifo_as_netns_is_refused_without_hanging(tmp_path) -> None:  # noqa: ANN001
    fifo = tmp_path / "netns"
    os.mkfifo(fifo)
    said, answer = _enter_in_child(str(fifo), str(tmp_path))
    assert said == f"enter netns {fifo}: a FIFO, not a namespace file"
    assert answer["code"] == 8 and "a FIFO" in answer["msg"]


def test_symlink_is_not_followed(tmp_path) -> None:  # noqa: ANN001
    fifo, link = tmp_path / "fifo", tmp_path / "netns"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    said, answer = _enter_in_child(str(link), str(tmp_path))
    assert said.startswith(f"enter netns {link}: a symbolic link (to ")
    assert answer["code"] == 8


@pytest.mark.parametrize("path", ["/dev/null", "/"])
def test_devices_and_directories_are_refused(path: str) -> None:
    kind = "a character device" if path == "/dev/null" else "a directory"
    with pytest.raises(InvalidNetNS, match=f"{kind}, not a namespace file"), in_netns(path):
        pytest.fail(f"entered {path}")


def test_other_namespace_type_is_refused() -> None:
    with pytest.raises(InvalidNetNS, match="not a netns"), in_netns("/proc/self/ns/uts"):
        pytest.fail("entered a UTS namespace as a netns")


def test_hot_path_imports_no_heavy_modules() -> None:
    code = ("import sys, cni.apply, cni.netns, cni.live_state, cni.backends.restore;"
            "print(sorted(m for m in ('pyroute2', 'iptc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__))))).stdout
    assert out.strip() == "[]"


@pytest.mark.root
def test_proc_namespace_link_is_followed_and_a_plain_link_is_not(netns, tmp_path) -> None:  # noqa: ANN001
    """/proc/PID/ns/net is the kernel's own link to a netns (some runtimes pass it)."""
    pause = subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "infinity"])
    try:
        proc_link = f"/proc/{pause.pid}/ns/net"
        want = os.stat(netns.path).st_ino
        deadline = time.monotonic() + 30
        while os.stat(proc_link).st_ino != want:  # ip netns exec has not switched yet
            assert time.monotonic() < deadline, "sleep never entered the netns"
            time.sleep(0.01)
        with in_netns(proc_link):
            assert os.stat("/proc/thread-self/ns/net").st_ino == want
    finally:
        pause.kill()
        pause.wait()
    link = tmp_path / "ns-link"
    link.symlink_to(netns.path)
    with pytest.raises(InvalidNetNS, match="a symbolic link"), in_netns(str(link)):
        pytest.fail("followed a plain symbolic link")


@pytest.mark.root
def test_in_netns_enters_and_restores(netns) -> None:  # noqa: ANN001
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with in_netns(netns.path):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(netns.path).st_ino
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


@pytest.mark.root
def test_in_netns_restores_after_an_error(netns) -> None:  # noqa: ANN001
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(RuntimeError), in_netns(netns.path):
        raise RuntimeError("boom")
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


@pytest.mark.root
def test_pod_addresses_in_go_order(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v4="10.77.0.2", v6="fd00:77::2")
    with in_netns(ns.path):
        got = pod_addresses()
    usable = [a for a in got if not a.is_link_local]
    assert usable == ips("127.0.0.1", "::1", "10.77.0.2", "fd00:77::2")
    assert ipaddress.ip_address("10.77.0.2") not in pod_addresses()  # back on the host
    assert detect_ipv6(got, dual_stack=False) is False
    assert detect_ipv6(got, dual_stack=True) is True


@pytest.mark.root
def test_pod_addresses_ipv6_only(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v6="fd00:78::2")
    with in_netns(ns.path):
        assert detect_ipv6(pod_addresses(), dual_stack=False) is True
