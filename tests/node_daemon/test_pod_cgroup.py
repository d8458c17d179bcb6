"""A process's pod from its `/proc/PID/cgroup`: each driver's spelling, and what is no pod."""

from __future__ import annotations

import os

import pytest

from node_daemon.pod_cgroup import CGROUP_READ_LIMIT, pod_uids, read_pod_uids

UID = "2c48913c-b29f-11e7-9350-020968147796"
CONTAINER = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"


@pytest.mark.parametrize("text", [
    f"0::/kubepods/burstable/pod{UID}/{CONTAINER}",  # cgroupfs driver
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}"
    f".slice/cri-containerd-{CONTAINER}.scope",  # systemd driver
    f"0::/system.slice/docker-{CONTAINER}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-"
    f"kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
    f"cri-containerd-{CONTAINER}.scope",  # a node that is itself a container (kind)
    f"0::/../../kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-"
    f"{CONTAINER}.scope",  # read from inside another cgroup namespace
    f"1:name=systemd:/kubepods-besteffort-pod{UID.replace('-', '_')}.slice:cri-containerd:"
    f"{CONTAINER}",  # containerd's slice:prefix:id form
    f"12:memory:/kubepods/pod{UID.upper()}/{CONTAINER}\n11:cpu:/kubepods/pod{UID}/{CONTAINER}",
    f"0::/kubepods/pod{UID.replace('-', '')}/{CONTAINER}",  # no separators at all
])
def test_each_spelling_of_a_pods_cgroup_names_its_uid(text):
    assert pod_uids(text) == {UID}


@pytest.mark.parametrize("text", [
    "0::/",  # the host's (or a test's) processes
    "0::/system.slice/containerd.service",
    f"0::/kubepods/besteffort/{CONTAINER}",  # kubepods, but no pod in the path
    f"0::/kubepods/xpod{UID}/{CONTAINER}",  # "pod" inside a longer word
    f"0::/kubepods/pod{UID}0/{CONTAINER}",  # one digit too many
    f"0::/kubepods/pod{UID[:-1]}/{CONTAINER}",  # one too few
    f"/kubepods/pod{UID}/{CONTAINER}",  # not an ID:CONTROLLERS:PATH line
    "",
])
def test_what_names_no_pod(text):
    assert pod_uids(text) == frozenset()


def test_a_process_naming_two_pods_names_both():
    other = "aaaabbbb-cccc-dddd-eeee-ffff00001111"
    text = f"1:cpu:/kubepods/pod{UID}/{CONTAINER}\n0::/kubepods/pod{other}/{CONTAINER}"
    assert pod_uids(text) == {UID, other}


def _proc_dir(tmp_path, make) -> int:
    make(tmp_path / "cgroup")
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_text(f"0::/kubepods/pod{UID}/{CONTAINER}\n"), {UID}),
    (lambda p: os.mkfifo(p), None),  # never blocks on a FIFO nobody writes to
    (lambda p: p.write_bytes(b"0::/" + b"a" * CGROUP_READ_LIMIT), None),  # longer than any
    (lambda p: p.symlink_to("/proc/self/cgroup"), None),  # not followed
    (lambda p: None, None),  # gone
])
def test_reading_a_processs_cgroup_is_bounded(tmp_path, make, expected):
    proc_dir = _proc_dir(tmp_path, make)
    try:
        assert read_pod_uids(proc_dir) == expected
    finally:
        os.close(proc_dir)
