"""`tpgpt distill`: recover what a zero-shot conversion lost, by block-to-block distillation
against the model it was converted from (distill_regions.py says what is compared and why),
then optionally a short end-to-end phase on the KL divergence to the teacher's logits.

Only the parameters of the regions that drop a sync train (their LayerNorms and sublayers);
everything else keeps the student's weights (the teacher's, for a conversion without head
grouping). The student is the converted checkpoint as its
trained function (simulated in one process, or its tp ranks spread over a torchrun job). The
teacher runs under no_grad: in one process, the dense GPT; under torchrun, sharded like the
student (its tp ranks over the same processes, every sync on: the all-sync function, to
rounding), so a process holds its share of the teacher, not all of it, at the price of the
teacher's all-reduces (two a layer per step); `teacher_sharded` chooses. The output directory is a
run directory: `last/` (a checkpoint that eval, sample and sensitivity run as the student's
plan, with the optimizer and the batch generator for --resume), metrics.jsonl, summary.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from ..checkpoint.load import (inherited, load_dense, load_trained, model_config, read_checkpoint,
                               require_plain_syncs, trained_function)
from ..checkpoint.sharded_state import ShardedState
from ..checkpoint.store import find_checkpoint, load_sharded, load_state, save_checkpoint
from ..comm.plan import SyncPlan
from ..errors import ConfigError
from ..train.checkpointing import decode_generator, encode_generator
from ..train.metrics import MetricsLog, _NoBar
from ..train.optim import lr_at, make_optimizer
from .distill_regions import dropping_regions, logit_kl, region_losses, region_parameters
from .evaluate import auto_batch_size, checkpoint_split, mean_loss
from .sensitivity import calibration_set

# options that must match out/last's for --resume to continue the same run
RESUME_KEYS = ("ckpt", "teacher", "steps", "kl_steps", "lr", "batch_size", "seed", "data_dir",
               "tokens", "split")


@dataclass
class DistillOptions:
    ckpt: str  # the student: a converted checkpoint (or any that drops syncs)
    teacher: str  # the dense model it came from
    out: str  # the run directory
    steps: int  # block-to-block (MSE) steps
    kl_steps: int = 0  # end-to-end steps on KL(teacher || student) after them
    lr: float = 3e-4
    batch_size: int = 16
    seed: int = 1337
    tokens: int = 8192  # calibration tokens for the reported loss
    split: str = "val"
    data_dir: str | None = None
    eval_interval: int | None = None  # default: 5 evaluations over the run
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (saved) after this step, to --resume later
    progress: bool = True
    quiet: bool = False  # no lines on stdout (--json prints only the summary)
    device: str = "cpu"
    # the teacher sharded like the student (its ranks over the torchrun job's processes) or
    # the dense GPT whole in every process; None: sharded exactly when the student is
    teacher_sharded: bool | None = None

    def check(self) -> None:
        for name, low in (("steps", 0), ("kl_steps", 0), ("batch_size", 1), ("tokens", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} is invalid: "
                                  f"it must be >= {low}")
        if self.steps + self.kl_steps < 1:
            raise ConfigError("--steps 0 and --kl-steps 0: nothing to train")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr {self.lr} is invalid: it must be a positive number")
        for name in ("eval_interval", "stop_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} is "
                                  f"invalid: it must be >= 1")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite together: choose one")

    @property
    def total(self) -> int:
        return self.steps + self.kl_steps

    def resume_record(self) -> dict:
        d = asdict(self)
        d["ckpt"], d["teacher"] = os.path.abspath(self.ckpt), os.path.abspath(self.teacher)
        return {k: d[k] for k in RESUME_KEYS}


def _check_out(o: DistillOptions, inputs: list[str]) -> str:
    """out/last, checked: it never holds an input, and holds a run only when resuming or
    overwriting."""
    out = os.path.abspath(o.out)
    for path in inputs:
        if os.path.commonpath([out, os.path.abspath(path)]) == out:
            raise ConfigError(f"--out {o.out} holds the input checkpoint {path}: choose another "
                              f"--out (an input is never overwritten)")
    last = os.path.join(o.out, "last")
    found = find_checkpoint(last) is not None
    saved = load_state(last).get("distill") if found else None
    if found and saved is None:  # a training run's out_dir, say: never replaced
        raise ConfigError(f"{last} is a checkpoint but not of a tpgpt distill run: choose "
                          f"another --out")
    if o.resume:
        if not found:
            raise ConfigError(f"--resume: no checkpoint in {last}")
        mine = o.resume_record()
        diff = [k for k in RESUME_KEYS if saved["options"].get(k) != mine[k]]
        if diff:
            raise ConfigError("--resume: the options differ from the run's in " + ", ".join(
                f"{k} ({saved['options'].get(k)!r} -> {mine[k]!r})" for k in diff))
        if o.stop_after is not None and o.stop_after <= saved["step"]:
            raise ConfigError(f"--stop-after {o.stop_after}: the run is at step "
                              f"{saved['step']} already")
    elif found and not o.overwrite:
        raise ConfigError(f"{o.out} holds a distill run: pass --resume to continue it, "
                          f"--overwrite to start over, or choose another --out")
    if os.path.exists(o.out) and not os.path.isdir(o.out):
        raise ConfigError(f"--out {o.out} is a file, not a directory")
    return last


def _check_pair(student: dict, teacher: dict) -> tuple[int, SyncPlan]:
    """(tp, plan) of the student; the teacher must be the dense GPT of the same shape."""
    shape, other = asdict(model_config(student)), asdict(model_config(teacher))
    if shape != other:
        diff = ", ".join(f"{k} {other[k]} vs {shape[k]}" for k in shape if shape[k] != other[k])
        raise ConfigError(f"the teacher {teacher['path']} has another shape than the student "
                          f"({diff})")
    n_layer = shape["n_layer"]
    require_plain_syncs(teacher, "distill")
    require_plain_syncs(student, "distill")
    t_tp, t_sync = trained_function(teacher)
    if not SyncPlan.parse(t_sync, n_layer).is_dense_at(t_tp):
        raise ConfigError(f"the teacher {teacher['path']} computes tp={t_tp}, sync={t_sync!r}, "
                          f"not the dense GPT: distil from the all-sync model")
    tp, sync = trained_function(student)
    plan = SyncPlan.parse(sync, n_layer)
    if plan.is_dense_at(tp):
        raise ConfigError(f"the student {student['path']} computes the dense GPT (tp={tp}, "
                          f"sync={sync!r}): nothing to distil (tpgpt convert it to a plan "
                          f"that drops syncs first)")
    return tp, plan


def _load_teacher(o: DistillOptions, t_state: dict, tp: int, distributed: bool):
    """(the teacher, its tokenizer meta, a line saying how it is held). Sharded, it is the
    teacher's checkpoint loaded at the student's tp with every sync on (each process reads
    only its shards); dense, the whole GPT. In one process a sharded teacher is the simulated
    all-sync model: no memory saved, the same code path as under torchrun."""
    sharded = distributed if o.teacher_sharded is None else o.teacher_sharded
    if not sharded:
        teacher, meta, _ = load_dense(o.teacher, t_state)
        return teacher, meta, "dense in every process"
    t = load_trained(o.teacher, tp=tp, device=o.device, state=t_state, sharded=True)
    model = t.model
    params = list(model.parameters())
    held = sum(p.numel() for p in params)
    where = "over this torchrun job" if t.mode == "distributed" else "simulated in one process"
    return model.eval(), t.meta, (f"sharded like the student at tp={tp}, every sync on, "
                                  f"{where}: {held / 1e6:.2f}M of its "
                                  f"{model.dense_numel(params) / 1e6:.2f}M parameters here")


def distill(o: DistillOptions) -> dict:
    o.check()
    s_state, t_state = read_checkpoint(o.ckpt), read_checkpoint(o.teacher)
    tp, plan = _check_pair(s_state, t_state)
    last = _check_out(o, [s_state["path"], t_state["path"]])
    train = checkpoint_split(s_state, "train", o.data_dir)
    checkpoint_split(t_state, "train", o.data_dir)  # the teacher's tokenizer must match too
    calib = calibration_set(checkpoint_split(s_state, o.split, o.data_dir), o.tokens)
    loaded = load_trained(o.ckpt, device=o.device, state=s_state)
    model, distributed = loaded.model, loaded.mode == "distributed"
    rank = int(os.environ.get("RANK", "0")) if distributed else 0
    teacher, meta, t_layout = _load_teacher(o, t_state, tp, distributed)
    w = loaded.model.transformer.wte.weight  # the teacher computes in the student's dtype
    teacher.to(device=w.device, dtype=w.dtype)
    regions = dropping_regions(plan.bits)
    trained = region_parameters(model, regions)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    per_rank = [p for p in model._per_rank if p.requires_grad]
    optimizer = make_optimizer(model, 0.0, o.lr, (0.9, 0.99))
    sharded = ShardedState(model, optimizer, loaded.mesh)
    gen = torch.Generator().manual_seed(o.seed)
    bs = auto_batch_size(calib.x.shape[1], model.config.vocab_size,
                         model.transformer.wte.weight.element_size())
    dev = model.transformer.wte.weight.device

    def calibration_loss(m) -> float:
        m.eval()
        loss = mean_loss(m, zip(calib.x.split(bs), calib.y.split(bs)))
        model.train()
        return loss

    record: dict = {"options": o.resume_record(), "student": os.path.abspath(s_state["path"]),
                    "teacher": os.path.abspath(t_state["path"]), "tp": tp, "sync": plan.spec,
                    "teacher_layout": t_layout, "regions": [r.name() for r in regions],
                    "trained_parameters": model.dense_numel(trained)}
    start = 0
    if o.resume:
        saved = load_state(last)
        load_sharded(saved["path"], sharded, distributed=distributed)
        decode_generator(gen, saved["distill"]["batch_rng"])
        start = saved["distill"]["step"]
        record.update({k: saved["distill"][k] for k in ("teacher_loss", "student_loss_before")})
        record["history"] = saved["distill"]["history"]
    else:
        record["teacher_loss"] = calibration_loss(teacher)
        record["student_loss_before"] = calibration_loss(model)
        record["history"] = []
    record["calibration"] = {"data": calib.path, "split": o.split, "tokens": calib.tokens}
    master = rank == 0
    quiet = o.quiet or not master
    if not quiet:
        print(f"tpgpt distill: {loaded.describe()}; regions {', '.join(record['regions'])} "
              f"({record['trained_parameters'] / 1e6:.2f}M parameters trained); teacher "
              f"{t_state['path']} ({t_layout}); {o.steps} block steps + {o.kl_steps} KL "
              f"steps, batch {o.batch_size} x {calib.x.shape[1]}" + (f"; resuming at step {start}"
                                                       if o.resume else ""))
        gap = record["student_loss_before"] - record["teacher_loss"]
        print(f"calibration loss (first {calib.tokens:,} tokens of {calib.path}): teacher "
              f"{record['teacher_loss']:.4f}, student zero-shot "
              f"{record['student_loss_before']:.4f} (gap {gap:+.4f})")
    if not os.path.isdir(o.out):  # created once everything has loaded, by every process
        # (one that failed alone would leave the others waiting at the first save)
        try:
            os.makedirs(o.out, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create --out {o.out}: {e.strerror}") from None
    log = MetricsLog(o.out, enabled=master, tensorboard=False,
                     truncate_after=start if o.resume else None)
    bar = _NoBar() if quiet else log.progress(total=o.total, initial=start, enabled=o.progress)
    schedule = SimpleNamespace(decay_lr=True, learning_rate=o.lr, min_lr=o.lr / 10,
                               warmup_iters=min(100, o.total // 10), lr_decay_iters=o.total)
    every = o.eval_interval or max(o.total // 5, 1)
    end = o.total if o.stop_after is None else min(o.total, o.stop_after)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, end):
        lr = lr_at(step, schedule)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, _ = (t.to(dev) for t in train.batch(train.random_offsets((o.batch_size,), gen)))
        phase = "block" if step < o.steps else "kl"
        if phase == "block":
            loss, relative = region_losses(model, teacher, regions, x)
        else:
            loss, relative = logit_kl(model, teacher, x), None
        if not math.isfinite(loss.item()):
            kept = f"the last checkpoint is {last}" if find_checkpoint(last) else \
                "nothing was saved"
            raise ConfigError(f"the {phase} loss is {loss.item()} at step {step}: stopped; "
                              f"{kept} (try a lower --lr)")
        loss.backward()
        model.comm.sync_replicated_grads(per_rank)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        entry = {"kind": "distill", "iter": done, "phase": phase, "loss": loss.item(), "lr": lr}
        if relative is not None:
            entry["relative_error"] = dict(zip(record["regions"], relative))
        if done % 10 == 0 or done == end:
            log.write(entry)
        bar.set_postfix(phase=phase, loss=f"{loss.item():.4g}")
        bar.update(1)
        if done % every == 0 or done == end:
            after = calibration_loss(model)
            record["history"].append({"step": done, "loss": after})
            log.write({"kind": "eval", "iter": done, "calibration_loss": after})
            bar.write(f"step {done}: calibration loss {after:.4f} "
                      f"({recovered_text(_recovered(record, after))})")
            _save(last, record, done, gen, s_state, sharded, meta, rank, distributed)
    bar.close()
    log.close()
    after = record["history"][-1]["loss"] if record["history"] else record["student_loss_before"]
    summary = {**{k: v for k, v in record.items() if k != "history"}, "out": o.out,
               "checkpoint": last, "steps_done": end, "finished": end == o.total,
               "student_loss_after": after, "recovered": _recovered(record, after),
               "history": record["history"], "wall_s": time.perf_counter() - t0}
    if master:  # whole or not at all
        path = os.path.join(o.out, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)
    return summary


def _recovered(record: dict, after: float) -> float | None:
    """The part of the zero-shot gap (student above teacher) distillation closed; None when
    there was no gap to close."""
    gap = record["student_loss_before"] - record["teacher_loss"]
    return (record["student_loss_before"] - after) / gap if gap > 0 else None


def recovered_text(recovered: float | None) -> str:
    return "no zero-shot gap to recover: the student started at or below the teacher" \
        if recovered is None else f"{recovered:.0%} of the zero-shot gap recovered"


def _save(last: str, record: dict, step: int, gen: torch.Generator, s_state: dict,
          sharded: ShardedState, meta: dict, rank: int, distributed: bool) -> None:
    """out/last: the student's weights under its plan (a checkpoint every command runs as that
    function), the optimizer, and where the run stands."""
    barrier = (lambda: torch.distributed.barrier()) if distributed else (lambda: None)
    state = {"iter": s_state.get("iter", 0), "best_val_loss": None, "train_loss": None,
             "val_loss": None, "config": s_state.get("config") or {},
             "layout": {"world": 1, "tp": record["tp"], "tp_procs": 1, "dp": 1},
             "model": s_state["model"], "converted_from": s_state.get("converted_from"),
             **inherited(s_state),
             "distill": {**record, "step": step, "batch_rng": encode_generator(gen)}}
    save_checkpoint(last, rank=rank, barrier=barrier, sharded=sharded, state=state, meta=meta,
                    distributed=distributed, rank_state=None)
