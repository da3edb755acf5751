#!/usr/bin/env bash
# Set up babybear on a fresh machine: a virtual environment in .venv (unless one is active), torch's CPU build
# first (so no range pulls CUDA wheels), the package with its extras, then the offline models and corpora.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all]"
babybear models install
