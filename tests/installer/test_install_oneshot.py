"""One-shot install and uninstall on real temp directories: config entry, exact restore,
kubeconfig, binaries, and the failures an admin must be able to read."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from cni.kubeconfig import load_kubeconfig
from installer import Installer, InstallError
from installer.primary import BACKUP_SUFFIX
from testbed.nodedirs import CA, GOLDEN, PLUGIN_BYTES, TOKEN, NodeDirs


def entry_of(path: Path) -> dict:
    return [p for p in json.loads(path.read_text())["plugins"] if p["type"] == "istio-cni"][-1]


@pytest.mark.parametrize("source", ["list.conflist", "calico.conflist", "compact.conflist"])
def test_conflist_gets_our_entry_and_uninstall_restores_it_byte_for_byte(node_dirs: NodeDirs,
                                                                         source: str):
    path = node_dirs.put("10-net.conflist", source)
    path.chmod(0o644)
    original = path.read_bytes()
    installer = Installer(node_dirs.config())
    installer.install()
    assert installer.ready and installer.config_path == path
    doc = json.loads(path.read_text())
    assert doc["plugins"][-1]["type"] == "istio-cni"
    assert entry_of(path)["cni_agent_run_dir"] == str(node_dirs.run_dir)
    assert os.stat(path).st_mode & 0o777 == 0o644  # the primary keeps its mode
    assert (node_dirs.net_dir / ("10-net.conflist" + BACKUP_SUFFIX)).read_bytes() == original

    installer.uninstall()
    assert path.read_bytes() == original
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert node_dirs.names() == ["10-net.conflist"]  # no backup, no temp left
    installer.uninstall()  # idempotent
    assert path.read_bytes() == original


@pytest.mark.parametrize("source", ["bridge.conf", "flannel.json"])
def test_single_conf_becomes_a_conflist_and_comes_back_as_it_was(node_dirs: NodeDirs,
                                                                 source: str):
    ext = Path(source).suffix
    path = node_dirs.put(f"10-net{ext}", source)
    original = path.read_bytes()
    cfg = node_dirs.config(cni_agent_run_dir=Path("/path/to/run"), pod_namespace="my-namespace")
    Installer(cfg).install()
    converted = node_dirs.net_dir / "10-net.conflist"
    assert converted.read_bytes() == (GOLDEN / f"{source}.golden").read_bytes()
    assert not path.exists()  # else the runtime would keep loading the .conf, which sorts first
    Installer(cfg).uninstall()  # a new process: state comes from net.d alone
    assert node_dirs.names() == [f"10-net{ext}"]
    assert path.read_bytes() == original


def test_old_istio_entries_are_replaced_and_not_restored(node_dirs: NodeDirs):
    path = node_dirs.put("10-net.conflist", "list-with-istio.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    types = [p["type"] for p in json.loads(path.read_text())["plugins"]]
    assert types == ["bridge", "tuning", "istio-cni"]
    installer.uninstall()  # "without a trace": the stale entries of an older installer go too
    assert path.read_text() == (GOLDEN / "list-with-istio.conflist.removed.golden").read_text()


def test_explicit_name_with_twin_and_unknown_extension(node_dirs: NodeDirs):
    node_dirs.put("00-first.conflist", "list.conflist")
    node_dirs.put("bridge.conf", "bridge.conf")
    Installer(node_dirs.config(cni_conf_name="bridge.conflist")).install()
    assert "istio-cni" in (node_dirs.net_dir / "bridge.conflist").read_text()
    assert "istio-cni" not in (node_dirs.net_dir / "00-first.conflist").read_text()
    odd = node_dirs.put("undetectable.file", "list.conflist")
    Installer(node_dirs.config(cni_conf_name="undetectable.file")).install()
    assert entry_of(odd)["type"] == "istio-cni"


def test_vendor_changes_after_install_survive_uninstall(node_dirs: NodeDirs):
    path = node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    changed = path.read_text().replace('"500"', '"1024"')
    path.write_text(changed)  # the primary CNI edits its own file, keeping our entry
    installer.uninstall()
    doc = json.loads(path.read_text())
    assert doc["plugins"][1]["sysctl"]["net.core.somaxconn"] == "1024"
    assert [p["type"] for p in doc["plugins"]] == ["bridge", "tuning"]


def test_vendor_recreated_conf_is_not_clobbered_by_restore(node_dirs: NodeDirs):
    node_dirs.put("10-net.conf", "bridge.conf")
    installer = Installer(node_dirs.config())
    installer.install()
    newer = '{"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "bridge": "cni1"}\n'
    node_dirs.put("10-net.conf", text=newer)  # written by its owner while we were installed
    installer.uninstall()
    assert node_dirs.names() == ["10-net.conf"]
    assert (node_dirs.net_dir / "10-net.conf").read_text() == newer


def test_standalone_files(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    for name, expected in (("", "YYY-istio-cni.conf"), ("user-defined.conf", "user-defined.conf")):
        installer = Installer(node_dirs.config(chained=False, cni_conf_name=name))
        installer.install()
        ours = node_dirs.net_dir / expected
        doc = json.loads(ours.read_text())
        assert doc["type"] == "istio-cni" and doc["cniVersion"] == "0.3.1"
        assert os.stat(ours).st_mode & 0o777 == 0o600
        installer.uninstall()
        assert not ours.exists()
    assert "istio-cni" not in (node_dirs.net_dir / "10-net.conflist").read_text()


def test_standalone_never_overwrites_a_foreign_file(node_dirs: NodeDirs):
    node_dirs.put("user.conf", "bridge.conf")
    with pytest.raises(InstallError, match="not an istio-cni config"):
        Installer(node_dirs.config(chained=False, cni_conf_name="user.conf")).install()
    assert (node_dirs.net_dir / "user.conf").read_bytes() == (GOLDEN / "bridge.conf").read_bytes()


def test_a_config_that_is_not_json_is_left_alone_with_a_clear_error(node_dirs: NodeDirs,
                                                                    caplog):
    path = node_dirs.put("10-net.conflist", text="# managed by puppet\nnot json\n")
    installer = Installer(node_dirs.config(cni_conf_name="10-net.conflist"))
    with pytest.raises(InstallError) as err:
        installer.install()
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value)
    assert "left untouched" in str(err.value)
    assert path.read_text() == "# managed by puppet\nnot json\n"
    assert node_dirs.names() == ["10-net.conflist"]
    assert not installer.ready
    assert installer.metrics.snapshot()["installs"] == {"CREATE_CNI_CONFIG_FAILURE": 1}


def test_a_twin_conflist_of_someone_else_is_not_overwritten(node_dirs: NodeDirs):
    node_dirs.put("10-net.conf", "bridge.conf")
    node_dirs.put("10-net.conflist", "list.conflist")
    with pytest.raises(InstallError, match="refusing to overwrite"):
        Installer(node_dirs.config()).install()
    assert (node_dirs.net_dir / "10-net.conflist").read_text() == (
        GOLDEN / "list.conflist").read_text()


def test_kubeconfig_is_what_the_plugin_loads(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config(kubeconfig_mode=0o640))
    installer.install()
    path = node_dirs.run_dir / "istio-cni-kubeconfig"
    access = load_kubeconfig(str(path))
    assert access.server == "https://10.96.0.1:443"
    assert access.token == TOKEN and access.ca_data == CA
    assert os.stat(path).st_mode & 0o777 == 0o640
    installer.uninstall()
    assert not path.exists()


@pytest.mark.parametrize("host, url", [
    ("fd00::1", "https://[fd00::1]:443"),
    ("[fd00::1]", "https://[fd00::1]:443"),
    ("kubernetes.default.svc", "https://kubernetes.default.svc:443"),
])
def test_kubeconfig_server_brackets_ipv6(node_dirs: NodeDirs, host: str, url: str):
    node_dirs.put("10-net.conflist", "list.conflist")
    Installer(node_dirs.config(k8s_service_host=host, skip_tls_verify=True)).install()
    access = load_kubeconfig(str(node_dirs.run_dir / "istio-cni-kubeconfig"))
    assert access.server == url and access.insecure_skip_tls_verify and access.ca_data is None


def test_kubeconfig_errors_name_what_to_set(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config(k8s_service_host=""))
    with pytest.raises(InstallError, match="KUBERNETES_SERVICE_HOST") as err:
        installer.install()
    assert err.value.result == "CREATE_KUBECONFIG_FAILURE"
    with pytest.raises(InstallError, match="KUBE_CA_FILE"):
        Installer(node_dirs.config(kube_ca_file=str(node_dirs.root / "none.crt"))).install()
    assert "istio-cni" not in (node_dirs.net_dir / "10-net.conflist").read_text()


def test_binaries_are_copied_with_their_mode_and_stale_temps_removed(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    stale = node_dirs.bin_dst / ".istio-cni.istio-cni-tmp-deadbeef"
    stale.write_bytes(b"half a binary")
    other = node_dirs.bin_dst / "bridge"
    other.write_bytes(b"not ours")
    installer = Installer(node_dirs.config())
    installer.install()
    plugin = node_dirs.bin_dst / "istio-cni"
    assert plugin.read_bytes() == PLUGIN_BYTES and os.stat(plugin).st_mode & 0o777 == 0o755
    assert not stale.exists()
    inode = os.stat(plugin).st_ino
    installer.reconcile()
    assert os.stat(plugin).st_ino == inode  # unchanged binaries are not rewritten
    installer.uninstall()
    assert sorted(os.listdir(node_dirs.bin_dst)) == ["bridge"]


@pytest.mark.root
def test_read_only_bin_dir_names_the_platform_setting(node_dirs: NodeDirs, read_only_dir: Path,
                                                      caplog):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config(cni_bin_target_dirs=(read_only_dir,)))
    with pytest.raises(InstallError) as err:
        installer.install()
    message = str(err.value)
    assert str(read_only_dir / "istio-cni") in message and "Read-only file system" in message
    assert "/home/kubernetes/bin" in message and "global.platform" in message
    assert err.value.result == "COPY_BINARIES_FAILURE"
    assert "istio-cni" not in (node_dirs.net_dir / "10-net.conflist").read_text()


def test_metrics_count_installs(node_dirs: NodeDirs, caplog):
    caplog.set_level(logging.INFO)
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    assert installer.metrics.snapshot() == {"installs": {"SUCCESS": 1}, "repairs": 0,
                                            "errors": 0, "watch_polling": 0,
                                            "watch_fallbacks": 0}
    assert any("inserted istio-cni into" in r.getMessage() for r in caplog.records)


def test_uninstall_removes_the_run_dir_it_created_with_the_plugins_log(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = Installer(node_dirs.config())
    installer.install()
    assert node_dirs.run_dir.is_dir()  # the installer made it (for the kubeconfig)
    for name in ("istio-cni.log", "istio-cni.log.1"):  # what the plugin writes there
        (node_dirs.run_dir / name).write_text("{}\n")
    installer.uninstall()
    assert not node_dirs.run_dir.exists()


def test_uninstall_empties_a_run_dir_it_did_not_create_of_what_is_ours(node_dirs: NodeDirs):
    node_dirs.put("10-net.conflist", "list.conflist")
    node_dirs.run_dir.mkdir()  # as the kubelet makes it (hostPath DirectoryOrCreate)
    (node_dirs.run_dir / "someone-elses").write_text("x")
    installer = Installer(node_dirs.config())
    installer.install()
    (node_dirs.run_dir / "istio-cni.log").write_text("{}\n")
    installer.uninstall()
    assert sorted(os.listdir(node_dirs.run_dir)) == ["someone-elses"]
