"""Stand-in for bridge + host-local when they are not installed: a veth made with pyroute2.

    python -m testbed.veth NODE_NETNS POD_NETNS BRIDGE HOST_IF IFNAME ADDRESS/LEN GW

Same topology as the bridge plugin: a bridge with the gateway address in the node netns, one
veth per pod (host end on the bridge, `IFNAME` in the pod with the address and a default
route). Prints a CNI result of the bridge plugin's shape on stdout, for the next plugin's
prevResult.

Why a separate process, run like a plugin: pyroute2's `NetNS` forks a helper, and forking the
caller (the demo runs the repair controller's threads and a signal handler) can deadlock on a
lock held by another thread, and would hand the child the caller's Ctrl-C handling.
"""

from __future__ import annotations

import json
import sys


def add(node: str, pod: str, bridge: str, host_if: str, ifname: str, cidr: str,
        gateway: str) -> dict[str, object]:
    from pyroute2 import NetNS

    address, prefix = cidr.split("/")
    with NetNS(node) as ns:
        if not ns.link_lookup(ifname=bridge):
            ns.link("add", ifname=bridge, kind="bridge")
            br = ns.link_lookup(ifname=bridge)[0]
            ns.addr("add", index=br, address=gateway, prefixlen=int(prefix))
            ns.link("set", index=br, state="up")
        br = ns.link_lookup(ifname=bridge)[0]
        ns.link("add", ifname=host_if, kind="veth", peer={"ifname": ifname, "net_ns_fd": pod})
        ns.link("set", index=ns.link_lookup(ifname=host_if)[0], master=br, state="up")
    with NetNS(pod) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        ns.addr("add", index=idx, address=address, prefixlen=int(prefix))
        ns.link("set", index=idx, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=gateway)
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": bridge}, {"name": host_if},
                           {"name": ifname, "sandbox": f"/var/run/netns/{pod}"}],
            "ips": [{"interface": 2, "address": cidr, "gateway": gateway}],
            "routes": [{"dst": "0.0.0.0/0"}]}


def main(argv: list[str]) -> int:
    if len(argv) != 7:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(json.dumps(add(*argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
