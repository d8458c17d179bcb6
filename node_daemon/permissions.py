"""What the agent may ask the API, learned once at start and said in one line.

Each part of the agent that talks to the API names what it will ask (`needs`), and one
SelfSubjectAccessReview per question asks the API server itself (the authority: it answers for
RBAC and any other authorizer, and every authenticated user may ask, through
`system:basic-user`). The answers decide, before anything depends on them:

- the shutdown decision: whether the DaemonSet can be looked up at all (upstream's chart grants
  no `get daemonsets` in sidecar mode, so a 403 there is the chart, not an uninstall), and
  which grants to watch for withdrawal instead (`node_daemon.shutdown`);
- the readiness gate: the taint and the condition halves each run only where their write is
  granted, and say once, at start, how to grant it (`node_daemon.node_gate`);
- the plugin's credential: a TokenRequest for its own ServiceAccount only where that is granted,
  else this pod's token as before (`node_daemon.plugin_token`).

An answer the API did not give (timeout, error) is None: unknown, and each consumer treats it
as its own safe side. No retries: this runs once, before the agent is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from node_daemon.kubeapi import ApiError
from node_daemon.selfapi import AccessQuestion, Timeout

log = logging.getLogger(__name__)

REVIEW_TIMEOUT: Timeout = (3.0, 5.0)
"""(connect, read) seconds of each review at start."""


@dataclass(frozen=True)
class Need:
    """One question and why the agent asks it (said when it is not granted)."""

    question: AccessQuestion
    purpose: str


class Reviewer(Protocol):
    def may(self, question: AccessQuestion, timeout: Timeout) -> bool: ...


@dataclass
class Permissions:
    """The answers: True (granted), False (refused), None (the API did not say)."""

    answers: dict[AccessQuestion, bool | None] = field(default_factory=dict)
    needs: tuple[Need, ...] = ()

    def allows(self, question: AccessQuestion) -> bool | None:
        return self.answers.get(question)

    @property
    def granted(self) -> list[AccessQuestion]:
        return [q for q, a in self.answers.items() if a is True]

    def summary(self) -> str:
        """The one line: what is granted, what is not and what for, what is unknown."""
        granted = ", ".join(str(q) for q in self.granted) or "nothing"
        refused = "; ".join(f"{n.question} ({n.purpose})" for n in self.needs
                            if self.answers.get(n.question) is False)
        unknown = ", ".join(str(n.question) for n in self.needs
                            if self.answers.get(n.question) is None)
        line = f"API permissions, learned at start: granted: {granted}"
        if refused:
            line += f"; not granted: {refused}"
        if unknown:
            line += f"; unknown (no answer): {unknown}"
        return line


UNKNOWN = Permissions()
"""Nothing learned (no API access): every answer None."""


def review(api: Reviewer, needs: Iterable[Need], timeout: Timeout = REVIEW_TIMEOUT,
           ) -> Permissions:
    """Ask each distinct question once; log the summary (info, or warning if anything needed is
    refused or unknown)."""
    needs = tuple(needs)
    answers: dict[AccessQuestion, bool | None] = {}
    for need in needs:
        if need.question in answers:
            continue
        try:
            answers[need.question] = api.may(need.question, timeout)
        except ApiError as exc:
            log.debug("access review %s: %s", need.question, exc.message)
            answers[need.question] = None
    permissions = Permissions(answers, needs)
    complete = all(a is True for a in answers.values())
    log.log(logging.INFO if complete else logging.WARNING, "%s", permissions.summary())
    return permissions
