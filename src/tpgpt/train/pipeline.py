"""Pipeline parallelism with torch.distributed.pipelining (GPipe, 1F1B, interleaved 1F1B).

The model is cut into `pp * virtual` stages of consecutive layers (balanced; the embedding on
the first, the final LayerNorm and the head on the last). Stage modules keep the full model's
parameter names (`transformer.h.<global index>...`), so checkpoints, optimizer groups and the
dense layout are the same at any pp. What torch's pipelining does not do for us, and is written
here:
- the tied embedding/head: the first and last stage each hold `transformer.wte`; after backward
  their gradients are summed over the pipeline group (one all-reduce, zeros from middle stages);
- a stage boundary must fall on a sync point: between stages only the shared stream travels,
  so a region may not span two stages (checked, with the boundary named in the error);
- the loss is divided by the number of micro-batches in the loss function (scale_grads=False),
  so the per-rank LayerNorm/bias gradients stashed for the TP sync are scaled like the rest.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                          ScheduleInterleaved1F1B)

from ..errors import ConfigError
from .optim import clip_grad_norm
from ..model.blocks import ResidualStream
from ..model.parallel_gpt import (ParallelGPT, embed, head, head_loss, head_of, kv_replicas_of,
                                  run_blocks, sync_replicated_grads)

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved": ScheduleInterleaved1F1B}


def stage_layers(n_layer: int, num_stages: int) -> list[range]:
    """Consecutive layers per stage, as even as possible (earlier stages get the extra layer)."""
    if num_stages > n_layer:
        raise ConfigError(f"{num_stages} pipeline stages need at least as many layers: "
                          f"n_layer={n_layer}")
    base, extra = divmod(n_layer, num_stages)
    out, lo = [], 0
    for s in range(num_stages):
        hi = lo + base + (1 if s < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


def check_boundaries(plan, ranges: list[range]) -> None:
    for r in ranges[:-1]:
        if not plan.sync_after(2 * r[-1] + 1):
            raise ConfigError(f"sync plan {plan.spec!r} drops the sync after layer {r[-1]}, where "
                              f"pipeline stage boundary falls: a stage boundary needs a synced "
                              f"stream (use a plan with m=1 there, or another pp)")


class StageModule(nn.Module):
    """Layers `layers` of a ParallelGPT, with the embedding (first) or the head (last)."""

    def __init__(self, full: ParallelGPT, layers: range, first: bool, last: bool, n_micro: int):
        super().__init__()
        if full.ladder:  # a stage's last result would have to cross the boundary (config.py)
            raise ConfigError("ladder=true with pp>1 is not supported")
        self.first, self.last, self.n_micro = first, last, n_micro
        self.comm, self.vocab_parallel, self.config = full.comm, full.vocab_parallel, full.config
        self.rotary = full.rotary  # no parameters: every stage computes its angles
        t = full.transformer
        parts = {"h": nn.ModuleDict({str(i): t.h[i] for i in layers})}
        if first:
            parts.update({k: t[k] for k in ("wte", "wpe", "drop") if k in t})
        if last:
            parts.update(ln_f=t.ln_f)
            if full.config.tie_embeddings:
                parts.update(wte=t.wte)
        self.transformer = nn.ModuleDict(parts)
        if last and not full.config.tie_embeddings:
            self.lm_head = full.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rope = None
        if self.first:
            x, rope = embed(self.transformer, x, self.vocab_parallel, 0, self.rotary)
        elif self.rotary is not None:
            rope = self.rotary(0, x.shape[2], x.dtype)
        s = run_blocks(((int(i), b) for i, b in self.transformer.h.items()),
                       ResidualStream(shared=x), None, rope)
        x = s.shared  # a boundary is a sync point: nothing per-rank is left
        if self.last:
            x = head(self.head_module, self.transformer.ln_f(x), self.comm, self.vocab_parallel)
        return x

    @property
    def head_module(self) -> nn.Module:
        return head_of(self.transformer, getattr(self, "lm_head", None), self.config)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of one micro-batch over the micro-batch count (see the module docstring)."""
        return head_loss(self.head_module, logits, targets, self.vocab_parallel) / self.n_micro


class RankShard(nn.Module):
    """Every parameter this process holds (all its stages), under the full model's names; what
    the optimizer and checkpoints see. Carries tp/comm/vocab_parallel for sharded_state."""

    def __init__(self, full: ParallelGPT, stages: list[StageModule]):
        super().__init__()
        self.tp, self.comm, self.vocab_parallel = full.tp, full.comm, full.vocab_parallel
        self.plan, self.config, self.wire = full.plan, full.config, full.wire
        parts: dict[str, nn.Module] = {"h": nn.ModuleDict()}
        for st in stages:
            for k, m in st.transformer.items():
                if k == "h":
                    parts["h"].update(m)
                else:
                    parts[k] = m
            if hasattr(st, "lm_head"):
                self.lm_head = st.lm_head
        self.transformer = nn.ModuleDict(parts)
        self._per_rank = [p for blk in parts["h"].values() for p in blk.per_rank_params()]
        self._sharded = full.sharded_param_ids()

    def sharded_param_ids(self) -> set[int]:
        return self._sharded

    def kv_replicas(self) -> dict[int, int]:
        return kv_replicas_of(self)

    def get_num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        wpe = self.transformer["wpe"] if "wpe" in self.transformer else None
        return n - (wpe.weight.numel() if non_embedding and wpe is not None else 0)


