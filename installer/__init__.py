"""install-cni: puts the plugin on the node (binaries, kubeconfig, conflist entry); takes it off."""
