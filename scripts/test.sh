#!/usr/bin/env bash
# Command 2 of the README (and what .ci/run calls): install test dependencies, run every test.
EXTRAS=test source "$(dirname "$0")/venv.sh"
python -m pytest "$@"
