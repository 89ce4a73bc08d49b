"""`tpgpt eval`: the exact loss of a checkpoint over a whole split, as the function it was
trained to be, or under another tp and plan given on purpose (a zero-shot conversion)."""
from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from .common import (add_plan_args, flag, is_rank0, non_negative_int, positive_float,
                     shutdown)


def register(sub) -> argparse.ArgumentParser:
    ev = sub.add_parser("eval", help="exact loss of a checkpoint over a whole split",
                        description="The mean loss over the split cut into consecutive windows "
                                    "of block_size (the tail shorter than a window, under "
                                    "block_size targets, is left out) of a checkpoint under "
                                    "its trained "
                                    "tp and sync plan, or under --tp/--sync (a zero-shot "
                                    "conversion). Under torchrun the model runs distributed.")
    ev.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    add_plan_args(ev)
    ev.add_argument("--split", choices=["val", "train"], default=None,
                    help="the split whose loss to compute (default val)")
    flag(ev, "data_dir", default=None,
         help="the prepared dataset (default: the one the checkpoint was trained on)")
    flag(ev, "batch_size", type=int, default=None,
         help="windows per forward pass (default: as many as fit 256 MiB of logits, at most 64)")
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    tasks = ev.add_argument_group(
        "downstream tasks", "with --tasks, lm-evaluation-harness's tasks instead of the loss "
                            "over a split (the model as `simple_evaluate(model=\"tpgpt\", "
                            "...)` runs it: tpgpt.analysis.harness)")
    tasks.add_argument("--tasks", default=None, metavar="T1,T2",
                       help="lm-eval task names, comma-separated")
    flag(tasks, "include_path", default=None, metavar="DIR",
         help="a folder of task YAML files of your own (lm-eval's --include_path)")
    tasks.add_argument("--limit", type=positive_float, default=None, metavar="N",
                       help="at most N documents per task (a fraction below 1)")
    flag(tasks, "num_fewshot", type=non_negative_int, default=None, metavar="K",
         help="few-shot examples per prompt (default: the task's)")
    ev.add_argument("--json", action="store_true", help="print JSON for machines")
    ev.set_defaults(func=run)
    return ev


def run(args) -> int:
    if args.tasks is not None:
        return run_tasks(args)
    for name in ("include_path", "limit", "num_fewshot"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} is an option of --tasks (downstream "
                              f"tasks through lm-eval): give --tasks too")
    from ..analysis.evaluate import evaluate_checkpoint

    try:
        r = evaluate_checkpoint(args.ckpt, tp=args.tp, sync=args.sync, sync_dtype=args.sync_dtype,
                                sync_block=args.sync_block, split=args.split or "val",
                                data_dir=args.data_dir, batch_size=args.batch_size,
                                device=args.device)
    finally:
        shutdown()
    if not is_rank0():
        return 0
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"tpgpt eval: {r['checkpoint']} ({r['history']})\n"
          f"  plan: {r['description']}\n"
          f"  {r['split']} loss {r['loss']:.4f} over {r['tokens']:,} of "
          f"{r['tokens'] + r['targets_left_out']:,} next-token targets (consecutive windows of "
          f"{r['block_size']} in {r['data']}; the last {r['targets_left_out']:,}, short of a "
          f"window, are left out)")
    return 0


def run_tasks(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError(f"--tasks {args.tasks!r} names no task")
    if args.data_dir is not None or args.split is not None:
        raise ConfigError("--tasks scores lm-eval tasks, not a split: drop --data-dir/--split")
    try:
        from ..analysis.harness import evaluate_tasks
    except ImportError as e:
        raise ConfigError(f"--tasks needs lm-evaluation-harness ({e.name} is not installed): "
                          f"pip install lm_eval") from None
    try:
        r = evaluate_tasks(args.ckpt, tasks, tp=args.tp, sync=args.sync,
                           sync_dtype=args.sync_dtype, sync_block=args.sync_block,
                           include_path=args.include_path, limit=args.limit,
                           num_fewshot=args.num_fewshot, batch_size=args.batch_size or 8,
                           device=args.device)
    finally:
        shutdown()
    if not is_rank0():
        return 0
    table = r.pop("table")
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    print(f"tpgpt eval: {r['checkpoint']} ({r['history']})\n  plan: {r['description']}\n"
          f"{table}")
    return 0
