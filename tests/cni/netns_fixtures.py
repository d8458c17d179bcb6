"""Real network namespaces for the netns tier (`testbed.netns`), and rule sets to program
into them.

Every namespace is `icni-b-<random>`; interfaces created in it die with it. The fixtures
register each namespace on the test's `cleanup`. Nothing here touches the host's own iptables
or interfaces.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace

import pytest

from cni.iptables_config import IptablesConfig
from cni.rules import build_ruleset
from cni.ruleset import RuleSet
from testbed.cleanup import Cleanup
from testbed.netns import Netns, create_netns

PLUGIN_DEFAULT = IptablesConfig(
    inbound_ports_include=("*",),
    inbound_ports_exclude=("15020", "15021", "15090"),
    outbound_ports_exclude=("15020",),
    outbound_ip_ranges_include=("*",),
)
CONFIGS: dict[str, IptablesConfig] = {
    "basic": PLUGIN_DEFAULT,
    "tproxy": replace(PLUGIN_DEFAULT, inbound_interception_mode="TPROXY"),
    "dns": replace(PLUGIN_DEFAULT, redirect_dns=True, capture_all_dns=True),
    "ipv6": replace(PLUGIN_DEFAULT, enable_ipv6=True, inbound_interception_mode="TPROXY",
                    redirect_dns=True, capture_all_dns=True),
    "wide": replace(PLUGIN_DEFAULT, enable_ipv6=True, drop_invalid=True,
                    exclude_interfaces=("eth9",), reroute_virtual_interfaces=("tun0",),
                    outbound_ip_ranges_include=("10.0.0.0/8", "fd00::/8"),
                    outbound_ip_ranges_exclude=("10.1.0.5/32", "fd00::5/128"),
                    outbound_ports_include=("8080",), owner_groups_include=("10", "20"),
                    proxy_uid=("1337", "1338")),
}


def ruleset(name: str) -> RuleSet:
    return build_ruleset(CONFIGS[name])


def need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"binary not installed: {', '.join(missing)}")


@pytest.fixture
def make_netns(cleanup: Cleanup) -> Callable[..., Netns]:
    """Factory: `make_netns(v4=..., v6=...)`; every namespace made is deleted afterwards."""
    need("ip")

    def make(v4: str | None = None, v6: str | None = None) -> Netns:
        return create_netns(cleanup, "icni-b", v4=v4, v6=v6)

    return make


@pytest.fixture
def netns(make_netns) -> Netns:  # noqa: ANN001 - pytest fixture
    """A fresh netns with lo up and a veth carrying 10.77.0.2/24."""
    return make_netns(v4="10.77.0.2")


def iptables_save(ns: Netns, binary: str) -> str:
    """`binary` (e.g. iptables-legacy-save) in ns, without comment lines and counters."""
    lines = ns.run(binary).splitlines()
    return "\n".join(strip_counters(line) for line in lines if not line.startswith("#"))


def strip_counters(line: str) -> str:
    if line.startswith(":"):
        return line.rsplit(" ", 1)[0]
    return line.split("] ", 1)[1] if line.startswith("[") else line
