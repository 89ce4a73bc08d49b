"""`tpgpt verify`: show, on a small model, that the parallel GPT is what it claims to be.

- with every sync on, simulated tp equals the dense GPT (logits, loss, every gradient);
- at tp=1 every plan equals the dense GPT (with one rank there is nothing to drop);
- every run communicates exactly what `tpgpt plan` predicts;
- under torchrun, the distributed model equals the simulated one for every plan.
"""
from __future__ import annotations

import torch

from ..comm.tp_comm import TPComm
from ..model import GPT
from ..model.parallel_gpt import ParallelGPT
from ..comm.plan import count_collectives, summarize


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    scale = b.abs().max().clamp(min=1e-30)
    return ((a - b).abs().max() / scale).item()


def dense_grads(gpt: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in gpt.named_parameters()}


def parallel_dense_grads(model: ParallelGPT) -> dict[str, torch.Tensor]:
    """The parallel model's gradients laid out as the dense model's (gathered over ranks)."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
        out = model.dense_state_dict()
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    out.pop("lm_head.weight")
    return out


def check_plan(gpt: GPT, tp: int, sync: str, idx, targets, vocab_parallel: bool = False,
               comm: TPComm | None = None) -> dict:
    """One training step of `sync` at `tp` from the dense `gpt`'s weights.

    Returns the errors against the dense model (meaningful when the plan is exact: every bit on,
    or tp=1) and whether the counted collectives equal the plan's.
    """
    model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, comm=comm, vocab_parallel=vocab_parallel)
    model.comm.counter.reset()
    logits, loss = model(idx, targets, return_logits=False)
    loss.backward()
    model.sync_replicated_grads()
    observed = model.comm.counter.summary()
    expected = summarize(count_collectives(
        model.plan, tp=tp, n_embd=gpt.config.n_embd, bias=gpt.config.bias,
        batch_size=idx.shape[0], seq_len=idx.shape[1], vocab_parallel=vocab_parallel,
        dtype_bytes=next(gpt.parameters()).element_size()))
    with torch.no_grad():
        logits = model(idx)[0]
    gpt.zero_grad(set_to_none=True)
    ref_logits, ref_loss = gpt(idx, targets)
    ref_loss.backward()
    ref_grads = dense_grads(gpt)
    grads = parallel_dense_grads(model)
    return {
        "tp": tp, "sync": sync, "exact": tp == 1 or all(model.plan.bits),
        "forward_syncs": model.plan.num_syncs if tp > 1 else 0,
        "loss_err": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()),
        "logits_err": max_rel_diff(logits, ref_logits[:, [-1], :]),
        "grad_err": max(max_rel_diff(grads[n], ref_grads[n]) for n in ref_grads),
        "counts_match": observed == expected,
        "observed": observed, "expected": expected,
    }


def check_distributed(gpt: GPT, tp: int, sync: str, idx, targets,
                      vocab_parallel: bool = False) -> dict:
    """Under torchrun: the distributed model against the simulated one, same weights and batch.

    Both take one training step; loss, logits and every gradient (gathered to dense layout) are
    compared, and each model's counted collectives against the plan.
    """
    from ..comm.distributed import DistributedComm  # the model code itself never imports it

    results = {}
    for name, comm in (("sim", TPComm(tp)), ("dist", DistributedComm(tp))):
        model = ParallelGPT.from_dense(gpt, tp=tp, sync=sync, comm=comm,
                                       vocab_parallel=vocab_parallel)
        _, loss = model(idx, targets, return_logits=False)
        loss.backward()
        model.sync_replicated_grads()
        observed = comm.counter.summary()
        with torch.no_grad():
            logits = model(idx)[0]
        results[name] = (loss.detach(), logits, parallel_dense_grads(model), observed, model.plan)
    (sl, slg, sg, sobs, plan), (dl, dlg, dg, dobs, _) = results["sim"], results["dist"]
    expected = summarize(count_collectives(
        plan, tp=tp, n_embd=gpt.config.n_embd, bias=gpt.config.bias, batch_size=idx.shape[0],
        seq_len=idx.shape[1], vocab_parallel=vocab_parallel,
        dtype_bytes=next(gpt.parameters()).element_size()))
    return {
        "tp": tp, "sync": sync, "exact": True, "forward_syncs": plan.num_syncs if tp > 1 else 0,
        "loss_err": abs(dl.item() - sl.item()) / abs(sl.item()),
        "logits_err": max_rel_diff(dlg, slg),
        "grad_err": max(max_rel_diff(dg[n], sg[n]) for n in sg),
        "counts_match": sobs == expected and dobs == expected,
        "observed": dobs, "expected": expected,
    }
