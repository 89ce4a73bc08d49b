"""`tpgpt sweep`: one model per sync plan, same data, seed and budget; a table and plots."""
from __future__ import annotations

import argparse
import os

from .common import is_rank0, shutdown


def register(sub) -> argparse.ArgumentParser:
    sw = sub.add_parser("sweep", help="train one model per sync plan; table and plots",
                        description="Trains CONFIG once per plan (same data, seed, budget) in "
                                    "OUT/<plan>/, then writes results.csv, results.md, "
                                    "frontier.png and loss_curves.png. Rerun to resume.")
    from ..train.config import overrides_help
    sw.epilog = overrides_help()
    sw.add_argument("config", help="TOML config: path or preset name")
    sw.add_argument("--plans", nargs="+", required=True, metavar="PLAN",
                    help="sync plans (PLAN@DTYPE: its syncs sent in DTYPE, e.g. tp@int8); the "
                         "all-sync 'tp' baseline is added if missing")
    sw.add_argument("--out", required=True, help="sweep directory")
    sw.set_defaults(func=run, takes_overrides=True)
    return sw


def run(args, extra: list[str]) -> int:
    from ..analysis.sweep import run_sweep
    from ..train.config import load_config, parse_overrides

    cfg = load_config(args.config, parse_overrides(extra))
    echo = print if is_rank0() else (lambda *a: None)
    try:
        rows = run_sweep(cfg, args.plans, args.out, echo=echo)
    finally:
        shutdown()
    echo(f"\nwrote {args.out}/results.md, results.csv, frontier.png, loss_curves.png")
    with open(os.path.join(args.out, "results.md")) as f:
        echo(f.read())
    return 0 if rows else 1
