"""`tpgpt bench`: measurements, side by side in one run, medians with min/max.

    tpgpt bench throughput              dense vs simulated tp=2, tp=4 training steps (one process)
    torchrun --nproc_per_node=2 -m tpgpt bench comm --out profile.json
                                        all-reduce latency and bandwidth, fitted to alpha-beta
"""
from __future__ import annotations

import json
import os
import statistics
import time

import torch

from .costmodel import fit_alpha_beta
from .model import GPTConfig

COMM_SIZES = [8 * 4 ** k for k in range(12)] + [64 * 2 ** 20]  # 8 B .. 32 MiB, and 64 MiB


def time_interleaved(fns: dict, steps: int, warmup: int, barrier=None) -> dict[str, list[float]]:
    """Run every function once per round, `warmup` untimed rounds then `steps` timed ones, so
    a noisy machine's slow spells hit all of them alike; `barrier` lines processes up first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            if barrier is not None:
                barrier()
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_comm(repeats: int = 20, warmup: int = 5, sizes: list[int] | None = None) -> dict:
    """All-reduce of float32 buffers over the whole (torchrun) group, every size timed
    `repeats` times after `warmup`; a barrier before each so all ranks start together."""
    import torch.distributed as dist

    from .distributed import init_distributed
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
        t = torch.tensor([statistics.median(times)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's median: what a step waits
        rows.append({"bytes": x.numel() * 4, **_stats(times), "median_max_over_ranks_s": t.item(),
                     "bus_GBps": 2 * (world - 1) / world * x.numel() * 4 / t.item() / 1e9})
    fit = fit_alpha_beta([r["bytes"] for r in rows], [r["median_max_over_ranks_s"] for r in rows],
                         world)
    backend = dist.get_backend()
    profile = {"name": f"measured-{backend}-{world}", "alpha_s": fit.alpha_s,
               "bandwidth_Bps": fit.bandwidth_Bps,
               "source": f"tpgpt bench comm, {backend}, {world} processes, "
                         f"{time.strftime('%Y-%m-%d')}"}
    return {"rank": rank, "world": world, "backend": backend, "rows": rows, "profile": profile}


def format_comm(result: dict) -> str:
    lines = [f"all-reduce on {result['backend']}, {result['world']} processes (float32)", "",
             "| bytes | median us | min-max us | slowest rank's median us | bus GB/s |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['bytes']:,} | {1e6 * r['median_s']:.1f} | {1e6 * r['min_s']:.1f}-"
                     f"{1e6 * r['max_s']:.1f} | {1e6 * r['median_max_over_ranks_s']:.1f} | "
                     f"{r['bus_GBps']:.3f} |")
    p = result["profile"]
    lines += ["", f"alpha-beta fit (ring all-reduce): alpha = {1e6 * p['alpha_s']:.1f} us per "
                  f"step, B = {p['bandwidth_Bps'] / 1e9:.3f} GB/s per direction"]
    return "\n".join(lines)


def run_comm_cli(args) -> int:
    import torch.distributed as dist

    if "RANK" not in os.environ:
        from .errors import ConfigError
        raise ConfigError("bench comm measures collectives between processes: run it under "
                          "torchrun --nproc_per_node=2 (or more)")
    result = bench_comm(repeats=args.repeats)
    if result["rank"] == 0:
        print(format_comm(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result["profile"], f, indent=1)
            with open(os.path.splitext(args.out)[0] + "_measurements.json", "w") as f:
                json.dump(result, f, indent=1)
            print(f"\nwrote the profile {args.out} (use: tpgpt plan --interconnect {args.out})")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def bench_plans(config, plans: list[str], batch_size: int, steps: int = 20, warmup: int = 3,
                comm_repeats: int = 10) -> dict:
    """Under torchrun (tp = world size): the training-step time of every sync plan, measured
    interleaved, against the cost model's prediction. The interconnect profile is measured in
    the same run (bench_comm), and the compute rate from a dense step in every process at once
    (as busy as the TP run), so the prediction uses nothing from the plans' own timings."""
    import torch.distributed as dist

    from .costmodel import Interconnect, predict_step, train_flops_per_token
    from .distributed import DistributedComm
    from .model import GPT
    from .parallel_model import ParallelGPT
    from .plan import SyncPlan
    from .plan_report import plan_report

    comm_result = bench_comm(repeats=comm_repeats)
    p = comm_result["profile"]
    ic = Interconnect(p["name"], p["alpha_s"], p["bandwidth_Bps"], p["source"])
    world = comm_result["world"]
    torch.manual_seed(0)
    dense = GPT(config)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size), generator=g)

    def stepper(model, parallel: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = model(idx, idx, return_logits=False)[1] if parallel else model(idx, idx)[1]
            loss.backward()
            if parallel:
                model.sync_replicated_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    fns = {"dense (compute rate)": stepper(dense, False)}
    for plan in plans:
        fns[plan] = stepper(ParallelGPT.from_dense(dense, tp=world, sync=plan,
                                                   comm=DistributedComm(world)), True)
    times = time_interleaved(fns, steps, warmup, dist.barrier)
    med = {k: statistics.median(v) for k, v in times.items()}
    t = torch.tensor([med[k] for k in fns], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a step is as slow as its slowest rank
    med = dict(zip(fns, t.tolist()))
    tokens = batch_size * config.block_size
    achieved = train_flops_per_token(config, config.block_size) * tokens \
        / med["dense (compute rate)"] / 1e12
    rows = []
    for plan in plans:
        rep = plan_report(config, SyncPlan.parse(plan, config.n_layer), tp=world,
                          batch_size=batch_size, seq_len=config.block_size, vocab_parallel=False)
        pred = predict_step(rep, config, ic, achieved)
        rows.append({"plan": plan, "forward_syncs": rep["forward_syncs"],
                     "measured_s": med[plan], "min_s": min(times[plan]),
                     "max_s": max(times[plan]), **pred,
                     "error": pred["step_s"] / med[plan] - 1})
    return {"rank": comm_result["rank"], "world": world, "backend": comm_result["backend"],
            "profile": p, "achieved_tflops": achieved, "dense_step_s": med["dense (compute rate)"],
            "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd",
                                                       "block_size", "vocab_size")},
            "batch_size": batch_size, "steps": steps, "rows": rows}


