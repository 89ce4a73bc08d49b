"""What the parameters of a tensor-parallel GPT cost one rank: the elements it holds, sharded
and replicated, and their bytes with gradients and AdamW's state (`tpgpt plan`, the trainer's
memory report, `bench dist`)."""
from __future__ import annotations


def memory_per_rank(config, tp: int, vocab_parallel: bool) -> dict:
    """Parameter elements one TP rank holds, split into sharded (1/tp of the dense tensors) and
    replicated; bytes for fp32 parameters, gradients and AdamW's two moments."""
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    b = 1 if config.bias else 0
    sharded = L * (12 * C * C + 7 * C * b)  # c_attn, c_fc (+ biases), both c_proj weights
    replicated = L * (2 * C * (1 + b) + 2 * C * b) + T * C + C * (1 + b)  # LNs, c_proj biases,
    # wpe, ln_f
    if vocab_parallel:
        sharded += V * C
    else:
        replicated += V * C
    per_rank = sharded // tp + replicated
    return {"sharded_elements": sharded // tp, "replicated_elements": replicated,
            "param_bytes": 4 * per_rank, "grad_bytes": 4 * per_rank,
            "adamw_bytes": 8 * per_rank, "total_bytes": 16 * per_rank}
