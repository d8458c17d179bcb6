"""Errors that carry a CNI error code; `cni.protocol.dispatch` turns them into the spec's JSON.

Every edge (API client, netns, backends) translates its low-level failures into one of these,
raising `from` the cause, so the runtime (and the kubelet's pod events) see a precise code and a
message that says what we were doing, on what, and why. Anything else that escapes becomes 999.
Codes 1-51 are the CNI spec's (and libcni's 8); 100 and up are ours.
"""


class CNIError(Exception):
    """Base: code 999 (libcni's ErrInternal)."""

    code = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class IncompatibleVersion(CNIError):
    code = 1


class InvalidEnvironment(CNIError):
    code = 4


class DecodingFailure(CNIError):
    code = 6


class InvalidNetworkConfig(CNIError):
    code = 7


class InvalidNetNS(CNIError):
    """libcni's ErrInvalidNetNS: the netns path does not exist or is not a netns."""

    code = 8


class NetnsChanged(InvalidNetNS):
    """A netns held since it was checked is not what it was when entered again (another
    namespace behind the descriptor, or the pod's IP gone from it): nothing was written."""


class TryAgainLater(CNIError):
    """Transient: API unreachable, 5xx, timeouts. The runtime retries the sandbox."""

    code = 11


class PluginNotAvailable(CNIError):
    """STATUS / ADD: the plugin cannot serve pods (e.g. its kubeconfig is missing)."""

    code = 50


class PodLookupFailed(CNIError):
    """The pod could not be fetched for a non-transient reason (401/403, gone after retries)."""

    code = 100


class InvalidPod(PodLookupFailed):
    """The API's answer does not have the shape of a Pod (e.g. `metadata` a string): the pod
    could not be read, so it counts as a failed lookup (same code); the message names the field."""


class InvalidAnnotation(CNIError):
    """A redirect annotation (or istio-proxy setting) has a value we refuse to program."""

    code = 101


class RulesApplyFailed(CNIError):
    """iptables-restore / libiptc / route programming failed inside the pod netns."""

    code = 102


class RulesConflict(CNIError):
    """The netns already holds ISTIO_* rules that differ from what this pod needs."""

    code = 103


class RulesMismatch(CNIError):
    """CHECK: the live rules are not what the pod's current spec requires."""

    code = 104


class NoPodAddress(CNIError):
    """No usable (non-loopback, non-link-local) address in the pod netns to pick IPv4/IPv6."""

    code = 105


class NetnsReturnFailed(BaseException):
    """A thread could not switch back out of a pod's network namespace after working in it.

    Not a `CNIError`, not even an `Exception`: no handler for ordinary failures may catch it
    (drift, repair and `explain` report `OSError`s as a pod's failure; the repair controller's
    worker survives any `Exception`), because the thread that raised it cannot be trusted with
    any later work: whatever it did next would happen in that pod's netns. It unwinds the
    thread's work, and whoever runs the thread ends the process (`node_daemon.fatal`); the
    thread has already been moved into an empty netns of its own, where possible, so nothing
    done while it unwinds reaches the pod."""
