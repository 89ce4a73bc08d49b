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
    prep.add_argument("--tokenizer", default="char",
                      help="text only: char, byte, or a model's own tokenizer: a tpgpt "
                           "checkpoint (an imported one carries its model's) or a Hugging Face "
                           "model directory (tokenizer.json or tokenizer.model)")
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
        meta = data.prepare_text(args.out, args.input, _tokenizer(args.tokenizer),
                                 args.val_fraction, force=args.force)
    else:
        meta = data.prepare_openwebtext(args.out, num_proc=args.num_proc, force=args.force)
    print(f"prepared {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens, tokenizer {data.describe_tokenizer(meta)}, vocab_size {meta['vocab_size']}")
    return 0


def _tokenizer(name: str):
    """char or byte as named; otherwise the tokenizer of a checkpoint or an HF directory."""
    import os

    from .. import data
    from ..checkpoint.store import find_checkpoint, load_meta

    if name in ("char", "byte"):
        return name
    if not os.path.isdir(name):
        raise CliError(f"--tokenizer {name!r} is neither char, byte nor a directory (a tpgpt "
                       f"checkpoint or a Hugging Face model directory)")
    for candidate in (name, os.path.join(name, "best"), os.path.join(name, "last")):
        if find_checkpoint(candidate):
            # a character checkpoint's own vocabulary (text outside it is refused)
            return data.tokenizer_from_meta(load_meta(find_checkpoint(candidate)))
    tok = data.hf_tokenizer_from_dir(name)
    if tok is None:
        raise CliError(f"--tokenizer {name} holds no tpgpt checkpoint, tokenizer.json nor "
                       f"tokenizer.model")
    return tok
