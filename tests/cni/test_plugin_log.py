"""The plugin's log file and its report to the agent (pure tier: real files and sockets)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from cni import plugin_log


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    plugin_log.configure("info", "/nonexistent-run-dir")  # closes the file handler it owns
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    plugin_log._buffer.lines = []


def _open_fds_on(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def test_repeated_calls_in_one_process_keep_one_log_file_open(tmp_path):
    for _ in range(200):
        plugin_log.configure("info", str(tmp_path))
        logging.getLogger("istio-cni").info("one call")
    assert _open_fds_on(tmp_path / plugin_log.LOG_FILE_NAME) == 1
    assert (tmp_path / plugin_log.LOG_FILE_NAME).read_text().count("one call") == 200


def _configure_within(run_dir: Path, seconds: float = 30.0) -> None:
    """configure() in a thread: a blocking open would leave it alive past the deadline."""
    worker = threading.Thread(target=plugin_log.configure, args=("info", str(run_dir)),
                              daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "configure() blocked on the log file"


def test_a_fifo_as_the_log_file_neither_blocks_nor_is_written(tmp_path, caplog):
    fifo = tmp_path / plugin_log.LOG_FILE_NAME
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        _configure_within(tmp_path)
    assert "not a regular file" in caplog.text
    logging.getLogger("istio-cni").warning("still logs to stderr")
    assert _open_fds_on(fifo) == 0


def test_a_symlink_as_the_log_file_is_not_followed(tmp_path, caplog):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    target.chmod(0o644)
    (tmp_path / plugin_log.LOG_FILE_NAME).symlink_to(target)
    with caplog.at_level(logging.WARNING):
        _configure_within(tmp_path)
    logging.getLogger("istio-cni").warning("must not reach the target")
    assert target.read_text() == "precious\n"
    assert (target.stat().st_mode & 0o777) == 0o644
    assert "no plugin log file" in caplog.text


def test_the_log_file_is_created_0600(tmp_path):
    plugin_log.configure("info", str(tmp_path))
    logging.getLogger("istio-cni").info("x")
    assert ((tmp_path / plugin_log.LOG_FILE_NAME).stat().st_mode & 0o777) == 0o600


def test_report_sends_lines_then_event_on_one_connection(tmp_path):
    path = str(tmp_path / "log.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    try:
        plugin_log.configure("info", str(tmp_path))
        logging.getLogger("istio-cni").info("redirected: test")
        assert plugin_log.send_report(path, {"outcome": "redirected"})
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()  # everything came over the one connection
    finally:
        listener.close()
    first, second = data.split(b"POST ")[1:]
    assert first.startswith(b"/log ") and b"Connection: keep-alive" in first
    assert second.startswith(b"/event ") and b"Connection: close" in second
    lines = json.loads(first.split(b"\r\n\r\n", 1)[1])
    assert any(json.loads(line)["msg"] == "redirected: test" for line in lines)
    assert json.loads(second.split(b"\r\n\r\n", 1)[1]) == {"outcome": "redirected"}


def test_report_without_an_agent_is_dropped_quietly(tmp_path):
    assert not plugin_log.send_report(str(tmp_path / "log.sock"), {"outcome": "redirected"})


def test_the_log_file_rotates_to_one_backup(tmp_path):
    handler = plugin_log.RotatingLogFile(str(tmp_path / "istio-cni.log"), max_bytes=200)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test-rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(30):
            logger.warning("line %02d %s", i, "x" * 20)
    finally:
        logger.removeHandler(handler)
        handler.close()
    current = (tmp_path / "istio-cni.log").read_text()
    backup = (tmp_path / "istio-cni.log.1").read_text()
    assert current.endswith("line 29 " + "x" * 20 + "\n")
    assert len(current) <= 200 and len(backup) <= 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["istio-cni.log", "istio-cni.log.1"]
