"""cloudbuild.yaml run offline, step by step in order, against stub gcloud and docker (tests/cloud_stubs).

Substitutions are filled in as Cloud Build fills them; each step runs its entrypoint and script
as Cloud Build would, in one shared workspace; the build stops at the first failing step. The
stubs keep Cloud Storage in a folder and play the smoke job's outcome, so these tests show which
outcomes promote the versioned template to the live name, and that none of the bad ones do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / "cloud_stubs"
BUILTINS = {"PROJECT_ID": "acme-prod", "BUILD_ID": "5f0c2d9e-b1", "COMMIT_SHA": "3f2c9a1b7e4d"}
BUCKET = "acme-prod-lantern"
RELEASE = {"_PARTNER": "acme_rewards", "_TAG": "3f2c9a1b7e4d", "_SMOKE_INPUT": "gs://acme-exports/smoke.csv",
           "_SMOKE_ENDPOINT_URL": "https://ml.acme.example",
           "_AUTH_SECRET": "projects/acme-prod/secrets/acme-api-key/versions/3", "_SMOKE_POLL_S": "0"}
VERSIONED = f"{BUCKET}/templates/acme_rewards/3f2c9a1b7e4d.json"
LIVE = f"{BUCKET}/templates/acme_rewards.json"


def config() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def substitutions(overrides: dict[str, str]) -> dict[str, str]:
    """Built-ins, the file's defaults and the build's values, each default's ${...} filled in."""
    subs = {**BUILTINS, **{k: str(v) for k, v in config()["substitutions"].items()}, **overrides}
    for _ in range(5):
        subs = {k: fill(v, subs) for k, v in subs.items()}
    return subs


def fill(text: str, subs: dict[str, str]) -> str:
    """Cloud Build's substitution: ${NAME} and $NAME of known names; $$ is a literal $."""
    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{(\w+)\}|\$([A-Z_][A-Z0-9_]*)",
                  lambda m: subs.get(m.group(1) or m.group(2), m.group(0)), text)
    return text.replace("\0", "$")


_METADATA: dict[tuple[str, ...], str] = {}  # metadata step argv -> the file it wrote


@dataclasses.dataclass
class Build:
    ran: list[str]
    failed: str | None
    output: dict[str, str]
    workspace: Path
    gcs: Path
    calls: list[list[str]]

    def object(self, path: str) -> Path:
        return self.gcs / path


def run_build(tmp_path: Path, scenario: str = "ok", live_before: str | None = None, **overrides: str) -> Build:
    subs = substitutions(overrides)
    workspace, gcs, stubs = tmp_path / "workspace", tmp_path / "gcs", tmp_path / "bin"
    workspace.mkdir()
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, workspace / name)
    shutil.copytree(STUBS, stubs)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    if live_before is not None:
        (gcs / LIVE).parent.mkdir(parents=True)
        (gcs / LIVE).write_text(live_before)
    log = tmp_path / "calls.jsonl"
    log.touch()
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "STUB_GCS": str(gcs), "STUB_LOG": str(log), "STUB_SMOKE": scenario,
           "STUB_FLAGS": str(ROOT / "tests" / "gcloud_flags.json"), "BUILD_ID": subs["BUILD_ID"]}
    ran, output, failed = [], {}, None
    for step in config()["steps"]:
        if step["id"] == "test":
            assert "bash .ci/run" in step["args"][-1]  # CI itself: not run from inside the suite
            ran.append("test")
            continue
        args = [fill(a, subs) for a in step.get("args", [])]
        argv = [step["entrypoint"], *args] if "entrypoint" in step else ["docker", *args]
        assert "entrypoint" in step or step["name"].startswith("gcr.io/cloud-builders/docker:")
        ran.append(step["id"])
        if tuple(argv) in _METADATA:  # the same metadata as an earlier build made: skip the 5 s import of Beam
            out = workspace / args[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_METADATA[tuple(argv)])
            continue
        proc = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=120)
        if step["id"] == "metadata" and proc.returncode == 0:
            _METADATA[tuple(argv)] = (workspace / args[-1]).read_text()
        output[step["id"]] = proc.stdout + proc.stderr
        if proc.returncode != 0:
            failed = step["id"]
            break
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Build(ran, failed, output, workspace, gcs, calls)


ALL_STEPS = ["test", "build", "push", "metadata", "template", "smoke", "verdict", "promote"]