def format_plans(r: dict) -> str:
    c = r["config"]
    lines = [f"sync plans at tp={r['world']} ({r['backend']}, {r['world']} processes): "
             f"{c['n_layer']} layers, n_embd {c['n_embd']}, batch {r['batch_size']} x "
             f"{c['block_size']}; {r['steps']} steps each, interleaved, medians of the slowest rank",
             f"compute rate from a dense step: {r['achieved_tflops'] * 1e3:.2f} GFLOP/s per "
             f"process; profile alpha {r['profile']['alpha_s'] * 1e6:.0f} us, B "
             f"{r['profile']['bandwidth_Bps'] / 1e9:.2f} GB/s", "",
             "| plan | fwd syncs | measured ms (min-max) | predicted ms (compute + comm) | "
             "error |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| `{x['plan']}` | {x['forward_syncs']} | {1e3 * x['measured_s']:.1f} "
                     f"({1e3 * x['min_s']:.1f}-{1e3 * x['max_s']:.1f}) | {1e3 * x['step_s']:.1f} "
                     f"({1e3 * x['compute_s']:.1f} + {1e3 * x['comm_s']:.1f}) | "
                     f"{100 * x['error']:+.0f}% |")
    rows = sorted(r["rows"], key=lambda x: -x["forward_syncs"])
    hi, lo = rows[0], rows[-1]
    if hi["forward_syncs"] > lo["forward_syncs"]:
        n = hi["forward_syncs"] - lo["forward_syncs"]
        m = (hi["measured_s"] - lo["measured_s"]) / n
        pr = (hi["step_s"] - lo["step_s"]) / n
        lines += ["", f"time saved per removed forward sync ({hi['plan']} -> {lo['plan']}): "
                      f"measured {1e3 * m:.2f} ms, predicted {1e3 * pr:.2f} ms "
                      f"({100 * (pr / m - 1) if m else float('nan'):+.0f}%)"]
    return "\n".join(lines)


