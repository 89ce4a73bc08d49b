"""`tpgpt plan`: what a sync plan communicates, as a per-layer diagram, a table or JSON."""
from __future__ import annotations

from ..comm.plan import (SyncPlan, count_collectives, count_inference, replicated_per_rank_numel,
                         sent_bytes)
from ..comm.wire import SyncWire
from ..model.accounting import memory_per_rank
from ..model.family import head_split, kv_per_rank
from ..text import counted


def label(r: dict) -> str:
    """A report's plan, with what its syncs send when that is not float32: 'tp', 'spd@int8'
    (the benchmarks' --plans spelling)."""
    return r["sync"] + ("" if r.get("sync_dtype", "float32") == "float32" else
                        f"@{r['sync_dtype']}") + ("@ladder" if r.get("ladder") else "") + \
        ("@sp" if r.get("sequence_parallel") else "")


def _is_base(r: dict) -> bool:
    return all(int(b) for b in r["bits"]) and r.get("sync_dtype", "float32") == "float32" \
        and not r.get("ladder") and not r.get("sequence_parallel")


def _wire_fields(wire: SyncWire | None) -> dict:
    wire = wire or SyncWire()
    return {"sync_dtype": wire.dtype, "sync_block": wire.block if wire.dtype == "int8" else None}


def _collective(c, tp: int) -> dict:
    """One line of the accounting; `sent_each`: the bytes one rank sends in one of them."""
    return {"phase": c.phase, "op": c.op, "tag": c.tag, "count": c.count, "bytes_each": c.nbytes,
            "sent_each": round(sent_bytes(c.op, c.nbytes, tp))}


def model_fields(config, tp: int) -> dict:
    """The model's shape in a report: the family, its heads and how TP splits them."""
    return {**{k: getattr(config, k) for k in
               ("family", "n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias")},
            "n_kv_head": config.kv_heads, "head_dim": config.head_size,
            "intermediate_size": config.hidden_size, "tie_embeddings": config.tie_embeddings,
            "head_split": head_split(config, tp)}


def _shape_line(m: dict) -> str:
    kv = f" ({m['n_kv_head']} KV)" if m.get("n_kv_head", m["n_head"]) != m["n_head"] else ""
    return (f"{m.get('family', 'gpt2')}: {m['n_layer']} layers, {m['n_head']} heads{kv}, "
            f"n_embd {m['n_embd']}")


