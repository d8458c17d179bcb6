"""The CNI protocol as libcni's skel implements it, driven through `dispatch` (pure tier)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading

import pytest

from cni.errors import RulesApplyFailed
from cni.protocol import (
    MAX_CONFIG_BYTES,
    SUPPORTED_VERSIONS,
    CmdArgs,
    dispatch,
    parse_cni_args,
    read_config,
)

BASE_ENV = {
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
}


class Recorder:
    """A handler set that records what it was called with."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, CmdArgs]] = []
        self.fail = fail

    def _rec(self, name: str, args: CmdArgs):
        self.calls.append((name, args))
        if self.fail:
            raise self.fail

    def add(self, args):
        self._rec("add", args)
        return {"cniVersion": args.version, "dns": {}}

    def delete(self, args):
        self._rec("delete", args)

    def check(self, args):
        self._rec("check", args)

    def status(self, args):
        self._rec("status", args)

    def gc(self, args):
        self._rec("gc", args)


def conf(version: str = "1.0.0", **extra) -> bytes:
    return json.dumps({"cniVersion": version, "name": "k8s-pod-network", "type": "istio-cni",
                       **extra}).encode()


def run(env_over: dict | None = None, stdin: bytes | None = None, handlers=None):
    env = {**BASE_ENV, **(env_over or {})}
    env = {k: v for k, v in env.items() if v is not None}
    h = handlers or Recorder()
    out, err, status = dispatch(env, conf() if stdin is None else stdin, h)
    return (json.loads(out) if out else None), err, status, h


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_accepts_every_supported_version(version):
    out, _, status, h = run(stdin=conf(version))
    assert status == 0 and h.calls[0][0] == "add"
    assert out["cniVersion"] == version


def test_version_command_lists_supported_versions_and_reads_no_config():
    out, _, status, h = run({"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": None}, stdin=b"garbage")
    assert status == 0 and not h.calls
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_no_command_prints_about_to_stderr_and_nothing_to_stdout():
    out, err, status, _ = run({"CNI_COMMAND": None})
    assert (out, status) == (None, 0)
    assert b"CNI protocol versions supported" in err


@pytest.mark.parametrize(
    ("env_over", "stdin", "code", "msg_part"),
    [
        ({"CNI_COMMAND": "FROB"}, None, 4, "unknown CNI_COMMAND: FROB"),
        ({"CNI_CONTAINERID": None}, None, 4, "[CNI_CONTAINERID] missing"),
        ({"CNI_NETNS": None, "CNI_PATH": None}, None, 4, "[CNI_NETNS,CNI_PATH] missing"),
        ({"CNI_IFNAME": ""}, None, 4, "[CNI_IFNAME] missing"),
        ({"CNI_CONTAINERID": "bad id!"}, None, 4, "invalid characters in containerID"),
        ({"CNI_IFNAME": "a" * 16}, None, 4, "invalid interface name"),
        ({}, b"{not json", 6, "error decoding network config"),
        ({}, b"[1, 2]", 6, "expected a JSON object"),
        ({}, json.dumps({"cniVersion": "1.0.0"}).encode(), 7, "missing network name"),
        ({}, json.dumps({"cniVersion": "1.0.0", "name": "-x"}).encode(), 7, "invalid characters"),
        ({}, json.dumps({"cniVersion": "1.0.0", "name": 5}).encode(), 7, "invalid characters"),
        ({}, conf("9.9.9"), 1, "incompatible CNI versions"),
        ({}, conf("one"), 6, "invalid cniVersion"),
        ({"CNI_COMMAND": "CHECK"}, conf("0.3.1"), 1, "config version does not allow CHECK"),
        ({"CNI_COMMAND": "STATUS"}, conf("1.0.0"), 1, "config version does not allow STATUS"),
        ({"CNI_COMMAND": "GC"}, conf("0.4.0"), 1, "config version does not allow GC"),
    ],
)
def test_protocol_errors_are_spec_json_with_exit_1_and_no_handler_call(env_over, stdin, code,
                                                                        msg_part):
    out, _, status, h = run(env_over, stdin)
    assert status == 1
    assert out["code"] == code, out
    assert msg_part in out["msg"] + out.get("details", "")
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert not h.calls


