"""The installer's watch at the kernel's inotify limits (docs/reliability.md, 18.3): no instance
left (EMFILE) and no watch left (ENOSPC) make it poll, never fail; it takes inotify back once
the limit allows; the install's wait for a primary config polls too.

Each case runs in a user namespace of its own (`testbed.inotify_limit`), whose limits it sets
itself, so the host's limits are never touched; the case prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cleanup import Cleanup
from testbed.inotify_limit import REPO, InotifyHog, missing_prerequisites

pytestmark = pytest.mark.root

WATCHES = r"""
import json, sys, threading
from pathlib import Path
from installer.fswatch import FsWatch
root = Path(sys.argv[1])
limit = Path("/proc/sys/user/max_inotify_watches")
limit.write_text("1\n")
reports = []
fs = FsWatch(reports.append)
fs.begin()
first, second = fs.add(root / "a"), fs.add(root / "b")
fs.commit()
out = {"added": [first, second], "polling": fs.polling, "reports": list(reports),
       "poll_tick": fs.wait(threading.Event(), 30) == []}
limit.write_text("8192\n")
fs.begin()
fs.add(root / "a"), fs.add(root / "b")
fs.commit()
(root / "b" / "new").write_text("x")
events = fs.wait(threading.Event(), 30)
out.update(back=not fs.polling, reports_after=reports, events=[e.name for e in events])
print(json.dumps(out))
"""

WAIT_FOR_PRIMARY = r"""
import json, sys, threading, time
from pathlib import Path
from installer import Installer
from testbed.nodedirs import make_node_dirs
Path("/proc/sys/user/max_inotify_instances").write_text("0\n")
dirs = make_node_dirs(Path(sys.argv[1]))
installer = Installer(dirs.config(owned_config=True))
done = threading.Event()
errors = []
def install():
    try:
        installer.install()
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        done.set()
threading.Thread(target=install, daemon=True).start()
dirs.put("10-calico.conflist", "calico.conflist")  # appears while install() waits, polling
installed = done.wait(60) and not errors
if not installed:
    print(json.dumps({"install_errors": errors}))
    sys.exit(0)
stop = threading.Event()
installer.set_ready(False)  # ready again: the loop's first pass is done
watching = threading.Thread(target=installer.watch, args=(stop,), daemon=True)
watching.start()
deadline = time.monotonic() + 60
while not installer.ready and time.monotonic() < deadline:
    stop.wait(0.05)
ours = dirs.net_dir / "02-istio-cni.conflist"
ours.unlink()  # the watch loop, polling, puts it back
while not ours.exists() and time.monotonic() < deadline:
    stop.wait(0.05)
stop.set()
watching.join(30)
print(json.dumps({"installed": installed, "restored": ours.exists(),
                  "snapshot": installer.metrics.snapshot(), "stopped": not watching.is_alive()}))
"""


def _needs_userns() -> None:
    if why := missing_prerequisites():
        pytest.skip(why)


def run_in(hog: InotifyHog, script: str, *args: str) -> dict:
    proc = subprocess.run(hog.enter([sys.executable, "-c", script, *args]),
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_watch_left_polls_then_takes_inotify_back(tmp_path: Path, cleanup: Cleanup):
    _needs_userns()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    hog = InotifyHog(cleanup, instances=4)
    out = run_in(hog, WATCHES, str(tmp_path))
    assert out["added"] == [True, False]  # the second watch hit max_user_watches (ENOSPC)
    assert out["polling"] and out["reports"] == [True] and out["poll_tick"]
    assert out["back"] and out["reports_after"] == [True, False]
    assert "new" in out["events"]  # inotify again: the change is an event, not a poll


def test_install_waits_for_a_primary_and_the_loop_repairs_without_any_instance(
        tmp_path: Path, cleanup: Cleanup):
    _needs_userns()
    hog = InotifyHog(cleanup, instances=4)
    out = run_in(hog, WAIT_FOR_PRIMARY, str(tmp_path))
    assert "install_errors" not in out, out
    assert out["installed"] and out["restored"] and out["stopped"], out
    snap = out["snapshot"]
    assert snap["watch_polling"] == 1 and snap["watch_fallbacks"] == 1, snap
    assert snap["repairs"] == 1, snap  # the deleted file put back, by polling
