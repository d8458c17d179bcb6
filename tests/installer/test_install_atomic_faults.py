"""`atomic_write` when the disk fails part-way: the file keeps its old bytes, no temp is left.

A failing `write` or `fsync` (EIO from a dying disk, a filesystem gone read-only under us) cannot
be caused for real on a healthy test machine, so it is injected at the system call, for the temp
file `atomic_write` creates only; everything else (the directory, the rename that must not
happen, the cleanup) is real.
"""

from __future__ import annotations

import errno
import os
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
