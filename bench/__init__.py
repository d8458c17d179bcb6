"""Benchmarks of the plugin, the node daemon and the installer (see bench/README.md).

Not product code: the scripts here use the harness (`testbed`: the API stand-in, the CNI
runtime, netns) and need root (network namespaces, iptables). Timings live here, never in the
test suite.
"""
