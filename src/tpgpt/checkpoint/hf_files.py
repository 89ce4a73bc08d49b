"""Reading and writing a Hugging Face model directory's files: config.json, the weights as one
model.safetensors or as shards named by model.safetensors.index.json (what transformers'
save_pretrained writes past its shard size), and the tokenizer saved beside them. Only
safetensors are read: nothing is unpickled, so a directory holding only pytorch_model.bin is
refused. Every file is written under a temporary name and renamed, so a file is whole or absent.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ConfigError

INDEX = "model.safetensors.index.json"


def read_json(file: str) -> dict:
    """A JSON object from `file`, or a one-line error naming it."""
    try:
        with open(file) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file} cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{file} is not a JSON object")
    return obj


def read_config(path: str) -> dict:
    return read_json(os.path.join(path, "config.json"))


def _load(file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{file} cannot be read as safetensors: {e}") from None


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's model.safetensors, or of the shards its index names (each
    shard checked to hold what the index says)."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, INDEX)
    if os.path.exists(single):
        return _load(single)
    if not os.path.exists(index):
        pickles = [f for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                   if os.path.exists(os.path.join(path, f))]
        raise ConfigError(f"{path} holds no model.safetensors nor {INDEX}"
                          + (f" (only {pickles[0]}: tpgpt reads safetensors, never pickles; "
                             f"re-save with safe_serialization)" if pickles else ""))
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{index} cannot be read as a weight map: {e}") from None
    out = {}
    for shard in sorted(set(weight_map.values())):
        file = os.path.join(path, shard)
        if not os.path.exists(file):
            raise ConfigError(f"{file}, a shard {INDEX} names, is missing")
        tensors = _load(file)
        listed = {k for k, v in weight_map.items() if v == shard}
        if listed - tensors.keys():
            raise ConfigError(f"{file} lacks {sorted(listed - tensors.keys())[0]}, which "
                              f"{INDEX} places there")
        out.update(tensors)
    return out


def weights_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype that holds most of the weights."""
    count: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            count[v.dtype] = count.get(v.dtype, 0) + v.numel()
    return max(count, key=count.get) if count else torch.float32


def write_file(path: str, name: str, write) -> None:
    """`write(tmp)` makes the file under a temporary name; then it takes its name, with a
    file's usual mode (safetensors creates its files 0600)."""
    tmp = os.path.join(path, f".{name}.tmp")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, os.path.join(path, name))


def write_json(path: str, name: str, obj) -> None:
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    write_file(path, name, dump)


def write_weights(path: str, sd: dict[str, torch.Tensor]) -> None:
    write_file(path, "model.safetensors",
               lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))


def write_tokenizer(path: str, meta: dict) -> bool:
    """tokenizer.json and tokenizer_config.json of an HF tokenizer's meta (False: the model's
    tokenizer is not one: characters, bytes or tiktoken, kept in tpgpt_meta.json only)."""
    if meta.get("tokenizer") != "hf":
        return False

    def text(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(meta["hf_tokenizer_json"])
    write_file(path, "tokenizer.json", text)
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              **(meta.get("hf_tokenizer_config") or {})}
    write_json(path, "tokenizer_config.json", config)
    return True
