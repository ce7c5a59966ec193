#!/usr/bin/env bash
# Command 1 of the README: install, start the reference ML service on a free loopback
# port, run the pipeline on one export, stop the server (even on failure), and write
# OUTPUT/report.html. The export is INPUT (default member_data.csv): `INPUT=day2.csv bash
# scripts/run_local.sh`; an --input among the arguments replaces it, never adds to it (one
# export counted twice would double every duplicate member). Other arguments go to the
# pipeline, e.g. --as-of 2026-11-24.
# The demo replaces the run already in its output folder (--overwrite); a plain run refuses to.
EXTRAS=report source "$(dirname "$0")/venv.sh"
OUTPUT="${OUTPUT:-out/local}"
INPUTS=()
ARGS=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --input) [ "$#" -ge 2 ] || { echo "error: --input needs a path" >&2; exit 2; }
             INPUTS+=("$2"); shift 2; continue ;;
    --input=*) INPUTS+=("${1#--input=}") ;;
    --output) OUTPUT="${2:-$OUTPUT}"; ARGS+=("$1" "${2:-}"); shift 2; continue ;;  # the report follows it
    --output=*) OUTPUT="${1#--output=}"; ARGS+=("$1") ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ "${#INPUTS[@]}" -eq 0 ]; then
  INPUTS=("${INPUT:-member_data.csv}")
fi
INPUT_ARGS=()
for path in "${INPUTS[@]}"; do
  INPUT_ARGS+=(--input "$path")
done
source "$(dirname "$0")/reference_service.sh"
echo "reference ML service on $SERVER_URL (pid $SERVER); input: ${INPUTS[*]}"
set +e
python -m beam_pipeline "${INPUT_ARGS[@]}" --output "$OUTPUT" --overwrite \
  --endpoint-url "$SERVER_URL" "${ARGS[@]}"
CODE=$?
set -e
if [ "$CODE" -eq 0 ] || [ "$CODE" -eq 3 ]; then  # 3: published, some members FAILED
  python -m beam_pipeline.report "$OUTPUT"
fi
exit "$CODE"
