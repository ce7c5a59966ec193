"""Options: the job's own, Beam's, and anything else as exit 2 naming the closest known option."""
from __future__ import annotations

import pytest

from beam_pipeline import beam_options, cli

BASE = ["--input", "in.csv", "--output", "out"]


@pytest.mark.parametrize("typo, meant", [
    ("--overwite", "--overwrite"),
    ("--features-onyl", "--features-only"),
    ("--direct_num_worker=4", "--direct_num_workers"),
    ("--runer=DirectRunner", "--runner"),
])
def test_an_unknown_option_is_exit_2_with_one_line_naming_the_closest(typo, meant, tmp_path, capsys):
    code = cli.main(["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), typo])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert typo.split("=")[0] in err[0] and f"did you mean {meant}?" in err[0], err
    assert not (tmp_path / "out").exists()


def test_an_option_nothing_resembles_is_named_alone():
    with pytest.raises(cli.ConfigError, match=r"^unknown option --zzz-qqq; see --help$"):
        cli.parse_args([*BASE, "--zzz-qqq", "1"])


def test_a_stray_argument_is_refused():
    with pytest.raises(cli.ConfigError, match="unexpected argument 'stray'"):
        cli.parse_args([*BASE, "stray"])


def test_beams_own_options_go_to_beam():
    beam_args = ["--runner", "DirectRunner", "--direct_num_workers=2", "--direct_running_mode", "multi_threading",
                 "--project=p", "--region=europe-west1", "--temp_location=gs://b/tmp", "--experiments=a",
                 "--experiments=b", "--max_num_workers=8", "--save_main_session",
                 "--job_endpoint=localhost:8099", "--environment_type=LOOPBACK"]
    args, rest = cli.parse_args([*BASE, *beam_args])
    assert rest == beam_args
    assert args.output == "out"


def test_the_flex_template_launchers_underscore_spellings_are_the_jobs_options():
    args, rest = cli.parse_args([*BASE, "--as_of=2026-11-24", "--endpoint_url=http://127.0.0.1:1",
                                 "--max_dead_letter_ratio=0.1", "--features_only", "--skip_preflight",
                                 "--partner_config=p.yaml", "--auth_secret=projects/p/secrets/s/versions/1"])
    assert rest == []
    assert (args.as_of, args.endpoint_url, args.max_dead_letter_ratio) == ("2026-11-24", "http://127.0.0.1:1", 0.1)
    assert args.features_only and args.skip_preflight


def test_the_known_options_are_every_pipeline_options_subclasses():
    known = set(beam_options.known_options(beam_options.beam_parser()))
    assert {"--runner", "--direct_num_workers", "--project", "--max_num_workers", "--sdk_container_image",
            "--environment_config", "--temp_location"} <= known


def test_every_option_with_a_dash_answers_to_its_underscore_spelling():
    args, rest = cli.parse_args([*BASE, "--log_level=DEBUG", "--heartbeat_seconds=0", "--log_format=json"])
    assert rest == []
    assert (args.log_level, args.heartbeat_seconds, args.log_format) == ("DEBUG", 0.0, "json")
