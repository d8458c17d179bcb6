"""The skips the test command accepts: a short list, each by design. Any other skip fails it.

A skip that says "needs kubectl" or "needs openssl" turns a green run into less than its name:
CI's green then covers fewer tests than a developer's. The test command (`scripts/test.sh`)
installs every tool the tests use and sets ISTIO_CNI_STRICT_SKIPS=1, under which the root
conftest fails the session when a test skips for a reason not listed here, and prints each one
with its reason. A plain `pytest` run (not root, a machine without a tool) still skips with the
reason and passes, so a developer can run a tier anywhere.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

STRICT = os.environ.get("ISTIO_CNI_STRICT_SKIPS") == "1"


class Allowed(NamedTuple):
    reason: re.Pattern[str]
    """Matches the whole skip reason."""
    why: str
    """Why this skip is by design (not a missing tool or an unlucky order)."""


ALLOWED: tuple[Allowed, ...] = (
    Allowed(re.compile(r"tests the in-process path; the agent serves here"),
            "the e2e tier runs twice (scripts/test.sh); tests of the plugin's own pod lookup "
            "and report have nothing to look at in the run where the agent serves, and run in "
            "the other"),
    Allowed(re.compile(r"this module starts its own agent; the run with an agent adds nothing"),
            "test_agent_served.py runs once, in the run without the e2e agent"),
)


def allowed(reason: str) -> bool:
    return any(a.reason.fullmatch(reason) for a in ALLOWED)


def skip_reason(longrepr: object) -> str:
    """The reason of a skipped report (pytest keeps it as (path, line, "Skipped: reason"))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")


class SkipLedger:
    """The skips of one session: recorded from the reports, judged at its end."""

    def __init__(self) -> None:
        self.unexpected: list[tuple[str, str]] = []
        self.expected = 0

    def record(self, nodeid: str, longrepr: object) -> None:
        reason = skip_reason(longrepr)
        if allowed(reason):
            self.expected += 1
        else:
            self.unexpected.append((nodeid, reason))