def test_del_needs_no_netns():
    _, _, status, h = run({"CNI_COMMAND": "DEL", "CNI_NETNS": None})
    assert status == 0 and h.calls[0][0] == "delete"


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_from_1_1_0_without_container_env(command):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": None, "CNI_NETNS": None, "CNI_IFNAME": None}
    _, _, status, h = run(env, conf("1.1.0"))
    assert status == 0 and h.calls[0][0] == command.lower()


def test_check_from_0_4_0():
    _, _, status, h = run({"CNI_COMMAND": "CHECK"}, conf("0.4.0"))
    assert status == 0 and h.calls[0][0] == "check"


def test_handler_cni_error_keeps_its_code_and_details():
    out, _, status, _ = run(handlers=Recorder(RulesApplyFailed("apply failed", "line 3")))
    assert status == 1
    assert out == {"cniVersion": "1.0.0", "code": 102, "msg": "apply failed", "details": "line 3"}


def test_unexpected_exception_becomes_999_without_traceback_on_stdout():
    seen = []
    h = Recorder(KeyError("boom"))
    out, err, status = dispatch(BASE_ENV, conf(), h, on_internal_error=seen.append)
    assert status == 1
    body = json.loads(out)
    assert body["code"] == 999 and "KeyError" in body["msg"]
    assert b"Traceback" not in out and isinstance(seen[0], KeyError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("K8S_POD_NAME=a;K8S_POD_NAMESPACE=b", {"K8S_POD_NAME": "a", "K8S_POD_NAMESPACE": "b"}),
        ("IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=a",
         {"IgnoreUnknown": "1", "FOO": "bar", "K8S_POD_NAME": "a"}),
        ("IgnoreUnknown=true;K8S_POD_UID=u", {"IgnoreUnknown": "true", "K8S_POD_UID": "u"}),
    ],
)
def test_cni_args_parse(raw, expected):
    assert parse_cni_args(raw) == expected


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        ("K8S_POD_NAME", "invalid pair"),
        ("K8S_POD_NAME=a=b", "invalid pair"),
        ("K8S_POD_NAME=a;", "invalid pair"),
        ("FOO=bar", "unknown args ['FOO']"),
        ("IgnoreUnknown=0;FOO=bar", "unknown args"),
    ],
)
def test_cni_args_errors(raw, msg):
    from cni.errors import InvalidEnvironment

    with pytest.raises(InvalidEnvironment, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_cni_args(raw)


# --- stdin is bounded while it is read ----------------------------------------------------------

class Endless(io.RawIOBase):
    """A stream of zeros that never ends, counting what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer)
        buffer[:n] = bytes(n)
        self.taken += n
        return n


def test_read_config_stops_one_byte_past_the_limit():
    raw = Endless()

    data = read_config(io.BufferedReader(raw))

    assert len(data) == MAX_CONFIG_BYTES + 1
    assert raw.taken <= MAX_CONFIG_BYTES + 1 + io.DEFAULT_BUFFER_SIZE
    out, _, status, h = run(stdin=data)
    assert (status, out["code"]) == (1, 6) and not h.calls
    assert f"larger than {MAX_CONFIG_BYTES} bytes" in out["msg"]


def test_read_config_reads_a_short_stdin_to_its_end():
    assert read_config(io.BytesIO(conf())) == conf()


def test_plugin_answers_an_oversized_stdin_without_waiting_for_its_end():
    """More than the limit on a pipe whose writer never closes it: the plugin answers with
    code 6 after reading one byte too many. Reading to EOF would block for ever; the
    subprocess timeout fails the test instead of hanging it."""
    read_end, write_end = os.pipe()
    writer_done = threading.Event()

    def write() -> None:
        try:
            with contextlib.suppress(BrokenPipeError):
                os.write(write_end, b" " * (MAX_CONFIG_BYTES + 1024 * 1024))
        finally:
            writer_done.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "cni"], stdin=read_end,
                              env={**BASE_ENV, "PATH": os.environ.get("PATH", ""),
                                   "PYTHONPATH": os.getcwd()},
                              capture_output=True, timeout=120, check=False)
    finally:
        os.close(read_end)
        writer_done.wait(30)  # the plugin has exited: the writer gets EPIPE at the latest now
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    err = json.loads(proc.stdout)
    assert err["code"] == 6 and f"larger than {MAX_CONFIG_BYTES} bytes" in err["msg"]