class Pipeline:
    """This process's stages of a ParallelGPT, their schedule, and the gradient syncs it needs."""

    def __init__(self, full: ParallelGPT, *, pp: int, pp_rank: int, pp_group, schedule: str,
                 virtual: int, n_micro: int, device: torch.device, dp: int, dp_group):
        if schedule not in SCHEDULES:
            raise ConfigError(f"pp_schedule={schedule!r} is invalid: choose one of "
                              f"{', '.join(SCHEDULES)}")
        if schedule == "interleaved" and virtual < 2:
            raise ConfigError("pp_schedule='interleaved' needs pp_virtual_stages >= 2")
        if schedule != "interleaved" and virtual != 1:
            raise ConfigError(f"pp_virtual_stages={virtual} needs pp_schedule='interleaved'")
        if n_micro < pp:
            raise ConfigError(f"{n_micro} micro-batches per step cannot fill {pp} pipeline "
                              f"stages: raise gradient_accumulation_steps to >= pp x dp")
        num_stages = pp * virtual
        ranges = stage_layers(full.config.n_layer, num_stages)
        check_boundaries(full.plan, ranges)
        self.pp, self.pp_rank, self.pp_group, self.n_micro = pp, pp_rank, pp_group, n_micro
        mine = [pp_rank + k * pp for k in range(virtual)]  # looped placement of virtual stages
        self.stage_modules = [StageModule(full, ranges[i], i == 0, i == num_stages - 1, n_micro)
                              for i in mine]
        self.has_first = 0 in mine
        self.has_last = num_stages - 1 in mine
        self.shard = RankShard(full, self.stage_modules)
        self.shard.to(device)
        self.dp, self.dp_group = dp, dp_group
        stages = [PipelineStage(m, i, num_stages, device, group=pp_group)
                  for m, i in zip(self.stage_modules, mine)]
        loss_fn = self.stage_modules[-1].loss
        cls = SCHEDULES[schedule]
        self.schedule = cls(stages if schedule == "interleaved" else stages[0],
                            n_microbatches=n_micro, loss_fn=loss_fn, scale_grads=False)
        self.wte_like = torch.empty_like(full.transformer.wte.weight, device="meta")

    def _run(self, x, y, train: bool) -> list[float]:
        """One pass over n_micro micro-batches; every pp rank gets each micro-batch's loss."""
        losses: list[torch.Tensor] = []
        run = self.schedule.step if train else self.schedule.eval
        if self.has_first:
            run(x, target=y if self.has_last else None, losses=losses)
        elif self.has_last:
            run(target=y, losses=losses)
        else:
            run()
        vec = torch.zeros(self.n_micro, dtype=torch.float64)
        if self.has_last:  # each loss was divided by n_micro in the loss function
            vec = torch.tensor([loss.item() * self.n_micro for loss in losses],
                               dtype=torch.float64)
        if self.pp > 1:
            dist.all_reduce(vec, group=self.pp_group)  # from the last stage to every stage
        return vec.tolist()

    def train_step(self, x, y) -> list[float]:
        return self._run(x, y, train=True)

    @torch.no_grad()
    def eval_step(self, x, y) -> list[float]:
        return self._run(x, y, train=False)

    def sync_grads(self) -> None:
        """Data-parallel average, the TP replicated-grad bucket of this rank's layers, then the
        tied embedding."""
        if self.dp > 1:
            self._average_over_dp()
        sync_replicated_grads(self.shard, self.shard._per_rank)
        if self.pp == 1 or not self.shard.config.tie_embeddings:  # untied: wte on one stage
            return
        wte = self.shard.transformer["wte"].weight if "wte" in self.shard.transformer else None
        g = torch.zeros_like(self.wte_like, device=next(self.shard.parameters()).device)
        if wte is not None and wte.grad is not None:
            g = wte.grad
        dist.all_reduce(g, group=self.pp_group)  # first + last stage; middle stages add zeros
        if wte is not None:
            wte.grad = g

    @torch.no_grad()
    def _average_over_dp(self) -> None:
        """Why not DDP here: driven by the pipeline schedule (no_sync, then the reducer prepared
        by hand for the last micro-batch), torch 2.13's DDP fails its bucket rebuild on the
        second step (an internal assert), and with static_graph=True it averages wrongly from
        the second step on (tests/test_3d.py saw a 0.007 loss difference). So with pp > 1 the
        gradients are averaged over dp here, after the schedule: one flat all-reduce per step,
        no overlap with the backward pass. Without pp, DDP does it (train/setup.py)."""
        params = [p for p in self.shard.parameters()]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, group=self.dp_group)
        flat.div_(self.dp)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def clip_grad_norm(self, max_norm: float) -> float:
        """The dense model's gradient norm: every stage's part summed over the pipeline, the
        tied embedding counted once (on the first stage)."""
        tied = self.shard.transformer["wte"].weight if "wte" in self.shard.transformer else None
        return clip_grad_norm(self.shard, max_norm, across=self.pp_group if self.pp > 1 else None,
                              skip=(tied,) if tied is not None and not self.has_first else ())
