"""`tpgpt eval`: the exact loss of a checkpoint over a whole split, as the function it was
trained to be, or under another tp and plan given on purpose (a zero-shot conversion)."""
from __future__ import annotations

import argparse
import json

from .common import add_plan_args, flag, is_rank0, shutdown


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
    ev.add_argument("--split", choices=["val", "train"], default="val")
    flag(ev, "data_dir", default=None,
         help="the prepared dataset (default: the one the checkpoint was trained on)")
    flag(ev, "batch_size", type=int, default=None,
         help="windows per forward pass (default: as many as fit 256 MiB of logits, at most 64)")
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    ev.add_argument("--json", action="store_true", help="print JSON for machines")
    ev.set_defaults(func=run)
    return ev


def run(args) -> int:
    from ..analysis.evaluate import evaluate_checkpoint

    try:
        r = evaluate_checkpoint(args.ckpt, tp=args.tp, sync=args.sync, sync_dtype=args.sync_dtype,
                                sync_block=args.sync_block, split=args.split,
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
