#!/usr/bin/env bash
# The streaming demo: install, start the reference ML service on a free loopback port, replay
# one export as a stream (docs/streaming.md), stop the server (even on failure). The export is
# INPUT (default member_data.csv); OUTPUT (default out/stream) is replaced (--overwrite).
# Other arguments go to the pipeline, e.g. --rate 500 --debounce-seconds 2.
source "$(dirname "$0")/venv.sh"
OUTPUT="${OUTPUT:-out/stream}"
source "$(dirname "$0")/reference_service.sh"
echo "reference ML service on $SERVER_URL (pid $SERVER); replaying ${INPUT:-member_data.csv}"
python -m beam_pipeline --streaming --input "${INPUT:-member_data.csv}" --output "$OUTPUT" --overwrite \
  --endpoint-url "$SERVER_URL" --as-of "${AS_OF:-2026-11-24}" "$@"
