"""`tpgpt prepare`: tokenize a dataset into train.bin, val.bin and meta.json."""
from __future__ import annotations

import argparse

from .common import CliError, flag


def register(sub) -> argparse.ArgumentParser:
    prep = sub.add_parser("prepare", help="tokenize a dataset into train.bin/val.bin/meta.json")
    prep.add_argument("dataset", choices=["shakespeare_char", "text", "openwebtext"])
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--input", help="a local text file (shakespeare_char: a local copy of the "
                                      "corpus instead of the download; default $TPGPT_SHAKESPEARE)")
    prep.add_argument("--tokenizer", choices=["char", "byte"], default="char", help="text only")
    flag(prep, "val_fraction", type=float, default=0.1, help="text only (default 0.1)")
    flag(prep, "num_proc", type=int, default=8, help="openwebtext only: tokenizer processes")
    prep.add_argument("--force", action="store_true", help="replace a prepared dataset in --out")
    prep.set_defaults(func=run)
    return prep


def run(args) -> int:
    from .. import data

    if args.dataset == "shakespeare_char":
        meta = data.prepare_shakespeare_char(args.out, args.input, force=args.force)
    elif args.dataset == "text":
        if not args.input:
            raise CliError("tpgpt prepare text: --input FILE is required")
        meta = data.prepare_text(args.out, args.input, args.tokenizer, args.val_fraction,
                                 force=args.force)
    else:
        meta = data.prepare_openwebtext(args.out, num_proc=args.num_proc, force=args.force)
    print(f"prepared {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens, tokenizer {meta['tokenizer']}, vocab_size {meta['vocab_size']}")
    return 0