def run_plans_cli(args) -> int:
    import torch.distributed as dist

    from .config import load_config
    from .errors import ConfigError

    if "RANK" not in os.environ:
        raise ConfigError("bench plans runs distributed TP: use torchrun --nproc_per_node=TP")
    cfg = load_config(args.config)
    from .model import GPTConfig
    config = GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size or 65,
                       n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0,
                       bias=cfg.bias)
    result = bench_plans(config, args.plans, cfg.batch_size, steps=args.steps)
    if result["rank"] == 0:
        print(format_plans(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


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
    from .model import GPT
    from .parallel_model import ParallelGPT
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
    results = [bench_throughput_shape(s, args.steps) for s in args.shapes]
    print("\n\n".join(format_throughput(r) for r in results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "shapes": results}, f, indent=1)
    return 0


def dtensor_gpt(dense, mesh):
    """The dense GPT under PyTorch's own tensor parallelism (DTensor), the same function:
    c_attn/c_fc ColwiseParallel, both c_proj RowwiseParallel, embedding and head replicated.
    c_attn's rows are reordered rank-major ([q_0 k_0 v_0 | q_1 k_1 v_1 | ...]) so that the
    contiguous chunk ColwiseParallel gives rank r holds q, k and v of rank r's heads."""
    import copy

    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    tp = mesh.size()
    model = copy.deepcopy(dense)
    C = dense.config.n_embd
    per = C // tp
    perm = torch.cat([torch.arange(g * C + r * per, g * C + (r + 1) * per)
                      for r in range(tp) for g in range(3)])
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.attn.c_attn.weight.copy_(blk.attn.c_attn.weight[perm])
            if blk.attn.c_attn.bias is not None:
                blk.attn.c_attn.bias.copy_(blk.attn.c_attn.bias[perm])
    plan = {"attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
            "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
    for blk in model.transformer.h:
        parallelize_module(blk, mesh, plan)
    return model


def bench_dist(config, batch_size: int, plans: list[str], steps: int = 20,
               warmup: int = 3) -> dict:
    """Under torchrun (tp = world): tokens/s of DTensor TP and of tpgpt's distributed TP for
    each plan, the same dense weights and batch, interleaved; losses checked equal first."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from .distributed import DistributedComm, init_distributed
    from .model import GPT
    from .parallel_model import ParallelGPT

    rank, world, device = init_distributed()
    mesh = init_device_mesh(device.type, (world,))
    torch.manual_seed(0)
    dense = GPT(config).to(device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size),
                        generator=g).to(device)
    models = {"DTensor TP (Colwise/Rowwise)": (dtensor_gpt(dense, mesh), False)}
    for plan in plans:
        models[f"tpgpt TP, sync={plan}"] = (ParallelGPT.from_dense(
            dense, tp=world, sync=plan, comm=DistributedComm(world)), True)
    with torch.no_grad():
        ref = models["DTensor TP (Colwise/Rowwise)"][0](idx, idx)[1].item()
        ours = models[f"tpgpt TP, sync={plans[0]}"][0](idx, idx, return_logits=False)[1].item()
    fns, fns_opts = {}, {}
    for name, (m, parallel) in models.items():
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=False)
        fns_opts[name] = opt

        def step(m=m, parallel=parallel, opt=opt):
            loss = m(idx, idx, return_logits=False)[1] if parallel else m(idx, idx)[1]
            loss.backward()
            if parallel:
                m.sync_replicated_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
        fns[name] = step
    times = time_interleaved(fns, steps, warmup, dist.barrier)
    med = torch.tensor([statistics.median(v) for v in times.values()], dtype=torch.float64)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    import resource

    from .plan_report import memory_per_rank
    our_model = models[f"tpgpt TP, sync={plans[0]}"][0]
    opt_state = fns_opts[f"tpgpt TP, sync={plans[0]}"].state
    local = [sum(p.numel() * p.element_size() for p in our_model.parameters()),
             sum(t.numel() * t.element_size() for st in opt_state.values()
                 for k, t in st.items() if k != "step"),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]
    per_rank = [torch.zeros(3, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(per_rank, torch.tensor(local, dtype=torch.float64))
    planned = memory_per_rank(config, world, False)
    memory = [{"rank": k, "param_bytes": int(v[0]), "adamw_bytes": int(v[1]),
               "peak_rss_bytes": int(v[2]), "planned_param_bytes": planned["param_bytes"],
               "planned_adamw_bytes": planned["adamw_bytes"]} for k, v in enumerate(per_rank)]
    tokens = batch_size * config.block_size
    base = med[0].item()
    rows = [{"model": k, "median_s": m, "min_s": min(times[k]), "max_s": max(times[k]),
             "tokens_per_s": tokens / m, "vs_dtensor": base / m}
            for k, m in zip(times, med.tolist())]
    return {"rank": rank, "world": world, "backend": dist.get_backend(),
            "loss_dtensor": ref, "loss_tpgpt": ours, "tokens_per_step": tokens,
            "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd",
                                                       "block_size", "vocab_size")},
            "steps": steps, "rows": rows, "memory": memory}


def format_dist(r: dict) -> str:
    c = r["config"]
    lines = [f"distributed TP, tp={r['world']} ({r['backend']}): {c['n_layer']} layers, n_embd "
             f"{c['n_embd']}, {r['tokens_per_step']} tokens/step; {r['steps']} steps each, "
             f"interleaved; same weights: loss {r['loss_dtensor']:.6f} (DTensor) vs "
             f"{r['loss_tpgpt']:.6f} (tpgpt, all syncs)", "",
             "| model | median ms | min-max ms | tokens/s | vs DTensor |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['model']} | {1e3 * x['median_s']:.1f} | {1e3 * x['min_s']:.1f}-"
                     f"{1e3 * x['max_s']:.1f} | {x['tokens_per_s']:.0f} | "
                     f"{x['vs_dtensor']:.3f}x |")
    if r.get("memory"):
        lines += ["", "| rank | tpgpt params | planned | AdamW state | planned | peak RSS (process, "
                      "all models of this run) |", "|---|---|---|---|---|---|"]
        for m in r["memory"]:
            lines.append(f"| {m['rank']} | {m['param_bytes']:,} B | {m['planned_param_bytes']:,} B"
                         f" | {m['adamw_bytes']:,} B | {m['planned_adamw_bytes']:,} B | "
                         f"{m['peak_rss_bytes'] / 2 ** 20:.0f} MiB |")
    return "\n".join(lines)


def run_dist_cli(args) -> int:
    import torch.distributed as dist

    from .errors import ConfigError

    if "RANK" not in os.environ:
        raise ConfigError("bench dist compares distributed TP: use torchrun --nproc_per_node=TP")
    shape, batch = THROUGHPUT_SHAPES[args.shapes[0]]
    result = bench_dist(shape, batch, args.plans, steps=args.steps)
    if result["rank"] == 0:
        print(format_dist(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0
