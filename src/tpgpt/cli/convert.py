"""`tpgpt convert`: a checkpoint as another plan's function (zero-shot), heads regrouped on
request."""
from __future__ import annotations

import argparse
import json

from .common import add_calibration_args, flag


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="save a checkpoint's weights under another plan",
                       description="Write a checkpoint of the same weights whose function is "
                                   "--sync at --tp (a zero-shot conversion), which eval "
                                   "and sample then run as that function. --head-grouping first "
                                   "regroups the heads of every layer that drops its attention "
                                   "sync across the ranks (the dense function is unchanged), "
                                   "chosen on calibration data to bring each rank's stream "
                                   "closest to the all-sync one.")
    p.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    p.add_argument("--sync", required=True, metavar="PLAN", help="the new plan (tp, spd, "
                   "parallel, a comma list, bits:...)")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel degree")
    p.add_argument("--out", required=True, help="the new checkpoint directory (must not exist)")
    flag(p, "head_grouping", action="store_true", help="regroup heads across ranks first")
    add_calibration_args(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..analysis.convert import convert, format_convert

    r = convert(args.ckpt, args.out, args.sync, args.tp, args.head_grouping, args.tokens,
                args.split, args.data_dir)
    print(json.dumps(r, indent=2) if args.json else format_convert(r))
    return 0
