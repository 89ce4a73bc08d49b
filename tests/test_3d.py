"""3D layouts (tp, pp, dp) under torchrun against one process: same global batch, same loss,
and after one AdamW step the same parameters; GPipe, 1F1B and interleaved 1F1B agree."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import assert_close, tiny_train_overrides
from dist_common import HERE, torchrun
from tpgpt.config import load_config
from tpgpt.sample import load_model
from tpgpt.train import Trainer

CONFIG = os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml")
# bias=False: the key bias has an exactly zero gradient, so Adam's first step (lr * sign(g)) on
# it is decided by rounding noise in any implementation (see test_equivalence).
COMMON = dict(n_layer=4, n_head=4, bias=False, batch_size=2, gradient_accumulation_steps=4,
              max_iters=1, eval_interval=1, eval_iters=4, grad_clip=1.0)

LAYOUTS = [  # (tp, pp, dp, schedule, extra)
    (2, 1, 1, "1f1b", {}), (1, 2, 1, "1f1b", {}), (1, 1, 2, "1f1b", {}), (2, 2, 1, "1f1b", {}),
    (2, 1, 2, "1f1b", {}), (2, 2, 2, "1f1b", {}),
    (1, 2, 1, "gpipe", {}), (1, 2, 1, "interleaved", {"pp_virtual_stages": 2}),
    (2, 2, 2, "gpipe", {}), (2, 2, 2, "interleaved", {"pp_virtual_stages": 2}),
]


def first_step(out_dir) -> tuple[float, dict]:
    recs = [json.loads(x) for x in open(os.path.join(out_dir, "metrics.jsonl"))]
    loss = next(r["loss"] for r in recs if r["kind"] == "train" and r["iter"] == 1)
    gpt, _, _ = load_model(os.path.join(str(out_dir), "last"))
    return loss, gpt.state_dict()


@pytest.fixture(scope="module")
def reference(text_data, tmp_path_factory):
    data, _ = text_data
    out = tmp_path_factory.mktemp("ref")
    cfg = load_config(None, tiny_train_overrides(data, out, **COMMON))
    t = Trainer(cfg, quiet=True)
    t.run()
    return first_step(out)


@pytest.mark.parametrize("tp,pp,dp,schedule,extra", LAYOUTS,
                         ids=[f"tp{a}-pp{b}-dp{c}-{s}" for a, b, c, s, _ in LAYOUTS])
def test_layout_matches_single_process(text_data, tmp_path, reference, tp, pp, dp, schedule,
                                       extra):
    data, _ = text_data
    args = tiny_train_overrides(data, tmp_path / "run", tp=tp, pp=pp, pp_schedule=schedule,
                                **COMMON, **extra)
    torchrun(tp * pp * dp, "-m", ["tpgpt", "train", CONFIG,
                                  *[f"--{k}={v}" for k, v in args.items()]])
    loss, weights = first_step(tmp_path / "run")
    ref_loss, ref_weights = reference
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (loss, ref_loss)
    for k, v in ref_weights.items():
        assert_close(weights[k], v, f"{k} after one step")


def test_stage_boundary_must_be_a_sync_point(text_data, tmp_path):
    data, _ = text_data
    args = tiny_train_overrides(data, tmp_path / "run", tp=2, pp=2, sync="parallel", **COMMON)
    with pytest.raises(AssertionError, match="tpgpt: error: sync plan 'parallel' drops the sync "
                                             "after layer 1, where pipeline stage boundary falls"):
        torchrun(4, "-m", ["tpgpt", "train", CONFIG, *[f"--{k}={v}" for k, v in args.items()]])
