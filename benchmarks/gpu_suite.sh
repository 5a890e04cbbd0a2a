#!/usr/bin/env bash
# The GPU suite in one command (see benchmarks/gpu_suite.py): on a GPU machine
#     bash benchmarks/gpu_suite.sh --out DIR [--assets gpu_assets]
# and anywhere, on the CPU with tiny sizes:
#     bash benchmarks/gpu_suite.sh --out DIR --dry-run
# Python: $PYTHON, else the project's .venv, else python3 (the GPU image has no `python`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_suite.py "$@"
