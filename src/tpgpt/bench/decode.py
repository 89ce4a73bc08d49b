"""`tpgpt bench decode`: generation latency of every sync plan under torchrun, beside the
one-process references on the same weights, against the generation cost model.

For each shape and batch, one run measures, interleaved token by token (a barrier before each
model's step, so a noisy machine's slow spells hit every plan alike):
  - every plan's greedy generation with its KV cache: the first `next` is the prefill and the
    first token (time to first token, TTFT), each later one a decode step; the start and end of
    every collective inside a decode step are recorded (as `bench plans` does);
  - the same generation with every collective skipped ("compute only"), from which the measured
    device (rate and bandwidth, tpgpt.analysis.generation_cost) comes;
then, on rank 0 alone, the one-process references: tpgpt's dense GPT with its cache, Hugging
Face transformers' `GPT2LMHeadModel.generate` with its cache (timed per token by a streamer),
both checked to give the dense tokens first, and the dense GPT without its cache for the first
tokens after the prompt. Times are of the slowest rank, step by step. The cost model's in-step
overhead per collective is calibrated on one plan per shape and batch (default: the one with
the most syncs); every other plan is a held-out check.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch
import torch.distributed as dist

from ..analysis.costmodel import Interconnect
from ..analysis.generation_cost import measured_device, predict_generation
from ..comm.plan import SyncPlan, count_inference, sent_bytes
from ..comm.wire import parse_variant
from ..model.generation import decode
from ..model import GPT, GPTConfig
from .plans import TimedComm, _slope, _span_stats
from .timing import rotated, slowest_rank

def hf_generate_key(config) -> str:
    from .hf_reference import hf_name
    return f"transformers {hf_name(config)} generate, KV cache"


DECODE_SHAPES = {
    # nanoGPT's CPU Shakespeare model: 4 layers, 4 heads, 128 wide, block 64
    "cpu-preset": GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128),
    # 12 layers, 12 heads, 384 wide; block 512 so that a 256-token prompt leaves 128 to decode
    "12-layer": GPTConfig(block_size=512, vocab_size=512, n_layer=12, n_head=12, n_embd=384),
    # the Llama preset (llama_char_cpu): 8 query heads on 2 KV heads (a 4x smaller cache)
    "llama-cpu": GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=8, n_embd=128,
                           bias=False, family="llama", n_kv_head=2, intermediate_size=352,
                           activation="silu"),
}


def quantiles(times: list[float]) -> dict:
    """Median, p90 and mean (what a sum of tokens costs) of per-token times."""
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"median_s": statistics.median(times), "p90_s": q[8],
            "mean_s": statistics.fmean(times), "n": len(times)}


def _done(tok: torch.Tensor) -> float:
    """The time once `tok` exists (on a GPU: once the kernels that make it have run)."""
    if tok.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def _time_generations(models: dict, prompt, new_tokens: int, rounds: int, warmup: int = 1):
    """Greedy generation of every model, interleaved step by step: per model the TTFT of each
    round and the time of each decode step (this rank), and the collective spans of the
    decode steps (TimedComm models only)."""
    ttft = {k: [] for k in models}
    steps = {k: [] for k in models}
    spans = {k: [] for k in models}
    tokens = {}
    for r in range(warmup + rounds):
        gens = {k: decode(m, prompt, new_tokens, temperature=0) for k, m in models.items()}
        out = {k: [] for k in models}
        keys = list(gens)
        for i in range(new_tokens):
            # one model later every step, the same on every rank (timing.rotated)
            for k in rotated(keys, r * new_tokens + i):
                gen = gens[k]
                comm = getattr(models[k], "comm", None)
                n0 = len(comm.spans) if isinstance(comm, TimedComm) else 0
                dist.barrier()
                t0 = time.perf_counter()
                _, tok = next(gen)
                dt = _done(tok) - t0
                out[k].append(tok)
                if r < warmup:
                    continue
                (ttft[k] if i == 0 else steps[k]).append(dt)
                if i and isinstance(comm, TimedComm):
                    spans[k] += comm.span_seconds()[n0:]
        tokens = {k: torch.cat(v, dim=1) for k, v in out.items()}
    return ttft, steps, spans, tokens


def _reference_times(dense: GPT, prompt, new_tokens: int, rounds: int, no_cache_tokens: int):
    """Rank 0 only: per-token times of tpgpt's dense model with its cache and of transformers'
    `generate` (its GPT-2, Llama, Qwen) on the same weights, interleaved by generation, tokens
    checked equal; and the dense model without a cache for the first `no_cache_tokens` tokens.
    Returns (times, the dense tokens, None), or a failed check's message last."""
    from .hf_reference import hf_generate_timed, hf_name
    want = None
    out = {"tpgpt dense, KV cache": {"ttft": [], "steps": []},
           hf_generate_key(dense.config): {"ttft": [], "steps": []},
           "tpgpt dense, no cache": {"ttft": [], "steps": []}}
    for r in range(1 + rounds):
        stamps, toks = [time.perf_counter()], []
        for _, tok in decode(dense, prompt, new_tokens, temperature=0):
            stamps.append(_done(tok))
            toks.append(tok)
        want = torch.cat(toks, dim=1)
        hf = hf_generate_timed(dense, prompt, new_tokens)
        if hf is not None and not torch.equal(hf[1], want):
            return None, want, (f"transformers' {hf_name(dense.config)} generate gave other "
                                f"tokens than tpgpt's dense model on the same weights")
        stamps_nc = [time.perf_counter()]
        for _, tok in decode(dense, prompt, no_cache_tokens, temperature=0, kv_cache=False):
            stamps_nc.append(_done(tok))
        stamps_nc = stamps_nc if no_cache_tokens > 1 else None
        if r == 0:
            continue  # warm-up round
        for key, st in (("tpgpt dense, KV cache", stamps),
                        (hf_generate_key(dense.config), hf and hf[0]),
                        ("tpgpt dense, no cache", stamps_nc)):
            if st:
                d = [b - a for a, b in zip(st, st[1:])]
                out[key]["ttft"].append(d[0])
                out[key]["steps"] += d[1:]
    return {k: v for k, v in out.items() if v["steps"]}, want, None


