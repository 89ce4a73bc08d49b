"""`tpgpt bench plans`: the training-step time of every sync plan under torchrun, measured side
by side, against the cost model's prediction, with the model calibrated on one plan and
validated on the others.

What one run measures, interleaved (one step of each model in turn, a barrier before each):
  - every plan's step (forward with loss, backward, replicated-grad sync, AdamW), with the start
    and end of every collective inside it recorded, so the report shows what a collective
    really costs in a step and how much of it is waiting for the other rank (skew);
  - each plan's step with every collective skipped ("compute only"): its compute time; the
    first plan's gives the achieved FLOP/s for the model's FLOP count, the others show the
    compute a variant adds (a compressed sync's codec, sequence parallelism's splits);
  - before the steps, the idle-link profile (`bench comm`).
The idle-link prediction (compute + collectives on an idle link) is the plain alpha-beta model.
The calibrated one adds a per-collective in-step overhead fitted on one plan only (by default
the one with the most syncs); every other plan is then a held-out check of the model.
Step times are compared as means: a step is a sum of collectives and compute, the model
predicts the expected sum, and a run's throughput is tokens / mean step time.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch
import torch.distributed as dist

from ..analysis.costmodel import Interconnect, predict_step, train_flops_per_token
from ..comm.distributed import DistributedComm
from ..comm.wire import parse_variant
from ..train.metrics import SavedActivations
from .timing import check_out, report_and_finish, slowest_rank, stats, time_interleaved


class TimedComm(DistributedComm):
    """DistributedComm that records (start, end) of every cross-process collective; with
    `compute_only` it skips them (same shapes and copies, nothing sent): the step's compute.

    On the CPU the span is wall-clock time around the blocking call. On GPUs (NCCL) it is a
    pair of CUDA events on the current stream, read after the step, so the timers add no
    synchronisation to the step they measure (the span then includes waiting for the other
    rank inside the kernel, but skew cannot be told apart: clocks of GPU events are per device)."""

    def __init__(self, tp: int, compute_only: bool = False):
        super().__init__(tp)
        self.compute_only = compute_only
        self.spans: list = []  # (start, end): perf_counter seconds, or CUDA event pairs
        self.cuda = dist.get_backend() == "nccl"

    def _timed(self, fn):
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = fn()
            end.record()
            self.spans.append((start, end))
            return out
        t0 = time.perf_counter()  # CLOCK_MONOTONIC on Linux: comparable across local processes
        out = fn()
        self.spans.append((t0, time.perf_counter()))
        return out

    def span_seconds(self) -> list[tuple[float, float]]:
        """The spans as (start, end) seconds; for CUDA events start is 0 (durations only)."""
        if not self.cuda:
            return list(self.spans)
        torch.cuda.synchronize()
        return [(0.0, s.elapsed_time(e) / 1e3) for s, e in self.spans]

    def _cross_all_reduce(self, x, op="sum"):
        if self.compute_only:
            return self._timed(lambda: x.contiguous().clone())
        return self._timed(lambda: super(TimedComm, self)._cross_all_reduce(x, op))

    def _cross_all_reduce_async(self, x):  # a ladder sync: the span is its launch only
        if self.compute_only:
            return self._timed(lambda: x.contiguous().clone())
        return self._timed(lambda: super(TimedComm, self)._cross_all_reduce_async(x))

    def _cross_reduce_scatter(self, x, dim):
        if self.compute_only:  # this process's slice of what it holds
            return self._timed(lambda: x.chunk(self.nproc, dim=dim)[self.ranks.start // len(
                self.ranks)].contiguous())
        return self._timed(lambda: super(TimedComm, self)._cross_reduce_scatter(x, dim))

    def _cross_reduce_scatter_async(self, x, dim):  # a ladder sync: the span is its launch
        if self.compute_only:
            return self._cross_reduce_scatter(x, dim)
        return self._timed(lambda: super(TimedComm, self)._cross_reduce_scatter_async(x, dim))

    def _cross_all_to_all(self, x):
        if self.compute_only:  # what arrives has the shape of what is sent, transposed
            return self._timed(lambda: x.transpose(0, 1).contiguous().reshape(
                self.nproc * x.shape[0], x.shape[0], *x.shape[2:]))
        return self._timed(lambda: super(TimedComm, self)._cross_all_to_all(x))

    def _cross_all_gather(self, x):
        if self.compute_only:
            return self._timed(lambda: x.contiguous().repeat(self.nproc, *[1] * (x.dim() - 1)))
        return self._timed(lambda: super(TimedComm, self)._cross_all_gather(x))

    def _grad_all_reduce(self, flat):
        if self.compute_only:
            return self._timed(lambda: None)
        return self._timed(lambda: super(TimedComm, self)._grad_all_reduce(flat))


def _step_fn(model, idx):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(idx, idx, return_logits=False)[1]
        loss.backward()
        model.sync_replicated_grads()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if idx.is_cuda:
            torch.cuda.synchronize()
    return step


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (0 when xs do not vary)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def _span_stats(spans: list[list[tuple[float, float]]], per_step: int, skip: int,
                same_host: bool) -> dict:
    """Mean time of a collective in a step (slowest rank), and the mean skew: how long after
    the first rank the last one arrived (only when every rank's clock is this host's)."""
    if per_step == 0:
        return {"collective_mean_s": 0.0, "skew_mean_s": None}
    durations = [statistics.fmean(e - s for s, e in sp[skip * per_step:]) for sp in spans]
    skew = None
    if same_host:
        starts = list(zip(*[[s for s, _ in sp[skip * per_step:]] for sp in spans]))
        skew = statistics.fmean(max(t) - min(t) for t in starts)
    return {"collective_mean_s": max(durations), "skew_mean_s": skew}


def bench_plans(config, plans: list[str], batch_size: int, steps: int = 60, warmup: int = 3,
                comm_repeats: int = 20, profile: Interconnect | None = None,
                calibrate_on: str | None = None) -> dict:
    """Under torchrun (tp = world size). `profile`: an interconnect profile to validate as it
    is (no calibration in this run, every plan held out); otherwise the idle-link profile is
    measured here and its in-step overhead calibrated on `calibrate_on`."""
    from ..comm.distributed import init_distributed
    from ..model import GPT
    from ..model.parallel_gpt import ParallelGPT
    from ..comm.plan import SyncPlan
    from ..analysis.plan_report import plan_report
    from .comm import bench_comm

    if calibrate_on is not None and calibrate_on not in plans:
        from ..errors import ConfigError
        raise ConfigError(f"--calibrate-on {calibrate_on!r} is not one of --plans")
    rank, world, device = init_distributed()
    comm_rows = None
    if profile is None:
        comm = bench_comm(repeats=comm_repeats)
        comm_rows = comm["rows"]
        idle = Interconnect.from_json(comm["profile"])
    else:
        idle = dataclasses.replace(profile, sync_overhead_s=0.0)
    torch.manual_seed(0)
    dense = GPT(config).to(device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size),
                        generator=g).to(device)
    # each variant's step is timed also with its collectives skipped: the FLOPs are the same,
    # but a compressed sync's codec, sequence parallelism's splits and concatenations are
    # compute the cost model does not count; the first plan's gives the achieved FLOP/s
    compute_key = {p: f"compute only ({p}, no collectives)" for p in plans}
    comms, fns, activations = {}, {}, {}
    for key, variant, only in [(p, p, False) for p in plans] + \
            [(compute_key[p], p, True) for p in plans]:
        v = parse_variant(variant)
        comms[key] = TimedComm(world, compute_only=only)
        model = ParallelGPT.from_dense(dense, tp=world, sync=v.sync, comm=comms[key],
                                       sync_dtype=v.wire.dtype, sync_block=v.wire.block,
                                       ladder=v.ladder, sequence_parallel=v.sequence_parallel)
        with SavedActivations(model.parameters()) as saved:  # one forward, before the timing
            loss = model(idx, idx, return_logits=False)[1]
        activations[key] = saved.mib
        del loss
        comms[key].spans.clear()
        comms[key].counter.reset()
        fns[key] = _step_fn(model, idx)
    times = time_interleaved(fns, steps, warmup, dist.barrier)

    keys = list(fns)
    mean = dict(zip(keys, slowest_rank([statistics.fmean(times[k]) for k in keys])))
    median = dict(zip(keys, slowest_rank([statistics.median(times[k]) for k in keys])))
    # skew compares start times across ranks: wall clocks of one host only
    same_host = int(os.environ.get("LOCAL_WORLD_SIZE", -1)) == world and device.type == "cpu"
    per_step = {k: len(c.spans) // (warmup + steps) for k, c in comms.items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: c.span_seconds() for k, c in comms.items()})
    spans = {k: _span_stats([g_[k] for g_ in gathered], per_step[k], warmup, same_host)
             for k in keys}

    compute_s = mean[compute_key[plans[0]]]
    tokens = batch_size * config.block_size
    flops_per_rank = train_flops_per_token(config, config.block_size) * tokens / world
    achieved = flops_per_rank / compute_s / 1e12
    reports = {}
    for p in plans:
        v = parse_variant(p)
        reports[p] = plan_report(config, SyncPlan.parse(v.sync, config.n_layer), tp=world,
                                 batch_size=batch_size, seq_len=config.block_size,
                                 vocab_parallel=False, wire=v.wire, ladder=v.ladder,
                                 sequence_parallel=v.sequence_parallel)
    n_coll = {p: sum(c["count"] for c in r["collectives"]) for p, r in reports.items()}
    idle_pred = {p: predict_step(r, config, idle, achieved) for p, r in reports.items()}
    if profile is not None:
        overhead, calibrate_on = profile.sync_overhead_s, None
    else:
        plain = [p for p in plans if "@" not in p] or plans
        calibrate_on = calibrate_on or max(plain, key=lambda p: n_coll[p])
        extra = mean[calibrate_on] - idle_pred[calibrate_on]["step_s"]
        overhead = max(extra / n_coll[calibrate_on], 0.0) if n_coll[calibrate_on] else 0.0
    calibrated = dataclasses.replace(
        idle, name=f"{idle.name}-in-step", sync_overhead_s=overhead,
        source=f"{idle.source}; in-step overhead calibrated by tpgpt bench plans on "
               f"{calibrate_on!r}, {time.strftime('%Y-%m-%d')}" if calibrate_on else idle.source)
    rows = []
    for p in plans:
        cal = predict_step(reports[p], config, calibrated, achieved)
        rows.append({
            "plan": p, "role": "calibration" if p == calibrate_on else "validation",
            "forward_syncs": reports[p]["forward_syncs"], "collectives_planned": n_coll[p],
            "sync_dtype": reports[p]["sync_dtype"], "ladder": reports[p]["ladder"],
            "sequence_parallel": reports[p]["sequence_parallel"],
            "saved_activations_mib": activations[p],
            "predicted_hidden_s": cal["hidden_s"],
            "bytes_sent_per_step": reports[p]["totals"]["step"]["sent"],
            "collectives_timed": per_step[p], **stats(times[p]),
            "mean_slowest_s": mean[p], "median_slowest_s": median[p], **spans[p],
            "predicted_idle_s": idle_pred[p]["step_s"],
            "predicted_s": cal["step_s"], "predicted_comm_s": cal["comm_s"],
            "compute_s": cal["compute_s"], "compute_only_s": mean[compute_key[p]],
            "error_idle": idle_pred[p]["step_s"] / mean[p] - 1,
            "error": cal["step_s"] / mean[p] - 1})
    plain = [r for r in rows if "@" not in r["plan"]]  # plans that differ in syncs only
    xs = [r["forward_syncs"] for r in plain]
    # step time grows by this much per forward sync kept: what each removed one saves
    saving = {"measured_s": _slope(xs, [r["mean_slowest_s"] for r in plain]),
              "predicted_s": _slope(xs, [r["predicted_s"] for r in plain]),
              "predicted_idle_s": _slope(xs, [r["predicted_idle_s"] for r in plain])}
    return {"rank": rank, "world": world, "backend": dist.get_backend(),
            "profile": calibrated.to_json(), "idle_profile": idle.to_json(),
            "comm_rows": comm_rows, "compute_only_s": compute_s,
            "compute_only_median_s": median[compute_key[plans[0]]], "achieved_tflops": achieved,
            "calibrated_on": calibrate_on, "same_host": same_host,
            "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd",
                                                       "block_size", "vocab_size")},
            "batch_size": batch_size, "steps": steps, "warmup": warmup, "rows": rows,
            "saving_per_forward_sync": saving}


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{1e3 * s:.1f}"


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f} KiB"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n:.2f} MiB"


def format_plans(r: dict) -> str:
    c, ic, idle = r["config"], r["profile"], r["idle_profile"]
    lines = [f"sync plans at tp={r['world']} ({r['backend']}, {r['world']} processes): "
             f"{c['n_layer']} layers, n_embd {c['n_embd']}, batch {r['batch_size']} x "
             f"{c['block_size']}; {r['steps']} steps each after {r['warmup']}, interleaved; "
             f"slowest rank",
             f"compute only (every collective skipped): {_ms(r['compute_only_s'])} ms mean for "
             f"`{r['rows'][0]['plan']}` = {r['achieved_tflops'] * 1e3:.2f} GFLOP/s per process",
             f"idle-link profile: alpha {idle['alpha_s'] * 1e6:.0f} us, B "
             f"{idle['bandwidth_Bps'] / 1e9:.2f} GB/s; in-step overhead per collective "
             f"{ic['sync_overhead_s'] * 1e6:.0f} us "
             + (f"(calibrated on `{r['calibrated_on']}` only)" if r["calibrated_on"]
                else "(from the given profile; no plan used for calibration)"), "",
             "| plan | fwd syncs | collectives (timed) | sent per step | activations saved "
             "per rank | measured mean ms "
             "(median; rank 0 min-max) | compute only ms | in-step collective ms (skew) | "
             "idle-link prediction ms (error) | calibrated prediction ms (error) |",
             "|---" * 10 + "|"]
    for x in r["rows"]:
        skew = f" ({_ms(x['skew_mean_s'])})" if x["skew_mean_s"] is not None else ""
        role = " (calibration)" if x["role"] == "calibration" else ""
        lines.append(
            f"| `{x['plan']}`{role} | {x['forward_syncs']} | {x['collectives_planned']} "
            f"({x['collectives_timed']}) | {_kib(x.get('bytes_sent_per_step'))} | "
            f"{_mib(x.get('saved_activations_mib'))} | {_ms(x['mean_slowest_s'])} "
            f"({_ms(x['median_slowest_s'])}; {_ms(x['min_s'])}-{_ms(x['max_s'])}) | "
            f"{_ms(x.get('compute_only_s'))} | {x['collective_mean_s'] * 1e3:.2f}{skew} | "
            f"{_ms(x['predicted_idle_s'])} ({100 * x['error_idle']:+.0f}%) | "
            f"{_ms(x['predicted_s'])} ({100 * x['error']:+.0f}%) |")
    held = [x for x in r["rows"] if x["role"] == "validation"]
    s = r["saving_per_forward_sync"]
    if held:
        worst = max(held, key=lambda x: abs(x["error"]))
        lines += ["", f"held-out plans: worst calibrated error {100 * worst['error']:+.1f}% "
                      f"(`{worst['plan']}`), mean |error| "
                      f"{100 * statistics.fmean(abs(x['error']) for x in held):.1f}%"]
    if s["measured_s"]:
        lines.append(
            f"time saved per removed forward sync (least-squares slope over the plans): measured "
            f"{s['measured_s'] * 1e3:.2f} ms, calibrated model {s['predicted_s'] * 1e3:.2f} ms "
            f"({100 * (s['predicted_s'] / s['measured_s'] - 1):+.0f}%), idle-link model "
            f"{s['predicted_idle_s'] * 1e3:.2f} ms "
            f"({100 * (s['predicted_idle_s'] / s['measured_s'] - 1):+.0f}%)")
    return "\n".join(lines)


def run_plans_cli(args) -> int:
    from ..train.config import load_config
    from ..analysis.costmodel import load_interconnect
    from ..errors import ConfigError

    check_out(args.out, args.overwrite)
    if "RANK" not in os.environ:
        raise ConfigError("bench plans runs distributed TP: use torchrun --nproc_per_node=TP")
    from ..data import resolve_vocab_size
    cfg = load_config(args.config)
    # the config's vocabulary, else its data's, else Tiny Shakespeare's 65 characters
    config = dataclasses.replace(cfg.model_config(resolve_vocab_size(cfg, 65)), dropout=0.0)
    profile = load_interconnect(args.profile) if args.profile else None
    from ..comm.plan import SyncPlan, validate_tp
    world = int(os.environ.get("WORLD_SIZE", "1"))
    validate_tp(world, config)  # tp = the process count
    from ..model.parallel_gpt import check_sequence_parallel
    for p in args.plans:  # a bad plan fails here, before any measurement
        v = parse_variant(p, config.n_embd)
        SyncPlan.parse(v.sync, config.n_layer)
        check_sequence_parallel(v.sequence_parallel, world, v.wire, config.block_size)
    result = bench_plans(config, args.plans, args.batch_size or cfg.batch_size,
                         steps=args.steps or 60, comm_repeats=args.repeats, profile=profile,
                         calibrate_on=args.calibrate_on)
    report_and_finish(result, format_plans(result), args.out, args.overwrite,
                      " (its calibrated profile: tpgpt plan --interconnect {path})")
    return 0
