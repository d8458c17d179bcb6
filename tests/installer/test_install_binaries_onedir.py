"""The plugin as a onedir bundle: a content-addressed version dir plus an atomically swapped,
relative `istio-cni` symlink; idempotent, upgradable, removable, and kill -9 safe.

The fake bundle is a Python script (run through its shebang, no shell) that, like PyInstaller's
bootloader, resolves its own real path to find `_internal/` next to it, and answers
`CNI_COMMAND=VERSION` with JSON naming the bundle version. The real frozen bundle
(`dist/istio-cni/`, ISTIO_CNI_FROZEN, or a fresh plugin-only PyInstaller build) goes through the
same install and is executed through the symlink.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from installer import Installer, InstallerConfig, InstallError, binaries
from testbed.frozen import build_plugin
from testbed.nodedirs import PLUGIN_BYTES, NodeDirs, watching
from testbed.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
NAME = binaries.PLUGIN_NAME
VERSION_DIR = re.compile(rf"\.{NAME}-[0-9a-f]{{{binaries.HASH_LEN}}}")
MAX_OPS = 400
BUILD_TIMEOUT = 600

FAKE_PLUGIN = """#!{python} -IS
import json, os, sys
here = os.path.dirname(os.path.realpath(__file__))  # as the bootloader: /proc/self/exe
internal = os.path.join(here, "_internal")
with open(os.path.join(internal, "version.txt")) as f:
    version = f.read().strip()
with open(os.path.join(internal, "lib", "libpayload.so.1"), "rb") as f:
    payload = f.read()
if os.environ.get("CNI_COMMAND") != "VERSION" or len(payload) != {size}:
    sys.exit(1)
print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "1.0.0", "1.1.0"],
                  "bundle": version}}))
