#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the test services (scripts/services.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k stac
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh .venv/bin/python -m pytest -q --durations=20 "$@"
