"""cni.userns: a pod netns owned by its own user namespace (`hostUsers: false`), for real.

The netns is made the way a runtime makes one for such a pod (`testbed.userns`: uid/gid map
`0 100000 65536`, both namespaces cloned at once, or the netns made after the map). Every
backend programs, checks and resets it from inside its user namespace, where the kernel
accepts owner-match rules; the same write from outside is refused, which is the failure this
module exists for. A netns of our own user namespace runs every step in place, no fork.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable

import pytest

from cni import apply, nft_exec, userns
from cni.apply import PodNetns
from cni.backends import RuleMode
from cni.errors import RulesApplyFailed, RulesConflict
from cni.netns import in_netns
from cni.nft_rules import build_nft_ruleset
from testbed.cleanup import Cleanup
from testbed.userns import UsernsNetns, create_userns_netns, ns_key, owner_of
from tests.cni.netns_fixtures import CONFIGS, need, ruleset

pytestmark = pytest.mark.root
BACKENDS = ["nft", "legacy", "python-iptables"]
OVERFLOW_UID = 65534  # how a uid unmapped in a user namespace reads from inside it


@pytest.fixture
def pod_userns(cleanup: Cleanup) -> Callable[..., UsernsNetns]:
    """Factory: `pod_userns(net_after_map=False)`, removed after the test."""
    need("ip")

    def make(net_after_map: bool = False) -> UsernsNetns:
        return create_userns_netns(cleanup, "icni-bu", net_after_map=net_after_map)

    return make


def _own_userns() -> tuple[int, int]:
    return ns_key("/proc/self/ns/user")


def _crash() -> None:
    os._exit(3)


def _conflict() -> None:
    raise RulesConflict("ISTIO_OUTPUT differs", details="-A ISTIO_OUTPUT -j RETURN")


def test_own_netns_runs_the_step_in_place(netns) -> None:  # noqa: ANN001
    with in_netns(netns.path):
        assert userns.foreign_owner() is None
        assert userns.as_owner(netns.path, os.getpid) == os.getpid()


def test_pod_netns_step_runs_in_a_child_inside_its_owner(pod_userns) -> None:  # noqa: ANN001
    ns = pod_userns()
    assert owner_of(ns.path) == ns_key(ns.userns) != _own_userns()
    with in_netns(ns.path):
        pid, where, uid = userns.as_owner(ns.path, lambda: (os.getpid(), _own_userns(),
                                                            os.getuid()))
        assert _own_userns() != where  # the caller itself never moved
    assert pid != os.getpid()
    assert where == ns_key(ns.userns)
    assert uid == OVERFLOW_UID  # host uid 0 kept: it owns what host root owns


def test_errors_come_back_as_raised(pod_userns) -> None:  # noqa: ANN001
    ns = pod_userns()
    with in_netns(ns.path):
        with pytest.raises(RulesConflict) as err:
            userns.as_owner(ns.path, _conflict)
        assert (err.value.msg, err.value.details) == ("ISTIO_OUTPUT differs",
                                                      "-A ISTIO_OUTPUT -j RETURN")
        with pytest.raises(RulesApplyFailed, match=f"owning {ns.path}: it died"):
            userns.as_owner(ns.path, _crash)
        with pytest.raises(RulesApplyFailed, match="PicklingError|AttributeError"):
            userns.as_owner(ns.path, lambda: lambda: None)  # a result that cannot travel


def test_a_multithreaded_caller_still_gets_in(pod_userns) -> None:  # noqa: ANN001
    """The agent has threads; the kernel refuses setns(CLONE_NEWUSER) to such a process, so
    the step must run in a (single-threaded) child."""
    ns = pod_userns()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        with in_netns(ns.path):
            assert userns.as_owner(ns.path, _own_userns) == ns_key(ns.userns)
    finally:
        stop.set()
        other.join()


def _binaries(backend: str) -> None:
    if backend == "python-iptables":
        need("iptables-legacy-save")
    else:
        need(f"iptables-{backend}-restore", f"iptables-{backend}-save",
             f"ip6tables-{backend}-restore")


@pytest.mark.parametrize("net_after_map", [False, True], ids=["cloned-together", "map-first"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_programs_checks_and_resets_a_pod_userns(
        pod_userns, backend: str, net_after_map: bool) -> None:  # noqa: ANN001
    _binaries(backend)
    ns = pod_userns(net_after_map)
    rs = ruleset("ipv6")  # both families, TPROXY routes, DNS capture, ::6 on lo
    assert apply.check(ns.path, rs, backend).state == "clean"
    assert apply.program(ns.path, rs, backend) == "applied"
    assert apply.program(ns.path, rs, backend) == "already-programmed"
    diff = apply.check(ns.path, rs, backend)
    assert (diff.state, diff.missing, diff.extra) == ("identical", (), ())
    flavor = "legacy" if backend == "python-iptables" else backend
    saved = ns.run(f"iptables-{flavor}-save") + ns.run(f"ip6tables-{flavor}-save")
    assert saved.count("-m owner --uid-owner 1337") >= 4  # both families' proxy exemptions
    apply.reset(ns.path, rs, backend)
    assert apply.check(ns.path, rs, backend).state == "clean"
    assert "ISTIO" not in ns.run(f"iptables-{flavor}-save")


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_outside_the_owner_the_kernel_refuses(pod_userns, backend: str) -> None:  # noqa: ANN001
    """The failure this module fixes: the same program, run by a writer outside the pod's
    user namespace, is refused, and leaves nothing behind."""
    _binaries(backend)
    ns = pod_userns()
    rs = ruleset("basic")
    with in_netns(ns.path), pytest.raises(RulesApplyFailed):
        PodNetns(ns.path, rs, backend)._program()  # the step without its owner
    assert apply.check(ns.path, rs, backend).state == "clean"


@pytest.mark.parametrize("way", ["libnftables", "nft"])
def test_native_nftables_programs_checks_and_resets_a_pod_userns(pod_userns, way: str) -> None:  # noqa: ANN001
    if way == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    need("nft")
    ns = pod_userns()
    rs = build_nft_ruleset(CONFIGS["ipv6"])
    mode = RuleMode(native_nftables=True, nftables_backend=way)
    assert apply.program(ns.path, rs, mode, ipv6=True) == "applied"
    assert apply.program(ns.path, rs, mode, ipv6=True) == "already-programmed"
    diff = apply.check(ns.path, rs, mode, ipv6=True)
    assert (diff.missing, diff.extra) == ((), ())
    assert "meta skuid 1337" in ns.run("nft", "list", "ruleset")
    apply.reset(ns.path, rs, mode, ipv6=True)
    assert ns.run("nft", "list", "tables", "inet").strip() == ""


@pytest.mark.parametrize("via", ["proc", "bind-mount"])
def test_a_step_that_enters_the_netns_itself_works_from_inside(pod_userns, via: str) -> None:  # noqa: ANN001
    """Steps may nest: a caller already inside the pod's user namespace (a backend run by
    `PodNetns` that enters the netns again, by the agent's /proc path or the runtime's bind
    mount) opens and enters it from there, and its own `as_owner` runs in place."""
    need("nft")
    ns = pod_userns()
    path = f"/proc/{ns.holder.pid}/ns/net" if via == "proc" else ns.path
    rs = build_nft_ruleset(CONFIGS["basic"])
    with in_netns(path):
        mode = RuleMode(native_nftables=True, nftables_backend="nft")
        done = userns.as_owner(path, lambda: apply.program(path, rs, mode, ipv6=False))
    assert done == "applied"
    assert "meta skuid 1337" in ns.run("nft", "list", "ruleset")


def test_legacy_takes_the_pods_own_lock_from_inside(pod_userns) -> None:  # noqa: ANN001
    """The pod-scoped xtables lock (`/proc/self/ns/net`) opens from inside the user namespace,
    so a legacy write there never waits on the host's `/run/xtables.lock` (held here, as
    kube-proxy does) and `--wait=30` never fails."""
    need("iptables-legacy-restore", "iptables-legacy-save")
    ns = pod_userns()
    rs = ruleset("basic")
    fd = os.open("/run/xtables.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert apply.program(ns.path, rs, "legacy") == "applied"
    finally:
        os.close(fd)
    assert apply.check(ns.path, rs, "legacy").state == "identical"
