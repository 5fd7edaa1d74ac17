"""What ``scripts/setup.sh`` costs on a fresh clone, the first step of ``.ci/run`` and of the demo: each revision given is
cloned into a temporary folder and set up there, with uv's cache emptied first (``cold``: uv downloads from the
package registry) and then kept (``warm``); wall seconds and the machine's busy CPU-s (/proc/stat) meanwhile.

    .venv/bin/python bench/setup_time.py [--revs 888f2cb HEAD] [--out bench/results/setup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]


def busy_cpu_s() -> float:
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions of this repository to set up")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "setup.json"))
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="setup-time-") as tmp:
        for rev in a.revs:
            sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
            cache = Path(tmp) / "uv-cache"
            shutil.rmtree(cache, ignore_errors=True)
            for uv_cache in ("cold", "warm"):
                clone = Path(tmp) / f"{sha}-{uv_cache}"
                subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
                subprocess.run(["git", "checkout", "-q", sha], cwd=clone, check=True)
                env = {**os.environ, "UV_CACHE_DIR": str(cache)}
                b, t = busy_cpu_s(), time.time()
                r = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True)
                run = {"rev": sha, "uv_cache": uv_cache, "rc": r.returncode, "wall_s": round(time.time() - t, 1),
                       "busy_cpu_s": round(busy_cpu_s() - b, 1), "last_line": (r.stdout.strip().splitlines() or [""])[-1]}
                runs.append(run)
                print(json.dumps(run), flush=True)
                shutil.rmtree(clone, ignore_errors=True)
    res = {**stamp(), "what": "bash scripts/setup.sh on a fresh clone of each revision, uv's cache emptied (cold) then "
           "kept (warm); pip's own cache as the machine has it", "runs": runs}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