def test_a_release_goes_live_only_after_its_smoke_run_passes(tmp_path):
    build = run_build(tmp_path, live_before="previous release", **RELEASE)
    assert (build.failed, build.ran) == (None, ALL_STEPS), build.output
    assert build.object(LIVE).read_text() == build.object(VERSIONED).read_text()
    assert "passed: 300 rows read, 120 members" in build.output["verdict"]
    gcloud = [c[1:4] for c in build.calls if c[0] == "gcloud"]
    assert gcloud[0] == ["dataflow", "flex-template", "build"]
    assert gcloud[1] == ["dataflow", "flex-template", "run"]
    assert gcloud[-1][:2] == ["storage", "cp"] and build.calls[-1][-1] == f"gs://{LIVE}"  # promotion is last
    launch = next(c for c in build.calls if c[1:4] == ["dataflow", "flex-template", "run"])
    assert f"--template-file-gcs-location=gs://{VERSIONED}" in launch  # the smoke tests the new version

    # the template carries the launch defaults and the image just built
    spec = json.loads(build.object(VERSIONED).read_text())
    assert spec["image"] == "europe-west1-docker.pkg.dev/acme-prod/lantern/offer-pipeline:3f2c9a1b7e4d"
    assert spec["defaultEnvironment"] == {
        "serviceAccountEmail": "lantern-worker@acme-prod.iam.gserviceaccount.com",
        "stagingLocation": f"gs://{BUCKET}/staging", "tempLocation": f"gs://{BUCKET}/tmp",
        "maxWorkers": 8, "machineType": "n2-standard-4",
        "subnetwork": "regions/europe-west1/subnetworks/default", "ipConfiguration": "WORKER_IP_PRIVATE"}
    docker = [c for c in build.calls if c[0] == "docker"]
    assert docker[0][:2] == ["docker", "build"] and docker[1] == ["docker", "push", spec["image"]]


@pytest.mark.parametrize(("scenario", "stops_at", "says"), [
    ("job-failed", "smoke", "ended JOB_STATE_FAILED"),
    ("held-back", "smoke", "exit_code\": 4"),
    ("no-run-json", "smoke", "published no run.json"),
    ("failed-members", "verdict", "exit code 3, not 0"),
    ("accounting-open", "verdict", "accounting does not close"),
])
def test_a_failed_smoke_never_promotes(tmp_path, scenario, stops_at, says):
    build = run_build(tmp_path, scenario, live_before="previous release", **RELEASE)
    assert build.failed == stops_at and "promote" not in build.ran
    assert says in build.output[stops_at]
    assert build.object(LIVE).read_text() == "previous release"
    assert build.object(VERSIONED).is_file()  # built, kept for inspection, never live
    assert not (build.workspace / "build" / "smoke-passed").exists()


def test_a_launch_without_the_partners_production_endpoint_fails_before_going_live(tmp_path):
    """Every shipped partner file names the local reference service, so the template requires endpoint_url."""
    build = run_build(tmp_path, live_before="previous release", **{**RELEASE, "_SMOKE_ENDPOINT_URL": ""})
    assert build.failed == "smoke"
    assert "missing required parameters: endpoint_url" in build.output["smoke"]
    assert build.object(LIVE).read_text() == "previous release"


def test_a_partner_file_that_does_not_load_stops_the_build_before_any_template(tmp_path):
    build = run_build(tmp_path, **{**RELEASE, "_PARTNER": "nobody"})
    assert build.failed == "metadata" and "unknown partner 'nobody'" in build.output["metadata"]
    assert not any(c[:2] == ["gcloud", "dataflow"] for c in build.calls)


def test_without_a_smoke_input_the_version_is_built_and_nothing_goes_live(tmp_path):
    build = run_build(tmp_path, **{**RELEASE, "_SMOKE_INPUT": ""})
    assert (build.failed, build.ran) == (None, ALL_STEPS)
    assert build.object(VERSIONED).is_file() and not build.object(LIVE).exists()
    assert "not promoted" in build.output["promote"]


def test_promote_refuses_without_a_passing_verdict(tmp_path):
    """The promote step checks the verdict's marker itself, whatever ran before it."""
    step = next(s for s in config()["steps"] if s["id"] == "promote")
    script = fill(step["args"][-1], substitutions(RELEASE))
    build = run_build(tmp_path, **{**RELEASE, "_SMOKE_INPUT": ""})  # a workspace and stubs, nothing promoted
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "STUB_GCS": str(build.gcs),
           "STUB_LOG": str(tmp_path / "calls.jsonl"), "STUB_FLAGS": str(ROOT / "tests" / "gcloud_flags.json")}
    proc = subprocess.run(["bash", "-c", script], cwd=build.workspace, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "no passing verdict" in proc.stdout
    assert not build.object(LIVE).exists()


def test_every_build_image_is_pinned_to_an_exact_release():
    for step in config()["steps"]:
        name = step["name"]
        if name == "${_IMAGE}:${_TAG}":
            continue  # the image this build made, at this release's tag
        assert "@sha256:" in name or re.search(r":[^:/]*\d+\.\d+[^:/]*$", name), f"{step['id']}: {name} floats"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG LAUNCHER_TAG=flex_templates_base_image_release_\d{8}_RC\d\d$", dockerfile, re.M)
    assert re.search(r"^ARG BEAM_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Cloud Build's test step has none)")
def test_the_release_tag_is_the_commit_and_says_when_the_tree_differs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "release_tag.sh", repo / "scripts" / "release_tag.sh")
    (repo / ".gitignore").write_text("out/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()

    def tag() -> str:
        return subprocess.run(["bash", str(repo / "scripts" / "release_tag.sh")], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert tag() == commit
    (repo / "out").mkdir()
    (repo / "out" / "ignored.txt").write_text("not uploaded")
    assert tag() == commit
    (repo / "new.py").write_text("uploaded, not committed")
    assert tag() == f"{commit}-dirty"
