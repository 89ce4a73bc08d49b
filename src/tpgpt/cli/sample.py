"""`tpgpt sample`: text from a checkpoint, as the function it was trained to be."""
from __future__ import annotations

import argparse

from .common import add_plan_args, flag, is_rank0, shutdown


def register(sub) -> argparse.ArgumentParser:
    samp = sub.add_parser("sample", help="generate text from a checkpoint",
                          description="Generate text with the model a checkpoint was trained to "
                                      "be: its tp and sync plan, simulated in one process or, "
                                      "under torchrun, distributed. The header line names them.")
    samp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    samp.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    flag(samp, "num_samples", type=int, default=None,
         help="samples to print (default 3; 1 with --temperature 0, whose samples are all the "
              "same)")
    flag(samp, "max_new_tokens", type=int, default=500)
    samp.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    flag(samp, "top_k", type=int, default=200)
    samp.add_argument("--seed", type=int, default=1337)
    samp.add_argument("--device", default="cpu", help="cpu or cuda")
    samp.add_argument("--kv-cache", "--kv_cache", dest="kv_cache", default=True,
                      action=argparse.BooleanOptionalAction,
                      help="decode with the KV cache (default); --no-kv-cache recomputes the "
                           "whole context for every token (the same text, slower)")
    samp.add_argument("--stop-at-eos", "--stop_at_eos", dest="stop_at_eos", default=True,
                      action=argparse.BooleanOptionalAction,
                      help="end a sample at the tokenizer's end-of-sequence token (default; "
                           "GPT-2's <|endoftext|>, an HF model's eos_token_id); "
                           "--no-stop-at-eos prints --max-new-tokens tokens")
    samp.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                      help="compile the decode step (one graph over a static KV cache; the "
                           "same tokens); MODE: a torch.compile mode, e.g. reduce-overhead "
                           "(CUDA graphs)")
    add_plan_args(samp)
    samp.set_defaults(func=run)
    return samp


def run(args) -> int:
    from ..checkpoint.load import load_trained
    from ..inference.sample import check_sampling, sample
    from ..model.generation import compile_mode

    if args.num_samples is None:
        args.num_samples = 1 if args.temperature == 0 else 3
    check_sampling(args.num_samples, args.max_new_tokens, args.temperature, args.top_k)
    if args.compile is not False:  # before the checkpoint is loaded
        compile_mode(args.compile, args.kv_cache, name="--compile")
    try:
        loaded = load_trained(args.ckpt, tp=args.tp, sync=args.sync, device=args.device,
                              sync_dtype=args.sync_dtype, sync_block=args.sync_block)
        texts = sample(args.ckpt, args.prompt, args.num_samples, args.max_new_tokens,
                       args.temperature, args.top_k, args.seed, args.device, loaded=loaded,
                       kv_cache=args.kv_cache, stop_at_eos=args.stop_at_eos,
                       compile=args.compile)
    finally:
        shutdown()
    if is_rank0():
        print(f"tpgpt sample: {loaded.path} ({loaded.history}): {loaded.describe()}")
        print("\n---------------\n".join(texts))
    return 0
