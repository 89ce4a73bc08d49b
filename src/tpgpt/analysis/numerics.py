"""When two computations of the same function count as equal: tolerances set from the
floating-point arithmetic, not fitted to one machine's run. `tpgpt verify` and the tests share
them; benchmarks/numerics_margins.py measures how much room each leaves on a CPU.

Two implementations of one function (the dense GPT and ParallelGPT with every sync on, the
simulated and the distributed comm, two training layouts) do the same operations with their sums
in another order: a sharded matmul adds its products in rank-sized pieces, an all-reduce adds tp
partial sums, a CPU's kernels pick their own blocking. Reordering a sum of n terms moves it by at
most n * u * sum(|terms|), u the unit roundoff (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., section 4.2; typically by ~sqrt(n) * u * sum(|terms|), the errors being of
random sign), and the layers pass that on, amplified by their condition number. Which order a CPU
picks depends on its kernels (ATEN_CPU_CAPABILITY), so a tolerance fitted to one machine's
float32 differences can fail on another (it did: issue 10). Hence:

float64: compare in float64, where u = 1.1e-16. For the models checked here (widths <= 768,
    sums of <= 1e4 terms) the typical reordering error is ~sqrt(1e4) * u = 1e-14 of a sum's
    scale; even with 1e3 of cancellation and amplification through the layers on top, it stays
    below 1e-11. FLOAT64_RTOL = 1e-9 of a tensor's largest magnitude keeps 100x over that and
    is 1e5 below the smallest difference a dropped sync makes in the logits (1e-3 and up; 1e-5 in
    a scalar loss): tests/test_equivalence.py checks plans differ by that much, and
    tests/test_verify.py that a sync off by 1e-7 is caught. Measured: ~1.5e-15, on every kernel
    set here.

float32: the model users train. Its rounding error depends on the CPU, so the scale is measured
    on the CPU that runs the check: the parallel float32 model must be as close to the exact
    (float64) function as the dense float32 model is, within FLOAT32_FACTOR, plus FLOAT32_FLOOR
    units of float32's roundoff (so an exactly computed reference does not demand zero error).
    Both are float32 evaluations of one expression whose errors are sums of roundings of the
    same size (a sharded sum has no more rounding steps than the dense one, plus one per rank
    for the all-reduce). Measured on the suite's models: every tensor within 14 units of
    roundoff of its scale, using at most 0.3 of the bound, on every kernel set here.

AdamW: its step lr * m / (sqrt(v) + eps) is scale-free, so a gradient difference dg changes the
    step of an element whose gradient is g by up to lr * 3 dg / (|g| + eps) (the derivative of
    g / (|g| + eps) is at most 1 / (|g| + eps); the moments carry earlier differences, at most
    tripling it): near g = 0 rounding noise decides the step (the key bias, whose gradient is
    exactly zero, moves by noise-signed steps). In float64 these models' gradients agree to
    dg < 1e-13, so after ONE step the weights differ by < lr * 3e-5. That is a bound for one
    step only: a weight difference dw changes the next gradients by H dw, which Adam amplifies
    again where |g| < eps. ADAM_STEP_TOL = 1e-3 per unit of learning rate is therefore an
    estimate with margin for a few steps, not a proof; it holds here with a factor ~1e8 to spare
    (measured 1e-14 against a bound of 3e-6 after three steps), because the elements below eps
    are the key biases, which the function ignores (H = 0). In float32 dg is ~1e-8 and even the
    one-step bound is ~3 lr: nothing to check, which is why weights after optimizer steps and
    training runs are compared in float64.

Training runs (float64 losses over tens of steps): to first order a step changes the loss by
    sum_i |g_i| |dw_i| <= 3 lr N dg (the |g_i| cancels the 1 / (|g_i| + eps) above), N the
    parameter count: for N <= 2e5, lr <= 3e-3, dg < 1e-13 and 50 steps, < 1e-8. Like the AdamW
    bound it is first-order; TRAIN_LOSS_TOL64 = 1e-7 keeps 10x for the growth, and measured
    differences between layouts are ~1e-15, against 1e-3 and more for a real difference (a
    dropped sync, a wrongly averaged gradient).
"""
from __future__ import annotations

import torch

FLOAT64_RTOL = 1e-9
FLOAT32_FACTOR = 4.0
FLOAT32_FLOOR = 16.0
ADAM_STEP_TOL = 1e-3
TRAIN_LOSS_TOL64 = 1e-7
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
