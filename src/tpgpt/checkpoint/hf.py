"""Hugging Face GPT-2 interchange: `tpgpt export` and `tpgpt import-hf`.

HF's GPT2LMHeadModel keeps nanoGPT's parameter names (the `transformer.` prefix included) but
stores the four matmul weights as Conv1D, `[in, out]`, the transpose of nn.Linear's `[out, in]`.
It always has biases: a model trained with bias=False exports zero biases, which is the same
function. GELU: tpgpt uses the exact (erf) GELU, so the config says "gelu", not GPT-2's
"gelu_new" (tanh approximation). Only safetensors are read or written: nothing is unpickled.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

from .store import save_checkpoint
from ..errors import ConfigError
from ..model import GPT, GPTConfig
from .sharded_state import ShardedState

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(config: GPTConfig) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size,
            "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None, "activation_function": "gelu",
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


def export_hf(ckpt: str, out: str, force: bool = False, as_dense: bool = False) -> tuple[str, bool]:
    """Write a checkpoint as an HF GPT-2 directory; returns (the checkpoint directory read,
    whether the export computes another function than the trained one).

    An HF GPT-2 computes the dense GPT: a checkpoint trained under a plan that drops syncs (at
    tp > 1) is another function, and is refused unless `as_dense` asks for its weights as the
    dense GPT on purpose."""
    from ..comm.plan import SyncPlan
    from .load import load_dense, model_config, read_checkpoint, trained_plan

    state = read_checkpoint(ckpt)
    found = state["path"]
    tp, sync = trained_plan(state)
    n_layer = model_config(state).n_layer
    plan = SyncPlan.parse(sync, n_layer)
    if not plan.is_dense_at(tp) and not as_dense:
        raise ConfigError(f"{found} was trained at tp={tp} with sync={sync!r}, which drops "
                          f"{2 * n_layer - plan.num_syncs} of {2 * n_layer} syncs: a Hugging Face "
                          f"GPT-2 computes the dense GPT, another function; pass --as-dense to "
                          f"export its weights as the dense GPT anyway")
    if os.path.exists(os.path.join(out, "model.safetensors")) and not force:
        raise ConfigError(f"{out} already holds an exported model: pass --force to replace it")
    model, meta, _ = load_dense(found, state=state)
    config = hf_config(model.config)
    config["torch_dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    config.update(tpgpt_trained_tp=tp, tpgpt_trained_sync=sync)
    os.makedirs(out, exist_ok=True)
    # each file whole or not at all: written under a temporary name, then renamed
    tmp = os.path.join(out, ".model.safetensors.tmp")
    save_file(to_hf_state(model.state_dict(), model.config), tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    for name, obj in (("config.json", config), ("tpgpt_meta.json", meta)):
        with open(os.path.join(out, f".{name}.tmp"), "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(os.path.join(out, f".{name}.tmp"), os.path.join(out, name))
    return found, not plan.is_dense_at(tp)


def load_hf(path: str) -> tuple[GPT, dict]:
    """A GPT from an HF GPT-2 directory (config.json + model.safetensors) and its tokenizer."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}/config.json cannot be read: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise ConfigError(f"{path} is not a GPT-2 model (model_type {hf.get('model_type')!r})")
    file = os.path.join(path, "model.safetensors")
    if not os.path.exists(file):
        raise ConfigError(f"{file} is missing (only safetensors are read, never pickles)")
    if hf.get("activation_function", "gelu_new") != "gelu":
        raise ConfigError(f"{path} uses activation {hf.get('activation_function', 'gelu_new')!r};"
                          f" tpgpt's GPT uses the exact GELU ('gelu')")
    bias = hf.get("tpgpt_bias", True)
    config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                       n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                       dropout=0.0, bias=bias)
    model = GPT(config)
    sd = load_file(file)
    try:
        model.load_state_dict(from_hf_state(sd, bias))
    except RuntimeError as e:
        raise ConfigError(f"{file} does not match {path}/config.json: "
                          f"{str(e).splitlines()[1].strip()}") from None
    meta_file = os.path.join(path, "tpgpt_meta.json")
    if os.path.exists(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
    else:
        meta = {"tokenizer": "tiktoken:gpt2", "vocab_size": 50257}
    return model, meta


def import_hf(path: str, out: str) -> None:
    """Write an HF GPT-2 directory as a tpgpt checkpoint (sampling, fine-tuning at any tp)."""
    model, meta = load_hf(path)
    if os.path.exists(os.path.join(out, "state.json")):
        raise ConfigError(f"{out} already holds a checkpoint: choose another --out")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    c = model.config
    state = {"iter": 0, "best_val_loss": None, "train_loss": None, "val_loss": None,
             "config": {}, "layout": {"world": 1, "tp": 1, "tp_procs": 1, "dp": 1},
             "model": {k: getattr(c, k) for k in ("block_size", "vocab_size", "n_layer", "n_head",
                                                   "n_embd", "dropout", "bias")},
             "source": os.path.abspath(path)}
    save_checkpoint(out, rank=0, barrier=lambda: None, sharded=ShardedState(model),
                    state=state, meta=meta, rank_state=None)
