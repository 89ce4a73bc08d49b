"""The Llama family's adapter to and from Hugging Face transformers: the config of a
LlamaForCausalLM (MistralForCausalLM, a Llama with a sliding window; Qwen2ForCausalLM with q/k/v
biases; Qwen3ForCausalLM with q/k norms) for a GPTConfig and back, and the tensor names each
way. Hugging Face's nn.Linear weights are [out, in] like ours, so a tensor moves unchanged;
only names differ (the block's output projections are c_proj here so that the sync machinery is
shared with GPT-2: model/llama.py).

A config tpgpt cannot compute exactly is refused in one line naming what: another rope type, a
bias tpgpt's Llama has not (Llama's attention_bias puts one on o_proj too, mlp_bias), quantized
weights, or a sliding window shorter than the context the model will run (Mistral's window is
exact attention while the context fits in it).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
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
FROM_HF_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def architecture(config: GPTConfig) -> str:
    """'Llama', 'Qwen2' (q/k/v biases) or 'Qwen3' (q/k norms): the transformers class prefix."""
    if config.qk_norm:
        return "Qwen3"
    return "Qwen2" if config.qkv_bias else "Llama"


def hf_llama_config(config: GPTConfig, source: dict | None = None) -> dict:
    """transformers' config fields for a Llama-family GPTConfig. `source`, what an import
    recorded of the config it came from ("architecture", "sliding_window"), keeps a Mistral a
    Mistral (its window, at least block_size, changes nothing here)."""
    arch = architecture(config)
    if (source or {}).get("architecture") == "MistralForCausalLM" and arch == "Llama":
        arch = "Mistral"
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
    if arch == "Mistral":
        out["sliding_window"] = source.get("sliding_window")
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


def _get(hf: dict, key: str, where: str):
    if key not in hf:
        raise ConfigError(f"{where}: the config has no {key}")
    return hf[key]


def _rope(hf: dict, where: str) -> dict:
    """GPTConfig's rope fields from the config's rope_parameters (transformers 5) or its
    rope_theta and rope_scaling (earlier)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    out = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if kind == "default":
        return out
    if kind != "llama3":
        raise ConfigError(f"{where} uses rope type {kind!r}: tpgpt computes the default "
                          f"rotation and llama3's scaling only")
    try:
        return {**out, "rope_scaling": "llama3", "rope_factor": float(params["factor"]),
                "rope_low_freq_factor": float(params["low_freq_factor"]),
                "rope_high_freq_factor": float(params["high_freq_factor"]),
                "rope_original_context": int(params["original_max_position_embeddings"])}
    except KeyError as e:
        raise ConfigError(f"{where}: its llama3 rope scaling has no {e.args[0]}") from None


def _check_exact(hf: dict, kind: str, where: str, block_size: int, window: bool) -> None:
    """Refuse what tpgpt's Llama does not compute (see the module's docstring); `window`:
    also a sliding window shorter than block_size."""
    if hf.get("quantization_config"):
        raise ConfigError(f"{where} holds quantized weights "
                          f"({hf['quantization_config'].get('quant_method', '?')}): import "
                          f"the unquantized model")
    if kind in ("llama", "qwen3") and hf.get("attention_bias"):
        raise ConfigError(f"{where} has attention_bias=true (a bias on q, k, v and o_proj): "
                          f"tpgpt's Llama has none, Qwen2's q/k/v biases only")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{where} has mlp_bias=true: tpgpt's Llama MLP has no biases")
    check_window, window = window, hf.get("sliding_window")
    sliding = window is not None and (
        kind == "mistral" or hf.get("use_sliding_window")
        or "sliding_attention" in (hf.get("layer_types") or ()))
    if check_window and sliding and window < block_size:
        raise ConfigError(f"{where} attends within a sliding window of {window} tokens, shorter "
                          f"than the context of {block_size} it would run: tpgpt attends to the "
                          f"whole context; import with --block-size {window} (or less)")


def llama_config_from_hf(hf: dict, where: str, block_size: int | None = None,
                         window: bool = True) -> GPTConfig:
    """A GPTConfig for a Llama, Mistral, Qwen2 or Qwen3 config.json, or a one-line refusal;
    `block_size` (default: max_position_embeddings) is the context it will run. `window=False`
    (shapes only, as `tpgpt plan` needs them) lets a sliding window shorter than that pass: it
    changes attention's compute, not the model's weights or its collectives."""
    kind = hf.get("model_type")
    arch = (hf.get("architectures") or [ARCHITECTURES.get(kind)])[0]
    if kind not in ARCHITECTURES or arch != ARCHITECTURES[kind]:
        raise ConfigError(f"{where} is a {arch or kind!r} model: tpgpt imports "
                          f"{', '.join(ARCHITECTURES.values())} and GPT2LMHeadModel")
    act = hf.get("hidden_act", "silu")
    if act not in FROM_HF_ACT:
        raise ConfigError(f"{where} uses hidden_act {act!r}: tpgpt's gated MLP computes "
                          f"{', '.join(FROM_HF_ACT)}")
    n_embd, n_head = _get(hf, "hidden_size", where), _get(hf, "num_attention_heads", where)
    block_size = block_size or _get(hf, "max_position_embeddings", where)
    _check_exact(hf, kind, where, block_size, window)
    kv = hf.get("num_key_value_heads") or n_head
    head_dim = hf.get("head_dim") or n_embd // n_head
    return GPTConfig(
        family="llama", block_size=block_size, vocab_size=_get(hf, "vocab_size", where),
        n_layer=_get(hf, "num_hidden_layers", where), n_head=n_head, n_embd=n_embd,
        n_kv_head=0 if kv == n_head else kv,
        head_dim=0 if head_dim * n_head == n_embd else head_dim,
        intermediate_size=_get(hf, "intermediate_size", where), dropout=0.0, bias=False,
        activation=FROM_HF_ACT[act], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3", **_rope(hf, where))
