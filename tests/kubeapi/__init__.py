"""A local Kubernetes API server for tests (`server.KubeApiServer`) and its pytest fixtures.

Register the fixtures with `pytest_plugins = ["tests.kubeapi.fixtures"]` in the root conftest.
"""
