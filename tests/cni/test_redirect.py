"""Annotations → typed redirect spec, with upstream's defaults and quirks (pure tier)."""

from __future__ import annotations

import pytest

from cni.errors import InvalidAnnotation
from cni.podinfo import extract_pod_info
from cni.redirect import redirect_from_pod, to_iptables_config

STATUS = {"sidecar.istio.io/status": "{}"}


def info(annotations=None, env=None, sc=None):
    proxy = {"name": "istio-proxy", "args": ["proxy", "sidecar"],
             "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    if sc is not None:
        proxy["securityContext"] = sc
    return extract_pod_info({"metadata": {"name": "p", "namespace": "n",
                                          "annotations": {**STATUS, **(annotations or {})}},
                             "spec": {"containers": [proxy]}})


def test_defaults_match_upstream():
    r = redirect_from_pod(info())
    assert r.mode == "REDIRECT"
    assert (r.proxy_uid, r.proxy_gid) == (1337, 1337)
    assert r.include_cidrs == "*" and r.exclude_cidrs == ()
    assert r.include_inbound_ports == "*"
    assert r.exclude_inbound_ports == (15020, 15021, 15090)
    assert r.exclude_outbound_ports == (15020,)
    assert r.include_outbound_ports == ()
    assert not (r.dns_capture or r.dual_stack or r.drop_invalid)


def test_inbound_excludes_always_get_status_ports_deduplicated_in_order():
    r = redirect_from_pod(info({"traffic.sidecar.istio.io/excludeInboundPorts": "15021, 8080"}))
    assert r.exclude_inbound_ports == (15021, 8080, 15020, 15090)


def test_outbound_exclude_annotation_replaces_the_default():
    r = redirect_from_pod(info({"traffic.sidecar.istio.io/excludeOutboundPorts": "9000"}))
    assert r.exclude_outbound_ports == (9000,)


def test_empty_include_inbound_disables_inbound_capture():
    cfg = to_iptables_config(redirect_from_pod(
        info({"traffic.sidecar.istio.io/includeInboundPorts": ""})))
    assert cfg.inbound_ports_include == ()


@pytest.mark.parametrize(("sc", "uid", "gid"), [
    (None, 1337, 1337), ({"runAsUser": 0, "runAsGroup": 0}, 1337, 1337),
    ({"runAsUser": 1500}, 1500, 1337), ({"runAsUser": 0, "runAsGroup": 2000}, 1337, 2000),
])
def test_proxy_identity(sc, uid, gid):
    r = redirect_from_pod(info(sc=sc))
    assert (r.proxy_uid, r.proxy_gid) == (uid, gid)


def test_env_switches_and_dns_sets_capture_all():
    r = redirect_from_pod(info(env={"ISTIO_META_DNS_CAPTURE": "true", "INVALID_DROP": "1",
                                    "ISTIO_DUAL_STACK": "maybe"}))
    assert r.dns_capture and r.drop_invalid and not r.dual_stack
    cfg = to_iptables_config(r)
    assert cfg.redirect_dns and cfg.capture_all_dns


def test_reroute_key_preferred_over_deprecated_kubevirt_key():
    r = redirect_from_pod(info({"istio.io/reroute-virtual-interfaces": "net1",
                                "traffic.sidecar.istio.io/kubevirtInterfaces": "net2"}))
    assert r.reroute_interfaces == ("net1",)
    r = redirect_from_pod(info({"traffic.sidecar.istio.io/kubevirtInterfaces": "net2,net3"}))
    assert r.reroute_interfaces == ("net2", "net3")


def test_cidrs_are_reprinted_canonically():
    r = redirect_from_pod(info({
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.1/8,2001:DB8::/32"}))
    assert r.include_cidrs == ("10.0.0.1/8", "2001:db8::/32")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sidecar.istio.io/interceptionMode", "redirect"),
        ("sidecar.istio.io/interceptionMode", "TPROXY\n"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/33"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/255.0.0.0"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/8 -j ACCEPT"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "*"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "65536"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "80,,90"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80\nCOMMIT"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "-1"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "http"),
        ("traffic.sidecar.istio.io/excludeInterfaces", "eth0 -j DROP"),
        ("traffic.sidecar.istio.io/excludeInterfaces", "a-very-long-interface-name"),
        ("istio.io/reroute-virtual-interfaces", "net1\n-A OUTPUT"),
        ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1;rm"),
    ],
)
def test_invalid_annotation_names_key_and_value(key, value):
    with pytest.raises(InvalidAnnotation) as exc:
        redirect_from_pod(info({key: value}))
    assert exc.value.code == 101
    assert key in exc.value.msg and repr(value)[:20] in exc.value.msg
