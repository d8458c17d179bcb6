"""A node's filesystem for the installer: net.d, bin dirs, run dir, service account; and the
installer's watch loop run in a thread.

Everything lives under one root dir (a test's tmp_path, a benchmark's temp dir): net.d, the
host bin dir, the image's bin dir, the run dir and a service account dir laid out like the
kubelet's projected volume (`..data` symlink). `GOLDEN` holds the conflists real primary CNIs
write (Calico, flannel, ...), the installer tests' golden inputs, read as data.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from installer import Installer, InstallerConfig

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "installer" / "golden"
TOKEN = "service_account_token_string"
CA = b"-----BEGIN CERTIFICATE-----\nMIIfake\n-----END CERTIFICATE-----\n"
PLUGIN_BYTES = b"#!/bin/sh\necho fake istio-cni\n"


def rotate_token(sa_dir: Path, token: str, generation: int) -> None:
    """What the kubelet does: write a new timestamped dir, swap the `..data` symlink."""
    data = sa_dir / f"..{generation}"
    data.mkdir()
    (data / "token").write_text(token)
    (data / "ca.crt").write_bytes(CA)
    tmp = sa_dir / "..data_tmp"
    os.symlink(data.name, tmp)
    os.rename(tmp, sa_dir / "..data")


@dataclass
class NodeDirs:
    root: Path
    net_dir: Path
    bin_src: Path
    bin_dst: Path
    run_dir: Path
    sa_dir: Path

    def config(self, **changes: object) -> InstallerConfig:
        """The installer's config for this node. Chained mode edits the primary's file here
        (`owned_config=False`) unless a caller asks for our own conflist: most installer tests
        are about that edit, and pass `owned_config=True` for the other."""
        base = InstallerConfig(
            mounted_cni_net_dir=self.net_dir,
            owned_config=False,
            cni_agent_run_dir=self.run_dir,
            k8s_service_host="10.96.0.1",
            k8s_service_port="443",
            service_account_path=self.sa_dir,
            cni_bin_source_dir=self.bin_src,
            cni_bin_target_dirs=(self.bin_dst,),
            exclude_namespaces=("istio-system",),
            pod_namespace="istio-system",
            plugin_log_level="debug",
            uninstall_on_shutdown="true",
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def env(self, **extra: str) -> dict[str, str]:
        """The same settings as environment variables (for the CLI and subprocesses)."""
        return {
            "MOUNTED_CNI_NET_DIR": str(self.net_dir), "CNI_AGENT_RUN_DIR": str(self.run_dir),
            "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
            "K8S_SERVICE_ACCOUNT_PATH": str(self.sa_dir),
            "CNI_BIN_SOURCE_DIR": str(self.bin_src), "CNI_BIN_TARGET_DIRS": str(self.bin_dst),
            "EXCLUDE_NAMESPACES": "istio-system", "POD_NAMESPACE": "istio-system",
            "PLUGIN_LOG_LEVEL": "debug", "UNINSTALL_ON_SHUTDOWN": "true",
            "ISTIO_OWNED_CNI_CONFIG": "false", **extra,
        }

    def put(self, name: str, golden: str | None = None, text: str | None = None) -> Path:
        """Place a config in net.d, from a golden input file or literal text."""
        path = self.net_dir / name
        path.write_bytes((GOLDEN / golden).read_bytes() if golden else (text or "").encode())
        return path

    def names(self) -> list[str]:
        return sorted(os.listdir(self.net_dir))


def has_entry(path: Path) -> bool:
    """Whether the conflist at `path` ends with istio-cni's entry (where the installer puts it)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    plugins = doc.get("plugins") or []
    return bool(plugins) and plugins[-1].get("type") == "istio-cni"


def make_node_dirs(root: Path, token: str = TOKEN) -> NodeDirs:
    """A fake node under `root`: net.d, the image's bin dir with a plugin, the host's bin dir,
    the run dir and a service-account dir laid out as the kubelet projects it (`..data`),
    holding `token`."""
    dirs = NodeDirs(root, root / "net.d", root / "image-bin", root / "host-bin",
                    root / "run", root / "sa")
    for d in (dirs.net_dir, dirs.bin_src, dirs.bin_dst, dirs.sa_dir):
        d.mkdir()
    plugin = dirs.bin_src / "istio-cni"
    plugin.write_bytes(PLUGIN_BYTES)
    plugin.chmod(0o755)
    rotate_token(dirs.sa_dir, token, 1)
    os.symlink("..data/token", dirs.sa_dir / "token")
    os.symlink("..data/ca.crt", dirs.sa_dir / "ca.crt")
    return dirs


@contextmanager
def watching(installer: Installer, run: Callable[[threading.Event], None] | None = None
             ) -> Iterator[threading.Event]:
    """Run the watch loop in a thread; stop it (and insist it stops) afterwards."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            (run or installer.watch)(stop)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=body, name="installer-watch", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the watch loop did not stop"
        if errors:
            raise errors[0]


def loaded_plugins(net_dir: Path) -> list[str] | None:
    """The plugin types of the config the runtime loads (the first valid .conf/.conflist/.json
    in byte order), or None when there is none. Plain `json`: test inputs are ordinary files."""
    import json

    for name in sorted(os.listdir(net_dir), key=os.fsencode):
        if os.path.splitext(name)[1] not in (".conf", ".conflist", ".json"):
            continue
        try:
            doc = json.loads((net_dir / name).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        if name.endswith(".conflist"):
            plugins = doc.get("plugins")
            if isinstance(doc.get("name"), str) and isinstance(plugins, list) and plugins \
                    and all(isinstance(p, dict) and p.get("type") for p in plugins):
                return [p["type"] for p in plugins]
        elif isinstance(doc.get("type"), str) and doc["type"]:
            return [doc["type"]]
    return None


def node_works(dirs: NodeDirs) -> bool:
    """A pod can be created: the loaded config names istio-cni only while the plugin (an
    executable in the bin dir) and the kubeconfig it reads are both there."""
    plugins = loaded_plugins(dirs.net_dir) or []
    if "istio-cni" not in plugins:
        return True
    plugin = dirs.bin_dst / "istio-cni"
    return (plugin.is_file() and os.access(plugin, os.X_OK)
            and (dirs.run_dir / "istio-cni-kubeconfig").is_file())
