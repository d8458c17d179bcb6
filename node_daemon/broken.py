"""Is a pod broken by the CNI race? Upstream's `matchesFilter`, as a pure function with reasons.

A pod is broken when it carries the sidecar annotation and its validation init container last
terminated with the validation exit code (126) and, if configured, the termination message, and
has not since completed. Pure: a pod as Kubernetes JSON in, a verdict out. The controller, the
one-shot `repair` command and `explain` all call `diagnose`, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node_daemon.config import RepairConfig


@dataclass(frozen=True)
class Verdict:
    broken: bool
    reasons: tuple[str, ...]
    """Why: the matching container, or why each candidate did not match."""


def diagnose(pod: dict[str, Any], cfg: RepairConfig) -> Verdict:
    """Upstream's rule, in its order; the first matching init container decides. A pod in an
    excluded namespace is never broken: the plugin never redirects it, so its validation
    failing is not ours to repair."""
    meta = pod.get("metadata") or {}
    if meta.get("namespace") in cfg.exclude_namespaces:
        return Verdict(False, (f"namespace {meta.get('namespace')} is in EXCLUDE_NAMESPACES",))
    annotations = meta.get("annotations") or {}
    if cfg.sidecar_annotation and cfg.sidecar_annotation not in annotations:
        return Verdict(False, (f"no {cfg.sidecar_annotation} annotation (not injected)",))
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    reasons: list[str] = []
    for status in statuses:
        name = status.get("name", "")
        if cfg.init_container_name and name != cfg.init_container_name:
            continue
        current = (status.get("state") or {}).get("terminated")
        if current is not None and (current.get("reason") == "Completed"
                                    or current.get("exitCode", 0) == 0):
            reasons.append(f"init container {name} has since completed")
            continue
        last = (status.get("lastState") or {}).get("terminated")
        if last is None:
            reasons.append(f"init container {name} has not terminated before")
            continue
        mismatch = _mismatch(last, cfg)
        if mismatch:
            reasons.append(f"init container {name} last terminated {mismatch}")
            continue
        return Verdict(True, (
            f"init container {name} last terminated with exit code {last.get('exitCode', 0)}"
            + (f" and message {cfg.init_termination_msg.strip()!r}"
               if cfg.init_termination_msg.strip() else "")
            + " (traffic redirection missing)",
        ))
    if not reasons:
        which = cfg.init_container_name or "any init container"
        reasons.append(f"no status for {which}")
    return Verdict(False, tuple(reasons))


def _mismatch(last: dict[str, Any], cfg: RepairConfig) -> str:
    """Why a last termination does not match the filter; "" when it does."""
    want_msg = cfg.init_termination_msg.strip()
    got_msg = str(last.get("message") or "").strip()
    if want_msg and want_msg != got_msg:
        return f"with message {got_msg!r}, not {want_msg!r}"
    code = last.get("exitCode", 0)
    if cfg.init_exit_code and code != cfg.init_exit_code:
        return f"with exit code {code}, not {cfg.init_exit_code}"
    return ""
