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

A second source, another serving stack on other GPUs, nothing fitted to it: NVIDIA NeMo
Framework's Llama-2 inference table (TensorRT-LLM engines; its user guide, Performance,
Llama 2): Llama-2-7B at batch 1, 128-token prompt, 20 new tokens, average latency on 1-8 A100
80GB SXM4 and H100 80GB HBM3. Predicted with the A100 above (gpt-fast's) and, for the H100,
the datasheet H100 and one with gpt-fast's A100 ratios carried over (the bandwidth fraction
1,700 / 2,039 and 54 us a layer): an assumption, said as one.

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
NEMO_SOURCE = ("NVIDIA NeMo Framework user guide, Performance, Llama 2 inference table "
               "(TensorRT-LLM), batch 1")
NEMO = [("A100", 1, 234.0), ("A100", 2, 171.7), ("A100", 4, 143.7), ("A100", 8, 136.5),
        ("H100", 1, 153.8), ("H100", 2, 128.6), ("H100", 4, 107.4), ("H100", 8, 97.6)]
NEMO_PROMPT, NEMO_NEW = 128, 20


def generation_s(config, tp, device, ic, prompt=PROMPT, new=NEW) -> float:
    """Predicted prefill + (new - 1) decode steps at batch 1, bf16, every sync on."""
    return predict_generation(config, SyncPlan.parse("tp", config.n_layer), tp=tp, batch=1,
                              prompt_len=prompt, new_tokens=new, vocab_parallel=False,
                              dtype_bytes=2, device=device, ic=ic)["generation_s"]


def tokens_per_s(config, tp, device, ic) -> float:
    return NEW / generation_s(config, tp, device, ic)


def fit_layer_overhead(dev, ic, measured_s: float):
    """`dev` with the per-layer fixed cost that makes the tp=1 NeMo row exact (the prediction
    is linear in it)."""
    config = SHAPES["Llama-2-7B"]
    at = [generation_s(config, 1, dataclasses.replace(dev, layer_overhead_s=o), ic,
                       NEMO_PROMPT, NEMO_NEW) for o in (0.0, 1e-4)]
    o = 1e-4 * (measured_s - at[0]) / (at[1] - at[0])
    return dataclasses.replace(dev, name=f"{dev.name}, {o * 1e6:.0f} us a layer",
                               layer_overhead_s=o)


def nemo_lines(a100) -> list[str]:
    """The second source: predicted against NeMo's measured latency (ms), nothing fitted."""
    h100 = DEVICES["h100-sxm"]
    ratio = DEVICES["a100-sxm-330w"].mem_bandwidth_Bps / DEVICES["a100-sxm"].mem_bandwidth_Bps
    h100_like = dataclasses.replace(h100, name="h100 as gpt-fast's a100",
                                    mem_bandwidth_Bps=h100.mem_bandwidth_Bps * ratio,
                                    layer_overhead_s=a100.layer_overhead_s)
    ic = {"A100": BUILTIN["nvlink-a100"], "H100": BUILTIN["nvlink-h100"]}
    variants = {"A100": {"gpt-fast's A100": (a100, ic["A100"])},
                "H100": {"datasheet H100": (h100, ic["H100"]),
                         "H100 as gpt-fast's A100": (h100_like, ic["H100"])}}
    for gpu, dev in (("A100", a100), ("H100", h100_like)):  # this stack's own fixed cost
        ms1 = next(ms for g, tp, ms in NEMO if g == gpu and tp == 1)
        slow = dataclasses.replace(ic[gpu], oneshot_alpha_s=20e-6)  # NCCL-like small messages
        variants[gpu]["overhead fitted on its tp=1"] = (fit_layer_overhead(
            dev, ic[gpu], ms1 / 1e3), ic[gpu])
        variants[gpu]["fitted, 20 us one-shot step"] = (fit_layer_overhead(
            dev, slow, ms1 / 1e3), slow)
    lines = ["", f"Second source: {NEMO_SOURCE}; Llama-2-7B, {NEMO_PROMPT}-token prompt, "
             f"{NEMO_NEW} new tokens, end-to-end latency (prefill and {NEMO_NEW - 1} decode "
             f"steps). Nothing fitted to it.", "",
             "| GPU | tp | measured ms | predicted ms (error) |", "|---|---|---|---|"]
    errors: dict[str, list[float]] = {}
    for gpu, tp, ms in NEMO:
        cells = []
        for name, (dev, link) in variants[gpu].items():
            pred = 1e3 * generation_s(SHAPES["Llama-2-7B"], tp, dev, link, NEMO_PROMPT,
                                      NEMO_NEW)
            if not ("fitted" in name and tp == 1):  # a fitted row is not a test
                errors.setdefault(f"{gpu}: {name}", []).append(pred / ms - 1)
            label = name if "fitted" not in name else \
                f"{dev.layer_overhead_s * 1e6:.0f} us a layer, fitted" + \
                (", 20 us one-shot step" if "20 us" in name else "")
            cells.append(f"{label}: {pred:.1f} ({pred / ms - 1:+.1%})")
        lines.append(f"| {gpu} | {tp} | {ms:.1f} | " + "; ".join(cells) + " |")
    lines += [""] + [f"{name}: mean |error| {sum(map(abs, e)) / len(e):.1%}, worst "
                     f"{max(e, key=abs):+.1%}" for name, e in errors.items()]
    return lines


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
    lines += nemo_lines(model_dev)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
