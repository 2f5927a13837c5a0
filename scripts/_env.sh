# Sourced by the scripts in this folder: creates (or reuses) .venv beside the repo and
# installs the project into it whenever pyproject.toml has changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDETGRAPH_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version)" >&2
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.edetgraph-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing edetgraph and its dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --no-compile --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --no-compile -e "$ROOT[all]" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
