"""`tpgpt bench dist`: tpgpt's distributed TP against PyTorch's own tensor parallelism
(DTensor ColwiseParallel/RowwiseParallel on the same dense GPT), under torchrun."""
from __future__ import annotations

import os
import statistics

import torch

from .throughput import THROUGHPUT_SHAPES
from .timing import check_out, report_and_finish, slowest_rank, time_interleaved


def dtensor_gpt(dense, mesh):
    """The dense model under PyTorch's own tensor parallelism (DTensor), the same function,
    each module's style read from the family's layout table (model/family.py): column and kv
    linears ColwiseParallel, row linears RowwiseParallel, the rest replicated. GPT-2's fused
    c_attn ('qkv') gets its rows reordered rank-major ([q_0 k_0 v_0 | q_1 k_1 v_1 | ...]) first,
    so that the contiguous chunk ColwiseParallel gives rank r holds q, k and v of its heads."""
    import copy

    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    from ..errors import ConfigError
    from ..model.family import kv_replicas, layouts
    tp = mesh.size()
    if kv_replicas(dense.config, tp) > 1:
        raise ConfigError(f"bench dist: DTensor cannot replicate a KV head over ranks; use "
                          f"tp <= n_kv_head={dense.config.kv_heads}")
    model = copy.deepcopy(dense)
    styles = {"column": ColwiseParallel, "kv": ColwiseParallel, "qkv": ColwiseParallel,
              "row": RowwiseParallel}
    plan, per = {}, dense.config.n_embd // tp
    for name, kind in layouts(dense.config).items():
        if kind not in styles or not name.startswith("transformer.h.0.") \
                or not name.endswith(".weight"):
            continue
        plan[name[len("transformer.h.0."):-len(".weight")]] = styles[kind]()
    with torch.no_grad():
        C = dense.config.n_embd
        perm = torch.cat([torch.arange(g * C + r * per, g * C + (r + 1) * per)
                          for r in range(tp) for g in range(3)])
        for blk in model.transformer.h:
            for module in plan:
                if layouts(dense.config)[f"transformer.h.0.{module}.weight"] == "qkv":
                    lin = blk.get_submodule(module)
                    lin.weight.copy_(lin.weight[perm])
                    if lin.bias is not None:
                        lin.bias.copy_(lin.bias[perm])
    for blk in model.transformer.h:
        parallelize_module(blk, mesh, plan)
    return model


def bench_dist(config, batch_size: int, plans: list[str], steps: int = 20,
               warmup: int = 3) -> dict:
    """Under torchrun (tp = world): tokens/s of DTensor TP and of tpgpt's distributed TP for
    each plan, the same dense weights and batch, interleaved; the two losses are reported
    (equal when the first plan is `tp`: the test checks it)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ..comm.distributed import DistributedComm, init_distributed
    from ..model import GPT
    from ..model.parallel_gpt import ParallelGPT

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
        # the same function? In float64, where rounding cannot hide a difference
        # (tpgpt.analysis.numerics): equal to ~1e-15 when the first plan is 'tp'
        dense64 = GPT(config).to(device)
        dense64.load_state_dict(dense.state_dict())
        dense64.double()
        ref64 = dtensor_gpt(dense64, mesh)(idx, idx)[1].item()
        ours64 = ParallelGPT.from_dense(dense64, tp=world, sync=plans[0], comm=DistributedComm(
            world))(idx, idx, return_logits=False)[1].item()
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
            if idx.is_cuda:
                torch.cuda.synchronize()
        fns[name] = step
    times = time_interleaved(fns, steps, warmup, dist.barrier)
    med = torch.tensor(slowest_rank([statistics.median(v) for v in times.values()]))
    import resource

    from ..model.accounting import memory_per_rank
    our_model = models[f"tpgpt TP, sync={plans[0]}"][0]
    opt_state = fns_opts[f"tpgpt TP, sync={plans[0]}"].state
    local = [sum(p.numel() * p.element_size() for p in our_model.parameters()),
             sum(t.numel() * t.element_size() for st in opt_state.values()
                 for k, t in st.items() if k != "step"),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]
    per_rank = [None] * world
    dist.all_gather_object(per_rank, local)
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
            "loss_dtensor": ref, "loss_tpgpt": ours,
            "loss_rel_diff_float64": abs(ours64 - ref64) / abs(ref64), "tokens_per_step": tokens,
            "config": {k: getattr(config, k) for k in ("family", "n_layer", "n_head", "n_embd",
                                                       "block_size", "vocab_size")},
            "steps": steps, "rows": rows, "memory": memory}


def format_dist(r: dict) -> str:
    c = r["config"]
    lines = [f"distributed TP, tp={r['world']} ({r['backend']}): {c['n_layer']} layers, n_embd "
             f"{c['n_embd']}, {r['tokens_per_step']} tokens/step; {r['steps']} steps each, "
             f"interleaved; same weights: loss {r['loss_dtensor']:.6f} (DTensor) vs "
             f"{r['loss_tpgpt']:.6f} (tpgpt, sync={r['rows'][1]['model'].split('=', 1)[1]}); in "
             f"float64 they differ by {r['loss_rel_diff_float64']:.1e} (relative)", "",
             "| model | median ms | min-max ms | tokens/s | vs DTensor |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['model']} | {1e3 * x['median_s']:.1f} | {1e3 * x['min_s']:.1f}-"
                     f"{1e3 * x['max_s']:.1f} | {x['tokens_per_s']:.0f} | "
                     f"{x['vs_dtensor']:.3f}x |")
    if r.get("memory"):
        lines += ["", "| rank | tpgpt params | planned | AdamW state | planned | peak RSS "
                      "(process, all models of this run) |", "|---|---|---|---|---|---|"]
        for m in r["memory"]:
            lines.append(f"| {m['rank']} | {m['param_bytes']:,} B | {m['planned_param_bytes']:,} B"
                         f" | {m['adamw_bytes']:,} B | {m['planned_adamw_bytes']:,} B | "
                         f"{m['peak_rss_bytes'] / 2 ** 20:.0f} MiB |")
    return "\n".join(lines)


def run_dist_cli(args) -> int:
    from ..errors import ConfigError

    check_out(args.out, args.overwrite)
    if "RANK" not in os.environ:
        raise ConfigError("bench dist compares distributed TP: use torchrun --nproc_per_node=TP")
    shape, batch = THROUGHPUT_SHAPES[args.shapes[0]]
    result = bench_dist(shape, batch, args.plans, steps=args.steps or 20)
    report_and_finish(result, format_dist(result), args.out, args.overwrite)
    return 0
