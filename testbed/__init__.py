"""The test harness the tests, the demo and the benchmarks share: a sandboxed node on one
machine, with no cluster.

- `kubeapi`: the Kubernetes API stand-in (real HTTP(S), the real API's JSON, fault injection);
- `cnirun`: a container runtime's CNI side (a conflist run like libcni) and `veth`, the
  pyroute2 stand-in for bridge + host-local;
- `node`: the sandboxed node (netns, bridge + host-local, run dir, istio-cni via the CNI
  protocol); `nodedirs`: a node's filesystem for the installer;
- `netns`, `traffic`, `sockets`: network namespaces, and real TCP through them;
- `controller`: the repair controller wired as the agent wires it; `pods`: pods from the
  companion workloads; `nodes`: nodes as a kubelet registers them; `frozen`: the PyInstaller
  plugin; `procs`, `wait`: bounded commands and waits.

One cleanup convention (`testbed.cleanup.Cleanup`): whatever creates a resource registers its
removal the moment it exists; removals run newest first, each on its own, and are idempotent.
Product code never imports this package (an import-linter contract); it imports the product.
Importing `testbed` itself imports nothing: each module is imported where it is used.
"""
