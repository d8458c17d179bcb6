"""Companions: istiod values, an injected example workload, Python stand-ins for proxy and probe."""
