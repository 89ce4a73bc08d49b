"""`tpgpt sample`: text from any checkpoint, whatever tp and mode trained it (weights are stored
dense), reproducible from a seed."""
from __future__ import annotations

import os

import torch

from ..checkpoint.store import find_checkpoint, load_meta, load_sharded, load_state
from ..data import tokenizer_from_meta
from ..errors import ConfigError
from ..model import GPT, GPTConfig
from ..checkpoint.sharded_state import ShardedState


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a run's out_dir (its best, else its last checkpoint)."""
    if not os.path.isdir(path) and find_checkpoint(path) is None:
        raise ConfigError(f"checkpoint directory {path} does not exist")
    for candidate in (path, os.path.join(path, "best"), os.path.join(path, "last")):
        found = find_checkpoint(candidate)
        if found:
            return found
    raise ConfigError(f"no checkpoint in {path}: expected state.json there or in best/ or last/")


def load_model(path: str) -> tuple[GPT, dict, str]:
    """(dense GPT, tokenizer meta, checkpoint dir) from a checkpoint or out_dir."""
    ckpt = resolve_checkpoint(path)
    state = load_state(ckpt)
    try:
        config = GPTConfig(**{**state["model"], "dropout": 0.0})
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{ckpt}/state.json has no valid model config: {e}") from None
    model = GPT(config)
    if state.get("config", {}).get("dtype") == "float64":
        model.double()
    load_sharded(ckpt, ShardedState(model))
    return model.eval(), load_meta(ckpt), ckpt


def sample(path: str, prompt: str = "\n", num_samples: int = 3, max_new_tokens: int = 500,
           temperature: float = 0.8, top_k: int | None = 200, seed: int = 1337,
           device: str = "cpu") -> list[str]:
    if num_samples < 1 or max_new_tokens < 0:
        raise ConfigError(f"num_samples={num_samples} must be >= 1 and max_new_tokens="
                          f"{max_new_tokens} >= 0")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ConfigError(f"temperature={temperature} must be >= 0 and top_k={top_k} >= 1")
    model, meta, _ = load_model(path)
    tok = tokenizer_from_meta(meta)
    ids = tok.encode(prompt)
    if not ids:
        raise ConfigError("the prompt is empty: give at least one character")
    model.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = []
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
        out.append(tok.decode(y[0].tolist()))
    return out
