"""The admin CLI's wiring: explain and rules through click's runner (pure tier)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from click.testing import CliRunner

from admin.cli import cli

WORKLOADS = Path(__file__).resolve().parents[2] / "companions" / "workloads"
GOLDEN = Path(__file__).resolve().parents[1] / "cni" / "golden" / "plugin-basic.golden"


def test_explain_meshed_pod_restore_format_is_the_plugin_golden():
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(WORKLOADS / "meshed-pod.json"),
                                   "--format", "restore"])
    assert res.exit_code == 0, res.output
    assert res.output == GOLDEN.read_text()


def test_explain_restore_format_separates_the_ipv6_payload_like_rules():
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(WORKLOADS / "meshed-pod.json"),
                                   "--ipv6", "--format", "restore"])
    assert res.exit_code == 0, res.output
    v4, v6 = res.output.split("# ip6tables-restore\n")
    assert v4 == GOLDEN.read_text()
    assert v6.startswith("* nat\n") and "::6/128" in v6


def test_explain_native_nftables_prints_the_transaction_the_plugin_programs():
    from cni.pipeline import plan, rules_for

    pod = json.loads((WORKLOADS / "meshed-pod.json").read_text())
    want = rules_for(plan(pod)[2], ipv6=False, native_nftables=True).transaction()
    args = ["explain", "--pod-file", str(WORKLOADS / "meshed-pod.json"), "--native-nftables"]
    res = CliRunner().invoke(cli, [*args, "--format", "restore"])
    assert res.exit_code == 0, res.output
    assert res.output == want and want.startswith("add table inet istio-proxy-nat\n")
    text = CliRunner().invoke(cli, args).output
    assert "--- native nftables transaction (nft -f) ---\n" + want in text
    assert "iptables-restore payload" not in text
    assert json.loads(CliRunner().invoke(cli, [*args, "-o", "json"]).output)["nftables"] == want


def test_explain_text_gives_decision_and_reason():
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(WORKLOADS / "plain-pod.json")])
    assert res.exit_code == 0
    assert "NOT REDIRECTED" in res.output and "no istio-proxy container" in res.output


def test_explain_invalid_annotation_exits_1_with_the_reason(tmp_path):
    pod = json.loads((WORKLOADS / "meshed-pod.json").read_text())
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/includeOutboundIPRanges"] = "x/8"
    f = tmp_path / "pod.json"
    f.write_text(json.dumps(pod))
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(f), "--format", "json"])
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert out["redirected"] is False and "includeOutboundIPRanges" in out["error"]


def test_explain_bad_file_is_one_line_not_a_traceback(tmp_path):
    f = tmp_path / "pod.json"
    f.write_text("{nope")
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(f)])
    assert res.exit_code != 0
    assert "is not JSON" in res.output and "Traceback" not in res.output


def test_explain_pod_file_read_failing_mid_way_is_one_line(tmp_path, mocker):
    """The disk fails after the first chunk of the pod file (EIO, which no test can cause on a
    healthy disk): one line naming the file and the reason, exit 1, no traceback."""
    from cni import fileread

    pod = json.loads((WORKLOADS / "meshed-pod.json").read_text())
    pod["metadata"]["annotations"]["padding"] = "x" * (200 * 1024)  # more than one read
    f = tmp_path / "pod.json"
    f.write_text(json.dumps(pod))
    real_read = fileread.os.read
    inode = f.stat().st_ino
    chunks = []

    def read(fd: int, n: int) -> bytes:
        if os.fstat(fd).st_ino != inode:  # only the pod file's reads fail
            return real_read(fd, n)
        if chunks:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        chunks.append(real_read(fd, n))
        return chunks[-1]

    mocker.patch.object(fileread.os, "read", side_effect=read)
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(f)])
    assert res.exit_code == 1
    assert res.output == f"Error: cannot read {f}: Input/output error\n"
    assert len(chunks) == 1 and chunks[0]  # it failed after a first, successful chunk
    assert "Traceback" not in res.output


def test_explain_malformed_pod_is_one_line_naming_the_field(tmp_path):
    f = tmp_path / "pod.json"
    f.write_text('{"metadata": "x"}')
    res = CliRunner().invoke(cli, ["explain", "--pod-file", str(f)])
    assert res.exit_code == 1, res.output
    assert "metadata is a string" in res.output and "Traceback" not in res.output
    assert res.output.count("\n") == 1 and not isinstance(res.exception, AttributeError)


def test_rules_default_plugin_flags_match_the_plugin_golden():
    res = CliRunner().invoke(cli, ["rules", "--istio-inbound-ports", "*",
                                   "--istio-local-exclude-ports", "15020,15021,15090",
                                   "--istio-local-outbound-ports-exclude", "15020",
                                   "--istio-service-cidr", "*", "--proxy-uid", "1337",
                                   "--proxy-gid", "1337"])
    assert res.exit_code == 0, res.output
    assert res.output == GOLDEN.read_text()
