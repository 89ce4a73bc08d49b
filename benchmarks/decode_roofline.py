"""Decode against the memory-bandwidth limit: per-token time of a greedy decode step and the
fraction of this machine's read bandwidth (measured in the same run) that it reaches.

One process (dense): per shape, dtype and batch, beside one another on the same weights,
  - tpgpt's dense GPT with its KV cache, eager and compiled (one fullgraph torch.compile graph
    over the static cache; on a GPU also mode "reduce-overhead", CUDA graphs);
  - transformers' `generate` (its GPT2LMHeadModel / LlamaForCausalLM) with its dynamic cache,
    and with its static cache and its own compiled forward (CompileConfig; on a CPU transformers
    compiles only when told to, `_compile_all_devices`);
  - a bare-GEMV line: every weight matrix the step multiplies by (the same shapes and dtype),
    one F.linear after another: what the matmul library reads a weight at, with no model around;
  - the read bandwidth: the best of a few sums over a tensor far larger than the caches.
Bytes a step reads are the generation cost model's (analysis/generation_cost.pass_work: every
weight it multiplies by, the output head, the cached keys and values at the mean context).

Under torchrun (2 processes: gloo on a CPU), the same shapes at tp = world size: each sync plan
of --plans eager and compiled, one token at a time behind a barrier (the slowest rank's time),
and the per-token saving of each dropped forward sync (the slope over the plans).

    python benchmarks/decode_roofline.py --out benchmarks/results/roofline
    torchrun --nproc_per_node 2 benchmarks/decode_roofline.py --out benchmarks/results/roofline_tp2
    python benchmarks/decode_roofline.py --device cpu --quick --out /tmp/roofline  # dry run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from tpgpt.analysis.generation_cost import pass_work
from tpgpt.bench.hf_reference import hf_generate_timed, hf_model
from tpgpt.bench.plans import _slope
from tpgpt.bench.throughput import THROUGHPUT_SHAPES
from tpgpt.model import GPT, GPTConfig
from tpgpt.model.generation import decode

SHAPES = {
    "gpt2-small": THROUGHPUT_SHAPES["gpt2-small"][0],
    # 12 layers, 768 wide, 12 query heads on 4 KV heads, SwiGLU 2560, vocabulary 32000, untied
    "llama-150m": THROUGHPUT_SHAPES["llama-150m"][0],
    # --quick: a few layers, for the dry run
    "tiny-gpt2": GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=128),
    "tiny-llama": GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=128,
                            bias=False, family="llama", n_kv_head=2, intermediate_size=352,
                            activation="silu", tie_embeddings=False),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def read_bandwidth(device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second of the best of `repeats` sums over one float32 tensor of `nbytes`."""
    x = torch.ones(nbytes // 4, device=device)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def gemv_line(dense: GPT, batch: int, repeats: int = 10) -> dict:
    """Every 2-D weight the decode step multiplies by (the head included, the embedding table
    not), one F.linear of a [batch, in] row after another: seconds per pass (median) and the
    bytes read."""
    weights = [p for n, p in dense.named_parameters()
               if p.dim() == 2 and not n.endswith(("wte.weight", "wpe.weight"))]
    head = dense.lm_head.weight
    if not any(w is head for w in weights):
        weights.append(head)
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], device=w.device, dtype=w.dtype)
          for w in weights}
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            sync(head.device)
            t0 = time.perf_counter()
            for w in weights:
                F.linear(xs[w.shape[1]], w)
            sync(head.device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times),
            "bytes": sum(w.numel() * w.element_size() for w in weights)}


def tpgpt_steps(model, prompt, new_tokens: int, compile, barrier=None):
    """(per-token decode-step seconds, the tokens): the prefill and first token left out, and
    under compile the first decode step too (it runs eagerly, recording the collectives)."""
    stamps, toks = [], []
    gen = decode(model, prompt, new_tokens, temperature=0, compile=compile)
    for _ in range(new_tokens):
        if barrier:
            barrier()
        t0 = time.perf_counter()
        _, tok = next(gen)
        sync(tok.device)
        stamps.append(time.perf_counter() - t0)
        toks.append(tok)
    return stamps[2 if compile else 1:], torch.cat(toks, dim=1)