"""
PAYLOAD_SIZE = 64 * 1024


def make_bundle(parent: Path, version: str) -> Path:
    """A fake onedir bundle `parent/istio-cni/` (istio-cni + _internal/, with a symlink)."""
    root = parent / NAME
    shutil.rmtree(root, ignore_errors=True)
    (root / "_internal" / "lib").mkdir(parents=True)
    (root / "_internal" / "empty").mkdir()
    exe = root / NAME
    exe.write_text(FAKE_PLUGIN.format(python=sys.executable, size=PAYLOAD_SIZE))
    exe.chmod(0o755)
    (root / "_internal" / "version.txt").write_text(version + "\n")
    (root / "_internal" / "version.txt").chmod(0o644)
    payload = root / "_internal" / "lib" / "libpayload.so.1"
    payload.write_bytes(version.encode().ljust(PAYLOAD_SIZE, b"\0"))
    payload.chmod(0o755)
    os.symlink("libpayload.so.1", root / "_internal" / "lib" / "libpayload.so")
    return root


def run_version(plugin: Path) -> dict:
    """Run the plugin as the runtime does for VERSION; its JSON answer."""
    proc = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout)


def version_dirs(bin_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(bin_dir) if VERSION_DIR.fullmatch(n))


def digest(bundle: Path) -> str:
    return binaries.bundle_digest(bundle)[0]


def assert_installed(bin_dir: Path, bundle: Path) -> Path:
    """`istio-cni` is a relative symlink into the one complete version dir of `bundle`."""
    link = bin_dir / NAME
    want = f".{NAME}-{digest(bundle)}"
    assert os.readlink(link) == f"{want}/{NAME}"  # relative: see binaries.link_target
    assert version_dirs(bin_dir) == [want]
    assert digest(bin_dir / want) == digest(bundle)
    return bin_dir / want


@pytest.fixture
def onedir(node_dirs: NodeDirs) -> NodeDirs:
    """node_dirs with the image shipping the fake bundle (v1) instead of a onefile binary."""
    (node_dirs.bin_src / NAME).unlink()
    make_bundle(node_dirs.bin_src, "v1")
    return node_dirs


def test_bundle_installs_as_a_relative_symlink_into_a_hidden_version_dir(onedir: NodeDirs,
                                                                         tmp_path: Path):
    bundle = onedir.bin_src / NAME
    written = binaries.install_binaries(onedir.config())
    vdir = assert_installed(onedir.bin_dst, bundle)
    assert written == [vdir, onedir.bin_dst / NAME]
    assert run_version(onedir.bin_dst / NAME)["bundle"] == "v1"
    # modes and the bundle's own symlink are kept
    assert stat.S_IMODE(os.stat(vdir / NAME).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(vdir / "_internal" / "version.txt").st_mode) == 0o644
    assert os.readlink(vdir / "_internal" / "lib" / "libpayload.so") == "libpayload.so.1"
    # the host sees the bin dir at another path than the container (/opt/cni/bin vs
    # /host/opt/cni/bin): the relative link works from anywhere
    elsewhere = tmp_path / "host-view" / "opt-cni-bin"
    elsewhere.parent.mkdir()
    os.rename(onedir.bin_dst, elsewhere)
    assert run_version(elsewhere / NAME)["bundle"] == "v1"


def test_same_bundle_twice_changes_nothing(onedir: NodeDirs):
    cfg = onedir.config()
    binaries.install_binaries(cfg)
    vdir = assert_installed(onedir.bin_dst, onedir.bin_src / NAME)
    before = [os.lstat(p) for p in (vdir, vdir / NAME, onedir.bin_dst / NAME)]
    assert binaries.install_binaries(cfg) == []
    binaries._hash_cache.clear()  # and with the content hashed afresh (a restarted agent)
    assert binaries.install_binaries(cfg) == []
    after = [os.lstat(p) for p in (vdir, vdir / NAME, onedir.bin_dst / NAME)]
    assert [(s.st_ino, s.st_mtime_ns) for s in after] == [(s.st_ino, s.st_mtime_ns)
                                                          for s in before]


def test_a_changed_bundle_moves_the_link_and_removes_the_old_version(onedir: NodeDirs):
    cfg = onedir.config()
    binaries.install_binaries(cfg)
    old = assert_installed(onedir.bin_dst, onedir.bin_src / NAME)
    make_bundle(onedir.bin_src, "v2")
    binaries.install_binaries(cfg)
    new = assert_installed(onedir.bin_dst, onedir.bin_src / NAME)
    assert new != old and not old.exists()
    assert run_version(onedir.bin_dst / NAME)["bundle"] == "v2"


def test_onefile_and_onedir_replace_each_other(onedir: NodeDirs):
    cfg = onedir.config()
    link = onedir.bin_dst / NAME
    binaries.install_binaries(cfg)
    shutil.rmtree(onedir.bin_src / NAME)
    (onedir.bin_src / NAME).write_bytes(PLUGIN_BYTES)
    (onedir.bin_src / NAME).chmod(0o755)
    assert binaries.install_binaries(cfg) == [link]
    assert not link.is_symlink() and link.read_bytes() == PLUGIN_BYTES
    assert version_dirs(onedir.bin_dst) == []
    (onedir.bin_src / NAME).unlink()
    make_bundle(onedir.bin_src, "v3")
    binaries.install_binaries(cfg)
    assert_installed(onedir.bin_dst, onedir.bin_src / NAME)
    assert run_version(link)["bundle"] == "v3"


def test_uninstall_removes_everything_of_ours_and_nothing_else(onedir: NodeDirs):
    foreign = {"bridge": b"not ours", ".istio-cni-notahash": None, ".other": None,
               "istio-cni-tools": None}
    for name, data in foreign.items():
        if data is None:
            (onedir.bin_dst / name).mkdir()
            (onedir.bin_dst / name / "keep").write_text("x")
        else:
            (onedir.bin_dst / name).write_bytes(data)
    onedir.put("10-net.conflist", "list.conflist")
    installer = Installer(onedir.config())
    installer.install()
    assert run_version(onedir.bin_dst / NAME)["bundle"] == "v1"
    # a crash had also left an old version and a temp tree behind
    (onedir.bin_dst / f".{NAME}-{'0' * binaries.HASH_LEN}").mkdir()
    (onedir.bin_dst / f".{NAME}-1234.istio-cni-tmp-dead").mkdir()
    installer.uninstall()
    assert sorted(os.listdir(onedir.bin_dst)) == sorted(foreign)
    assert (onedir.bin_dst / "bridge").read_bytes() == b"not ours"
    installer.uninstall()  # idempotent


def test_crash_leftovers_are_cleaned_up(onedir: NodeDirs):
    """A dangling link (its version dir gone), a half-copied temp tree, a temp symlink and a
    version dir whose deletion was interrupted (a temp name by construction)."""
    bin_dst = onedir.bin_dst
    os.symlink(f".{NAME}-{'f' * binaries.HASH_LEN}/{NAME}", bin_dst / NAME)
    half = bin_dst / f".{NAME}-{'a' * binaries.HASH_LEN}.istio-cni-tmp-0badf00d"
    (half / "_internal").mkdir(parents=True)
    (half / NAME).write_bytes(b"#!half")
    os.symlink("nowhere", bin_dst / f".{NAME}.istio-cni-tmp-12345678")
    assert not (bin_dst / NAME).exists()  # dangling
    cfg = onedir.config(update_cni_binaries=False)  # a dangling link is not "already there"
    binaries.install_binaries(cfg)
    assert sorted(os.listdir(bin_dst)) == sorted([NAME, *version_dirs(bin_dst)])
    assert_installed(bin_dst, onedir.bin_src / NAME)
    assert run_version(bin_dst / NAME)["bundle"] == "v1"


def test_update_cni_binaries_false_keeps_the_installed_version(onedir: NodeDirs):
    binaries.install_binaries(onedir.config())
    vdir = assert_installed(onedir.bin_dst, onedir.bin_src / NAME)
    make_bundle(onedir.bin_src, "v2")
    assert binaries.install_binaries(onedir.config(update_cni_binaries=False)) == []
    assert version_dirs(onedir.bin_dst) == [vdir.name]  # the live version is never removed
    assert run_version(onedir.bin_dst / NAME)["bundle"] == "v1"


def test_a_directory_in_the_way_is_a_clear_error(onedir: NodeDirs):
    (onedir.bin_dst / NAME).mkdir()
    with pytest.raises(binaries.BinariesError, match="a directory is in the way"):
        binaries.install_binaries(onedir.config())


@pytest.mark.root
def test_read_only_bin_dir_names_the_platform_setting(onedir: NodeDirs, read_only_dir: Path):
    onedir.put("10-net.conflist", "list.conflist")
    installer = Installer(onedir.config(cni_bin_target_dirs=(read_only_dir,)))
    with pytest.raises(InstallError) as err:
        installer.install()
    message = str(err.value)
    assert str(read_only_dir / NAME) in message and "Read-only file system" in message
    assert "/home/kubernetes/bin" in message and "global.platform" in message
    assert err.value.result == "COPY_BINARIES_FAILURE"


def test_watcher_repairs_a_deleted_or_replaced_link_and_a_deleted_version(onedir: NodeDirs):
    onedir.put("10-net.conflist", "list.conflist")
    installer = Installer(onedir.config())
    installer.install()
    link = onedir.bin_dst / NAME
    want = os.readlink(link)
    vdir = onedir.bin_dst / want.split("/")[0]
    with watching(installer):
        wait_for(lambda: installer.ready, what="ready")
        link.unlink()
        wait_for(lambda: os.path.lexists(link) and os.readlink(link) == want, what="link back")
        foreign = onedir.bin_dst / "foreign"
        foreign.write_bytes(b"someone else's plugin")
        os.replace(foreign, link)
        wait_for(lambda: link.is_symlink() and os.readlink(link) == want, what="link restored")
        shutil.rmtree(vdir)
        wait_for(lambda: binaries._complete(vdir, NAME), what="version dir back")
        wait_for(lambda: installer.ready, what="ready again")
    assert run_version(link)["bundle"] == "v1"


# --- kill -9 at every file operation on the bin dir -------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from installer import binaries
from installer.config import InstallerConfig

action, crash_at, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = InstallerConfig(cni_bin_source_dir=Path(src), cni_bin_target_dirs=(Path(dst),))
count = [0]
readlink = os.readlink

def resolve(args, kwargs):
    target = args[0] if args else kwargs.get("path", kwargs.get("src"))
    if isinstance(target, int):
        try:
            return readlink(f"/proc/self/fd/{target}")
        except OSError:
            return ""
    target = os.fspath(target)
    if isinstance(target, bytes):
        target = os.fsdecode(target)
    if kwargs.get("dir_fd") is not None and not os.path.isabs(target):
        return os.path.join(readlink(f"/proc/self/fd/{kwargs['dir_fd']}"), target)
    return os.path.abspath(target)

def wrap(real):
    def op(*args, **kwargs):
        path = resolve(args, kwargs)
        if path == dst or path.startswith(dst + os.sep):
            count[0] += 1
            if count[0] == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return op

for name in ("write", "fsync", "fchmod", "chmod", "mkdir", "rmdir", "rename", "replace",
             "unlink", "symlink"):
    setattr(os, name, wrap(getattr(os, name)))
(binaries.install_binaries if action == "install" else binaries.remove_binaries)(cfg)
"""


