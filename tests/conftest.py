"""Suite-wide fixtures: the Kubernetes API stand-in, and the root tier's stated skips."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.kubeapi.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Root-tier tests skip with a reason when not root (CI runs as root, so they run there)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces and iptables")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
