"""Primary config discovery on real directories, and the inotify wait for a config to appear.

The table follows upstream's install-cni scenarios (calico, minikube, non_json, bad_minikube,
noname/noplugins calico, in both orders) plus libcni's validity rules.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from installer.discovery import check_config, find_primary, first_valid, wait_for_primary
from testbed.nodedirs import NodeDirs
from testbed.wait import wait_for

CALICO = '{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}'
MINIKUBE = '{"cniVersion": "0.3.1", "name": "rkt.kubernetes.io", "type": "bridge"}'
NON_JSON = "this is not json {"
BAD_MINIKUBE = '{"cniVersion": "0.3.1", "name": "rkt.kubernetes.io"}'  # no type
NONAME = '{"cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}'
NOPLUGINS = '{"name": "k8s-pod-network", "cniVersion": "0.3.1", "pugins": [{"type": "x"}]}'
FILES = {"calico.conflist": CALICO, "minikube_cni.conf": MINIKUBE, "non_json.conf": NON_JSON,
         "bad_minikube_cni.conf": BAD_MINIKUBE, "noname_calico.conflist": NONAME,
         "noplugins_calico.conflist": NOPLUGINS}


@pytest.mark.parametrize("order, expected", [
    (["calico.conflist"], "00-calico.conflist"),
    (["calico.conflist", "minikube_cni.conf"], "00-calico.conflist"),
    (["minikube_cni.conf", "calico.conflist"], "00-minikube_cni.conf"),
    (["non_json.conf", "minikube_cni.conf", "calico.conflist"], "01-minikube_cni.conf"),
    (["non_json.conf", "calico.conflist", "minikube_cni.conf"], "01-calico.conflist"),
    (["bad_minikube_cni.conf", "minikube_cni.conf", "calico.conflist"], "01-minikube_cni.conf"),
    (["bad_minikube_cni.conf", "calico.conflist", "minikube_cni.conf"], "01-calico.conflist"),
    (["noname_calico.conflist", "noplugins_calico.conflist", "minikube_cni.conf",
      "calico.conflist"], "02-minikube_cni.conf"),
    (["noname_calico.conflist", "noplugins_calico.conflist", "calico.conflist",
      "minikube_cni.conf"], "02-calico.conflist"),
])
def test_first_valid_file_wins_invalid_ones_are_skipped(node_dirs: NodeDirs, order, expected,
                                                         caplog):
    for i, name in enumerate(order):
        node_dirs.put(f"0{i}-{name}", text=FILES[name])
    caplog.set_level(logging.WARNING)
    assert first_valid(node_dirs.net_dir) == expected
    skipped = [r.getMessage() for r in caplog.records if "skipping CNI config" in r.getMessage()]
    assert len(skipped) == int(expected[1])  # each earlier invalid file is logged with a reason


@pytest.mark.parametrize("name, text, reason", [
    ("a.conf", NON_JSON, "not valid JSON"),
    ("a.conf", BAD_MINIKUBE, "no plugin 'type'"),
    ("a.conf", CALICO, "no plugin 'type'"),  # a list saved as .conf
    ("a.conflist", NONAME, "no network 'name'"),
    ("a.conflist", NOPLUGINS, "no plugin configs found"),
    ("a.conflist", '{"name": "n", "plugins": []}', "no plugins in list"),
    ("a.conflist", '{"name": "n", "plugins": [{"type": ""}]}', "no plugin 'type'"),
    ("a.conflist", '{"name": "n", "cniVersion": 1, "plugins": [{"type": "a"}]}', "cniVersion"),
    ("a.conflist", '{"name": "n", "disableCheck": "maybe", "plugins": [{"type": "a"}]}',
     "disableCheck"),
    ("a.conf", "", "not valid JSON"),
])
def test_libcni_validity(node_dirs: NodeDirs, name: str, text: str, reason: str):
    assert reason in (check_config(node_dirs.put(name, text=text)) or "")


def test_json_files_count_and_directories_do_not(node_dirs: NodeDirs):
    (node_dirs.net_dir / "00-dir.conflist").mkdir()
    node_dirs.put("05-flannel.json", "flannel.json")
    node_dirs.put("10-calico.conflist", text=CALICO)
    node_dirs.put("01-notes.txt", text=MINIKUBE)
    assert first_valid(node_dirs.net_dir) == "05-flannel.json"


def test_inlined_plugins_make_a_list_without_plugins_valid(node_dirs: NodeDirs):
    node_dirs.put("10-inline.conflist", text='{"name": "inline", "cniVersion": "1.0.0"}')
    assert check_config(node_dirs.net_dir / "10-inline.conflist") == "no plugin configs found"
    (node_dirs.net_dir / "inline").mkdir()
    (node_dirs.net_dir / "inline" / "10-bridge.conf").write_text('{"type": "bridge"}')
    assert check_config(node_dirs.net_dir / "10-inline.conflist") is None


def test_our_own_standalone_file_is_not_a_primary(node_dirs: NodeDirs):
    node_dirs.put("00-istio.conf", text='{"cniVersion": "0.3.1", "type": "istio-cni"}')
    node_dirs.put("10-calico.conflist", text=CALICO)
    assert first_valid(node_dirs.net_dir) == "10-calico.conflist"


@pytest.mark.parametrize("present, name, expected", [
    ("list.conflist", "list.conflist", "list.conflist"),
    ("list.conflist", "list.conf", "list.conflist"),  # .conf -> .conflist twin
    ("bridge.conf", "bridge.conflist", "bridge.conf"),  # .conflist -> .conf twin
    ("undetectable.file", "undetectable.file", "undetectable.file"),  # any extension if named
    ("list.conflist", "never-created.conf", None),
])
def test_explicit_name_and_twin_fallback(node_dirs: NodeDirs, present, name, expected):
    node_dirs.put(present, text=CALICO)
    node_dirs.put("00-first.conflist", text=CALICO)  # ignored when a name is given
    assert find_primary(node_dirs.net_dir, name) == expected


def _waiter(directory: Path, name: str, stop: threading.Event, out: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(
        wait_for_primary(directory, name, stop, timeout=30)), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("name, written, expected", [
    ("", "10-calico.conflist", "10-calico.conflist"),
    ("missing_initially.conf", "missing_initially.conflist", "missing_initially.conflist"),
])
def test_waits_for_a_config_that_appears_later(node_dirs: NodeDirs, caplog, name, written,
                                               expected):
    caplog.set_level(logging.INFO)
    node_dirs.put("00-broken.conf", text=NON_JSON)  # an invalid file does not end the wait
    out: list = []
    thread = _waiter(node_dirs.net_dir, name, threading.Event(), out)
    wait_for(lambda: any("waiting for a CNI config" in r.getMessage() for r in caplog.records),
             what="the waiter to start waiting")
    tmp = node_dirs.root / "staging"
    tmp.write_text(CALICO)
    tmp.rename(node_dirs.net_dir / written)  # moved into place, as aws-node does
    thread.join(timeout=10)
    assert out == [expected]


def test_wait_ends_on_stop_and_on_timeout(node_dirs: NodeDirs):
    stop = threading.Event()
    stop.set()
    assert wait_for_primary(node_dirs.net_dir, "", stop) is None
    assert wait_for_primary(node_dirs.net_dir, "", threading.Event(), timeout=0.05) is None


def test_missing_net_dir_is_a_clear_error(node_dirs: NodeDirs):
    with pytest.raises(FileNotFoundError, match="MOUNTED_CNI_NET_DIR"):
        wait_for_primary(node_dirs.root / "nope", "", threading.Event(), timeout=1)
