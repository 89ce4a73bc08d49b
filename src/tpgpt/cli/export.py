"""`tpgpt export`: a checkpoint as a Hugging Face GPT-2 directory."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    exp = sub.add_parser("export", help="write a checkpoint as an HF GPT-2 directory",
                         description="An HF GPT-2 computes the dense GPT, so only a checkpoint "
                                     "trained with every sync on (or at tp=1) exports as the "
                                     "function it is; others are refused unless --as-dense.")
    exp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    exp.add_argument("--out", required=True, help="directory for model.safetensors + config.json")
    exp.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    exp.add_argument("--as-dense", "--as_dense", dest="as_dense", action="store_true",
                     help="export the weights of a checkpoint whose plan drops syncs as the dense "
                          "GPT anyway: the exported model computes another function than the "
                          "one trained (it has every sync on)")
    exp.set_defaults(func=run)
    return exp


def run(args) -> int:
    from ..checkpoint.hf import export_hf

    found, changed = export_hf(args.ckpt, args.out, force=args.force, as_dense=args.as_dense)
    print(f"exported {found} to {args.out} (model.safetensors, config.json)"
          + (" as the dense GPT (--as-dense: not the function it was trained as)"
             if changed else "")
          + ": loads with tpgpt.checkpoint.hf.load_hf and transformers' "
            "GPT2LMHeadModel.from_pretrained")
    return 0