def plan_report(config, plan: SyncPlan, *, tp: int, batch_size: int, seq_len: int,
                vocab_parallel: bool, dtype_bytes: int = 4, grad_clip: bool = False,
                wire: SyncWire | None = None, ladder: bool = False,
                sequence_parallel: bool = False) -> dict:
    """Everything `tpgpt plan --json` prints: layers, regions, and collectives per step."""
    step = count_collectives(plan, tp=tp, config=config,
                             batch_size=batch_size, seq_len=seq_len,
                             vocab_parallel=vocab_parallel, dtype_bytes=dtype_bytes,
                             grad_clip=grad_clip, param_bytes=4 if dtype_bytes < 4 else None,
                             wire=wire, sequence_parallel=sequence_parallel)
    collectives = [_collective(c, tp) for c in step]
    totals: dict[str, dict[str, int]] = {}
    for c in collectives:
        t = totals.setdefault(c["phase"], {"count": 0, "bytes": 0, "sent": 0})
        t["count"] += c["count"]
        t["bytes"] += c["count"] * c["bytes_each"]
        t["sent"] += c["count"] * c["sent_each"]
    totals["step"] = {k: sum(t[k] for t in totals.values()) for k in ("count", "bytes", "sent")}
    baseline = 2 * config.n_layer
    return {
        "model": model_fields(config, tp),
        "tp": tp, "sync": plan.spec, "bits": plan.bitstring, "vocab_parallel": vocab_parallel,
        **_wire_fields(wire), "ladder": ladder, "sequence_parallel": sequence_parallel,
        "batch_size": batch_size, "seq_len": seq_len, "dtype_bytes": dtype_bytes,
        "layers": [{"layer": i, "kind": plan.layer_kind(i), "attn_sync": plan.sync_after(2 * i),
                    "mlp_sync": plan.sync_after(2 * i + 1)} for i in range(config.n_layer)],
        "regions": plan.regions(),
        "forward_syncs": plan.forward_syncs(tp),
        "forward_syncs_all_on": baseline if tp > 1 else 0,
        "replicated_grad_elements": replicated_per_rank_numel(plan, config,
                                                              sequence_parallel),
        "collectives": collectives,
        "memory_per_rank": memory_per_rank(config, tp, vocab_parallel),
        "totals": totals,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 1024 \
        else f"{n} B"


_WHAT = {"sync": "residual stream, leaving a region (g)",
         "region": "residual stream, entering a region (f)",
         "sequence": "sequence-parallel stream: split after the embedding, gathered for the head",
         "embedding": "vocab-parallel embedding lookup",
         "loss": "vocab-parallel cross-entropy",
         "head": "vocab-parallel LM head input (f)",
         "replicated_grads": "norm/bias grads used per rank, bucketed",
         "kv_replicas": "grads of each KV head summed over the ranks that hold it",
         "grad_norm": "squared norm of sharded grads, for clipping"}


def format_plan(r: dict) -> str:
    m = r["model"]
    lines = [f"model: {_shape_line(m)}, "
             f"vocab {m['vocab_size']}{' (vocab-parallel)' if r['vocab_parallel'] else ''}",
             f"tp={r['tp']}  sync={r['sync']!r}  batch {r['batch_size']} x {r['seq_len']} tokens, "
             f"{r['dtype_bytes']}-byte activations" + _wire_note(r)
             + (f"; {m['head_split']}" if "head_split" in m and r["tp"] > 1 else ""), "",
             "layer  kind        attn  mlp    region"]
    region_of = {s: i for i, reg in enumerate(r["regions"]) for s in reg}
    for layer in r["layers"]:
        i = layer["layer"]
        cell = lambda on: "sync" if on else "  - "  # noqa: E731
        regs = sorted({region_of[2 * i], region_of[2 * i + 1]})
        lines.append(f"{i:5d}  {layer['kind']:<10}  {cell(layer['attn_sync'])}  "
                     f"{cell(layer['mlp_sync'])}   {', '.join(map(str, regs))}")
    n, base = r["forward_syncs"], r["forward_syncs_all_on"]
    lines += ["", f"forward all-reduces of the residual stream per pass: {n}"
              + (f" (all-on: {base}, {100 * (base - n) / base:.0f}% fewer)" if base else
                 " (tp=1: nothing to communicate)"), ""]
    mem = r["memory_per_rank"]
    lines += [f"memory per TP rank (fp32): {mem['sharded_elements']:,} sharded + "
              f"{mem['replicated_elements']:,} replicated parameters; params "
              f"{_mb(mem['param_bytes'])}, grads {_mb(mem['grad_bytes'])}, AdamW "
              f"{_mb(mem['adamw_bytes'])}, total {_mb(mem['total_bytes'])} (activations not "
              f"included)", ""]
    if not r["collectives"]:
        return "\n".join(lines + ["per training step: no collectives"])
    lines.append("per training step (fwd/bwd lines: per micro-batch; grad lines: per optimizer "
                 "step):")
    lines.append(f"  {'phase':<5} {'op':<15} {'count':>5}  {'each':>11}  {'total':>11}  "
                 f"{'sent':>11}  what")
    for c in r["collectives"]:
        lines.append(f"  {c['phase']:<5} {c['op']:<15} {c['count']:>5}  {_mb(c['bytes_each']):>11}"
                     f"  {_mb(c['count'] * c['bytes_each']):>11}  "
                     f"{_mb(c['count'] * c['sent_each']):>11}  {_WHAT.get(c['tag'], c['tag'])}")
    t = r["totals"]["step"]
    lines.append(f"  total {counted(t['count'], 'collective')}, {_mb(t['bytes'])} per rank buffer, "
                 f"{_mb(t['sent'])} sent by each rank (ring algorithms)")
    return "\n".join(lines)


def _wire_note(r: dict) -> str:
    ladder = ("; ladder: each sync's result lands one region later, its all-reduce under that "
              "region's compute") if r.get("ladder") else ""
    if r.get("sequence_parallel"):
        ladder += ("; sequence-parallel: each all-reduce a reduce-scatter + all-gather, the "
                   "stream between regions split along the sequence")
    if r.get("sync_dtype", "float32") == "float32":
        return ladder
    block = f" (a float32 scale per {r['sync_block']} channels)" if r["sync_block"] else ""
    return f"; the residual stream's syncs sent in {r['sync_dtype']}{block}" + ladder


def format_predictions(reports: list[dict], ic, achieved_tflops: float) -> str:
    """One line per plan: predicted step time on `ic` and what dropping syncs saves."""
    base = next((r for r in reports if _is_base(r)), None) or max(
        reports, key=lambda r: r["forward_syncs"])
    lines = [f"predicted step (one micro-batch) on {ic.name} ({ic.bandwidth_Bps / 1e9:g} GB/s, "
             f"{ic.alpha_s * 1e6:g} us per ring step"
             + (f", {ic.sync_overhead_s * 1e6:g} us in-step overhead per collective"
                if ic.sync_overhead_s else "")
             + f"), compute at {achieved_tflops:g} TFLOP/s "
             f"per device, no overlap" + (" but a ladder's (max of compute and communication "
                                          "under the next region)" if any(
                                              r.get("ladder") for r in reports) else "") + ":",
             f"  {'sync':<28} {'fwd syncs':>9} {'compute ms':>11} {'comm ms':>9} "
             f"{'step ms':>9} {'comm share':>10} {'vs ' + label(base):>12}"]
    for r in reports:
        p = r["prediction"]
        saving = 1 - p["step_s"] / base["prediction"]["step_s"]
        lines.append(f"  {label(r):<28} {r['forward_syncs']:>9} {1e3 * p['compute_s']:>11.2f} "
                     f"{1e3 * p['comm_s']:>9.2f} {1e3 * p['step_s']:>9.2f} "
                     f"{100 * p['comm_share']:>9.1f}% {-100 * saving + 0.0:>+11.1f}%")
    if ic.source:
        lines.append(f"  profile: {ic.source}")
    return "\n".join(lines)


def inference_report(config, plan: SyncPlan, *, tp: int, batch_size: int, prompt_len: int,
                     new_tokens: int, vocab_parallel: bool, dtype_bytes: int = 4,
                     wire: SyncWire | None = None, ladder: bool = False,
                     sequence_parallel: bool = False) -> dict:
    """Everything `tpgpt plan --inference --json` prints: the collectives of the prefill and
    of one decode step, and the KV cache one rank has filled at the end of the generation."""
    colls = count_inference(plan, tp=tp, n_embd=config.n_embd, vocab_size=config.vocab_size,
                            batch_size=batch_size, prompt_len=prompt_len,
                            vocab_parallel=vocab_parallel, dtype_bytes=dtype_bytes, wire=wire,
                            sequence_parallel=sequence_parallel)
    L = config.n_layer
    return {
        "model": model_fields(config, tp),
        "tp": tp, "sync": plan.spec, "bits": plan.bitstring, "vocab_parallel": vocab_parallel,
        **_wire_fields(wire), "ladder": ladder, "sequence_parallel": sequence_parallel,
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "dtype_bytes": dtype_bytes, "forward_syncs": plan.forward_syncs(tp),
        "forward_syncs_all_on": 2 * L if tp > 1 else 0,
        **{phase: [{k: v for k, v in _collective(c, tp).items() if k != "phase"} for c in cs]
           for phase, cs in colls.items()},
        # filled at the end: the last new token is drawn, never fed back
        "kv_cache_bytes_per_rank": 2 * L * batch_size * (prompt_len + new_tokens - 1)
        * kv_per_rank(config, tp) * config.head_size * dtype_bytes,
    }


def format_inference(r: dict) -> str:
    m = r["model"]
    n, base = r["forward_syncs"], r["forward_syncs_all_on"]
    lines = [f"generation: {_shape_line(m)}, "
             f"vocab {m['vocab_size']}{' (vocab-parallel)' if r['vocab_parallel'] else ''}; "
             f"tp={r['tp']}  sync={r['sync']!r} ({n} of {base} forward syncs)" if base else
             "generation at tp=1: nothing to communicate",
             f"batch {r['batch_size']}, prompt {r['prompt_len']} tokens, {r['new_tokens']} new "
             f"tokens, {r['dtype_bytes']}-byte activations; KV cache per rank filled at the end "
             f"{_mb(r['kv_cache_bytes_per_rank'])}" + _wire_note(r)]
    for phase, what in (("prefill", "prefill (the prompt, first token)"),
                        ("decode", "each decode step (one new position)")):
        lines += ["", f"{what}:"]
        if not r[phase]:
            lines.append("  no collectives")
        for c in r[phase]:
            lines.append(f"  {c['op']:<11} {c['count']:>4} x {_mb(c['bytes_each']):>10}  "
                         f"{_WHAT_INFERENCE.get(c['tag'], c['tag'])}")
    return "\n".join(lines)


_WHAT_INFERENCE = {"sync": "residual stream, leaving a region (g)",
                   "region": "residual stream, entering a region (sequence-parallel)",
                   "sequence": "sequence-parallel stream, gathered for the head",
                   "embedding": "vocab-parallel embedding lookup",
                   "logits": "vocab-parallel logits of the last position"}


def format_generation_predictions(reports: list[dict]) -> str:
    """One line per plan: predicted time to first token, per-token decode, and the saving."""
    base = next((r for r in reports if _is_base(r)), None) or max(
        reports, key=lambda r: r["forward_syncs"])
    p0 = base["prediction"]
    lines = [f"predicted generation on {p0['device']} over {p0['interconnect']} (roofline: max "
             f"of FLOPs/rate and bytes/bandwidth, plus the collectives, no overlap"
             + (" but a ladder's" if any(r.get("ladder") for r in reports) else "") + "):",
             f"  {'sync':<22} {'fwd syncs':>9} {'TTFT ms':>9} {'decode ms/token':>15} "
             f"{'of which comm':>13} {'bound':>6} {'vs ' + label(base):>10}"]
    for r in reports:
        p, d = r["prediction"], r["prediction"]["decode"]
        saving = 1 - d["total_s"] / p0["decode"]["total_s"]
        lines.append(f"  {label(r):<22} {r['forward_syncs']:>9} "
                     f"{1e3 * p['prefill']['total_s']:>9.3f} {1e3 * d['total_s']:>15.3f} "
                     f"{100 * d['comm_s'] / d['total_s']:>12.1f}% {d['bound']:>6} "
                     f"{-100 * saving + 0.0:>+9.1f}%")
    return "\n".join(lines)
