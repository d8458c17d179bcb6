"""cni.fileread: files the plugin does not control are read bounded, and never block it."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni.fileread import read_file_at_most, read_regular_file
from testbed.wait import wait_for


def test_reads_a_regular_file_and_follows_links(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"abc")
    (tmp_path / "link").symlink_to("data")

    assert read_regular_file(str(tmp_path / "link"), 3) == b"abc"
    assert read_file_at_most(tmp_path / "data", 3) == b"abc"


@pytest.mark.parametrize("reader", [read_regular_file, read_file_at_most])
def test_one_byte_over_the_limit_is_an_error(tmp_path: Path, reader) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"abcd")

    with pytest.raises(OSError, match="larger than 3 bytes") as caught:
        reader(str(path), 3)

    assert caught.value.filename == str(path)


def test_an_endless_device_stops_at_the_limit() -> None:
    with pytest.raises(OSError, match="larger than 1024 bytes"):
        read_file_at_most("/dev/zero", 1024)


def test_a_pipe_is_fine_on_the_command_line(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"{}")
    os.close(write_end)
    try:
        assert read_file_at_most(f"/proc/self/fd/{read_end}", 10) == b"{}"
    finally:
        os.close(read_end)


def test_with_a_timeout_a_fifo_nobody_writes_to_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    with pytest.raises(OSError, match=r"not read to its end within 0.2 s") as caught:
        read_file_at_most(fifo, 1024, timeout=0.2)

    assert caught.value.filename == str(fifo)


def test_with_a_timeout_a_fifo_and_a_pipe_are_still_read(tmp_path: Path) -> None:
    """The FIFO's writer is another process, racing the reader's open, writing in two parts."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\n"
         "f = open(sys.argv[1], 'w'); f.write('{\"a\":'); f.flush(); f.write(' 1}')", fifo])
    try:
        assert read_file_at_most(fifo, 1024, timeout=60) == b'{"a": 1}'
    finally:
        writer.kill()  # done by now when the read succeeded; blocked on open() if it failed
        writer.wait(timeout=60)
    read_end, write_end = os.pipe()
    os.write(write_end, b"{}")
    os.close(write_end)
    try:
        assert read_file_at_most(f"/proc/self/fd/{read_end}", 10, timeout=60) == b"{}"
    finally:
        os.close(read_end)


def test_with_a_timeout_an_endless_device_still_stops_at_the_limit() -> None:
    with pytest.raises(OSError, match="larger than 1024 bytes"):
        read_file_at_most("/dev/zero", 1024, timeout=60)


def _socket_file(tmp_path: Path) -> str:
    path = str(tmp_path / "sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()
    return path


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: os.mkfifo(p / "f") or str(p / "f"), "a FIFO"),
        (lambda p: str(p), "a directory"),
        (lambda p: "/dev/null", "a character device"),
    ],
)
def test_anything_but_a_regular_file_is_refused_without_blocking(
    tmp_path: Path, make, kind: str
) -> None:
    """Run in a fresh process: a FIFO would block `open()` for ever without `O_NONBLOCK`, and
    the subprocess timeout fails the test instead of hanging it."""
    path = make(tmp_path)
    code = ("import sys\nfrom cni.fileread import read_regular_file\n"
            "try:\n    read_regular_file(sys.argv[1], 100)\n"
            "except OSError as exc:\n    print(exc.strerror)\n")
    proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                          timeout=60, check=False)

    assert proc.stdout.strip() == f"not a regular file ({kind})", proc.stderr


def test_a_unix_socket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # open() itself fails on a socket (ENXIO)
        read_regular_file(_socket_file(tmp_path), 100)


# --- the bounds themselves: what a removed or loosened limit would change ---------------------
# (scripts/mutation.sh: each test below fails on a mutant of cni/fileread.py that survived the
# tests above: the limit counted per read instead of in all, an off-by-one at the limit, a
# read that asks for more than one byte past it, a deadline check that gives up early.)

