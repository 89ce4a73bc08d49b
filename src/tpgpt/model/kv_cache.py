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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class KVCache:
    """Keys and values of `n_layer` layers for up to `max_len` positions."""

    def __init__(self, n_layer: int, ranks: int, batch: int, heads: int, max_len: int,
                 head_size: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (n_layer, ranks * batch, heads, max_len, head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ranks, self.batch, self.max_len = ranks, batch, max_len
        self.length = 0

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

    def advance(self, new: int) -> None:
        self.length += new


class LayerKV:
    """One layer's view of a KVCache: what an attention module is handed."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the new positions' q, k, v ([N, heads, T, hs]) over every
        position cached so far and themselves; stores k and v."""
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
