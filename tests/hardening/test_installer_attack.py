"""The installer under attack: while its watch loop runs in a real process, another process
rewrites the primary conflist in a tight loop, the installer is SIGKILLed at seeded random
moments (and restarted, as the DaemonSet would), and the service account token rotates through
the kubelet's `..data` symlink swap the whole time.

Throughout, every complete read of the primary config is valid JSON and either the vendor's
original or exactly our edit of it (one istio-cni entry, last); nothing else ever appears in
net.d but the primary, our backup and our own in-flight temps. Afterwards, with the installer
still running, the primary holds exactly one istio-cni entry and the kubeconfig carries the
latest token (mode 0600); after uninstall (SIGTERM) the primary is byte-identical to the
original and nothing of ours is left.

The attack lasts ATTACK_SECONDS: 60 in CI (HYPOTHESIS_PROFILE=ci or CI set), 5 locally.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cni.kubeconfig import load_kubeconfig
from installer import Installer
from installer.conflist import chained_entry, insert_plugin, istio_entries
from testbed.nodedirs import GOLDEN, PLUGIN_BYTES, NodeDirs, make_node_dirs, rotate_token
from testbed.wait import wait_for

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci" or bool(os.environ.get("CI"))
ATTACK_SECONDS = float(os.environ.get("ATTACK_SECONDS", "60" if CI else "5"))
SEED = int(os.environ.get("ATTACK_SEED", "4242"))
REPO = Path(__file__).resolve().parents[2]
PRIMARY = "10-calico.conflist"

# `istio-cni-node run` reduced to the installer: install, watch until SIGTERM, uninstall.
INSTALLER = r"""
import os, signal, sys, threading, logging
sys.path.insert(0, os.environ["ICNI_REPO"])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from installer import Installer, InstallerConfig
installer = Installer(InstallerConfig.from_env(os.environ))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("PHASE installing", flush=True)
installer.install(stop=stop, timeout=60)
print("PHASE watching", flush=True)
installer.watch(stop)
installer.uninstall()
"""
PHASES = ("starting", "installing", "watching")
"""Where a kill can land: in Python's start (nothing of the installer's yet), in the install,
in the watch loop (repairing the attacker's rewrites). The child reports the last two."""

# Another CNI's installer: rewrites its config in a tight loop, in place (truncate + write, as
# Calico's install-cni does) and by rename (as aws-node does), until its deadline.
ATTACKER = r"""
import os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
data = open(os.environ["ICNI_ORIGINAL"], "rb").read()
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    if n % 2:
        with open(path, "wb") as f:
            f.write(data)
    else:
        tmp = os.path.join(os.path.dirname(path), ".calico-tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    n += 1
print(n)
"""


class Agent:
    """The installer process, restarted after every SIGKILL; its logs kept for inspection."""

    def __init__(self, dirs: NodeDirs, logs: Path) -> None:
        self.dirs, self.logs, self.starts = dirs, logs, 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"installer-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", INSTALLER], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.dirs.env(), "ICNI_REPO": str(REPO)})
        log.close()

    def phase(self) -> str:
        """How far the running installer got, from its own report."""
        log = (self.logs / f"installer-{self.starts}.log").read_text(errors="replace")
        reached = [p for p in PHASES if f"PHASE {p}" in log]
        return reached[-1] if reached else PHASES[0]

    def kill(self) -> str:
        """SIGKILL it; returns the phase the kill landed in."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        status = self.proc.wait(timeout=10)
        assert status == -signal.SIGKILL, f"the installer exited ({status}) by itself:\n" + (
            self.logs / f"installer-{self.starts}.log").read_text(errors="replace")[-3000:]
        return self.phase()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def test_rewrite_loop_sigkills_and_token_rotation(tmp_path: Path, record_property):
    rng = random.Random(SEED)
    dirs = make_node_dirs(tmp_path, token="token-generation-1")
    primary = dirs.net_dir / PRIMARY
    original = (GOLDEN / "calico.conflist").read_bytes()
    primary.write_bytes(original)
    (tmp_path / "original").write_bytes(original)
    ours = insert_plugin(original.decode(),
                         chained_entry(Installer(dirs.config()).entry())).encode()
    logs = tmp_path / "logs"
    logs.mkdir()
    agent = Agent(dirs, logs)
    agent.start()
    wait_for(lambda: primary.read_bytes() == ours, what="first install")

    attacker = subprocess.Popen(
        [sys.executable, "-c", ATTACKER, str(primary), str(ATTACK_SECONDS)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "ICNI_ORIGINAL": str(tmp_path / "original")})
    generation, kills, samples, ours_seen = 1, 0, 0, 0
    landed = {p: 0 for p in PHASES}
    next_kill = time.monotonic() + rng.uniform(0.1, 1.0)
    started = time.monotonic()
    next_rotation = time.monotonic() + rng.uniform(0.01, 0.2)
    try:
        while attacker.poll() is None:
            # every complete state of the primary is the original or exactly our edit of it
            data = primary.read_bytes()
            samples += 1
            if data not in (original, ours):
                # only the attacker writes in place: a read may catch a prefix of its write;
                # ours are atomic renames, so no other content may ever be seen
                assert original.startswith(data), f"unexpected primary content: {data[:300]!r}"
            elif data == ours:
                ours_seen += 1
            for name in os.listdir(dirs.net_dir):
                assert (name in (PRIMARY, ".calico-tmp", f"{PRIMARY}.istio-cni-backup")
                        or ".istio-cni-tmp-" in name), name
            now = time.monotonic()
            if next_kill is None and agent.phase() != "starting":
                # the random delay counts from the installer's own start, not Python's: on a
                # loaded machine a clock-only schedule could kill it before it ever ran
                next_kill = now + rng.uniform(0.1, 1.0)
            if next_kill is None:
                assert now - started < 60, "the restarted installer did not start in 60 s"
            elif now >= next_kill:  # a random kill point (fault injection, not a wait)
                landed[agent.kill()] += 1
                kills += 1
                agent.start()
                next_kill, started = None, now
            if now >= next_rotation:
                generation += 1
                rotate_token(dirs.sa_dir, f"token-generation-{generation}", generation)
                shutil.rmtree(dirs.sa_dir / f"..{generation - 1}")  # as the kubelet does
                next_rotation = now + rng.uniform(0.01, 0.2)
            time.sleep(0.002)
        rewrites = int(attacker.communicate()[0])

        # the attack is over, the installer still runs: exactly one entry, the latest token
        kubeconfig = dirs.run_dir / "istio-cni-kubeconfig"
        wait_for(lambda: primary.read_bytes() == ours, timeout=60, what="entry back in place")
        doc = json.loads(primary.read_text())
        assert [p["type"] for p in doc["plugins"]].count("istio-cni") == 1
        assert doc["plugins"][-1]["type"] == "istio-cni"
        assert len(istio_entries(primary.read_text())) == 1
        latest = f"token-generation-{generation}"
        wait_for(lambda: kubeconfig.exists() and load_kubeconfig(str(kubeconfig)).token == latest,
                 timeout=30, what="kubeconfig with the latest token")
        assert kubeconfig.stat().st_mode & 0o777 == 0o600
        assert (dirs.bin_dst / "istio-cni").read_bytes() == PLUGIN_BYTES

        assert agent.stop() == 0, agent.log_text()[-3000:]
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()

    assert primary.read_bytes() == original
    assert sorted(os.listdir(dirs.net_dir)) == [PRIMARY]
    assert not (dirs.run_dir / "istio-cni-kubeconfig").exists()
    assert not (dirs.bin_dst / "istio-cni").exists()
    logs_text = agent.log_text()
    assert "Traceback" not in logs_text, logs_text[-3000:]
    figures = {"seconds": ATTACK_SECONDS, "rewrites": rewrites, "sigkills": kills,
               "sigkills_by_phase": landed,
               "token_rotations": generation - 1, "samples": samples,
               "samples_with_our_entry": ours_seen}
    record_property("installer_attack", figures)
    print(f"\ninstaller-attack: {figures}")
    assert kills >= 1 and rewrites > 100 and ours_seen >= 1
    assert landed["starting"] == 0, landed  # every kill landed in the installer's own code
    assert landed["watching"] >= 1, landed  # and some while it repaired the rewrites

