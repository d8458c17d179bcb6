"""A node's filesystem and a container on it, as upstream's `istio-cni` chart lays them out.

Two roots under one directory, both built in a private mount namespace (held by a `sleep`
process; nothing is mounted on the host, and everything goes when it exits):

- `node/`: the node as the container runtime sees it: `/opt/cni/bin`, `/etc/cni/net.d`,
  `/run/istio-cni` (`/var/run` links to `/run`), `/run/netns` (the host's, with host-to-node
  propagation so namespaces made later appear), and the host's `/usr`, `/proc`, `/dev` so the
  frozen plugin and iptables run there. `node_argv` runs a binary in it (the CNI runtime runs
  the plugin so).
- `container/`: the agent's container: the image (the plugin bundle at `/opt/cni/bin`, the
  agent bundle at `/usr/local/lib/istio-cni-node`, `install-cni` and `istio-cni-node` links
  in `/usr/local/bin`, the host's `/usr` for iptables), and the chart's hostPath mounts onto
  the node's dirs (`/host/opt/cni/bin`, `/host/etc/cni/net.d`, `/var/run/istio-cni`,
  `/host/proc`, `/host/var/run/netns`) plus the service account. `container_argv` runs a
  command there, resolved on the image's PATH, as the runtime runs `command:`.

The container shares the host's network namespace (the API stand-in listens on the host's
loopback); the rest is the chart's layout, path for path.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from testbed.cleanup import Cleanup
from testbed.procs import Proc, sh

IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The Debian base image's PATH, which the Containerfile keeps."""
SERVICE_ACCOUNT = "run/secrets/kubernetes.io/serviceaccount"
HOST_SYSTEM = ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/libexec", "usr/share",
               "etc/alternatives", "proc", "dev", "sys")
"""What both roots borrow from the host: binaries and libraries (read-only; iptables goes
through /etc/alternatives), procfs, devices. /usr is borrowed dir by dir so that the image's
own /usr/local is a plain directory beside them: every bind target here is made from outside
the namespace, so none may sit inside another bind."""
READ_ONLY = ("usr/", "etc/")
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass
class ChartPod:
    root: Path
    holder: Proc

    @property
    def node(self) -> Path:
        return self.root / "node"

    @property
    def container(self) -> Path:
        return self.root / "container"

    @property
    def net_dir(self) -> Path:
        """The node's /etc/cni/net.d."""
        return self.node / "etc/cni/net.d"

    @property
    def bin_dir(self) -> Path:
        """The node's /opt/cni/bin."""
        return self.node / "opt/cni/bin"

    @property
    def run_dir(self) -> Path:
        """The node's /var/run/istio-cni (the same path in the container)."""
        return self.node / "run/istio-cni"

    def _enter(self, root: Path) -> list[str]:
        # chroot(1) inside the namespace, not nsenter --root: nsenter opens that directory
        # before entering, so it would see the directory without the binds
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "chroot", str(root)]

    def node_argv(self, *argv: str) -> list[str]:
        """argv run on the node (its root, its paths)."""
        return [*self._enter(self.node), *argv]

    def container_argv(self, *argv: str) -> list[str]:
        """argv run in the container: argv[0] found on the image's PATH, as for `command:`
        (the caller's environment must carry PATH=IMAGE_PATH)."""
        return [*self._enter(self.container), *argv]

    def mount(self, *args: str) -> None:
        sh("nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "mount", *args)

    def bind(self, source: Path | str, target: Path, read_only: bool = False) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.mount("--rbind", str(source), str(target))
        if read_only:
            self.mount("-o", "remount,bind,ro", str(target))


def _system(pod: ChartPod, root: Path) -> None:
    for name, target in MERGED_USR.items():
        (root / name).symlink_to(target)
    for name in HOST_SYSTEM:
        if os.path.isdir(f"/{name}"):
            pod.bind(f"/{name}", root / name, read_only=name.startswith(READ_ONLY))
    (root / "run").mkdir(exist_ok=True)
    (root / "var").mkdir(exist_ok=True)
    (root / "var/run").symlink_to("../run")
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)


def chart_pod(cleanup: Cleanup, root: Path, *, plugin_bundle: Path, agent_bundle: Path,
              service_account: Path) -> ChartPod:
    """The node and the container under `root` (empty), in a private mount namespace that
    `cleanup` ends. `plugin_bundle` and `agent_bundle` are build.spec's onedir outputs
    (`istio-cni/`, `istio-cni-node/`); `service_account` holds token and ca.crt."""
    holder = Proc("mount namespace holder", ["unshare", "--mount", "--propagation", "slave",
                                             "sh", "-c", "echo ready; exec sleep infinity"])
    cleanup.add("stop the mount namespace holder", holder.stop)
    holder.wait_line(lambda ln: ln == "ready", 10, "ready")
    pod = ChartPod(root, holder)
    node, box = pod.node, pod.container
    for d in (node, box):
        d.mkdir(parents=True)
        _system(pod, d)
    for d in (pod.net_dir, pod.bin_dir, pod.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    pod.bind("/run/netns", node / "run/netns")
    # the image: the agent's bundle and its two names on PATH, the plugin's bundle
    local = box / "usr/local"
    pod.bind(agent_bundle, local / "lib/istio-cni-node", read_only=True)
    (local / "bin").mkdir()
    for name in ("istio-cni-node", "install-cni"):
        (local / "bin" / name).symlink_to("/usr/local/lib/istio-cni-node/istio-cni-node")
    pod.bind(plugin_bundle, box / "opt/cni/bin/istio-cni", read_only=True)
    # the chart's hostPath mounts
    for inside, host in (("host/opt/cni/bin", pod.bin_dir), ("host/etc/cni/net.d", pod.net_dir),
                         ("run/istio-cni", pod.run_dir), ("host/var/run/netns", "/run/netns")):
        pod.bind(host, box / inside)
    pod.bind("/proc", box / "host/proc", read_only=True)
    pod.bind(service_account, box / SERVICE_ACCOUNT, read_only=True)
    return pod


def copy_service_account(sa_dir: Path, token: str, ca_pem: bytes, namespace: str) -> Path:
    """What the kubelet projects into a pod: token, ca.crt, namespace."""
    shutil.rmtree(sa_dir, ignore_errors=True)
    sa_dir.mkdir(parents=True)
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(ca_pem)
    (sa_dir / "namespace").write_text(namespace)
    os.chmod(sa_dir / "token", 0o600)
    return sa_dir
