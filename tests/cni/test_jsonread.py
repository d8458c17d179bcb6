"""`cni.jsonread.loads` is `json.loads` (without importing `json` for a good document): the same
value or the same exception, message included, for any bytes on stdin."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import jsonread


def _outcome(load, data: bytes) -> tuple[str, str]:  # noqa: ANN001
    try:
        return "value", repr(load(data))  # repr: NaN is not equal to itself
    except Exception as exc:  # noqa: BLE001 - comparing whatever each raises
        return type(exc).__name__, str(exc)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=10)
documents = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(json_values, st.sampled_from(["", " ", "\n", "\t\r ", "x", ",", " {}"]),
              st.sampled_from(["", " ", "\ufeff", "\n"]), st.sampled_from(["utf-8", "utf-16",
                                                                         "utf-32-le"]))
    .map(lambda t: (t[2] + json.dumps(t[0], ensure_ascii=False) + t[1]).encode(t[3])),
)


@given(documents)
def test_the_same_value_or_the_same_error_as_json(data: bytes) -> None:
    assert _outcome(jsonread.loads, data) == _outcome(json.loads, data)


@pytest.mark.parametrize("data", [b"", b" ", b"{", b'{"a": 1} x', b"\xef\xbb\xbf{}", b"\x00{}",
                                  b'{"a": "\xed\xa0\x80"}', b"[" * 100_000, b"NaN", b'"\\ud800"',
                                  '{"é": 1}'.encode(), b"1e400", b" \n{} \r\n"])
def test_edge_documents(data: bytes) -> None:
    assert _outcome(jsonread.loads, data) == _outcome(json.loads, data)
