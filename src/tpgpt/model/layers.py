"""The pieces both families' blocks are made of, dense and parallel alike: the two norms (each
applicable with another rank's parameters, `apply`), rotary positions, the attention of a set of
heads over the sequence or the KV cache, and the sampler.

Rotary angles are computed in float32 whatever the model's dtype, as transformers computes them,
so an imported model sees the angles it was trained with; a float64 run then differs from an
exact-angle one by float32's rounding of the angles, identically in every layout.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_cache import LayerKV


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2's; torch's had no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
        return F.layer_norm(x, weight.shape, weight, bias, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_with(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama's), computed in at least float32 as transformers does."""

    bias = None

    def __init__(self, ndim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ndim))

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_with(x, self.weight)


def make_norm(config, ndim: int | None = None) -> nn.Module:
    """The family's norm over `ndim` channels (default: the width)."""
    n = config.n_embd if ndim is None else ndim
    if config.family == "gpt2":
        return LayerNorm(n, bias=config.bias, eps=config.norm_eps)
    return RMSNorm(n, config.norm_eps)


def inverse_frequencies(config) -> torch.Tensor:
    """Rotary inverse frequencies [head_size / 2] in float32; with rope_scaling="llama3", Llama
    3.1's interpolation (Meta's llama-models `apply_scaling`: wavelengths longer than
    original_context / low_freq_factor are divided by `factor`, shorter than original_context /
    high_freq_factor kept, smoothly blended between), in the float32 operation order
    transformers uses, so the angles match its to the bit."""
    d = config.head_size
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if config.rope_scaling != "llama3":
        return inv
    factor, low, high = config.rope_factor, config.rope_low_freq_factor, \
        config.rope_high_freq_factor
    context = config.rope_original_context
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > context / low, inv / factor, inv)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) * ~(wavelen > context / low)
    return torch.where(medium, blended, scaled)


def positions(start: int | torch.Tensor, length: int, device) -> torch.Tensor:
    """The positions of `length` new tokens from `start`, or `start` itself when it is already
    the positions tensor (a static KV cache's staged pass, kv_cache.py)."""
    if isinstance(start, torch.Tensor):
        return start
    return torch.arange(start, start + length, dtype=torch.long, device=device)


class Rotary(nn.Module):
    """cos and sin of every position's angles, [T, head_size] (the two halves repeated)."""

    def __init__(self, config):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    def forward(self, start: int | torch.Tensor, length: int, dtype: torch.dtype):
        pos = positions(start, length, self.inv_freq.device)
        freqs = pos[:, None].float() * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Apply the rotation to x [..., T, hs] (channel i pairs with i + hs/2)."""
    cos, sin = rope
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV | None,
           dropout_p: float) -> torch.Tensor:
    """Causal attention of q [N, heads, T, hs] over k, v [N, kv_heads, T, hs] (grouped: each
    KV head serves heads / kv_heads consecutive query heads), or over the cache and them."""
    if kv is not None:
        return kv.attend(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                          enable_gqa=q.shape[1] != k.shape[1])


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
