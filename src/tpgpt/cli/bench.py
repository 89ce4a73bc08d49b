"""`tpgpt bench`: its options; the benchmarks themselves are in tpgpt/bench/."""
from __future__ import annotations

import argparse
import importlib

from .common import positive_int


def register(sub) -> argparse.ArgumentParser:
    bench = sub.add_parser("bench", help="measurements: throughput; under torchrun: comm, "
                                         "plans, dist, decode",
                           description="throughput: dense vs simulated tp=2, tp=4 training steps. "
                                       "dist: tpgpt's distributed TP (per plan) against "
                                       "PyTorch's DTensor TP on the same model. "
                                       "comm: all-reduce latency and bandwidth from 8 B to 64 MB "
                                       "on the current backend, fitted to the alpha-beta model. "
                                       "plans: each sync plan's measured step time against the "
                                       "cost model, calibrated on one plan and checked on the "
                                       "others. decode: time to first token and per-token "
                                       "decode latency of each plan with its KV cache, beside "
                                       "the dense model and transformers' generate, against "
                                       "the generation cost model. comm, plans, dist and decode "
                                       "run under torchrun.")
    bench.add_argument("what", choices=["throughput", "comm", "plans", "dist", "decode"])
    bench.add_argument("--shapes", nargs="+", default=["cpu-preset", "12-layer"],
                       choices=["cpu-preset", "12-layer", "llama-cpu", "gpt2-small", "llama-150m"],
                       help="throughput, decode: model shapes (decode: cpu-preset, 12-layer, "
                            "llama-cpu); dist: the first one")
    bench.add_argument("--ckpt", metavar="DIR",
                       help="decode: a checkpoint's own shape and weights (an imported Llama, "
                            "Mistral or Qwen, or a trained run) instead of --shapes")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="throughput: where to run (auto: a GPU if there is one)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                       help="throughput: float32, or bfloat16 autocast")
    bench.add_argument("--compile", action="store_true", help="throughput: torch.compile")
    bench.add_argument("--repeats", type=positive_int, default=20,
                       help="comm, plans: all-reduce timings per message size (default 20)")
    bench.add_argument("--config", default="shakespeare_char_cpu",
                       help="plans: model shape and batch from this config")
    bench.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int,
                       help="plans: sequences per step (default: the config's)")
    bench.add_argument("--plans", nargs="+", default=["tp", "tp,spd", "spd", "parallel"],
                       help="plans, dist, decode: sync plans to time")
    bench.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8],
                       help="decode: batch sizes (default 1 8)")
    bench.add_argument("--rounds", type=positive_int, default=3,
                       help="decode: timed generations per plan, after one warm-up (default 3)")
    bench.add_argument("--prompt-len", "--prompt_len", dest="prompt_len", type=positive_int,
                       help="decode: prompt tokens (default block_size // 2)")
    bench.add_argument("--new-tokens", "--new_tokens", dest="new_tokens", type=positive_int,
                       help="decode: tokens generated per round (default up to 128)")
    bench.add_argument("--no-cache-tokens", "--no_cache_tokens", dest="no_cache_tokens",
                       type=positive_int, default=16,
                       help="decode: tokens the dense GPT generates without its cache, batch "
                            "1, for the cache's speed-up (default 16)")
    bench.add_argument("--calibrate-on", "--calibrate_on", dest="calibrate_on", metavar="PLAN",
                       help="plans, decode: the one plan that calibrates the in-step overhead "
                            "(default: the one with the most collectives)")
    bench.add_argument("--profile", metavar="FILE",
                       help="plans: validate this profile (from an earlier bench plans/comm run) "
                            "as it is, calibrating nothing")
    bench.add_argument("--steps", type=positive_int,
                       help="timed steps per model (default: throughput 30, plans 60, dist 20)")
    bench.add_argument("--out", metavar="NAME",
                       help="write NAME.json (all numbers; comm, plans: a profile for "
                            "'tpgpt plan --interconnect') and NAME.md (the tables)")
    bench.add_argument("--overwrite", action="store_true", help="replace earlier --out results")
    bench.set_defaults(func=run)
    return bench


def run(args) -> int:
    module = {"throughput": "throughput", "comm": "comm", "plans": "plans", "dist": "dtensor",
              "decode": "decode_report"}
    return getattr(importlib.import_module(f"..bench.{module[args.what]}", __package__),
                   f"run_{args.what}_cli")(args)
