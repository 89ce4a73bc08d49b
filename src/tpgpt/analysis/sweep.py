"""`tpgpt sweep`: one model per sync plan, same data, seed and budget; the trade-off between
communication and validation loss as a table (CSV, Markdown) and plots (PNG). A plan may name
what its syncs send, PLAN@DTYPE (tp@int8: comm/wire.py), else the config's sync_dtype.

Each plan trains in OUT/<plan>/; a plan whose summary.json exists is not trained again, and one
that was interrupted resumes from its last checkpoint, so rerunning the command finishes a sweep.
"""
from __future__ import annotations

import csv
import json
import os

from ..text import counted
from ..train.config import TrainConfig, activation_bytes, replace
from .evaluate import evaluate_checkpoint
from ..checkpoint.store import find_checkpoint
from ..errors import ConfigError
from ..comm.plan import SyncPlan, count_collectives, sent_bytes
from ..comm.wire import Variant, parse_variant


def plan_dir_name(plan: str) -> str:
    return plan.replace(",", "+").replace(":", "_")


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def run_sweep(cfg: TrainConfig, plans: list[str], out: str, echo=print) -> list[dict]:
    if cfg.tp < 2:
        raise ConfigError(f"sweep needs tp >= 2 (tp={cfg.tp}: with one rank every plan is the "
                          f"dense model): pass --tp=2")
    for p in plans:  # every plan checked before any training
        v = _variant(cfg, p)  # the config's checks (sequence parallelism's too)
        replace(cfg, sync=v.sync, sync_dtype=v.wire.dtype, ladder=v.ladder,
                sequence_parallel=v.sequence_parallel)
    if "tp" not in plans:
        plans = ["tp", *plans]  # the all-sync baseline
    if len(set(plans)) != len(plans):
        raise ConfigError(f"sweep plans repeat: {' '.join(plans)}")
    os.makedirs(out, exist_ok=True)
    rows = []
    for i, plan in enumerate(plans):
        summary = train_plan(cfg, plan, os.path.join(out, plan_dir_name(plan)),
                             echo=lambda text, i=i: echo(f"[{i + 1}/{len(plans)}] {text}"))
        sync, wire, ladder, sp = _variant(cfg, plan)
        act = activation_bytes(cfg.dtype)
        steps = count_collectives(SyncPlan.parse(sync, cfg.n_layer), tp=cfg.tp,
                                  config=cfg.model_config(cfg.vocab_size or 1),
                                  batch_size=cfg.batch_size,
                                  seq_len=cfg.block_size, vocab_parallel=cfg.vocab_parallel,
                                  wire=wire, grad_clip=cfg.grad_clip > 0, dtype_bytes=act,
                                  param_bytes=4 if act < 4 else None, sequence_parallel=sp)
        rows.append({"plan": plan, "bits": SyncPlan.parse(sync, cfg.n_layer).bitstring,
                     "sync_dtype": wire.dtype, "ladder": ladder, "sequence_parallel": sp,
                     "sent_per_step": round(sum(c.count * sent_bytes(c.op, c.nbytes, cfg.tp)
                                                for c in steps)),
                     **summary, "curve": curve(os.path.join(out, plan_dir_name(plan)))})
    base = next(r for r in rows if r["plan"] == "tp")
    for r in rows:
        r["delta_val_loss"] = r["final_val_loss"] - base["final_val_loss"]
        r["delta_full_val_loss"] = r["full_val_loss"] - base["full_val_loss"]
    write_results(rows, out, cfg)
    return rows


def _variant(cfg: TrainConfig, plan: str) -> Variant:
    """'PLAN[@DTYPE][@ladder][@sp]' -> the Variant; what is not named is the config's."""
    return parse_variant(plan, dtype=cfg.sync_dtype, block=cfg.sync_block, ladder=cfg.ladder,
                         sequence_parallel=cfg.sequence_parallel)


def finished_summary(run_dir: str, max_iters: int) -> dict | None:
    """run_dir's summary.json if its run trained all max_iters iterations, else None."""
    summary = _read_json(os.path.join(run_dir, "summary.json"))
    return summary if summary and summary.get("iters") == max_iters else None


