# Sourced by the other scripts: make (once) and activate the project's virtualenv,
# and install the package with the extras named in $EXTRAS. Nothing is installed by hand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
STAMP=".venv-installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$VIRTUAL_ENV/$STAMP" ] || [ setup.py -nt "$VIRTUAL_ENV/$STAMP" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$VIRTUAL_ENV/$STAMP"
fi
