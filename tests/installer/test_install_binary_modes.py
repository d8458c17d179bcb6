"""What we install on the host is safe whatever the image holds (docs/reliability.md, 21.3).

A hostile source tree (setuid, setgid, sticky, group- and world-writable files and directories,
symlinks leaving a bundle) is installed into a real bin dir: every file lands 0755 or 0644,
every directory 0755, and a bundle with an absolute or escaping link is refused with an error
naming the link, with nothing at all installed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from installer import Installer, InstallError
from installer.binaries import BinariesError, install_binaries
from testbed.nodedirs import NodeDirs

BUNDLE = "plug"


def host_tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `root`: relative path -> (kind, permission bits incl. special)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return out


def hostile(src: Path) -> None:
    """An image's bin dir with every mode it should never have on a host."""
    (src / "istio-cni").chmod(0o4777)  # setuid, world-writable executable (onefile)
    (src / "notes.txt").write_text("data")
    (src / "notes.txt").chmod(0o2666)  # setgid, world-writable data
    (src / "helper").write_text("#!/bin/sh\n")
    (src / "helper").chmod(0o6775)
    bundle = src / BUNDLE
    (bundle / "_internal" / "sub").mkdir(parents=True)
    (bundle / BUNDLE).write_text("#!/bin/sh\necho plug\n")
    (bundle / BUNDLE).chmod(0o4755)
    (bundle / "_internal" / "lib.so").write_bytes(b"\x7fELF")
    (bundle / "_internal" / "lib.so").chmod(0o666)
    (bundle / "_internal" / "run").write_text("#!/bin/sh\n")
    (bundle / "_internal" / "run").chmod(0o1775)
    os.symlink("lib.so", bundle / "_internal" / "lib.so.1")  # a link that stays inside: fine
    os.symlink("../_internal/./lib.so", bundle / "_internal" / "sub" / "up")
    (bundle / "_internal" / "sub").chmod(0o777)
    (bundle / "_internal").chmod(0o1777)
    bundle.chmod(0o2777)


def test_a_hostile_tree_lands_safe(node_dirs: NodeDirs):
    hostile(node_dirs.bin_src)
    cfg = node_dirs.config()
    # an earlier install left our plugin with a bad mode: it is corrected too
    (node_dirs.bin_dst / "istio-cni").write_bytes((node_dirs.bin_src / "istio-cni").read_bytes())
    (node_dirs.bin_dst / "istio-cni").chmod(0o4777)
    install_binaries(cfg)
    tree = host_tree(node_dirs.bin_dst)
    assert tree.pop("istio-cni") == ("f", 0o755)
    assert tree.pop("helper") == ("f", 0o755)
    assert tree.pop("notes.txt") == ("f", 0o644)
    assert tree.pop(BUNDLE)[0] == "l"
    version = os.readlink(node_dirs.bin_dst / BUNDLE).split("/")[0]
    assert tree.pop(version) == ("d", 0o755)
    inside = {rel[len(version) + 1:]: v for rel, v in tree.items()}
    assert inside == {
        BUNDLE: ("f", 0o755),
        "_internal": ("d", 0o755),
        "_internal/lib.so": ("f", 0o644),
        "_internal/run": ("f", 0o755),
        "_internal/sub": ("d", 0o755),
        "_internal/lib.so.1": ("l", 0o777),
        "_internal/sub/up": ("l", 0o777),
    }
    assert install_binaries(cfg) == []  # in place: nothing rewritten on the next pass


@pytest.mark.parametrize(("link", "target", "others"), [
    ("_internal/evil", "/etc/shadow", {}),                 # absolute
    ("_internal/evil", "../../../etc", {}),                # climbs out
    ("_internal/evil", "../..", {}),                       # just above the bundle
    ("_internal/d/evil", "../../..", {}),                  # from a subdirectory
    ("_internal/x", "d2/../..", {"_internal/d2": "."}),    # through a link (lexically inside)
    ("_internal/y", "abs/x", {"_internal/abs": "/etc"}),   # through an absolute link
    ("_internal/loop", "loop2", {"_internal/loop2": "loop"}),
    (BUNDLE, "/bin/sh", {}),                               # the executable itself
], ids=["absolute", "climbs", "just-above", "from-subdir", "through-link", "via-absolute",
        "loop", "exe"])
def test_a_bundle_with_an_escaping_link_is_refused_and_nothing_installed(
        node_dirs: NodeDirs, link: str, target: str, others: dict[str, str]):
    bundle = node_dirs.bin_src / BUNDLE
    (bundle / "_internal" / "d").mkdir(parents=True)
    if link != BUNDLE:
        (bundle / BUNDLE).write_text("#!/bin/sh\n")
        (bundle / BUNDLE).chmod(0o755)
    for name, to in {**others, link: target}.items():
        os.symlink(to, bundle / name)
    (node_dirs.bin_src / "aaa-first").write_text("a file sorting before the bundle")
    with pytest.raises(BinariesError, match="refusing to install") as err:
        install_binaries(node_dirs.config())
    assert str(bundle) in str(err.value)
    assert os.listdir(node_dirs.bin_dst) == []  # nothing, not even the files before it

    installer = Installer(node_dirs.config())
    node_dirs.put("10-calico.conflist", "calico.conflist")
    with pytest.raises(InstallError) as failed:
        installer.install()
    assert failed.value.result == "COPY_BINARIES_FAILURE" and "refusing" in str(failed.value)
    assert os.listdir(node_dirs.bin_dst) == []
    assert node_dirs.names() == ["10-calico.conflist"]
