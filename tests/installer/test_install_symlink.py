"""A primary config that is a symlink (a vendor keeping its config elsewhere and linking it
into net.d): install writes through the link, uninstall gives back exactly what was there (the
link, same target, and the target's bytes), and while installed the vendor's changes to the
target reach the runtime through the link and get our entry again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from installer import Installer, InstallError
from testbed.nodedirs import GOLDEN, NodeDirs, loaded_plugins, watching
from testbed.wait import wait_for


def vendor_link(node_dirs: NodeDirs, name: str, source: str) -> tuple[Path, Path]:
    """`net.d/<name>` -> `vendor/<name>`, a relative link as a vendor's installer makes it."""
    vendor = node_dirs.net_dir / "vendor"
    vendor.mkdir()
    target = vendor / name
    target.write_bytes((GOLDEN / source).read_bytes())
    link = node_dirs.net_dir / name
    os.symlink(f"vendor/{name}", link)
    return link, target


def test_a_symlinked_primary_stays_a_link_and_comes_back_exactly(node_dirs: NodeDirs):
    link, target = vendor_link(node_dirs, "10-calico.conflist", "calico.conflist")
    original = target.read_bytes()
    installer = Installer(node_dirs.config())
    installer.install()
    assert os.readlink(link) == "vendor/10-calico.conflist"  # not replaced by a regular file
    assert loaded_plugins(node_dirs.net_dir)[-1] == "istio-cni"  # the runtime reads our edit
    installer.uninstall()
    assert os.readlink(link) == "vendor/10-calico.conflist"
    assert target.read_bytes() == original
    assert sorted(os.listdir(target.parent)) == ["10-calico.conflist"]  # no temp, no backup


def test_vendor_changes_through_the_link_reach_the_runtime_with_our_entry(node_dirs: NodeDirs):
    link, target = vendor_link(node_dirs, "10-calico.conflist", "calico.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    doc = json.loads((GOLDEN / "calico.conflist").read_text())
    doc["plugins"].append({"type": "tuning"})
    changed = json.dumps(doc, indent=2) + "\n"
    with watching(installer):
        new = target.with_name("new.tmp")
        new.write_text(changed)
        os.rename(new, target)  # the vendor rewrites its own file, not the link
        wait_for(lambda: (loaded_plugins(node_dirs.net_dir) or [])[-2:] == ["tuning",
                                                                           "istio-cni"],
                 what="the vendor's change, with our entry, through the link")
    assert os.readlink(link) == "vendor/10-calico.conflist"
    installer.uninstall()
    assert os.readlink(link) == "vendor/10-calico.conflist"
    assert target.read_text() == changed


def test_a_symlinked_single_plugin_conf_is_refused_untouched(node_dirs: NodeDirs):
    link, target = vendor_link(node_dirs, "10-bridge.conf", "bridge.conf")
    original = sorted(os.listdir(node_dirs.net_dir)), target.read_bytes()
    with pytest.raises(InstallError, match="is a symlink to a single-plugin config"):
        Installer(node_dirs.config()).install()
    assert (sorted(os.listdir(node_dirs.net_dir)), target.read_bytes()) == original
    assert os.readlink(link) == "vendor/10-bridge.conf"
