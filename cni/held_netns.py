"""A network namespace held by descriptor, entered only once proven to be what was checked.

For the node agent's drift check, repair in place and `explain`: they find a pod's netns by
scanning `/proc` and use it later. What they found must still be what they write to, although
the process it was found by may be gone by then and its pid (so `/proc/PID/ns/net`) given to a
process of another pod. So the netns is held open from the moment it is checked
(`hold_netns`), and every visit enters that descriptor and proves it first (`in_held_netns`):
the thread's netns has the nsfs inode that was checked, and holds one of the pod's IPs.

The plugin's own ADD and CHECK enter `CNI_NETNS` once, right away (`cni.netns.in_netns`), and
never import this module.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from cni import netns
from cni.errors import NetnsChanged, NetnsReturnFailed


class HeldNetns(NamedTuple):
    """A network namespace held open since it was checked, and what it was then.

    The open descriptor keeps the namespace alive, so its nsfs inode cannot be given to another
    namespace while held: (`dev`, `ino`) stays its identity. `in_held_netns` enters it by the
    descriptor and proves it again before the body runs. Whoever called `hold_netns` closes the
    descriptor (`close`); `expecting` copies share it."""

    fd: int
    dev: int
    ino: int
    where: str
    """How messages name it, e.g. `/proc/123/ns/net (net:[4026532001])`."""
    ips: tuple[str, ...] = ()
    """Addresses of which at least one must still be in it when it is entered (the pod's IPs
    that made it the pod's netns); empty: its identity alone is checked."""

    def expecting(self, ips: Iterable[str]) -> HeldNetns:
        """The same netns, to be entered only while it holds one of `ips`."""
        return self._replace(ips=tuple(ips))

    def close(self) -> None:
        os.close(self.fd)


def hold_netns(path: str, where: str = "", expect: tuple[int, int] | None = None) -> HeldNetns:
    """The netns at `path`, opened and checked as `cni.netns.in_netns` checks it, held.

    With `expect` (`st_dev`, `st_ino` of the path as stat'ed earlier), it must be that very
    namespace: a `/proc/PID/ns/net` whose pid was reused between the stat and this open names
    another one, and is refused (`NetnsChanged`) rather than held in its place."""
    fd = netns.open_netns(path)
    try:
        st = os.fstat(fd)
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            raise NetnsChanged(f"{path}: now net:[{st.st_ino}], not net:[{expect[1]}] as "
                               "when it was listed")
    except BaseException:
        os.close(fd)
        raise
    return HeldNetns(fd, st.st_dev, st.st_ino, where or f"{path} (net:[{st.st_ino}])")


@contextmanager
def in_held_netns(held: HeldNetns) -> Iterator[None]:
    """Run the body with the current thread inside `held`, entered by its descriptor, once it
    is proven to be the netns that was checked: this thread's netns has its nsfs identity (a
    descriptor closed and its number reused would name another), and, when `held.ips` is set,
    one of them is an address in it (a pod's netns kept alive by our descriptor after the pod
    is gone no longer has its IP). Otherwise `NetnsChanged` is raised before the body runs:
    nothing is written into a namespace that is not the one checked. A failure to switch back
    afterwards raises `NetnsReturnFailed` (see `_return`), never an `OSError`."""
    original = os.open(netns.CURRENT_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            netns._setns(held.fd, netns.CLONE_NEWNET)
        except OSError as exc:
            raise NetnsChanged(f"enter {held.where}: setns: {exc.strerror}") from exc
        try:
            _prove(held)
            yield
        finally:
            _return(original, held)
    finally:
        os.close(original)


def _return(original: int, held: HeldNetns) -> None:
    """Switch this thread back to `original` (the netns it was in before entering `held`).

    If that fails the thread must not go on as though it had: `NetnsReturnFailed`, which no
    handler of ordinary failures catches, after moving the thread into a new, empty netns of
    its own (`unshare`), so that whatever runs while the error unwinds (cleanup handlers,
    `finally` blocks) reaches neither the pod nor any other namespace."""
    try:
        netns._setns(original, netns.CLONE_NEWNET)
    except OSError as exc:
        try:
            netns._unshare(netns.CLONE_NEWNET)
            now = "moved into an empty netns of its own"
        except OSError as unshare_exc:
            now = f"still in it (unshare: {unshare_exc.strerror})"
        raise NetnsReturnFailed(
            f"could not switch this thread back out of {held.where} (setns: {exc.strerror}); "
            f"the thread is {now} and must do no more work") from exc


def _prove(held: HeldNetns) -> None:
    """This thread is in `held` (identity, then one of its IPs); `NetnsChanged` if not."""
    st = os.stat(netns.CURRENT_NETNS)
    if (st.st_dev, st.st_ino) != (held.dev, held.ino):
        raise NetnsChanged(f"{held.where}: entered net:[{st.st_ino}] instead, not the "
                           "namespace that was checked; nothing written")
    if not held.ips:
        return
    wanted = {_parse(ip) for ip in held.ips} - {None}
    if not wanted & set(netns.pod_addresses()):
        raise NetnsChanged(f"{held.where}: no longer holds {', '.join(held.ips)} (the pod's "
                           "netns changed since it was found); nothing written")


def _parse(ip: str) -> netns.Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None
