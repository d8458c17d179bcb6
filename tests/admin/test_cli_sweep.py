"""Every option of every `istio-cni-node` command, given junk: one clear line, never a traceback.

A property over the whole CLI, read from click's own command table, so an option added later is
swept too (and must be classified below). For each option and each junk value:

- no traceback, and no exception but click's own exit;
- an option whose values are checked (`CHECKED`) exits non-zero with nothing on stdout;
- a free-form option (`FREE`: a path or a name any text can be) may be accepted, but if the
  command fails, stdout is still empty.

Everything runs against a fake node under tmp_path (`testbed.nodedirs`), from a fresh working
directory per example, with junk paths kept relative, so no junk value can touch the host.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from admin.cli import cli
from testbed.nodedirs import NodeDirs, make_node_dirs

# (command, parameter name): options whose every value is checked before anything is done
CHECKED: set[tuple[str, str]] = {
    *(("rules", p.name) for p in cli.commands["rules"].params
      if isinstance(p, click.Option) and not p.is_flag and p.name),
    ("explain", "target"), ("explain", "pod_file"), ("explain", "output"),
    ("explain", "kubeconfig"),
    ("repair", "node"), ("repair", "mode"), ("repair", "output"), ("repair", "kubeconfig"),
    ("drift", "output"), ("drift", "kubeconfig"),
    ("install", "CHAINED_CNI_PLUGIN"), ("install", "KUBECONFIG_MODE"),
    ("install", "PLUGIN_LOG_LEVEL"), ("install", "wait_timeout"),
    ("install", "CNI_BIN_SOURCE_DIR"), ("install", "MOUNTED_CNI_NET_DIR"),
    ("uninstall", "CHAINED_CNI_PLUGIN"), ("uninstall", "KUBECONFIG_MODE"),
    ("uninstall", "PLUGIN_LOG_LEVEL"), ("uninstall", "MOUNTED_CNI_NET_DIR"),
    ("uninstall", "CNI_BIN_TARGET_DIRS"),
    ("run", "log_level"),
}
# options any text is a valid value of (a directory to create, a name, a list of names)
FREE: set[tuple[str, str]] = {
    ("install", "CNI_CONF_NAME"), ("install", "CNI_AGENT_RUN_DIR"),
    ("install", "CNI_BIN_TARGET_DIRS"), ("install", "EXCLUDE_NAMESPACES"),
    ("uninstall", "CNI_CONF_NAME"), ("uninstall", "CNI_AGENT_RUN_DIR"),
    ("uninstall", "CNI_BIN_SOURCE_DIR"), ("uninstall", "EXCLUDE_NAMESPACES"),
    ("version", "bin_dirs"),
}
# what each command needs besides the option under test to get past its own usage checks
BASE_ARGS: dict[str, list[str]] = {
    "explain": ["--pod-file", "pod.json"],
    "install": ["--wait-timeout", "0.2"],
}
MARKS = (";", "\x00", "$(id)", " -j ACCEPT", "\n", "\udcff", "*,*", "é", "\t", "/", "#")
_SIDE = st.text(st.characters(exclude_categories=("Zs", "Cc")), min_size=1, max_size=12)
JUNK = st.builds(lambda a, mark, b: a + mark + b, _SIDE, st.sampled_from(MARKS), _SIDE)
"""Text with something no checked option accepts in the middle: a shell or iptables
metacharacter, a control character, a NUL, a lone surrogate (an argv byte that is not UTF-8),
non-ASCII, a slash."""


def _params() -> list[tuple[str, click.Parameter]]:
    """Every parameter that takes a value (hidden ones too: they are still accepted)."""
    return [(name, p) for name, command in sorted(cli.commands.items())
            for p in command.params
            if p.name and not (isinstance(p, click.Option) and p.is_flag)]


PARAMS = _params()


def test_every_option_is_classified() -> None:
    """A new option must say whether its values are checked or free-form."""
    names = {(command, p.name) for command, p in PARAMS}
    assert names == CHECKED | FREE, (sorted(names - CHECKED - FREE),
                                     sorted((CHECKED | FREE) - names))
    assert not CHECKED & FREE


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeDirs:
    """A fake node with a primary config, so that `install` gets past its wait and uses the
    option's value (without one, every install stopped at "no valid CNI config")."""
    dirs = make_node_dirs(tmp_path_factory.mktemp("node"))
    dirs.put("10-calico.conflist", "calico.conflist")
    return dirs


def _env(node: NodeDirs) -> dict[str, str]:
    return node.env(KUBECONFIG=str(node.root / "no-such-kubeconfig"), REPAIR_NODE_NAME="node-a",
                    HOST_PROC="/proc")


def invoke(node: NodeDirs, args: list[str]) -> Result:
    """Run the CLI from a fresh working directory under the fake node's root."""
    cwd = Path(tempfile.mkdtemp(dir=node.root))
    (cwd / "pod.json").write_text((Path(__file__).resolve().parents[2] / "companions"
                                   / "workloads" / "meshed-pod.json").read_text())
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args, env=_env(node))
    finally:
        os.chdir(before)


