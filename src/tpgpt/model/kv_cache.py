"""The key/value cache of generation, shared by the dense GPT and ParallelGPT.

Each layer's attention keeps the keys and values of the positions it has seen, so a decode step
runs the model on the one new position: its query attends over the cached keys. Under tensor
parallelism each rank caches its own heads: the buffers are [R, B, heads/tp, max_len, head_size]
(R = the ranks this process holds: all tp when simulated, 1 per process when distributed, a few
in the hybrid case), viewed as [R*B, ...] because the attention runs the ranks as a batch.
The dense GPT's cache is the same with R = 1 and every KV head.

`length` positions are filled; a forward pass on T new tokens writes positions
[length, length + T) of every layer and then advances `length` (`GPT.forward` and
`ParallelGPT.forward` do both when given a cache). A cached key is fixed to its position
(learned positions add wpe to it, rotary ones rotate it by its angle), so a cache cannot
slide: going past `max_len` (the block size) is an error
here, and generation (tpgpt.model.generation) starts a new cache on the latest tokens instead.

A *static* cache (`static=True`) is the one a compiled decode step runs over: nothing in the
forward pass reads the Python int `length` (a compiled graph would guard on it and recompile at
every position). The caller stages each pass outside the graph (`stage`: the room check and the
new positions as a tensor, `input_pos`), the pass writes its keys at those positions
(`index_copy_`) and attends over all `max_len` cached positions under a mask of the visible
ones, and the caller commits the positions after it (`commit`). Positions past the filled ones
hold zeros or stale keys of an earlier window, always masked out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class KVCache:
    """Keys and values of `n_layer` layers for up to `max_len` positions."""

    def __init__(self, n_layer: int, ranks: int, batch: int, heads: int, max_len: int,
                 head_size: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                 static: bool = False):
        shape = (n_layer, ranks * batch, heads, max_len, head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ranks, self.batch, self.max_len = ranks, batch, max_len
        self.length = 0
        self.static = static
        self.input_pos: torch.Tensor | None = None  # static: the staged pass's positions

    @property
    def shape(self) -> tuple[int, ...]:
        """One layer's keys as [R, B, heads, max_len, head_size]."""
        _, _, h, t, hs = self.k.shape
        return (self.ranks, self.batch, h, t, hs)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0

    def check_room(self, new: int, batch: int) -> None:
        """Raise before a forward pass on `new` tokens that would not fit."""
        if batch != self.batch:
            raise ConfigError(f"the cache was made for batch {self.batch}, not {batch}")
        if self.length + new > self.max_len:
            raise ConfigError(
                f"the KV cache holds {self.max_len} positions (block_size) and {self.length} are "
                f"filled: {new} more do not fit; start a new cache on the latest tokens")

    def layer(self, i: int) -> "LayerKV":
        return LayerKV(self, i)

    def begin(self, new: int, batch: int) -> int | torch.Tensor:
        """Called by a forward pass on `new` tokens: the position of the first (the positions,
        [new], of a static cache's staged pass)."""
        if self.static:
            if self.input_pos is None or not torch.compiler.is_compiling() and \
                    self.input_pos.numel() != new:
                raise ConfigError("a static KV cache runs only passes staged with "
                                  "cache.stage(tokens, batch)")
            return self.input_pos
        self.check_room(new, batch)
        return self.length

    def end(self, new: int) -> None:
        """Called by the forward pass after writing `new` positions (a static cache commits
        them outside the pass: `commit`)."""
        if not self.static:
            self.length += new

    def stage(self, new: int, batch: int) -> None:
        """Static cache: check and set the positions of the next pass on `new` tokens."""
        self.check_room(new, batch)
        self.input_pos = torch.arange(self.length, self.length + new, device=self.k.device)

    def commit(self, new: int) -> None:
        """Static cache: the staged pass ran, its `new` positions are filled."""
        self.length += new
        self.input_pos = None


class LayerKV:
    """One layer's view of a KVCache: what an attention module is handed."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the new positions' q, k, v ([N, heads, T, hs]) over every
        position cached so far and themselves; stores k and v."""
        if self.cache.static:
            return self._attend_static(q, k, v)
        c, start, T = self.cache, self.cache.length, q.shape[2]
        c.k[self.layer, :, :, start:start + T] = k
        c.v[self.layer, :, :, start:start + T] = v
        keys = c.k[self.layer, :, :, :start + T]
        values = c.v[self.layer, :, :, :start + T]
        gqa = q.shape[1] != k.shape[1]  # grouped-query attention: fewer KV heads
        if start == 0:  # prefill: plain causal attention over the prompt
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=gqa)
        if T == 1:  # a decode step: the new position sees everything
            return F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
        # new positions start..start+T-1 after a cached prefix: each sees up to itself
        pos = torch.arange(start + T, device=q.device)
        mask = pos[None, :] <= pos[start:, None]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)

    def _attend_static(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same over a static cache: keys written at the staged positions, every cached
        position attended to under the mask of those each new position may see."""
        c, pos = self.cache, self.cache.input_pos
        keys, values = c.k[self.layer], c.v[self.layer]
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.to(values.dtype))
        mask = torch.arange(c.max_len, device=q.device)[None, :] <= pos[:, None]  # [T, max_len]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                              enable_gqa=q.shape[1] != k.shape[1])
