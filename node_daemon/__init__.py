"""The DaemonSet agent: installer loop, repair controller, drift check, log sink, health."""
