"""What the parameters of a tensor-parallel model cost one rank, from the family's layout table
(family.py): the elements it holds, sharded and replicated, their bytes with gradients and
AdamW's state (`tpgpt plan`, the trainer's memory report, `bench dist`), and the matmul weights a
forward pass multiplies by (the cost models' FLOPs and bytes)."""
from __future__ import annotations

from .family import layouts, rank_elements


def dense_shapes(config) -> dict[str, tuple[int, ...]]:
    """The dense model's parameter shapes by name, from the config alone (no tensors made)."""
    C, hs, H, V = config.n_embd, config.head_size, config.hidden_size, config.vocab_size
    q, kv = config.n_head * hs, config.kv_heads * hs
    out = {"mlp.c_fc": (H, C), "mlp.gate_proj": (H, C), "mlp.up_proj": (H, C),
           "mlp.c_proj": (C, H), "attn.c_attn": (3 * C, C), "attn.q_proj": (q, C),
           "attn.k_proj": (kv, C), "attn.v_proj": (kv, C)}
    out["attn.c_proj"] = (C, q) if config.family == "llama" else (C, C)
    shapes = {}
    for name in layouts(config):
        if name in ("transformer.wte.weight", "lm_head.weight"):
            shapes[name] = (V, C)
        elif name == "transformer.wpe.weight":
            shapes[name] = (config.block_size, C)
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            shapes[name] = (hs,)
        else:
            module = ".".join(name.split(".")[-3:-1])
            if module in out:
                rows, cols = out[module]
                shapes[name] = (rows, cols) if name.endswith("weight") else (rows,)
            else:  # a norm
                shapes[name] = (C,)
    return shapes


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def memory_per_rank(config, tp: int, vocab_parallel: bool) -> dict:
    """Parameter elements one TP rank holds, split into sharded (its shards of the dense
    tensors split over ranks) and replicated; bytes for fp32 parameters, gradients and AdamW's
    two moments."""
    shapes, sharded, replicated = dense_shapes(config), 0, 0
    for name, kind in layouts(config, vocab_parallel).items():
        n = _numel(shapes[name])
        if kind == "replicated":
            replicated += n
        else:
            sharded += rank_elements(kind, n, config, tp)
    per_rank = sharded + replicated
    return {"sharded_elements": sharded, "replicated_elements": replicated,
            "param_bytes": 4 * per_rank, "grad_bytes": 4 * per_rank,
            "adamw_bytes": 8 * per_rank, "total_bytes": 16 * per_rank}


def matmul_elements(config, tp: int = 1) -> dict[str, int]:
    """Weight elements of one layer's matmuls that one rank multiplies by: 'attention' (q, k,
    v and the output projection) and 'mlp'. At tp=1: GPT-2's 4C^2 and 8C^2 (2 * 4C * C)."""
    shapes = dense_shapes(config)
    table = layouts(config)
    out = {"attention": 0, "mlp": 0}
    for name, kind in table.items():
        if not name.startswith("transformer.h.0.") or not name.endswith("weight") \
                or kind == "replicated":
            continue
        part = "attention" if ".attn." in name else "mlp"
        out[part] += rank_elements(kind, _numel(shapes[name]), config, tp)
    return out
