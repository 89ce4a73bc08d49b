"""`tpgpt bench decode`: the run over shapes and batches, its tables and its plot (the
measurements themselves are in decode.py)."""
from __future__ import annotations

import os

import torch.distributed as dist

from ..analysis.costmodel import Interconnect
from ..errors import ConfigError
from .decode import DECODE_SHAPES, bench_one, calibrate, fit_device
from ..figures import save_figure
from .timing import check_out, report_and_finish


def bench_decode(shapes: dict, plans: list[str], batches: list[int], rounds: int,
                 prompt_len: int | None, new_tokens: int | None, no_cache_tokens: int,
                 repeats: int, calibrate_on: str | None, ckpt: str | None = None) -> dict:
    """`shapes`: name -> GPTConfig (random weights), or with `ckpt` the one shape of that
    checkpoint, run on its own weights."""
    from ..comm.distributed import init_distributed
    from .comm import bench_comm

    rank, world, device = init_distributed(timeout_s=3600)  # rank 0's references take a while
    comm = bench_comm(repeats=repeats)
    idle = Interconnect.from_json(comm["profile"])
    out = {"rank": rank, "world": world, "backend": dist.get_backend(), "rounds": rounds,
           "idle_profile": idle.to_json(), "comm_rows": comm["rows"], "shapes": {}}
    dense = None
    if ckpt is not None:
        from ..checkpoint.load import load_dense
        dense = load_dense(ckpt)[0].float()
    for name, cfg in shapes.items():
        P, N = lengths(cfg, prompt_len, new_tokens)
        runs = []
        for b in batches:
            r = bench_one(cfg, plans, b, P, N, rounds, no_cache_tokens if b == 1 else 0, device,
                          dense=dense)
            calibrate(r, cfg, world, idle, fit_device(r, cfg, world), calibrate_on)
            runs.append(r)
        out["shapes"][name] = {"config": {k: getattr(cfg, k) for k in (
            "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "family", "n_kv_head",
            "head_dim", "intermediate_size")}, "runs": runs}
    # for `tpgpt plan --inference --interconnect NAME.json`: the last shape's smallest batch
    last = min(out["shapes"][list(shapes)[-1]]["runs"], key=lambda r: r["batch"])
    out.update(profile=last["profile"], device=last["device"])
    return out


def lengths(cfg, prompt_len: int | None, new_tokens: int | None) -> tuple[int, int]:
    """Prompt and new tokens: by default half of block_size, then up to 128 new tokens."""
    P = cfg.block_size // 2 if prompt_len is None else prompt_len
    N = min(128, cfg.block_size - P) if new_tokens is None else new_tokens
    if P < 1 or N < 2:
        raise ConfigError(f"--prompt-len {P} and --new-tokens {N}: a prompt of at least 1 "
                          f"token and at least 2 new tokens (the first comes from the prefill)")
    if P + N > cfg.block_size:
        raise ConfigError(f"--prompt-len {P} + --new-tokens {N} = {P + N} exceeds the KV "
                          f"cache's block_size={cfg.block_size}")
    return P, N


def _ms(q: dict, key: str = "median_s") -> str:
    return f"{1e3 * q[key]:.2f}"