def _args(command: str, param: click.Parameter, value: str) -> list[str]:
    base = list(BASE_ARGS.get(command, []))
    if isinstance(param, click.Argument):
        return [command, value]
    if param.name == "pod_file":
        base = []
    if param.name == "kubeconfig" and command == "explain":
        base = ["shop/cart"]
    return [command, *base, param.opts[0], value]


@pytest.mark.parametrize(("command", "param"), [(c, p) for c, p in PARAMS
                                               if (c, p.name) in FREE and c != "version"],
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_a_free_option_reaches_the_command(node: NodeDirs, command: str,
                                           param: click.Parameter) -> None:
    """The sweep's free-form values get used: with a plain value, the command runs to the end
    (exit 0), so the junk values are written into configs and paths, not stopped before."""
    value = {"CNI_CONF_NAME": "10-calico.conflist",  # these two must name what is there
             "CNI_BIN_TARGET_DIRS": str(node.bin_dst)}.get(param.name, "junk-plain")
    res = invoke(node, _args(command, param, value))
    assert res.exit_code == 0, res.output


def assert_clean(res: Result, must_fail: bool) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    if must_fail:
        assert res.exit_code != 0, res.output
    if res.exit_code != 0:
        assert res.stdout == "", res.stdout
        assert res.stderr.strip(), "an error must say what is wrong"


@pytest.mark.parametrize(("command", "param"), PARAMS,
                         ids=[f"{c}:{p.name}" for c, p in PARAMS])
@settings(max_examples=25)
@given(junk=JUNK)
def test_junk_value_is_one_clear_error(node: NodeDirs, command: str, param: click.Parameter,
                                       junk: str) -> None:
    must_fail = (command, param.name) in CHECKED
    if not must_fail:  # a free-form path stays inside the example's working directory
        junk = "junk-" + junk.replace("/", "_")
    assert_clean(invoke(node, _args(command, param, junk)), must_fail)


# --- junk files for the file options ----------------------------------------------------------

def _fifo_with_a_writer_that_hangs_up(root: Path) -> str:
    """A FIFO whose writer connects and closes at once: the reader sees an empty file."""
    import threading

    path = root / "fifo"
    if not path.exists():
        os.mkfifo(path)

    def write() -> None:
        with open(path, "wb"):
            pass

    threading.Thread(target=write, daemon=True).start()
    return str(path)


def _file(root: Path, name: str, data: bytes) -> str:
    path = root / name
    path.write_bytes(data)
    return str(path)


JUNK_FILES = {
    "fifo": _fifo_with_a_writer_that_hangs_up,
    "directory": lambda root: str(root),
    "dev-zero": lambda root: "/dev/zero",
    "dev-null": lambda root: "/dev/null",
    "empty": lambda root: _file(root, "empty", b""),
    "invalid-utf8": lambda root: _file(root, "bad-utf8", b'{"kind": "Pod\xff"}'),
    "deep-json": lambda root: _file(root, "deep.json", b"[" * 100_000),
    "deep-yaml": lambda root: _file(root, "deep.yaml", b"a: " + b"[" * 100_000),
    "not-an-object": lambda root: _file(root, "list.json", b"[1, 2]"),
    "wrong-kind": lambda root: _file(root, "kind.json", b'{"kind": "Deployment"}'),
    "empty-object": lambda root: _file(root, "obj.json", b"{}"),
    "loop": lambda root: _loop(root),
}


def _loop(root: Path) -> str:
    path = root / "loop"
    if not path.is_symlink():
        path.symlink_to(path.name)
    return str(path)


FILE_OPTIONS = [
    (["explain", "--pod-file"], []),
    (["explain", "shop/cart", "--kubeconfig"], []),
    (["repair", "--dry-run", "--kubeconfig"], []),
    (["drift", "--dry-run", "--kubeconfig"], []),
]


@pytest.mark.parametrize("kind", sorted(JUNK_FILES))
@pytest.mark.parametrize(("args", "rest"), FILE_OPTIONS, ids=lambda v: " ".join(v) or "-")
def test_junk_file_is_one_clear_error(node: NodeDirs, tmp_path: Path, args: list[str],
                                      rest: list[str], kind: str) -> None:
    res = invoke(node, [*args, JUNK_FILES[kind](tmp_path), *rest])
    assert_clean(res, must_fail=True)
    assert len(res.stderr.strip().splitlines()) in (1, 4), res.stderr  # a line, or click usage


# --- help matches behaviour --------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_says_what_the_command_does_and_every_default(command: str) -> None:
    cmd = cli.commands[command]
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0 and res.stderr == ""
    summary = " ".join((cmd.help or "").split("\n\n")[0].split())
    assert summary and summary[:40] in " ".join(res.stdout.split())
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.is_flag or param.hidden:
            continue
        text = param.help or ""
        assert "default" in text.lower() or param.show_default, (command, param.name)
