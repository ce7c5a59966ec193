"""The job as Dataflow receives it, translated offline (``--dry_run --no_auth``), never submitted.

Needs the ``dataflow`` extra (apache-beam[gcp]); ``scripts/test.sh`` installs it and sets
LANTERN_REQUIRE_DATAFLOW, so there (and in CI) a missing extra fails instead of skipping.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, WorkerOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_pipeline import cli, dataflow, launch
from beam_pipeline.accounting import BatchAccountant
from beam_pipeline.finalize import RunPlan
from beam_pipeline.inputs import layout_for
from beam_pipeline.pipeline import JobConfig, build_pipeline
from beam_pipeline.runners import local_runner
from lantern.job_record import from_text
from lantern.partner import load_named
from transforms.input_files import InputFile

pytestmark = pytest.mark.usefixtures("dataflow_extra")

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "lantern-prod-431207"
REGION = "europe-west1"
BUCKET = "gs://lantern-prod-431207-lantern"
COMMIT = "3f2c9a1"
CLOUD_ARGS = [
    "--runner=DataflowRunner", "--dry_run=True", "--no_auth",
    f"--project={PROJECT}", f"--region={REGION}",
    f"--temp_location={BUCKET}/tmp", f"--staging_location={BUCKET}/staging",
]
HEADER = ("MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,"
          "LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD")


def built_image() -> str:
    """The image cloudbuild.yaml builds, with its substitutions filled in as Cloud Build would."""
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    subs = {**build["substitutions"], "PROJECT_ID": PROJECT, "COMMIT_SHA": COMMIT}
    subs["_REGION"] = REGION

    def fill(text: str) -> str:
        for _ in range(5):  # substitutions refer to substitutions
            text = re.sub(r"\$\{(\w+)\}", lambda m: str(subs[m.group(1)]), text)
        return text

    step = next(s for s in build["steps"] if s["id"] == "build")
    tags = [fill(a.split("=", 1)[1]) for a in step["args"] if a.startswith("--tag=")]
    build_args = [fill(a.split("=", 1)[1]) for a in step["args"] if a.startswith("--build-arg=")]
    assert len(tags) == 1 and build_args == [f"LANTERN_IMAGE={tags[0]}"], "the image is not told its own name"
    template = next(s for s in build["steps"] if s["id"] == "template")
    assert f"--image={tags[0]}" in [fill(a) for a in template["args"]], "the template does not use the built image"
    return tags[0]


def job_config(tmp_path: Path) -> JobConfig:
    partner = load_named("default")
    sample = tmp_path / "header.csv"
    sample.write_text(HEADER + "\nm1,2024-01-01 10:00:00,buy,10,1.5\n")
    source = f"{BUCKET}/exports/2026-11-24/member_data.csv"
    layouts = {source: layout_for(str(sample), partner, "partner_options/default.yaml")}
    files = (InputFile(source, 1 << 20, 1764000000000000),)
    plan = RunPlan("test", f"{BUCKET}/runs", f"{BUCKET}/runs/_staging-test", False, {}, BatchAccountant(), 0.05)
    return JobConfig(files, layouts, partner, dt.date(2026, 11, 24), f"{BUCKET}/runs/_staging-test", plan=plan)


def transform_names(pipeline_proto) -> set[str]:
    return {t.unique_name for t in pipeline_proto.components.transforms.values()}


def user_functions(pipeline_proto) -> dict[str, str]:
    """Step name -> class of each DoFn/CombineFn from this repository, unpickled from the graph."""
    found = {}
    for t in pipeline_proto.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            fn = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn
        elif t.spec.urn == common_urns.composites.COMBINE_PER_KEY.urn:
            fn = beam_runner_api_pb2.CombinePayload.FromString(t.spec.payload).combine_fn
        else:
            continue
        if fn.urn not in (python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN):
            continue
        obj = pickler.loads(fn.payload)
        obj = obj[0] if isinstance(obj, tuple) else obj
        if type(obj).__module__.split(".")[0] in ("beam_pipeline", "transforms"):
            found[t.unique_name] = type(obj).__name__
    return found


@pytest.fixture(scope="module")
def translated(tmp_path_factory):
    image = built_image()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dataflow.IMAGE_ENV, image)
        options = PipelineOptions(CLOUD_ARGS)
        dataflow.prepare(options, "default", "20261124T101500Z-1a2b3c4d", "2026-11-24")
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, job_config(tmp_path_factory.mktemp("df")))
        result = pipeline.run()
    return image, options, result.job


def test_the_whole_graph_reaches_dataflow(translated, tmp_path):
    _, _, job = translated
    local = beam.Pipeline(runner=local_runner())
    build_pipeline(local, job_config(tmp_path))
    local_proto = local.to_runner_api()
    # Dataflow swaps in its own reshuffle inside Beam's Create; every other transform keeps its name
    expected = {n for n in transform_names(local_proto) if not n.startswith("ref_") and "/MaybeReshuffle" not in n}
    got = transform_names(job.proto_pipeline)
    assert expected - got == set()
    # our DoFns and CombineFn travel pickled; they load back as the same steps
    assert user_functions(job.proto_pipeline) == user_functions(local_proto)
    assert {"ParseBlocksFn", "CombineMemberShardsFn", "CallEndpointsFn", "ToResultRowFn", "FinalizeFn"} <= set(
        user_functions(job.proto_pipeline).values())
    for step in ("ReadExports", "Parse", "MemberFeatures", "DecideOffers/CallEndpoints/Call", "ToResultRow",
                 "WriteResults", "WriteDeadLetters", "Finalize/Count/Combine", "Finalize/Finalize"):
        assert step in got


def test_workers_run_the_image_that_was_built(translated):
    image, options, job = translated
    envs = job.proto_pipeline.components.environments
    payloads = [e.payload for e in envs.values() if e.urn == "beam:env:docker:v1"]
    assert payloads and all(image.encode() in p for p in payloads)
    assert options.view_as(SetupOptions).setup_file is None  # the package is in the image, nothing staged


def test_job_is_named_for_the_partner_and_run(translated):
    _, _, job = translated
    assert job.proto.name == "lantern-default-20261124t101500z-1a2b3c4d"


def test_every_job_is_labelled_with_partner_run_and_as_of(translated):
    """Labels are what the console, billing export and `gcloud dataflow jobs list --filter` select jobs by."""
    _, _, job = translated
    assert dict(job.proto.labels) == {
        "partner": "default", "run_id": "20261124t101500z-1a2b3c4d", "as_of": "2026-11-24"}


def test_labels_the_user_gave_are_kept():
    options = PipelineOptions([*CLOUD_ARGS, "--labels=team=loyalty", "--labels=partner=acme-eu"])
    dataflow.prepare(options, "acme_rewards", "20261124T101500Z-1a2b3c4d", "2026-11-24")
    assert options.view_as(GoogleCloudOptions).labels == [
        "team=loyalty", "partner=acme-eu", "run_id=20261124t101500z-1a2b3c4d", "as_of=2026-11-24"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", dataflow.job_name("legacy_export", "X_Y" * 40))


def test_without_an_image_the_package_is_staged_from_setup_py(monkeypatch):
    monkeypatch.delenv(dataflow.IMAGE_ENV, raising=False)
    options = PipelineOptions(CLOUD_ARGS)
    dataflow.prepare(options, "default", "r1")
    assert options.view_as(WorkerOptions).sdk_container_image is None
    assert options.view_as(SetupOptions).setup_file == str(ROOT / "setup.py")


def test_dockerfile_gives_the_image_its_name():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG LANTERN_IMAGE", text, re.M)
    assert re.search(r"ENV LANTERN_IMAGE=\$\{LANTERN_IMAGE\}", text)
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py" in text


def test_dockerfile_copies_every_installed_package():
    """The image installs the package from its own copy: a package missing there fails on workers only."""
    text = (ROOT / "Dockerfile").read_text()
    packages = re.search(r'find_packages\(include=\[(.*?)\]', (ROOT / "setup.py").read_text()).group(1)
    for name in re.findall(r'"(\w+)"', packages):
        assert f"COPY {name}/ {name}/" in text, f"Dockerfile does not copy {name}/"


def launcher_argv(export: Path, output: Path) -> list[str]:
    """What the Flex Template launcher runs main.py with: the template parameters and --template_location."""
    return [
        f"--input={export}", f"--output={output}", "--partner=default", "--as_of=2026-11-24",
        "--endpoint_url=https://ml.example.com", "--skip_preflight",
        *[a for a in CLOUD_ARGS if not a.startswith("--runner")],  # the launcher's runner comes implicitly
        f"--template_location={BUCKET}/staging/template_launches/x/job_object",
    ]


@pytest.fixture
def export(tmp_path) -> Path:
    path = tmp_path / "export.csv"
    path.write_text(HEADER + "\nm1,2024-01-01 10:00:00,buy,10,1.5\nm2,,,,\n")
    return path


def test_a_flex_template_launch_submits_and_returns(export, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(dataflow.IMAGE_ENV, built_image())
    caplog.set_level("INFO")
    code, summary = cli.run(launcher_argv(export, tmp_path / "runs" / "2026-11-24"))
    assert code == launch.EXIT_OK
    assert "job submitted from a Flex Template" in caplog.text
    # The job writes there when it runs; the launcher writes only where to find it, for `wait`.
    [record_path] = (tmp_path / "runs").rglob("*.*")
    assert record_path.relative_to(tmp_path / "runs" / "2026-11-24").parts[1] == "job.json"
    record = from_text(record_path.read_text())
    assert summary == record.model_dump(mode="json")  # what the launcher prints: the job and where the run goes
    assert (record.runner, record.detached, record.project, record.region, record.job_id) == (
        "DataflowRunner", True, PROJECT, REGION, None)
    assert record.job_name.startswith("lantern-default-")  # the launcher cannot learn the id: wait finds it by name


def test_a_flex_template_launch_refuses_a_folder_with_an_earlier_run(export, tmp_path, capsys):
    """The launcher cannot wait to publish, so the job writes in place: never over an earlier run."""
    output = tmp_path / "runs" / "2026-11-24"
    (output / "results").mkdir(parents=True)
    (output / "results" / "part-00000.parquet").write_bytes(b"earlier run")
    assert cli.main(launcher_argv(export, output)) == launch.EXIT_USAGE
    assert "already holds a run (results)" in capsys.readouterr().err
    assert (output / "results" / "part-00000.parquet").read_bytes() == b"earlier run"


def test_a_dataflow_launch_refuses_an_endpoint_on_this_machine(export, tmp_path, capsys):
    """Workers call the endpoints: the shipped files' 127.0.0.1 would be each worker itself."""
    argv = [a for a in launcher_argv(export, tmp_path / "runs" / "x") if not a.startswith("--endpoint_url")]
    assert cli.main(argv) == launch.EXIT_USAGE
    err = capsys.readouterr().err
    assert "endpoint http://127.0.0.1:8000 (partner default) is this machine" in err
    assert "--endpoint-url (template parameter endpoint_url)" in err
    assert not (tmp_path / "runs").exists()
