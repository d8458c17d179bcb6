"""The istio-cni CNI plugin: one process per CNI call, on the host; hot path, lean imports."""

__version__ = "0.1.0"
