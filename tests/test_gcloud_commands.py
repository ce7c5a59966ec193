"""The docs' gcloud commands use only flags gcloud accepts.

``tests/gcloud_flags.json`` records, per gcloud command, the flags its reference page lists
(with the page's address); every ``gcloud`` command in a docs code block must be a recorded
command and use only its flags or gcloud-wide ones. The stub ``gcloud`` that runs
cloudbuild.yaml's steps (tests/cloud_stubs/gcloud) checks the build's commands the same way.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGS = json.loads((ROOT / "tests" / "gcloud_flags.json").read_text())
COMMANDS = {name: set(entry["flags"]) for name, entry in FLAGS.items() if not name.startswith("_")}
RECORDED = {name: entry for name, entry in FLAGS.items() if isinstance(entry, dict)}
GLOBAL = set(FLAGS["_global"]["flags"])
PAGES = sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)


def gcloud_commands(text: str) -> list[list[str]]:
    """Each gcloud command of the page's shell blocks, as words (continuations joined, comments cut)."""
    found = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "gcloud" and (i == 0 or words[i - 1] in ("|", "&&", ";")):
                    end = next((j for j in range(i, len(words)) if words[j] in ("|", "&&", ";")), len(words))
                    found.append(words[i + 1:end])
    return found


def command_name(words: list[str]) -> str | None:
    positional = [w for w in words if not w.startswith("-")]
    matches = [c for c in COMMANDS if positional[:len(c.split())] == c.split()]
    return max(matches, key=len, default=None)


def problems(words: list[str]) -> list[str]:
    name = command_name(words)
    if name is None:
        return [f"gcloud {' '.join(words[:3])}: not in tests/gcloud_flags.json (record it from its reference page)"]
    unknown = [w.split("=", 1)[0] for w in words
               if w.startswith("-") and w.split("=", 1)[0] not in COMMANDS[name] | GLOBAL]
    return [f"gcloud {name}: {flag} is not a flag of this command" for flag in unknown]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_gcloud_command_in_the_docs_uses_flags_gcloud_accepts(page):
    found = [p for words in gcloud_commands(page.read_text()) for p in problems(words)]
    assert not found, f"{page.name}: " + "; ".join(found)


def test_the_deploy_page_is_checked_command_by_command():
    commands = gcloud_commands((ROOT / "docs" / "dataflow.md").read_text())
    names = {command_name(words) for words in commands}
    assert {"builds submit", "dataflow flex-template run", "dataflow jobs cancel", "dataflow jobs drain",
            "compute routers nats create", "storage cp"} <= names
    assert len(commands) > 30


def test_a_wrong_flag_is_caught():
    assert problems(["dataflow", "flex-template", "run", "job", "--template-file-gcs-location=gs://b/t.json",
                     "--paramters=input=x"]) == [
        "gcloud dataflow flex-template run: --paramters is not a flag of this command"]
    assert problems(["dataflow", "jobs", "cancel", "JOB", "--region=europe-west1", "--project=p"]) == []
    assert problems(["dataflow", "jobs", "teleport", "JOB"])[0].startswith("gcloud dataflow jobs teleport: not in")


def test_every_recorded_command_names_its_reference_page():
    for name, entry in RECORDED.items():
        assert entry["source"].startswith("https://cloud.google.com/sdk/gcloud/reference"), name
        if not name.startswith("_"):
            assert entry["source"].endswith("/" + name.replace(" ", "/")), name
