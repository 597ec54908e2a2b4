"""The TOML writer: whatever it writes, tomllib reads back as the same document."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.config import dumps, validate

# TOML integers are 64-bit; floats are IEEE doubles (NaN never equals itself, so leave it out).
scalars = (
    st.text()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
keys = st.text(max_size=12)
tables = st.recursive(
    st.dictionaries(keys, values, max_size=5),
    lambda inner: st.dictionaries(keys, values | inner, max_size=4),
    max_leaves=6,
)


@settings(max_examples=120, deadline=None)
@given(tables)
def test_round_trip_any_document(doc: dict) -> None:
    assert tomllib.loads(dumps(doc)) == doc


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        keys,
        st.dictionaries(keys, st.lists(st.text(), max_size=5) | st.text() | st.integers(-10, 10)),
        max_size=4,
    )
)
def test_round_trip_config_shaped_documents(doc: dict) -> None:
    """Sections of scalars and string lists, the shape of porch.toml."""
    assert tomllib.loads(dumps(doc, header="a header\nover two lines")) == doc


@pytest.mark.parametrize(
    "text",
    [
        'quote " and backslash \\',
        "tab\tnew\nline\rcr",
        "\x00\x01\x1f\x7f",
        "ünï©ødé ☎ 𝄞",
        "\u2028\u2029\ufeff",
        "'''",
        '"""',
        "# not a comment",
        "a = b",
        "[table]",
        "",
    ],
)
def test_awkward_strings(text: str) -> None:
    doc = {"s": {"k": text, text: [text, text]}}
    assert tomllib.loads(dumps(doc)) == doc


def test_special_floats_and_extreme_ints() -> None:
    doc = {
        "t": {
            "a": math.inf,
            "b": -math.inf,
            "c": -0.0,
            "d": 1e300,
            "e": 5e-324,
            "f": 2**63 - 1,
            "g": -(2**63),
            "h": 1e16,
            "i": 0.1,
        }
    }
    back = tomllib.loads(dumps(doc))
    assert back == doc
    assert math.copysign(1, back["t"]["c"]) == -1
    assert math.isnan(tomllib.loads(dumps({"n": math.nan}))["n"])


def test_unwritable_values_are_refused() -> None:
    with pytest.raises(ValueError):
        dumps({"a": 2**63})
    with pytest.raises(ValueError):
        dumps({"a": "\ud800"})
    with pytest.raises(TypeError):
        dumps({"a": object()})


def test_empty_and_nested_tables_survive() -> None:
    doc = {
        "top": 1,
        "empty": {},
        "outer": {"inner": {"x": [1, [2, "3"]]}, "y": True},
        "inline": {"list": [{"a": 1}, {}, {"b c": ["d"]}]},
    }
    assert tomllib.loads(dumps(doc)) == doc


def test_config_document_is_readable_text() -> None:
    text = dumps(validate({"call": {"targets": ["sip:a@b"]}}).to_document())
    assert '[call]\ntargets = ["sip:a@b"]\n' in text
    assert "\n[door]\n" in text


@pytest.mark.fuzz
@pytest.mark.timeout(900)
@settings(max_examples=4000, deadline=None)
@given(tables)
def test_round_trip_any_document_long(doc: dict) -> None:
    assert tomllib.loads(dumps(doc)) == doc