def bench_one(config: GPTConfig, plans: list[str], batch: int, prompt_len: int,
              new_tokens: int, rounds: int, no_cache_tokens: int, device: torch.device,
              dense: GPT | None = None) -> dict:
    """Every plan at tp = world size on one shape and batch, and the references (rank 0);
    `dense`: the weights (a checkpoint's), else random ones."""
    world, rank = dist.get_world_size(), dist.get_rank()
    from ..model.parallel_gpt import ParallelGPT
    torch.manual_seed(0)
    dense = (dense if dense is not None else GPT(config)).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_len),
                           generator=torch.Generator().manual_seed(1)).to(device)
    compute_key = f"compute only ({plans[0]}, no collectives)"
    models = {}
    for key, variant, only in [(p, p, False) for p in plans] + [(compute_key, plans[0], True)]:
        v = parse_variant(variant)
        models[key] = ParallelGPT.from_dense(dense, tp=world, sync=v.sync,
                                             comm=TimedComm(world, compute_only=only),
                                             sync_dtype=v.wire.dtype, sync_block=v.wire.block,
                                             ladder=v.ladder,
                                             sequence_parallel=v.sequence_parallel).eval()
    ttft, steps, spans, tokens = _time_generations(models, prompt, new_tokens, rounds)
    refs, want, failure = None, None, [None]
    if rank == 0:
        refs, want, failure[0] = _reference_times(dense, prompt, new_tokens, rounds,
                                                  no_cache_tokens)
        if failure[0] is None and "tp" in tokens and not torch.equal(tokens["tp"], want):
            failure[0] = "the distributed all-sync plan gave other tokens than the dense GPT"
    dist.broadcast_object_list(failure, src=0)  # every rank stops on a failed check
    if failure[0]:
        raise RuntimeError(f"batch {batch}: {failure[0]}")
    keys = list(models)
    slow_steps = {k: slowest_rank(steps[k]) for k in keys}
    slow_ttft = {k: slowest_rank(ttft[k]) for k in keys}
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: spans[k] for k in plans})
    # skew compares start times across ranks: wall clocks of one host only
    same_host = int(os.environ.get("LOCAL_WORLD_SIZE", -1)) == world and device.type == "cpu"
    decode_colls = {}
    for p in plans:
        v = parse_variant(p)
        decode_colls[p] = count_inference(
            SyncPlan.parse(v.sync, config.n_layer), tp=world, n_embd=config.n_embd,
            vocab_size=config.vocab_size, batch_size=batch, prompt_len=prompt_len,
            wire=v.wire, sequence_parallel=v.sequence_parallel)["decode"]
    rows = [_row(p, config, world, slow_ttft[p], slow_steps[p], [g[p] for g in gathered],
                 same_host, decode_colls[p]) for p in plans]
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "rows": rows,
            "compute_only": {"ttft": quantiles(slow_ttft[compute_key]),
                             "decode": quantiles(slow_steps[compute_key])},
            "tokens_checked": rank == 0 and ("tp" in tokens),
            "references": None if refs is None else {
                k: {"ttft": quantiles(v["ttft"]), "decode": quantiles(v["steps"])}
                for k, v in refs.items()}}


