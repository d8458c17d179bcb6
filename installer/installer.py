"""The Installer: one object the node daemon drives (install, watch, uninstall, ready, metrics).

`install()` is the one-shot of upstream's `installAll`: binaries, kubeconfig, then our own
conflist following the primary config (ISTIO_OWNED_CNI_CONFIG, the default) or our entry in the
primary config itself (waiting, through inotify, for a primary config to exist). `reconcile()` is
the same without waiting and is what the watch loop runs on every change; every step compares
before writing, so reconciling an installed node writes nothing. Errors from each step become an
`InstallError` whose message names the path and the reason, and bump upstream's
`istio_cni_installs_total{result=...}` label.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

from installer import (
    atomic,
    binaries,
    conflist,
    discovery,
    kubeconfig_writer,
    owned,
    primary,
    rundir,
)
from installer.config import DEFAULT_STANDALONE_NAME, InstallerConfig
from installer.fswatch import FsWatch
from installer.results import InstallError, InstallResult, NoPrimaryConfig, Reconciled
from installer.watcher import watch

log = logging.getLogger(__name__)

SUCCESS = InstallResult.SUCCESS
COPY_BINARIES_FAILURE = InstallResult.COPY_BINARIES_FAILURE
CREATE_KUBECONFIG_FAILURE = InstallResult.CREATE_KUBECONFIG_FAILURE
CREATE_CNI_CONFIG_FAILURE = InstallResult.CREATE_CNI_CONFIG_FAILURE
INSTALL_RACE_LOG_EVERY = 10
"""While another writer keeps changing the primary config, log one race in this many."""
_UNKNOWN = object()
"""What we left at our own conflist's path, before we have looked (`Installer._owned_left`)."""


