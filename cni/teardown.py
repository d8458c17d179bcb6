"""DEL and GC: nothing to undo, nothing to collect.

The rules live and die with the pod netns, and the plugin keeps no per-attachment state outside
it, so both only need the protocol's validation of the call. Kept apart from `cni.plugin` so the
entry point answers them without importing the plugin's stages (or `logging`): the runtime calls
DEL at least once per pod, and GC on every garbage collection.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cni.protocol import CmdArgs


def delete(args: "CmdArgs") -> None:
    """Nothing to undo: the rules live and die with the pod netns. Never needs the API."""
    return None


def gc(args: "CmdArgs") -> None:
    """No per-attachment state outside the pod netns, so nothing to collect."""
    return None


class Teardown:
    """The handlers `cni.protocol.dispatch` needs for DEL and GC, and nothing else."""

    delete = staticmethod(delete)
    gc = staticmethod(gc)