def format_decode(r: dict) -> str:
    lines = [f"decode latency at tp={r['world']} ({r['backend']}, {r['world']} processes), "
             f"greedy, {r['rounds']} rounds interleaved token by token; slowest rank per step",
             f"idle-link profile: alpha {r['idle_profile']['alpha_s'] * 1e6:.0f} us, B "
             f"{r['idle_profile']['bandwidth_Bps'] / 1e9:.2f} GB/s"]
    for name, s in r["shapes"].items():
        for x in s["runs"]:
            d = x["device"]
            lines.append(f"{name}, batch {x['batch']}: measured device {d['tflops'] * 1e3:.1f} "
                         f"GFLOP/s, {d['mem_bandwidth_Bps'] / 1e9:.2f} GB/s; in-step overhead "
                         f"per collective {1e6 * x['profile']['sync_overhead_s']:.0f} us")
    for name, s in r["shapes"].items():
        c = s["config"]
        for x in s["runs"]:
            lines += ["", f"### {name}: {c['n_layer']} layers, {c['n_head']} heads, n_embd "
                          f"{c['n_embd']}, vocab {c['vocab_size']}; batch {x['batch']}, prompt "
                          f"{x['prompt_len']}, {x['new_tokens']} new tokens", "",
                      "| plan | fwd syncs | collectives per decode step (timed) | sent per "
                      "decode step | TTFT ms mean (model) | decode ms/token median | p90 | mean "
                      "| in-step collective ms (skew) | model ms/token (error) |",
                      "|---" * 10 + "|"]
            co = x["compute_only"]
            lines.append(f"| compute only (no collectives) | - | 0 | - | "
                         f"{_ms(co['ttft'], 'mean_s')} "
                         f"({1e3 * co['predicted_ttft_s']:.2f}) | {_ms(co['decode'])} | "
                         f"{_ms(co['decode'], 'p90_s')} | {_ms(co['decode'], 'mean_s')} | - | "
                         f"{1e3 * co['predicted_decode_s']:.2f} "
                         f"({100 * (co['predicted_decode_s'] / co['decode']['mean_s'] - 1):+.1f}%)"
                         f" |")
            for w in x["rows"]:
                skew = "" if w["skew_mean_s"] is None else f" ({1e3 * w['skew_mean_s']:.3f})"
                role = " (calibration)" if w["role"] == "calibration" else ""
                lines.append(
                    f"| `{w['plan']}`{role} | {w['forward_syncs']} | {w['collectives_per_step']} "
                    f"({w['collectives_timed']:g}) | {w.get('bytes_sent_per_step', 0):,.0f} B | "
                    f"{_ms(w['ttft'], 'mean_s')} "
                    f"({1e3 * w['predicted_ttft_s']:.2f}) | {_ms(w['decode'])} | "
                    f"{_ms(w['decode'], 'p90_s')} | {_ms(w['decode'], 'mean_s')} | "
                    f"{1e3 * w['collective_mean_s']:.3f}{skew} | "
                    f"{1e3 * w['predicted_decode_s']:.2f} ({100 * w['error']:+.1f}%) |")
            lines += _summary(x)
    return "\n".join(lines)


def _summary(x: dict) -> list[str]:
    out, refs = [], x["references"] or {}
    if refs:
        out += ["", "| one process, same weights (rank 0) | TTFT ms (median) | decode ms/token "
                    "median | p90 | mean |", "|---|---|---|---|---|"]
        out += [f"| {k} | {_ms(v['ttft'])} | {_ms(v['decode'])} | {_ms(v['decode'], 'p90_s')} | "
                f"{_ms(v['decode'], 'mean_s')} |" for k, v in refs.items()]
        mine = refs.get("tpgpt dense, KV cache")
        hf = next((v for k, v in refs.items() if k.startswith("transformers ")), None)
        if mine and hf:
            out.append(f"\ntpgpt dense decode vs transformers generate (same tokens, checked): "
                       f"{hf['decode']['mean_s'] / mine['decode']['mean_s']:.2f}x as fast (mean "
                       f"per token)")
        nc = refs.get("tpgpt dense, no cache")
        if mine and nc:
            out.append(f"KV cache vs recomputing the context ({x['prompt_len']}+ tokens, the "
                       f"first {nc['decode']['n'] // nc['ttft']['n'] + 1} new tokens "
                       f"without it): {nc['decode']['mean_s'] / mine['decode']['mean_s']:.1f}x "
                       f"faster per token")
    s = x["saving_per_forward_sync"]
    held = [w for w in x["rows"] if w["role"] == "validation"]
    if held:
        worst = max(held, key=lambda w: abs(w["error"]))
        out.append(f"held-out plans: worst error {100 * worst['error']:+.1f}% (`{worst['plan']}`)"
                   f", calibrated on `{x['calibrated_on']}`")
    if s["measured_s"]:
        out.append(f"per-token time saved per dropped forward sync (slope over the plans): "
                   f"measured {1e3 * s['measured_s']:.3f} ms; in-step collective "
                   f"{1e3 * s['in_step_collective_s']:.3f} ms (saving / collective "
                   f"{s['measured_s'] / s['in_step_collective_s']:.2f}); model "
                   f"{1e3 * s['predicted_s']:.3f} ms")
    return out


