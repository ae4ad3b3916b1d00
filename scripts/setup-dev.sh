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
