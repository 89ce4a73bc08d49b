"""`tpgpt train`: nanoGPT's training loop for the dense, simulated and distributed GPT.

One process: dense GPT when tp=1, simulated TP otherwise. Under torchrun: TP groups of
`tp_procs` processes (tp / tp_procs ranks each) times data parallelism (DDP) and pipeline
stages over the rest. The parts, each readable alone:

    setup.py          layout, data, the model in its parallel form, AdamW
    step.py           one optimizer step (micro-batches, gradient syncs, clipping)
    evaluation.py     the periodic sampled evaluation
    checkpointing.py  what a run saves, and resuming it
    trainer.py        the loop: evaluate, checkpoint, step, log; the run's summary
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from array import array

import torch

from ..checkpoint.store import find_checkpoint
from ..comm.plan import count_collectives
from ..errors import ConfigError
from ..model.family import model_line
from ..text import counted
from . import checkpointing
from .checkpointing import Progress, last_good_iteration, save
from .config import TrainConfig
from .evaluation import evaluate
from .metrics import MetricsLog, peak_resident_mib, resident_mib
from .setup import build_setup
from .step import train_step


class Diverged(ConfigError):
    """The loss became NaN or infinite: the run stops, keeping its last good checkpoint."""


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False,
                 overwrite: bool = False):
        self.cfg = cfg
        self.rss_before_mib = resident_mib()  # torch and the data reader, before any model
        if not resume and not overwrite and find_checkpoint(os.path.join(cfg.out_dir, "last")):
            raise ConfigError(f"{cfg.out_dir} holds a checkpoint: pass --resume to continue it, "
                              f"--overwrite to start over, or choose another out_dir")
        self.setup = build_setup(cfg)
        self.quiet = quiet or not self.setup.master
        self.progress = Progress(batch_gen=torch.Generator().manual_seed(cfg.seed))
        # dropout: the same masks across a TP group, other ones per data-parallel rank
        torch.manual_seed(cfg.seed + 1 + self.setup.layout.dp_rank)
        if resume:
            checkpointing.resume(self.setup, self.progress)

    # the parts scripts reach for (benchmarks/step_breakdown.py, tests)
    @property
    def model(self):
        return self.setup.model

    @property
    def inner(self):
        return self.setup.inner

    @property
    def optimizer(self):
        return self.setup.optimizer

    def train_step(self) -> dict:
        """One optimizer step at the current iteration (the counter is not advanced)."""
        return train_step(self.setup, self.progress.iter, self.progress.batch_gen)

    def planned_collectives(self) -> int:
        """TP collectives of one optimizer step, from the plan alone."""
        cfg = self.cfg
        if cfg.tp == 1:
            return 0
        c = count_collectives(self.setup.inner.plan, tp=cfg.tp, config=self.setup.inner.config,
                              batch_size=cfg.batch_size, seq_len=cfg.block_size,
                              vocab_parallel=cfg.vocab_parallel, grad_clip=cfg.grad_clip > 0,
                              wire=getattr(self.setup.inner, "wire", None),
                              sequence_parallel=cfg.sequence_parallel)
        fwd_bwd = sum(x.count for x in c if x.phase in ("fwd", "bwd"))
        return fwd_bwd * self.setup.accum + sum(x.count for x in c if x.phase == "grad")

    def run(self) -> dict:
        cfg, s, p = self.cfg, self.setup, self.progress
        if s.master:
            os.makedirs(cfg.out_dir, exist_ok=True)
        log = MetricsLog(cfg.out_dir, enabled=s.master, tensorboard=cfg.tensorboard,
                         truncate_after=p.resumed_at)
        tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        if not self.quiet:
            wire = ("" if cfg.sync_dtype == "float32" else f" sent in {cfg.sync_dtype}") + \
                (", ladder" if cfg.ladder else "") + \
                (", sequence-parallel" if cfg.sequence_parallel else "")
            print(f"tpgpt train: {s.layout.describe(cfg)}; sync={cfg.sync!r}{wire}; "
                  f"{model_line(s.model_config, cfg.tp)}; "
                  f"{s.inner.get_num_params() / 1e6:.2f}M parameters"
                  f"{' on this rank' if s.layout.pp > 1 else ''}; {tokens_per_iter} tokens/iter "
                  f"(micro-batch {cfg.batch_size} x {s.accum} per rank x dp {s.layout.dp} "
                  f"x block {cfg.block_size})"
                  + (f"; resuming at iter {p.iter}" if p.resumed_at is not None else ""))
        bar = log.progress(total=cfg.max_iters, initial=p.iter,
                           enabled=cfg.progress and not self.quiet)
        t_start = t_last = time.perf_counter()
        iters_since, train_time = 0, 0.0
        step_s = array("d")  # every iteration's time, for the run's median and spread
        while True:
            if (p.iter % cfg.eval_interval == 0 or p.iter == cfg.max_iters) \
                    and p.iter != p.resumed_at:
                self._evaluate_and_save(log, bar)
            if p.iter >= cfg.max_iters:
                break
            t0 = time.perf_counter()
            step = self.train_step()
            self._check_finite(step["loss"], what="training loss", it=p.iter)
            dt = time.perf_counter() - t0
            train_time += dt
            if p.train_s is not None:
                p.train_s += dt
            step_s.append(dt)
            p.iter += 1
            iters_since += 1
            if p.iter % cfg.log_interval == 0 or p.iter == cfg.max_iters:
                now = time.perf_counter()
                tok_s = tokens_per_iter * iters_since / (now - t_last)
                t_last, iters_since = now, 0
                log.write({"kind": "train", "iter": p.iter, "loss": step["loss"],
                           "lr": step["lr"], "tokens_per_s": tok_s, "ms_per_iter": 1e3 * dt,
                           "collectives": step["collectives"], "comm_bytes": step["comm_bytes"]})
                bar.set_postfix(loss=f"{step['loss']:.4f}", tok_s=f"{tok_s:.0f}")
            bar.update(1)
        bar.close()
        log.close()
        return self._finish(time.perf_counter() - t_start, train_time, step_s)

    def _evaluate_and_save(self, log: MetricsLog, bar) -> None:
        s, p = self.setup, self.progress
        losses = evaluate(s, p.iter)
        self._check_finite(losses["train"], losses["val"], what="evaluation")
        p.last_eval = losses
        log.write({"kind": "eval", "iter": p.iter, "train_loss": losses["train"],
                   "val_loss": losses["val"]})
        bar.write(f"iter {p.iter}: train loss {losses['train']:.4f}, "
                  f"val loss {losses['val']:.4f}")
        if p.iter > 0:
            if losses["val"] < p.best_val:
                p.best_val = losses["val"]
                save(s, p, "best", with_optimizer=False)
            save(s, p, "last", with_optimizer=True)

    def _finish(self, wall_s: float, segment_train_s: float, step_s) -> dict:
        cfg, p = self.cfg, self.progress
        summary = {"final_train_loss": p.last_eval.get("train"),
                   "final_val_loss": p.last_eval.get("val"), "best_val_loss": p.best_val,
                   "iters": p.iter, "wall_s": wall_s,
                   # training steps only: the whole run's (None: resumed from a checkpoint
                   # that did not keep it) and this invocation's
                   "train_s": p.train_s, "segment_train_s": segment_train_s, "tp": cfg.tp,
                   "sync": cfg.sync, "sync_dtype": cfg.sync_dtype, "ladder": cfg.ladder,
                   "sequence_parallel": cfg.sequence_parallel,
                   "forward_syncs": self.setup.inner.plan.num_syncs if cfg.tp > 1 else 0,
                   "collectives_per_step": self.planned_collectives(),
                   "step_ms": spread_ms(step_s), "memory": self.memory_report(),
                   "resumed_at": p.resumed_at}
        if self.setup.master:
            with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        if not self.quiet:
            print(f"done: final val loss {summary['final_val_loss']:.4f} (best "
                  f"{summary['best_val_loss']:.4f}) after {summary['iters']} iters in "
                  f"{summary['wall_s']:.1f} s"
                  + (f" (median {summary['step_ms']['median']:.1f} ms per iteration)"
                     if summary["step_ms"] else "")
                  + f"; {counted(summary['forward_syncs'], 'forward sync')} per pass, "
                  f"{counted(summary['collectives_per_step'], 'TP collective')} per step")
        return summary

    def memory_report(self) -> dict:
        """Per rank: peak resident memory, the activations saved for backward in one
        micro-batch (all of this process's ranks), resident memory before the model was built,
        the peak of CUDA allocations, and the plan's accounting of parameters + grads + AdamW
        state."""
        from ..model.accounting import memory_per_rank
        s = self.setup
        mine = {"rank": s.layout.rank, "peak_rss_mib": peak_resident_mib(),
                "saved_activations_mib": s.saved_activations_mib,
                "rss_before_model_mib": self.rss_before_mib,
                "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated(s.device) / 2 ** 20
                if s.device.type == "cuda" else None}
        ranks = [mine]
        if s.layout.distributed:
            import torch.distributed as dist
            ranks = [None] * s.layout.world
            dist.all_gather_object(ranks, mine)
        planned = None
        if s.layout.pp == 1:  # this process holds tp / tp_procs ranks, replicated parts once
            m = memory_per_rank(s.inner.config, self.cfg.tp, self.cfg.vocab_parallel)
            local_ranks = self.cfg.tp // s.layout.tp_procs
            # parameter, gradient and AdamW's two moments: 4 copies of each element
            elem = s.inner.transformer.wte.weight.element_size()
            planned = 4 * elem * (local_ranks * m["sharded_elements"] + m["replicated_elements"])
        return {"per_rank": ranks, "planned_state_mib_per_process":
                planned / 2 ** 20 if planned is not None else None}

    def _check_finite(self, *values: float, what: str, it: int | None = None) -> None:
        """Stop before anything poisoned is saved; every rank sees the same (reduced) loss."""
        if all(math.isfinite(v) for v in values):
            return
        last = os.path.join(self.cfg.out_dir, "last")
        good = last_good_iteration(self.cfg.out_dir)
        bad = values[0] if not math.isfinite(values[0]) else values[-1]
        raise Diverged(f"{what} is {bad} at iteration {self.progress.iter if it is None else it}: "
                       f"stopped; " + (f"the last good checkpoint is {last} (iteration {good}), "
                                       f"resume from it with a lower learning_rate"
                                       if good is not None else "no checkpoint was written"))

    def close(self) -> None:
        """Wait for every process (the process group itself stays up for the next run)."""
        if self.setup.layout.distributed:
            import torch.distributed as dist
            dist.barrier()


def spread_ms(seconds) -> dict | None:
    """Median, mean, 5th and 95th percentile and extremes of iteration times, in ms."""
    if not seconds:
        return None
    ms = [1e3 * s for s in seconds]
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else [ms[0]] * 19
    return {"n": len(ms), "median": statistics.median(ms), "mean": statistics.fmean(ms),
            "p5": q[0], "p95": q[-1], "min": min(ms), "max": max(ms)}
