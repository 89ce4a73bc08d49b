"""`tpgpt train`: a TOML preset plus --key=value overrides, alone or under torchrun."""
from __future__ import annotations

import argparse
import os

from .common import is_rank0, shutdown


def register(sub) -> argparse.ArgumentParser:
    train = sub.add_parser("train", help="train a GPT under a sync plan (alone or under torchrun)",
                           description="Train from a TOML preset (a path or a name in configs/) "
                                       "with --key=value overrides of any config field.")
    from ..train.config import overrides_help
    train.epilog = overrides_help()
    train.add_argument("config", help="TOML config: path or preset name")
    train.add_argument("--resume", action="store_true",
                       help="continue from out_dir/last exactly where it stopped")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an out_dir that holds a checkpoint (replacing it)")
    train.set_defaults(func=run, takes_overrides=True)
    return train


def run(args, extra: list[str]) -> int:
    from ..checkpoint.store import find_checkpoint
    from ..comm.distributed import restart_count
    from ..train.config import load_config, parse_overrides
    from ..train.trainer import Trainer

    cfg = load_config(args.config, parse_overrides(extra))
    resume = args.resume
    restarts = restart_count()
    if restarts and not resume:
        # torchrun --max-restarts restarted the workers after a failure: continue, don't restart
        resume = find_checkpoint(os.path.join(cfg.out_dir, "last")) is not None
        if resume and is_rank0():
            print(f"tpgpt train: restart {restarts} by torchrun: resuming from "
                  f"{cfg.out_dir}/last", flush=True)
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=args.overwrite or bool(restarts))
        trainer.run()
        trainer.close()
    finally:
        shutdown()
    return 0
