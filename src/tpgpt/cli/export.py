"""`tpgpt export`: a checkpoint as a Hugging Face directory of its family."""
from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    exp = sub.add_parser("export", help="write a checkpoint as an HF directory (GPT-2, Llama, "
                                        "Mistral, Qwen2, Qwen3) with its tokenizer",
                         description="An HF model computes the dense model, so only a "
                                     "checkpoint trained with every sync on (or at tp=1) exports "
                                     "as the function it is; others are refused unless "
                                     "--as-dense. An imported model goes back as the "
                                     "architecture it came from.")
    exp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    exp.add_argument("--out", required=True, help="directory for model.safetensors, config.json "
                                                   "and the tokenizer")
    exp.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    exp.add_argument("--as-dense", "--as_dense", dest="as_dense", action="store_true",
                     help="export the weights of a checkpoint whose plan drops syncs as the dense "
                          "model anyway: the exported model computes another function than the "
                          "one trained (it has every sync on)")
    exp.set_defaults(func=run)
    return exp


def run(args) -> int:
    from ..checkpoint.hf import export_hf

    import os

    found, changed = export_hf(args.ckpt, args.out, force=args.force, as_dense=args.as_dense)
    files = ["model.safetensors", "config.json"] + \
        (["tokenizer.json"] if os.path.exists(os.path.join(args.out, "tokenizer.json")) else [])
    print(f"exported {found} to {args.out} ({', '.join(files)})"
          + (" as the dense model (--as-dense: not the function it was trained as)"
             if changed else "")
          + ": loads with tpgpt import-hf and transformers' AutoModelForCausalLM.from_pretrained")
    return 0