def _stamp(directory: Path, name: str | None) -> tuple[int, int, int] | None:
    """Identity and version of a file (inode, mtime, size); None when missing or unnamed."""
    if name is None:
        return None
    try:
        st = os.stat(directory / name)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class InstallerMetrics:
    """Counters the daemon exports: `installs` by upstream result label
    (istio_cni_installs_total), `repairs` (our entry put back after someone else changed the
    config), `errors`, and the watch's state: `watch_polling` (1 while inotify is unavailable
    and the watch polls) and `watch_fallbacks` (how often it fell back to polling).
    Thread-safe; read with `snapshot()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installs: Counter[InstallResult] = Counter()
        self._repairs = 0
        self._errors = 0
        self._polling = False
        self._fallbacks = 0

    def count_install(self, result: InstallResult) -> None:
        with self._lock:
            self._installs[result] += 1
            if result != SUCCESS:
                self._errors += 1

    def count_repair(self) -> None:
        with self._lock:
            self._repairs += 1

    def watch_mode(self, polling: bool) -> None:
        """The watch switched to polling (True) or back to inotify (False)."""
        with self._lock:
            if polling and not self._polling:
                self._fallbacks += 1
            self._polling = polling

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"installs": dict(self._installs), "repairs": self._repairs,
                    "errors": self._errors, "watch_polling": int(self._polling),
                    "watch_fallbacks": self._fallbacks}


class Installer:
    """Puts the plugin on this node, keeps it there, takes it off."""

    def __init__(self, config: InstallerConfig,
                 token_source: kubeconfig_writer.TokenSource | None = None) -> None:
        self.config = config
        self.metrics = InstallerMetrics()
        self.token_source = token_source
        """The plugin's own token (`node_daemon.plugin_token`); None: this pod's."""
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._uninstalled = False
        self.config_path: Path | None = None
        """The config file that holds our entry (or our standalone file), once installed."""
        self.primary_path: Path | None = None
        """The primary CNI's config we follow or edit (chained mode)."""
        self._owned_left: str | None | object = _UNKNOWN
        """What we last left at our own conflist's path (owned mode): its text, None when we
        removed it (or saw it absent), `_UNKNOWN` before we have looked. Only a change from
        this is another writer's, i.e. a repair."""
        self._not_loaded = ""
        """Why the runtime does not run our entry (`Reconciled.not_loaded`), as last seen."""
        self._fs: FsWatch | None = None
        """The one long-lived inotify watch (installer.fswatch), from the first wait on."""

    @property
    def ready(self) -> bool:
        """True only while installed and idle (set by install and the watch loop)."""
        return self._ready.is_set()

    @property
    def not_loaded(self) -> str:
        """Why not ready although installed: the file the runtime loads instead, or that the
        file it loads does not chain istio-cni; "" otherwise."""
        return self._not_loaded

    def set_ready(self, ready: bool) -> None:
        (self._ready.set if ready else self._ready.clear)()

    def fswatch(self) -> FsWatch:
        """The installer's one inotify watch, created on first use and kept until the watch
        loop ends or the plugin is uninstalled (see installer.fswatch: why one, long-lived)."""
        with self._lock:
            if self._fs is None:
                self._fs = FsWatch(self.metrics.watch_mode)
            return self._fs

    def close_watch(self) -> None:
        with self._lock:
            if self._fs is not None:
                self._fs.close()
                self._fs = None

    def entry(self) -> dict:
        return conflist.plugin_entry(self.config)

    def install(self, stop: threading.Event | None = None, timeout: float | None = None) -> None:
        """Install everything, waiting for a primary config if there is none yet."""
        cfg = self.config
        with self._lock:
            self._uninstalled = False  # an explicit install undoes an earlier uninstall
        deadline = None if timeout is None else time.monotonic() + timeout
        races = 0
        while True:
            found = self._wait_for_primary(stop, deadline) if cfg.chained else None
            stamp = _stamp(cfg.mounted_cni_net_dir, found)
            try:
                result = self.reconcile()
                break
            except InstallError as exc:
                # Another writer (e.g. Calico's install-cni, truncating and rewriting in place)
                # changed the primary between finding it valid and editing it: wait for a valid
                # one again, for as long as the other writer keeps changing it (only `stop` or
                # the deadline end that). An error on a file nobody touched meanwhile is final.
                changed = (isinstance(exc, NoPrimaryConfig)
                           or _stamp(cfg.mounted_cni_net_dir, found) != stamp)
                if found is None or exc.result != CREATE_CNI_CONFIG_FAILURE or not changed:
                    raise
                races += 1
                level = logging.WARNING if races % INSTALL_RACE_LOG_EVERY == 1 else logging.DEBUG
                log.log(level, "install raced with another writer in %s (%d times), retrying: %s",
                        cfg.mounted_cni_net_dir, races, exc)
        self.metrics.count_install(SUCCESS)
        if result.not_loaded:
            log.warning("istio-cni installed in %s, but not ready: %s", result.config_path,
                        result.not_loaded)
        else:
            log.info("istio-cni installed: %s", result.config_path)
        self.set_ready(not result.not_loaded)

    def _wait_for_primary(self, stop: threading.Event | None, deadline: float | None) -> str:
        cfg = self.config
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            found = discovery.wait_for_primary(cfg.mounted_cni_net_dir, cfg.cni_conf_name,
                                               stop or threading.Event(), timeout,
                                               cfg.owned_conf_name, self.fswatch)
        except FileNotFoundError as exc:
            self.metrics.count_install(CREATE_CNI_CONFIG_FAILURE)
            raise InstallError(str(exc)) from exc
        if found is None:
            raise NoPrimaryConfig(self._no_primary_message())
        return found

    def _no_primary_message(self) -> str:
        cfg = self.config
        what = f"named {cfg.cni_conf_name!r}" if cfg.cni_conf_name else "(.conf/.conflist/.json)"
        return f"no valid CNI config {what} in {cfg.mounted_cni_net_dir} yet"

    def reconcile(self) -> Reconciled:
        """One pass: make binaries, kubeconfig and the config entry what they should be."""
        with self._lock:
            if self._uninstalled:
                raise InstallError("the installer has uninstalled; not reinstalling")
            self._not_loaded = ""
            try:
                # before anything that lets the plugin run: what this install will create
                # there is then told apart from what an earlier one left (installer.rundir)
                rundir.begin(self.config)
            except OSError as exc:
                self._fail(CREATE_KUBECONFIG_FAILURE)
                raise InstallError(f"cannot use the run dir {self.config.cni_agent_run_dir}: "
                                   f"{exc.strerror or exc}", CREATE_KUBECONFIG_FAILURE) from exc
            try:
                bins = bool(binaries.install_binaries(self.config))
            except binaries.BinariesError as exc:
                self._fail(COPY_BINARIES_FAILURE)
                raise InstallError(str(exc), COPY_BINARIES_FAILURE) from exc
            try:
                kube = kubeconfig_writer.write_kubeconfig(self.config, self.token_source)
            except kubeconfig_writer.KubeconfigError as exc:
                self._fail(CREATE_KUBECONFIG_FAILURE)
                raise InstallError(str(exc), CREATE_KUBECONFIG_FAILURE) from exc
            followed = False
            try:
                if self.config.owned:
                    changed, followed, path = self._install_owned()
                else:
                    changed, path = self._install_config()
            except (primary.PrimaryConfigError, OSError) as exc:  # OSError: listing net.d
                self._fail(CREATE_CNI_CONFIG_FAILURE)
                raise InstallError(str(exc)) from exc
            self.config_path = path
            self._not_loaded = self._why_not_loaded(path)
            return Reconciled(bins, kube, changed, path, followed, self._not_loaded)

    def _why_not_loaded(self, path: Path) -> str:
        """Why the runtime would not run istio-cni from `path`, the file holding our entry:
        the file libcni loads (the first valid one in byte order, discovery.loaded_config) is
        another, or it does not chain istio-cni. "" when it does.

        Standalone mode is exempt: its file is named by whatever runs it (a meta-plugin such as
        Multus), not chosen by libcni's order, so the first file is not the question there."""
        cfg = self.config
        if not cfg.chained:
            return ""
        net_dir = cfg.mounted_cni_net_dir
        loaded = discovery.loaded_config(net_dir)
        if loaded is None:
            return (f"the runtime loads no config from {net_dir}: none is valid, {path} "
                    "included")
        winner = net_dir / loaded
        if winner != path:
            what = ("it names istio-cni but is not the file this installer keeps"
                    if discovery.names_istio(winner) else "it does not chain istio-cni")
            if cfg.owned:
                fix = ("remove it, or set ISTIO_OWNED_CNI_CONF_FILENAME to a name sorting "
                       "before it")
            elif cfg.cni_conf_name:
                fix = (f"CNI_CONF_NAME={cfg.cni_conf_name} names a file the runtime does not "
                       "load: remove the earlier file, or name it in CNI_CONF_NAME")
            else:
                fix = "remove it"
            return (f"the runtime loads {winner}, not {path}: it is valid and sorts first, "
                    f"and {what}; pods start without istio-cni ({fix})")
        if not discovery.names_istio(winner):
            return f"{winner}, the config the runtime loads, does not chain istio-cni"
        return ""

    def _fail(self, result: InstallResult) -> None:
        self.set_ready(False)
        self.metrics.count_install(result)

    def _install_config(self) -> tuple[bool, Path]:
        cfg = self.config
        net_dir = cfg.mounted_cni_net_dir
        try:
            atomic.remove_stale_temps(net_dir)
        except OSError as exc:
            raise primary.PrimaryConfigError(f"cannot clean {net_dir}: {exc}") from exc
        entry = self.entry()
        if not cfg.chained:
            path = net_dir / (cfg.cni_conf_name or DEFAULT_STANDALONE_NAME)
            changed = primary.install_standalone(path, entry, cfg.created_file_mode)
            # Switched from owned mode: our conflist would sort before the standalone file.
            return owned.remove(net_dir / cfg.owned_conf_name) or changed, path
        name = discovery.find_primary(net_dir, cfg.cni_conf_name, cfg.owned_conf_name)
        if name is None:
            raise NoPrimaryConfig(self._no_primary_message())
        self.primary_path = net_dir / name
        changed, written = primary.install_chained(net_dir, name, conflist.chained_entry(entry))
        # The config we used before may no longer be the primary one (a CNI installed an
        # earlier-sorting file): follow, and give the old file back to its owner.
        for other in primary.restore(net_dir, keep_target=written):
            log.warning("primary CNI config is now %s: restored %s", net_dir / written,
                        net_dir / other)
            changed = True
        # Switched from owned mode: the primary holds our entry now, so our file can go.
        if owned.remove(net_dir / cfg.owned_conf_name):
            changed = True
        return changed, net_dir / written

    def _install_owned(self) -> tuple[bool, bool, Path]:
        """Our own conflist: the primary's network with our entry, in a file sorting first.

        Returns (repaired, followed, our file). Order, so that every state in between is one a
        runtime can use: our file is written first (binaries and kubeconfig are already in
        place), and only then are primary files we edited in chained mode given back. When no
        primary is left, or one sorts before ours, our file is removed: a pod must never get a
        network its CNI no longer has.
        """
        cfg = self.config
        net_dir = cfg.mounted_cni_net_dir
        ours = net_dir / cfg.owned_conf_name
        try:
            atomic.remove_stale_temps(net_dir)  # what a killed run left half-written
        except OSError as exc:
            raise primary.PrimaryConfigError(f"cannot clean {net_dir}: {exc}") from exc
        name = discovery.find_primary(net_dir, cfg.cni_conf_name, cfg.owned_conf_name)
        last = self.primary_path
        if last is not None and (name is None or os.fsencode(name) > os.fsencode(last.name)):
            # The primary we followed still exists but is not valid right now: its owner is
            # rewriting it in place (Calico truncates, then writes). Keep ours as it is rather
            # than fall to a later file or to none; the write's CLOSE_WRITE wakes the loop.
            reason = discovery.check_config(last)
            if last.exists() and reason is not None:
                raise NoPrimaryConfig(f"primary CNI config {last} is not valid right now "
                                      f"({reason}): keeping {ours} until it is valid again "
                                      "or gone")
        if name is None:
            removed = self._remove_owned(ours)
            raise NoPrimaryConfig(self._no_primary_message()
                                  + (f" (removed {ours}: no network left to hold)"
                                     if removed else ""))
        if os.fsencode(name) < os.fsencode(cfg.owned_conf_name):
            self._remove_owned(ours)
            raise primary.PrimaryConfigError(
                f"the primary CNI config {net_dir / name} sorts before our "
                f"{cfg.owned_conf_name}, so the runtime would never load ours: set "
                "ISTIO_OWNED_CNI_CONF_FILENAME to a .conflist name that sorts first "
                "(e.g. 00-istio-cni.conflist)")
        if last is not None and net_dir / name != last:
            log.warning("primary CNI config is now %s (was %s): following it",
                        net_dir / name, last)
        self.primary_path = net_dir / name
        try:
            desired = owned.desired(self.primary_path, conflist.chained_entry(self.entry()))
        except primary.PrimaryConfigError:
            reason = discovery.check_config(self.primary_path)
            if reason is None or not self.primary_path.exists():
                raise
            raise NoPrimaryConfig(  # found valid a moment ago: its owner is rewriting it
                f"primary CNI config {self.primary_path} is being rewritten ({reason}): "
                f"keeping {ours} until it is valid again") from None
        current = owned.read(ours)
        repaired = followed = False
        if current != desired:
            owned.write(ours, desired, current, cfg.created_file_mode)
            if current == self._owned_left:
                # What we left there ourselves: our older text (the primary changed), or no
                # file (we removed it when the primary went away or sorted first). Following
                # the primary is no repair, and its restart is no fight.
                followed = True
                log.info("%s %s %s", ours, "follows" if current is not None else
                         "is back: the runtime loads it again, from", self.primary_path)
            else:
                # Someone else's change to our file (or the first write of a new installer):
                # the watch loop counts this one as a repair.
                repaired = True
                log.info("wrote our CNI config %s from %s", ours, self.primary_path)
        self._owned_left = desired
        # Switched from chained mode: give the vendor's files back (ours is loaded now).
        for other in primary.restore(net_dir):
            log.info("istio-cni now has its own %s: restored %s", ours, net_dir / other)
        return repaired, followed, ours

    def _remove_owned(self, ours: Path) -> bool:
        """Remove our conflist (owned.remove), remembering that we left none there."""
        removed = owned.remove(ours)
        self._owned_left = None if removed or owned.read(ours) is None else _UNKNOWN
        return removed

    def watch(self, stop: threading.Event) -> None:
        """Block, re-installing on drift, until `stop` is set (see installer.watcher). The
        watch's inotify instance is released when it returns."""
        try:
            watch(self, stop)
        finally:
            self.close_watch()

    def rewrite_kubeconfig(self) -> bool:
        """Write the plugin's kubeconfig again (its token was renewed); True when it changed.
        Nothing once uninstalled, or before the first install."""
        with self._lock:
            if self._uninstalled or self.config_path is None:
                return False
            try:
                return kubeconfig_writer.write_kubeconfig(self.config, self.token_source)
            except kubeconfig_writer.KubeconfigError as exc:
                raise InstallError(str(exc), CREATE_KUBECONFIG_FAILURE) from exc

    def uninstall(self, keep_plugin: bool = False) -> None:
        """Remove our entry (restoring the original file), then the kubeconfig, the binaries
        and what we created in the run dir. Idempotent.

        The order is what keeps the node able to create pods whatever fails: the kubelet
        execs `istio-cni` (which reads the kubeconfig) for as long as the config it loads names
        it, so the entry goes first, and the next step runs only once that config no longer
        names us. The first failure (a full or read-only net.d, any write error) stops the
        uninstall with everything after it still in place; running it again finishes the job.
        With `keep_plugin`, leave everything in place for the next agent.
        """
        with self._lock:
            self.set_ready(False)
            self._uninstalled = True
            self.close_watch()
            if keep_plugin:
                log.info("leaving istio-cni installed on this node for the next agent")
                return
            cfg = self.config
            steps = (("CNI config entry", self._remove_config),
                     ("kubeconfig", lambda: kubeconfig_writer.remove_kubeconfig(cfg)),
                     ("binaries", lambda: binaries.remove_binaries(cfg)),
                     ("run dir files", lambda: rundir.clean(cfg)))
            for what, step in steps:
                try:
                    step()
                except (primary.PrimaryConfigError, kubeconfig_writer.KubeconfigError,
                        binaries.BinariesError, OSError) as exc:
                    log.error("uninstall stopped at the %s, leaving the rest in place so pods "
                              "on this node can still be created; run it again: %s", what, exc)
                    raise InstallError(f"uninstall incomplete: cannot remove the {what}: "
                                       f"{exc}") from exc
            log.info("istio-cni removed from this node")

    def _remove_config(self) -> None:
        """Take our entry out of every config file; raises unless the config the runtime
        loads is then free of istio-cni (only then may the binary and kubeconfig go)."""
        cfg = self.config
        net_dir = cfg.mounted_cni_net_dir
        if not net_dir.is_dir():
            return
        atomic.remove_stale_temps(net_dir)
        # Our own conflist first (in any mode: one left from an earlier mode counts too): the
        # runtime then loads the primary, which still works (an entry we left in it in chained
        # mode goes next, while the binary is still there).
        self._remove_owned(net_dir / cfg.owned_conf_name)
        if not cfg.chained:
            primary.remove_standalone(net_dir / (cfg.cni_conf_name or DEFAULT_STANDALONE_NAME))
        else:
            primary.restore(net_dir)
            # An entry we hold no backup for (written by an older installer): strip it too.
            name = discovery.find_primary(net_dir, cfg.cni_conf_name, cfg.owned_conf_name)
            if name is not None:
                primary.strip(net_dir / name)
        loaded = discovery.loaded_config(net_dir)
        if loaded is not None and discovery.names_istio(net_dir / loaded):
            raise primary.PrimaryConfigError(
                f"{net_dir / loaded}, the config the runtime loads, still names istio-cni "
                "(it could not be restored or stripped, see above)")