def _in_pipe(w: int) -> int:
    """Bytes written to the pipe and not yet read (FIONREAD on its write end)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(w, termios.FIONREAD, b"\0\0\0\0"))[0]


@contextmanager
def _pipe_fed(parts: list[bytes], eof: bool = False) -> Iterator[tuple[int, int]]:
    """A pipe (read end, write end) whose writer puts each part in only once the reader took
    the previous one (the pipe is empty): the reader sees exactly these parts, one read
    each; with `eof`, the writer then closes its end. The writer stops, and the ends are
    closed, when the block ends."""
    r, w = os.pipe()
    done = threading.Event()
    closed: list[bool] = []

    def feed() -> None:
        for part in parts:
            wait_for(lambda: done.is_set() or _in_pipe(w) == 0, timeout=60,
                     what="the reader to take a part")
            if done.is_set():
                return
            os.write(w, part)
        if eof:
            wait_for(lambda: done.is_set() or _in_pipe(w) == 0, timeout=60,
                     what="the reader to take the last part")
            os.close(w)
            closed.append(True)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield r, w
    finally:
        done.set()
        thread.join(timeout=60)
        if not closed:
            os.close(w)
        os.close(r)


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_the_limit_counts_every_read_not_each_one(timeout: float | None) -> None:
    """Three parts of 4 bytes, limit 10: no single read passes the limit, their sum does."""
    with _pipe_fed([b"aaaa", b"bbbb", b"cccc"]) as (r, _):
        with pytest.raises(OSError, match="larger than 10 bytes") as caught:
            read_file_at_most(f"/proc/self/fd/{r}", 10, timeout=timeout)
    assert caught.value.errno == errno.EFBIG


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_exactly_the_limit_is_read_whole(timeout: float | None) -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 10)
    os.close(w)
    try:
        assert read_file_at_most(f"/proc/self/fd/{r}", 10, timeout=timeout) == b"x" * 10
    finally:
        os.close(r)


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_no_more_than_one_byte_past_the_limit_is_taken(timeout: float | None) -> None:
    """A first part of 4 bytes, then 100: the reader asks for what is left up to one byte past
    the limit (10 + 1 - 4 = 7) and stops; the rest stays in the pipe for nobody."""
    with _pipe_fed([b"aaaa", b"b" * 100]) as (r, w):
        with pytest.raises(OSError, match="larger than 10 bytes"):
            read_file_at_most(f"/proc/self/fd/{r}", 10, timeout=timeout)
        assert _in_pipe(w) == 100 - 7


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_parts_are_joined_as_they_came(timeout: float | None) -> None:
    with _pipe_fed([b'{"a"', b": 1", b"}"], eof=True) as (r, _):
        assert read_file_at_most(f"/proc/self/fd/{r}", 10, timeout=timeout) == b'{"a": 1}'


def test_a_timeout_under_a_second_still_reads_what_is_there() -> None:
    """All the data and the end are already in the pipe: any timeout is enough."""
    r, w = os.pipe()
    os.write(w, b"{}")
    os.close(w)
    try:
        assert read_file_at_most(f"/proc/self/fd/{r}", 10, timeout=0.9) == b"{}"
    finally:
        os.close(r)


def test_with_a_timeout_a_fifo_nobody_writes_to_fails_as_timed_out(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as caught:
        read_file_at_most(fifo, 1024, timeout=0.2)
    assert caught.value.errno == errno.ETIMEDOUT


@pytest.mark.parametrize("reader", [read_regular_file, read_file_at_most,
                                    lambda path, limit: read_file_at_most(path, limit, 60)])
def test_the_errors_carry_their_errno_and_path(tmp_path: Path, reader) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"abcd")
    with pytest.raises(OSError) as caught:
        reader(str(big), 3)
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(big))
    r, w = os.pipe()
    os.write(w, b"abcd")
    os.close(w)
    try:
        with pytest.raises(OSError) as caught:
            read_file_at_most(f"/proc/self/fd/{r}", 3, timeout=60)
        assert caught.value.filename == f"/proc/self/fd/{r}"
    finally:
        os.close(r)
    with pytest.raises(OSError) as caught:
        read_regular_file(str(tmp_path), 3)
    assert (caught.value.errno, caught.value.filename) == (errno.EINVAL, str(tmp_path))
    assert caught.value.strerror == "not a regular file (a directory)"
