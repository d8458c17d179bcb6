"""The watch loop with real inotify: other writers change net.d, binaries, kubeconfig and token;
the loop puts things back. Waits are bounded polls of conditions, never sleeps."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from cni.kubeconfig import load_kubeconfig
from installer import Installer
from installer.watcher import FightDetector, watch
from testbed.nodedirs import GOLDEN, NodeDirs, has_entry, rotate_token, watching
from testbed.wait import wait_for


def write_from_another_process(path: Path, text: str) -> None:
    """Another CNI's installer: a separate process truncating and rewriting the file."""
    subprocess.run([sys.executable, "-c",
                    "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(path), text],
                   check=True)


def start(node_dirs: NodeDirs, **cfg) -> Installer:
    installer = Installer(node_dirs.config(**cfg))
    installer.install()
    return installer


def test_overwrite_by_another_process_is_repaired(node_dirs: NodeDirs, caplog):
    caplog.set_level(logging.INFO)
    path = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = start(node_dirs)
    with watching(installer):
        wait_for(lambda: installer.ready, what="ready")
        write_from_another_process(path, (GOLDEN / "calico.conflist").read_text())
        wait_for(lambda: has_entry(path) and installer.ready, what="re-insertion")
        wait_for(lambda: installer.metrics.snapshot()["repairs"] == 1, what="repair counted")
    assert any("re-inserted istio-cni into" in r.getMessage() for r in caplog.records)
    installer.uninstall()
    assert path.read_bytes() == (GOLDEN / "calico.conflist").read_bytes()


def test_config_moved_into_place_is_repaired(node_dirs: NodeDirs):
    path = node_dirs.put("10-aws.conflist", "list.conflist")
    installer = start(node_dirs)
    with watching(installer):
        staged = node_dirs.root / "aws.tmp"  # aws-node writes elsewhere, then renames: MOVED_TO
        staged.write_text((GOLDEN / "list.conflist").read_text())
        os.rename(staged, path)
        wait_for(lambda: has_entry(path), what="re-insertion after MOVED_TO")


def test_deleted_config_is_followed_to_the_next_one_and_back(node_dirs: NodeDirs):
    first = node_dirs.put("10-a.conflist", "list.conflist")
    second = node_dirs.put("20-b.conflist", "compact.conflist")
    installer = start(node_dirs)
    assert installer.config_path == first
    with watching(installer):
        first.unlink()
        wait_for(lambda: has_entry(second), what="entry in the next config")
        wait_for(lambda: installer.ready, what="ready again")
        second.unlink()  # nothing left: not ready, waiting
        wait_for(lambda: not installer.ready and installer.config_path == second,
                 what="not ready without a config")
        node_dirs.put("10-a.conflist", "list.conflist")
        wait_for(lambda: has_entry(first) and installer.ready, what="entry back in 10-a")
    installer.uninstall()
    assert node_dirs.names() == ["10-a.conflist"]
    assert first.read_bytes() == (GOLDEN / "list.conflist").read_bytes()


def test_new_earlier_sorting_config_is_followed_and_the_old_one_restored(node_dirs: NodeDirs,
                                                                         caplog):
    old = node_dirs.put("20-flannel.conflist", "list.conflist")
    installer = start(node_dirs)
    with watching(installer):
        new = node_dirs.put("05-cilium.conflist", "calico.conflist")
        wait_for(lambda: has_entry(new), what="entry in the new primary")
        wait_for(lambda: old.read_bytes() == (GOLDEN / "list.conflist").read_bytes(),
                 what="old config restored")
    assert any("primary CNI config is now" in r.getMessage() for r in caplog.records)
    installer.uninstall()
    assert new.read_bytes() == (GOLDEN / "calico.conflist").read_bytes()
    assert node_dirs.names() == ["05-cilium.conflist", "20-flannel.conflist"]


def test_removed_entry_binary_and_kubeconfig_come_back(node_dirs: NodeDirs):
    path = node_dirs.put("10-net.conflist", "list.conflist")
    installer = start(node_dirs)
    plugin = node_dirs.bin_dst / "istio-cni"
    kubeconfig = node_dirs.run_dir / "istio-cni-kubeconfig"
    with watching(installer):
        path.write_text((GOLDEN / "list.conflist").read_text())
        wait_for(lambda: has_entry(path), what="entry back")
        plugin.unlink()
        wait_for(plugin.exists, what="binary back")
        kubeconfig.unlink()
        wait_for(kubeconfig.exists, what="kubeconfig back")


def test_token_rotation_rewrites_the_kubeconfig(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = start(node_dirs)
    kubeconfig = str(node_dirs.run_dir / "istio-cni-kubeconfig")
    with watching(installer):
        rotate_token(node_dirs.sa_dir, "token-bar", 2)
        wait_for(lambda: load_kubeconfig(kubeconfig).token == "token-bar", what="new token")
        wait_for(lambda: installer.ready, what="ready after rotation")
    assert installer.metrics.snapshot()["repairs"] == 0  # a token is not a config repair


def test_not_ready_while_no_config_then_installs_when_one_appears(node_dirs: NodeDirs):
    installer = Installer(node_dirs.config())
    with watching(installer):
        wait_for(lambda: (node_dirs.bin_dst / "istio-cni").exists(), what="binaries first")
        assert not installer.ready
        path = node_dirs.put("10-late.conflist", "list.conflist")
        wait_for(lambda: has_entry(path) and installer.ready, what="late install")


def test_someone_fighting_us_is_throttled_and_logged(node_dirs: NodeDirs, caplog):
    caplog.set_level(logging.INFO)
    path = node_dirs.put("10-cilium.conflist", "list.conflist")
    installer = start(node_dirs)
    detector = FightDetector(threshold=2)
    with watching(installer, lambda stop: watch(installer, stop, detector)):
        for n in range(1, 5):
            wait_for(lambda: has_entry(path) and installer.ready, what="our entry")
            write_from_another_process(path, (GOLDEN / "list.conflist").read_text())
            wait_for(lambda n=n: installer.metrics.snapshot()["repairs"] == n,
                     what=f"repair {n}")
    fights = [r for r in caplog.records if "FIGHTING" in r.getMessage()]
    assert fights and fights[0].levelno == logging.ERROR
    assert str(path) in fights[0].getMessage() and "cni.exclusive=false" in fights[0].getMessage()


def test_fight_detector_window():
    now = [0.0]
    detector = FightDetector(clock=lambda: now[0], window=30, threshold=3)
    assert [detector.record(None) for _ in range(3)] == [0, 0, 0]
    assert detector.record(None) > 0  # the fourth repair inside 30 s
    now[0] = 100.0
    assert detector.record(None) == 0  # the old ones slid out of the window


def test_fight_hold_offs_double_up_to_their_cap_and_the_window_is_inclusive():
    """The documented bounds (docs/installer.md): more than 5 repairs in 30 s hold the next
    one off 0.5 s, doubling each time, never more than 5 s; a repair exactly 30 s old still
    counts. (scripts/mutation.sh: each value here fails on a mutant that survived.)"""
    now = [0.0]
    detector = FightDetector(clock=lambda: now[0])
    assert [detector.record(None) for _ in range(5)] == [0.0] * 5
    assert [detector.record(None) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    now[0] = 30.0  # all 11 are exactly 30 s old: still inside the window
    assert detector.record(None) == 5.0
    now[0] = 30.001  # the first 11 slid out; one left
    assert detector.record(None) == 0.0


def test_failed_passes_back_off_doubling_up_to_the_cap(node_dirs: NodeDirs,
                                                       read_only_dir: Path, caplog):
    """An install that keeps failing (a read-only bin dir) is retried after 1, 2, 4, 8, 16,
    then at most 30 s (RETRY_MAX), or on the next change: a change in net.d wakes each pass
    here, so the schedule is read from the log without waiting it out."""
    caplog.set_level(logging.INFO)
    node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = Installer(node_dirs.config(cni_bin_target_dirs=(read_only_dir,)))

    def retries() -> list[str]:
        return [r.getMessage().split(" or on")[0] for r in caplog.records
                if r.getMessage().startswith("install failed, retrying in ")]

    with watching(installer):
        for n in range(1, 8):
            wait_for(lambda n=n: len(retries()) >= n, timeout=60, what=f"failed pass {n}")
            assert not installer.ready
            (node_dirs.net_dir / f"99-wake-{n}.txt").write_text("")  # the next change
    assert retries()[:7] == [f"install failed, retrying in {s} s"
                             for s in (1, 2, 4, 8, 16, 30, 30)]


def test_a_failed_pass_is_retried_on_its_timer_without_any_change(node_dirs: NodeDirs,
                                                                  read_only_dir: Path,
                                                                  caplog):
    """The bin dir becomes writable again (a remount: no inotify event anywhere): the retry
    timer alone brings the plugin back, within its first few seconds."""
    caplog.set_level(logging.INFO)
    node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = Installer(node_dirs.config(cni_bin_target_dirs=(read_only_dir,)))
    with watching(installer):
        wait_for(lambda: any(r.getMessage().startswith("install failed, retrying in 1 s")
                             for r in caplog.records), timeout=60, what="a failed pass")
        assert not installer.ready
        subprocess.run(["mount", "-o", "remount,rw", str(read_only_dir)], check=True)
        wait_for(lambda: installer.ready and (read_only_dir / "istio-cni").exists(),
                 timeout=60, what="the timed retry's install")


def test_stop_ends_the_loop_and_uninstall_is_final(node_dirs: NodeDirs):
    path = node_dirs.put("10-net.conflist", "list.conflist")
    installer = start(node_dirs)
    with watching(installer) as stop:
        wait_for(lambda: installer.ready, what="ready")
        stop.set()
    installer.uninstall()
    assert not installer.ready and not has_entry(path)


def test_one_install_counts_once_and_each_repair_once_more(node_dirs: NodeDirs):
    """istio_cni_installs_total{result="SUCCESS"}: install() counts the install; the watch
    loop counts only passes that put something back, not its first pass or quiet wake-ups."""
    path = node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    installer.set_ready(False)  # so that ready again means: the loop's first pass is done
    with watching(installer):
        wait_for(lambda: installer.ready, what="the watch loop's first pass")
        assert installer.metrics.snapshot()["installs"] == {"SUCCESS": 1}
        node_dirs.put("99-unrelated.txt", text="not a config")  # wakes it, changes nothing
        new = node_dirs.put("vendor.tmp", "list.conflist")
        os.rename(new, path)  # then the vendor replaces its config (after that wake-up)
        wait_for(lambda: installer.metrics.snapshot()["repairs"] == 1, what="the repair")
        # ready again only once the repairing pass is over (it was cleared by the event)
        wait_for(lambda: installer.ready, what="the end of the repairing pass")
    assert installer.metrics.snapshot()["installs"] == {"SUCCESS": 2}
