"""The dense reference GPT: GPT-2's architecture with nanoGPT's parameter names.

Notable features:
- learned positions, pre-LayerNorm blocks, GELU MLP, `wte` tied to `lm_head`;
- GPT-2 init: N(0, 0.02), residual projections (`c_proj`) scaled by 1/sqrt(2 * n_layer);
- optional bias in every Linear and LayerNorm, dropout on embeddings, attention and residuals;
- parameter names of nanoGPT (`transformer.h.0.attn.c_attn.weight`, ...), so a nanoGPT
  checkpoint's state dict loads as is, and HF GPT-2 weights load with a key map.

This model is the ground truth that `ParallelGPT` must equal when every sync point is on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..errors import ConfigError
from .kv_cache import KVCache, LayerKV


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid: it must be a positive integer")


GELU_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}  # activation -> torch's approximate


@dataclass
class GPTConfig:
    """Shape of a GPT. The defaults are GPT-2 small (124M) with the vocab padded to 50304."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # the MLP's GELU: "gelu" exact (erf, nanoGPT's) or "gelu_tanh", the tanh approximation
    # that OpenAI's GPT-2 was trained with (Hugging Face's "gelu_new")
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type in (int, "int"):
                _check_positive_int(f.name, getattr(self, f.name))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"choose n_embd as a multiple of n_head")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is invalid: it must be in [0, 1)")
        if not isinstance(self.bias, bool):
            raise ConfigError(f"bias={self.bias!r} is invalid: it must be true or false")
        if self.activation not in GELU_APPROXIMATE:
            raise ConfigError(f"activation={self.activation!r} is invalid: choose one of "
                              f"{', '.join(GELU_APPROXIMATE)}")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # [q | k | v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # heads counted from the width: under DTensor's colwise c_attn a rank holds n_head / tp
        # of them (tpgpt bench dist compares against PyTorch's own tensor parallelism)
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, -1, self.head_size).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        if kv is not None:  # generation: attend over the cached positions too
            y = kv.attend(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=GELU_APPROXIMATE[config.activation])
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block (dense: no sync points)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)
        x = x + self.mlp(self.ln_2(x))
        return x


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row from (B, V) logits with temperature and optional top-k."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None):
        """idx (B, T) -> (logits, loss). Without targets, only the last position's logits.
        With a `cache` (inference), idx are the positions after the cached ones."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.check_room(T, B)
        elif T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def new_kv_cache(self, batch: int) -> KVCache:
        """An empty cache for generating `batch` sequences of up to block_size positions."""
        c, w = self.config, self.transformer.wpe.weight
        return KVCache(c.n_layer, 1, batch, c.n_head, c.block_size, c.n_embd // c.n_head,
                       w.dtype, w.device)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 kv_cache: bool = True):
        """Extend idx (B, T) by max_new_tokens sampled tokens (temperature 0 = greedy); see
        tpgpt.model.generation for the cache and the context past block_size."""
        from .generation import generate  # generation calls back into the model
        return generate(self, idx, max_new_tokens, temperature, top_k, generator, kv_cache)
