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

Compiled (`compile=True`, or a torch.compile mode such as "reduce-overhead" for CUDA graphs):
the decode step, one position per sequence, is one torch.compile graph (fullgraph, static
shapes) over a static cache (kv_cache.py), compiled once per model and batch and reused for
every position, window and call; the collectives of every plan and mode are in the graph
(comm/tp_comm.py). The prefill runs eagerly over the same cache: its length changes with every
prompt, and it is one pass of large matmuls, where a compiled graph saves little (a graph per
bucketed length, or a prompt padded to block_size, has not been measured against it). The
first decode step of a call runs eagerly too: it records the step's collectives, which every
compiled step sends unrecorded and adds to the counter. Greedy tokens are eager's.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError
from .gpt import sample_next

_COMPILED: dict = {}  # torch.compile mode -> the compiled decode step


def last_logits(model, idx: torch.Tensor, cache) -> torch.Tensor:
    """One forward pass over the cache: the last position's logits [B, V]."""
    return model(idx, cache=cache)[0][:, -1, :]


def compiled_step(mode: str | None):
    """The decode step compiled with torch.compile `mode` (None: the default), one graph."""
    if mode not in _COMPILED:
        import torch._dynamo.config as dynamo_config
        # one graph per model, batch size and grad mode: a process that decodes with several
        # models (a benchmark, a study) needs more than dynamo's default 8 of one function
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        _COMPILED[mode] = torch.compile(last_logits, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[mode]


def compile_mode(compile: bool | str, kv_cache: bool = True, name: str = "compile"
                 ) -> str | None:
    """`compile` (True, or a mode) as a torch.compile mode (True: the default, None), checked
    with the KV cache setting; `name`: what the message calls the option."""
    if not kv_cache:
        raise ConfigError(f"{name} needs the KV cache (the compiled step decodes over it): "
                          f"drop --no-kv-cache / kv_cache=False")
    if compile is True:
        return None
    if isinstance(compile, str) and compile in ("default", "reduce-overhead",
                                                "max-autotune", "max-autotune-no-cudagraphs"):
        return compile
    raise ConfigError(f"compile={compile!r} is invalid: true, false or a torch.compile mode "
                      f"(default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs)")


def window_start(length: int, start: int, block_size: int) -> int:
    """The first token the model sees when `length` tokens exist and the window began at
    `start`: unchanged while the window fits, else the latest block_size // 2 tokens."""
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


@torch.no_grad()
def decode(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None,
           kv_cache: bool = True, stop: tuple[int, ...] = (), compile: bool | str = False
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per new token, (the logits it was drawn from [B, V], the token [B, 1]), extending idx
    (B, T) (temperature 0: greedy). A prompt longer than block_size is cut to its latest
    block_size tokens. Decoding ends early once every row has drawn a token of `stop` (the
    tokenizer's end-of-sequence ids); a row that stopped first goes on drawing until then.
    `compile`: the decode step compiled (module doc)."""
    step = None if compile is False else compiled_step(compile_mode(compile, kv_cache))
    block = model.config.block_size
    start = max(0, idx.shape[1] - block)
    cache = model.new_kv_cache(idx.shape[0], static=step is not None) if kv_cache else None
    counter = getattr(getattr(model, "comm", None), "counter", None)
    events = counter.events if counter is not None else []  # (the dense GPT sends none)
    step_events = None  # a decode step's collectives, recorded by the first (eager) one
    stop_ids = torch.tensor(list(stop), dtype=torch.long, device=idx.device)
    stopped = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        new_start = window_start(idx.shape[1], start, block)
        if cache is not None and new_start != start:
            cache.reset()
        start = new_start
        if cache is None:
            logits = last_logits(model, idx[:, start:], None)
        elif step is None:  # eager: prefill of the window, then the one new token per step
            logits = last_logits(model, idx[:, start:] if cache.length == 0 else idx[:, -1:],
                                 cache)
        else:
            # a copy with fresh strides: a slice of the growing idx has a new stride at every
            # step, which a compiled graph would guard on (a recompile per position); at batch 1
            # .contiguous() keeps the slice's stride (a [1, 1] view counts as contiguous)
            new = idx[:, start:] if cache.length == 0 else idx[:, -1:]
            new = new.new_empty(new.shape).copy_(new)
            cache.stage(new.shape[1], new.shape[0])
            if new.shape[1] > 1:  # a prefill: eager
                logits = last_logits(model, new, cache)
            elif step_events is None:  # the first step: eager, recording what each one sends
                recorded = len(events)
                logits = last_logits(model, new, cache)
                step_events = events[recorded:]
            else:
                logits = step(model, new, cache).clone()  # the graph's buffer is reused
                events.extend(step_events)
            cache.commit(new.shape[1])
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
             kv_cache: bool = True, stop: tuple[int, ...] = (),
             compile: bool | str = False) -> torch.Tensor:
    """idx (B, T) extended by `max_new_tokens` tokens drawn from `model`, fewer when every row
    drew a `stop` token (see `decode`; `compile`: the decode step compiled)."""
    tokens = [t for _, t in decode(model, idx, max_new_tokens, temperature, top_k, generator,
                                   kv_cache, stop, compile)]
    return torch.cat([idx, *tokens], dim=1)
