"""A checkpoint written before the model-family redesign (commit 9a13445: GPT-2 only, no family
keys; 2 layers, 8 wide, trained 10 iterations at simulated tp=2 under `spd`) still loads: as
GPT-2, with the function it was trained as, and the dense weights give the loss the old code
gave (4.074452877044678 on this batch, float32)."""
from __future__ import annotations

import os

import torch

from tpgpt.checkpoint.load import load_dense, load_trained

OLD = os.path.join(os.path.dirname(__file__), "data", "gpt2_pre_family")


def test_old_gpt2_checkpoint_loads_as_it_was_trained():
    dense, _, _ = load_dense(OLD)
    assert dense.config.family == "gpt2" and dense.config.n_embd == 8
    idx = torch.arange(8).view(1, 8)
    # the old code's float32 loss; reordered float32 sums on another CPU move it by ~1e-7
    assert abs(dense(idx, idx)[1].item() - 4.074452877044678) < 1e-5
    loaded = load_trained(OLD)
    model = loaded.model
    assert (model.tp, model.plan.spec) == (2, "spd")
    with torch.no_grad():
        assert torch.isfinite(model(idx, idx)[1])
