"""The GPT-2 family's adapter to and from Hugging Face transformers' GPT2LMHeadModel.

HF's GPT2LMHeadModel keeps nanoGPT's parameter names (the `transformer.` prefix included) but
stores the four matmul weights as Conv1D, `[in, out]`, the transpose of nn.Linear's `[out, in]`.
It always has biases: a model trained with bias=False exports zero biases, which is the same
function. GELU: tpgpt trains with the exact (erf) GELU ("gelu" in HF's config); OpenAI's GPT-2
uses the tanh approximation (HF's "gelu_new"), which tpgpt's GPT computes as
activation="gelu_tanh".
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..model import GPTConfig

HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
# HF's names for the two GELUs tpgpt computes ("gelu_pytorch_tanh" is the same tanh formula)
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2_config(config: GPTConfig) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size,
            "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None,
            "activation_function": HF_ACTIVATION[config.activation],
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
            "tie_word_embeddings": True, "torch_dtype": "float32",
            # GPT-2's <|endoftext|> (50256) exists only in a GPT-2-sized vocabulary
            "bos_token_id": 50256 if config.vocab_size > 50256 else None,
            "eos_token_id": 50256 if config.vocab_size > 50256 else None,
            "tpgpt_bias": config.bias}


def to_hf_state(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """tpgpt (nanoGPT) state dict -> HF GPT-2 tensors (Conv1D transposed, zero biases added)."""
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        out[k] = v.t().contiguous() if k.endswith(CONV1D) else v.contiguous()
    if not config.bias:
        C, dtype = config.n_embd, sd["transformer.wte.weight"].dtype
        zeros = {"ln_1.bias": C, "ln_2.bias": C, "attn.c_attn.bias": 3 * C,
                 "attn.c_proj.bias": C, "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
        for i in range(config.n_layer):
            for name, n in zeros.items():
                out[f"transformer.h.{i}.{name}"] = torch.zeros(n, dtype=dtype)
        out["transformer.ln_f.bias"] = torch.zeros(C, dtype=dtype)
    return out


def from_hf_state(sd: dict[str, torch.Tensor], bias: bool) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors -> tpgpt state dict (inverse of to_hf_state)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue  # HF's causal-mask buffers in old checkpoints
        if not bias and k.endswith(".bias"):
            continue
        out[k] = v.t().contiguous() if k.endswith(CONV1D) else v
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def gpt2_config_from_hf(hf: dict, where: str, block_size: int | None = None) -> GPTConfig:
    """A GPTConfig for a GPT2LMHeadModel config.json (`block_size`: a shorter context than
    its n_positions, on purpose)."""
    if hf.get("model_type") != "gpt2":
        raise ConfigError(f"{where} is not a GPT-2 model (model_type {hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in FROM_HF_ACTIVATION:
        raise ConfigError(f"{where} uses activation {act!r}; tpgpt's GPT computes "
                          f"{', '.join(FROM_HF_ACTIVATION)}")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 0)):
        raise ConfigError(f"{where} has n_inner={hf['n_inner']}: tpgpt's MLP is 4 x n_embd")
    try:
        return GPTConfig(block_size=block_size or hf["n_positions"], vocab_size=hf["vocab_size"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         dropout=0.0, bias=hf.get("tpgpt_bias", True),
                         activation=FROM_HF_ACTIVATION[act])
    except KeyError as e:
        raise ConfigError(f"{where}: the config has no {e.args[0]}") from None
