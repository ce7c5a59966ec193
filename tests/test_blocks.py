"""The block reader against the line reader: same lines, same rows, same dead letters, same digits.

The line path (``ReadFromText`` lines through ``ParseLineFn``, one ``add`` per transaction)
is the reference; the block path (``ExportBlockSource`` blocks through ``ParseBlocksFn``,
packed partial accumulators merged by ``MemberFeaturesFn``) must match it on every input:
random exports cut into random blocks and splits, the bundled sample, the partner's real
export, the messy files of ``test_inputs.py`` and compressed copies, end to end.
"""
from __future__ import annotations

import bz2
import datetime as dt
import gzip
import io
import json
import random
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam import coders
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.textio import _TextSourceWithFilename
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from beam_pipeline import cli, generate, inputs
from beam_pipeline.pipeline import ExportBlockSource
from lantern import features as F
from lantern.member_table import read_batch, shard_of
from lantern.partner import load_named
from tests.test_inputs import FILES
from transforms.features import CombineMemberShardsFn, MemberFeaturesFn
from transforms.input_files import InputFile
from transforms.parse import FileLayout, ParseBlocksFn, ParseLineFn, parse_block

ROOT = Path(__file__).resolve().parent.parent
AS_OF = dt.date(2026, 11, 24)
REAL_EXPORT = ROOT.parent / "shared" / "data" / "member_data_export.csv"
HEADER = "MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD"


def _quiet(fn):
    """Keep a DoFn's counts in its tally (no hand-over to Beam) so a test can read them."""
    fn.tally.flush = lambda: None
    fn.start_bundle()
    return fn


def _fold_lines(fn, element, accs, dead):
    for out in fn.process(element):
        if hasattr(out, "tag"):
            dead.append(out.value)
        else:
            member, value = out
            accs[member] = COMBINE.add_input(accs.get(member, COMBINE.create_accumulator()), value)


COMBINE = MemberFeaturesFn(AS_OF, (*F.SPEC_FEATURES, "N_TRANSACTIONS", "TOTAL_REVENUE_USD", "TOTAL_POINTS_BOUGHT"))


SPEC_COMBINE = MemberFeaturesFn(AS_OF)


def line_path(paths: list[str], layouts, delimiter=",", formats=("iso",)):
    fn = _quiet(ParseLineFn(layouts, delimiter, formats, AS_OF))
    accs, dead = {}, []
    for path in paths:
        source = _TextSourceWithFilename(path, 0, CompressionTypes.AUTO, True, coders.BytesCoder(), validate=False)
        for element in source.read(source.get_range_tracker(None, None)):
            _fold_lines(fn, element, accs, dead)
    return _outcome(fn, accs, dead)


