"""`tpgpt verify`: show, on a small model, that the parallel GPT is what it claims to be.

- with every sync on, simulated tp equals the dense GPT (logits, loss, every gradient);
- at tp=1 every plan equals the dense GPT (with one rank there is nothing to drop);
- every run communicates exactly what `tpgpt plan` predicts;
- under torchrun, the distributed model equals the simulated one for every plan.

"Equals" follows analysis/numerics.py: in float64 within FLOAT64_RTOL; in float32 as close to
the exact (float64) function as the reference's own float32 result is.
"""
from __future__ import annotations

import torch

from ..comm.plan import count_collectives, summarize
from ..comm.tp_comm import TPComm
from ..model import GPT
from ..model.parallel_gpt import ParallelGPT
from .numerics import FLOAT64_RTOL, float32_bound, rel_err


def parallel_dense_grads(model: ParallelGPT) -> dict[str, torch.Tensor]:
    """The parallel model's gradients laid out as the dense model's (gathered over ranks)."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
        out = model.dense_state_dict()
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    if model.config.tie_embeddings:
        out.pop("lm_head.weight")
    return out


def _step(model, idx, targets) -> tuple[dict[str, torch.Tensor], dict]:
    """Loss, last-position logits and every gradient (dense layout) of one forward/backward,
    and the collectives the training pass counted (the logits pass after it is not counted)."""
    model.zero_grad(set_to_none=True)
    parallel = isinstance(model, ParallelGPT)
    if parallel:
        model.comm.counter.reset()
    _, loss = model(idx, targets, return_logits=False) if parallel else model(idx, targets)
    loss.backward()
    if parallel:
        model.sync_replicated_grads()
    counts = model.comm.counter.summary() if parallel else {}
    with torch.no_grad():
        logits = model(idx)[0]
    grads = parallel_dense_grads(model) if parallel else \
        {n: p.grad for n, p in model.named_parameters()}
    return {"loss": loss.detach(), "logits": logits,
            **{"grad " + n: g for n, g in grads.items()}}, counts


def _compare(ours: dict, ref: dict, exact: dict | None) -> dict:
    """Errors and tolerances for loss, logits and the worst gradient. float64 (exact None): ours
    against ref within FLOAT64_RTOL; float32: ours against `exact`, the float64 run of the
    function both compute, bounded by ref's own error."""
    out = {}
    for part in ("loss", "logits", "grad"):
        keys = [k for k in ref if k == part or k.startswith(part + " ")]
        if exact is None:
            errs = [(rel_err(ours[k], ref[k]), FLOAT64_RTOL) for k in keys]
        else:
            errs = [(rel_err(ours[k], exact[k]), float32_bound(ref[k], exact[k]))
                    for k in keys]
        err, tol = max(errs, key=lambda e: e[0] / e[1])
        out[f"{part}_err"], out[f"{part}_tol"] = err, tol
    out["within"] = all(out[f"{p}_err"] <= out[f"{p}_tol"] for p in ("loss", "logits", "grad"))
    return out


def _float64(gpt: GPT) -> GPT:
    """A float64 copy of `gpt`: its exact function, the reference of float32 comparisons."""
    gpt64 = GPT(gpt.config)
    gpt64.load_state_dict(gpt.state_dict())
    return gpt64.double().to(next(gpt.parameters()).device)


def _expected_counts(plan, tp, gpt, idx, vocab_parallel):
    return summarize(count_collectives(
        plan, tp=tp, config=gpt.config, batch_size=idx.shape[0],
        seq_len=idx.shape[1], vocab_parallel=vocab_parallel,
        dtype_bytes=next(gpt.parameters()).element_size()))


def check_plan(gpt: GPT, tp: int, sync: str, idx, targets, vocab_parallel: bool = False,
               comm: TPComm | None = None) -> dict:
    """One forward/backward of `sync` at `tp` from the dense `gpt`'s weights, against the dense
    model (meaningful when the plan is exact: every bit on, or tp=1), and its counted
    collectives against the plan's."""
    model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, comm=comm,
                                   vocab_parallel=vocab_parallel)
    ours, observed = _step(model, idx, targets)
    ref, _ = _step(gpt, idx, targets)
    exact = None
    if next(gpt.parameters()).dtype != torch.float64:
        exact = _step(_float64(gpt), idx, targets)[0]
    expected = _expected_counts(model.plan, tp, gpt, idx, vocab_parallel)
    return {"tp": tp, "sync": sync, "exact": model.plan.is_dense_at(tp),
            "forward_syncs": model.plan.forward_syncs(tp),
            **_compare(ours, ref, exact),
            "counts_match": observed == expected, "observed": observed, "expected": expected}


def check_distributed(gpt: GPT, tp: int, sync: str, idx, targets,
                      vocab_parallel: bool = False) -> dict:
    """Under torchrun: the distributed model against the simulated one, same weights and batch,
    one forward/backward each; loss, logits and every gradient (gathered to the dense layout)
    compared, and each model's counted collectives against the plan."""
    from ..comm.distributed import DistributedComm  # the model code itself never imports it

    runs, counts = {}, {}
    for name, comm in (("sim", TPComm(tp)), ("dist", DistributedComm(tp))):
        model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, comm=comm,
                                       vocab_parallel=vocab_parallel)
        runs[name], counts[name] = _step(model, idx, targets)
        plan = model.plan
    exact = None
    if next(gpt.parameters()).dtype != torch.float64:  # the simulated model's exact function
        exact = _step(ParallelGPT.from_dense(_float64(gpt), tp=tp, sync=sync,
                                             vocab_parallel=vocab_parallel), idx, targets)[0]
    expected = _expected_counts(plan, tp, gpt, idx, vocab_parallel)
    return {"tp": tp, "sync": sync, "exact": True,
            "forward_syncs": plan.forward_syncs(tp),
            **_compare(runs["dist"], runs["sim"], exact),
            "counts_match": all(c == expected for c in counts.values()),
            "observed": counts["dist"], "expected": expected}
