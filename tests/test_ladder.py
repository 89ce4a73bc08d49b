"""Ladder syncs (Ladder Residual as a switch on any plan): each sync's result lands one region
later. The function against the naive reference is in test_equivalence.py, simulated against
torchrun (asynchronous all-reduces) in test_distributed.py, the KV cache in test_kv_cache.py;
here: what it counts, that it is another function at any tp, and a trained run that loads as
what it trained."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_train_overrides
from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.checkpoint.load import load_trained
from tpgpt.comm.plan import count_collectives, summarize
from tpgpt.errors import ConfigError
from tpgpt.train import Trainer
from tpgpt.train.config import load_config

CONFIG = GPTConfig(block_size=16, vocab_size=48, n_layer=4, n_head=4, n_embd=32, bias=True)


@pytest.mark.parametrize("sync", ["tp", "spd", "tp,spd", "parallel"])
def test_a_ladder_sends_what_the_plan_sends(sync):
    """The same collectives, only later: counted as the plan counts them."""
    torch.manual_seed(0)
    model = ParallelGPT.from_dense(GPT(CONFIG), tp=2, sync=sync, ladder=True)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    model(idx, idx)[1].backward()
    model.sync_replicated_grads()
    assert model.comm.counter.summary() == summarize(count_collectives(
        model.plan, tp=2, config=CONFIG, batch_size=2, seq_len=16))


def test_a_ladder_is_another_function_even_at_tp1():
    """At tp=1 a plan changes nothing (one rank's sum is its own), a ladder still does: the
    next region reads the stream without the last sync's result."""
    torch.manual_seed(0)
    dense = GPT(CONFIG)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    one = ParallelGPT.from_dense(dense, tp=1, ladder=True)
    assert not one.is_dense and ParallelGPT.from_dense(dense, tp=1, sync="spd").is_dense
    with torch.no_grad():
        assert not torch.equal(one(idx, idx)[0], dense(idx, idx)[0])
        # every sync on, the ladder's function does not depend on tp (only sums reorder)
        torch.testing.assert_close(ParallelGPT.from_dense(dense, tp=4, ladder=True)(idx)[0],
                                   one(idx)[0])
    with pytest.raises(ConfigError, match="ladder='yes' is invalid"):
        ParallelGPT(CONFIG, tp=2, ladder="yes")


def test_a_run_with_ladder_syncs_loads_as_what_it_trained(text_data, tmp_path):
    data, _ = text_data
    cfg = load_config(None, tiny_train_overrides(data, tmp_path / "run", tp=2, max_iters=10,
                                                 n_head=4, ladder="true"))
    t = Trainer(cfg, quiet=True)
    assert t.run()["ladder"] is True
    t.close()
    loaded = load_trained(str(tmp_path / "run"))
    assert loaded.model.ladder and loaded.mode == "simulated" and not loaded.converted
    assert "sync='tp' (4 of 4 forward syncs, ladder)" in loaded.describe()
    # every sync on: the same function at any tp (sums reorder), the ladder kept, not the dense
    # GPT even at one rank; a plan that drops syncs is another function
    at1 = load_trained(str(tmp_path / "run"), tp=1)
    assert at1.mode == "simulated" and at1.model.ladder and not at1.converted
    assert "tp=1 (no communication), sync='tp' with ladder" in at1.describe()
    assert not load_trained(str(tmp_path / "run"), tp=4).converted
    spd = load_trained(str(tmp_path / "run"), tp=1, sync="spd")  # no "is the dense GPT" refusal
    assert spd.model.ladder and spd.converted
