"""`tpgpt sample`: text from a checkpoint, reproducible from a seed."""
from __future__ import annotations

import argparse

from .common import flag


def register(sub) -> argparse.ArgumentParser:
    samp = sub.add_parser("sample", help="generate text from a checkpoint")
    samp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    samp.add_argument("--prompt", default="\n")
    flag(samp, "num_samples", type=int, default=3)
    flag(samp, "max_new_tokens", type=int, default=500)
    samp.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    flag(samp, "top_k", type=int, default=200)
    samp.add_argument("--seed", type=int, default=1337)
    samp.add_argument("--device", default="cpu")
    samp.set_defaults(func=run)
    return samp


def run(args) -> int:
    from ..inference.sample import sample

    texts = sample(args.ckpt, args.prompt, args.num_samples, args.max_new_tokens,
                   args.temperature, args.top_k, args.seed, args.device)
    print("\n---------------\n".join(texts))
    return 0
