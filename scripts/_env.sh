# Sourced by the scripts in this folder: creates (or reuses) .venv beside the repo and
# installs the project into it whenever pyproject.toml (or this file, which pins pnnx) has
# changed since the last install.
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
PNNX_VERSION=20261020
WANT="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing edetgraph and its dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --no-compile --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --no-compile -e "$ROOT[all]" >&2
    # NCNN's converter without the PyTorch its wheel declares (an ONNX file needs none)
    "$VENV/bin/python" -m pip install -q --no-compile --no-deps "pnnx==$PNNX_VERSION" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
