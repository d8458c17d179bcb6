"""istio-cni-node: the DaemonSet process (installer loop, repair controller) and the admin CLI."""
