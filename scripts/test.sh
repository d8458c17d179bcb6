#!/usr/bin/env bash
# Run the checks and the whole test suite (root tiers need root: run with sudo).
# Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