def hf_steps(dense, prompt, new_tokens: int, compile: bool):
    """transformers' greedy generate on `dense`'s weights, timed per token
    (hf_reference.hf_generate_timed): (decode-step seconds after the first two tokens, the
    tokens); `compile`: its static cache and compiled forward."""
    stamps, tokens = hf_generate_timed(dense, prompt, new_tokens, compile=compile)
    d = [b - a for a, b in zip(stamps, stamps[1:])]
    return d[1:], tokens


def median_ms(times) -> float:
    return 1e3 * statistics.median(times)


def dense_rows(name, cfg, dtype, batch, args, device, bw) -> list[dict]:
    torch.manual_seed(0)
    dense = GPT(cfg).to(device=device, dtype=DTYPES[dtype]).eval()
    P, N = args.prompt_len, args.new_tokens
    prompt = torch.randint(0, cfg.vocab_size, (batch, P),
                           generator=torch.Generator().manual_seed(1)).to(device)
    _, nbytes = pass_work(cfg, 1, batch=batch, new=1, keys=P + N / 2, vocab_parallel=False,
                          dtype_bytes=DTYPES[dtype].itemsize)
    runs = {"tpgpt eager": lambda: tpgpt_steps(dense, prompt, N, False),
            "tpgpt compiled": lambda: tpgpt_steps(dense, prompt, N, True)}
    if device.type == "cuda":
        runs["tpgpt compiled, CUDA graphs"] = lambda: tpgpt_steps(dense, prompt, N,
                                                                  "reduce-overhead")
    if hf_model(dense) is not None:
        runs["transformers generate"] = lambda: hf_steps(dense, prompt, N, False)
        runs["transformers generate, static cache, compiled"] = lambda: hf_steps(
            dense, prompt, N, True)
    times = {k: [] for k in runs}
    tokens = {}
    for r in range(1 + args.rounds):  # round 0 compiles and warms up
        for k, fn in runs.items():
            t, tokens[k] = fn()
            if r:
                times[k] += t
    g = gemv_line(dense, batch)
    rows = [{"model": name, "dtype": dtype, "batch": batch, "run": "bare GEMV (F.linear)",
             "ms": 1e3 * g["s"], "bytes": g["bytes"], "read_fraction": g["bytes"] / g["s"] / bw}]
    want = tokens["tpgpt eager"]
    for k, t in times.items():
        s = statistics.median(t)
        rows.append({"model": name, "dtype": dtype, "batch": batch, "run": k, "ms": 1e3 * s,
                     "bytes": nbytes, "read_fraction": nbytes / s / bw,
                     "tokens_equal_eager": bool(torch.equal(tokens[k], want))})
    hf_key = "transformers generate"
    for r in rows:
        if hf_key in times:
            r["speedup_vs_hf"] = median_ms(times[hf_key]) / r["ms"]
    return rows


def tp_rows(name, cfg, dtype, batch, args, device, bw, world) -> list[dict]:
    import torch.distributed as dist
    from tpgpt.comm.distributed import DistributedComm
    from tpgpt.comm.plan import SyncPlan
    from tpgpt.model.parallel_gpt import ParallelGPT
    torch.manual_seed(0)
    dense = GPT(cfg).to(device=device, dtype=DTYPES[dtype]).eval()
    P, N = args.prompt_len, args.new_tokens
    prompt = torch.randint(0, cfg.vocab_size, (batch, P),
                           generator=torch.Generator().manual_seed(1)).to(device)
    _, nbytes = pass_work(cfg, world, batch=batch, new=1, keys=P + N / 2,
                          vocab_parallel=False, dtype_bytes=DTYPES[dtype].itemsize)
    models = {p: ParallelGPT.from_dense(dense, tp=world, sync=p,
                                        comm=DistributedComm(world)).eval() for p in args.plans}
    times = {(p, c): [] for p in args.plans for c in (False, True)}
    tokens = {}
    for r in range(1 + args.rounds):
        for (p, c) in times:
            t, tokens[p, c] = tpgpt_steps(models[p], prompt, N, c, barrier=dist.barrier)
            if r:
                times[p, c] += t
    rows = []
    for (p, c), t in times.items():
        # the slowest rank's median step
        mine = torch.tensor(statistics.median(t))
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        s = float(mine)
        rows.append({"model": name, "dtype": dtype, "batch": batch,
                     "run": f"tp={world} {p}, {'compiled' if c else 'eager'}", "plan": p,
                     "compiled": c, "ms": 1e3 * s, "bytes": nbytes,
                     "read_fraction": nbytes / s / bw,
                     "forward_syncs": SyncPlan.parse(p, cfg.n_layer).forward_syncs(world),
                     "tokens_equal_eager": bool(torch.equal(tokens[p, c], tokens[p, False]))})
    for c in (False, True):
        rs = [r for r in rows if r["compiled"] == c]
        xs, ys = [r["forward_syncs"] for r in rs], [r["ms"] for r in rs]
        if len(set(xs)) > 1:
            for r in rs:
                r["ms_per_forward_sync"] = _slope(xs, ys)
    return rows


