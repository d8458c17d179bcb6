"""scripts/setup.sh on a machine where another apt is running (unattended upgrades on a fresh VM).

The script runs for real, in a copy of the repo's layout, with `dpkg` and `apt-get` stubs first on
PATH: no test may install packages on the machine running it, and a concurrent apt holding the
dpkg lock for a while is exactly what the `apt-get` stub plays (it fails with apt's own message
until its lock is "released"). The venv step meets a `.venv/bin/python` stub.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCKED = ("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 "
          "(unattended-upgr)\nE: Unable to acquire the dpkg frontend lock "
          "(/var/lib/dpkg/lock-frontend), is another process using it?")


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def sandbox(tmp_path: Path, locked_calls: int, installed: tuple[str, ...] = ()) -> dict[str, str]:
    """A copy of scripts/setup.sh with stubs; apt-get fails as locked `locked_calls` times."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    executable(tmp_path / ".venv" / "bin" / "python", "#!/bin/sh\nexit 0\n")
    bin_dir, log = tmp_path / "bin", tmp_path / "apt-get.log"
    executable(bin_dir / "dpkg", "#!/bin/sh\ncase \" $INSTALLED \" in *\" $2 \"*) exit 0;; esac\n"
                                 "exit 1\n")
    executable(bin_dir / "apt-get", f"""#!/bin/sh
echo "$*" >> {log}
n=$(wc -l < {log})
if [ "$n" -le {locked_calls} ]; then
    printf '%s\\n' "{LOCKED}" >&2
    exit 100
fi
exit 0
""")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "INSTALLED": " ".join(installed),
            "APT_LOCK_WAIT_SECONDS": "120", "HOME": str(tmp_path)}


def run_setup(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def apt_calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "apt-get.log").read_text().splitlines()


def test_waits_for_another_apt_then_installs(tmp_path: Path) -> None:
    env = sandbox(tmp_path, locked_calls=2)

    proc = run_setup(tmp_path, env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("another apt or dpkg is running") == 1, proc.stderr
    calls = apt_calls(tmp_path)
    assert [c.split()[2] for c in calls] == ["update", "update", "update", "install"], calls
    assert all(c.startswith("-o DPkg::Lock::Timeout=120 ") for c in calls), calls
    assert "nftables libnftables1" in calls[-1]


def test_a_lock_held_past_the_bound_fails_with_apts_message(tmp_path: Path) -> None:
    env = {**sandbox(tmp_path, locked_calls=1000), "APT_LOCK_WAIT_SECONDS": "0"}

    proc = run_setup(tmp_path, env)

    assert proc.returncode != 0
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in proc.stderr
    assert len(apt_calls(tmp_path)) == 1


def test_other_apt_failures_are_not_waited_on(tmp_path: Path) -> None:
    env = sandbox(tmp_path, locked_calls=0)
    log = tmp_path / "apt-get.log"
    executable(tmp_path / "bin" / "apt-get",
               f"#!/bin/sh\necho \"$*\" >> {log}\necho 'E: Unable to locate package x' >&2\n"
               "exit 100\n")

    proc = run_setup(tmp_path, env)

    assert proc.returncode != 0 and "Unable to locate package x" in proc.stderr
    assert len(apt_calls(tmp_path)) == 1


def test_nothing_missing_means_no_apt_at_all(tmp_path: Path) -> None:
    packages = ("iptables", "nftables", "libnftables1", "iproute2", "containernetworking-plugins",
                "conntrack", "util-linux", "procps", "openssl", "curl", "unzip", "python3-venv")
    env = sandbox(tmp_path, locked_calls=1000, installed=packages)

    proc = run_setup(tmp_path, env)

    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "apt-get.log").exists()


def test_an_area_adds_packages_and_a_step_through_setup_d(tmp_path: Path) -> None:
    """scripts/setup.d: NAME.packages adds Debian packages (the Go yardstick's golang-go, say),
    NAME.sh runs after the venv, without editing setup.sh."""
    env = sandbox(tmp_path, locked_calls=0, installed=("iptables",))
    hooks = tmp_path / "scripts" / "setup.d"
    hooks.mkdir()
    (hooks / "go.packages").write_text("# the bench's Go yardstick\ngolang-go  # 1.19+\n\n")
    executable(hooks / "tool.sh", f"#!/bin/sh\ntouch {tmp_path}/tool-step-ran\n")

    proc = run_setup(tmp_path, env)

    assert proc.returncode == 0, proc.stderr
    install = apt_calls(tmp_path)[-1].split()
    assert install[-1] == "golang-go" and "iptables" not in install, install
    assert (tmp_path / "tool-step-ran").exists()


def test_the_demo_sets_up_without_the_tests_tools(tmp_path: Path) -> None:
    env = {**sandbox(tmp_path, locked_calls=0, installed=("iptables",)), "SETUP_TEST_TOOLS": "0"}
    hooks = tmp_path / "scripts" / "setup.d"
    hooks.mkdir()
    (hooks / "go.packages").write_text("golang-go\n")
    executable(hooks / "tool.sh", f"#!/bin/sh\ntouch {tmp_path}/tool-step-ran\n")

    proc = run_setup(tmp_path, env)

    assert proc.returncode == 0, proc.stderr
    assert "golang-go" not in apt_calls(tmp_path)[-1]
    assert not (tmp_path / "tool-step-ran").exists()


def test_no_script_or_doc_tells_root_to_use_sudo() -> None:
    """Setup, demo, tests and benchmarks run as root, and a fresh Debian machine has no sudo:
    the instructions say "as root", never `sudo`."""
    texts = [*REPO.glob("scripts/*.sh"), *REPO.glob("docs/*.md"), REPO / "README.md",
             *REPO.glob("companions/**/*.md"), *REPO.glob("companions/demo/*.py"),
             *REPO.glob("bench/*.md")]
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for path in texts
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\bsudo\b", line)]
    assert offenders == []
