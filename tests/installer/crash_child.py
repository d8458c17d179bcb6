"""Run the installer in a child process that SIGKILLs itself before its Nth file operation.

Usage: crash_child.py install|uninstall|loop CRASH_AT (settings from the environment, as in
the DaemonSet). CRASH_AT counts os.write/os.fsync/os.replace/os.unlink calls on net.d
(MOUNTED_CNI_NET_DIR); 0 never crashes. Operations elsewhere (binaries, kubeconfig) are not
kill points here. `loop` reports on stdout, one line each, the count of net.d operations done,
so that a parent killing it from outside knows where the kill landed.
The kill is a real SIGKILL of this process: no finally block, no atexit, nothing flushed.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from installer import Installer, InstallerConfig  # noqa: E402


def arm(crash_at: int, net_dir: str, report: bool = False) -> None:
    count = [0]
    readlink = os.readlink
    write = os.write

    def in_net_dir(target) -> bool:
        if isinstance(target, int):
            try:
                target = readlink(f"/proc/self/fd/{target}")
            except OSError:
                return False
        return os.fspath(target).startswith(net_dir + os.sep) or os.fspath(target) == net_dir

    def wrap(real):
        def op(*args, **kwargs):
            if in_net_dir(args[0]):
                count[0] += 1
                if count[0] == crash_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                result = real(*args, **kwargs)
                if report:
                    write(1, b"%d\n" % count[0])
                return result
            return real(*args, **kwargs)
        return op

    for name in ("write", "fsync", "replace", "unlink"):
        setattr(os, name, wrap(getattr(os, name)))


def main() -> None:
    action, crash_at = sys.argv[1], int(sys.argv[2])
    config = InstallerConfig.from_env(os.environ)
    installer = Installer(config)
    arm(crash_at, str(config.mounted_cni_net_dir), report=action == "loop")
    if action == "install":
        installer.install(timeout=5)
    elif action == "uninstall":
        installer.uninstall()
    else:
        while True:
            installer.install(timeout=5)
            installer.uninstall()


if __name__ == "__main__":
    main()
