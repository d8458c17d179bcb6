"""A long-lived inotify watch on directories that degrades to polling instead of failing.

inotify, not polling: a changed conflist is seen within milliseconds, and an idle node costs
nothing. Directories are watched rather than files, because the files we care about are replaced
by rename (our own writes, aws-node's MOVED_TO, the kubelet's `..data` symlink swap for a
projected token), which a watch on the old inode would miss.

One `FsWatch` lives as long as its loop: one inotify instance, kept. Instances are a per-user
kernel resource (`fs.inotify.max_user_instances`, 128 by default, shared by every root process
on the node), so an instance closed between passes is one another process may take, and then the
next pass has none. Each pass re-declares what it watches (`begin`, `add`, `commit`): adding a
directory already watched only updates its mask (same watch descriptor), and what a pass no
longer declares is dropped, so the set follows the node (a primary config's symlink target that
moved, a directory that appeared).

When inotify fails (EMFILE: no instance left; ENOSPC: `max_user_watches` reached; ENOMEM; any
error from the kernel), the watch degrades to **polling**: `wait` returns every `POLL_SECONDS`
so the caller re-checks everything, one WARNING says why, `report(True)` lets the owner count it,
and every later pass tries inotify again (`begin`), so the slot is taken back as soon as one is
free. A watch never raises because of inotify. The only timeouts are the bounded reads that let
the loop notice `stop` and the poll interval; neither decides anything.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger(__name__)

CHANGE_EVENTS = F.CREATE | F.CLOSE_WRITE | F.MODIFY | F.DELETE | F.MOVED_TO | F.MOVED_FROM
NET_DIR_EVENTS = CHANGE_EVENTS | F.ATTRIB | F.DELETE_SELF | F.MOVE_SELF
STOP_CHECK_SECONDS = 0.25
"""How often a blocked wait looks at the stop event (not a sync delay: events wake at once)."""
COALESCE_MS = 20
"""After the first event, gather the burst that follows (a writer's temp + rename)."""
POLL_SECONDS = 1.0
"""Without inotify, how often `wait` returns so the caller re-checks everything (and inotify is
tried again): a change is seen within this long instead of within milliseconds."""

_HINTS = {
    errno.EMFILE: "the per-user limit fs.inotify.max_user_instances (128 by default, shared by "
                  "every root process on the node) or the process's open-file limit is reached",
    errno.ENFILE: "the system-wide open-file limit is reached",
    errno.ENOSPC: "the per-user limit fs.inotify.max_user_watches is reached",
    errno.ENOMEM: "the kernel is out of memory for inotify",
}


@dataclass(frozen=True)
class FsEvent:
    directory: Path
    name: str
    mask: int

    def describe(self) -> str:
        names = "|".join(f.name for f in F.from_mask(self.mask)) or "overflow"
        return f"{self.directory / self.name if self.name else self.directory} ({names})"


def _why(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "error")
    hint = _HINTS.get(exc.errno or 0)
    return f"{code}: {exc.strerror or exc}" + (f" ({hint})" if hint else "")


class FsWatch:
    """inotify watches on directories; `wait` returns the relevant events, [] on stop, timeout
    or a poll tick. `report(polling)` is called on every switch between inotify and polling."""

    def __init__(self, report: Callable[[bool], None] | None = None) -> None:
        self._report = report
        self._inotify: INotify | None = None
        self._dirs: dict[int, Path] = {}
        self._filters: dict[int, list[Callable[[str], bool]] | None] = {}
        """wd -> the name filters declared this pass (None: every name matters)."""
        self._masks: dict[int, int] = {}
        self._declared: set[int] = set()
        self.polling = False
        """True while inotify is unavailable and `wait` polls."""
        self._open()

    # --- the inotify instance ----------------------------------------------------------------

    def _open(self) -> bool:
        try:
            self._inotify = INotify()
        except OSError as exc:
            self._degrade(f"cannot create an inotify instance: {_why(exc)}")
            return False
        return True

    def _degrade(self, why: str) -> None:
        """Drop the instance (its watches may be what others lack) and poll from now on."""
        self._drop_instance()
        if self.polling:
            log.debug("still polling: %s", why)
            return
        self.polling = True
        log.warning("%s: polling every %.0f s instead (changes are seen that much later), "
                    "and retrying inotify on every poll", why, POLL_SECONDS)
        if self._report is not None:
            self._report(True)

    def _drop_instance(self) -> None:
        if self._inotify is not None:
            try:
                self._inotify.close()
            except OSError:
                pass
            self._inotify = None
        self._dirs.clear()
        self._filters.clear()
        self._masks.clear()
        self._declared.clear()

    # --- declaring what is watched, once per pass ----------------------------------------------

    def begin(self) -> None:
        """Start declaring this pass's watches; while polling, try inotify again first."""
        if self._inotify is None and not self._open():
            return
        self._declared = set()

    def add(self, directory: Path, mask: int = CHANGE_EVENTS,
            names: Callable[[str], bool] | None = None) -> bool:
        """Watch `directory`; `names` filters which entries matter (a directory declared twice
        in a pass gets both masks and either filter). False if it is missing or not watched."""
        if self._inotify is None:
            return False
        mask |= F.DELETE_SELF | F.MOVE_SELF
        try:
            wd = self._inotify.add_watch(os.fspath(directory), mask)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            self._degrade(f"cannot watch {directory}: {_why(exc)}")
            return False
        if wd in self._declared:  # a second role for the same directory: widen, never narrow
            mask |= self._masks[wd]
            try:
                self._inotify.add_watch(os.fspath(directory), mask)
            except OSError as exc:
                self._degrade(f"cannot watch {directory}: {_why(exc)}")
                return False
            current = self._filters.get(wd)
            self._filters[wd] = None if current is None or names is None else [*current, names]
        else:
            self._filters[wd] = None if names is None else [names]
        self._declared.add(wd)
        self._dirs[wd] = directory
        self._masks[wd] = mask
        return True

    def commit(self) -> None:
        """End this pass's declarations: stop watching what it did not declare, and drop the
        events already queued (the caller looks at everything next, so they are stale: a
        watch kept across passes must not wake the loop for what this pass will see anyway).
        When every watch it declared was set, inotify is (back) in use and polling ends."""
        if self._inotify is None:
            return
        for wd in [wd for wd in self._dirs if wd not in self._declared]:
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # already gone with its directory
            self._forget(wd)
        try:
            for ev in self._inotify.read(timeout=0):
                if ev.mask & F.IGNORED:
                    self._forget(ev.wd)
        except OSError as exc:
            self._degrade(f"cannot read inotify events: {_why(exc)}")
            return
        if self.polling:
            self.polling = False
            log.warning("inotify works again: watching for changes (no longer polling)")
            if self._report is not None:
                self._report(False)

    def _forget(self, wd: int) -> None:
        self._dirs.pop(wd, None)
        self._filters.pop(wd, None)
        self._masks.pop(wd, None)
        self._declared.discard(wd)

    # --- waiting -------------------------------------------------------------------------------

    def wait(self, stop: threading.Event, timeout: float | None = None) -> list[FsEvent]:
        """Block until a relevant event, `stop`, `timeout` seconds, or (while polling) the next
        poll; [] for all but the first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            if self._inotify is None:
                step = POLL_SECONDS if deadline is None else min(
                    POLL_SECONDS, max(0.0, deadline - time.monotonic()))
                stop.wait(step)
                return []
            step = STOP_CHECK_SECONDS
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            try:
                raw = self._inotify.read(timeout=int(step * 1000), read_delay=COALESCE_MS)
            except OSError as exc:
                self._degrade(f"cannot read inotify events: {_why(exc)}")
                return []
            events = self._relevant(raw)
            if events:
                return events
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    def _relevant(self, raw: list) -> list[FsEvent]:
        out = []
        for ev in raw:
            if ev.mask & F.Q_OVERFLOW:  # events were lost: everything may have changed
                out.append(FsEvent(Path("/"), "", ev.mask))
                continue
            directory = self._dirs.get(ev.wd)
            if directory is None:
                continue
            if ev.mask & F.IGNORED:  # the kernel dropped the watch (its directory is gone)
                self._forget(ev.wd)
            if ev.mask & (F.DELETE_SELF | F.MOVE_SELF | F.IGNORED):
                out.append(FsEvent(directory, "", ev.mask))
                continue
            accept = self._filters.get(ev.wd)
            if accept is None or any(f(ev.name) for f in accept):
                out.append(FsEvent(directory, ev.name, ev.mask))
        return out

    def close(self) -> None:
        self._drop_instance()

    def __enter__(self) -> FsWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
