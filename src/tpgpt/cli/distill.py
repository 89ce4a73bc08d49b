"""`tpgpt distill`: block-to-block distillation of a converted checkpoint against its teacher."""
from __future__ import annotations

import argparse
import json

from .common import add_calibration_args, boolean, flag, is_rank0, positive_int


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="recover a converted model's loss by distillation",
                       description="Train the blocks whose syncs the student's plan drops (each "
                                   "region between two syncs) to reproduce the teacher's "
                                   "residual stream after it, from the teacher's stream before "
                                   "it (mean squared error; only those blocks' parameters "
                                   "train), then optionally --kl-steps on the KL divergence to "
                                   "the teacher's logits. Writes OUT/last (a checkpoint of the "
                                   "student's plan), metrics.jsonl and summary.json.")
    p.add_argument("--ckpt", required=True, help="the student: a checkpoint that drops syncs "
                   "(tpgpt convert's output)")
    p.add_argument("--teacher", required=True, help="the all-sync model it was converted from")
    p.add_argument("--steps", type=int, required=True, help="block-to-block steps")
    p.add_argument("--out", required=True, help="the run directory")
    flag(p, "kl_steps", type=int, default=0, help="end-to-end KL steps after them (default 0)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW, warm-up "
                   "then cosine decay to lr/10; default 3e-4)")
    flag(p, "batch_size", type=int, default=16, help="windows of block_size per step "
         "(default 16)")
    p.add_argument("--seed", type=int, default=1337, help="the batches' seed")
    flag(p, "eval_interval", type=positive_int, default=None,
         help="measure the calibration loss and save every N steps (default: 5 times a run)")
    flag(p, "stop_after", type=positive_int, default=None,
         help="stop after step N, saved (continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds "
                   "a run")
    p.add_argument("--progress", type=boolean, default=True, help="progress bar (default true)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--teacher-sharded", "--teacher_sharded", dest="teacher_sharded",
                   default=None, action=argparse.BooleanOptionalAction,
                   help="hold the teacher sharded like the student, every sync on (default "
                        "under torchrun: each process holds its share of the teacher, at the "
                        "price of its all-reduces); --no-teacher-sharded: the dense teacher "
                        "whole in every process (the default in one process)")
    add_calibration_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..analysis.distill import DistillOptions, distill

    r = distill(DistillOptions(
        ckpt=args.ckpt, teacher=args.teacher, out=args.out, steps=args.steps,
        kl_steps=args.kl_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        tokens=args.tokens, split=args.split, data_dir=args.data_dir,
        eval_interval=args.eval_interval, resume=args.resume, overwrite=args.overwrite,
        stop_after=args.stop_after, progress=args.progress, quiet=args.json,
        device=args.device, teacher_sharded=args.teacher_sharded))
    from ..analysis.distill import recovered_text
    if is_rank0():
        if args.json:
            print(json.dumps(r, indent=2))
        else:
            print(f"done: calibration loss {r['student_loss_after']:.4f} after "
                  f"{r['steps_done']} steps (zero-shot {r['student_loss_before']:.4f}, teacher "
                  f"{r['teacher_loss']:.4f}: {recovered_text(r['recovered'])}) in "
                  f"{r['wall_s']:.0f} s; checkpoint {r['checkpoint']}"
                  + ("" if r["finished"] else " (stopped early: --resume continues it)"))
    return 0
