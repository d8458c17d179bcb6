"""The demo: istio-cni on a sandboxed node, end to end, in one command (`scripts/demo.sh`).

A node made of network namespaces, the real `bridge`/`host-local` plugins (else a veth made
with pyroute2), the Kubernetes API stand-in (`testbed.kubeapi`) serving the companion
workloads, the installer writing a real conflist, and the frozen plugin run through the CNI
protocol, as a container runtime would, for a meshed pod and a plain pod. Then the CNI race: a
pod whose sandbox was set up before the plugin was installed fails validation (126), and the
repair controller programs it in place. Everything is removed afterwards, also on Ctrl-C.
`--native-nftables` runs the same steps in native nftables mode (`NATIVE_NFTABLES=true`).

Modules: `cli` (`main`, signals), `scenario` (the steps), `console` (output, timings), `sandbox`
(the run's temp dir, netns and processes on one undo stack), `plugin_binary` (frozen build or
source fallback), `netcat` (the app and echo servers run inside a netns). The harness pieces it
shares with the tests and the benchmarks (API stand-in, CNI runtime, netns, processes, the
repair controller's wiring) come from `testbed`.
This package stays import-light: `netcat` runs in each pod and must start fast.
"""
