"""The Llama family's state-dict adapter to and from Hugging Face transformers: the config of a
LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases, Qwen3ForCausalLM with q/k norms) for a
GPTConfig, and the tensor names each way. Hugging Face's nn.Linear weights are [out, in] like
ours, so a tensor moves unchanged; only names differ (the block's output projections are
c_proj here so that the sync machinery is shared with GPT-2: model/llama.py).
"""
from __future__ import annotations

import torch

from ..model import GPTConfig

# our name inside a block -> transformers' (model.layers.{i}.<name>)
BLOCK_NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
               "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
               "attn.v_proj": "self_attn.v_proj", "attn.c_proj": "self_attn.o_proj",
               "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm",
               "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
               "mlp.c_proj": "mlp.down_proj"}
FROM_HF_BLOCK = {v: k for k, v in BLOCK_NAMES.items()}
HF_ACT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def architecture(config: GPTConfig) -> str:
    """'Llama', 'Qwen2' (q/k/v biases) or 'Qwen3' (q/k norms): the transformers class prefix."""
    if config.qk_norm:
        return "Qwen3"
    return "Qwen2" if config.qkv_bias else "Llama"


def hf_llama_config(config: GPTConfig) -> dict:
    """transformers' config fields for a Llama-family GPTConfig."""
    arch = architecture(config)
    out = {"architectures": [f"{arch}ForCausalLM"], "model_type": arch.lower(),
           "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
           "intermediate_size": config.hidden_size, "num_hidden_layers": config.n_layer,
           "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads,
           "head_dim": config.head_size, "hidden_act": HF_ACT[config.activation],
           "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
           "tie_word_embeddings": config.tie_embeddings, "attention_dropout": config.dropout,
           "rope_theta": config.rope_theta, "torch_dtype": "float32"}
    if arch == "Llama":
        out.update(attention_bias=False, mlp_bias=False)
    if config.rope_scaling == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", "factor": config.rope_factor,
                               "low_freq_factor": config.rope_low_freq_factor,
                               "high_freq_factor": config.rope_high_freq_factor,
                               "original_max_position_embeddings": config.rope_original_context}
    return out


def to_hf_llama_state(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A dense Llama's state dict under transformers' names (the tied head left out)."""
    out = {}
    for k, v in sd.items():
        if k == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = v
        elif k == "transformer.ln_f.weight":
            out["model.norm.weight"] = v
        elif k == "lm_head.weight":
            if not config.tie_embeddings:
                out["lm_head.weight"] = v
        else:
            _, _, i, rest = k.split(".", 3)
            module, p = rest.rsplit(".", 1)
            out[f"model.layers.{i}.{BLOCK_NAMES[module]}.{p}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_llama_state(sd: dict[str, torch.Tensor],
                        config: GPTConfig) -> dict[str, torch.Tensor]:
    """transformers' tensors -> a dense Llama's state dict (the tied head filled in); a name
    that is not one of the family's raises KeyError naming it."""
    out = {}
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            out["transformer.wte.weight"] = v
        elif k == "model.norm.weight":
            out["transformer.ln_f.weight"] = v
        elif k == "lm_head.weight":
            out["lm_head.weight"] = v
        elif k.startswith("model.layers."):
            _, _, i, rest = k.split(".", 3)
            module, p = rest.rsplit(".", 1)
            if module not in FROM_HF_BLOCK:
                raise KeyError(k)
            out[f"transformer.h.{i}.{FROM_HF_BLOCK[module]}.{p}"] = v
        elif not k.endswith("rotary_emb.inv_freq"):  # a buffer some exports carry
            raise KeyError(k)
    if config.tie_embeddings:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
