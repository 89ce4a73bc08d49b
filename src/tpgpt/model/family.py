"""The one table of how every parameter of a family is laid out under tensor parallelism, and
the per-kind functions between a dense tensor and a process's shards.

    column      output features split by rank: nn.Linear [out, in] -> [R, in, out/tp]
                (bias [out] -> [R, out/tp]); the MLP's c_fc, gate_proj, up_proj; q_proj by heads
    qkv         GPT-2's fused [q | k | v]: each third split by heads, rank r holds [q_r|k_r|v_r]
    kv          k_proj, v_proj by KV heads: rank r holds KV heads r*n_kv/tp .. (one of them,
                replicated over tp/n_kv ranks, when tp > n_kv: vLLM's rule)
    row         input features split: [out, in] -> [R, in/tp, out] (c_proj: the outputs)
    vocab       rows of the vocabulary split (vocab-parallel embedding and head): [R, V/tp, C]
    replicated  the same tensor on every rank (norms, output biases, positions)

from_dense/to_dense (dense_weights.py), the layout-independent checkpoint coordinates
(checkpoint/sharded_state.py), parameter and byte counts (accounting.py, the cost models) read
it; nothing else knows which family it runs.
"""
from __future__ import annotations

import torch



def layouts(config, vocab_parallel: bool = False) -> dict[str, str]:
    """Dense parameter name -> layout kind, for every tensor of the dense model's state dict
    (the tied lm_head.weight left out)."""
    out = {"transformer.wte.weight": "vocab" if vocab_parallel else "replicated"}
    if not config.rotary:
        out["transformer.wpe.weight"] = "replicated"
    norm = ("weight", "bias") if config.family == "gpt2" and config.bias else ("weight",)
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        out.update({f"{p}ln_1.{n}": "replicated" for n in norm})
        if config.family == "gpt2":
            out.update(_linear(p + "attn.c_attn", "qkv", config.bias))
            out.update(_linear(p + "attn.c_proj", "row", config.bias))
            out.update({f"{p}ln_2.{n}": "replicated" for n in norm})
            out.update(_linear(p + "mlp.c_fc", "column", config.bias))
            out.update(_linear(p + "mlp.c_proj", "row", config.bias))
            continue
        out.update(_linear(p + "attn.q_proj", "column", config.qkv_bias))
        out.update(_linear(p + "attn.k_proj", "kv", config.qkv_bias))
        out.update(_linear(p + "attn.v_proj", "kv", config.qkv_bias))
        if config.qk_norm:
            out.update({p + "attn.q_norm.weight": "replicated",
                        p + "attn.k_norm.weight": "replicated"})
        out.update(_linear(p + "attn.c_proj", "row", False))
        out[p + "ln_2.weight"] = "replicated"
        out.update(_linear(p + "mlp.gate_proj", "column", False))
        out.update(_linear(p + "mlp.up_proj", "column", False))
        out.update(_linear(p + "mlp.c_proj", "row", False))
    out.update({f"transformer.ln_f.{n}": "replicated" for n in norm})
    if not config.tie_embeddings:
        out["lm_head.weight"] = "vocab" if vocab_parallel else "replicated"
    return out


def _linear(prefix: str, kind: str, bias: bool) -> dict[str, str]:
    out = {prefix + ".weight": kind}
    if bias:  # a row-parallel layer's bias is added once, after the sum: replicated
        out[prefix + ".bias"] = "replicated" if kind == "row" else kind
    return out


# --- GQA under TP ---------------------------------------------------------------------------
def kv_per_rank(config, tp: int) -> int:
    """KV heads one rank holds (at least one: replicated when tp > n_kv_head)."""
    return max(1, config.kv_heads // tp)


def kv_replicas(config, tp: int) -> int:
    """Ranks holding each KV head (1 unless tp > n_kv_head)."""
    return max(1, tp // config.kv_heads)


def kv_heads_of(config, tp: int, rank: int) -> range:
    first = rank * config.kv_heads // tp
    return range(first, first + kv_per_rank(config, tp))


def head_split(config, tp: int) -> str:
    """'2 query heads, 1 KV head per rank (each KV head on 2 ranks)', for train and plan."""
    q, k, reps = config.n_head // tp, kv_per_rank(config, tp), kv_replicas(config, tp)
    text = f"{q} query head{'s' * (q != 1)}"
    if config.kv_heads != config.n_head:
        text += f", {k} KV head{'s' * (k != 1)}"
    text += " per rank"
    return text + (f" (each KV head on {reps} ranks)" if reps > 1 else "")


def model_line(config, tp: int) -> str:
    """'llama (8 heads, 2 KV heads), 4 query heads, 1 KV head per rank', for train's banner."""
    kv = config.kv_heads
    text = f"{config.family} ({config.n_head} heads" + (f", {kv} KV heads" if kv != config.n_head
                                                      else "") + ")"
    return text + (f", {head_split(config, tp)}" if tp > 1 else "")


# --- dense tensor <-> this process's shards ---------------------------------------------------
def _heads(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, -1, *t.shape[1:])  # [n, hs, in] or [n, hs]


def shard(kind: str, t: torch.Tensor, config, tp: int, ranks: range) -> torch.Tensor:
    """This process's ranks' shards of dense tensor t, shaped as the parallel parameter."""
    if kind == "replicated":
        return t
    if kind == "vocab":
        return torch.stack([t.chunk(tp, 0)[r] for r in ranks])
    if kind == "row":
        return torch.stack([t.chunk(tp, 1)[r] for r in ranks]).transpose(1, 2)
    if kind == "kv":
        h = _heads(t, config.kv_heads)
        parts = [h[kv_heads_of(config, tp, r)[0]:kv_heads_of(config, tp, r)[-1] + 1]
                 .flatten(0, 1) for r in ranks]
    elif kind == "qkv":
        thirds = [part.chunk(tp, 0) for part in t.chunk(3, 0)]
        parts = [torch.cat([third[r] for third in thirds]) for r in ranks]
    else:  # column
        parts = [t.chunk(tp, 0)[r] for r in ranks]
    out = torch.stack(parts)  # [R, out/tp, in] or [R, out/tp]
    return out.transpose(1, 2) if t.dim() == 2 else out


def unshard(kind: str, full: torch.Tensor, config, tp: int) -> torch.Tensor:
    """The dense tensor from every rank's shard `full` ([tp, ...]; a replicated one as is)."""
    if kind == "replicated":
        return full
    if kind == "vocab":
        return full.flatten(0, 1)
    if kind == "row":
        return torch.cat(full.transpose(1, 2).unbind(0), dim=1)
    parts = full.transpose(1, 2) if full.dim() == 3 else full  # [tp, out/tp, (in)]
    if kind == "kv":  # one rank per KV head group (the first of its replicas)
        return torch.cat(list(parts[::kv_replicas(config, tp)].unbind(0)), dim=0)
    if kind == "qkv":
        thirds = [torch.cat([p.chunk(3, 0)[j] for p in parts.unbind(0)]) for j in range(3)]
        return torch.cat(thirds, dim=0)
    return torch.cat(list(parts.unbind(0)), dim=0)


def rank_elements(kind: str, numel: int, config, tp: int) -> int:
    """Elements of a dense tensor of `numel` elements that one rank holds."""
    if kind == "replicated":
        return numel
    if kind == "kv":
        return numel * kv_per_rank(config, tp) // config.kv_heads
    return numel // tp
