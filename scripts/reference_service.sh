# Sourced by the demo scripts: start the reference ML service (app.py) on a free loopback port,
# wait until it answers, and stop it when the script exits (even on failure), keeping the
# script's exit code. Sets PORT and SERVER_URL.
PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SERVER_URL="http://127.0.0.1:$PORT"
SERVER_LOG="$(mktemp -t offer-server.XXXXXX.log)"
python -m uvicorn app:app --host 127.0.0.1 --port "$PORT" --log-level warning >"$SERVER_LOG" 2>&1 &
SERVER=$!
stop_server() {
  local code=$?
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -f "$SERVER_LOG"
  exit "$code"
}
trap stop_server EXIT
for _ in $(seq 1 100); do
  if python -c "import sys,urllib.request; urllib.request.urlopen('$SERVER_URL/', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$SERVER" 2>/dev/null || { echo "the ML server did not start:"; cat "$SERVER_LOG"; exit 1; }
  sleep 0.1
done
