from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py

from tpgpt import GPT, GPTConfig  # noqa: E402

TOL = 1e-5  # relative, fp32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp(min=1e-30)).item()


def assert_close(a: torch.Tensor, b: torch.Tensor, name: str, tol: float = TOL) -> None:
    """Relative to b's largest magnitude; the message reports the largest difference."""
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = rel_err(a, b)
    diff = (a.detach() - b.detach()).abs().max().item()
    assert err <= tol, f"{name}: max |diff| {diff:.3e}, relative {err:.3e} > {tol:.0e}"


def tiny_config(**kw) -> GPTConfig:
    base = dict(block_size=16, vocab_size=96, n_layer=4, n_head=4, n_embd=32, dropout=0.0,
                bias=True)
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 96, (3, 16), generator=g)
    targets = torch.randint(0, 96, (3, 16), generator=g)
    targets[0, :3] = -1  # ignored positions, as nanoGPT allows
    return idx, targets


def make_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw))
