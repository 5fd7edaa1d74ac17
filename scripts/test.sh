#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the test services (scripts/services.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k stac
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One process by default. DEEPSALT_TEST_WORKERS=2 runs two pytest-xdist workers, each with its own Ray head, an idle
# one taking queued tests from the other (worksteal), what several tests build built once under a file lock
# (tests/conftest.py `shared`): on 2 cores that saved 15 % and made three timing-sensitive fault tests fail; on
# 2026-12-06 it ran the suite in 744 s (946-1,028 s in one process) with one failure, `ray job submit` finding no job
# agent on its head for 70 s (test_map.py::test_ray_job_submit_map_region; it also failed so once in one process with
# both cores loaded by a benchmark, and passed when tried again). So one process stays the default.
export DEEPSALT_TEST_WORKERS=${DEEPSALT_TEST_WORKERS:-1}
parallel=()
[ "$DEEPSALT_TEST_WORKERS" -gt 1 ] && parallel=(-n "$DEEPSALT_TEST_WORKERS" --dist worksteal)
bash scripts/services.sh .venv/bin/python -m pytest -q --durations=20 "${parallel[@]}" "$@"
