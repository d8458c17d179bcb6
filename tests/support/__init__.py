"""Test support shared by the tiers: a CNI runtime, netns helpers, socket tools."""
