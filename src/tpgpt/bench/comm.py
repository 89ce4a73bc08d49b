"""`tpgpt bench comm`: all-reduce latency and bandwidth on the current backend, fitted to the
ring's alpha-beta model and written as an interconnect profile for `tpgpt plan`."""
from __future__ import annotations

import os
import time

import torch

from ..analysis.costmodel import fit_alpha_beta
from .timing import check_out, report_and_finish, slowest_rank, stats

COMM_SIZES = [8 * 4 ** k for k in range(12)] + [64 * 2 ** 20]  # 8 B .. 32 MiB, and 64 MiB


def bench_comm(repeats: int = 20, warmup: int = 5, sizes: list[int] | None = None) -> dict:
    """All-reduce of float32 buffers over the whole (torchrun) group, every size timed
    `repeats` times after `warmup`, a barrier before each so all ranks start together. The
    profile is fitted to the slowest rank's mean time per size (see costmodel's module doc)."""
    import torch.distributed as dist

    from ..comm.distributed import init_distributed
    rank, world, device = init_distributed()
    rows = []
    for nbytes in sizes or COMM_SIZES:
        x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
        times = []
        for i in range(warmup + repeats):
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        s = stats(times)
        med_max, mean_max = slowest_rank([s["median_s"], s["mean_s"]])
        rows.append({"bytes": x.numel() * 4, **s, "median_max_over_ranks_s": med_max,
                     "mean_max_over_ranks_s": mean_max,
                     "bus_GBps": 2 * (world - 1) / world * x.numel() * 4 / med_max / 1e9})
    sizes_ = [r["bytes"] for r in rows]
    fit = fit_alpha_beta(sizes_, [r["mean_max_over_ranks_s"] for r in rows], world)
    fit_median = fit_alpha_beta(sizes_, [r["median_max_over_ranks_s"] for r in rows], world)
    backend = dist.get_backend()
    where = f"{backend}, {world} processes, {time.strftime('%Y-%m-%d')}"
    profile = {"name": f"measured-{backend}-{world}", "alpha_s": fit.alpha_s,
               "bandwidth_Bps": fit.bandwidth_Bps,
               "source": f"tpgpt bench comm (means), {where}"}
    return {"rank": rank, "world": world, "backend": backend, "repeats": repeats, "rows": rows,
            "profile": profile,
            "profile_from_medians": {**profile, "alpha_s": fit_median.alpha_s,
                                     "bandwidth_Bps": fit_median.bandwidth_Bps,
                                     "source": f"tpgpt bench comm (medians), {where}"}}


def format_comm(result: dict) -> str:
    lines = [f"all-reduce on {result['backend']}, {result['world']} processes (float32), "
             f"{result['repeats']} timings per size, slowest rank", "",
             "| bytes | median us | mean us | min-max us (rank 0) | bus GB/s (median) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['bytes']:,} | {1e6 * r['median_max_over_ranks_s']:.1f} | "
                     f"{1e6 * r['mean_max_over_ranks_s']:.1f} | {1e6 * r['min_s']:.1f}-"
                     f"{1e6 * r['max_s']:.1f} | {r['bus_GBps']:.3f} |")
    p, m = result["profile"], result["profile_from_medians"]
    lines += ["", f"alpha-beta fit to the means (the profile): alpha = {1e6 * p['alpha_s']:.1f} us "
                  f"per ring step, B = {p['bandwidth_Bps'] / 1e9:.3f} GB/s per direction",
              f"the same fit to the medians: alpha = {1e6 * m['alpha_s']:.1f} us, "
              f"B = {m['bandwidth_Bps'] / 1e9:.3f} GB/s"]
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
