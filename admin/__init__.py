"""istio-cni-node: the command line (click): the admin commands and `run`, the DaemonSet entry."""
