"""A continental pass projected from the measured rates: hours and dollars on N nodes.

    .venv/bin/python bench/projection.py [--nodes 16 64 256] [--out bench/results/projection.json]

Inputs, all recorded in the output:
- measured: ``read_px_s`` and ``end_to_end_px_s`` per core from ``results/map_cpu.json``; the student's
  ``infer_mc_mpx_s`` per GPU from ``results/infer_gpu.json`` when that file exists (it needs a lent GPU);
- assumed (flags; change them to your cluster and prices): pixels and bytes per pass, S3 bandwidth per
  node, cores per node, price per node-hour.
A pass takes the longest of its three stages, which overlap in the streaming pipeline: reading (cores),
S3 transfer (network) and inference (GPUs, or the CPUs' end-to-end rate when no GPU figure exists).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--pixels", type=float, default=8.6e9, help="30 m land pixels of a continental pass (CONUS)")
    ap.add_argument("--tb-per-pass", type=float, default=3.9, help="int16 reflectance read per pass, TB")
    ap.add_argument("--s3-gbit-per-node", type=float, default=10.0, help="assumed sustained S3 read per node, Gbit/s")
    ap.add_argument("--cores-per-node", type=int, default=16)
    ap.add_argument("--gpus-per-node", type=int, default=1)
    ap.add_argument("--usd-per-node-hour", type=float, default=1.0, help="assumed price of one node-hour (CPU or GPU node)")
    ap.add_argument("--out", type=Path, default=RESULTS / "projection.json")
    a = ap.parse_args()

    cpu = json.loads((RESULTS / "map_cpu.json").read_text())
    read_core = cpu["read_px_s"] / cpu["workers"]
    e2e_core = cpu["end_to_end_px_s"] / cpu["workers"]
    gpu_file = RESULTS / "infer_gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.exists() else None
    rows = []
    for n in a.nodes:
        read_h = a.pixels / (read_core * a.cores_per_node * n) / 3600
        s3_h = a.tb_per_pass * 1e12 / (a.s3_gbit_per_node / 8 * 1e9 * n) / 3600
        if gpu:
            infer_h, infer_basis = a.pixels / (gpu["infer_mc_mpx_s"] * 1e6 * a.gpus_per_node * n) / 3600, f"GPU ({gpu['card']})"
        else:
            infer_h, infer_basis = a.pixels / (e2e_core * a.cores_per_node * n) / 3600, "CPU end to end (no GPU figure)"
        hours = max(read_h, s3_h, infer_h)
        rows.append({"nodes": n, "read_h": round(read_h, 3), "s3_h": round(s3_h, 3), "infer_h": round(infer_h, 3),
                     "infer_basis": infer_basis, "pass_h": round(hours, 3),
                     "limited_by": ["read", "s3", "infer"][[read_h, s3_h, infer_h].index(hours)],
                     "usd": round(hours * n * a.usd_per_node_hour, 1)})
    res = {**stamp(),
           "measured": {"read_px_s_per_core": round(read_core), "end_to_end_px_s_per_core": round(e2e_core),
                        "from": "bench/results/map_cpu.json (" + cpu["machine"] + ", " + cpu["date"] + ")",
                        "infer_mc_mpx_s_per_gpu": gpu and gpu["infer_mc_mpx_s"],
                        "gpu_from": gpu and f"bench/results/infer_gpu.json ({gpu['card']}, {gpu['date']})"},
           "assumed": {"pixels": a.pixels, "tb_per_pass": a.tb_per_pass, "s3_gbit_per_node": a.s3_gbit_per_node,
                       "cores_per_node": a.cores_per_node, "gpus_per_node": a.gpus_per_node,
                       "usd_per_node_hour": a.usd_per_node_hour},
           "passes": rows}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
