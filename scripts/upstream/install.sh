#!/usr/bin/env bash
# Create (once, cached outside the clone) a Python 3.12 venv with the released atdata the
# compatibility tests drive (tests/test_upstream.py); prints the venv's python on stdout.
# Keyed by a hash of requirements.txt + constraints.txt, so a second run costs nothing. Progress: stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEY="$(cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -c1-12)"
VENV="${ATDATA_UPSTREAM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/atdata-async/upstream-$KEY}"
log() { echo "[upstream-install] $*" >&2; }

if [[ -f "$VENV/.installed" ]]; then echo "$VENV/bin/python"; exit 0; fi

find_python312() {
  local candidate
  for candidate in "${ATDATA_UPSTREAM_PYTHON:-}" python3.12; do
    [[ -n "$candidate" ]] || continue
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [[ -f "$VENV/.installed" ]]; then echo "$VENV/bin/python"; exit 0; fi
if ! PY312="$(find_python312)"; then
  log "no Python 3.12 found (atdata 0.7 needs >= 3.12): looked for python3.12 on PATH and"
  log "under ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12*; install one (pyenv install 3.12,"
  log "apt-get install python3.12) or point ATDATA_UPSTREAM_PYTHON at one"
  exit 1
fi
log "creating $VENV with $("$PY312" --version) and installing atdata (once, ~5 min)"
rm -rf "$VENV"
"$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" -c "$HERE/constraints.txt" >&2
"$VENV/bin/python" -c 'import atdata, atdata.atmosphere' >&2
touch "$VENV/.installed"
log "installed"
echo "$VENV/bin/python"
