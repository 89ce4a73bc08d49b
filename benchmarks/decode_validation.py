"""The decode cost model against published measurements: gpt-fast's batch-1 tensor-parallel
decode of Llama-2-7B (tp 1, 2, 4, 8) and Llama-2-70B (tp 2, 4, 8) on 8 A100-80GB (NVLink,
330 W; its README's "Tensor Parallelism" table: 5-token prompt, tokens/s per user; its runs use
PyTorch's intra-node all-reduce, ENABLE_INTRA_NODE_COMM=1).

Three predictions per row:
  before   the datasheet A100 (2,039 GB/s, no fixed cost) on the ring-only NVLink profile this
           project had (3 us per ring step; what `tpgpt plan --interconnect nvlink-h100 --device
           a100-sxm` printed before one-shot all-reduces were modelled)
  model    gpt-fast's A100 (`a100-sxm-330w`: 1,700 GB/s, 54 us per layer fitted on the tp=1
           7B row) on `nvlink-a100` (300 GB/s per direction; all-reduces the fastest of ring,
           one-shot and two-shot, 5 us a one-shot step: unsourced)
  and the same model with the one-shot step at 2, 10 and 20 us, and the per-layer overhead
  at half and 1.5x, for how far the unsourced and fitted numbers move it.

    python benchmarks/decode_validation.py [--out benchmarks/results/decode_validation.md]
"""
from __future__ import annotations

import argparse
import dataclasses

from tpgpt.analysis.costmodel import BUILTIN
from tpgpt.analysis.generation_cost import DEVICES, predict_generation
from tpgpt.comm.plan import SyncPlan
from tpgpt.model import GPTConfig

LLAMA = dict(family="llama", bias=False, activation="silu", tie_embeddings=False,
             block_size=4096, vocab_size=32000, norm_eps=1e-5)
SHAPES = {
    "Llama-2-7B": GPTConfig(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008,
                            **LLAMA),
    "Llama-2-70B": GPTConfig(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8,
                             intermediate_size=28672, **LLAMA),
}
SOURCE = "gpt-fast README (pytorch-labs/gpt-fast), Tensor Parallelism table, 8xA100-80GB 330 W"
MEASURED = [("Llama-2-7B", 1, 104.9), ("Llama-2-7B", 2, 168.84), ("Llama-2-7B", 4, 254.02),
            ("Llama-2-7B", 8, 328.43), ("Llama-2-70B", 2, 21.32), ("Llama-2-70B", 4, 38.01),
            ("Llama-2-70B", 8, 62.50)]
PROMPT, NEW = 5, 200  # gpt-fast's benchmark prompt, and its generate.py's default length


def tokens_per_s(config, tp, device, ic) -> float:
    p = predict_generation(config, SyncPlan.parse("tp", config.n_layer), tp=tp, batch=1,
                           prompt_len=PROMPT, new_tokens=NEW, vocab_parallel=False,
                           dtype_bytes=2, device=device, ic=ic)
    return NEW / p["generation_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    ring_only = dataclasses.replace(BUILTIN["nvlink-h100"], oneshot_alpha_s=0.0)
    model_dev, model_ic = DEVICES["a100-sxm-330w"], BUILTIN["nvlink-a100"]
    variants = {"before": (DEVICES["a100-sxm"], ring_only), "model": (model_dev, model_ic)}
    for a in (2e-6, 10e-6, 20e-6):
        variants[f"one-shot {a * 1e6:.0f} us"] = (model_dev, dataclasses.replace(
            model_ic, oneshot_alpha_s=a))
    for f in (0.5, 1.5):
        variants[f"layer overhead x{f}"] = (dataclasses.replace(
            model_dev, layer_overhead_s=model_dev.layer_overhead_s * f), model_ic)
    rows = []
    for name, tp, measured in MEASURED:
        pred = {k: tokens_per_s(SHAPES[name], tp, d, ic) for k, (d, ic) in variants.items()}
        rows.append((name, tp, measured, pred))
    lines = [f"Measured: {SOURCE}; batch 1, {PROMPT}-token prompt, {NEW} new tokens, bf16. "
             f"Predicted: `tpgpt` generation cost model (tokens/s = {NEW} / predicted "
             f"generation time). Error = predicted / measured - 1.", "",
             "| model | tp | measured tok/s | before: tok/s (error) | model: tok/s (error) |",
             "|---|---|---|---|---|"]
    for name, tp, m, p in rows:
        lines.append(f"| {name} | {tp} | {m:.1f} | {p['before']:.1f} ({p['before'] / m - 1:+.0%})"
                     f" | {p['model']:.1f} ({p['model'] / m - 1:+.1%}) |")
    held = [p["model"] / m - 1 for name, tp, m, p in rows if (name, tp) != ("Llama-2-7B", 1)]
    lines += ["", f"held-out rows (all but the fitted 7B tp=1): mean |error| "
              f"{sum(map(abs, held)) / len(held):.1%}, worst {max(held, key=abs):+.1%}", "",
              "How far the unsourced one-shot latency and the fitted layer overhead move the "
              "model (tokens/s):", "",
              "| model | tp | measured | " + " | ".join(list(variants)[1:]) + " |",
              "|---|---|---|" + "---|" * (len(variants) - 1)]
    for name, tp, m, p in rows:
        lines.append(f"| {name} | {tp} | {m:.1f} | " + " | ".join(
            f"{p[k]:.1f}" for k in list(variants)[1:]) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
