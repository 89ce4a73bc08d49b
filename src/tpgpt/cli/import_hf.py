"""`tpgpt import-hf`: a Hugging Face GPT-2 directory as a tpgpt checkpoint."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    imp = sub.add_parser("import-hf", help="read an HF GPT-2 (a directory or Hub id) into a "
                                           "tpgpt checkpoint")
    imp.add_argument("path", help="a directory with config.json and model.safetensors, or a "
                     "Hugging Face Hub model id (gpt2), loaded through transformers")
    imp.add_argument("--out", required=True, help="the checkpoint directory to write")
    imp.add_argument("--data-dir", default=None,
                     help="a prepared dataset tokenized as the model is (checked), recorded "
                          "as the model's data: eval, sensitivity, convert and distill then "
                          "need no --data-dir")
    imp.set_defaults(func=run)
    return imp


def run(args) -> int:
    from ..checkpoint.hf import import_hf

    import_hf(args.path, args.out, args.data_dir)
    print(f"imported {args.path} as the tpgpt checkpoint {args.out}"
          + (f", its data {args.data_dir}" if args.data_dir else
             "; it names no data: pass --data-dir to eval (or to this command)"))
    return 0
