"""GPTConfig: the shape of a decoder of either family, checked field by field.

    family "gpt2"   learned positions, LayerNorm (eps 1e-5, optional biases), fused q|k|v, a
                    4x GELU MLP, the head tied to the embedding;
    family "llama"  rotary positions (rope_theta; Llama 3's `llama3` scaling), RMSNorm
                    (norm_eps), separate q, k, v projections with n_kv_head KV heads
                    (grouped-query attention), a gated MLP (SwiGLU with activation="silu"), no
                    biases, tied or untied embeddings; Qwen2's q/k/v biases (qkv_bias) and
                    Qwen3's RMSNorm on each head's q and k (qk_norm) are switches, and the head
                    size need not be the width over the heads (head_dim).

A GPT-2 config leaves the Llama fields at their defaults (checked), so a checkpoint written
before the family field existed (no such keys) loads as GPT-2.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError

FAMILIES = ("gpt2", "llama")
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh", "silu": None}  # -> torch's gelu approximate
GELU_APPROXIMATE = {k: v for k, v in ACTIVATIONS.items() if v is not None}
ROPE_SCALINGS = ("none", "llama3")
# fields that only the llama family reads, with the value GPT-2 must leave them at
# the fields the family brought (a checkpoint from before it has none: their defaults, GPT-2)
LLAMA_FIELDS = ("family", "n_kv_head", "head_dim", "intermediate_size", "norm_eps", "rope_theta",
                "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                "rope_original_context", "tie_embeddings", "qkv_bias", "qk_norm")
LLAMA_ONLY = {"n_kv_head": 0, "head_dim": 0, "rope_theta": 10000.0, "rope_scaling": "none",
              "tie_embeddings": True, "qkv_bias": False, "qk_norm": False}


def _check_positive_int(name: str, value, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a non-negative integer" if zero_ok else "a positive integer"
        raise ConfigError(f"{name}={value!r} is invalid: it must be {what}")


def _check_positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}={value!r} is invalid: it must be a positive number")


@dataclass
class GPTConfig:
    """Shape of a decoder. The defaults are GPT-2 small (124M) with the vocab padded to 50304."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # gpt2: every Linear and LayerNorm; llama: must be false (see qkv_bias)
    # the MLP's nonlinearity: "gelu" exact (erf, nanoGPT's), "gelu_tanh" (GPT-2's own, Hugging
    # Face's "gelu_new"), "silu"; in a llama MLP it gates: silu is SwiGLU, gelu_tanh GeGLU
    activation: str = "gelu"
    family: str = "gpt2"
    n_kv_head: int = 0  # KV heads (0: n_head, plain multi-head attention; 1: multi-query)
    head_dim: int = 0  # size of a head (0: n_embd // n_head)
    intermediate_size: int = 0  # the MLP's hidden width (0: 4 * n_embd)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # "llama3": Llama 3.1's frequency-dependent interpolation
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    tie_embeddings: bool = True  # the LM head is the token embedding
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections only
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k, before the rotation

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type in (int, "int"):
                _check_positive_int(f.name, getattr(self, f.name),
                                    zero_ok=f.name in ("n_kv_head", "head_dim",
                                                       "intermediate_size"))
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r} is invalid: it must be "
                                  f"true or false")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is invalid: it must be in [0, 1)")
        for name in ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor",
                     "rope_high_freq_factor"):
            _check_positive_number(name, getattr(self, name))
        for name, value, choices in (("family", self.family, FAMILIES),
                                     ("activation", self.activation, tuple(ACTIVATIONS)),
                                     ("rope_scaling", self.rope_scaling, ROPE_SCALINGS)):
            if value not in choices:
                raise ConfigError(f"{name}={value!r} is invalid: choose one of "
                                  f"{', '.join(choices)}")
        if self.family == "gpt2":
            self._check_gpt2()
        else:
            self._check_llama()

    def _check_gpt2(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"choose n_embd as a multiple of n_head")
        if self.activation == "silu":
            raise ConfigError("activation='silu' is for family=llama (SwiGLU): GPT-2's MLP "
                              "takes gelu or gelu_tanh")
        for name, default in LLAMA_ONLY.items():
            if getattr(self, name) != default:
                raise ConfigError(f"{name}={getattr(self, name)!r} is a llama-family field: "
                                  f"family=gpt2 needs it at {default!r} (or set family=llama)")

    def _check_llama(self) -> None:
        if self.bias:
            raise ConfigError("bias=true is invalid for family=llama: its layers have no "
                              "biases (qkv_bias=true gives Qwen2's q/k/v biases)")
        if not self.head_dim and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                              f"set head_dim, or choose n_embd as a multiple of n_head")
        if self.kv_heads > self.n_head or self.n_head % self.kv_heads:
            raise ConfigError(f"n_kv_head={self.n_kv_head} does not divide n_head="
                              f"{self.n_head}: each KV head serves an equal group of query heads")
        if self.head_size % 2:
            raise ConfigError(f"head size {self.head_size} is odd: rotary positions rotate "
                              f"pairs of channels (choose an even head_dim)")
        if self.rope_scaling == "llama3" and \
                not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ConfigError(f"rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                              f"rope_low_freq_factor={self.rope_low_freq_factor}")

    # --- derived shapes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        """The MLP's hidden width."""
        return self.intermediate_size or 4 * self.n_embd

    @property
    def rotary(self) -> bool:
        return self.family == "llama"
