#!/usr/bin/env bash
# Create .venv and install rmt-deploy with pinned torch/torchvision (see constraints.txt).
# Re-running is cheap: the install is skipped while pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.rmt-deploy-install
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing rmt-deploy and its pinned dependencies (about 2 minutes the first time)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e ".[dev,onnx,effnet,openvino]"
  echo "$want" > "$stamp"
fi
