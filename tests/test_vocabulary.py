"""Partner value vocabularies (input.type_values): validated at load, read by the parser with one lookup."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest

from lantern.errors import ConfigError
from lantern.features import BUY, GIFT, REDEEM, TYPE_CODES
from lantern.partner import InputConfig, load
from transforms import parse as P

AS_OF = dt.date(2026, 11, 24)
LAYOUT = P.FileLayout(None, 5, 0, 1, 2, 3, 4)
VOCAB = InputConfig.model_validate(
    {"type_values": {"buy": ["Purchase", "P"], "gift": "Present", "redeem": [" Redemption "]}}
).type_codes()


def test_default_vocabulary_is_the_three_words():
    assert InputConfig().type_codes() == TYPE_CODES


def test_type_codes_are_a_plain_mapping_of_trimmed_lowercase_spellings():
    assert VOCAB == {"purchase": BUY, "p": BUY, "present": GIFT, "redemption": REDEEM}
    assert type(VOCAB) is dict


@pytest.mark.parametrize("text, code", [("Purchase", BUY), ("PURCHASE", BUY), ("  p ", BUY),
                                        ("present", GIFT), ("rEdEmPtIoN", REDEEM)])
def test_partner_spellings_parse_case_insensitively_after_trimming(text, code):
    _, txn = P.parse_fields(["M1", "2024-01-01 10:00:00", text, "5", "1.5"], LAYOUT, ("iso",),
                            P.end_of_day_us(AS_OF), VOCAB)
    assert txn.type_code == code


def test_a_partner_vocabulary_replaces_the_default_words_and_the_rejection_lists_it():
    with pytest.raises(P.Rejected) as rej:
        P.parse_fields(["M1", "2024-01-01 10:00:00", "buy", "5", "1.5"], LAYOUT, ("iso",),
                       P.end_of_day_us(AS_OF), VOCAB)
    assert rej.value.reason == P.UNKNOWN_TYPE
    assert rej.value.detail == ("unknown transaction type 'buy'; accepted (any case): purchase, p, present, "
                                "redemption (input.type_values)")


def test_parse_line_fn_takes_the_vocabulary_as_an_argument():
    fn = P.ParseLineFn({"f": LAYOUT}, "|", ["iso"], AS_OF, type_codes=VOCAB)
    out = list(fn.process(("f", b"M1|2024-01-01 10:00:00|Present|5|1.5")))
    out += list(fn.process(("f", b"M1|2024-01-01 10:00:00|gift|5|1.5")))
    assert out[0][1].type_code == GIFT
    assert isinstance(out[1], beam.pvalue.TaggedOutput) and out[1].value["REASON"] == P.UNKNOWN_TYPE


@pytest.mark.parametrize("values, message", [
    ("{buy: [Purchase], gift: [purchase]}", "input.type_values: 'purchase' is mapped to both buy and gift"),
    ("{buy: [Purchase, ' PURCHASE']}", "input.type_values: ' PURCHASE' is mapped twice"),
    ("{redeem: ['  ']}", "input.type_values: redeem: an empty spelling"),
    ("{redeem: []}", "input.type_values.redeem: List should have at least 1 item"),
    ("{swap: [x]}", "input.type_values.swap: Extra inputs are not permitted"),
])
def test_bad_vocabularies_fail_at_load_naming_the_field(values, message, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\ninput:\n  type_values: {values}\n")
    with pytest.raises(ConfigError, match=r"^partner file .*p\.yaml: ") as err:
        load(path)
    assert message in str(err.value)
