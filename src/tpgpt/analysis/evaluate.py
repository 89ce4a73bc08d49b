"""Exact evaluation: the mean loss over a whole split (every full window), no sampling noise;
`tpgpt eval` runs it on a checkpoint as the function it was trained to be, or under another plan."""
from __future__ import annotations

import os

import torch

from ..checkpoint.load import load_trained, model_config, read_checkpoint
from ..checkpoint.store import load_meta as checkpoint_meta
from ..data import TokenFile, check_tokens_in_vocab, load_meta, token_dtype
from ..data.tokens import check_same_tokenizer
from ..errors import ConfigError
from ..model.parallel_gpt import ParallelGPT


@torch.no_grad()
def full_split_loss(model, file: TokenFile, batch_size: int = 64) -> float:
    """Mean cross-entropy over the split cut into consecutive, non-overlapping windows of
    block_size tokens (each predicting the next token); the tail shorter than a window is left
    out. Deterministic, so plans can be compared at differences far below the sampled
    estimate's noise."""
    was_training = model.training
    model.eval()
    T = file.block_size
    starts = torch.arange(0, file.n - T - 1 + 1, T)
    device = next(model.parameters()).device
    loss = mean_loss(model, (tuple(t.to(device) for t in file.batch(chunk))
                             for chunk in starts.split(batch_size)))
    model.train(was_training)
    return loss


@torch.no_grad()
def mean_loss(model, batches) -> float:
    """Mean cross-entropy per predicted token over (x, y) batches, for a dense or parallel GPT
    (whose vocab-parallel logits are never gathered for a loss)."""
    total, count = 0.0, 0
    for x, y in batches:
        if isinstance(model, ParallelGPT):
            _, loss = model(x, y, return_logits=False)
        else:
            _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count


def split_tokens(file: TokenFile) -> int:
    """Tokens `full_split_loss` predicts: every window of block_size that fits."""
    return (file.n - 1) // file.block_size * file.block_size


def auto_batch_size(block_size: int, vocab_size: int, element_size: int,
                    budget_bytes: int = 2 ** 28) -> int:
    """Windows per forward pass whose logits (and the loss's temporaries of their size, about
    three such tensors) fit `budget_bytes`: 64 for the Shakespeare presets, 1 for GPT-2."""
    per_window = 3 * block_size * vocab_size * element_size
    return max(1, min(64, budget_bytes // per_window))


def evaluate_checkpoint(path: str, tp: int | None = None, sync: str | None = None,
                        split: str = "val", data_dir: str | None = None,
                        batch_size: int | None = None, device: str = "cpu",
                        distributed: bool | None = None, sync_dtype: str | None = None,
                        sync_block: int | None = None) -> dict:
    """The full-split loss of a checkpoint under its trained tp and plan (or the ones given:
    a zero-shot conversion), on the data it was trained on (or `data_dir`). The data is checked
    before the model is loaded; `batch_size` defaults to what `auto_batch_size` allows."""
    if split not in ("train", "val"):
        raise ConfigError(f"split={split!r} is invalid: choose train or val")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid: it must be >= 1")
    state = read_checkpoint(path)
    config = model_config(state)
    file = checkpoint_split(state, split, data_dir)
    loaded = load_trained(path, tp=tp, sync=sync, device=device, distributed=distributed,
                          sync_dtype=sync_dtype, sync_block=sync_block, state=state)
    element = next(loaded.model.parameters()).element_size()
    batch_size = batch_size or auto_batch_size(config.block_size, config.vocab_size, element)
    loss = full_split_loss(loaded.model, file, batch_size)
    return {"checkpoint": loaded.path, "iteration": loaded.iteration,
            "history": loaded.history, "tp": loaded.tp,
            "sync": loaded.sync, "bits": loaded.plan.bitstring, "sync_dtype": loaded.wire.dtype,
            "forward_syncs": loaded.forward_syncs, "forward_syncs_all_on": 2 * config.n_layer,
            "trained_tp": loaded.trained_tp, "trained_sync": loaded.trained_sync,
            "converted": loaded.converted, "mode": loaded.mode, "description": loaded.describe(),
            "split": split, "data": file.path, "tokens": split_tokens(file),
            "targets_left_out": file.n - 1 - split_tokens(file),
            "block_size": config.block_size, "batch_size": batch_size, "loss": loss}


def checkpoint_split(state: dict, split: str, data_dir: str | None = None) -> TokenFile:
    """A split of the data the checkpoint was trained on (or of `data_dir`, which must be
    tokenized as the checkpoint is), checked against its vocabulary."""
    config = model_config(state)
    data_dir = data_dir or _trained_data_dir(state)
    meta = load_meta(data_dir)
    check_same_tokenizer(data_dir, meta, checkpoint_meta(state["path"]),
                         f"the checkpoint {state['path']}")
    file = TokenFile(os.path.join(data_dir, f"{split}.bin"), config.block_size,
                     config.vocab_size, token_dtype(meta))
    check_tokens_in_vocab(file.path, meta["vocab_size"], dtype=file.dtype)
    return file


def _trained_data_dir(state: dict) -> str:
    data_dir = (state.get("config") or {}).get("data_dir")
    if not data_dir:
        raise ConfigError(f"{state['path']} does not name the data it was trained on (an "
                          f"imported model without --data-dir?): pass --data-dir")
    if not os.path.isdir(data_dir):
        raise ConfigError(f"{state['path']} was trained on {data_dir}, which is not there (a "
                          f"path relative to where training ran?): pass --data-dir")
    return data_dir
