"""Real network namespaces for the netns tier, and rule sets to program into them.

Every namespace is `icni-b-<random>`; interfaces created in it die with it. Fixtures delete
what they create by name. Nothing here touches the host's own iptables or interfaces.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from cni.iptables_config import IptablesConfig
from cni.rules import build_ruleset
from cni.ruleset import RuleSet

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


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    """Run argv (in netns `ns` if given) and return stdout."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    return subprocess.run(full, check=check, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Netns:
    name: str
    v4: str | None = None
    """The veth end's IPv4 address inside the netns, if any."""
    v6: str | None = None

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True) -> str:
        return sh(*argv, ns=self.name, check=check)


def create_netns(v4: str | None = None, v6: str | None = None) -> Netns:
    """`ip netns add icni-b-X`, lo up, and a veth pair (both ends inside) carrying v4/v6."""
    need("ip")
    suffix = secrets.token_hex(4)
    ns = Netns(f"icni-b-{suffix}", v4, v6)
    sh("ip", "netns", "add", ns.name)
    sh("ip", "-n", ns.name, "link", "set", "lo", "up")
    if v4 or v6:
        a, b = f"ib{suffix}a", f"ib{suffix}b"
        sh("ip", "-n", ns.name, "link", "add", a, "type", "veth", "peer", "name", b)
        if v4:
            sh("ip", "-n", ns.name, "addr", "add", f"{v4}/24", "dev", a)
        if v6:
            sh("ip", "-n", ns.name, "addr", "add", f"{v6}/64", "dev", a, "nodad")
        sh("ip", "-n", ns.name, "link", "set", a, "up")
        sh("ip", "-n", ns.name, "link", "set", b, "up")
    return ns


def delete_netns(ns: Netns) -> None:
    sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def make_netns() -> Iterator:
    """Factory: `make_netns(v4=..., v6=...)`; every namespace made is deleted afterwards."""
    made: list[Netns] = []

    def make(v4: str | None = None, v6: str | None = None) -> Netns:
        ns = create_netns(v4, v6)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        delete_netns(ns)


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
