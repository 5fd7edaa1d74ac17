#!/usr/bin/env bash
# Usage: scripts/services.sh COMMAND...
# Builds a tiny synthetic world, starts the services the tests use on loopback, runs COMMAND with their
# addresses in the environment, then stops exactly the processes it started (by PID), whatever COMMAND did.
#   moto S3 server      -> AWS_ENDPOINT_URL, AWS_S3_ENDPOINT (GDAL)
#   rustac STAC API     -> DEEPSALT_TEST_STAC_URL (serving the world's items)
#   local Ray head(s)   -> RAY_ADDRESS (and one per pytest-xdist worker: DEEPSALT_TEST_RAY_ADDRESSES)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/local_env.sh
. .venv/bin/activate
WORK=$(mktemp -d -t deepsalt-services.XXXXXX)
PIDS=()
# Stop exactly what we started: each service and all its descendants (Ray's GCS, raylet, agents and
# workers; some of those start their own sessions, so a process-group kill alone would miss them).
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
# SIGKILL at once: nothing these services hold outlives $WORK, removed here, so a graceful stop buys nothing (with
# SIGTERM first, `ray start --block` outlived a 4 s grace on every run, 4.3 s of every suite's teardown).
cleanup() {
  local all=() pid
  for pid in "${PIDS[@]}"; do all+=("$pid" $(descendants "$pid")); done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # reap our own background jobs quietly: bash would otherwise print "Killed" for `ray start --block` on every run
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

S3_PORT=$(free_port)
setsid moto_server -H 127.0.0.1 -p "$S3_PORT" > "$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export AWS_S3_ENDPOINT="127.0.0.1:$S3_PORT" AWS_HTTPS=NO AWS_VIRTUAL_HOSTING=FALSE AWS_REGION=us-east-1

# One Ray head per pytest-xdist worker (DEEPSALT_TEST_WORKERS: 2 from scripts/test.sh, 1 when unset): jobs of two tests on one 2-CPU cluster
# can starve each other (one's actors hold every CPU its reads wait for); tests/conftest.py gives worker gwK the K-th.
# No dashboard: no test reaches these heads through it (the `ray job submit` test starts a head with one,
# tests/conftest.py `ray_head`), and an idle head with its dashboard took 6.87 CPU-s in 120 s, one without 3.45 (the
# dashboard's module processes; 2026-12-07, each head's processes sampled from /proc side by side). The dashboard
# agent still runs, and its HTTP port (the job agent) is a fixed 52365 unless given, so every head gets its own; so
# does the Ray client server (a fixed 10001).
ADDRS=()
for k in $(seq 0 $((${DEEPSALT_TEST_WORKERS:-1} - 1))); do
  RAY_PORT=$(free_port)
  # no log monitor: it tails every worker's log file to push lines to drivers, which DeepSalt's drivers do not take
  # (log_to_driver=False), and as the suite's jobs add files it took 49.5 CPU-s of a 1,169 s suite run (2026-12-07,
  # sampled from /proc as bench/suite_cpu.py does)
  # RAY_API_SERVER_ADDRESS: no state API here, said to its workers (deepsalt/raycluster.py NO_API_SERVER: else a worker
  # that asks the state API, as Ray Train's stock placement-group cleaner did, looks one up from a stale /tmp/ray record)
  RAY_API_SERVER_ADDRESS=http://127.0.0.1:1 setsid ray start --head --block --num-cpus=2 --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
    --dashboard-agent-listen-port="$(free_port)" --ray-client-server-port="$(free_port)" \
    --include-dashboard=false --include-log-monitor=False --disable-usage-stats --temp-dir="$WORK/ray$k" > "$WORK/ray$k.log" 2>&1 &
  PIDS+=($!)
  ADDRS+=("127.0.0.1:$RAY_PORT")
done
export RAY_ADDRESS="${ADDRS[0]}" DEEPSALT_TEST_RAY_ADDRESSES=$(IFS=,; echo "${ADDRS[*]}")

# the world is built while the servers above start (the tiny world takes ~20 s; Ray's heads ~8 s of it)
deepsalt world --preset tiny --seed 7 --deliveries --out "$WORK/world" > "$WORK/world.log"
export DEEPSALT_TEST_WORLD="$WORK/world"

STAC_PORT=$(free_port)
# rustac resolves a collection's item links against its own working folder, so it gets the collection without
# them, and the items (absolute hrefs) from items.json
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["links"] = [l for l in d["links"] if l["rel"] not in ("item", "child")]; json.dump(d, open(sys.argv[2], "w"))' \
  "$WORK/world/stac/collection.json" "$WORK/collection.json"
setsid rustac serve --addr "127.0.0.1:$STAC_PORT" "$WORK/collection.json" "$WORK/world/stac/items.json" > "$WORK/stac.log" 2>&1 &
PIDS+=($!)
export DEEPSALT_TEST_STAC_URL="http://127.0.0.1:$STAC_PORT"

wait_http "$AWS_ENDPOINT_URL" 60
wait_http "$DEEPSALT_TEST_STAC_URL" 60
for k in "${!ADDRS[@]}"; do  # `ray start --block` says so once every process of the head is up
  wait_log "$WORK/ray$k.log" "will now block forever" 120 || { cat "$WORK/ray$k.log"; exit 1; }
done
echo "services: S3 $AWS_ENDPOINT_URL, STAC $DEEPSALT_TEST_STAC_URL, Ray $DEEPSALT_TEST_RAY_ADDRESSES"
set +e
"$@"
rc=$?
set -e
exit $rc
