"""The istio-cni CNI plugin: one process per CNI call, on the host; hot path, lean imports."""
