# Environment for running DeepSalt's services on one machine (source it). Everything stays on loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # else Ray binds and advertises a non-loopback address
export RAY_AUTH_MODE=disabled                # else a local ray.init() turns on token auth and `ray job submit` fails
export RAY_USAGE_STATS_ENABLED=0
export AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED   # S3-compatible servers (moto) reject the new default checksums
export AWS_RESPONSE_CHECKSUM_VALIDATION=WHEN_REQUIRED
export PYTHONUNBUFFERED=1
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.05}  # 2 s default costs ~1 s per reported epoch
# Ray Train's preemption watcher (an actor per training) polls for nodes being drained, as a cloud autoscaler drains one
# before taking it, logs it and tells the workers (ray.train.get_preemption_info, which DeepSalt does not ask); nothing
# drains one machine. Its actors took 19.4 CPU-s of a suite run (bench/results/suite_cpu_xdist2.json).
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=${RAY_TRAIN_ENABLE_PREEMPTION_WATCHER:-0}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

wait_http() {  # wait_http URL SECONDS
  local url=$1 t=${2:-60}
  for _ in $(seq "$t"); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "service at $url did not answer in ${t}s" >&2; return 1
}

wait_log() {  # wait_log FILE TEXT SECONDS: until FILE holds TEXT (as `ray start --block` prints once its head is up)
  local file=$1 text=$2 t=${3:-60}
  for _ in $(seq "$((t * 5))"); do
    grep -qF "$text" "$file" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$file did not say '$text' in ${t}s" >&2; return 1
}
