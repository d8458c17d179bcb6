"""The watch loop: keep the plugin installed while the node changes under us.

Each iteration declares its inotify watches *first* (net.d, our binaries in each bin dir, the run
dir's kubeconfig, the service account dir), then reconciles, then blocks until one of them
changes. Watching before reconciling means a change made while we reconcile still wakes us.
Reconciling is idempotent and writes only what differs, so our own writes cost one extra quiet
pass. The watches live in one inotify instance kept for the loop's whole life (`Reconciler.
fswatch`): closing it between passes would hand the per-user instance slot to whoever asks next,
and the next pass would have none. Without inotify the loop polls (installer.fswatch).

Ready means the runtime loads our entry: after each pass `Reconciled.not_loaded` says why it
would not (another file wins libcni's choice, or the file it loads does not chain istio-cni),
and the loop stays not ready, naming that file, until a change fixes it.

With our own conflist (ISTIO_OWNED_CNI_CONFIG) the same events make it follow the primary's
file: a rewrite of the primary is followed (`Reconciled.followed`), which is no repair and no
fight; only a change to our own file counts as one.

What that covers: another CNI rewriting its config (CLOSE_WRITE), moving a new one into place
(aws-node's MOVED_TO), deleting it, or adding an earlier-sorting config (we follow it and restore
the old one); a deleted or replaced binary or plugin symlink, a deleted bundle version dir
(which would leave the symlink dangling), a deleted kubeconfig; a rotated token (the kubelet's
`..data` swap).

When something keeps undoing our entry (Cilium with cni.exclusive=true, a Calico install loop),
`FightDetector` notices more than FIGHT_THRESHOLD repairs in FIGHT_WINDOW seconds, logs an error
naming the file and the usual culprits, and spaces out further repairs (never more than
MAX_THROTTLE seconds) so the two installers do not spin the disk and every watcher on the node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from installer import atomic, binaries
from installer.config import InstallerConfig
from installer.fswatch import CHANGE_EVENTS, NET_DIR_EVENTS, FsWatch
from installer.primary import BACKUP_SUFFIX, real_path
from installer.results import InstallError, InstallResult, NoPrimaryConfig, Reconciled

log = logging.getLogger(__name__)


class Counts(Protocol):
    """The installer's tally (`installer.installer.InstallerMetrics`)."""

    def count_install(self, result: InstallResult) -> None: ...

    def count_repair(self) -> None: ...


class Reconciler(Protocol):
    """What the loop drives: `installer.Installer`, which imports this module for `watch`."""

    config: InstallerConfig
    metrics: Counts
    config_path: Path | None
    """The config file holding our entry: the primary's, or our own conflist."""
    primary_path: Path | None
    """The primary config we follow or edit (a symlinked one's target is watched too)."""

    @property
    def ready(self) -> bool: ...

    def set_ready(self, ready: bool) -> None: ...

    def reconcile(self) -> Reconciled: ...

    def fswatch(self) -> FsWatch:
        """The installer's one long-lived watch (also what its wait for a primary used)."""
        ...


FIGHT_WINDOW = 30.0
FIGHT_THRESHOLD = 5
MAX_THROTTLE = 5.0
RETRY_MAX = 30.0


