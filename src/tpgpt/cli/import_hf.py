"""`tpgpt import-hf`: a Hugging Face GPT-2, Llama, Mistral, Qwen2 or Qwen3 as a tpgpt checkpoint."""
from __future__ import annotations

import argparse

from .common import flag


def register(sub) -> argparse.ArgumentParser:
    imp = sub.add_parser(
        "import-hf", help="read an HF GPT-2, Llama, Mistral, Qwen2 or Qwen3 (a directory or Hub "
                          "id) into a tpgpt checkpoint",
        description="Reads config.json, the weights (model.safetensors, or the shards of "
                    "model.safetensors.index.json; never pickles) and the tokenizer saved "
                    "beside them (tokenizer.json, or a sentencepiece tokenizer.model), which the "
                    "checkpoint carries. A model tpgpt cannot compute exactly (another "
                    "architecture or rope type, a mixture of experts, a sliding window shorter "
                    "than the context, a missing or misshapen tensor) is refused in one line and "
                    "nothing is written.")
    imp.add_argument("path", help="a directory saved by transformers, or a Hugging Face Hub "
                     "model id (gpt2, Qwen/Qwen2.5-0.5B), fetched into the Hub's cache")
    imp.add_argument("--out", required=True, help="the checkpoint directory to write")
    imp.add_argument("--data-dir", default=None,
                     help="a prepared dataset tokenized as the model is (checked), recorded "
                          "as the model's data: eval, sensitivity, convert and distill then "
                          "need no --data-dir")
    imp.add_argument("--dtype", default="float32",
                     choices=["keep", "float32", "float64", "bfloat16", "float16"],
                     help="the dtype the checkpoint holds the weights in (keep: the files'); "
                          "float32 is what tpgpt trains and evaluates on a CPU")
    flag(imp, "block_size", type=int, default=None,
         help="the context the model runs (default: the config's max_position_embeddings or "
              "n_positions); a sliding window must be at least this long")
    imp.set_defaults(func=run)
    return imp


def run(args) -> int:
    from ..checkpoint.hf import import_hf

    model = import_hf(args.path, args.out, args.data_dir, args.dtype, args.block_size)
    c = model.config
    print(f"imported {args.path} ({c.family}, {c.n_layer} layers, {c.n_head} heads / "
          f"{c.kv_heads} KV heads, {sum(p.numel() for p in model.parameters()):,} parameters in "
          f"{str(model.transformer.wte.weight.dtype).removeprefix('torch.')}, block_size "
          f"{c.block_size}) as the tpgpt checkpoint {args.out}"
          + (f", its data {args.data_dir}" if args.data_dir else
             "; it names no data: pass --data-dir to eval (or to this command)"))
    return 0
