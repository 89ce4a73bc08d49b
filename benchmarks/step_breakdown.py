"""What a dense training step of a preset is made of, whether `tpgpt train`'s step adds anything
to the bare step (the two interleaved), and the spread of a finished run's step times.

    python benchmarks/step_breakdown.py [--config shakespeare_char_cpu] [--steps 200]
        [--data_dir data/shakespeare_char] [--summary out/shakespeare_char_cpu/summary.json]
"""
import argparse
import json
import statistics
import time

import torch

from tpgpt.train.config import load_config
from tpgpt.train import Trainer


def breakdown(config: str, data_dir: str, steps: int, warmup: int = 30) -> dict:
    cfg = load_config(config, {"data_dir": data_dir, "out_dir": "/tmp/tpgpt_step_breakdown",
                               "progress": "false", "tensorboard": "false"})
    t = Trainer(cfg, quiet=True, overwrite=True)
    f, m, opt = t.setup.files["train"], t.model, t.optimizer
    parts = {k: [] for k in ("batch", "forward", "backward", "clip", "adamw", "whole",
                             "Trainer.train_step")}
    for i in range(warmup + steps):
        t_ = time.perf_counter()
        t.train_step()  # the loop's own step (lr schedule, counters, accumulation), interleaved
        if i >= warmup:
            parts["Trainer.train_step"].append(1e3 * (time.perf_counter() - t_))
        t0 = time.perf_counter()
        x, y = f.batch(f.random_offsets((1, cfg.batch_size), t.progress.batch_gen)[0])
        t1 = time.perf_counter()
        loss = m(x, y)[1]
        t2 = time.perf_counter()
        loss.backward()
        loss.item()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if i >= warmup:
            for k, a, b in (("batch", t0, t1), ("forward", t1, t2), ("backward", t2, t3),
                            ("clip", t3, t4), ("adamw", t4, t5), ("whole", t0, t5)):
                parts[k].append(1e3 * (b - a))
    return {k: statistics.median(v) for k, v in parts.items()}


def run_spread(summary: str) -> dict:
    """A finished run's iteration times over every iteration (`tpgpt train` records them)."""
    with open(summary) as fh:
        return json.load(fh)["step_ms"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="shakespeare_char_cpu")
    ap.add_argument("--data_dir", default="data/shakespeare_char")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--summary", help="a run's summary.json: the spread of its iteration times")
    a = ap.parse_args()
    print("median ms per part of a dense step:",
          {k: round(v, 2) for k, v in breakdown(a.config, a.data_dir, a.steps).items()})
    if a.summary:
        spread = run_spread(a.summary)
        print("the run's ms per iteration:", {k: round(v, 1) for k, v in spread.items()})
