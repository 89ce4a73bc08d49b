"""`tpgpt export`: a checkpoint as a Hugging Face GPT-2 directory."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    exp = sub.add_parser("export", help="write a checkpoint as an HF GPT-2 directory")
    exp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    exp.add_argument("--out", required=True, help="directory for model.safetensors + config.json")
    exp.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    exp.set_defaults(func=run)
    return exp


def run(args) -> int:
    from ..checkpoint.hf import export_hf

    found = export_hf(args.ckpt, args.out, force=args.force)
    print(f"exported {found} to {args.out} (model.safetensors, config.json): loads with "
          f"tpgpt.checkpoint.hf.load_hf and transformers' GPT2LMHeadModel.from_pretrained")
    return 0
