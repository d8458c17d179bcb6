"""The suite's Hypothesis profiles, loaded once by the root conftest before any test module.

Every property test in the test command is deterministic: the same examples, in the same order,
on every machine and every run. A `@settings(...)` decorator takes its defaults from the profile
loaded when the decorator runs, that is when its module is imported, so the profile must be in
place before the first test module is collected: `tests/conftest.py` loads it at import.
(Loaded from a sub-directory's conftest, it came too late for the modules collected before that
directory, which then ran unseeded and failed by chance.)

- `dev` (default) and `ci` (`.ci/run`): derandomized (the seed is a digest of the test
  function), no example database (a stored failure would make one run differ from the next),
  no deadline and no timing health check (the machine's load must not change a result). `ci`
  runs the profile-sized properties at 10,000 cases, `dev` at 1,000. Both also need a fixed
  hash seed (Hypothesis's generation goes through hashed labels): the test command exports
  PYTHONHASHSEED=0, and a bare `pytest` run without it is started again with it
  (`tests/conftest.py`).
- `explore`, run by hand (`HYPOTHESIS_PROFILE=explore`, docs/reliability.md): random, with the
  example database, and ten times the examples of every property; what it finds is added to
  the test as an `@example(...)`, so the deterministic profiles replay it forever.

`check_item` and `source_overrides` are the gate: the root conftest refuses to run a session in
which any collected Hypothesis test would run unseeded (derandomize off and no `@seed`), with a
database, with a deadline, or with the timing health check on. `check_item` reads the settings a
module-level property will run with; a property defined inside a test (to count what its
examples reached, then assert on the counts) gets its settings only when it runs, so
`source_overrides` reads every collected test module for a `settings(...)` that overrides one
of those, or a profile loaded anywhere but here.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

DETERMINISTIC = ("dev", "ci")
EXPLORE = "explore"
EXPLORE_FACTOR = 10
"""How many times more examples the exploration profile runs per property."""

settings.register_profile("dev", max_examples=1_000, derandomize=True, database=None,
                          deadline=None, print_blob=False,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("ci", settings.get_profile("dev"), max_examples=10_000)
settings.register_profile(EXPLORE, max_examples=10_000, derandomize=False,
                          database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])


def load() -> str:
    """Load the profile HYPOTHESIS_PROFILE names (default `dev`); return its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "dev")
    if name not in (*DETERMINISTIC, EXPLORE):
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}: one of dev, ci, explore")
    settings.load_profile(name)
    return name


def hash_seed_problem(profile: str, environ: Mapping[str, str], flags: Any) -> str:
    """Why this process would not draw the same examples as the test command (empty: it
    would). Hypothesis's derandomized generation still depends on the interpreter's hash seed,
    so the deterministic profiles need a fixed one; `explore` is random anyway."""
    if profile not in DETERMINISTIC or not flags.hash_randomization:
        return ""
    return (f"the {profile!r} Hypothesis profile needs a fixed hash seed, and "
            f"PYTHONHASHSEED is {environ.get('PYTHONHASHSEED', 'unset')!r}")


def is_pytest_command(argv: list[str]) -> bool:
    """Whether `argv` (the interpreter's own, `sys.orig_argv`) started pytest itself, so that
    running it again runs the same tests: `python -m pytest ...` or a `pytest` script."""
    if len(argv) >= 3 and argv[1:3] == ["-m", "pytest"]:
        return True
    return len(argv) >= 2 and os.path.basename(argv[1]) in ("pytest", "py.test")


def unseeded_reasons(test: Callable[..., Any]) -> list[str]:
    """Why the Hypothesis test `test` would not give the same result on every run (empty: it
    would). Looks at the settings the test will run with, whatever set them."""
    chosen = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    seeded = getattr(test, "_hypothesis_internal_use_seed", None) is not None
    reasons = []
    if not (chosen.derandomize or seeded):
        reasons.append("derandomize=False and no @seed")
    if chosen.database is not None:
        reasons.append(f"database={chosen.database!r} (a stored example changes the next run)")
    if chosen.deadline is not None:
        reasons.append(f"deadline={chosen.deadline} (a loaded machine changes the result)")
    if HealthCheck.too_slow not in chosen.suppress_health_check:
        reasons.append("the too_slow health check is on (a loaded machine fails it)")
    return reasons


OVERRIDES = frozenset({"derandomize", "database", "deadline", "suppress_health_check"})
"""The settings that make a run differ from the next (or on a loaded machine)."""


def source_overrides(path: str) -> list[str]:
    """Where the module at `path` overrides the deterministic profile: a `settings(...)` with
    one of OVERRIDES, or a profile registered or loaded (`path:line: what`)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = (node.func.id if isinstance(node.func, ast.Name) else
                node.func.attr if isinstance(node.func, ast.Attribute) else "")
        if name in ("load_profile", "register_profile"):
            found.append(f"{path}:{node.lineno}: settings.{name}(...)")
        elif name == "settings":
            keys = sorted(k.arg for k in node.keywords if k.arg in OVERRIDES)
            if keys:
                found.append(f"{path}:{node.lineno}: settings({', '.join(keys)}=...)")
    return found


def hypothesis_test(item: Any) -> Callable[..., Any] | None:
    """The Hypothesis-wrapped function a collected pytest item runs, or None."""
    func = getattr(item, "obj", None)
    func = getattr(func, "__func__", func)  # a test method: the function it binds
    return func if getattr(func, "is_hypothesis_test", False) else None


def check_item(item: Any, profile: str) -> list[str]:
    """The gate for one collected item under `profile` (see the module docstring)."""
    test = hypothesis_test(item)
    if test is None or profile not in DETERMINISTIC:
        return []
    return unseeded_reasons(test)


def explore_item(item: Any) -> None:
    """Under the exploration profile: the item's property runs random, with the database and
    EXPLORE_FACTOR times its examples (a test's own `max_examples` is scaled too)."""
    test = hypothesis_test(item)
    if test is None or getattr(test, "_explored", False):
        return  # a parametrized test is one function for many items: scale it once
    test._explored = True  # type: ignore[attr-defined]
    chosen = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    examples = chosen.max_examples
    if examples != settings.default.max_examples:  # the test sized itself: scale it
        examples *= EXPLORE_FACTOR
    test._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
        chosen, max_examples=examples, derandomize=False,
        database=settings.default.database)
