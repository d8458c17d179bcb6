"""Every property in the suite runs the same way twice (tests/hypothesis_profiles.py).

The profile comes from the root conftest, so a `@settings(...)` bound at a module's import takes
the deterministic profile whatever directory its module sits in and whichever module is collected
first; the collection gate refuses a session in which any property would run unseeded.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import hypothesis_profiles

REPO = Path(__file__).resolve().parents[1]


def _test_modules() -> list[Path]:
    return sorted(p for p in (REPO / "tests").rglob("test_*.py")
                  if "hypothesis" in p.read_text())


def _properties() -> list[tuple[str, object]]:
    """Every Hypothesis test defined at module level (or in a class) in tests/."""
    found = []
    for path in _test_modules():
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
        for name, obj in vars(module).items():
            for func in (obj, *vars(obj).values()) if isinstance(obj, type) else (obj,):
                if getattr(func, "is_hypothesis_test", False):
                    found.append((f"{module.__name__}.{name}", func))
    return found


def test_every_property_in_the_suite_is_seeded_whatever_its_directory() -> None:
    """tests/admin/test_cli_sweep.py is collected before tests/hardening/: its settings,
    bound at import, once missed the profile that directory's conftest loaded."""
    properties = _properties()
    assert "tests.admin.test_cli_sweep.test_junk_value_is_one_clear_error" in dict(properties)
    unseeded = {name: reasons for name, func in properties
                if (reasons := hypothesis_profiles.unseeded_reasons(func))}
    assert unseeded == {}


def test_a_property_defined_in_a_test_inherits_the_profile() -> None:
    """Properties that count what their examples reached are defined inside the test; their
    settings are made when it runs, from the profile, unless their module overrides it."""
    assert settings.default.derandomize and settings.default.database is None
    assert settings.default.deadline is None
    assert [o for p in _test_modules() for o in hypothesis_profiles.source_overrides(str(p))
            if "test_hypothesis_profiles.py" not in o] == []

    @settings(max_examples=3)
    @given(st.integers())
    def inner(x: int) -> None:
        pass

    assert hypothesis_profiles.unseeded_reasons(inner) == []


def _collect(tmp_path: Path, source: str, profile: str = "dev") -> subprocess.CompletedProcess:
    """`pytest --collect-only` of one module, with the suite's root conftest as a plugin."""
    (tmp_path / "test_module.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "tests.conftest", "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path),
         str(tmp_path / "test_module.py")],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                       "HYPOTHESIS_PROFILE": profile},
        capture_output=True, text=True, timeout=120, check=False)


HEADER = """
    from hypothesis import given, settings, seed
    from hypothesis import strategies as st
    from hypothesis.database import InMemoryExampleDatabase
"""


def test_the_gate_refuses_a_session_with_an_unseeded_property(tmp_path: Path) -> None:
    proc = _collect(tmp_path, HEADER + """
    @settings(derandomize=False)
    @given(st.integers())
    def test_random(x):
        pass

    @settings(database=InMemoryExampleDatabase())
    @given(st.integers())
    def test_remembers(x):
        pass

    @settings(deadline=200)
    @given(st.integers())
    def test_races_the_clock(x):
        pass
    """)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    for name, why in (("test_random", "derandomize=False and no @seed"),
                      ("test_remembers", "database="), ("test_races_the_clock", "deadline=")):
        assert f"test_module.py::{name}: {why}" in proc.stderr, proc.stderr


def test_the_gate_refuses_an_override_inside_a_test(tmp_path: Path) -> None:
    """A property made when its test runs is read from the module's source."""
    proc = _collect(tmp_path, HEADER + """
    def test_counts():
        @settings(derandomize=False, max_examples=5)
        @given(st.integers())
        def inner(x):
            pass
        inner()
    """)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "test_module.py:7: settings(derandomize=...)" in proc.stderr, proc.stderr


def test_the_gate_accepts_the_profile_and_an_explicit_seed(tmp_path: Path) -> None:
    proc = _collect(tmp_path, HEADER + """
    @settings(max_examples=5)
    @given(st.integers())
    def test_sized(x):
        pass

    @seed(7)
    @given(st.integers())
    def test_seeded(x):
        pass
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tests collected" in proc.stdout


def test_the_exploration_profile_is_random_and_larger(tmp_path: Path) -> None:
    """`HYPOTHESIS_PROFILE=explore` runs the same module (random, database, 10x examples): the
    gate is for the test command's profiles only."""
    proc = _collect(tmp_path, HEADER + """
    @settings(derandomize=False)
    @given(st.integers())
    def test_random(x):
        pass
    """, profile="explore")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_explore_scales_a_sized_property_and_turns_it_random() -> None:
    @settings(max_examples=25)
    @given(st.integers())
    def sized(x: int) -> None:
        pass

    item = type("Item", (), {"obj": sized})()
    assert hypothesis_profiles.unseeded_reasons(sized) == []
    hypothesis_profiles.explore_item(item)
    hypothesis_profiles.explore_item(item)  # a second item of the same parametrized test
    chosen = sized._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    assert chosen.max_examples == 25 * hypothesis_profiles.EXPLORE_FACTOR
    assert not chosen.derandomize
    assert hypothesis_profiles.unseeded_reasons(sized)[0] == "derandomize=False and no @seed"


def test_this_session_runs_with_a_fixed_hash_seed() -> None:
    """Hypothesis's derandomized generation goes through hashed labels: with a random hash seed
    the same property drew different examples in each process (a reach count failed in one run
    in five)."""
    assert sys.flags.hash_randomization == 0
    assert hypothesis_profiles.hash_seed_problem("ci", {}, sys.flags) == ""
    random_seed = type("Flags", (), {"hash_randomization": 1})()
    assert "PYTHONHASHSEED is 'unset'" in hypothesis_profiles.hash_seed_problem(
        "dev", {}, random_seed)
    assert hypothesis_profiles.hash_seed_problem("explore", {}, random_seed) == ""


def test_a_bare_pytest_run_is_started_again_with_the_fixed_seed(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    proc = _collect(tmp_path, f"""
    import sys

    def test_flags():
        pass

    with open({str(seen)!r}, "a") as out:
        out.write(f"{{sys.flags.hash_randomization}}\\n")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seen.read_text() == "0\n"  # collected once, after the restart, with the fixed seed


def test_pytest_started_from_other_code_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Started again, such a run would start the caller again; it is refused instead."""
    (tmp_path / "test_module.py").write_text("def test_x():\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
         "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path),
         str(tmp_path / "test_module.py")],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "run with PYTHONHASHSEED=0" in proc.stderr, proc.stderr


def test_is_pytest_command() -> None:
    assert hypothesis_profiles.is_pytest_command(["python3", "-m", "pytest", "-q"])
    assert hypothesis_profiles.is_pytest_command(["/usr/bin/python3", "/venv/bin/pytest"])
    assert not hypothesis_profiles.is_pytest_command(["python3", "-c", "import pytest"])
    assert not hypothesis_profiles.is_pytest_command(["python3", "mutmut"])
