"""Checkpoints: a directory per checkpoint, written under a temporary name and swapped in.

    model/              model (and optimizer) state written by torch.distributed.checkpoint in
                        layout-independent coordinates (sharded_state.py) as safetensors shards:
                        loads at any tp, process count and dp, or into the dense GPT
    state.json          iteration, losses, the training config, the layout, the batch RNG
    meta.json           the tokenizer (a copy of the dataset's), so sampling needs no data
    rank{k}.pt          process k's torch RNG state (loaded with weights_only=True), so a resume
                        at the same layout continues bit for bit, dropout included
    manifest.json       size and sha256 of every other file, written last and checked on every
                        load: a corrupt or tampered checkpoint is refused, not half-read

A crash while saving leaves the previous checkpoint in place: files go to `NAME.tmp/`, then
`NAME/` is renamed to `NAME.old/`, `NAME.tmp/` to `NAME/`, and `NAME.old/` becomes `NAME.prev/`
(the checkpoint before, kept as a fallback); a reader that finds only `NAME.old/` (a crash
between the two renames) uses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from typing import Callable

import torch

from ..errors import ConfigError

FORMAT = 3


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


def save_checkpoint(path: str, *, rank: int, barrier: Callable[[], None], sharded,
                    state: dict, meta: dict, rank_state: dict | None,
                    distributed: bool = False) -> None:
    """Collective when distributed: every process calls it. `sharded` is a ShardedState (the
    model, with or without its optimizer); rank 0 writes the JSON files and does the swap."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tmp, old = path + ".tmp", path + ".old"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    with warnings.catch_warnings():  # DCP warns that a single process is single
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(sharded.state_dict(), no_dist=not distributed,
                 storage_writer=HuggingFaceStorageWriter(os.path.join(tmp, "model"),
                                                         save_distributed=distributed))
    if rank_state is not None:
        torch.save(rank_state, os.path.join(tmp, f"rank{rank}.pt"))
    barrier()
    if rank == 0:
        write_json(os.path.join(tmp, "meta.json"), meta)
        write_json(os.path.join(tmp, "state.json"), {"format": FORMAT, **state})
        write_json(os.path.join(tmp, "manifest.json"), {"files": _file_digests(tmp)})
        _fsync_dir(tmp)
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if os.path.exists(old):
            shutil.rmtree(path + ".prev", ignore_errors=True)
            os.replace(old, path + ".prev")
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    barrier()


def load_sharded(path: str, sharded, distributed: bool = False) -> None:
    """Fill `sharded` (a ShardedState of this layout) from checkpoint `path`, resharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException

    model_dir = os.path.join(path, "model")
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{model_dir} is missing: the checkpoint is incomplete")
    state = sharded.empty_state_dict()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=HuggingFaceStorageReader(model_dir),
                     no_dist=not distributed)
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise ConfigError(f"{model_dir} does not fit this model: "
                          f"{lines[-1] if lines else type(e).__name__}") from None
    sharded.load_state_dict(state)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_digests(root: str) -> dict[str, dict]:
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, root)
            if rel != "manifest.json":
                out[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
    return out


def verify_checkpoint(path: str, hint: bool = True) -> None:
    """Every file of the manifest is there, inside `path`, with its size and sha256 (`hint`:
    name the run's other checkpoint in the error when that one is intact)."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        raise ConfigError(f"{path} has no manifest.json: the checkpoint is incomplete") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise ConfigError(f"{path}/manifest.json is not a valid manifest") from None
    root = os.path.realpath(path)
    for rel, want in files.items():
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.isabs(rel) or os.path.commonpath([root, full]) != root:
            raise ConfigError(f"{path}/manifest.json names {rel!r}, outside the checkpoint")
        if not os.path.isfile(full):
            raise ConfigError(f"{path}/{rel} is missing: the checkpoint is incomplete"
                              + (_other_hint(path) if hint else ""))
        if os.path.getsize(full) != want.get("bytes") or _sha256(full) != want.get("sha256"):
            raise ConfigError(f"{path}/{rel} fails its checksum: the checkpoint is corrupt"
                              + (_other_hint(path) if hint else ""))


def _other_hint(path: str) -> str:
    """Name the intact alternatives: the checkpoint before this one, and best <-> last."""
    parent, name = os.path.split(os.path.normpath(path))
    base = name.split(".")[0]
    candidates = [os.path.join(parent, base + ".prev")] if not name.endswith(".prev") else []
    candidates += [os.path.join(parent, {"last": "best", "best": "last"}.get(base, base))]
    intact = []
    for c in candidates:
        if c != os.path.normpath(path) and os.path.isfile(os.path.join(c, "manifest.json")):
            try:
                verify_checkpoint(c, hint=False)
                intact.append(c)
            except ConfigError:
                pass
    return f"; intact: {', '.join(intact)} (move one to {path} to use it)" if intact else ""


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
    verify_checkpoint(found)
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


def load_rank_state(path: str, rank: int) -> dict:
    """Process `rank`'s RNG state, or {} when that process did not save one (another layout)."""
    file = os.path.join(path, f"rank{rank}.pt")
    if not os.path.exists(file):
        return {}
    return torch.load(file, map_location="cpu", weights_only=True)
