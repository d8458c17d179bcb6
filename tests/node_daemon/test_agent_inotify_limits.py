"""The agent at the kernel's inotify limits: it stays up, polls, follows the node, and takes inotify
back when a slot is free (docs/reliability.md, 18.3).

The limits are those of a user namespace of the test's own (`testbed.inotify_limit`), so the
host's per-user limit, shared by every root process on this machine, is never touched: the agent
runs in that namespace (`nsenter`), where another process holds the only instance, then frees
it, then tries to take any instance freed again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from installer.config import InstallerConfig
from installer.conflist import chained_entry, insert_plugin, plugin_entry
from testbed.agent import AgentProcess
from testbed.cleanup import Cleanup
from testbed.inotify_limit import InotifyHog, missing_prerequisites
from testbed.nodedirs import GOLDEN, NodeDirs, make_node_dirs
from testbed.wait import wait_for

pytestmark = pytest.mark.root
OURS = "02-istio-cni.conflist"


def _needs_userns() -> None:
    if why := missing_prerequisites():
        pytest.skip(why)


def env(dirs: NodeDirs) -> dict[str, str]:
    return dirs.env(ISTIO_OWNED_CNI_CONFIG="true")


def follows(dirs: NodeDirs, primary_text: str) -> bool:
    """Our conflist is the primary's text with our entry, as the agent's installer writes it."""
    entry = chained_entry(plugin_entry(InstallerConfig.from_env(env(dirs))))
    try:
        return (dirs.net_dir / OURS).read_text() == insert_plugin(primary_text, entry)
    except FileNotFoundError:
        return False


def rewrite(path: Path, text: str) -> None:
    """The primary CNI rewriting its config by rename (aws-node's way)."""
    staged = path.with_name(".staged")
    staged.write_text(text)
    os.rename(staged, path)


def test_the_agent_survives_without_inotify_and_takes_it_back(tmp_path: Path,
                                                               cleanup: Cleanup):
    _needs_userns()
    hog = InotifyHog(cleanup, instances=1)
    assert hog.hold(1) == 1  # another process of the same user holds the only instance
    dirs = make_node_dirs(tmp_path)
    primary = dirs.put("10-calico.conflist", "calico.conflist")
    agent = AgentProcess(cleanup, "agent", env(dirs),
                         wrap=hog.enter([]))
    agent.saw("polling every")  # the warning: why, and what it does instead
    wait_for(lambda: agent.readyz()[0] == 200 or not agent.alive(), 60, "ready, polling")
    assert agent.alive(), agent.log()[-3000:]
    assert agent.metric("istio_cni_install_watch_polling") == 1
    assert agent.metric("istio_cni_install_watch_fallbacks_total") == 1
    # polling still follows the primary
    texts = [(GOLDEN / name).read_text() for name in ("compact.conflist", "calico.conflist")]
    rewrite(primary, texts[0])
    wait_for(lambda: follows(dirs, texts[0]), 30, "ours following the primary while polling")

    # the slot is freed: the agent takes inotify back on its next poll
    assert hog.command("release") == "holding 0"
    wait_for(lambda: agent.metric("istio_cni_install_watch_polling") == 0, 30,
             "inotify taken back")
    agent.saw("inotify works again")
    # from now on someone takes every instance that is freed; the agent keeps its own across
    # every pass (it never closes it), so it never falls back again
    assert hog.command("grab") == "grabbing"
    for n in range(6):
        rewrite(primary, texts[n % 2])
        wait_for(lambda n=n: follows(dirs, texts[n % 2]), 30, f"ours following rewrite {n}")
    wait_for(lambda: agent.readyz()[0] == 200, 30, "ready after the last rewrite")
    assert agent.metric("istio_cni_install_watch_polling") == 0
    assert agent.metric("istio_cni_install_watch_fallbacks_total") == 1
    assert agent.stop() == 0
    assert dirs.names() == ["10-calico.conflist"]  # uninstalled on the way out
