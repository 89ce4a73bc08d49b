"""The Llama family's dense block (Llama 2/3, Mistral, Qwen2, Qwen3): RMSNorm, rotary positions,
grouped-query attention, a gated MLP. Parameter names follow the GPT-2 block's where the role is
the same (ln_1, ln_2, attn.c_proj: the output projection, mlp.c_proj: the down projection) and
Hugging Face's where it is new (q_proj, k_proj, v_proj, q_norm, k_norm, gate_proj, up_proj), so
one sync machinery serves both families and the HF key map is short (checkpoint/hf.py).

With n_kv_head < n_head each KV head serves n_head / n_kv_head consecutive query heads, as
transformers' repeat_kv lays them out.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_cache import LayerKV
from .layers import RMSNorm, attend, make_norm, rotate


def gate(config):
    """The gated MLP's nonlinearity: silu (SwiGLU) or a GELU (GeGLU)."""
    if config.activation == "silu":
        return F.silu
    approximate = "tanh" if config.activation == "gelu_tanh" else "none"
    return lambda x: F.gelu(x, approximate=approximate)


class LlamaAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, hs = config.n_embd, config.head_size
        self.head_size, self.dropout = hs, config.dropout
        self.q_proj = nn.Linear(C, config.n_head * hs, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, config.kv_heads * hs, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, config.kv_heads * hs, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_head * hs, C, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(hs, config.norm_eps)
            self.k_norm = RMSNorm(hs, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, rope=None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, -1, self.head_size).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, heads, T, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        y = attend(rotate(q, rope), rotate(k, rope), v, kv,
                   self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, -1)))


class GatedMLP(nn.Module):
    """c_proj(act(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.hidden_size
        self.gate_proj = nn.Linear(C, H, bias=False)
        self.up_proj = nn.Linear(C, H, bias=False)
        self.c_proj = nn.Linear(H, C, bias=False)
        self.act = gate(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.gate_proj(x)) * self.up_proj(x)))


class LlamaBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = LlamaAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, rope=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, rope)
        return x + self.mlp(self.ln_2(x))