def plot_decode(r: dict, path: str, overwrite: bool = False) -> None:
    """Per-token decode latency against forward syncs, a panel per shape, a line per batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = r["shapes"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], shapes.items()):
        for x in s["runs"]:
            rows = sorted(x["rows"], key=lambda w: w["forward_syncs"])
            xs = [w["forward_syncs"] for w in rows]
            mean = [1e3 * w["decode"]["mean_s"] for w in rows]
            p90 = [1e3 * (w["decode"]["p90_s"] - w["decode"]["mean_s"]) for w in rows]
            line = ax.errorbar(xs, mean, yerr=[[0] * len(p90), [max(v, 0) for v in p90]],
                               fmt="o-", capsize=3, label=f"batch {x['batch']} (mean, to p90)")
            ax.plot(xs, [1e3 * w["predicted_decode_s"] for w in rows], "--",
                    color=line[0].get_color(), label=f"batch {x['batch']} model")
            dense = (x["references"] or {}).get("tpgpt dense, KV cache")
            if dense:
                ax.axhline(1e3 * dense["decode"]["mean_s"], ls=":", color=line[0].get_color(),
                           label=f"batch {x['batch']} dense GPT, one process")
        ax.set_title(f"{name}: tp={r['world']}, {r['backend']}")
        ax.set_xlabel("forward syncs per token")
        ax.set_ylabel("decode ms per token")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, overwrite)


def run_decode_cli(args) -> int:
    from ..comm.plan import SyncPlan, validate_tp
    from ..comm.wire import parse_variant
    from ..model.parallel_gpt import check_sequence_parallel

    base = check_out(args.out, args.overwrite, (".json", ".md", ".png"))
    png = base + ".png" if base else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plans = list(dict.fromkeys(args.plans))
    shapes = {}
    if args.ckpt is not None:  # the checkpoint's own shape and weights
        from ..checkpoint.load import model_config, read_checkpoint
        state = read_checkpoint(args.ckpt)
        shapes[os.path.basename(os.path.normpath(state["path"]))] = model_config(state)
    for name in dict.fromkeys(args.shapes) if args.ckpt is None else ():
        if name not in DECODE_SHAPES:
            raise ConfigError(f"bench decode shapes are {', '.join(DECODE_SHAPES)}, not {name!r}")
        shapes[name] = DECODE_SHAPES[name]
    for cfg in shapes.values():
        validate_tp(world, cfg)
        lengths(cfg, args.prompt_len, args.new_tokens)
        for p in plans:
            v = parse_variant(p, cfg.n_embd)
            SyncPlan.parse(v.sync, cfg.n_layer)
            check_sequence_parallel(v.sequence_parallel, world, v.wire, cfg.block_size)
    if args.calibrate_on is not None and args.calibrate_on not in plans:
        raise ConfigError(f"--calibrate-on {args.calibrate_on!r} is not one of --plans")
    if "RANK" not in os.environ or world < 2:
        raise ConfigError("bench decode runs distributed TP: use torchrun --nproc_per_node=TP "
                          "with TP >= 2")
    result = bench_decode(shapes, plans, sorted(set(args.batches)), args.rounds,
                          args.prompt_len, args.new_tokens, args.no_cache_tokens, args.repeats,
                          args.calibrate_on, ckpt=args.ckpt)
    report_and_finish(result, format_decode(result), args.out, args.overwrite,
                      " (its profile and device: tpgpt plan --inference --interconnect {path})")
    if png and result["rank"] == 0:
        plot_decode(result, png, args.overwrite)
        print(f"wrote {png}")
    return 0
