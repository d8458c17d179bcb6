"""A small inotify wrapper: watch directories, block until something relevant happens.

inotify, not polling: a changed conflist is seen within milliseconds, and an idle node costs
nothing. Directories are watched rather than files, because the files we care about are replaced
by rename (our own writes, aws-node's MOVED_TO, the kubelet's `..data` symlink swap for a
projected token), which a watch on the old inode would miss. The only timeout is the bounded
read that lets the loop notice `stop`; it never decides anything.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

CHANGE_EVENTS = F.CREATE | F.CLOSE_WRITE | F.MODIFY | F.DELETE | F.MOVED_TO | F.MOVED_FROM
NET_DIR_EVENTS = CHANGE_EVENTS | F.ATTRIB | F.DELETE_SELF | F.MOVE_SELF
STOP_CHECK_SECONDS = 0.25
"""How often a blocked wait looks at the stop event (not a sync delay: events wake at once)."""
COALESCE_MS = 20
"""After the first event, gather the burst that follows (a writer's temp + rename)."""


@dataclass(frozen=True)
class FsEvent:
    directory: Path
    name: str
    mask: int

    def describe(self) -> str:
        names = "|".join(f.name for f in F.from_mask(self.mask))
        return f"{self.directory / self.name if self.name else self.directory} ({names})"


class FsWatch:
    """inotify watches on directories; `wait` returns the relevant events, or [] on stop."""

    def __init__(self) -> None:
        self._inotify = INotify()
        self._dirs: dict[int, Path] = {}
        self._filters: dict[int, Callable[[str], bool]] = {}

    def add(self, directory: Path, mask: int = CHANGE_EVENTS,
            names: Callable[[str], bool] | None = None) -> bool:
        """Watch `directory`; `names` filters which entries matter. False if it is missing."""
        try:
            wd = self._inotify.add_watch(os.fspath(directory), mask | F.DELETE_SELF
                                         | F.MOVE_SELF)
        except (FileNotFoundError, NotADirectoryError):
            return False
        self._dirs[wd] = directory
        if names is not None:
            self._filters[wd] = names
        return True

    def wait(self, stop: threading.Event, timeout: float | None = None) -> list[FsEvent]:
        """Block until a relevant event, `stop`, or `timeout` seconds; [] for the latter two."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            step = STOP_CHECK_SECONDS
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            raw = self._inotify.read(timeout=int(step * 1000), read_delay=COALESCE_MS)
            events = self._relevant(raw)
            if events:
                return events
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    def _relevant(self, raw: list) -> list[FsEvent]:
        out = []
        for ev in raw:
            directory = self._dirs.get(ev.wd)
            if directory is None:
                continue
            if ev.mask & (F.DELETE_SELF | F.MOVE_SELF | F.IGNORED):
                out.append(FsEvent(directory, "", ev.mask))
                continue
            accept = self._filters.get(ev.wd)
            if accept is None or accept(ev.name):
                out.append(FsEvent(directory, ev.name, ev.mask))
        return out

    def close(self) -> None:
        self._inotify.close()

    def __enter__(self) -> FsWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