def block_path(paths: list[str], layouts, rng: random.Random, delimiter=",", formats=("iso",)):
    """Blocks of random sizes over random splits, several bundles, folded and merged as the runner would."""
    n_shards = rng.choice([1, 7, 256])  # the shard count follows the input's size (lantern.member_table.shards_for)
    fn = _quiet(ParseBlocksFn(layouts, delimiter, formats, AS_OF, buffer_rows=rng.choice([1, 5, 1 << 20]),
                              max_members=rng.choice([1, 3, 4_000_000]), shards=n_shards))
    shards: dict[int, list[bytes]] = {}
    dead: list = []
    for path in paths:
        size = Path(path).stat().st_size
        source = ExportBlockSource((InputFile(path, size),), block_bytes=rng.choice([1, 7, 64, 1000, 1 << 20]))
        for split in source.split(desired_bundle_size=max(1, size // rng.choice([1, 3, 10, 30]))):
            tracker = split.source.get_range_tracker(split.start_position, split.stop_position)
            for element in split.source.read(tracker):
                _keep(fn.process(element), shards, dead, n_shards)
            if rng.random() < 0.5:  # a new bundle: drain what the table holds
                _keep(_unwindowed(fn.finish_bundle()), shards, dead, n_shards)
    _keep(_unwindowed(fn.finish_bundle()), shards, dead, n_shards)
    features = {}
    for shard, batches in shards.items():  # the shuffle's groups, merged and summarised as the pipeline does
        for combine in (COMBINE, SPEC_COMBINE):  # the SPEC's 8 features have their own reader of packed bytes
            for out in CombineMemberShardsFn(combine).process((shard, batches)):
                if isinstance(out, beam.pvalue.TaggedOutput):  # the shard's state table
                    continue
                member, summary = out
                features[member] = features.get(member, "") + _summary(summary)
    return _counts(fn), features, _sorted(dead)


def _unwindowed(outputs):
    """finish_bundle's windowed values (tagged or not) as process() would have given them."""
    for out in outputs or ():
        yield beam.pvalue.TaggedOutput(out.tag, out.value.value) if hasattr(out, "tag") else out.value


def _keep(outputs, shards, dead, n_shards):
    for out in outputs:
        if hasattr(out, "tag"):
            dead.append(out.value)
            continue
        shard, batch = out
        assert all(shard_of(member, n_shards) == shard for member in read_batch(batch)[0])  # members meet in one shard
        shards.setdefault(shard, []).append(batch)


def _summary(summary: dict) -> str:
    return repr(sorted(summary.items(), key=str))


def _counts(fn) -> dict:
    # bytes_read counts separators differently; member_accumulators is the block path's own.
    return {k: v for k, v in fn.tally.counts.items() if k not in ("bytes_read", "member_accumulators") and v}


def _sorted(dead):
    return sorted(dead, key=lambda d: sorted(d.items()))


def _outcome(fn, accs, dead):
    features = {m: _summary(COMBINE.extract_output(acc)) + _summary(SPEC_COMBINE.extract_output(acc))
                for m, acc in accs.items()}
    return _counts(fn), features, _sorted(dead)


def _layouts(paths, partner="default"):
    config = load_named(partner)
    return {p: inputs.layout_for(p, config, partner) for p in paths}


# --- random exports ----------------------------------------------------------------------------

_members = st.sampled_from(["A1", "B2", " C3 ", "D\t4", "É5", "", "MEMBER_ID"])
_times = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(2030, 1, 1)).map(
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S").zfill(19)),
    st.sampled_from(["2024-02-29 10:00:00", "2023-02-29 10:00:00", "2024-01-01T10:00:00", "2024-01-01 24:00:00",
                     "2024-01-01 10:00:60", "2024-01-01 10:00:00Z", "2024-01-01T10:00:00+05:00", "0000-01-01 00:00:00",
                     "2026-11-24 23:59:59", "2026-11-25 00:00:00", "2024-1-01 10:00:00", " 2024-01-01 10:00:00 ",
                     "yesterday", "2024-01-01 10:00:00.5", "20240101T100000"]))
_types = st.sampled_from(["buy", "BUY", "Gift", "redeem", " redeem ", "swap", "bu y"])
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(str),
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["1e5", ".5", "5.", "+3", "-0", "1_000", "nan", "inf", "-Infinity", "1e999", "1e-400", "0x10",
                     " 7 ", "12.50", "lots", "1,5", "4.9e-324", "1.7976931348623157e308", "00012", "1e+02"]))


@st.composite
def _line(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    member = draw(_members)
    if kind <= 4:
        fields = [member, draw(_times), draw(_types), draw(_numbers), draw(_numbers)]
    elif kind == 5:
        fields = [member, "", "", "", ""]
    elif kind == 6:  # partial, extra or missing fields
        fields = [member, draw(_times), draw(_types), draw(_numbers), draw(_numbers)]
        cut = draw(st.integers(0, 6))
        fields = fields[:cut] if cut < 5 else fields + ["x"] * (cut - 4)
        if draw(st.booleans()) and len(fields) == 5:
            fields[draw(st.integers(1, 4))] = ""
    elif kind == 7:
        return draw(st.sampled_from([b"", b"   ", HEADER.encode(), b"\xef\xbb\xbf" + HEADER.encode(),
                                     b'"Q,1",2024-01-01 10:00:00,buy,1,1', b'"Q""2",2024-01-01 10:00:00,gift,2,2',
                                     b'"Q3,2024-01-01 10:00:00,buy,1,1', b"A\xff1,2024-01-01 10:00:00,buy,1,1",
                                     b"A1,2024-01-01 10:00:00,buy,1,1\r", b"A1\r,2024-01-01 10:00:00,buy,1,1",
                                     b"A1,2024-01-01 10:00:00,buy,1,\x001"]))
    else:
        fields = ["A1", "2024-01-01 10:00:00", "buy", draw(_numbers), draw(_numbers)]
    return ",".join(fields).encode()


@st.composite
def _export(draw) -> bytes:
    lines = draw(st.lists(_line(), max_size=40))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = newline.join([HEADER.encode(), *lines])
    return body + (newline if draw(st.booleans()) else b"")


@settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exports=st.lists(_export(), min_size=1, max_size=3), seed=st.integers(0, 2**32))
def test_random_exports_read_in_blocks_match_the_line_path(tmp_path_factory, exports, seed):
    folder = tmp_path_factory.mktemp("random")
    paths = []
    for i, data in enumerate(exports):
        path = folder / f"export{i}.csv"
        path.write_bytes(data)
        paths.append(str(path))
    layouts = dict.fromkeys(paths, FileLayout(HEADER.encode(), 5, 0, 1, 2, 3, 4))
    assert block_path(paths, layouts, random.Random(seed)) == line_path(paths, layouts)


