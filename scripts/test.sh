#!/usr/bin/env bash
# Command 2 of the README (and what .ci/run calls): install test dependencies, run every test.
# The `dataflow` extra (apache-beam[gcp]) is installed so the Dataflow translation test always
# runs here; LANTERN_REQUIRE_DATAFLOW makes that test fail, not skip, if the extra is missing.
EXTRAS=test,dataflow source "$(dirname "$0")/venv.sh"
export LANTERN_REQUIRE_DATAFLOW=1
python -m pytest "$@"
