"""Per-token decode time with the KV cache against recomputing the whole context, one process,
the dense GPT (12 layers, 12 heads, 384 wide), greedy, batch 1, after a prefill of CONTEXT
tokens; interleaved rounds, medians. A first figure until `tpgpt bench decode` (issue 11).

    python benchmarks/kv_cache_speedup.py [--context 256] [--tokens 32] [--rounds 3]
"""
import argparse
import statistics
import time

import torch

from tpgpt import GPT, GPTConfig
from tpgpt.inference.generate import decode


def per_token_s(model, idx, tokens: int, kv_cache: bool) -> float:
    steps = decode(model, idx, tokens + 1, temperature=0, kv_cache=kv_cache)
    next(steps)  # the prefill is not a decode step
    t0 = time.perf_counter()
    for _ in steps:
        pass
    return (time.perf_counter() - t0) / tokens


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=2 * args.context, vocab_size=512, n_layer=12, n_head=12,
                    n_embd=384)
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, args.context))
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for kv in (True, False):
            times[kv].append(per_token_s(model, idx, args.tokens, kv))
    cached, full = statistics.median(times[True]), statistics.median(times[False])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 12 layers, 384 wide, "
          f"{args.context} tokens of context, batch 1, {args.tokens} tokens x {args.rounds} "
          f"rounds: {cached * 1e3:.1f} ms/token with the KV cache, {full * 1e3:.1f} ms/token "
          f"recomputing ({full / cached:.1f}x)")
