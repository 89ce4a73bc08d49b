"""The dense reference model of either family (config.py): GPT-2's block here with nanoGPT's
parameter names, the Llama family's in llama.py.

Notable features:
- GPT-2: learned positions, pre-LayerNorm blocks, GELU MLP, `wte` tied to `lm_head`; Llama:
  rotary positions (no wpe), RMSNorm, grouped-query attention, gated MLP, tied or untied head;
- GPT-2 init: N(0, 0.02), residual projections (`c_proj`) scaled by 1/sqrt(2 * n_layer);
- optional bias in every Linear and LayerNorm, dropout on embeddings, attention and residuals;
- parameter names of nanoGPT (`transformer.h.0.attn.c_attn.weight`, ...), so a nanoGPT
  checkpoint's state dict loads as is, and HF GPT-2 weights load with a key map.

This model is the ground truth that `ParallelGPT` must equal when every sync point is on.
"""
from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .config import GELU_APPROXIMATE, GPTConfig
from .kv_cache import KVCache, LayerKV
from .layers import LayerNorm, Rotary, attend, make_norm, positions, sample_next
from .llama import LlamaBlock

__all__ = ["GPT", "GPTConfig", "Block", "LayerNorm", "sample_next"]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # [q | k | v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, rope=None) -> torch.Tensor:
        B, T, _ = x.shape
        # heads counted from the width: under DTensor's colwise c_attn a rank holds n_head / tp
        # of them (tpgpt bench dist compares against PyTorch's own tensor parallelism)
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, -1, self.head_size).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        y = attend(q, k, v, kv, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.hidden_size, bias=config.bias)
        self.gelu = nn.GELU(approximate=GELU_APPROXIMATE[config.activation])
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block (dense: no sync points)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, rope=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        block = LlamaBlock if config.family == "llama" else Block
        parts = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if not config.rotary:
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts.update(drop=nn.Dropout(config.dropout),
                     h=nn.ModuleList([block(config) for _ in range(config.n_layer)]),
                     ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(parts)
        self.rotary = Rotary(config) if config.rotary else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as nanoGPT does."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None):
        """idx (B, T) -> (logits, loss). Without targets, only the last position's logits.
        With a `cache` (inference), idx are the positions after the cached ones."""
        B, T = idx.shape
        start = 0 if cache is None else cache.begin(T, B)  # a tensor of positions when static
        if cache is None and T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(start, T, x.dtype)
        else:
            x = x + self.transformer.wpe(positions(start, T, idx.device))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache.layer(i), rope)
        if cache is not None:
            cache.end(T)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def new_kv_cache(self, batch: int, static: bool = False) -> KVCache:
        """An empty cache for generating `batch` sequences of up to block_size positions
        (`static`: the compiled decoder's, kv_cache.py)."""
        c, w = self.config, self.transformer.wte.weight
        return KVCache(c.n_layer, 1, batch, c.kv_heads, c.block_size, c.head_size,
                       w.dtype, w.device, static)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 kv_cache: bool = True, stop: tuple[int, ...] = (), compile: bool | str = False):
        """Extend idx (B, T) by max_new_tokens sampled tokens (temperature 0 = greedy), or fewer
        once every row has drawn a token of `stop`; see tpgpt.model.generation for the cache
        and the context past block_size."""
        from .generation import generate  # generation calls back into the model
        return generate(self, idx, max_new_tokens, temperature, top_k, generator, kv_cache,
                        stop, compile)
