"""Versioned state: this version reads the state it wrote (a fixture kept from version 1), and
refuses state of a layout it does not know with one readable line."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from lantern import features
from lantern.features import Transaction
from lantern.state_version import STATE_VERSION, StateVersionError
from transforms.features import CompactAccumulatorCoder, MemberFeaturesFn, PackedAccumulatorCoder
from transforms.member_state import MemberMeta, MemberMetaCoder

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "member_state_v1.json").read_text())
AS_OF = dt.date(2026, 11, 30)


def _fixture_accumulator() -> list:
    acc = features.create()
    for values in FIXTURE["transactions"]:
        features.add(acc, Transaction(*values))
    return acc


def test_version_1_state_is_read_exactly():
    acc = _fixture_accumulator()
    assert CompactAccumulatorCoder().decode(bytes.fromhex(FIXTURE["accumulator"])) == acc
    shuffled = PackedAccumulatorCoder().decode(bytes.fromhex(FIXTURE["shuffled_accumulator"]))
    fn = MemberFeaturesFn(AS_OF)
    assert repr(fn.extract_output(shuffled)) == repr(fn.extract_output(acc))  # digit for digit
    assert MemberMetaCoder().decode(bytes.fromhex(FIXTURE["meta"])) == MemberMeta(*FIXTURE["meta_fields"])


def test_the_current_version_writes_what_the_fixture_holds():
    """While the layout version is 1, encoding is byte for byte the kept state: a layout change that
    forgets to bump the version fails here."""
    if STATE_VERSION != 1:
        pytest.skip("the layout has moved on; the fixture stays as version 1's bytes")
    acc = _fixture_accumulator()
    assert CompactAccumulatorCoder().encode(acc).hex() == FIXTURE["accumulator"]
    assert MemberMetaCoder().encode(MemberMeta(*FIXTURE["meta_fields"])).hex() == FIXTURE["meta"]


@pytest.mark.parametrize("coder", [CompactAccumulatorCoder(), PackedAccumulatorCoder(), MemberMetaCoder()])
def test_state_of_an_unknown_version_is_refused_in_one_line(coder):
    data = bytes.fromhex(FIXTURE["meta"] if isinstance(coder, MemberMetaCoder) else FIXTURE["accumulator"])
    with pytest.raises(StateVersionError) as refused:
        coder.decode(bytes((STATE_VERSION + 7,)) + data[1:])
    message = str(refused.value)
    assert f"layout version {STATE_VERSION + 7}" in message and "\n" not in message
    with pytest.raises(StateVersionError, match="empty state"):
        coder.decode(b"")
