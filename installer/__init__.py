"""install-cni: puts the plugin on the node (binaries, kubeconfig, conflist entry) and takes it off."""
