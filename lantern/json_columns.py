"""Many JSON objects of one shape at once, their values taken from Arrow columns.

A batch route's request holds hundreds of members' features; writing them member by
member with ``json.dumps`` (after building a dict each) was the largest client cost of
a batch-route run. Here an object's shape is written once, with ``json.dumps`` itself,
as a template; the values are formatted column by column (Arrow's shortest round-trip
float formatting) and joined in. Each object reads back, value for value, as the one
``json.dumps`` writes: numbers parse to the same doubles, floats stay floats (``100.0``,
not ``100``), and infinities are spelled as ``json.dumps`` spells them.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MARK = "@@lantern-column-{}@@"


def number_text(column: pa.Array) -> pa.Array:
    """Numbers as JSON text, row for row; nulls stay null."""
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    column = pc.cast(column, pa.float64())
    text = pc.cast(column, pa.string())
    values = column.fill_null(0.0).to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    # Arrow writes 100 and -0 for the floats 100.0 and -0.0 (and 1e+16 for 1e16): add the point
    # json.dumps writes where the text has neither a point nor an exponent.
    integral = finite & (values == np.trunc(values))
    if integral.any():
        plain = integral & ~pc.match_substring(text, "e").fill_null(False).to_numpy(zero_copy_only=False)
        text = pc.if_else(pa.array(plain), pc.binary_join_element_wise(text, ".0", ""), text)
    if not finite.all():  # inf, -inf, nan: as json.dumps spells them
        text = pc.replace_substring(text, "inf", "Infinity")
        text = pc.replace_substring(text, "nan", "NaN")
    return text


class ObjectTemplate:
    """The JSON text of ``build(values)`` for many rows: ``build`` is called once, with markers
    for values, to learn the shape (key order, nesting, constant fields, escaping)."""

    def __init__(self, build: Callable[[dict[str, Any]], Any], names: Sequence[str]):
        self.names = tuple(names)
        text = json.dumps(build({name: _MARK.format(i) for i, name in enumerate(self.names)}))
        self._pieces: list[str] = []
        self._order: list[int] = []
        rest = text
        while True:
            found = [(rest.find(json.dumps(_MARK.format(i))), i) for i in range(len(self.names))]
            found = [(at, i) for at, i in found if at >= 0]
            if not found:
                break
            at, i = min(found)
            self._pieces.append(rest[:at])
            self._order.append(i)
            rest = rest[at + len(json.dumps(_MARK.format(i))):]
        self._pieces.append(rest)

    def render(self, columns: Sequence[pa.Array]) -> pa.Array:
        """One JSON object per row, ``columns`` in the order of ``names``."""
        texts = [number_text(column) for column in columns]
        parts: list = []
        for piece, i in zip(self._pieces, self._order, strict=False):
            parts += [pa.scalar(piece), texts[i]]
        parts.append(pa.scalar(self._pieces[-1]))
        if not self._order:  # a shape without values: the same text for every row
            n = len(columns[0]) if columns else 0
            return pa.repeat(pa.scalar(self._pieces[0]), n)
        return pc.binary_join_element_wise(*parts, "")


def json_list_field(field: str, objects: Sequence[str]) -> bytes:
    """``json.dumps({field: [objects...]})`` for objects already written as JSON text."""
    return f"{{{json.dumps(field)}: [{', '.join(objects)}]}}".encode()
