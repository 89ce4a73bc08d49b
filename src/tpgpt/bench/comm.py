"""`tpgpt bench comm`: all-reduce latency and bandwidth on the current backend, fitted to the
ring's alpha-beta model and written as an interconnect profile for `tpgpt plan`."""
from __future__ import annotations

import os
import time
from functools import partial

import torch

from ..analysis.costmodel import fit_alpha_beta
from ..comm.plan import sent_bytes
from .timing import check_out, report_and_finish, slowest_rank, stats

COMM_SIZES = [8 * 4 ** k for k in range(12)] + [64 * 2 ** 20]  # 8 B .. 32 MiB, and 64 MiB
COMM_OPS = ("all_reduce", "reduce_scatter", "all_gather")  # sequence parallelism uses the last two


def bench_comm(repeats: int = 20, warmup: int = 5, sizes: list[int] | None = None) -> dict:
    """All-reduce, reduce-scatter and all-gather of float32 buffers (N bytes: the all-reduce's
    buffer, the reduce-scatter's input, the all-gather's output) over the whole (torchrun)
    group, every size timed `repeats` times after `warmup`, a barrier before each so all ranks
    start together. The profile is fitted to the slowest rank's mean time per size (see
    costmodel's module doc): alpha and B to the all-reduce, `op_fits` to the other two."""
    import torch.distributed as dist

    from ..comm.distributed import init_distributed
    # torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single
    _all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    _reduce_scatter_single = (getattr(dist, "reduce_scatter_single", None)
                              or dist.reduce_scatter_tensor)
    rank, world, device = init_distributed()
    rows = []
    for op in COMM_OPS:
        for nbytes in sizes or COMM_SIZES:
            numel = -(-max(nbytes // 4, 1) // world) * world  # whole float32 shards
            full = torch.ones(numel, dtype=torch.float32, device=device)
            shard = torch.ones(numel // world, dtype=torch.float32, device=device)
            run = {"all_reduce": partial(dist.all_reduce, full),
                   "reduce_scatter": partial(_reduce_scatter_single, shard, full),
                   "all_gather": partial(_all_gather_single, full, shard)}[op]
            times = []
            for i in range(warmup + repeats):
                dist.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            s = stats(times)
            med_max, mean_max = slowest_rank([s["median_s"], s["mean_s"]])
            rows.append({"op": op, "bytes": numel * 4, **s, "median_max_over_ranks_s": med_max,
                         "mean_max_over_ranks_s": mean_max,
                         "bus_GBps": sent_bytes(op, numel * 4, world) / med_max / 1e9})
    fits = {}
    for op in COMM_OPS:
        mine = [r for r in rows if r["op"] == op]
        fits[op] = [fit_alpha_beta([r["bytes"] for r in mine],
                                   [r[k] for r in mine], world, op)
                    for k in ("mean_max_over_ranks_s", "median_max_over_ranks_s")]
    backend = dist.get_backend()
    where = f"{backend}, {world} processes, {time.strftime('%Y-%m-%d')}"

    def profile(i: int, what: str) -> dict:
        ar = fits["all_reduce"][i]
        return {"name": f"measured-{backend}-{world}", "alpha_s": ar.alpha_s,
                "bandwidth_Bps": ar.bandwidth_Bps, "source": f"tpgpt bench comm ({what}), {where}",
                "op_fits": {op: {"alpha_s": f[i].alpha_s, "bandwidth_Bps": f[i].bandwidth_Bps}
                            for op, f in fits.items() if op != "all_reduce"}}
    return {"rank": rank, "world": world, "backend": backend, "repeats": repeats, "rows": rows,
            "profile": profile(0, "means"), "profile_from_medians": profile(1, "medians")}


def format_comm(result: dict) -> str:
    lines = [f"collectives on {result['backend']}, {result['world']} processes (float32), "
             f"{result['repeats']} timings per size, slowest rank; bytes: the whole buffer", "",
             "| op | bytes | median us | mean us | min-max us (rank 0) | bus GB/s (median) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r.get('op', 'all_reduce')} | {r['bytes']:,} | "
                     f"{1e6 * r['median_max_over_ranks_s']:.1f} | "
                     f"{1e6 * r['mean_max_over_ranks_s']:.1f} | {1e6 * r['min_s']:.1f}-"
                     f"{1e6 * r['max_s']:.1f} | {r['bus_GBps']:.3f} |")
    p, m = result["profile"], result["profile_from_medians"]
    lines += ["", f"alpha-beta fit of the all-reduce to the means (the profile): alpha = "
                  f"{1e6 * p['alpha_s']:.1f} us per ring step, B = "
                  f"{p['bandwidth_Bps'] / 1e9:.3f} GB/s per direction",
              f"the same fit to the medians: alpha = {1e6 * m['alpha_s']:.1f} us, "
              f"B = {m['bandwidth_Bps'] / 1e9:.3f} GB/s"]
    for op, f in p.get("op_fits", {}).items():
        lines.append(f"{op} fitted on its own (means): alpha = {1e6 * f['alpha_s']:.1f} us per "
                     f"step, B = {f['bandwidth_Bps'] / 1e9:.3f} GB/s")
    return "\n".join(lines)


def run_comm_cli(args) -> int:
    check_out(args.out, args.overwrite)
    if "RANK" not in os.environ:
        from ..errors import ConfigError
        raise ConfigError("bench comm measures collectives between processes: run it under "
                          "torchrun --nproc_per_node=2 (or more)")
    result = bench_comm(repeats=args.repeats)
    report_and_finish(result, format_comm(result), args.out, args.overwrite,
                      " (use: tpgpt plan --interconnect {path})")
    return 0
