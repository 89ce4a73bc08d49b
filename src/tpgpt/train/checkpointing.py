"""Saving a training run and resuming it: what a checkpoint of a run holds besides the weights
(the iteration, losses, config, layout, the batch generator, every process's RNG), and the
rules for continuing it, at the same layout or another.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field, fields

import torch

from ..checkpoint.sharded_state import ShardedState
from ..checkpoint.store import (find_checkpoint, load_rank_state, load_sharded, load_state,
                                save_checkpoint)
from ..comm.layout import barrier_fn
from ..comm.wire import DEFAULT_BLOCK
from ..errors import ConfigError
from ..model import GPTConfig
from ..model.config import LLAMA_FIELDS
from ..model.parallel_gpt import ParallelGPT
from .setup import Setup

# keys that must match the checkpoint for --resume to continue the same run; the layout (tp,
# tp_procs, processes, vocab_parallel) may change where the model stays the same function
# (a checkpoint written before the family field lacks the Llama keys: it is GPT-2's)
MODEL_KEYS = tuple(f.name for f in fields(GPTConfig))
RESUME_KEYS = MODEL_KEYS + ("sync", "sync_dtype", "sync_block", "ladder", "batch_size",
                            "gradient_accumulation_steps", "seed", "data_dir", "dtype")


@dataclass
class Progress:
    """Where a run stands; saved with every checkpoint."""

    batch_gen: torch.Generator  # draws every step's global batch
    iter: int = 0
    best_val: float = float("inf")
    last_eval: dict = field(default_factory=dict)  # {"train": loss, "val": loss}
    resumed_at: int | None = None
    # seconds spent in training steps from iteration 0 to `iter`, over every segment of a
    # resumed run (steps redone after a kill count once); None when resumed from a checkpoint
    # written before tpgpt kept this figure
    train_s: float | None = 0.0


def save(s: Setup, p: Progress, name: str, with_optimizer: bool) -> None:
    """Write out_dir/name (collective when distributed); `with_optimizer` for `last`."""
    cfg, layout = s.cfg, s.layout
    state = {"iter": p.iter, "best_val_loss": p.best_val,
             "train_loss": p.last_eval["train"], "val_loss": p.last_eval["val"],
             "config": cfg.to_dict(),
             "layout": {"world": layout.world, "tp": cfg.tp, "tp_procs": layout.tp_procs,
                        "dp": layout.dp, "pp": layout.pp},
             "model": {k: getattr(s.model_config, k) for k in MODEL_KEYS},
             "batch_rng": encode_generator(p.batch_gen), "train_s": p.train_s}
    sharded = ShardedState(s.inner, s.optimizer if with_optimizer else None, s.tp_mesh)
    save_checkpoint(os.path.join(cfg.out_dir, name), rank=layout.rank,
                    barrier=barrier_fn(layout), sharded=sharded, state=state, meta=s.meta,
                    distributed=layout.distributed,
                    rank_state={"torch_rng": torch.get_rng_state()} if with_optimizer else None)


def resume(s: Setup, p: Progress) -> None:
    """Load out_dir/last into the model, optimizer and `p`, checking it is the same run."""
    cfg = s.cfg
    ckpt = os.path.join(cfg.out_dir, "last")
    if find_checkpoint(ckpt) is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt}")
    state = load_state(ckpt)
    # keys that older checkpoints lack had their defaults then
    saved = {"sync_dtype": "float32", "sync_block": DEFAULT_BLOCK, "ladder": False,
             **{f.name: f.default for f in fields(GPTConfig) if f.name in LLAMA_FIELDS},
             **state.get("config", {})}
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if diff:
        raise ConfigError("--resume: the config differs from the checkpoint's in "
                          + ", ".join(f"{k} ({saved[k]!r} -> {getattr(cfg, k)!r})"
                                      for k in diff))
    all_sync = s.inner.is_dense if isinstance(s.inner, ParallelGPT) else True
    if saved.get("tp", cfg.tp) != cfg.tp and not all_sync:
        raise ConfigError(f"--resume: tp {saved['tp']} -> {cfg.tp} with sync={cfg.sync!r}, "
                          f"sync_dtype={cfg.sync_dtype}, ladder={cfg.ladder}: a plan that drops, "
                          f"compresses or ladders syncs is another model at another tp (only "
                          f"the dense GPT, plan 'tp' in float32, can change tp)")
    load_sharded(state["path"], ShardedState(s.inner, s.optimizer, s.tp_mesh),
                 distributed=s.layout.distributed)
    decode_generator(p.batch_gen, state["batch_rng"])
    same_layout = state.get("layout", {}).get("world") == s.layout.world
    rs = load_rank_state(state["path"], s.layout.rank) if same_layout else {}
    if "torch_rng" in rs:
        torch.set_rng_state(rs["torch_rng"])
    else:  # another layout: dropout masks are drawn afresh (they differ per layout anyway)
        torch.manual_seed(cfg.seed + 1 + s.layout.dp_rank + 7 * state["iter"])
    p.iter = state["iter"]
    p.best_val = state["best_val_loss"]
    p.last_eval = {"train": state["train_loss"], "val": state["val_loss"]}
    p.resumed_at = p.iter
    p.train_s = state.get("train_s")


def encode_generator(gen: torch.Generator) -> str:
    """A generator's state as text for state.json (base64 of its bytes)."""
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def decode_generator(gen: torch.Generator, text: str) -> None:
    """Set `gen` to a state `encode_generator` wrote."""
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8))


def last_good_iteration(out_dir: str) -> int | None:
    """The iteration of out_dir/last, or None if there is no checkpoint."""
    last = os.path.join(out_dir, "last")
    return load_state(last)["iter"] if find_checkpoint(last) else None
