#!/usr/bin/env bash
# Command 1 of the README: install, start the reference ML service on a free loopback
# port, run the pipeline on member_data.csv, stop the server (even on failure), and
# write OUTPUT/report.html. Extra arguments go to the pipeline, e.g. --as-of 2026-11-24.
# The demo replaces the run already in its output folder (--overwrite); a plain run refuses to.
EXTRAS=report source "$(dirname "$0")/venv.sh"
OUTPUT="${OUTPUT:-out/local}"
ARGS=("$@")
for i in "${!ARGS[@]}"; do  # an --output among the extra arguments wins, for the report too
  case "${ARGS[$i]}" in
    --output) OUTPUT="${ARGS[$((i + 1))]:-$OUTPUT}" ;;
    --output=*) OUTPUT="${ARGS[$i]#--output=}" ;;
  esac
done
PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp -t offer-server.XXXXXX.log)"
python -m uvicorn app:app --host 127.0.0.1 --port "$PORT" --log-level warning >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
  local code=$?
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -f "$LOG"
  exit "$code"
}
trap stop_server EXIT
for _ in $(seq 1 100); do
  if python -c "import sys,urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$SERVER" 2>/dev/null || { echo "the ML server did not start:"; cat "$LOG"; exit 1; }
  sleep 0.1
done
echo "reference ML service on http://127.0.0.1:$PORT (pid $SERVER)"
set +e
python -m beam_pipeline --input member_data.csv --output "$OUTPUT" --overwrite \
  --endpoint-url "http://127.0.0.1:$PORT" "$@"
CODE=$?
set -e
if [ "$CODE" -eq 0 ] || [ "$CODE" -eq 3 ]; then  # 3: published, some members FAILED
  python -m beam_pipeline.report "$OUTPUT"
fi
exit "$CODE"
