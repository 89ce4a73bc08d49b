"""`tpgpt sensitivity`: which syncs a trained model can drop, measured, and the plan a budget of
forward syncs gets."""
from __future__ import annotations

import argparse
import json

from .common import add_calibration_args, flag


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sensitivity", help="loss increase per dropped sync; a plan for a budget",
                       description="On a fixed held-out set (the first --tokens tokens of a "
                                   "split), the loss increase of the checkpoint at --tp when "
                                   "each sync point alone is dropped (zero-shot), and the SPD "
                                   "paper's backward cumulative sensitivity of the attention "
                                   "syncs. With --budget K, the plan of K forward syncs found "
                                   "greedily (drop the least harmful sync, re-measure, repeat), "
                                   "as a bits: plan for --sync; --search lazy (the default) "
                                   "re-measures only the most promising syncs, O(L) "
                                   "evaluations for L layers instead of exact's O(L^2).")
    p.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel degree (default 2)")
    add_calibration_args(p)
    p.add_argument("--budget", type=int, default=None,
                   help="forward syncs to keep: print the greedy plan with that many")
    p.add_argument("--search", choices=["lazy", "exact"], default="lazy",
                   help="--budget's greedy search: lazy re-measures only the most promising "
                        "candidates after each drop; exact re-measures every one")
    flag(p, "batch_size", type=int, default=None,
         help="windows per forward pass (default: as many as fit 256 MiB of logits, at most 64)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--out", metavar="NAME", help="write NAME.json, NAME.md and NAME.png")
    p.add_argument("--overwrite", action="store_true", help="replace earlier --out results")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..analysis.sensitivity_plot import plot_sensitivity
    from ..analysis.sensitivity_report import format_sensitivity, sensitivity
    from ..bench.timing import check_out, write_results

    base = check_out(args.out, args.overwrite, (".json", ".md", ".png"))
    png = base + ".png" if base else None
    r = sensitivity(args.ckpt, args.tp, args.tokens, args.split, args.data_dir, args.budget,
                    args.batch_size, args.search)
    text = format_sensitivity(r)
    print(json.dumps(r, indent=2) if args.json else text)
    if args.out:
        paths = write_results(args.out, r, text, args.overwrite)
        plot_sensitivity(r, png, args.overwrite)
        if not args.json:
            print(f"\nwrote {', '.join(paths)} and {png}")
    return 0
