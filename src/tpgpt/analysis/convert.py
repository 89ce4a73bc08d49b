"""`tpgpt convert`: a checkpoint's weights under another tp and sync plan, saved as a checkpoint
whose trained function is that plan (a zero-shot conversion), optionally with the heads of the
layers that drop their attention sync regrouped across ranks first (head_grouping.py)."""
from __future__ import annotations

import os

import torch

from ..text import counted
from ..checkpoint.load import (inherited, load_dense, model_config, read_checkpoint,
                               require_plain_syncs, trained_function)
from ..checkpoint.sharded_state import ShardedState
from ..checkpoint.store import save_checkpoint
from ..comm.plan import SyncPlan, validate_tp
from ..errors import ConfigError
from .evaluate import auto_batch_size, checkpoint_split
from .head_grouping import group_heads
from .sensitivity import PlanLoss, calibration_set


def convert(path: str, out: str, sync: str, tp: int, head_grouping: bool = False,
            tokens: int = 8192, split: str = "val", data_dir: str | None = None) -> dict:
    """Write `out`; return what was done and, when data is there, the calibration losses of
    the trained function, the conversion, and (with head grouping) the conversion after it."""
    # the checkpoint writer uses out.tmp, out.old and out.prev beside out: none may be there
    for p in (out, out + ".tmp", out + ".old", out + ".prev"):
        if os.path.lexists(p):
            raise ConfigError(f"{p} exists: choose another --out (a checkpoint is never "
                              f"replaced)")
    if tokens < 1:
        raise ConfigError(f"--tokens {tokens} is invalid: it must be >= 1")
    state = read_checkpoint(path)
    config = model_config(state)
    validate_tp(tp, config)
    plan = SyncPlan.parse(sync, config.n_layer)
    require_plain_syncs(state, "convert")
    if tp == 1 and not all(plan.bits):
        raise ConfigError(f"--sync {sync!r} at tp=1 is the dense GPT (one rank has nothing to "
                          f"synchronise): give the tp the plan is for")
    trained_tp, trained_sync = trained_function(state)
    calib = None
    if data_dir is not None or (state.get("config") or {}).get("data_dir") or head_grouping:
        calib = calibration_set(checkpoint_split(state, split, data_dir), tokens)
    dense, meta, ckpt = load_dense(path, state)
    r = {"checkpoint": ckpt, "out": out, "tp": tp, "sync": plan.spec, "bits": plan.bitstring,
         "forward_syncs": plan.forward_syncs(tp), "trained_tp": trained_tp,
         "trained_sync": trained_sync, "head_grouping": None}
    if calib is not None:
        bs = auto_batch_size(config.block_size, config.vocab_size,
                             next(dense.parameters()).element_size())
        trained = SyncPlan.parse(trained_sync, config.n_layer).bits
        r["calibration"] = {"data": calib.path, "split": split, "tokens": calib.tokens}
        r["loss_trained"] = PlanLoss(dense, trained_tp, calib, bs)(trained)
        r["loss_converted"] = PlanLoss(dense, tp, calib, bs)(plan.bits)
    if head_grouping:
        probe = calib.x[:bs]
        with torch.no_grad():  # targets given: the logits of every position
            before = dense(probe, probe)[0]
        r["head_grouping"] = group_heads(dense, plan.bits, tp, calib.x, bs)
        with torch.no_grad():
            r["dense_logits_max_diff"] = (dense(probe, probe)[0] - before).abs().max().item()
        r["loss_grouped"] = PlanLoss(dense, tp, calib, bs)(plan.bits)
    config_out = {**(state.get("config") or {}), "tp": tp, "sync": plan.spec}
    new_state = {"iter": state.get("iter", 0), "best_val_loss": None, "train_loss": None,
                 "val_loss": None, "config": config_out,
                 "layout": {"world": 1, "tp": 1, "tp_procs": 1, "dp": 1},
                 "model": state["model"], **inherited(state),
                 "converted_from": {"path": os.path.abspath(ckpt), "tp": trained_tp,
                                    "sync": trained_sync,
                                    "head_groups": None if not head_grouping else
                                    {d["layer"]: d["groups"] for d in r["head_grouping"]}}}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the directory of --out {out}: {e.strerror}") from None
    save_checkpoint(out, rank=0, barrier=lambda: None, sharded=ShardedState(dense),
                    state=new_state, meta=meta, rank_state=None)
    return r


def format_convert(r: dict) -> str:
    lines = [f"converted {r['checkpoint']} (trained: tp={r['trained_tp']}, sync="
             f"{r['trained_sync']!r}) to tp={r['tp']}, sync={r['sync']!r} ("
             f"{counted(r['forward_syncs'], 'forward sync')}): {r['out']}"]
    if "loss_trained" not in r:
        lines.append("  (no data to measure the loss on: the checkpoint names none; pass "
                     "--data-dir)")
    else:
        c = r["calibration"]
        lines.append(f"  loss on the first {c['tokens']:,} tokens of {c['data']}: trained "
                     f"{r['loss_trained']:.4f}, converted zero-shot {r['loss_converted']:.4f} "
                     f"({r['loss_converted'] - r['loss_trained']:+.4f})")
    if r["head_grouping"] is not None:
        for d in r["head_grouping"]:
            lines.append(f"  layer {d['layer']}: heads per rank {d['groups']}, rank-stream "
                         f"error {d['error_before']:.4g} -> {d['error_after']:.4g}")
        lines.append(f"  with head grouping: {r['loss_grouped']:.4f} "
                     f"({r['loss_grouped'] - r['loss_converted']:+.4f} against no grouping); "
                     f"dense logits changed by at most {r['dense_logits_max_diff']:.2e}")
    return "\n".join(lines)
