"""prevResult passthrough, re-encoded at the config's version like libcni (pure tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni.errors import DecodingFailure
from cni.results import encode_result

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cni-samples"
PREV_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "ce:5c:5e:52:43:3c", "sandbox": "/var/run/netns/p",
                    "socketPath": "/x", "extra": 1}],
    "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 0},
            {"address": "fd00::2/64", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1", "mtu": 1400}],
    "dns": {"nameservers": ["10.96.0.10"]},
    "unknown": "dropped",
}


def test_no_prev_result_gives_empty_result_of_the_config_version():
    assert encode_result(None, "1.0.0") == {"cniVersion": "1.0.0", "dns": {}}
    assert encode_result(None, "0.3.1") == {"cniVersion": "0.3.1", "dns": {}}


def test_1_0_0_drops_unknown_and_1_1_only_fields_keeps_struct_order():
    out = encode_result(PREV_100, "1.0.0")
    assert list(out) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    assert out["interfaces"] == [{"name": "eth0", "mac": "ce:5c:5e:52:43:3c",
                                  "sandbox": "/var/run/netns/p"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}]
    assert out["ips"][0] == {"interface": 0, "address": "10.99.0.2/24", "gateway": "10.99.0.1"}


def test_1_1_0_keeps_its_fields():
    out = encode_result(PREV_100, "1.1.0")
    assert out["interfaces"][0]["socketPath"] == "/x"
    assert out["routes"][0]["mtu"] == 1400


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_0_x_results_carry_ip_version(version):
    out = encode_result(PREV_100, version)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["cniVersion"] == version


@pytest.mark.parametrize("sample", ["plain-ADD.json", "ctr-ADD.json", "caps-ADD.json"])
def test_recorded_clients_prev_result_round_trips(sample):
    stdin = json.loads((SAMPLES / sample).read_text())["stdin"]
    out = encode_result(stdin["prevResult"], stdin["cniVersion"])
    prev = dict(stdin["prevResult"])
    prev.setdefault("dns", {})
    assert out == prev


@pytest.mark.parametrize(
    "bad",
    [{"interfaces": "eth0"}, {"ips": [{"address": "10.0.0.1"}]}, {"routes": [{"gw": "x"}]},
     {"ips": ["x"]}, {"dns": []}],
)
def test_malformed_prev_result_is_a_decoding_failure(bad):
    with pytest.raises(DecodingFailure):
        encode_result(bad, "1.0.0")
