"""`atomic_write` when the disk fails part-way: the file keeps its old bytes, no temp is left.

A failing `write` or `fsync` (EIO from a dying disk, a filesystem gone read-only under us) cannot
be caused for real on a healthy test machine, so it is injected at the system call, for the temp
file `atomic_write` creates only; everything else (the directory, the rename that must not
happen, the cleanup) is real.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from installer import atomic

OLD = b'{"cniVersion": "0.3.1", "name": "k8s", "plugins": []}\n'
NEW = b"x" * (256 * 1024)


def on_temp_file(fd: int) -> bool:
    return atomic.is_temp(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))


def eio() -> OSError:
    return OSError(errno.EIO, os.strerror(errno.EIO))


def assert_untouched(target: Path) -> None:
    assert target.read_bytes() == OLD
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "10-calico.conflist"
    path.write_bytes(OLD)
    return path


def test_a_write_failing_after_a_short_write(target: Path, mocker) -> None:
    """The kernel takes the first 4 KiB, then the next write fails."""
    real_write = os.write
    written: list[int] = []

    def write(fd: int, data: bytes) -> int:
        if not on_temp_file(fd):
            return real_write(fd, data)
        if written:
            raise eio()
        written.append(real_write(fd, bytes(data[:4096])))
        return written[-1]

    mocker.patch.object(atomic.os, "write", side_effect=write)
    with pytest.raises(OSError, match="Input/output error"):
        atomic.atomic_write(target, NEW, 0o644)
    assert written == [4096]
    assert_untouched(target)


def test_an_fsync_failing_after_every_byte_was_written(target: Path, mocker) -> None:
    real_fsync = os.fsync
    failed: list[int] = []

    def fsync(fd: int) -> None:
        if not on_temp_file(fd):
            return real_fsync(fd)
        failed.append(os.fstat(fd).st_size)
        raise eio()

    mocker.patch.object(atomic.os, "fsync", side_effect=fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic.atomic_write(target, NEW, 0o644)
    assert failed == [len(NEW)]
    assert_untouched(target)


# --- the bounds of what the installer reads and writes ------------------------------------------

def test_every_byte_is_written_when_the_kernel_takes_a_little_at_a_time(target: Path,
                                                                        mocker) -> None:
    """os.write may take fewer bytes than given: the rest is written, in order."""
    real_write = os.write
    sizes: list[int] = []

    def write(fd: int, data: bytes) -> int:
        if not on_temp_file(fd):
            return real_write(fd, data)
        sizes.append(real_write(fd, bytes(data[:1000])))
        return sizes[-1]

    mocker.patch.object(atomic.os, "write", side_effect=write)
    atomic.atomic_write(target, NEW, 0o640)
    assert target.read_bytes() == NEW and len(sizes) == -(-len(NEW) // 1000)
    assert target.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("limit", [10, atomic.MAX_READ_BYTES])
def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path,
                                                                          limit: int) -> None:
    path = tmp_path / "10-big.conflist"
    path.write_bytes(b"x" * limit)
    assert atomic.read_bytes(path, limit) == b"x" * limit
    path.write_bytes(b"x" * (limit + 1))
    with pytest.raises(OSError, match=f"larger than {limit} bytes") as caught:
        atomic.read_bytes(path, limit)
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(path))


def test_the_default_read_limit_is_a_mebibyte(tmp_path: Path) -> None:
    path = tmp_path / "10-big.conflist"
    path.write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(OSError, match="larger than 1048576 bytes"):
        atomic.read_bytes(path)


def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """In a fresh process: a blocking open of the FIFO would wait for a writer for ever, and
    the subprocess timeout fails the test instead of hanging it."""
    fifo = tmp_path / "10-fifo.conflist"
    os.mkfifo(fifo)
    code = ("import sys\nfrom pathlib import Path\nfrom installer import atomic\n"
            "try:\n    atomic.read_bytes(Path(sys.argv[1]))\n"
            "except OSError as exc:\n    print(exc.errno, exc.strerror, exc.filename)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.stdout.strip() == f"{errno.EINVAL} not a regular file {fifo}", proc.stderr
    assert atomic.read_bytes(tmp_path / "missing") is None


def test_the_temp_file_is_private_before_it_gets_its_mode(target: Path, mocker) -> None:
    """The temp holds the new bytes (a kubeconfig's token, say) before `fchmod` gives it its
    final mode: it is created 0600, whatever the umask, and exclusively."""
    real_fchmod = os.fchmod
    seen: list[int] = []

    def fchmod(fd: int, mode: int) -> None:
        seen.append(os.fstat(fd).st_mode & 0o777)
        real_fchmod(fd, mode)

    mocker.patch.object(atomic.os, "fchmod", side_effect=fchmod)
    old = os.umask(0)
    try:
        atomic.atomic_write(target, NEW, 0o644)
    finally:
        os.umask(old)
    assert seen == [0o600] and atomic.file_mode(target, -1) == 0o644


def test_only_our_temps_are_stale(tmp_path: Path) -> None:
    """A killed run's temps go; another writer's dotfiles and our own files stay."""
    ours = [atomic.temp_name("10-calico.conflist"), atomic.temp_name("istio-cni-kubeconfig")]
    others = [".calico-tmp", "10-calico.conflist", "x.istio-cni-tmp-1", ".hidden"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"")
    assert sorted(atomic.remove_stale_temps(tmp_path)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert atomic.remove_stale_temps(tmp_path / "missing") == []


def test_remove_file_says_whether_it_removed_something(target: Path) -> None:
    assert atomic.remove_file(target) is True and not target.exists()
    assert atomic.remove_file(target) is False


def test_file_mode_is_the_permission_bits(target: Path) -> None:
    os.chmod(target, 0o2640)
    assert atomic.file_mode(target, -1) == 0o2640
    assert atomic.file_mode(target.with_name("missing"), 0o600) == 0o600
