"""Our own conflist (ISTIO_OWNED_CNI_CONFIG): real files in tmp dirs, the watch loop running.

Our file holds the primary's network with our entry appended, sorts first, follows the primary
(content, rename, a new earlier-sorting file, deletion), never edits the vendor's file, and
uninstall removes only ours. Waits are bounded polls of conditions, never sleeps.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from installer import Installer, InstallerConfig, InstallerConfigError, NoPrimaryConfig
from installer.conflist import chained_entry, insert_plugin, istio_entries
from installer.discovery import check_config, loaded_config
from installer.results import InstallError
from testbed.nodedirs import GOLDEN, NodeDirs, has_entry, loaded_plugins, node_works, watching
from testbed.wait import wait_for

OURS = "02-istio-cni.conflist"


def golden(name: str) -> str:
    return text(GOLDEN / name)


def text(path: Path) -> str:
    """A config's exact text (`read_text` would translate a vendor's \\r\\n)."""
    return path.read_bytes().decode()


def owned(node_dirs: NodeDirs, **cfg: object) -> Installer:
    return Installer(node_dirs.config(owned_config=True, **cfg))


def installed(node_dirs: NodeDirs) -> Installer:
    """Installed, and marked not ready: ready again means the watch loop's first pass is done
    (a change made before it would be that pass's work, not a reaction to the change)."""
    installer = owned(node_dirs)
    installer.install()
    installer.set_ready(False)
    return installer


def first_pass(installer: Installer) -> None:
    wait_for(lambda: installer.ready, what="the watch loop's first pass")


def expected(installer: Installer, primary_text: str) -> str:
    """Our file for a primary with this text: its network, our entry appended."""
    return insert_plugin(primary_text, chained_entry(installer.entry()))


def ours_follows(node_dirs: NodeDirs, installer: Installer, primary_text: str) -> bool:
    path = node_dirs.net_dir / OURS
    return path.exists() and text(path) == expected(installer, primary_text)


def write_from_another_process(path: Path, text: str) -> None:
    """Another CNI's installer: a separate process truncating and rewriting the file."""
    subprocess.run([sys.executable, "-c",
                    "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(path), text],
                   check=True)


# --- settings -----------------------------------------------------------------------------------

def test_settings_defaults_and_names():
    cfg = InstallerConfig.from_env({})
    assert (cfg.owned_config, cfg.owned_conf_name, cfg.owned) == (True, OURS, True)
    assert not InstallerConfig.from_env({"CHAINED_CNI_PLUGIN": "false"}).owned
    assert not InstallerConfig.from_env({"ISTIO_OWNED_CNI_CONFIG": "false"}).owned
    for key in ("ISTIO_OWNED_CNI_CONF_FILENAME", "ISTIO_OWNED_CNI_CONFIG_FILENAME"):
        assert InstallerConfig.from_env({key: "00-x.conflist"}).owned_conf_name == "00-x.conflist"


@pytest.mark.parametrize(("env", "message"), [
    ({"ISTIO_OWNED_CNI_CONFIG": "maybe"}, "ISTIO_OWNED_CNI_CONFIG='maybe'"),
    ({"ISTIO_OWNED_CNI_CONF_FILENAME": "02-istio.conf"}, "ending in .conflist"),
    ({"ISTIO_OWNED_CNI_CONF_FILENAME": "../02.conflist"}, "not a plain file name"),
    ({"ISTIO_OWNED_CNI_CONF_FILENAME": "00-a.conflist",
      "ISTIO_OWNED_CNI_CONFIG_FILENAME": "00-b.conflist"}, "name different files"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(InstallerConfigError, match=message.replace(".", r"\.")):
        InstallerConfig.from_env(env)


# --- install and uninstall ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "source"), [("10-calico.conflist", "calico.conflist"),
                                              ("10-bridge.conf", "bridge.conf"),
                                              ("10-flannel.json", "flannel.json")])
def test_install_writes_ours_first_and_leaves_the_primary_alone(node_dirs: NodeDirs, name,
                                                                source):
    primary = node_dirs.put(name, source)
    original = primary.read_bytes()
    mode = primary.stat().st_mode & 0o777
    installer = owned(node_dirs)
    installer.install()
    ours = node_dirs.net_dir / OURS
    assert installer.ready and installer.config_path == ours
    assert primary.read_bytes() == original and primary.stat().st_mode & 0o777 == mode
    assert text(ours) == expected(installer, original.decode())
    assert ours.stat().st_mode & 0o777 == 0o600
    assert loaded_config(node_dirs.net_dir) == OURS and check_config(ours) is None
    assert loaded_plugins(node_dirs.net_dir)[-1] == "istio-cni" and node_works(node_dirs)
    installer.uninstall()
    assert node_dirs.names() == [name] and primary.read_bytes() == original
    assert not (node_dirs.bin_dst / "istio-cni").exists()


def test_group_read_mode(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    owned(node_dirs, cni_conf_group_read=True).install()
    assert (node_dirs.net_dir / OURS).stat().st_mode & 0o777 == 0o640


def test_a_file_under_our_name_that_is_not_ours_is_never_touched(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    theirs = node_dirs.put(OURS, "list.conflist")
    installer = owned(node_dirs)
    with pytest.raises(InstallError, match="not an istio-cni conflist"):
        installer.reconcile()
    assert theirs.read_bytes() == (GOLDEN / "list.conflist").read_bytes()
    installer.uninstall()
    assert theirs.read_bytes() == (GOLDEN / "list.conflist").read_bytes()


def test_a_primary_sorting_before_ours_is_refused_and_ours_removed(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = owned(node_dirs)
    installer.install()
    node_dirs.put("01-early.conflist", "list.conflist")
    with pytest.raises(InstallError, match="ISTIO_OWNED_CNI_CONF_FILENAME"):
        installer.reconcile()
    assert not installer.ready and OURS not in node_dirs.names()
    assert "istio-cni" not in loaded_plugins(node_dirs.net_dir)
    # a name that sorts first works
    early = owned(node_dirs, owned_conf_name="00-istio-cni.conflist")
    early.install()
    assert loaded_config(node_dirs.net_dir) == "00-istio-cni.conflist"
    assert text(node_dirs.net_dir / "00-istio-cni.conflist") == expected(
        early, golden("list.conflist"))


def test_a_primary_mid_rewrite_keeps_ours_as_it_is(node_dirs: NodeDirs):
    """Calico truncates its file, then writes: meanwhile ours stays (not a later file's
    network, not none); it follows once the file is whole again."""
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    node_dirs.put("20-other.conflist", "list.conflist")
    installer = owned(node_dirs)
    installer.install()
    before = (node_dirs.net_dir / OURS).read_bytes()
    primary.write_text("")
    with pytest.raises(NoPrimaryConfig, match="not valid right now"):
        installer.reconcile()
    assert (node_dirs.net_dir / OURS).read_bytes() == before
    primary.write_text(golden("compact.conflist"))
    installer.reconcile()
    assert ours_follows(node_dirs, installer, golden("compact.conflist"))


# --- the watch loop follows the primary ---------------------------------------------------------

def test_follows_a_rewrite_without_touching_the_vendors_file(node_dirs: NodeDirs, caplog):
    caplog.set_level(logging.INFO)
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        first_pass(installer)
        new = golden("calico.conflist").replace('"mtu": 1440', '"mtu": 1450')
        write_from_another_process(primary, new)
        wait_for(lambda: ours_follows(node_dirs, installer, new), what="ours follows")
        wait_for(lambda: installer.ready, what="ready again")
        assert text(primary) == new and not has_entry(primary)
    snap = installer.metrics.snapshot()
    assert snap["repairs"] == 0 and snap["installs"] == {"SUCCESS": 2}
    assert not any("FIGHTING" in r.getMessage() or "re-inserted" in r.getMessage()
                   for r in caplog.records)


def test_follows_a_rename(node_dirs: NodeDirs):
    node_dirs.put("10-aws.conflist", "list.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        first_pass(installer)
        staged = node_dirs.root / "aws.tmp"
        staged.write_text(golden("compact.conflist"))
        os.rename(staged, node_dirs.net_dir / "11-aws.conflist")
        os.unlink(node_dirs.net_dir / "10-aws.conflist")
        wait_for(lambda: ours_follows(node_dirs, installer, golden("compact.conflist"))
                 and installer.ready, what="ours follows 11-aws")
    assert installer.primary_path == node_dirs.net_dir / "11-aws.conflist"
    installer.uninstall()
    assert node_dirs.names() == ["11-aws.conflist"]


def test_follows_a_new_earlier_sorting_config(node_dirs: NodeDirs):
    old = node_dirs.put("20-flannel.conflist", "list.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        first_pass(installer)
        new = node_dirs.put("05-cilium.conflist", "calico.conflist")
        wait_for(lambda: ours_follows(node_dirs, installer, golden("calico.conflist")),
                 what="ours follows 05-cilium")
    installer.uninstall()
    assert node_dirs.names() == ["05-cilium.conflist", "20-flannel.conflist"]
    assert new.read_bytes() == (GOLDEN / "calico.conflist").read_bytes()
    assert old.read_bytes() == (GOLDEN / "list.conflist").read_bytes()


def test_deleted_primary_takes_ours_away_and_back(node_dirs: NodeDirs):
    """No primary: no network of ours either (a pod must not get one its CNI dropped)."""
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        first_pass(installer)
        primary.unlink()
        wait_for(lambda: OURS not in node_dirs.names() and not installer.ready,
                 what="ours removed, not ready")
        assert loaded_plugins(node_dirs.net_dir) is None
        node_dirs.put("10-calico.conflist", "compact.conflist")
        wait_for(lambda: ours_follows(node_dirs, installer, golden("compact.conflist"))
                 and installer.ready, what="ours back")


def test_our_file_removed_or_changed_is_a_repair(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    ours = node_dirs.net_dir / OURS
    with watching(installer):
        first_pass(installer)
        ours.unlink()
        wait_for(lambda: ours_follows(node_dirs, installer, golden("calico.conflist")),
                 what="ours back")
        wait_for(lambda: installer.metrics.snapshot()["repairs"] == 1, what="one repair")


def test_every_pod_gets_istio_cni_while_the_primary_is_rewritten(node_dirs: NodeDirs):
    """What the benchmark measures, as an assertion: while another process rewrites the
    primary in place 40 times, every config the runtime could load names istio-cni."""
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    texts = [golden("calico.conflist"), golden("compact.conflist")]
    script = ("import sys\nfor i in range(40):\n"
              "    open(sys.argv[1], 'w').write(sys.argv[2 + i % 2])\n")
    samples: list[list[str] | None] = []
    with watching(installer):
        first_pass(installer)
        writer = subprocess.Popen([sys.executable, "-c", script, str(primary), *texts])
        try:
            while writer.poll() is None:
                samples.append(loaded_plugins(node_dirs.net_dir))
        finally:
            writer.wait(timeout=30)
        assert writer.returncode == 0
        wait_for(lambda: ours_follows(node_dirs, installer, texts[1]), what="ours follows")
    assert samples and all(s and s[-1] == "istio-cni" for s in samples), samples


# --- switching modes ----------------------------------------------------------------------------

def test_chained_to_owned_gives_the_vendors_file_back(node_dirs: NodeDirs):
    primary = node_dirs.put("10-bridge.conf", "bridge.conf")
    Installer(node_dirs.config()).install()  # chained: edits (and converts) the primary
    assert node_dirs.names() == ["10-bridge.conf.istio-cni-backup", "10-bridge.conflist"]
    installer = owned(node_dirs)
    installer.install()
    assert node_dirs.names() == [OURS, "10-bridge.conf"]
    assert primary.read_bytes() == (GOLDEN / "bridge.conf").read_bytes()
    assert text(node_dirs.net_dir / OURS) == expected(installer, golden("bridge.conf"))
    installer.uninstall()
    assert node_dirs.names() == ["10-bridge.conf"]


def test_owned_to_chained_hands_the_entry_back_to_the_primary(node_dirs: NodeDirs):
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    owned(node_dirs).install()
    chained = Installer(node_dirs.config())
    chained.install()
    assert OURS not in node_dirs.names() and has_entry(primary)
    assert len(istio_entries(primary.read_text())) == 1
    chained.uninstall()
    assert primary.read_bytes() == (GOLDEN / "calico.conflist").read_bytes()


def test_follows_a_symlinked_primary_through_its_target(node_dirs: NodeDirs):
    """A vendor keeping its config elsewhere and linking it into net.d: the link and its
    target are left exactly as they are; a rewrite of the target (seen through a watch on
    the target's own dir) is followed."""
    vendor = node_dirs.root / "vendor"
    vendor.mkdir()
    target = vendor / "10-calico.conflist"
    target.write_bytes((GOLDEN / "calico.conflist").read_bytes())
    link = node_dirs.net_dir / "10-calico.conflist"
    os.symlink(target, link)
    installer = installed(node_dirs)
    assert ours_follows(node_dirs, installer, golden("calico.conflist"))
    with watching(installer):
        first_pass(installer)
        staged = vendor / "new.tmp"
        staged.write_text(golden("compact.conflist"))
        os.rename(staged, target)
        wait_for(lambda: ours_follows(node_dirs, installer, golden("compact.conflist")),
                 what="ours follows the link's target")
    installer.uninstall()
    assert os.readlink(link) == str(target) and node_dirs.names() == ["10-calico.conflist"]
    assert text(target) == golden("compact.conflist")
    assert sorted(os.listdir(vendor)) == ["10-calico.conflist"]


def test_owned_to_standalone_leaves_no_conflist_of_ours_ahead(node_dirs: NodeDirs):
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    owned(node_dirs).install()
    standalone = Installer(node_dirs.config(chained=False, owned_config=True))
    standalone.install()
    assert node_dirs.names() == ["10-calico.conflist", "YYY-istio-cni.conf"]
    standalone.uninstall()
    assert node_dirs.names() == ["10-calico.conflist"]
    assert primary.read_bytes() == (GOLDEN / "calico.conflist").read_bytes()
