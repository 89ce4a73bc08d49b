"""Checkpoints: a directory per checkpoint, written under a temporary name and swapped in.

    model.safetensors   the dense GPT's weights (nanoGPT names), whatever layout trained it
    state.json          iteration, losses, the training config and the parallel layout
    meta.json           the tokenizer (a copy of the dataset's), so sampling needs no data
    rank{k}.pt          process k's optimizer state and RNG states (tensors only, loaded with
                        weights_only=True), used to resume at the same layout

A crash while saving leaves the previous checkpoint in place: files go to `NAME.tmp/`, then
`NAME/` is renamed to `NAME.old/`, `NAME.tmp/` to `NAME/`, and `NAME.old/` is removed; a reader
that finds only `NAME.old/` (a crash between the two renames) uses it.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError

FORMAT = 1


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str, *, rank: int, barrier: Callable[[], None],
                    dense_state: dict[str, torch.Tensor] | None, state: dict, meta: dict,
                    rank_state: dict | None) -> None:
    """Collective when distributed: every process calls it; rank 0 writes the shared files.

    `dense_state` is needed on rank 0 only; `rank_state` (optimizer, RNG) is written by every
    process that passes one.
    """
    tmp, old = path + ".tmp", path + ".old"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    if rank_state is not None:
        torch.save(rank_state, os.path.join(tmp, f"rank{rank}.pt"))
    barrier()
    if rank == 0:
        weights = {k: v.detach().contiguous().cpu() for k, v in dense_state.items()
                   if k != "lm_head.weight"}  # tied to transformer.wte.weight
        save_file(weights, os.path.join(tmp, "model.safetensors"))
        write_json(os.path.join(tmp, "meta.json"), meta)
        write_json(os.path.join(tmp, "state.json"), {"format": FORMAT, **state})
        _fsync_dir(tmp)
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    barrier()


def find_checkpoint(path: str) -> str | None:
    """The directory to read for checkpoint `path`, or None if there is none."""
    for candidate in (path, path + ".old"):
        if os.path.isfile(os.path.join(candidate, "state.json")):
            return candidate
    return None


def load_state(path: str) -> dict:
    found = find_checkpoint(path)
    if found is None:
        raise ConfigError(f"no checkpoint in {path}: state.json is missing")
    try:
        with open(os.path.join(found, "state.json")) as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{found}/state.json is not valid JSON: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{found}/state.json is not a tpgpt checkpoint (format "
                          f"{state.get('format') if isinstance(state, dict) else '?'})")
    state["path"] = found
    return state


def load_meta(path: str) -> dict:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}/meta.json cannot be read: {e}") from None


def load_dense_weights(path: str) -> dict[str, torch.Tensor]:
    """The dense state dict (lm_head.weight re-tied to the embedding)."""
    file = os.path.join(path, "model.safetensors")
    try:
        sd = load_file(file)
    except FileNotFoundError:
        raise ConfigError(f"{file} is missing: the checkpoint is incomplete") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ConfigError(f"{file} is not a valid safetensors file: {e}") from None
    if "transformer.wte.weight" in sd:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def load_rank_state(path: str, rank: int) -> dict:
    file = os.path.join(path, f"rank{rank}.pt")
    if not os.path.exists(file):
        raise ConfigError(f"{file} is missing: resume needs the layout that saved the checkpoint")
    return torch.load(file, map_location="cpu", weights_only=True)