def test_block_parser_falls_back_to_the_line_parser_on_garbage():
    layout = FileLayout(HEADER.encode(), 5, 0, 1, 2, 3, 4)
    block = bytes(random.Random(3).getrandbits(8) for _ in range(5000))
    rows = parse_block(block, layout, ",", ("iso",), F.days_between(0, AS_OF))
    assert len(rows.codes) == 0 or rows.slow  # nothing vouched for blindly
    assert len(rows.slow) + len(rows.codes) + len(rows.member_only) == block.count(b"\n") + (not block.endswith(b"\n"))


# --- real files --------------------------------------------------------------------------------

def _both(paths, partner="default", seed=0):
    layouts = _layouts(paths, partner)
    config = load_named(partner)
    args = (config.input.delimiter, tuple(config.input.timestamp_formats))
    return block_path(paths, layouts, random.Random(seed), *args), line_path(paths, layouts, *args)


def test_bundled_sample_matches_the_line_path():
    blocks, lines = _both([str(ROOT / "member_data.csv")])
    assert blocks == lines and len(blocks[1]) > 900


@pytest.mark.skipif(not REAL_EXPORT.exists(), reason="the partner's real export is not on this machine")
def test_the_partners_real_export_matches_the_line_path():
    blocks, lines = _both([str(REAL_EXPORT)], "legacy_export")
    assert blocks == lines and blocks[0]["rows_read"] == 4335


def test_the_messy_input_files_match_the_line_path(tmp_path):
    paths = []
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    for seed in range(3):
        blocks, lines = _both(paths, seed=seed)
        assert blocks == lines


# --- compressed exports, end to end --------------------------------------------------------------

def _run(tmp_path, name, source: Path, reader: str) -> tuple[dict, list, list]:
    out = tmp_path / f"out-{name}-{reader}"
    code = cli.main(["--input", str(source), "--output", str(out), "--features-only", "--as-of", AS_OF.isoformat(),
                     "--reader", reader, "--log-level", "WARNING"])
    assert code == 0
    summary = json.loads((out / "run.json").read_text())
    acc = summary["accounting"]
    features = next(step for step in summary["steps"] if step["name"] == "features")
    # the block reader hands the combine one accumulator per member (one bundle here); the line reader every row
    assert (features["unit"], features["elements"]) == (
        ("accumulators", acc["members"]) if reader == "blocks" else ("rows", acc["transactions"] + acc["member_only_rows"]))
    results = sorted(pq.read_table(out / "results").to_pylist(), key=lambda r: r["MEMBER_ID"])
    dead = sorted(pq.read_table(out / "dead_letter").to_pylist(), key=lambda r: (r["RAW_LINE"], r["REASON"]))
    for row in dead:
        row["SOURCE"] = Path(row["SOURCE"]).name.split(".")[0]
    return acc, results, dead


def test_gzip_and_bzip2_exports_give_the_plain_exports_results_with_both_readers(tmp_path):
    data = (ROOT / "member_data.csv").read_bytes()
    plain = tmp_path / "member_data.csv"
    plain.write_bytes(data)
    (tmp_path / "member_data.csv.gz").write_bytes(gzip.compress(data))
    (tmp_path / "member_data.csv.bz2").write_bytes(bz2.compress(data))
    reference = _run(tmp_path, "plain", plain, "lines")
    for name in ("member_data.csv", "member_data.csv.gz", "member_data.csv.bz2"):
        for reader in ("blocks", "lines"):
            assert _run(tmp_path, name, tmp_path / name, reader) == reference, (name, reader)


def test_a_corrupt_compressed_export_stops_before_the_run(tmp_path, capsys):
    bad = tmp_path / "broken.csv.gz"
    bad.write_bytes(b"not gzip at all\n")
    code = cli.main(["--input", str(bad), "--output", str(tmp_path / "out"), "--features-only"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: input {bad}: cannot decompress")


def test_day_first_timestamps_take_the_fast_path_and_match_the_line_path(tmp_path):
    config = load_named("acme_rewards")
    out = io.StringIO()
    generate.write(out, 400, seed=5, partner=config)
    tricky = ["X1;1/05/2024 10:00:00;buy;1;1", "X2;31/02/2024 10:00:00;buy;1;1", "X3;2024-05-01 10:00:00;gift;2;2",
              "X4;2024-05-01T10:00:00Z;redeem;-3;0", "X5;29/02/2023 10:00:00;buy;1;1", "X6;01/05/2024 10:00:60;buy;1;1",
              "X7;24/11/2026 23:59:59;buy;5;5", "X8;25/11/2026 00:00:00;buy;5;5"]
    path = tmp_path / "acme.csv"
    path.write_text(out.getvalue() + "\n".join(tricky) + "\n")
    for seed in range(2):
        blocks, lines = _both([str(path)], "acme_rewards", seed)
        assert blocks == lines
    layout = _layouts([str(path)], "acme_rewards")[str(path)]
    rows = parse_block(b"M1;24/11/2026 10:00:00;buy;1;1\n", layout, ";", tuple(config.input.timestamp_formats),
                       2**62)
    assert len(rows.codes) == 1 and not rows.slow  # vouched for by the fast path
