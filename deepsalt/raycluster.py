"""Joining Ray: the cluster at RAY_ADDRESS (set by `ray job submit` and by scripts/services.sh), or a local one."""

from __future__ import annotations

import os

#: Ray Train's controller polls workers at this interval; its 2 s default costs ~1 s per reported epoch.
TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")}


def init_ray() -> None:
    """Connect once. A local cluster gets the S3/GDAL variables and the Train poll interval in its runtime env;
    an existing cluster or job already carries its own (a second runtime env would conflict with the job's)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(TRAIN_POLL)
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs = {}
    if address is None:
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GDAL_", "CPL_"))}
        kwargs["runtime_env"] = {"env_vars": {**env, **TRAIN_POLL}}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
