"""Student inference rate against the two limits of the card (or CPU) it runs on, measured in one run.

    .venv/bin/python bench/infer.py --model RUN/bundle [--device cuda] [--out bench/results/infer_gpu.json]

Exactly the call the mapping actors make (``DeepSaltBundle.predict`` with int16 DN, per-scene gain/offset
and covariates, and the dissimilarity index; reflectance is scaled on the device), on synthetic pixels of the bundle's band count:
- ``infer_mpx_s``: deterministic prediction, best over ``--batch-sizes`` (the chosen batch is recorded);
- ``infer_mc_mpx_s``: the same with ``--mc-samples`` MC-dropout passes (the sd the cube stores);
- ``h2d_limit_mpx_s``: host-to-device copy of the same bytes per pixel (int16 DN + float32 covariates);
- ``compute_limit_mpx_s``: the device's measured dense matmul rate (bf16 on CUDA, float32 on CPU) divided
  by the FLOPs per pixel (the model's, counted by ``torch.utils.flop_counter``, plus the dissimilarity index's
  distance to every training site, 2 x n_sites x inputs);
- ``bf16_mpx_s`` (CUDA only): the deterministic rate under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _best_rate(fn, n_px: int, dev, reps: int = 3) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return n_px / best / 1e6


def matmul_tflops(dev) -> tuple[float, str]:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = 8192 if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    reps = 20 if dev.type == "cuda" else 5
    rate = _best_rate(lambda: [a @ b for _ in range(reps)], 1, dev)  # "1 px" per call: rate = calls/s / 1e6
    return 2 * n**3 * reps * rate * 1e6 / 1e12, str(dtype).replace("torch.", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pixels", type=int, default=None, help="pixels per measurement (default 4M on CUDA, 200k on CPU)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--mc-samples", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/infer_gpu.json (CUDA) or infer_cpu.json")
    a = ap.parse_args()

    from deepsalt.models.bundle import DeepSaltBundle

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the mapping actors do
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    n = a.pixels or (4_000_000 if cuda else 200_000)
    batches = a.batch_sizes or ([16384, 65536, 262144, 1048576] if cuda else [4096, 16384, 65536])
    b = DeepSaltBundle.load(a.model).to(dev)
    nb = len(b.band_names)
    rng = np.random.default_rng(0)
    dn = rng.integers(200, 4000, size=(n, nb), dtype=np.int16)  # reflectance 0.02-0.4 at EnMAP's gain 1e-4
    cs = b.scalers["covariates"]
    cov = (cs.shift + cs.scale * rng.random((n, len(cs.shift)))).astype(np.float32)
    gain, offset = np.full((1, nb), 1e-4, np.float32), np.zeros((1, nb), np.float32)
    slot = np.zeros(n, np.int16)

    def run(bs: int, mc: int = 0):
        for i in range(0, n, bs):
            b.predict(dn[i:i + bs], cov[i:i + bs], mc, seed=i, scale=(gain, offset, slot[i:i + bs]), di=True)  # as mapping calls it

    rates = {bs: _best_rate(lambda bs=bs: run(bs), n, dev) for bs in batches}
    best_bs = max(rates, key=rates.get)
    mc_rate = _best_rate(lambda: run(best_bs, a.mc_samples), n, dev, reps=2)
    print(f"infer: {best_bs} px per batch, {rates[best_bs]:.3f} Mpx/s; with {a.mc_samples} MC passes {mc_rate:.3f} Mpx/s", flush=True)
    bf16 = bf16_error = None
    if cuda:
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = _best_rate(lambda: run(best_bs), n, dev)
        except (RuntimeError, torch.AcceleratorError) as e:  # recorded, so that the rest of the run still lands
            bf16_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            torch.cuda.synchronize()

    dn_t = torch.from_numpy(dn)
    cov_t = torch.from_numpy(cov)
    h2d = _best_rate(lambda: (dn_t.to(dev), cov_t.to(dev)) if cuda else (dn_t.clone(), cov_t.clone()), n, dev)

    from torch.utils.flop_counter import FlopCounterMode

    k = min(4096, n)
    x = torch.from_numpy(dn[:k]).to(dev)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            z = b.encoder.encode(b.scalers["enmap"].transform(x.float() * 1e-4))
            b.student(torch.cat([z, b.scalers["covariates"].transform(torch.from_numpy(cov[:k]).to(dev))], 1))
    flops_px = fc.get_total_flops() / k + 2 * b.reference.numel()  # + the DI: a distance to every training site
    tflops, mm_dtype = matmul_tflops(dev)
    compute = tflops * 1e12 / flops_px / 1e6
    limit = min(h2d, compute)

    card = torch.cuda.get_device_name(dev) if cuda else None
    res = {**stamp(card), "device": str(dev), "torch": torch.__version__,
           "pixels": n, "bands": nb, "rate_by_batch_mpx_s": {str(k_): round(v, 4) for k_, v in rates.items()},
           "batch": best_bs, "infer_mpx_s": round(rates[best_bs], 4), "mc_samples": a.mc_samples,
           "infer_mc_mpx_s": round(mc_rate, 4), "bf16_mpx_s": bf16 and round(bf16, 4), "bf16_error": bf16_error,
           "bytes_per_px": dn.itemsize * nb + cov.itemsize * cov.shape[1],
           "h2d_limit_mpx_s": round(h2d, 4), "flops_per_px": round(flops_px),
           "matmul_tflops": round(tflops, 2), "matmul_dtype": mm_dtype, "compute_limit_mpx_s": round(compute, 4),
           "tighter_limit": "h2d" if h2d < compute else "compute", "infer_over_limit": round(rates[best_bs] / limit, 3),
           "goal_infer_over_limit": 0.5}
    out = a.out or REPO / "bench" / "results" / ("infer_gpu.json" if cuda else "infer_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
