"""Member state around a batch run: the base checked before it (``--incremental-from``), the manifest after it.

Before the pipeline: today's input files are fingerprinted (their checksums go
into the new state's manifest), and with ``--incremental-from PREV`` the base is
checked whole and fit (``transforms.member_state_io.load_base``), of this partner,
not the output folder itself, and holding none of today's files by content.
Every refusal is one line, exit 2, before anything is written, and the base is
only ever read. In the job's last step (``StateAccountant``): the state's members are accounted
for (each has a results row; carried over + updated + new add up to the state,
and carried over + updated to the base) and ``state/_manifest.json`` is written
into the staging folder, to be published with the rest.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from beam_pipeline import launch, outputs
from beam_pipeline.finalize import Accounts
from beam_pipeline.pipeline import DECISIONS_CARRIED, STATE_FACTS, STATE_FILES
from lantern import state_manifest
from lantern.state_manifest import LAYOUT_VERSION, STATE_DIR, FoldedFile, Manifest
from transforms.features import CARRIED_OVER, NEW, STATE_MEMBERS, UPDATED
from transforms.member_state_io import BaseState, checksum, load_base, state_files, write_manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StatePlan:
    """What a run folds into its state: the base (or none, a full run) and today's files with their checksums."""

    base: BaseState | None
    inputs: tuple[tuple[str, int, str, int | None], ...]  # (path, size, checksum, GCS generation)

    @property
    def base_paths(self) -> tuple[str, ...]:
        return self.base.paths if self.base else ()

    @property
    def base_bytes(self) -> int:
        """The base state's size: it joins the shuffle, so it counts toward the shard count as input does."""
        return sum(f.size_bytes for f in self.base.manifest.files) if self.base else 0


def plan(files: Iterable[tuple], partner: str, output: str, incremental_from: str | None) -> StatePlan:
    """Today's files (path, size and, on Cloud Storage, the generation matched at launch) fingerprinted and,
    with a base, every check a base must pass (ConfigError, exit 2)."""
    inputs = tuple((f[0], f[1], checksum(f[0]), f[2] if len(f) > 2 else None) for f in files)
    if not incremental_from:
        return StatePlan(None, inputs)
    folder = launch.absolute(incremental_from)
    base = load_base(folder)
    state_manifest.check_partner(incremental_from, base.manifest, partner)
    if launch.absolute(output).rstrip("/") == folder.rstrip("/"):
        raise state_manifest.refusal(incremental_from, "--output must be a new folder: the base is never written")
    state_manifest.check_not_folded(incremental_from, base.manifest, [(path, digest) for path, _, digest, _ in inputs])
    log.info("folding %d file(s) into the state of run %s (%s): %d members, %d input file(s) folded so far",
             len(inputs), base.manifest.run_id, folder, base.manifest.members, len(base.manifest.inputs))
    return StatePlan(base, inputs)


def state_summary(counts: Mapping[str, int], state_rows: int, members: int, transactions: int, state: StatePlan,
                  decisions_carried: int | None = None) -> tuple[dict, list[str]]:
    """run.json's ``state``, and what does not add up: every member of the state has a results row,
    and carried over + updated + new add up to the state (carried over + updated to the base)."""
    base = state.base.manifest if state.base else None
    summary = {
        "members": counts.get(STATE_MEMBERS, 0),
        "members_carried_over": counts.get(CARRIED_OVER, 0),
        "members_updated": counts.get(UPDATED, 0),
        "members_new": counts.get(NEW, 0),
        "transactions": (base.transactions if base else 0) + transactions,
        "inputs_folded": (len(base.inputs) if base else 0) + len(state.inputs),
        "layout_version": LAYOUT_VERSION,
    }
    if decisions_carried is not None:
        summary["members_decision_carried_over"] = decisions_carried
    problems = []
    if not summary["members"] == state_rows == members:
        problems.append(f"{summary['members']} members in the state, {state_rows} state rows written, "
                        f"{members} results rows")
    if summary["members_carried_over"] + summary["members_updated"] + summary["members_new"] != summary["members"]:
        problems.append(f"carried over {summary['members_carried_over']} + updated {summary['members_updated']} + "
                        f"new {summary['members_new']} != {summary['members']} members in the state")
    if base is not None and summary["members_carried_over"] + summary["members_updated"] != base.members:
        problems.append(f"carried over {summary['members_carried_over']} + updated {summary['members_updated']} "
                        f"!= {base.members} members of the base state")
    return summary, problems


def write_state_manifest(staging: str, run_id: str, as_of: str, partner: str, summary: dict,
                         state: StatePlan) -> Manifest:
    """``state/_manifest.json`` of the state the run staged: its files, the base's inputs and today's."""
    folder = outputs.join(staging, STATE_DIR)
    base = state.base.manifest if state.base else None
    today = tuple(FoldedFile(path, size, digest, run_id, generation) for path, size, digest, generation in state.inputs)
    manifest = Manifest(run_id=run_id, as_of=as_of, partner=partner, layout_version=LAYOUT_VERSION,
                        members=summary["members"], transactions=summary["transactions"],
                        files=state_files(folder), inputs=(*(base.inputs if base else ()), *today),
                        base_run_id=base.run_id if base else None)
    write_manifest(folder, manifest)
    return manifest


class StateAccountant:
    """The batch accountant, and the member state's: run.json's ``state``, its checks, and the state's
    manifest, written into the staging folder as the run is accounted for (so before it is published).

    Runs in the job's last step (``beam_pipeline.finalize``), which may run again: the manifest is
    then written again, the same.
    """

    def __init__(self, inner, state: StatePlan, run_id: str, as_of: str, partner: str, staging: str):
        self._inner = inner
        self._state = state
        self._run_id = run_id
        self._as_of = as_of
        self._partner = partner
        self._staging = staging

    @property
    def steps(self):
        return self._inner.steps

    def account(self, facts: Mapping[str, Any], written: Mapping[str, int]) -> Accounts:
        accounts = self._inner.account(facts, written)
        acc = accounts.accounting
        summary, problems = state_summary(facts.get(STATE_FACTS, {}), written.get(STATE_FILES, 0), acc["members"],
                                          acc["transactions"], self._state, facts.get(DECISIONS_CARRIED))
        accounts.problems.extend(problems)
        accounts.fields["state"] = summary
        if not accounts.problems:
            write_state_manifest(self._staging, self._run_id, self._as_of, self._partner, summary, self._state)
        return accounts
