"""The harness's one cleanup convention: an undo stack.

Whatever creates a resource (a network namespace, a process, a server, a temp dir) registers
its removal on a `Cleanup` the moment the resource exists, before anything else can fail. On
close the removals run newest first, each on its own: one that fails is reported and the rest
still run, so a run that failed half-way or was interrupted releases exactly what exists.
Removals are idempotent (removing what is already gone is no error): a test may delete a
netns itself, to see a DEL on a vanished one, and the cleanup still passes.

    with Cleanup() as cleanup:        # a pytest fixture yields one per test
        ns = create_netns(cleanup, "icni-t")
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class CleanupError(RuntimeError):
    """Some removals failed; the message lists them, one per line."""


class Cleanup:
    """An undo stack: `add` a removal as soon as its resource exists; `close` runs them all."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        """Register `undo` (described as `what`, e.g. "delete netns X") for close."""
        self._undo.append((what, undo))

    def close(self) -> list[str]:
        """Undo everything, newest first; one line per undo that failed."""
        problems = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep going: the rest must still be released
                problems.append(f"{what}: {exc}")
        return problems

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        problems = self.close()
        if problems and exc is None:
            raise CleanupError("cleanup failed:\n" + "\n".join(problems))
