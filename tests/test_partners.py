"""Partner files: every shipped partner end to end against its server, and one-line errors for bad files."""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli, generate
from lantern.errors import ConfigError
from lantern.partner import PARTNER_DIR, available, load, load_named, schema_markdown
from tests.conftest import ROOT, uvicorn_server
from transforms.rate_limit import RateLimiter

AS_OF = "2026-11-24"
ACME_KEY = "test-key-not-a-secret"
# The server each shipped partner is tested against (default: the reference service).
SERVERS = {"acme_rewards": "tests.acme_service:app"}


@pytest.fixture(scope="module")
def acme_url():
    with uvicorn_server("tests.acme_service:app", env={"ACME_API_KEY": ACME_KEY}) as url:
        yield url


@pytest.fixture
def acme_key(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", ACME_KEY)


def export_for(partner, path: Path, rows: int = 300, seed: int = 5) -> Path:
    with open(path, "w", newline="") as handle:
        generate.write(handle, rows, seed, 4, partner)
    return path


def run_partner(args: list[str], export: Path, out: Path, url: str) -> tuple[int, dict | None]:
    return cli.run(["--input", str(export), "--output", str(out), "--as-of", AS_OF, "--endpoint-url", url, *args])


def test_every_partner_file_loads_and_is_named_after_its_file():
    names = available()
    assert {"default", "legacy_export", "acme_rewards"} <= set(names)
    for name in names:
        assert load_named(name).name == name


@pytest.mark.parametrize("name", available())
def test_each_partner_end_to_end_against_its_server(name, server_url, acme_url, acme_key, tmp_path):
    partner = load_named(name)
    url = acme_url if SERVERS.get(name) else server_url
    export = export_for(partner, tmp_path / "export.csv")
    code, summary = run_partner(["--partner", name], export, tmp_path / "out", url)
    acc = summary["accounting"]
    assert code == 0, pq.read_table(tmp_path / "out" / "results").column("ERROR").unique()
    assert acc["rows_read"] == 300 and acc["members_ok"] > 50 and acc["members_failed"] == 0
    assert set(summary["offers"]) <= set(partner.endpoints.offer.offers)


def _acme_expected(export: Path) -> dict:
    """Acme's formulas straight from the semicolon CSV, independent of the pipeline's code."""
    members: dict[str, list] = {}
    with open(export, newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            try:
                when = dt.datetime.strptime(row["txn_time"], "%d/%m/%Y %H:%M:%S")
                pts, rev, kind = float(row["pts"]), float(row["amount_usd"]), row["txn_kind"]
            except (ValueError, TypeError):
                continue
            if row["customer_ref"] and pts == pts and kind in ("buy", "gift", "redeem"):
                members.setdefault(row["customer_ref"], []).append((when, kind, pts, rev))
    out = {}
    for mid, txns in members.items():
        n = len(txns)
        avg = sum(t[2] for t in txns) / n
        buy = sum(t[1] == "buy" for t in txns) / n
        redeem = sum(t[1] == "redeem" for t in txns) / n
        days = (dt.date.fromisoformat(AS_OF) - max(t[0] for t in txns).date()).days
        ats = abs(avg) * (buy + 0.5 - redeem / 2)
        resp = min(1.0, sum(t[3] for t in txns) / (n * (days + 1)))
        out[mid] = (ats, resp, "ACME_PREMIUM" if ats * resp >= 50 else "ACME_STANDARD")
    return out


def test_acme_values_match_its_formulas(acme_url, acme_key, tmp_path):
    export = export_for(load_named("acme_rewards"), tmp_path / "acme.csv", rows=400, seed=9)
    code, _ = run_partner(["--partner", "acme_rewards"], export, tmp_path / "out", acme_url)
    assert code == 0
    rows = {r["MEMBER_ID"]: r for r in pq.read_table(tmp_path / "out" / "results").to_pylist()}
    expected = _acme_expected(export)
    assert expected and set(expected) <= set(rows)
    for mid, (ats, resp, offer) in expected.items():
        row = rows[mid]
        assert row["ATS_PREDICTION"] == pytest.approx(ats, rel=1e-9)
        assert row["RESP_PREDICTION"] == pytest.approx(resp, rel=1e-9)
        assert row["OFFER"] == offer
        assert row["TOTAL_REVENUE_USD"] is not None and row["N_TRANSACTIONS"] >= 1
        assert row["AVG_REVENUE_USD"] is None  # not asked for by Acme: not computed


def test_wrong_key_fails_every_member_with_401(acme_url, monkeypatch, tmp_path):
    monkeypatch.setenv("ACME_API_KEY", "wrong")
    export = export_for(load_named("acme_rewards"), tmp_path / "acme.csv", rows=60)
    code, _ = run_partner(["--partner", "acme_rewards"], export, tmp_path / "out", acme_url)
    assert code == 3
    errors = pq.read_table(tmp_path / "out" / "results").column("ERROR").drop_null().to_pylist()
    assert errors and all("HTTP 401" in e for e in errors)
    assert ACME_KEY not in (tmp_path / "out" / "run.json").read_text()


def test_reference_shape_sent_to_acme_is_rejected_with_422(acme_url, acme_key, tmp_path):
    # Same columns as Acme, but the reference request shape: Acme's server must refuse it.
    text = (PARTNER_DIR / "acme_rewards.yaml").read_text()
    text = text.replace("    nest_under: features\n", "").replace("name: acme_rewards", "name: acme_flat")
    config = tmp_path / "acme_flat.yaml"
    config.write_text(text)
    export = export_for(load(config), tmp_path / "acme.csv", rows=40)
    code, _ = run_partner(["--partner-config", str(config)], export, tmp_path / "out", acme_url)
    assert code == 3
    errors = pq.read_table(tmp_path / "out" / "results").column("ERROR").drop_null().to_pylist()
    assert errors and all("HTTP 422" in e for e in errors)


def test_a_new_partner_from_the_readme_alone(acme_url, acme_key, tmp_path):
    """Other columns, delimiter, time format and feature names, no code change: just a file."""
    config = tmp_path / "zeta_club.yaml"
    config.write_text(
        "name: zeta_club\n"
        "input:\n"
        "  columns: {member_id: Kunde, timestamp: Zeit, type: Art, points: Punkte, revenue: Umsatz}\n"
        "  delimiter: '|'\n"
        "  timestamp_formats: ['%Y%m%dT%H%M%S']\n"
        "features: [AVG_POINTS_BOUGHT, PCT_BUY_TRANSACTIONS, PCT_REDEEM_TRANSACTIONS,\n"
        "           DAYS_SINCE_LAST_TRANSACTION, TOTAL_REVENUE_USD, {name: N_TRANSACTIONS, send_as: txn_count}]\n"
        "endpoints:\n"
        "  base_url: http://127.0.0.1:1/acme\n"
        "  ats: {path: '/v2/models/ats:score', response_field: score}\n"
        "  resp: {path: '/v2/models/resp:score', response_field: score}\n"
        "  offer: {path: /v2/offers/decide, response_field: decision, ats_field: ats_score,\n"
        "          resp_field: resp_score, offers: [ACME_STANDARD, ACME_PREMIUM]}\n"
        "  request: {nest_under: features, field_case: lower, extra_fields: {model_version: '2024-06'}}\n"
        "auth: {header: X-Acme-Key, env: ACME_API_KEY}\n"
    )
    export = export_for(load(config), tmp_path / "zeta.csv", rows=120)
    assert export.read_text().startswith("Kunde|Zeit|Art|Punkte|Umsatz\n")
    code, summary = run_partner(["--partner-config", str(config)], export, tmp_path / "out", acme_url)
    assert code == 0 and summary["partner"] == "zeta_club" and summary["accounting"]["members_ok"] > 10


def test_missing_secret_is_a_startup_error_naming_the_variable(server_url, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ACME_API_KEY", raising=False)
    export = export_for(load_named("acme_rewards"), tmp_path / "acme.csv", rows=10)
    code = cli.main(["--input", str(export), "--output", str(tmp_path / "out"), "--partner", "acme_rewards"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ACME_API_KEY" in err[0]
    assert not (tmp_path / "out").exists()


BAD_FILES = [
    ("name: x\nbogus_key: 1\n", "bogus_key: Extra inputs are not permitted"),
    ("description: no name\n", "name: Field required"),
    ("name: x\ncalls: {retries: many}\n", "calls.retries: Input should be a valid integer"),
    ("name: x\nfeatures: [AVG_POINTS_BOUGHT, LUCKY_NUMBER]\n", "features.1.name: unknown feature 'LUCKY_NUMBER'"),
    ("name: x\nendpoints: {base_url: 'ftp//nowhere'}\n", "endpoints.base_url: not an http(s) URL"),
    ("name: x\ninput: {delimiter: ';;'}\n", "input.delimiter:"),
    ("name: x\ninput: {header: false}\n", "input: header_columns is required when header is false"),
    ("name: x\nendpoints: {ats: {path: no-slash}}\n", "endpoints.ats.path: must start with '/'"),
    ("name: x\nauth: {header: X-Key, env: 'not a name'}\n", "auth.env: String should match pattern"),
    ("name: x\n  bad: [indent\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_bad_partner_file_is_one_line_naming_file_and_field(text, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(config)
    assert str(config) in str(err.value) and message in str(err.value)
    code = cli.main(["--input", str(ROOT / "member_data.csv"), "--output", str(tmp_path / "out"),
                     "--partner-config", str(config)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_partner_docs_hold_the_generated_partner_schema():
    readme = (ROOT / "docs" / "partners.md").read_text()
    assert readme.count(schema_markdown()) == 1, \
        "run `python -m lantern.partner` and paste its table, once, into docs/partners.md"
    for line in schema_markdown().splitlines()[-1:]:
        assert readme.count(line) == 1, f"docs/partners.md repeats: {line[:60]}"


def test_headerless_partner(server_url, tmp_path):
    config = tmp_path / "headless.yaml"
    config.write_text("name: headless\ninput:\n  header: false\n  header_columns: [MEMBER_ID, LAST_TRANSACTION_TS,"
                      " LAST_TRANSACTION_TYPE, LAST_TRANSACTION_POINTS_BOUGHT, LAST_TRANSACTION_REVENUE_USD]\n")
    export = tmp_path / "no_header.csv"
    export.write_text("A1,2024-01-01 10:00:00,buy,100,1.0\nA1,2024-01-02 10:00:00,gift,50,2.0\nB2,,,,\n")
    code, summary = run_partner(["--partner-config", str(config)], export, tmp_path / "out", server_url)
    assert code == 0
    assert summary["accounting"]["rows_read"] == 3 and summary["accounting"]["members_ok"] == 1


def test_rate_limiter_spaces_requests():
    now = [0.0]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(rate=10, burst=1, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert now[0] == pytest.approx(0.4)  # the first is free, then one per 0.1 s


def test_a_setting_without_effect_loads_and_is_said_once_the_run_logs(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: old\ncalls: {batch_size: 32}\n")
    partner = load(path)
    assert partner.notices() == [
        "partner file: calls.batch_size has no effect (per-member calls are not batched); remove it"]
    assert load_named("default").notices() == []