class FightDetector:
    """Counts repairs in a sliding window; returns how long to hold off the next one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 window: float = FIGHT_WINDOW, threshold: int = FIGHT_THRESHOLD) -> None:
        self._clock = clock
        self._window = window
        self._threshold = threshold
        self._repairs: deque[float] = deque()

    def record(self, path: Path | None) -> float:
        now = self._clock()
        self._repairs.append(now)
        while self._repairs and now - self._repairs[0] > self._window:
            self._repairs.popleft()
        excess = len(self._repairs) - self._threshold
        if excess <= 0:
            return 0.0
        hint = ""
        if path is not None and "cilium" in str(path).lower():
            hint = " Cilium: install it with cni.exclusive=false."
        log.error(
            "FIGHTING: %s was changed back %d times in %.0f s by another process; istio-cni "
            "keeps re-inserting its entry, now at most every %.1f s. Find the other writer "
            "(a primary CNI that regenerates its config, e.g. Cilium cni.exclusive, aws-node, "
            "Calico's install-cni, or a second istio-cni installer).%s",
            path, len(self._repairs), self._window, min(MAX_THROTTLE, 0.25 * 2 ** excess), hint)
        return min(MAX_THROTTLE, 0.25 * 2 ** excess)


def _net_dir_name(name: str) -> bool:
    return not atomic.is_temp(name) and not name.endswith(BACKUP_SUFFIX)


def add_watches(fs: FsWatch, installer: Reconciler) -> None:
    """Declare this pass's watches (`FsWatch.begin` ... `commit`): what the installer wrote or
    follows, as it stands now."""
    cfg = installer.config
    fs.begin()
    fs.add(cfg.mounted_cni_net_dir, NET_DIR_EVENTS, _net_dir_name)
    # A symlinked primary config: the vendor changes the file the link resolves to, which may
    # live in another directory (a `..data` dir, a subdir); watch it too.
    if installer.primary_path is not None:
        real = real_path(installer.primary_path)
        if real != installer.primary_path and real.parent != cfg.mounted_cni_net_dir:
            fs.add(real.parent, NET_DIR_EVENTS, real.name.__eq__)
    ours = binaries.owned_filter(cfg)  # our binaries or links, and our bundles' version dirs
    for target in cfg.cni_bin_target_dirs:
        fs.add(target, CHANGE_EVENTS, ours)
    kubeconfig = cfg.kubeconfig_path.name
    fs.add(cfg.kubeconfig_path.parent, CHANGE_EVENTS, kubeconfig.__eq__)
    fs.add(cfg.service_account_path, CHANGE_EVENTS)
    fs.commit()


def watch(installer: Reconciler, stop: threading.Event,
          detector: FightDetector | None = None) -> None:
    """Reconcile on every relevant change until `stop` is set. Never raises InstallError, and
    never fails for want of inotify (the watch polls then, see installer.fswatch): failures
    are logged, counted, make us not ready, and are retried."""
    detector = detector or FightDetector()
    fs = installer.fswatch()
    first = True
    failed = False  # the last pass did not leave the plugin installed
    hold_off = 0.0
    retry = 0.0
    not_loaded = ""  # why the runtime does not load our entry, as last logged
    waiting = ""  # the wait for a primary config, as last logged (a poll must not repeat it)
    while not stop.is_set():
        if hold_off and stop.wait(hold_off):
            break
        hold_off = 0.0
        # Watch first, then reconcile: a change made while we reconcile still wakes us.
        add_watches(fs, installer)
        timeout: float | None = None
        try:
            result = installer.reconcile()
        except NoPrimaryConfig as exc:
            installer.set_ready(False)
            failed = True
            log.log(logging.DEBUG if str(exc) == waiting else logging.WARNING,
                    "%s: waiting for one", exc)
            waiting = str(exc)
        except InstallError as exc:
            installer.set_ready(False)
            failed = True
            retry = min(RETRY_MAX, retry * 2 or 1.0)
            timeout = retry
            log.error("install failed, retrying in %.0f s or on the next change: %s",
                      retry, exc)
        else:
            retry = 0.0
            waiting = ""
            if result.config and not first:
                installer.metrics.count_repair()
                log.warning("re-inserted istio-cni into %s (it had been changed or "
                            "replaced)", result.config_path)
                hold_off = detector.record(result.config_path)
            # One count per install: `Installer.install` counted the first one, so a pass
            # counts only when it put something back or installed after a failed pass (a
            # pass woken by an event that changed nothing of ours is no install).
            if result.changed or failed:
                installer.metrics.count_install(InstallResult.SUCCESS)
            first = failed = False
            if result.not_loaded != not_loaded:
                if result.not_loaded:
                    log.warning("not ready: %s", result.not_loaded)
                else:
                    log.info("the runtime loads istio-cni again (%s)", result.config_path)
                not_loaded = result.not_loaded
            installer.set_ready(not result.not_loaded)
        if fs.polling and timeout is not None:
            events = []  # no inotify: a failed pass is retried after its backoff, not sooner
            stop.wait(timeout)
        else:
            events = fs.wait(stop, timeout)
        if events:
            installer.set_ready(False)
            log.debug("change: %s", ", ".join(e.describe() for e in events[:8]))
