"""Between a dense GPT state dict (nanoGPT names) and a ParallelGPT's shards, both ways.

`shard_dense_state` takes this process's shards of every dense tensor; `gather_dense_state`
rebuilds the dense tensors from every rank's shards (collective when distributed). They are exact
inverses: no arithmetic, only slicing and concatenation.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .gpt import LayerNorm


def dense_keys(config) -> list[str]:
    """The dense GPT's state-dict keys, without the tied `lm_head.weight`."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    suffixes = ["ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "ln_2.weight",
                "mlp.c_fc.weight", "mlp.c_proj.weight"]
    if config.bias:
        suffixes += ["ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.bias",
                     "mlp.c_fc.bias", "mlp.c_proj.bias"]
    keys += [f"transformer.h.{i}.{s}" for i in range(config.n_layer) for s in suffixes]
    keys += ["transformer.ln_f.weight"] + (["transformer.ln_f.bias"] if config.bias else [])
    return keys


def _copy_ln(ln: LayerNorm, sd, prefix: str) -> None:
    ln.weight.copy_(sd[prefix + ".weight"])
    if ln.bias is not None:
        ln.bias.copy_(sd[prefix + ".bias"])


def _ln_state(ln: LayerNorm, prefix: str) -> dict[str, torch.Tensor]:
    out = {prefix + ".weight": ln.weight.detach().clone()}
    if ln.bias is not None:
        out[prefix + ".bias"] = ln.bias.detach().clone()
    return out


@torch.no_grad()
def shard_dense_state(model, sd: dict[str, torch.Tensor]) -> None:
    """Copy this process's shards of a dense GPT state dict into a ParallelGPT `model`."""
    want = set(dense_keys(model.config))
    got = set(sd) - {"lm_head.weight"}
    if want != got:
        missing, extra = sorted(want - got), sorted(got - want)
        raise ConfigError(f"dense state dict does not match the model: missing {missing[:3]}"
                          f"{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                          f"{'...' if len(extra) > 3 else ''}")
    tp, ranks = model.tp, model.comm.ranks
    t = model.transformer
    if model.vocab_parallel:
        t.wte.weight.copy_(torch.stack(
            [sd["transformer.wte.weight"].chunk(tp, 0)[r] for r in ranks]))
    else:
        t.wte.weight.copy_(sd["transformer.wte.weight"])
    t.wpe.weight.copy_(sd["transformer.wpe.weight"])
    _copy_ln(t.ln_f, sd, "transformer.ln_f")
    for i, blk in enumerate(t.h):
        p = f"transformer.h.{i}."
        _copy_ln(blk.ln_1, sd, p + "ln_1")
        _copy_ln(blk.ln_2, sd, p + "ln_2")
        for name, groups in (("attn.c_attn", 3), ("mlp.c_fc", 1)):
            blk.get_submodule(name).load_dense(sd[p + name + ".weight"],
                                               sd.get(p + name + ".bias"), groups=groups)
        for name in ("attn.c_proj", "mlp.c_proj"):
            blk.get_submodule(name).load_dense(sd[p + name + ".weight"],
                                               sd.get(p + name + ".bias"))


@torch.no_grad()
def gather_dense_state(model) -> dict[str, torch.Tensor]:
    """The dense GPT's state dict of a ParallelGPT `model`, gathered from every rank."""
    gather, t = model.comm.gather_ranks, model.transformer
    sd = {}
    wte = t.wte.weight
    sd["transformer.wte.weight"] = gather(wte).flatten(0, 1) if model.vocab_parallel \
        else wte.detach().clone()
    sd["transformer.wpe.weight"] = t.wpe.weight.detach().clone()
    for i, blk in enumerate(t.h):
        p = f"transformer.h.{i}."
        for name, ln in (("ln_1", blk.ln_1), ("ln_2", blk.ln_2)):
            sd.update(_ln_state(ln, p + name))
        for name, groups in (("attn.c_attn", 3), ("mlp.c_fc", 1)):
            m = blk.get_submodule(name)
            w, b = m.dense_from_shards(gather(m.weight),
                                       None if m.bias is None else gather(m.bias), groups)
            sd[p + name + ".weight"] = w
            if b is not None:
                sd[p + name + ".bias"] = b
        for name in ("attn.c_proj", "mlp.c_proj"):
            m = blk.get_submodule(name)
            w, b = m.dense_from_shards(gather(m.weight), m.bias)
            sd[p + name + ".weight"] = w
            if b is not None:
                sd[p + name + ".bias"] = b.detach().clone()
    sd.update(_ln_state(t.ln_f, "transformer.ln_f"))
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd
