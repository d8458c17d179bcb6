"""Our choice of primary config is libcni's, for every input: Go's encoding/json acceptance
rules and libcni's listing, ordering and struct decoding, as a table of files.

Each row puts one file at `05-...` in front of a valid `10-fallback.conflist`: when Go would
load it, it is the primary; when Go would not, discovery skips it (logged) and the fallback is
the primary. Nothing in net.d may raise out of discovery or install.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from installer import Installer, InstallError, discovery, gojson
from installer.gojson import GoJSONError, loads
from testbed.nodedirs import NodeDirs, make_node_dirs

FALLBACK = '{"cniVersion":"1.0.0","name":"fallback","plugins":[{"type":"bridge"}]}'


def conflist(plugins: str = '{"type":"calico"}', extra: str = "") -> bytes:
    return f'{{"cniVersion":"1.0.0","name":"k8s",{extra}"plugins":[{plugins}]}}'.encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (file name, bytes, loaded by libcni?)
TABLE = {
    "plain conflist": ("05-net.conflist", conflist(), True),
    # invalid UTF-8 inside a string: Go decodes it (U+FFFD); Python's json refuses the file
    "invalid UTF-8 in a string": ("05-net.conflist",
                                  conflist(extra='"note":"cafX",').replace(b"X", b"\xe9\xff"),
                                  True),
    "invalid UTF-8 outside a string": ("05-net.conflist", conflist() + b"\xff", False),
    # numbers: libcni decodes into interface{}, i.e. float64
    "a number beyond float64": ("05-net.conflist", conflist(extra='"mtu":1e400,'), False),
    "a negative number beyond float64": ("05-net.conflist",
                                         conflist(extra='"mtu":-1.8e308,'), False),
    "a 400-digit integer": ("05-net.conflist", conflist(extra=f'"mtu":{"9" * 400},'), False),
    "an underflowing number is 0": ("05-net.conflist", conflist(extra='"mtu":1e-400,'), True),
    "2**64 is just a float": ("05-net.conflist", conflist(extra=f'"mtu":{2**64},'), True),
    "NaN": ("05-net.conflist", conflist(extra='"mtu":NaN,'), False),
    "a leading zero": ("05-net.conflist", conflist(extra='"mtu":01,'), False),
    # duplicate keys: the last wins
    "duplicate plugins, the last empty": ("05-net.conflist",
                                          conflist(extra='"plugins":[{"type":"x"}],', plugins=""),
                                          False),
    "duplicate plugins, the last valid": ("05-net.conflist",
                                          conflist(extra='"plugins":[],'), True),
    "duplicate name, the last a number": ("05-net.conflist",
                                          conflist() [:-1] + b',"name":5}', False),
    # nesting: Go allows 10000 levels
    "3000 levels deep": ("05-net.conflist", conflist(extra=f'"x":{nested(3000)},'), True),
    "10000 levels deep": ("05-net.conflist",
                          conflist(extra=f'"x":{nested(10000 - 1)},'), True),
    "10001 levels deep": ("05-net.conflist", conflist(extra=f'"x":{nested(10000)},'), False),
    "100,000 [": ("05-junk.json", b"[" * 100_000, False),
    # framing
    "a UTF-8 BOM": ("05-net.conflist", b"\xef\xbb\xbf" + conflist(), False),
    "trailing data": ("05-net.conflist", conflist() + b" {}", False),
    "trailing whitespace": ("05-net.conflist", conflist() + b" \n\t\r", True),
    "empty": ("05-net.conflist", b"", False),
    # libcni's decoding into types.PluginConf: fields match case-insensitively, types checked
    "a plugin 'Type' (Go matches fields case-insensitively)": (
        "05-net.conflist", conflist('{"Type":"calico"}'), True),
    "a plugin type that is a number": ("05-net.conflist", conflist('{"type":5}'), False),
    "an ipam type that is a number": ("05-net.conflist",
                                      conflist('{"type":"calico","ipam":{"type":1}}'), False),
    "capabilities that are not booleans": (
        "05-net.conflist", conflist('{"type":"calico","capabilities":{"portMappings":"y"}}'),
        False),
    "dns nameservers that are not strings": (
        "05-net.conflist", conflist('{"type":"calico","dns":{"nameservers":[1]}}'), False),
    "a null name is no name for a plugin": ("05-net.conflist",
                                            conflist('{"type":"calico","name":null}'), True),
    "a .conf whose last TYPE is empty": ("05-net.conf", b'{"type":"bridge","TYPE":""}', False),
    "a .conf whose last type is set": ("05-net.conf", b'{"TYPE":"","type":"bridge"}', True),
    # cniVersions: libcni compares every entry (and cniVersion) with its own version
    "cniVersions that parse": ("05-net.conflist", conflist(extra='"cniVersions":["0.4.0","1"],'),
                               True),
    "a cniVersions entry that does not parse": (
        "05-net.conflist", conflist(extra='"cniVersions":["1.0.0","1.x"],'), False),
    "a cniVersion that does not parse, next to cniVersions": (
        "05-net.conflist", conflist(extra='"cniVersions":["1.0.0"],').replace(
            b'"cniVersion":"1.0.0"', b'"cniVersion":"1.0.0.0"'), False),
    # listing: Go's filepath.Ext, byte order
    "a file named just .conf": (".conf", b'{"name":"n","type":"bridge"}', True),
    "a .conflist.bak": ("05-net.conflist.bak", conflist(), False),
    "an upper-case extension": ("05-net.CONFLIST", conflist(), False),
}


@pytest.mark.parametrize("case", sorted(TABLE))
def test_the_primary_is_the_file_libcni_loads(node_dirs: NodeDirs, case: str):
    name, data, loaded = TABLE[case]
    node_dirs.put("10-fallback.conflist", text=FALLBACK)
    (node_dirs.net_dir / name).write_bytes(data)
    expected = name if loaded else "10-fallback.conflist"
    assert discovery.find_primary(node_dirs.net_dir) == expected
    assert (discovery.check_config(node_dirs.net_dir / name) is None) == loaded


def test_files_sort_by_bytes_as_go_compares_strings(node_dirs: NodeDirs):
    for name in ("b.conflist", "a\u00e9.conflist", "A.conflist", "a.conflist"):
        node_dirs.put(name, text=FALLBACK)
    assert discovery.config_files(node_dirs.net_dir) == [
        "A.conflist", "a.conflist", "a\u00e9.conflist", "b.conflist"]


def test_what_cannot_be_read_as_a_file_is_skipped_without_blocking(node_dirs: NodeDirs):
    net = node_dirs.net_dir
    os.mkfifo(net / "01-fifo.conflist")  # reading a FIFO would block until a writer comes
    (net / "02-dir.d").mkdir()
    os.symlink("02-dir.d", net / "02-link-to-dir.conflist")
    os.symlink("missing", net / "03-dangling.conflist")
    (net / "04-huge.conflist").write_bytes(conflist(extra=f'"pad":"{"x" * (1 << 20)}",'))
    node_dirs.put("10-fallback.conflist", text=FALLBACK)
    assert discovery.config_files(net)[:4] == ["01-fifo.conflist", "02-link-to-dir.conflist",
                                               "03-dangling.conflist", "04-huge.conflist"]
    done = threading.Event()
    found: list[str | None] = []
    thread = threading.Thread(target=lambda: (found.append(discovery.find_primary(net)),
                                              done.set()), daemon=True)
    thread.start()
    assert done.wait(10), "discovery blocked on a FIFO"
    assert found == ["10-fallback.conflist"]


def test_a_primary_3000_levels_deep_gets_our_entry_and_comes_back(node_dirs: NodeDirs):
    path = node_dirs.put("10-deep.conflist",
                         text=conflist(extra=f'"x":{nested(3000)},').decode())
    original = path.read_bytes()
    installer = Installer(node_dirs.config())
    installer.install()
    assert loads(path.read_text())["plugins"][-1]["type"] == "istio-cni"
    installer.uninstall()
    assert path.read_bytes() == original


def test_a_primary_with_invalid_utf8_is_edited_and_restored_byte_for_byte(node_dirs: NodeDirs):
    path = node_dirs.net_dir / "10-net.conflist"
    path.write_bytes(conflist(extra='"note":"x",').replace(b'"x"', b'"\xff\xfe"'))
    original = path.read_bytes()
    installer = Installer(node_dirs.config())
    installer.install()
    edited = path.read_bytes()
    assert b'"\xff\xfe"' in edited and b'"istio-cni"' in edited
    installer.uninstall()
    assert path.read_bytes() == original


def test_go_json_matches_python_json_on_ordinary_documents():
    doc = {"a": [1, -2.5, {"b": None, "c": True}], "d": "\u00e9\n\"", "e": {}}
    assert json.loads(json.dumps(loads(json.dumps(doc)), default=float)) == doc
    for bad in ("[1,]", '{"a":1,}', "{'a':1}", "[1 2]", '"\\x"', "tru", "-", "1.", ".5"):
        with pytest.raises(GoJSONError):
            loads(bad)


_JUNK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=20)
_PLUGIN_KEYS = st.sampled_from(["type", "Type", "name", "ipam", "dns", "capabilities",
                                "runtimeConfig", "args", "mtu", "cniVersion"]) | st.text(max_size=6)
_PLUGINS = st.lists(
    st.builds(lambda t, extra: {"type": t, **extra}, st.text(min_size=1, max_size=8),
              st.dictionaries(_PLUGIN_KEYS, _JUNK_VALUES, max_size=3)), min_size=1, max_size=3)
_CONFLISTS = st.builds(
    lambda version, plugins, extra: json.dumps({"cniVersion": version, "name": "j",
                                                **extra, "plugins": plugins}),
    st.sampled_from(["1.0.0", "0.4.0", "0.3.1", "1.1.0"]) | st.text(max_size=5), _PLUGINS,
    st.one_of(st.just({}), st.dictionaries(
        st.sampled_from(["cniVersions", "disableCheck", "disableGC", "x"]), _JUNK_VALUES,
        max_size=2)))
"""Conflists libcni may or may not load: any plugin type and extra fields, junk inside."""


def _cut(text: str) -> st.SearchStrategy[str]:
    return st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i])


JUNK = st.sampled_from(["conflist"] * 3 + ["cut conflist", "bytes", "json-ish text"]
                       ).flatmap(lambda kind: {
    "conflist": _CONFLISTS,
    "cut conflist": _CONFLISTS.flatmap(_cut),
    "bytes": st.binary(max_size=2000),
    "json-ish text": st.text(alphabet='[]{}",:0123456789eE.-+ \\utrufalsn\xff', max_size=2000),
}[kind])
"""What a file in net.d may hold; half of it a conflist that libcni loads, so that install
runs on the junk as the primary as often as it skips it."""


def test_nothing_in_net_d_makes_discovery_or_install_raise(tmp_path_factory):
    """Install and uninstall with junk at 05-junk.conflist in front of a valid fallback: the
    primary is the junk when libcni would load it, the fallback otherwise; install edits the
    primary (our entry last) or refuses with a clear InstallError having changed nothing; after
    uninstall net.d holds exactly the bytes it held before. (Before, discovery skipped the junk
    in all 200 examples: install never ran on it, and nothing was checked after uninstall.)"""
    counts: Counter = Counter()

    @settings(max_examples=200)
    @given(junk=JUNK)
    def cases(junk: str | bytes) -> None:
        dirs = make_node_dirs(tmp_path_factory.mktemp("node"))
        data = junk if isinstance(junk, bytes) else junk.encode("utf-8", "surrogateescape")
        (dirs.net_dir / "05-junk.conflist").write_bytes(data)
        dirs.put("10-fallback.conflist", text=FALLBACK)
        before = {p.name: p.read_bytes() for p in dirs.net_dir.iterdir()}
        loaded = discovery.check_config(dirs.net_dir / "05-junk.conflist") is None
        found = discovery.find_primary(dirs.net_dir)
        assert found == ("05-junk.conflist" if loaded else "10-fallback.conflist")
        installer = Installer(dirs.config())
        try:
            installer.install(timeout=5)
        except InstallError as exc:
            assert str(exc).strip(), "a refusal says why"
            assert {p.name: p.read_bytes() for p in dirs.net_dir.iterdir()} == before
            outcome = "refused"
        else:
            edited = loads(gojson.text_of((dirs.net_dir / found).read_bytes()))
            assert edited["plugins"][-1]["type"] == "istio-cni", edited
            outcome = "installed"
        installer.uninstall()
        assert {p.name: p.read_bytes() for p in dirs.net_dir.iterdir()} == before
        primary = "junk" if loaded else "fallback"
        event(f"primary: {primary}, {outcome}")
        counts[primary, outcome] += 1

    cases()
    total = sum(counts.values())
    assert counts["junk", "installed"] >= total // 5, counts
    assert counts["fallback", "installed"] >= total // 5, counts
