"""Enter a pod's network namespace, and read its addresses, for the current thread.

Hot path: the plugin enters the pod netns once per ADD/CHECK, so this module uses only the
standard library (`ctypes` for `setns(2)`, `fcntl`/`socket` ioctls, `/proc`), not pyroute2:
`import pyroute2` alone costs ~140 ms, several times the plugin's whole budget, and its
`setns()` defaults to `O_CREAT` (it silently creates a missing netns). Here a missing path is an
`InvalidNetNS`, never a new namespace.

`setns(CLONE_NEWNET)` is per thread: everything inside `in_netns()` (sockets, child processes,
libiptc) runs in the pod netns, on this thread only.

A netns owned by a pod's own user namespace (`hostUsers: false`) is entered the same way, and
its facts read the same way; what writes or compares its packet filter runs as its owner
(`cni.userns.as_owner`, which `cni.apply.PodNetns` goes through for every backend).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from cni import netns_check
from cni.errors import InvalidNetNS, NoPodAddress

CLONE_NEWNET = 0x40000000
SIOCGIFCONF = 0x8912
IFREQ_SIZE = 40  # sizeof(struct ifreq) on 64-bit Linux
CURRENT_NETNS = "/proc/thread-self/ns/net"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_libc: ctypes.CDLL | None = None
_LINK_LOCAL_MULTICAST = {
    4: ipaddress.ip_network("224.0.0.0/24"),
    6: ipaddress.ip_network("ff02::/16"),
}


def _c() -> ctypes.CDLL:
    """libc, loaded on first use."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _setns(fd: int, nstype: int) -> None:
    """`setns(2)` through libc (Python 3.11 has no os.setns); raises OSError with errno."""
    if _c().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unshare(flags: int) -> None:
    """`unshare(2)` through libc (Python 3.11 has no os.unshare); raises OSError with errno."""
    if _c().unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_netns(path: str) -> int:
    """An fd for setns on the netns at `path`; `InvalidNetNS` for anything else. The check is
    `cni.netns_check.open_netns`, the one every path (in-process, thin client, agent) makes."""
    return netns_check.open_netns(path)


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the body with the current thread inside the netns at `path`, then switch back.

    `path` is a CNI_NETNS (`/var/run/netns/x`, `/proc/PID/ns/net`). It is opened read-only, so
    nothing is ever created; a missing path or a non-netns file raises `InvalidNetNS`.
    """
    target = _open_netns(path)
    try:
        original = os.open(CURRENT_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target, CLONE_NEWNET)
            except OSError as exc:
                raise InvalidNetNS(f"enter netns {path}: setns: {exc.strerror}") from exc
            try:
                yield
            finally:
                # Failing to return would leave this thread (the plugin's only one) in the
                # pod netns; let that OSError propagate rather than continue in the wrong place.
                _setns(original, CLONE_NEWNET)
        finally:
            os.close(original)
    finally:
        os.close(target)


def _ipv4_addresses() -> list[tuple[int, Address]]:
    """(ifindex, address) for every IPv4 address, via SIOCGIFCONF on a socket of this netns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        size = 64 * IFREQ_SIZE
        while True:
            buf = bytearray(size)
            bufaddr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            ifconf = struct.pack("iL", size, bufaddr)
            used = struct.unpack("iL", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, ifconf))[0]
            if used < size:  # a full buffer may mean truncation: grow and retry
                break
            size *= 2
        out: list[tuple[int, Address]] = []
        for off in range(0, used, IFREQ_SIZE):
            name = buf[off : off + 16].split(b"\0", 1)[0].decode()
            addr = ipaddress.IPv4Address(bytes(buf[off + 20 : off + 24]))
            out.append((_ifindex(name.split(":", 1)[0]), addr))
        return out


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 1 << 30  # vanished meanwhile: sort it last


def _ipv6_addresses() -> list[tuple[int, Address]]:
    """(ifindex, address) from /proc/thread-self/net/if_inet6 (this thread's netns)."""
    try:
        with open("/proc/thread-self/net/if_inet6") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:  # IPv6 disabled in this kernel/netns
        return []
    out: list[tuple[int, Address]] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2:
            out.append((int(fields[1], 16), ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out


def pod_addresses() -> list[Address]:
    """All addresses of the current thread's netns, in Go's `net.InterfaceAddrs()` order.

    Go lists interfaces by index and, per interface, the rtnetlink address dump's order: IPv4
    addresses first, then IPv6. We sort by (ifindex, family), keeping each source's order within.
    We read `/proc/thread-self/net`, not `/proc/net`: the latter follows the thread group
    leader's netns, which is only right when called on the main thread (the plugin's case).
    """
    both = [(i, 4, a) for i, a in _ipv4_addresses()] + [(i, 6, a) for i, a in _ipv6_addresses()]
    both.sort(key=lambda t: (t[0], t[1]))
    return [a for _, _, a in both]


def _usable(addr: Address) -> bool:
    """Go: not IsLoopback, IsLinkLocalUnicast or IsLinkLocalMulticast (224.0.0.0/24, ff02::/16)."""
    if addr.is_loopback or addr.is_link_local:
        return False
    return addr not in _LINK_LOCAL_MULTICAST[addr.version]


def detect_ipv6(addresses: Iterable[Address], dual_stack: bool) -> bool:
    """Upstream's `getLocalIP`: does the pod get ip6tables rules?

    The first non-loopback, non-link-local address decides; with dual stack, keep looking until
    an IPv6 one turns up (else the answer is IPv4). No usable address raises `NoPodAddress`.
    """
    found = False
    for addr in addresses:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not _usable(addr):
            continue
        if addr.version == 6 or not dual_stack:
            return addr.version == 6
        found = True
    if found:
        return False
    raise NoPodAddress("detect pod IP family: no non-loopback, non-link-local address in netns")


class NetnsFacts(NamedTuple):
    """What a pod's rule set depends on in its netns, read once per visit (`read_facts`)."""

    addresses: tuple[Address, ...]

    def ipv6(self, dual_stack: bool) -> bool:
        """Does the pod get ip6tables rules? (`detect_ipv6` on these addresses)"""
        return detect_ipv6(self.addresses, dual_stack)


def read_facts() -> NetnsFacts:
    """The facts of the netns the current thread is in."""
    return NetnsFacts(tuple(pod_addresses()))


@contextmanager
def scratch_netns() -> Iterator[None]:
    """Run the body with the current thread in a brand-new, empty netns, then switch back.

    For asking the kernel how it canonicalises something (e.g. how nftables lists a rule set)
    without touching any real namespace. The netns has no name and no bind mount: it is gone
    once the body's sockets and children are, so nothing needs cleaning up.
    """
    original = os.open(CURRENT_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _unshare(CLONE_NEWNET)
        try:
            yield
        finally:
            _setns(original, CLONE_NEWNET)
    finally:
        os.close(original)


def open_netns(path: str) -> int:
    """An O_RDONLY descriptor of the network namespace at `path`, checked the way `in_netns`
    checks it (never blocks, refuses what is not a netns); the caller closes it."""
    return netns_check.open_netns(path)


def check_netns_fd(fd: int, what: str) -> None:
    """Refuse a descriptor that is not a network namespace (`what` names it in the error):
    for a descriptor that came from another process, which could be any open file."""
    netns_check.check_netns_fd(fd, what)
