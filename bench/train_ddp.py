"""Training throughput of the student on 1 and on N Ray Train DDP workers (GPUs if asked, else CPU workers).

    .venv/bin/python bench/train_ddp.py [--workers 1 2] [--gpu] [--preset benchmark] [--out bench/results/train_ddp.json]

The same Ray Train path as `deepsalt train` (TorchTrainer, ``prepare_model`` -> DistributedDataParallel,
one process per worker, the global batch split across ranks as ``train.stages`` does), on the student of
``--preset`` with random inputs of its real width, so the figure is the framework's and the model's rate,
not the data's. ``samples_per_s`` counts global samples per second over ``--steps`` timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import stamp  # bench/common.py

REPO = Path(__file__).resolve().parents[1]


def _loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from deepsalt.config import TrainConfig
    from deepsalt.train.stages import build_student

    cfg = TrainConfig.for_preset(config["preset"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    torch.manual_seed(rank)
    student = build_student(cfg, "deepsalt")
    model = ray.train.torch.prepare_model(student)
    dev = ray.train.torch.get_device()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    local = max(1, config["batch"] // world)
    x = torch.randn(local, student.in_dim, device=dev)  # latent, covariates, the spectral path
    y = torch.rand(local, device=dev) * 10

    def step():
        opt.zero_grad()
        pred, _ = model(x)
        torch.nn.functional.mse_loss(pred, y).backward()
        opt.step()

    for _ in range(config["warmup"]):
        step()
    if dist.is_initialized():
        dist.barrier()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(config["steps"]):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()
    sec = time.perf_counter() - t
    m = {"samples_per_s": local * world * config["steps"] / sec, "seconds": sec, "local_batch": local,
         "device": str(dev), "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    if rank == 0:  # the figures travel in a checkpoint: Ray Train keeps rank 0's checkpointed report
        with tempfile.TemporaryDirectory() as d:
            Path(d, "throughput.json").write_text(json.dumps(m))
            ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--preset", default="benchmark")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: the preset's student_batch)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_ddp.json")
    a = ap.parse_args()

    import ray.train
    from ray.train.torch import TorchTrainer

    from deepsalt.config import TrainConfig
    from deepsalt.raycluster import init_ray

    a.batch = a.batch or TrainConfig.for_preset(a.preset).student.batch

    init_ray()
    rows = []
    for n in a.workers:
        with tempfile.TemporaryDirectory() as tmp:
            r = TorchTrainer(_loop, train_loop_config={"preset": a.preset, "batch": a.batch, "steps": a.steps, "warmup": a.warmup},
                             scaling_config=ray.train.ScalingConfig(num_workers=n, use_gpu=a.gpu),
                             run_config=ray.train.RunConfig(name=f"ddp{n}", storage_path=tmp)).fit()
            with r.checkpoint.as_directory() as d:
                m = json.loads(Path(d, "throughput.json").read_text())
        rows.append({"workers": n, "samples_per_s": round(m["samples_per_s"], 1), "local_batch": m["local_batch"],
                     "device": m["device"], "card": m["card"]})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["samples_per_s"] / rows[0]["workers"]
    for r in rows:
        r["scaling_efficiency"] = round(r["samples_per_s"] / (base * r["workers"]), 3)
    res = {**stamp(rows[0]["card"]), "preset": a.preset, "global_batch": a.batch,
           "steps": a.steps, "runs": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
