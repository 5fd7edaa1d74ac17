"""Joining Ray: the cluster at RAY_ADDRESS (set by `ray job submit` and by scripts/services.sh), or a local one."""

from __future__ import annotations

import os
import re

#: Ray Train's controller polls workers at this interval; its 2 s default costs ~1 s per reported epoch.
TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")}


#: what workers need to reach the stores, and nothing secret: credentials stay in the processes' own environment
#: (a local cluster inherits it; a real cluster gets them from its instance role, service account or a secret
#: mounted into the pods that read)
WORKER_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
              "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_NO_SIGN_REQUEST", "AWS_REQUEST_CHECKSUM_CALCULATION",
              "AWS_RESPONSE_CHECKSUM_VALIDATION")
#: GDAL/CPL settings that carry credentials or can (user:password, headers, cookies, tokens, keys, signed URLs):
#: never forwarded, whatever their exact name
_SECRET_SETTING = re.compile(r"PWD|PASS|AUTH|HEADER|COOKIE|BEARER|TOKEN|KEY|SECRET|CRED|SIGN|SESSION|NETRC|CERT", re.I)


def worker_env() -> dict[str, str]:
    """The variables a local cluster's runtime env carries: store endpoints and GDAL tuning, no credentials."""
    return {k: v for k, v in os.environ.items()
            if k in WORKER_ENV or (k.startswith(("GDAL_", "CPL_", "VSI_")) and not _SECRET_SETTING.search(k))}


#: the state API address for a cluster with no dashboard, whose workers would otherwise look for one. (DeepSalt's
#: trainer no longer starts the actor below, deepsalt/train/run.py ``_trainer_class``; the address still serves any
#: worker that asks the state API.) Ray Train's stock trainer starts a placement-group cleaner per training that asks
#: the state API every second whether the training's controller is alive. In a worker that does not know its cluster's
#: API server, Ray resolves "auto": the record the last ``ray start`` or test cluster left in /tmp/ray, which may name a
#: cluster that is gone (the cleaner then waited 40 s for a dead GCS, and every training's shutdown 12 s for the
#: cleaner: a trivial fit took 24.4-24.8 s, 13.2-13.4 s with this, bench/results/cli_overhead_services_456b6ef.json and
#: cli_overhead_38f074a.json) or another live one, whose API server knows nothing of this training's controller (in a
#: trial the cleaner took it for dead and exited before the training had registered its placement group with it, so it
#: guarded nothing). A refused connection fails at once, and the cleaner stops when asked.
NO_API_SERVER = "http://127.0.0.1:1"


def state_api_env(dashboard_url: str | None = None) -> dict[str, str]:
    """``RAY_API_SERVER_ADDRESS`` for the workers of a cluster DeepSalt (or its tests) starts: its dashboard, or
    ``NO_API_SERVER`` where it has none."""
    return {"RAY_API_SERVER_ADDRESS": dashboard_url or NO_API_SERVER}


def init_ray() -> None:
    """Connect once: to the cluster at RAY_ADDRESS (set by `ray job submit` and scripts/services.sh), else a new local
    instance. Never to whatever ``ray start`` last recorded on this machine: a stale record of a cluster whose
    processes are gone would have Ray retry a dead GCS without end.

    A local cluster gets the S3/GDAL variables, the Train poll interval and its (absent) state API address in its
    runtime env; an existing cluster or job already carries its own (a second runtime env would conflict with the
    job's)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(TRAIN_POLL)
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs = {}
    if address is None:
        kwargs["runtime_env"] = {"env_vars": {**worker_env(), **TRAIN_POLL, **state_api_env()}}
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
