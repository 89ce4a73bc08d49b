"""The GPU checklist's correctness part, on one device (no NCCL between GPUs): for GPT-2 and the
Llama family, in float64 on that device, the simulated model of every plan at tp 2 and 4
against the dense GPT (equal within numerics.FLOAT64_RTOL where the plan is exact, counted
collectives equal to the plan everywhere: tpgpt.analysis.verify.check_plan), then in float32
the compiled decode step against the eager one (greedy tokens equal past block_size, dense and
simulated tp=2 with every sync on).

    python benchmarks/gpu_correctness.py --device cuda --out benchmarks/results/gpu/correctness

Exit 1 when a check fails; OUT.json and OUT.md hold every row either way.
"""
from __future__ import annotations

import argparse
import sys

import torch

from tpgpt.analysis.verify import check_plan
from tpgpt.bench.timing import check_out, write_results
from tpgpt.errors import ConfigError
from tpgpt.model import GPT, GPTConfig
from tpgpt.model.generation import generate
from tpgpt.model.parallel_gpt import ParallelGPT

FAMILIES = {
    "gpt2": GPTConfig(block_size=32, vocab_size=96, n_layer=4, n_head=4, n_embd=64),
    "llama": GPTConfig(block_size=32, vocab_size=96, n_layer=4, n_head=4, n_embd=64,
                       bias=False, family="llama", n_kv_head=2, intermediate_size=176,
                       activation="silu", tie_embeddings=False),
}
PLANS = ["tp", "spd", "tp,spd", "parallel", "spd,parallel", "bits:01100111"]


def plan_rows(device) -> list[dict]:
    rows = []
    for fam, cfg in FAMILIES.items():
        torch.manual_seed(1337)
        gpt = GPT(cfg).double().to(device)
        idx = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), device=device)
        targets = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), device=device)
        for tp in (2, 4):
            for sync in PLANS:
                r = check_plan(gpt, tp, sync, idx, targets)
                ok = r["counts_match"] and (not r["exact"] or r["within"])
                rows.append({"check": f"{fam} tp={tp} {sync}: simulated == dense (float64)"
                             if r["exact"] else f"{fam} tp={tp} {sync}: counts == plan",
                             "ok": ok, "detail": f"loss {r['loss_err']:.1e}, logits "
                             f"{r['logits_err']:.1e}, grads {r['grad_err']:.1e} "
                             f"(tol {r['grad_tol']:.0e})"})
    return rows


def compile_rows(device, quick: bool = False) -> list[dict]:
    rows = []
    for fam, cfg in FAMILIES.items():
        torch.manual_seed(0)
        dense = GPT(cfg).to(device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (2, 8), device=device,
                               generator=torch.Generator(device).manual_seed(1))
        n = cfg.block_size + 8  # past block_size: the window restarts
        models = [("simulated tp=2 tp", ParallelGPT.from_dense(dense, tp=2).eval())]
        if not quick:  # (the dry run's: the dense model's compiled decode is in the tests)
            models.insert(0, ("dense", dense))
        for name, model in models:
            eager = generate(model, prompt, n, temperature=0)
            compiled = generate(model, prompt, n, temperature=0, compile=True)
            rows.append({"check": f"{fam} {name}: compiled decode == eager (greedy, {n} tokens)",
                         "ok": bool(torch.equal(eager, compiled)), "detail": ""})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--quick", action="store_true",
                    help="the dry run: the compiled decode of the simulated model only")
    ap.add_argument("--out", required=True, help="write OUT.json and OUT.md (new files only)")
    args = ap.parse_args(argv)
    try:
        out = check_out(args.out, overwrite=False)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no GPU here")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    rows = plan_rows(device) + compile_rows(device, args.quick)
    md = "\n".join(["| check | result | detail |", "|---|---|---|"] +
                   [f"| {r['check']} | {'ok' if r['ok'] else 'FAILED'} | {r['detail']} |"
                    for r in rows])
    write_results(out, {"device": str(device), "rows": rows}, md)
    print(md)
    failed = [r["check"] for r in rows if not r["ok"]]
    if failed:
        print(f"error: {len(failed)} check(s) failed, first: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
