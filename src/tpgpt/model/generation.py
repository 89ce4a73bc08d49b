"""Generation with a KV cache: a prefill of the context, then one position per decode step.

Works for the dense GPT and for ParallelGPT under any plan and mode (simulated, distributed,
hybrid): both models take a `cache` in forward (tpgpt.model.kv_cache) and compute logits for the
last position only. Distributed ranks draw the same tokens: their logits are equal after the
final sync, and every process seeds the same generator.

Past block_size. Positions are learned (wpe): a cached key belongs to its position, so the
window of context cannot slide one token at a time without recomputing every key. When the
window is full (block_size tokens), the model starts again on the latest block_size // 2 tokens
(one prefill into the emptied cache) and decodes on from there: the context is between half and
all of block_size, and the prefill is paid once per block_size // 2 new tokens. Without the
cache (kv_cache=False) every step recomputes the same window, so both give the same tokens.
A rotary model (the Llama family) restarts the same way, its positions counted from the
window's start: it never sees a position past the block_size it was trained on.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .gpt import sample_next


def window_start(length: int, start: int, block_size: int) -> int:
    """The first token the model sees when `length` tokens exist and the window began at
    `start`: unchanged while the window fits, else the latest block_size // 2 tokens."""
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


@torch.no_grad()
def decode(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None,
           kv_cache: bool = True, stop: tuple[int, ...] = ()
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per new token, (the logits it was drawn from [B, V], the token [B, 1]), extending idx
    (B, T) (temperature 0: greedy). A prompt longer than block_size is cut to its latest
    block_size tokens. Decoding ends early once every row has drawn a token of `stop` (the
    tokenizer's end-of-sequence ids); a row that stopped first goes on drawing until then."""
    block = model.config.block_size
    start = max(0, idx.shape[1] - block)
    cache = model.new_kv_cache(idx.shape[0]) if kv_cache else None
    stop_ids = torch.tensor(list(stop), dtype=torch.long, device=idx.device)
    stopped = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        new_start = window_start(idx.shape[1], start, block)
        if cache is not None and new_start != start:
            cache.reset()
        start = new_start
        if cache is None:
            logits, _ = model(idx[:, start:])
        elif cache.length == 0:  # prefill of the window
            logits, _ = model(idx[:, start:], cache=cache)
        else:  # decode: the one new token
            logits, _ = model(idx[:, -1:], cache=cache)
        logits = logits[:, -1, :]
        token = sample_next(logits, temperature, top_k, generator)
        idx = torch.cat((idx, token), dim=1)
        yield logits, token
        if len(stop):  # every rank drew the same tokens, so every rank stops here
            stopped |= torch.isin(token[:, 0], stop_ids)
            if bool(stopped.all()):
                return


def until_stop(row: list[int], start: int, stop: tuple[int, ...]) -> list[int]:
    """A generated row up to (not including) its first `stop` token at or after `start` (the
    prompt's length); the whole row when it drew none."""
    return row[:next((i for i in range(start, len(row)) if row[i] in stop), len(row))]


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             kv_cache: bool = True, stop: tuple[int, ...] = ()) -> torch.Tensor:
    """idx (B, T) extended by `max_new_tokens` tokens drawn from `model`, fewer when every row
    drew a `stop` token (see `decode`)."""
    tokens = [t for _, t in decode(model, idx, max_new_tokens, temperature, top_k, generator,
                                   kv_cache, stop)]
    return torch.cat([idx, *tokens], dim=1)
