"""JSON objects written column by column read back as ``json.dumps`` writes them, value for value."""
from __future__ import annotations

import json
import math

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern.json_columns import ObjectTemplate, json_list_field, number_text


def same(a, b) -> bool:
    """Equal as JSON values, with the same types (float stays float) and the sign of zero."""
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(), min_size=1, max_size=30), st.lists(st.integers(-2**63, 2**63 - 1), min_size=1))
def test_numbers_read_back_as_json_dumps_writes_them(floats, ints):
    for column, values in ((pa.array(floats, pa.float64()), floats), (pa.array(ints, pa.int64()), ints)):
        for text, value in zip(number_text(column).to_pylist(), values, strict=True):
            assert same(json.loads(text), json.loads(json.dumps(value))), (text, value)


def test_hand_picked_numbers():
    values = [100.0, -0.0, 0.0, 1e16, 1e15, 1e-7, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, math.inf, -math.inf]
    texts = number_text(pa.array(values)).to_pylist()
    assert texts[:3] == ["100.0", "-0.0", "0.0"] and texts[-2:] == ["Infinity", "-Infinity"]
    assert [json.loads(t) for t in texts] == values
    assert number_text(pa.array([1.0, None])).to_pylist() == ["1.0", None]


def test_a_template_keeps_the_shape_json_dumps_gives():
    def build(values):
        return {"model": "v2", "features": {"a \"quoted\" é": values["A"], "days": values["D"]}, "A": "literal"}

    template = ObjectTemplate(build, ["A", "D"])
    texts = template.render([pa.array([1.5, 100.0]), pa.array([3, 4])]).to_pylist()
    assert texts == [json.dumps(build({"A": 1.5, "D": 3})), json.dumps(build({"A": 100.0, "D": 4}))]
    assert json_list_field("instances", texts) == json.dumps({"instances": [json.loads(t) for t in texts]}).encode()
