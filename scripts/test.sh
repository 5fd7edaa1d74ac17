#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the test services (scripts/services.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k stac
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The suite's processes may write byte-code: scripts/setup.sh compiles what DeepSalt imports, and what it leaves out (the
# test tools, moto, parts of Ray's daemons) is then compiled once, not in every process that imports it
unset PYTHONDONTWRITEBYTECODE
# Two pytest-xdist workers by default (DEEPSALT_TEST_WORKERS=1: one process), each with its own Ray head, an idle one
# taking queued tests from the other (worksteal); tests/conftest.py orders the tests heaviest first from
# tests/durations.json and keeps torch in each test process to one thread; what several tests build is built once
# under a file lock (tests/conftest.py `shared`). On 2026-12-07's VM the suite took 690 s in one process, 571 s in two
# before the ordering and the one thread, and 503-520 s in two with them from a fresh clone (.ci/run: 9 min 41 s and 9 min 58 s).
export DEEPSALT_TEST_WORKERS=${DEEPSALT_TEST_WORKERS:-2}
parallel=()
[ "$DEEPSALT_TEST_WORKERS" -gt 1 ] && parallel=(-n "$DEEPSALT_TEST_WORKERS" --dist worksteal)
bash scripts/services.sh .venv/bin/python -m pytest -q --durations=20 "${parallel[@]}" "$@"