def train_plan(cfg: TrainConfig, plan: str, run_dir: str, echo=print) -> dict:
    """Train `cfg` under `plan` in run_dir (skipped when its summary says it finished, resumed
    from its last checkpoint when interrupted) and return its summary.json, with the exact
    full-split validation loss of the final model added once."""
    from ..train.trainer import Trainer

    sync, wire, ladder, sp = _variant(cfg, plan)
    summary = finished_summary(run_dir, cfg.max_iters)
    if summary and (summary.get("sync_dtype", "float32"), summary.get("ladder", False)) != \
            (wire.dtype, ladder):
        raise ConfigError(f"{run_dir} holds a finished run with sync_dtype="
                          f"{summary.get('sync_dtype', 'float32')}, ladder="
                          f"{summary.get('ladder', False)}, not {wire.dtype}, {ladder}: give the "
                          f"sweep another --out")
    if summary:
        echo(f"{plan}: done before, val loss {summary['final_val_loss']:.4f}")
    else:
        # last.old alone: killed between the two renames of a checkpoint save
        resume = find_checkpoint(os.path.join(run_dir, "last")) is not None
        echo(f"{plan}: " + ("resuming" if resume else "training"))
        trainer = Trainer(replace(cfg, sync=sync, sync_dtype=wire.dtype, ladder=ladder,
                                  sequence_parallel=sp, out_dir=run_dir), resume=resume)
        summary = trainer.run()
        trainer.close()
    if "full_val_loss" not in summary:  # exact, computed once and kept in summary.json
        # the trained function (its plan from the checkpoint), in each process by itself
        summary["full_val_loss"] = evaluate_checkpoint(
            os.path.join(run_dir, "last"), data_dir=cfg.data_dir, distributed=False)["loss"]
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one writer
            tmp = os.path.join(run_dir, "summary.json.tmp")
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=1)
            os.replace(tmp, os.path.join(run_dir, "summary.json"))
    return summary


def curve(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("kind") == "eval":
                    out.append(rec)
    return out


COLUMNS = ["plan", "bits", "forward_syncs", "collectives_per_step", "sent_per_step",
           "full_val_loss",
           "delta_full_val_loss", "final_val_loss", "delta_val_loss", "final_train_loss",
           "train_s"]


def write_results(rows: list[dict], out: str, cfg: TrainConfig) -> None:
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"Sync-plan sweep: {cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}, "
             f"block {cfg.block_size}, tp={cfg.tp}, {cfg.max_iters} iterations, batch "
             f"{cfg.batch_size} x {cfg.gradient_accumulation_steps}, seed {cfg.seed}.", "",
             "| plan | bits (a m per layer) | forward syncs / pass | TP collectives / step | "
             "sent / step (one rank) | val loss, full split | vs all-sync | val loss, sampled | "
             "vs all-sync | train loss, sampled | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["forward_syncs"], r["plan"])):
        lines.append(f"| `{r['plan']}` | `{r['bits']}` | {r['forward_syncs']} | "
                     f"{r['collectives_per_step']} | {r['sent_per_step'] / 2**20:.2f} MiB | "
                     f"{r['full_val_loss']:.4f} | "
                     f"{r['delta_full_val_loss']:+.4f} | {r['final_val_loss']:.4f} | "
                     f"{r['delta_val_loss']:+.4f} | {r['final_train_loss']:.4f} | "
                     f"{_seconds(r.get('train_s'))} |")
    lines += ["", f"val loss, full split: the final model's mean loss over val.bin cut into "
              f"consecutive windows of {cfg.block_size} (the partial last window left out); "
              f"sampled: the training run's "
              f"last evaluation ({cfg.eval_iters} random batches of {cfg.batch_size}), as "
              f"nanoGPT reports it. Train time: the training steps of the whole run, over every "
              f"resumed segment, without evaluation and checkpointing (n/a: resumed from a "
              f"checkpoint that did not record it)."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plots(rows, out)


def _seconds(s: float | None) -> str:
    return "n/a" if s is None else f"{s:.0f}"


def _plots(rows: list[dict], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points: dict[tuple[int, float], list[str]] = {}  # identical models share a point
    for r in rows:
        points.setdefault((r["forward_syncs"], r["full_val_loss"]), []).append(r["plan"])
    ax.scatter([x for x, _ in points], [y for _, y in points], zorder=3)
    for (x, y), names in points.items():
        ax.annotate(" = ".join(names), (x, y), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    frontier, best = [], float("inf")  # lowest loss reachable with at most x syncs
    for x, y in sorted(points):
        if y < best:
            best = y
            frontier.append((x, y))
    frontier.append((max(x for x, _ in points), best))
    ax.step([f[0] for f in frontier], [f[1] for f in frontier], where="post", color="tab:red",
            alpha=0.6, label="frontier: best val loss with at most x syncs")
    ax.set_xlabel("forward all-reduces per pass")
    ax.set_ylabel("final validation loss (full split)")
    ax.set_title("Communication vs quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "frontier.png"), dpi=120)
    plt.close(fig)

    fig, (ax, dax) = plt.subplots(1, 2, figsize=(11, 4.5))
    base = {e["iter"]: e["val_loss"] for e in next(r for r in rows if r["plan"] == "tp")["curve"]}
    for r in sorted(rows, key=lambda r: -r["forward_syncs"]):
        pts = [(e["iter"], e["val_loss"]) for e in r["curve"]]
        if pts:
            label = f"{r['plan']} ({counted(r['forward_syncs'], 'sync')})"
            ax.plot(*zip(*pts), marker=".", label=label)
            dax.plot([i for i, _ in pts], [v - base.get(i, float("nan")) for i, v in pts],
                     marker=".", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation loss (sampled)")
    ax.set_title("Validation loss curves")
    dax.set_xlabel("iteration")
    dax.set_ylabel("difference to the all-sync plan 'tp'")
    dax.set_title("Difference to all-sync")
    for a in (ax, dax):
        a.grid(alpha=0.3)
    dax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)
