#!/usr/bin/env bash
# Creates .venv with the CPU build of torch (pinned: an unpinned torch pulls a multi-GB CUDA build)
# and installs Tandem with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test,fast]'
# A venv made before the transformers pin may hold Hugging Face's `kernels` distribution, which
# shares its import name with our kernels/ package (see pyproject.toml).
python -m pip uninstall -q -y kernels 2>/dev/null || true
