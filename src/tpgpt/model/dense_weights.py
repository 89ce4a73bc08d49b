"""Between a dense state dict (nanoGPT's names, the Llama family's in llama.py) and a
ParallelGPT's shards, both ways, driven by the family's layout table (family.py).

`shard_dense_state` takes this process's shards of every dense tensor; `gather_dense_state`
rebuilds the dense tensors from every rank's shards (collective when distributed). They are exact
inverses: no arithmetic, only slicing and concatenation. A parallel parameter has the dense
tensor's name (the head tied to the embedding is left out of the table and restored).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .family import layouts, shard, unshard


def dense_keys(config) -> list[str]:
    """The dense model's state-dict keys, without a tied `lm_head.weight`."""
    return list(layouts(config))


@torch.no_grad()
def shard_dense_state(model, sd: dict[str, torch.Tensor]) -> None:
    """Copy this process's shards of a dense state dict into a ParallelGPT `model`."""
    c = model.config
    table = layouts(c, model.vocab_parallel)
    want = set(table)
    got = set(sd) - ({"lm_head.weight"} if c.tie_embeddings else set())
    if want != got:
        missing, extra = sorted(want - got), sorted(got - want)
        raise ConfigError(f"dense state dict does not match the model: missing {missing[:3]}"
                          f"{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                          f"{'...' if len(extra) > 3 else ''}")
    for name, kind in table.items():
        model.get_parameter(name).copy_(shard(kind, sd[name], c, model.tp, model.comm.ranks))


@torch.no_grad()
def gather_dense_state(model) -> dict[str, torch.Tensor]:
    """The dense state dict of a ParallelGPT `model`, gathered from every rank."""
    c, sd = model.config, {}
    for name, kind in layouts(c, model.vocab_parallel).items():
        p = model.get_parameter(name)
        full = p.detach().clone() if kind == "replicated" else model.comm.gather_ranks(p)
        sd[name] = unshard(kind, full, c, model.tp)
    if c.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd
