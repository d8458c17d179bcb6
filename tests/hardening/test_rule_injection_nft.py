"""Rule injection, native nftables mode: no annotation text reaches the transaction verbatim.

The same hostile values as `test_rule_injection.py` (same annotations, same oracles), rendered
as the nftables transaction: a value is rejected with an error naming the annotation, or it is
accepted and the transaction is exactly the one built from the value's canonical meaning, one
known command per line, every word inert (no `;`, quotes, braces or newlines smuggled in: nft
would read those as new statements or commands).
"""

from __future__ import annotations

import re

import pytest

from cni.errors import InvalidAnnotation
from cni.nft_rules import build_nft_ruleset
from cni.podinfo import extract_pod_info
from cni.redirect import redirect_from_pod, to_iptables_config
from tests.hardening.test_rule_injection import ANNOTATIONS, sweep

SAFE_WORD = re.compile(r"^[A-Za-z0-9_.:/,*!=@\-]+$")
COMMAND = re.compile(
    r"^(add table inet istio-proxy-(nat|mangle|raw)"
    r"|flush table inet istio-proxy-(nat|mangle|raw)"
    r"|add chain inet istio-proxy-[a-z]+ [a-z-]+( \{ type [a-z]+ hook [a-z]+ priority -\d+ ; \})?"
    r"|(add|insert) rule inet istio-proxy-[a-z]+ [a-z-]+ .*)$"
)
SET_OF_PORTS = re.compile(r"\{ 53, \d+ \}")


def transaction(annotations: dict[str, str], ipv6: bool = True) -> str:
    pod = extract_pod_info({"metadata": {"name": "p", "namespace": "n", "annotations": {
        "sidecar.istio.io/status": "{}", **annotations}},
        "spec": {"containers": [{"name": "istio-proxy", "args": ["proxy", "sidecar"]}]}})
    return build_nft_ruleset(to_iptables_config(redirect_from_pod(pod), enable_ipv6=ipv6)
                             ).transaction()


def assert_inert(text: str) -> None:
    for line in text.splitlines():
        assert COMMAND.match(line), line
        if line.startswith(("add rule", "insert rule")):
            for word in SET_OF_PORTS.sub("", line).split(" ")[4:]:
                assert word == "" or SAFE_WORD.match(word), (word, line)


@pytest.mark.parametrize("key", sorted(ANNOTATIONS))
def test_annotation_values_are_rejected_or_mean_exactly_what_they_say(key: str):
    def outcome(value: str) -> str:
        meaning = ANNOTATIONS[key](value)
        try:
            got = transaction({key: value})
        except InvalidAnnotation as exc:
            assert key in exc.msg and exc.code == 101
            return "rejected"
        except ValueError:
            return "refused by the rule builder"  # a combination refused: still no rules
        assert meaning is not None, f"{key}={value!r} was accepted but means nothing valid"
        assert got == transaction({key: meaning})
        assert_inert(got)
        return "accepted"

    sweep(key, outcome)


def test_the_default_pod_transaction_is_inert() -> None:
    assert_inert(transaction({}))
    assert_inert(transaction({"sidecar.istio.io/interceptionMode": "TPROXY"}))
