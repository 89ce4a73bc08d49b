"""What block-to-block distillation compares: the regions of a plan that drop a sync, the
teacher's residual stream at their ends, and the student's output of each region run from the
teacher's stream.

The SPD paper (arXiv:2502.20727, section 4.2) distils an SPD block against the original block:
same input, mean squared error between the outputs, only that block's parameters trained.
tpgpt's plans are any bit pattern, so the unit is not the block but the *region*: the sublayers
from one sync point to the next (blocks.py). A region of one sublayer computes exactly what the
dense model computes there (its sync is on) and needs nothing; a region of several sublayers
reads per-rank streams inside and is where the student differs. Its input is the stream at the
sync before it (identical on every rank, so the teacher's stream is a valid input) and its
output is the stream after its closing sync, which the teacher has at the same point. For an
SPD layer (`a` off, `m` on) the region is that layer: the paper's block-to-block objective. For a
run of parallel layers the region is the whole run (the student never has a synced stream in
between to compare).

Regions are independent once each reads the teacher's stream: their parameters are disjoint and
their inputs detached, so one backward of the summed losses trains them all at once, and Adam's
per-parameter scaling makes the relative weight of the regions' losses irrelevant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model.blocks import ResidualStream
from ..model.parallel_gpt import ParallelGPT, embed
from .sensitivity import point_code


@dataclass(frozen=True)
class Region:
    first: int  # sublayer index: 2 * layer (attention) or 2 * layer + 1 (MLP)
    last: int  # inclusive; its sync point is on

    @property
    def sublayers(self) -> range:
        return range(self.first, self.last + 1)

    def name(self) -> str:
        return f"{point_code(self.first)}-{point_code(self.last)}"


def dropping_regions(bits: tuple[int, ...]) -> list[Region]:
    """The regions of more than one sublayer: where the plan drops a sync."""
    out, first = [], 0
    for s, bit in enumerate(bits):
        if bit:
            if s > first:
                out.append(Region(first, s))
            first = s + 1
    return out


def region_parameters(model: ParallelGPT, regions: list[Region]) -> list[torch.nn.Parameter]:
    """The parameters of the regions' sublayers (LayerNorm and sublayer): what distillation
    trains."""
    out = []
    for r in regions:
        for s in r.sublayers:
            for m in model.transformer.h[s // 2].sublayer(s % 2)[:2]:
                out += list(m.parameters())
    return list({id(p): p for p in out}.values())


@torch.no_grad()
def teacher_streams(teacher, idx: torch.Tensor, points: set[int]) -> dict[int, torch.Tensor]:
    """The teacher's residual stream before sublayer s (s = 2 * n_layer: after the last), for
    every s in `points`, [B, T, C]. The teacher is the dense GPT, or a ParallelGPT with every
    sync on (sharded like the student), whose stream after each sync is the whole stream, the
    same on every rank."""
    if isinstance(teacher, ParallelGPT):
        if not all(teacher.plan.bits) or teacher.ladder or teacher.sequence_parallel:
            raise ConfigError("a sharded teacher must have every sync on, without ladder or "
                              "sequence parallelism")
        x, rope = embed(teacher.transformer, idx, teacher.vocab_parallel, 0, teacher.rotary)
        s = ResidualStream(shared=x)
        out = {0: x.squeeze(0)} if 0 in points else {}
        for j in range(2 * teacher.config.n_layer):
            s = teacher.transformer.h[j // 2].run_sublayer(s, j % 2, rope=rope)
            if j + 1 in points:
                out[j + 1] = s.shared.squeeze(0)
        return out
    x, rope = embed(teacher.transformer, idx, False, 0, teacher.rotary)
    x = x.squeeze(0)
    out = {0: x} if 0 in points else {}
    for i, block in enumerate(teacher.transformer.h):
        x = x + block.attn(block.ln_1(x), None, rope)
        if 2 * i + 1 in points:
            out[2 * i + 1] = x
        x = x + block.mlp(block.ln_2(x))
        if 2 * i + 2 in points:
            out[2 * i + 2] = x
    return out


def student_region(model: ParallelGPT, region: Region, x: torch.Tensor) -> torch.Tensor:
    """The student's stream after the region's closing sync, from the synced stream x
    [B, T, C] before it (identical on every rank): [B, T, C]."""
    if model.ladder:  # a region's result would land in the next one (refused earlier, by load)
        raise ConfigError("distill does not support ladder syncs")
    s = ResidualStream(shared=x.unsqueeze(0))
    rope = None if model.rotary is None else model.rotary(0, x.shape[1], x.dtype)
    for j in region.sublayers:
        s = model.transformer.h[j // 2].run_sublayer(s, j % 2, rope=rope)
    return s.shared.squeeze(0)


def region_losses(model: ParallelGPT, teacher, regions: list[Region],
                  idx: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """(summed MSE over the regions, each region's relative error ||s - t||^2 / ||t||^2)."""
    points = {r.first for r in regions} | {r.last + 1 for r in regions}
    streams = teacher_streams(teacher, idx, points)
    total, relative = 0.0, []
    for r in regions:
        out = student_region(model, r, streams[r.first])
        target = streams[r.last + 1]
        mse = F.mse_loss(out, target)
        total = total + mse
        relative.append(mse.item() / target.pow(2).mean().item())
    return total, relative


def logit_kl(model: ParallelGPT, teacher, idx: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, mean per position."""
    with torch.no_grad():
        target = F.log_softmax(teacher(idx, idx)[0].float(), dim=-1)
    logits, _ = model(idx, idx)  # with targets: every position's logits
    student = F.log_softmax(logits.float(), dim=-1)
    V = student.shape[-1]
    return F.kl_div(student.reshape(-1, V), target.reshape(-1, V), log_target=True,
                    reduction="batchmean")

