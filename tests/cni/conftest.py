"""Fixtures of the cni tests: real network namespaces for the root tier (netns_fixtures)."""

from __future__ import annotations

from tests.cni.netns_fixtures import make_netns, netns

__all__ = ["make_netns", "netns"]