def run_child(action: str, crash_at: int, src: Path, dst: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, action, str(crash_at), str(src),
                           str(dst)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
    return proc.returncode


def plugin_state(bin_dir: Path, bundles: dict[str, str]) -> str | None:
    """What a pod starting now would run: None (never installed), the bundle version or
    "onefile"; fails on anything else (missing after install, dangling, incomplete)."""
    link = bin_dir / NAME
    if not os.path.lexists(link):
        return None
    if not link.is_symlink():
        assert link.read_bytes() == PLUGIN_BYTES
        return "onefile"
    target = os.readlink(link)
    assert not os.path.isabs(target) and link.exists(), f"dangling {link} -> {target}"
    found = digest(bin_dir / target.split("/")[0])
    assert found in bundles, f"{target}: incomplete or unknown version dir"
    answer = run_version(link)["bundle"]
    assert answer == bundles[found]
    return answer


def put_onefile(src: Path) -> None:
    shutil.rmtree(src / NAME, ignore_errors=True)
    (src / NAME).write_bytes(PLUGIN_BYTES)
    (src / NAME).chmod(0o755)


SCENARIOS = {
    # name: (what is installed before, what the image ships, child action, allowed states)
    "fresh": (None, "v2", "install", {None, "v2"}),
    "upgrade": ("v1", "v2", "install", {"v1", "v2"}),
    "from-onefile": ("onefile", "v2", "install", {"onefile", "v2"}),
    "to-onefile": ("v1", "onefile", "install", {"v1", "onefile"}),
    "uninstall": ("v1", "v1", "uninstall", {"v1", None}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_at_every_step_never_leaves_the_plugin_missing_or_dangling(tmp_path: Path,
                                                                       scenario: str):
    before, shipped, action, allowed = SCENARIOS[scenario]
    src, dst = tmp_path / "image-bin", tmp_path / "host-bin"
    versions = tmp_path / "versions"
    bundles = {digest(make_bundle(versions / v, v)): v for v in ("v1", "v2")}
    cfg = InstallerConfig(cni_bin_source_dir=src, cni_bin_target_dirs=(dst,))
    kills = 0
    for crash_at in range(1, MAX_OPS):
        for d in (src, dst):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        (dst / "bridge").write_bytes(b"not ours")
        if before is not None:
            if before == "onefile":
                put_onefile(src)
            else:
                shutil.copytree(versions / before / NAME, src / NAME, symlinks=True)
            binaries.install_binaries(cfg)
            shutil.rmtree(src / NAME) if (src / NAME).is_dir() else (src / NAME).unlink()
        if shipped == "onefile":
            put_onefile(src)
        else:
            shutil.copytree(versions / shipped / NAME, src / NAME, symlinks=True)
        if run_child(action, crash_at, src, dst) == 0:
            break  # ran to completion: every earlier operation has been a kill point
        kills += 1
        assert plugin_state(dst, bundles) in allowed
        # a restarted agent converges: exactly the shipped plugin, or nothing of ours
        if action == "install":
            binaries.install_binaries(cfg)
            assert plugin_state(dst, bundles) == shipped
            assert len(version_dirs(dst)) == (shipped != "onefile")
            assert sorted(os.listdir(dst)) == sorted(["bridge", NAME, *version_dirs(dst)])
        binaries.remove_binaries(cfg)
        assert os.listdir(dst) == ["bridge"]
    else:
        pytest.fail(f"{scenario} did not complete within {MAX_OPS} file operations")
    assert kills >= 3, kills


# --- the real frozen bundle -------------------------------------------------------------------

@pytest.fixture(scope="session")
def frozen_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PyInstaller onedir plugin: ISTIO_CNI_FROZEN's dir, dist/istio-cni/, or a fresh
    plugin-only build of build.spec (~25 s)."""
    given = os.environ.get("ISTIO_CNI_FROZEN")
    if given:
        return Path(given).parent
    built = REPO / "dist" / NAME
    if (built / NAME).is_file() and (built / "_internal").is_dir():
        return built
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.skip("no dist/istio-cni/ and PyInstaller is not installed "
                    "(pip install -e '.[dev]', or scripts/build-frozen.sh)")
    return build_plugin(tmp_path_factory.mktemp("frozen"), BUILD_TIMEOUT).parent


def test_the_real_frozen_bundle_runs_through_the_symlink(node_dirs: NodeDirs,
                                                         frozen_bundle: Path, tmp_path: Path):
    (node_dirs.bin_src / NAME).unlink()
    shutil.copytree(frozen_bundle, node_dirs.bin_src / NAME, symlinks=True)
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    link = node_dirs.bin_dst / NAME
    vdir = assert_installed(node_dirs.bin_dst, node_dirs.bin_src / NAME)
    answer = run_version(link)
    assert answer["cniVersion"] == "1.1.0" and "1.0.0" in answer["supportedVersions"]
    stamp = os.stat(vdir).st_ino, os.stat(vdir).st_mtime_ns
    assert not installer.reconcile().binaries
    assert (os.stat(vdir).st_ino, os.stat(vdir).st_mtime_ns) == stamp
    installer.uninstall()
    assert os.listdir(node_dirs.bin_dst) == []
