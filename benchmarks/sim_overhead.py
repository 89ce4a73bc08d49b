"""Simulated TP costs what the dense model costs: training-step time of dense vs simulated tp.

Each step is forward with loss, backward, (replicated-grad sync) and AdamW. The models run
interleaved, one step each in turn, so the machine's noise hits them alike; medians and ratios
to dense are reported. Usage:

    python benchmarks/sim_overhead.py [--steps 30] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from tpgpt import GPT, GPTConfig, ParallelGPT

SHAPES = {
    # nanoGPT's CPU Shakespeare recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12
    "cpu-preset": (GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128), 12),
    # a 12-layer model that fits a CPU benchmark: 12 heads, 384 wide, block 128, batch 8
    "12-layer": (GPTConfig(block_size=128, vocab_size=512, n_layer=12, n_head=12, n_embd=384), 8),
}


def make_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(idx, targets):
        _, loss = model(idx, targets, return_logits=False) if isinstance(model, ParallelGPT) \
            else model(idx, targets)
        loss.backward()
        if isinstance(model, ParallelGPT):
            model.sync_replicated_grads()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_shape(name: str, steps: int, warmup: int = 3) -> dict:
    cfg, batch = SHAPES[name]
    torch.manual_seed(0)
    dense = GPT(cfg)
    models = {"dense": dense,
              "sim tp=2": ParallelGPT.from_dense(dense, tp=2),
              "sim tp=4": ParallelGPT.from_dense(dense, tp=4)}
    fns = {k: make_step(m) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
    times = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(idx, targets)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    tokens = batch * cfg.block_size
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shape": name, "tokens_per_step": tokens, "steps": steps, "rows": [
        {"model": k, "median_ms": 1e3 * med[k], "min_ms": 1e3 * min(times[k]),
         "max_ms": 1e3 * max(times[k]), "tokens_per_s": tokens / med[k],
         "throughput_vs_dense": med["dense"] / med[k]} for k in fns]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": platform.processor() or
               platform.machine(), "shapes": [bench_shape(s, args.steps) for s in args.shapes]}
    for r in results["shapes"]:
        print(f"\n{r['shape']} ({r['tokens_per_step']} tokens/step, {r['steps']} steps, "
              f"torch {results['torch']}, {results['threads']} threads)")
        print("| model | median ms | min-max ms | tokens/s | throughput vs dense |")
        print("|---|---|---|---|---|")
        for row in r["rows"]:
            print(f"| {row['model']} | {row['median_ms']:.1f} | {row['min_ms']:.1f}-"
                  f"{row['max_ms']:.1f} | {row['tokens_per_s']:.0f} | "
                  f"{row['throughput_vs_dense']:.3f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