def table(rows: list[dict], bw: float, machine: str) -> str:
    lines = [f"measured read bandwidth {bw / 1e9:.1f} GB/s ({machine})", "",
             "| model | dtype | batch | run | ms/token | MB read | % of read bandwidth | "
             "vs transformers generate | tokens = eager |", "|" + "---|" * 9]
    for r in rows:
        run = r["run"]
        if "ms_per_forward_sync" in r:
            run += f" ({r['ms_per_forward_sync']:+.3f} ms per forward sync)"
        hf = f"{r['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in r else ""
        same = {True: "yes", False: "NO"}.get(r.get("tokens_equal_eager"), "")
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {run} | {r['ms']:.2f} | "
                     f"{r['bytes'] / 1e6:.0f} | {100 * r['read_fraction']:.0f}% | {hf} | "
                     f"{same} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES),
                    default=["gpt2-small", "llama-150m"])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--plans", nargs="+", default=["tp", "tp,spd", "spd"],
                    help="under torchrun: the sync plans at tp = world size")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="the dry run: tiny shapes, the first dtype and batch, one round, 8 "
                         "new tokens")
    ap.add_argument("--out", required=True,
                    help="write OUT.json and OUT.md (new files only; the folder must exist)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes = [s if s.startswith("tiny") else
                       ("tiny-llama" if "llama" in s else "tiny-gpt2") for s in args.shapes]
        args.rounds, args.new_tokens, args.prompt_len = 1, 8, 16
        args.dtypes, args.batches = args.dtypes[:1], args.batches[:1]
    from tpgpt.bench.timing import check_out, write_results
    from tpgpt.errors import ConfigError
    try:
        out = check_out(args.out, overwrite=False)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no GPU here")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = 0
    if world > 1:
        from tpgpt.comm.distributed import init_distributed
        rank, world, device = init_distributed(timeout_s=3600)
    else:
        device = torch.device(args.device)
    bw = read_bandwidth(device, (64 << 20) if args.quick else
                        (2 << 30 if device.type == "cuda" else 1 << 30))
    rows = []
    for name in args.shapes:
        for dtype in args.dtypes:
            for b in args.batches:
                fn = tp_rows if world > 1 else dense_rows
                new = fn(name, SHAPES[name], dtype, b, args, device, bw,
                         *((world,) if world > 1 else ()))
                rows += new
                if rank == 0:  # each shape's rows as they come: a later failure keeps them
                    print(f"{name} {dtype} batch {b}: {json.dumps(new)}", file=sys.stderr,
                          flush=True)
    if rank == 0:
        from tpgpt.bench.timing import _cpu_model
        machine = (torch.cuda.get_device_name() if device.type == "cuda"
                   else f"{_cpu_model()}, {torch.get_num_threads()} threads")
        if world > 1:
            machine += f"; {world} processes, {torch.get_num_threads()} thread(s) each, gloo"
        md = table(rows, bw, machine)
        write_results(out, {"machine": machine, "world": world, "read_bandwidth_Bps": bw,
                            "rows": rows, "args": vars(args)}, md)
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
