"""Hugging Face GPT-2 interchange: `tpgpt export` and `tpgpt import-hf`.

HF's GPT2LMHeadModel keeps nanoGPT's parameter names (the `transformer.` prefix included) but
stores the four matmul weights as Conv1D, `[in, out]`, the transpose of nn.Linear's `[out, in]`.
It always has biases: a model trained with bias=False exports zero biases, which is the same
function. GELU: tpgpt trains with the exact (erf) GELU ("gelu" in HF's config); OpenAI's GPT-2
uses the tanh approximation (HF's "gelu_new"), which tpgpt's GPT computes as
activation="gelu_tanh". Only safetensors are read or written: nothing is unpickled.

A local directory is read directly (config.json + model.safetensors, no transformers needed); a
Hugging Face Hub id (`gpt2`, `openai-community/gpt2`) is loaded through transformers, which
downloads it when it can and otherwise fails in one line asking for a local directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket

import torch
from safetensors.torch import load_file, save_file

from .store import save_checkpoint
from ..errors import ConfigError
from ..model import GPT, GPTConfig
from .sharded_state import ShardedState

HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
# HF's names for the two GELUs tpgpt computes ("gelu_pytorch_tanh" is the same tanh formula)
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(config: GPTConfig) -> dict:
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


def export_hf(ckpt: str, out: str, force: bool = False, as_dense: bool = False) -> tuple[str, bool]:
    """Write a checkpoint as an HF GPT-2 directory; returns (the checkpoint directory read,
    whether the export computes another function than the trained one).

    An HF GPT-2 computes the dense GPT: a checkpoint trained under a plan that drops syncs (at
    tp > 1) is another function, and is refused unless `as_dense` asks for its weights as the
    dense GPT on purpose."""
    from ..comm.plan import SyncPlan
    from .load import (is_dense_function, load_dense, model_config, read_checkpoint,
                       trained_ladder, trained_plan, trained_wire)

    state = read_checkpoint(ckpt)
    found = state["path"]
    tp, sync = trained_plan(state)
    n_layer = model_config(state).n_layer
    plan = SyncPlan.parse(sync, n_layer)
    dense = is_dense_function(state)
    if not dense and not as_dense:
        wire, ladder = trained_wire(state), trained_ladder(state)
        what = ([f"drops {2 * n_layer - plan.num_syncs} of its {2 * n_layer} syncs"]
                if plan.num_syncs < 2 * n_layer else []) + \
            ([f"sends its syncs in {wire.describe()}"] if wire.compressed else []) + \
            (["ladders its syncs"] if ladder else [])
        raise ConfigError(f"{found} was trained at tp={tp} with sync={sync!r}, which "
                          f"{' and '.join(what)}: a Hugging Face GPT-2 computes the dense GPT, "
                          f"another function; pass --as-dense to export its weights as the "
                          f"dense GPT anyway")
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
    umask = os.umask(0)  # safetensors creates its file 0600: give it a file's usual mode
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    for name, obj in (("config.json", config), ("tpgpt_meta.json", meta)):
        with open(os.path.join(out, f".{name}.tmp"), "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(os.path.join(out, f".{name}.tmp"), os.path.join(out, name))
    return found, not dense


def load_hf(path: str) -> tuple[GPT, dict]:
    """A GPT from an HF GPT-2 directory (config.json + model.safetensors) or Hub id, and its
    tokenizer."""
    if not os.path.isdir(path):
        if not HUB_ID.match(path):
            raise ConfigError(f"{path} is neither a directory nor a Hugging Face Hub model id")
        return _from_hub(path)
    try:
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}/config.json cannot be read: {e}") from None
    file = os.path.join(path, "model.safetensors")
    if hf.get("model_type") == "gpt2" and not os.path.exists(file):
        raise ConfigError(f"{file} is missing (only safetensors are read, never pickles)")
    config = _gpt_config(hf, path)
    model = _load_weights(config, load_file(file), f"{file} does not match {path}/config.json")
    meta_file = os.path.join(path, "tpgpt_meta.json")
    if os.path.exists(meta_file):
        with open(meta_file) as f:
            return model, json.load(f)
    return model, dict(GPT2_META)


GPT2_META = {"tokenizer": "tiktoken:gpt2", "vocab_size": 50257}


def _gpt_config(hf: dict, where: str) -> GPTConfig:
    if hf.get("model_type") != "gpt2":
        raise ConfigError(f"{where} is not a GPT-2 model (model_type {hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in FROM_HF_ACTIVATION:
        raise ConfigError(f"{where} uses activation {act!r}; tpgpt's GPT computes "
                          f"{', '.join(FROM_HF_ACTIVATION)}")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 0)):
        raise ConfigError(f"{where} has n_inner={hf['n_inner']}: tpgpt's MLP is 4 x n_embd")
    try:
        return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         dropout=0.0, bias=hf.get("tpgpt_bias", True),
                         activation=FROM_HF_ACTIVATION[act])
    except KeyError as e:
        raise ConfigError(f"{where}: the config has no {e.args[0]}") from None


def _load_weights(config: GPTConfig, sd: dict, what: str) -> GPT:
    model = GPT(config)
    try:
        model.load_state_dict(from_hf_state(sd, config.bias))
    except RuntimeError as e:
        raise ConfigError(f"{what}: {str(e).splitlines()[1].strip()}") from None
    return model


def _hub_reachable() -> bool:
    """Whether the Hub's endpoint resolves (else only transformers' cache is tried, at once,
    instead of retrying a network that is not there)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1", "true", "yes", "on"):  # the constant is read once, when the hub is imported
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def _from_hub(name: str) -> tuple[GPT, dict]:
    """A Hub id through transformers (its download and cache; safetensors only)."""
    try:
        from transformers import GPT2LMHeadModel, PretrainedConfig
    except ImportError:
        raise ConfigError(f"{name!r} is not a directory, and loading a Hub id needs "
                          f"transformers (pip install transformers): pass a local directory"
                          ) from None
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break the one-line rule
    local = not _hub_reachable()
    try:
        # the repository's own config first: GPT2LMHeadModel would load any model_type (with a
        # warning) and initialise what does not match at random
        raw, _ = PretrainedConfig.get_config_dict(name, local_files_only=local)
        config = _gpt_config(raw, name)
        hf, info = GPT2LMHeadModel.from_pretrained(name, use_safetensors=True,
                                                   local_files_only=local,
                                                   output_loading_info=True)
    except (OSError, ValueError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(f"cannot load {name!r} from the Hugging Face Hub through transformers "
                          f"(offline, or not a GPT-2 with safetensors there: {first[:160]}): "
                          f"pass a local directory with config.json and model.safetensors"
                          ) from None
    finally:
        hub_logger.setLevel(level)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(".attn.bias")
               and k != "lm_head.weight"]
    if missing:
        raise ConfigError(f"{name}'s weights lack {len(missing)} tensors of a GPT-2 "
                          f"({missing[0]}, ...): not imported")
    sd = {k: v.detach().float() for k, v in hf.state_dict().items()}
    return _load_weights(config, sd, f"{name}'s weights do not match its config"), dict(GPT2_META)