def _row(variant, config, world, ttft, steps, rank_spans, same_host, colls) -> dict:
    n_sync = sum(c.count for c in colls)
    v = parse_variant(variant)
    return {"plan": variant, "sync_dtype": v.wire.dtype, "ladder": v.ladder,
            "sequence_parallel": v.sequence_parallel,
            "forward_syncs": SyncPlan.parse(v.sync, config.n_layer).forward_syncs(world),
            "collectives_per_step": n_sync,
            "bytes_sent_per_step": sum(c.count * sent_bytes(c.op, c.nbytes, world)
                                       for c in colls),
            "collectives_timed": len(rank_spans[0]) / max(len(steps), 1),
            "ttft": quantiles(ttft), "decode": quantiles(steps),
            **_span_stats(rank_spans, n_sync, 0, same_host)}


def fit_device(result: dict, config: GPTConfig, world: int):
    """The measured device of one shape and batch (generation_cost.measured_device), from the
    compute-only decode steps and prefills of `result`."""
    P, N, B = result["prompt_len"], result["new_tokens"], result["batch"]
    co = result["compute_only"]
    dev = measured_device(config, world, batch=B, prompt_len=P, keys=P + N / 2, dtype_bytes=4,
                          t_decode=co["decode"]["mean_s"], t_prefill=co["ttft"]["mean_s"])
    return dataclasses.replace(dev, source=(
        f"tpgpt bench decode compute-only timings, {config.n_layer} layers, n_embd "
        f"{config.n_embd}, tp={world}, batch {B}, {time.strftime('%Y-%m-%d')}"))


def calibrate(result: dict, config: GPTConfig, world: int, idle: Interconnect, dev,
              calibrate_on: str | None) -> None:
    """Fit the in-step overhead per collective on one plan (`dev` from `fit_device`); add the
    predictions of every plan to the rows."""
    P, N, B = result["prompt_len"], result["new_tokens"], result["batch"]
    rows = {r["plan"]: r for r in result["rows"]}
    plain = [p for p in rows if "@" not in p] or list(rows)
    cal = calibrate_on or max(plain, key=lambda p: rows[p]["collectives_per_step"])

    def predict(ic, p):
        v = parse_variant(p)
        return predict_generation(config, SyncPlan.parse(v.sync, config.n_layer), tp=world,
                                  batch=B, prompt_len=P, new_tokens=N, vocab_parallel=False,
                                  dtype_bytes=4, device=dev, ic=ic, wire=v.wire,
                                  ladder=v.ladder, sequence_parallel=v.sequence_parallel)
    base = predict(idle, cal)["decode"]
    n = rows[cal]["collectives_per_step"]
    overhead = max((rows[cal]["decode"]["mean_s"] - base["total_s"]) / n, 0.0) if n else 0.0
    ic = dataclasses.replace(idle, name=f"{idle.name}-in-decode", sync_overhead_s=overhead,
                             source=f"{idle.source}; in-step overhead calibrated by tpgpt bench "
                                    f"decode on {cal!r}, {time.strftime('%Y-%m-%d')}")
    co = predict(ic, cal)
    result["compute_only"]["predicted_decode_s"] = co["decode"]["compute_s"]
    result["compute_only"]["predicted_ttft_s"] = co["prefill"]["compute_s"]
    for p, r in rows.items():
        pr = predict(ic, p)
        r["role"] = "calibration" if p == cal else "validation"
        r["predicted_decode_s"] = pr["decode"]["total_s"]
        r["predicted_ttft_s"] = pr["prefill"]["total_s"]
        r["error"] = pr["decode"]["total_s"] / r["decode"]["mean_s"] - 1
    same = [r for r in result["rows"] if "@" not in r["plan"]]
    xs = [r["forward_syncs"] for r in same]
    result["saving_per_forward_sync"] = {
        "measured_s": _slope(xs, [r["decode"]["mean_s"] for r in same]),
        "predicted_s": _slope(xs, [r["predicted_decode_s"] for r in same]),
        # the mean in-step collective of the decode steps, pooled over the plain plans (a
        # compressed sync is another collective; a ladder's span is only its launch)
        "in_step_collective_s": sum(r["collective_mean_s"] * r["collectives_per_step"]
                                    for r in same) /
        max(sum(r["collectives_per_step"] for r in same), 1)}
    result.update(calibrated_on=cal, profile=ic.to_json(), device=dev.to_json())
