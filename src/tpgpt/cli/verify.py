"""`tpgpt verify`: on a small model, parallel == dense and counted collectives == plan."""
from __future__ import annotations

import argparse
import os

from .common import add_model_args, boolean, flag, int_list, model_config


def register(sub) -> argparse.ArgumentParser:
    ver = sub.add_parser("verify", help="check parallel == dense and counts == plan",
                         description="On a small model: simulated TP with every sync on equals "
                                     "the dense GPT, and every plan's collectives equal the plan. "
                                     "Under torchrun: distributed equals simulated, every plan.")
    add_model_args(ver, n_layer=4, n_head=4, n_embd=64, vocab_size=96, block_size=32)
    ver.add_argument("--tp", type=int_list, default=[1, 2, 4], help="comma list (default 1,2,4)")
    ver.add_argument("--plans", nargs="+", default=["tp", "spd", "tp,spd", "parallel",
                                                    "spd,parallel", "bits:01100111"])
    flag(ver, "vocab_parallel", type=boolean, nargs="?", const=True, default=False)
    flag(ver, "batch_size", type=int, default=4)
    ver.add_argument("--seed", type=int, default=1337)
    ver.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                     help="float64 (default): equal up to reordered sums, on any CPU; float32: "
                          "as close to the exact function as the reference's float32 result")
    ver.set_defaults(func=run)
    return ver


def run(args) -> int:
    import torch

    from ..analysis.verify import check_distributed, check_plan
    from ..comm.plan import validate_tp
    from ..model import GPT

    cfg = model_config(args)
    for tp in args.tp:
        validate_tp(tp, cfg, args.vocab_parallel)
    torch.manual_seed(args.seed)
    gpt = GPT(cfg).to(getattr(torch, args.dtype))
    idx = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.block_size))
    targets = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.block_size))
    distributed = "RANK" in os.environ
    if distributed:
        from ..comm.distributed import init_distributed
        rank, _, _ = init_distributed(backend="gloo")
    rows = []
    try:
        for tp in args.tp:
            for sync in args.plans:
                check = check_distributed if distributed else check_plan
                rows.append(check(gpt, tp, sync, idx, targets, args.vocab_parallel))
    finally:
        if distributed:
            import torch.distributed as dist
            dist.barrier()
            dist.destroy_process_group()
    ok = all(r["counts_match"] and (not r["exact"] or r["within"]) for r in rows)
    if distributed and rank != 0:
        return 0 if ok else 1
    ref = "the simulated run" if distributed else "the dense GPT"
    if args.dtype == "float64":
        print(f"float64: relative differences from {ref} (tolerance in brackets: reordered "
              f"sums only)")
    else:
        print(f"float32: relative errors against {ref} computed in float64 (tolerance in "
              f"brackets: the float32 {'simulated run' if distributed else 'dense GPT'}'s own "
              f"error)")
    print(f"{'tp':>3}  {'sync':<24} {'fwd syncs':>9}  {'function':<13} {'loss':>17} "
          f"{'logits':>17} {'grads':>17}  {'result':<13} counts = plan")
    passed = "equal" if args.dtype == "float64" else "within"
    for r in rows:
        function = "the same" if r["exact"] else "another model"
        result = "not compared" if not r["exact"] else passed if r["within"] else "DIFFERS"
        errs = " ".join(f"{r[p + '_err']:7.1e} ({r[p + '_tol']:6.0e})"
                        for p in ("loss", "logits", "grad"))
        print(f"{r['tp']:>3}  {r['sync']:<24} {r['forward_syncs']:>9}  {function:<13} {errs}  "
              f"{result:<13} {'yes' if r['counts_match'] else 'NO'}")
    print(f"\n{'all checks passed' if ok else 'CHECKS FAILED'} (tolerances: "
          f"tpgpt/analysis/numerics.py; 'the same': the plan computes {ref}'s "
          f"function" + (")" if distributed else "; 'another model': the plan drops syncs, so "
                         "its differences are shown but only its counts are checked)"))
    return 0 if ok else 1
