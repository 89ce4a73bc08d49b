"""When two computations of the same function count as equal: tolerances derived from the
floating-point arithmetic, not from one machine's run. `tpgpt verify` and the tests share them.

Two implementations of one function (the dense GPT and ParallelGPT with every sync on, the
simulated and the distributed comm, two training layouts) do the same operations with their sums
in another order: a sharded matmul adds its products in rank-sized pieces, an all-reduce adds tp
partial sums, a CPU's kernels pick their own blocking. Reordering a sum of n terms moves it by at
most about n * u * sum(|terms|), u the unit roundoff (Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., section 4.2), and the layers pass that on, amplified by their
condition number. Which order a CPU picks depends on its kernels (ATEN_CPU_CAPABILITY), so a
tolerance fitted to one machine's float32 differences can fail on another. Hence two rules:

float64: compare in float64, where u = 1.1e-16. The widest sums here have at most a few thousand
    terms of magnitude <= 1, so reordering moves a result by < 1e-12 of its tensor's scale even
    after a 100x amplification through the layers; FLOAT64_RTOL = 1e-10 leaves a further 100x on
    top and is still 1e6 below the differences a wrong shard, plan or gradient sum makes (those are
    1e-4 and larger: tests/test_equivalence.py shows plans really differ).

float32: the model users train. Its rounding error depends on the CPU, so the scale is measured
    on the CPU that runs the check: the parallel float32 model must be as close to the exact
    (float64) function as the dense float32 model is, within FLOAT32_FACTOR. Both are float32
    evaluations of the same expression whose errors are sums of many roundings of the same size
    (a sharded sum has no more rounding steps than the dense one, plus one per rank for the
    all-reduce); over a whole tensor the worst elements of two such computations agree within a
    small factor. FLOAT32_FLOOR (in units of float32's unit roundoff times the tensor's scale)
    keeps an exactly computed reference from demanding zero error.

AdamW: its step lr * m / (sqrt(v) + eps) is scale-free, so a gradient element near 0 moves the
    weight by up to ~lr whatever its size, and a difference dg in such a gradient changes the step
    by up to lr * 3 dg / eps (the derivative of g / (|g| + eps) is at most 1 / eps; the moments
    carry earlier differences, at most tripling it). In float64, dg < 1e-12 for these models
    (the sums above), so each step's weights differ by < lr * 3e-4: ADAM_STEP_TOL bounds the
    weight difference after k steps by ADAM_STEP_TOL * (sum of the k learning rates). In float32
    dg is ~1e-9 and the bound would be lr itself: nothing to check, which is why weights after
    optimizer steps are compared in float64 only.

Training runs (losses over tens of steps, float64): by the AdamW bound every weight differs by
    < 1e-3 * sum(lr) ~ 1e-4 at most after 50 steps at lr 3e-3, in practice by ~1e-15 (the bound
    needs a gradient of exactly eps's size in every element); TRAIN_LOSS_TOL64 = 1e-6 is the loss
    change a 1e-7 weight difference spread over every parameter can make at these models' gradient
    norms (< 10). It is far below what a real difference makes (a dropped sync, a gradient
    averaged wrongly: 1e-3 and larger).
"""
from __future__ import annotations

import torch

FLOAT64_RTOL = 1e-10
FLOAT32_FACTOR = 4.0
FLOAT32_FLOOR = 16.0
ADAM_STEP_TOL = 1e-3
TRAIN_LOSS_TOL64 = 1e-6
U32 = torch.finfo(torch.float32).eps / 2  # unit roundoff, 6.0e-8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the difference relative to the reference tensor's scale."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def float32_bound(dense32: torch.Tensor, exact: torch.Tensor) -> float:
    """The relative error a float32 computation of `exact` may have, scaled by the dense float32
    model's own error on this CPU (see the module docstring)."""
    return FLOAT32_FACTOR * rel_err(dense32, exact) + FLOAT32_FLOOR * U32


def adam_weight_bound(lrs: list[float]) -> float:
    """Largest |weight difference| after AdamW steps at learning rates `lrs` from equal weights,
    for float64 runs whose gradients agree to rounding (see the module docstring)."""
    return ADAM_STEP_TOL * sum(lrs)
