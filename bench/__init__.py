"""Benchmarks of the plugin, the node daemon and the installer (see bench/README.md).

Not product code: the scripts here import the test stand-ins (`tests.kubeapi`, `tests.support`)
and need root (network namespaces, iptables). Timings live here, never in the test suite.
"""
