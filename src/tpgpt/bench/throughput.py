"""`tpgpt bench throughput`: dense against simulated tp=2 and tp=4 training steps, one process."""
from __future__ import annotations

import statistics

import torch

from ..model import GPTConfig
from .timing import check_out, time_interleaved, write_results

THROUGHPUT_SHAPES = {
    # nanoGPT's CPU Shakespeare recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12
    "cpu-preset": (GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128), 12),
    # a 12-layer model that fits a CPU benchmark: 12 heads, 384 wide, block 128, batch 8
    "12-layer": (GPTConfig(block_size=128, vocab_size=512, n_layer=12, n_head=12, n_embd=384), 8),
}


def _train_step_fn(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(idx, targets):
        _, loss = model(idx, targets, return_logits=False) \
            if hasattr(model, "sync_replicated_grads") else model(idx, targets)
        loss.backward()
        if hasattr(model, "sync_replicated_grads"):
            model.sync_replicated_grads()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_throughput_shape(name: str, steps: int, warmup: int = 3) -> dict:
    """Dense vs simulated tp=2 and tp=4 training steps of one shape, interleaved, in this process."""
    from ..model import GPT
    from ..parallel_model import ParallelGPT
    cfg, batch = THROUGHPUT_SHAPES[name]
    torch.manual_seed(0)
    dense = GPT(cfg)
    models = {"dense": dense,
              "sim tp=2": ParallelGPT.from_dense(dense, tp=2),
              "sim tp=4": ParallelGPT.from_dense(dense, tp=4)}
    fns = {k: _train_step_fn(m) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
    times = time_interleaved({k: (lambda fn=fn: fn(idx, targets)) for k, fn in fns.items()},
                             steps, warmup)
    tokens = batch * cfg.block_size
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shape": name, "tokens_per_step": tokens, "steps": steps, "rows": [
        {"model": k, "median_ms": 1e3 * med[k], "min_ms": 1e3 * min(times[k]),
         "max_ms": 1e3 * max(times[k]), "tokens_per_s": tokens / med[k],
         "throughput_vs_dense": med["dense"] / med[k]} for k in fns]}


def format_throughput(r: dict) -> str:
    lines = [f"{r['shape']} ({r['tokens_per_step']} tokens/step, {r['steps']} steps)",
             "| model | median ms | min-max ms | tokens/s | throughput vs dense |",
             "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['median_ms']:.1f} | {row['min_ms']:.1f}-"
                     f"{row['max_ms']:.1f} | {row['tokens_per_s']:.0f} | "
                     f"{row['throughput_vs_dense']:.3f}x |")
    return "\n".join(lines)


def run_throughput_cli(args) -> int:
    check_out(args.out, args.overwrite)
    results = [bench_throughput_shape(s, args.steps or 30) for s in args.shapes]
    text = "\n\n".join(format_throughput(r) for r in results)
    print(text)
    if args.out:
        write_results(args.out, {"shapes": results}, text)
    return 0
