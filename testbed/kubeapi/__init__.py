"""The Kubernetes API stand-in: a local HTTP(S) server speaking the real API's JSON.

Pods, nodes and events, which is all the plugin (one GET) and the node agent (LIST with field
selectors, WATCH with resume, bookmarks (periodic, as kube-apiserver's) and 410 expiry, PATCH
of pods and pods/status, DELETE with preconditions, events through both events APIs and their
PATCH; its own node's GET and PATCH of nodes and nodes/status for the readiness gate) ask of it.
Faults are injected server-side (stalled watch streams among them), so clients meet them over
a real socket. `store` holds the semantics, `server`
the HTTP, `patches` the PATCH bodies, `tls` throw-away certificates, `clients` the ways in.
"""

from testbed.kubeapi.clients import (
    DEFAULT_TOKEN,
    down_url,
    kubernetes_api_client,
    write_kubeconfig,
)
from testbed.kubeapi.server import KubeApiServer, RecordedRequest
from testbed.kubeapi.tls import TLSMaterial, make_tls_material, openssl_available

__all__ = [
    "DEFAULT_TOKEN",
    "KubeApiServer",
    "RecordedRequest",
    "TLSMaterial",
    "down_url",
    "kubernetes_api_client",
    "make_tls_material",
    "openssl_available",
    "write_kubeconfig",
]
