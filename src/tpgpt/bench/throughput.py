"""`tpgpt bench throughput`: dense against simulated tp=2 and tp=4 training steps, one process,
on the CPU or one GPU, in float32 or bfloat16 autocast, eager or torch.compile'd; with the
device's measured matmul peak, the model FLOPs utilisation (MFU) of each.

Under torch.compile a step is one graph, the simulated model's collectives included (the
counter records nothing inside a graph: comm/tp_comm.py)."""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch

from ..model import GPTConfig
from .hf_reference import hf_name, hf_reference
from .timing import check_out, time_interleaved, write_results

THROUGHPUT_SHAPES = {
    # nanoGPT's CPU Shakespeare recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12
    "cpu-preset": (GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128), 12),
    # a 12-layer model that fits a CPU benchmark: 12 heads, 384 wide, block 128, batch 8
    "12-layer": (GPTConfig(block_size=128, vocab_size=512, n_layer=12, n_head=12, n_embd=384), 8),
    # GPT-2 small (124M) at nanoGPT's padded vocabulary, for one GPU: block 1024, batch 8
    # the Llama preset (llama_char_cpu): 8 query heads on 2 KV heads, SwiGLU 352, block 64
    "llama-cpu": (GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=8, n_embd=128,
                            bias=False, family="llama", n_kv_head=2, intermediate_size=352,
                            activation="silu"), 12),
    "gpt2-small": (GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12,
                             n_embd=768), 8),
    # a Llama-shaped ~150M beside it, for one GPU: 12 layers, 768 wide, 12 query heads on 4 KV
    # heads, SwiGLU 2560, vocabulary 32000, untied head; block 1024, batch 8
    "llama-150m": (GPTConfig(block_size=1024, vocab_size=32000, n_layer=12, n_head=12,
                             n_embd=768, bias=False, family="llama", n_kv_head=4,
                             intermediate_size=2560, activation="silu", tie_embeddings=False), 8),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                       repeats: int = 10, budget_s: float = 2.0) -> float:
    """The device's attainable matmul rate: the best of `repeats` n x n x n products (n = 8192
    on a GPU, 1024 on a CPU), the denominator of MFU here (a measured, not a datasheet, peak).
    Where one product is slow (bfloat16 on a CPU without bf16 units takes seconds) it stops
    after three once `budget_s` is spent: the best of three is already the rate."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best, spent = float("inf"), 0.0
    for i in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if i >= 2 and spent > budget_s:
            break
    return 2 * n ** 3 / best / 1e12


def hf_key(config) -> str:
    return f"HF transformers {hf_name(config)} (dense)"


def _train_step_fn(model, device: torch.device, dtype: torch.dtype, hf: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype)
    parallel = hasattr(model, "sync_replicated_grads")

    def step(idx, targets):
        with autocast:
            if hf:
                loss = model(input_ids=idx, labels=idx).loss
            else:
                _, loss = model(idx, targets, return_logits=False) if parallel \
                    else model(idx, targets)
        loss.backward()
        if parallel:
            model.sync_replicated_grads()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
    return step


def bench_throughput_shape(name: str, steps: int, warmup: int = 3,
                           device: torch.device = torch.device("cpu"),
                           dtype: torch.dtype = torch.float32, compile: bool = False,
                           peak_tflops: float | None = None, with_hf: bool = True) -> dict:
    """Dense vs simulated tp=2 and tp=4 training steps of one shape, interleaved, in this
    process."""
    from ..analysis.costmodel import train_flops_per_token
    from ..model import GPT
    from ..model.parallel_gpt import ParallelGPT
    cfg, batch = THROUGHPUT_SHAPES[name]
    torch.manual_seed(0)
    dense = GPT(cfg)
    models = {"dense": dense,
              "sim tp=2": ParallelGPT.from_dense(dense, tp=2),
              "sim tp=4": ParallelGPT.from_dense(dense, tp=4)}
    reference = hf_reference(dense) if with_hf else None
    if reference is not None:
        models[hf_key(cfg)] = reference
    if compile:
        # every block (its sync bits differ) of every model is its own compiled frame
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 8 * cfg.n_layer)
    for m in models.values():
        m.to(device)
        if compile:
            # in place (parameter names stay as they are); static shapes: tp differs between
            # the models that share this code, and must not become a symbolic integer
            m.compile(dynamic=False)
    fns = {k: _train_step_fn(m, device, dtype, hf=k == hf_key(cfg)) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g).to(device)
    targets = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g).to(device)
    hf_diff = None
    if reference is not None:  # the same function, checked before it is timed, in float64
        import copy

        from ..analysis.numerics import rel_err
        with torch.no_grad():  # on copies: the timed models stay as they are
            hf_diff = rel_err(copy.deepcopy(reference).double()(input_ids=idx).logits,
                              copy.deepcopy(dense).double()(idx, targets)[0])
    times = time_interleaved({k: (lambda fn=fn: fn(idx, targets)) for k, fn in fns.items()},
                             steps, warmup)
    tokens = batch * cfg.block_size
    flops = train_flops_per_token(cfg, cfg.block_size) * tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shape": name, "hf_name": hf_name(cfg), "tokens_per_step": tokens, "steps": steps,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."), "compile": compile,
            "flops_per_step": flops, "peak_tflops": peak_tflops,
            "hf_logits_rel_diff_float64": hf_diff, "rows": [
                {"model": k, "median_ms": 1e3 * med[k], "mean_ms": 1e3 * statistics.fmean(times[k]),
                 "min_ms": 1e3 * min(times[k]), "max_ms": 1e3 * max(times[k]),
                 "tokens_per_s": tokens / med[k], "throughput_vs_dense": med["dense"] / med[k],
                 "achieved_tflops": flops / med[k] / 1e12,
                 "mfu": flops / med[k] / (peak_tflops * 1e12) if peak_tflops else None}
                for k in fns]}


def format_throughput(r: dict) -> str:
    peak = f", matmul peak {r['peak_tflops']:.3g} TFLOP/s" if r.get("peak_tflops") else ""
    lines = [f"{r['shape']} ({r['tokens_per_step']} tokens/step, {r['steps']} steps; "
             f"{r['device']}, {r['dtype']}{', compiled' if r['compile'] else ''}{peak})",
             "| model | median ms | min-max ms | tokens/s | throughput vs dense | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|"]
    if r.get("hf_logits_rel_diff_float64") is not None:
        lines.insert(1, f"(HF transformers' {r.get('hf_name', 'GPT-2')} holds the dense weights: "
                        f"in float64 their "
                        f"logits differ by {r['hf_logits_rel_diff_float64']:.1e} of their scale"
                        + ("; its RMSNorm computes in float32" if r.get("hf_name", "GPT-2")
                           != "GPT-2" else "") + ")")
    for row in r["rows"]:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
        lines.append(f"| {row['model']} | {row['median_ms']:.1f} | {row['min_ms']:.1f}-"
                     f"{row['max_ms']:.1f} | {row['tokens_per_s']:.0f} | "
                     f"{row['throughput_vs_dense']:.3f}x | {row['achieved_tflops']:.3g} | {mfu} |")
    return "\n".join(lines)


def run_throughput_cli(args) -> int:
    from ..errors import ConfigError
    check_out(args.out, args.overwrite)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine (try --device cpu)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    dtype = DTYPES[args.dtype]
    peak = matmul_peak_tflops(device, dtype)
    results = [bench_throughput_shape(s, args.steps or 30, device=device, dtype=dtype,
                                      compile=args.compile, peak_tflops=peak)
               for s in args.shapes]
    text = "\n\n".join(format_throughput(r) for r in results)
    print(text)
    if args.out:
        paths = write_results(args.out, {"shapes": results}, text, args.overwrite)
        print(f"\nwrote {' and '.join(paths)}")
    return 0
