"""Secrets and permissions.

- The kubeconfig is written 0600 (KUBECONFIG_MODE respected), and its token never appears in a
  log line, a CNI error or an exception message: the plugin (401, TLS failure, kubeconfig
  parse errors, at debug level), the installer (install, a failing kubeconfig write, uninstall)
  and the node daemon (`istio-cni-node run` against an API that rejects the token) all run
  with a recognisable token, and every byte they print or log is searched for it.
- Files we create on the host have the narrowest mode that works.
- No subprocess is ever run through a shell: a static walk of every module's AST.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from installer import Installer, InstallError
from installer.config import InstallerConfig
from testbed import netns as nsutil
from testbed.cnirun import k8s_args
from testbed.kubeapi import KubeApiServer, write_kubeconfig
from testbed.node import plugin_argv
from testbed.nodedirs import make_node_dirs
from testbed.pods import REPO, workload
from testbed.wait import wait_for

SECRET = "S3CRET-token-must-never-be-logged-7f1c2e9a"
PACKAGES = ("cni", "installer", "node_daemon", "admin", "companions", "testbed")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- no shell, ever -----------------------------------------------------------------------------

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"),
               ("pty", "spawn")}


def shell_uses(tree: ast.AST) -> list[str]:
    found = []
    imported = {}  # local name -> (module, attr) for `from os import system as s`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in SHELL_CALLS:
                    imported[alias.asname or alias.name] = (node.module, alias.name)
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"line {node.lineno}: shell={ast.unparse(kw.value)}")
        func = node.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in SHELL_CALLS):
            found.append(f"line {node.lineno}: {func.value.id}.{func.attr}()")
        if isinstance(func, ast.Name) and func.id in imported:
            found.append(f"line {node.lineno}: {func.id}()")
    return found


def test_no_subprocess_is_ever_run_through_a_shell():
    modules = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(modules) > 40
    offences = {str(p.relative_to(REPO)): uses for p in modules
                if (uses := shell_uses(ast.parse(p.read_text(), str(p))))}
    assert offences == {}


def test_the_shell_detector_detects():
    bad = ("import os, subprocess\nfrom subprocess import getoutput as g\n"
           "subprocess.run('x', shell=True)\nsubprocess.Popen(['x'], shell=flag)\n"
           "os.system('x')\nos.popen('x')\ng('x')\nsubprocess.getstatusoutput('x')\n")
    assert len(shell_uses(ast.parse(bad))) == 7
    assert shell_uses(ast.parse("subprocess.run(['x'], shell=False)\n")) == []


# --- the installer: modes and the token ---------------------------------------------------------

def test_installer_files_have_the_narrowest_modes_and_never_log_the_token(tmp_path: Path,
                                                                          caplog):
    caplog.set_level(logging.DEBUG)
    dirs = make_node_dirs(tmp_path, token=SECRET)
    primary = dirs.net_dir / "10-bridge.conf"
    primary.write_text('{"cniVersion": "0.3.1", "name": "k8s", "type": "bridge"}\n')
    primary.chmod(0o644)  # the vendor's own mode, which we keep
    installer = Installer(dirs.config())
    installer.install()

    kubeconfig = dirs.run_dir / "istio-cni-kubeconfig"
    assert SECRET in kubeconfig.read_text()  # it is where the token belongs...
    assert mode(kubeconfig) == 0o600  # ...readable by root only
    [ours] = [p for p in dirs.net_dir.iterdir() if p.name.endswith(".conflist")]
    assert mode(ours) == 0o644  # the vendor's file stays as readable as the vendor made it
    [backup] = [p for p in dirs.net_dir.iterdir() if p.name.endswith(".istio-cni-backup")]
    assert mode(backup) == 0o644  # the exact mode to restore (and nothing secret in it)
    assert mode(dirs.bin_dst / "istio-cni") == 0o755  # executable: the runtime runs it
    installer.uninstall()

    # standalone: our own file, 0600 (0640 with CNI_CONF_GROUP_READ)
    for group_read, want in ((False, 0o600), (True, 0o640)):
        Installer(dirs.config(chained=False, cni_conf_group_read=group_read)).install()
        [standalone] = list(dirs.net_dir.glob("*istio-cni.conf"))
        assert mode(standalone) == want
        Installer(dirs.config(chained=False)).uninstall()

    # KUBECONFIG_MODE is respected, read as octal
    for raw, want in (("0640", 0o640), ("600", 0o600), ("0o400", 0o400)):
        cfg = InstallerConfig.from_env({**dirs.env(), "KUBECONFIG_MODE": raw})
        Installer(cfg).install()
        assert mode(kubeconfig) == want, raw
        Installer(cfg).uninstall()

    # a failing kubeconfig write names the path and reason, never the token
    shutil.rmtree(dirs.run_dir, ignore_errors=True)
    dirs.run_dir.write_text("not a directory")
    with pytest.raises(InstallError) as err:
        Installer(dirs.config()).install()
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.__cause__)
    texts = [r.getMessage() + (caplog.text if r.exc_info else "") for r in caplog.records]
    assert texts and not [t for t in texts if SECRET in t]
    assert SECRET not in caplog.text


# --- the plugin: modes and the token on every failure path -------------------------------------

def plugin_call(run_dir: Path, pod: dict, ns_path: str, **conf_changes) -> tuple[dict, str]:
    conf = {"cniVersion": "1.0.0", "name": "icni-h", "type": "istio-cni",
            "cni_agent_run_dir": str(run_dir), "plugin_log_level": "debug",
            "pod_lookup_attempts": 2, "pod_lookup_interval_seconds": 0.01,
            "pod_lookup_deadline_seconds": 5, **conf_changes}
    meta = pod["metadata"]
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": ns_path,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": k8s_args(meta["namespace"], meta["name"])}
    proc = subprocess.run(plugin_argv(), input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=60, check=False)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    return json.loads(out), out + proc.stderr.decode()


@pytest.mark.root
def test_plugin_never_reveals_the_token(tmp_path: Path, kube_api: KubeApiServer,
                                        kube_api_tls: KubeApiServer):
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pod = kube_api.add_pod(workload("meshed-pod"))
    kube_api_tls.add_pod(workload("meshed-pod"))
    seen: list[str] = []
    with nsutil.temporary_netns("icni-h-sec") as netns:
        ns = netns.name
        # 401: the token is rejected (expired)
        kube_api.require_token("the-current-token")
        write_kubeconfig(run_dir, kube_api, token=SECRET)
        err, text = plugin_call(run_dir, pod, nsutil.path(ns))
        assert err["code"] == 100 and "rejected the token" in err["msg"]
        seen.append(text)
        # TLS: the server's certificate is not trusted (no CA given: the system store)
        write_kubeconfig(run_dir, kube_api_tls, token=SECRET, ca_data=b"")
        err, text = plugin_call(run_dir, pod, nsutil.path(ns))
        assert err["code"] == 100 and "TLS verification" in err["msg"], err
        seen.append(text)
        # kubeconfigs that do not parse, with the token on the very line that breaks them
        for broken in (f'users:\n- name: u\n  user:\n    token: "{SECRET}\n',
                       f'{{"users": [{{"user": {{"token": "{SECRET}"}}}}] garbage',
                       f"users: [{{user: {{token: {SECRET}}}}}]\n: : :\n"):
            (run_dir / "istio-cni-kubeconfig").write_text(broken)
            err, text = plugin_call(run_dir, pod, nsutil.path(ns))
            assert err["code"] == 50, err
            seen.append(text)
        # the API is down
        write_kubeconfig(run_dir, "http://127.0.0.1:9", token=SECRET)
        err, text = plugin_call(run_dir, pod, nsutil.path(ns))
        assert err["code"] == 11
        seen.append(text)
    log_file = run_dir / "istio-cni.log"
    seen.append(log_file.read_text())
    assert all(SECRET not in t for t in seen), [t for t in seen if SECRET in t][0][:2000]
    assert "rejected the token" in seen[-1]  # the log file did record those failures
    # only root (the agent) reads the plugin's log file
    assert mode(log_file) == 0o600
    assert mode(run_dir / "istio-cni-kubeconfig") == 0o600


# --- the node daemon: logs, socket mode ---------------------------------------------------------

@pytest.mark.root
def test_node_daemon_never_logs_the_token(tmp_path: Path, kube_api: KubeApiServer):
    dirs = make_node_dirs(tmp_path, token=SECRET)
    (dirs.net_dir / "10-bridge.conf").write_text(
        '{"cniVersion": "0.3.1", "name": "k8s", "type": "bridge"}\n')
    kube_api.require_token("the-current-token")  # the daemon's token is rejected: 401s
    kubeconfig = write_kubeconfig(tmp_path, kube_api, token=SECRET, name="admin-kubeconfig")
    log_path = tmp_path / "daemon.log"
    env = {**os.environ, **dirs.env(), "KUBECONFIG": str(kubeconfig), "LOG_LEVEL": "debug",
           "REPAIR_ENABLED": "true", "REPAIR_NODE_NAME": "node-1", "READINESS_PORT": "0",
           "MONITORING_PORT": "0", "HEALTH_BIND_ADDRESS": "127.0.0.1", "HOST_PROC": "/proc",
           "DRIFT_CHECK_INTERVAL": "0", "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "admin.cli", "run"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        socket_path = dirs.run_dir / "log.sock"
        wait_for(lambda: socket_path.exists() and kube_api.count("GET", r"/pods") >= 2
                 or proc.poll() is not None, timeout=30, what="the daemon meeting the 401s")
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert mode(socket_path) == 0o600
        assert mode(dirs.run_dir / "istio-cni-kubeconfig") == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert "401" in text or "Unauthorized" in text, text[-3000:]
    assert SECRET not in text, [ln for ln in text.splitlines() if SECRET in ln][:5]
    # and the requests did carry it (so the test would have seen a leak)
    sent = [{k.lower(): v for k, v in r.headers.items()}.get("authorization")
            for r in kube_api.requests]
    assert f"Bearer {SECRET}" in sent, sent[:3]