def import_hf(path: str, out: str, data_dir: str | None = None) -> None:
    """Write an HF GPT-2 directory as a tpgpt checkpoint (sampling, fine-tuning at any tp).
    `data_dir`, a prepared dataset with the model's tokenizer, is recorded as its data (what
    eval, sensitivity, convert and distill read unless told otherwise)."""
    from ..data.tokens import check_same_tokenizer, load_meta
    model, meta = load_hf(path)
    if os.path.exists(os.path.join(out, "state.json")):
        raise ConfigError(f"{out} already holds a checkpoint: choose another --out")
    if data_dir is not None:
        check_same_tokenizer(data_dir, load_meta(data_dir), meta, f"the model {path}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    c = model.config
    state = {"iter": 0, "best_val_loss": None, "train_loss": None, "val_loss": None,
             "config": {"data_dir": os.path.abspath(data_dir)} if data_dir else {},
             "layout": {"world": 1, "tp": 1, "tp_procs": 1, "dp": 1},
             "model": {k: getattr(c, k) for k in ("block_size", "vocab_size", "n_layer", "n_head",
                                                   "n_embd", "dropout", "bias", "activation")},
             "source": os.path.abspath(path) if os.path.isdir(path) else path}
    save_checkpoint(out, rank=0, barrier=lambda: None, sharded=ShardedState(model),
                    state=state, meta=meta, rank_state=None)
