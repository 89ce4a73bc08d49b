"""The KV cache: decoding with it is decoding without it (the same tokens, logits equal up to
reordered sums) for the dense GPT and ParallelGPT under every plan, tp and head, past block_size
too; its shape is [R, B, heads/tp, block_size, head_size]; it refuses what does not fit."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.analysis.numerics import float32_bound, rel_err
from tpgpt.errors import ConfigError
from tpgpt.model.generation import decode, window_start

pytestmark = pytest.mark.numerics  # rerun under every CPU kernel set (Makefile)

CONFIG = GPTConfig(block_size=12, vocab_size=64, n_layer=4, n_head=4, n_embd=32, bias=True)
PLANS = ["tp", "spd", "parallel", "tp,spd", "bits:10110001", "bits:00000001"]
PROMPT_LEN, NEW = 5, 20  # 25 tokens: two slides of a 12-token window


def dense(dtype=torch.float64) -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).to(dtype).eval()


def prompt(batch: int = 3) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (batch, PROMPT_LEN),
                         generator=torch.Generator().manual_seed(1))


def greedy(model, idx, kv_cache: bool, new: int = NEW):
    steps = list(decode(model, idx, new, temperature=0, kv_cache=kv_cache))
    return torch.cat([t for _, t in steps], 1), torch.stack([lg for lg, _ in steps])


def test_dense_cache_equals_recompute():
    g = dense()
    tokens, logits = greedy(g, prompt(), kv_cache=True)
    ref_tokens, ref_logits = greedy(g, prompt(), kv_cache=False)
    assert torch.equal(tokens, ref_tokens)
    assert_close(logits, ref_logits, "dense decode logits, cache vs recompute")


@pytest.mark.parametrize("vp", [False, True], ids=["replicated", "vocab_parallel"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("sync", PLANS + ["tp@ladder", "spd@ladder", "tp,spd@int8@ladder"])
def test_parallel_cache_equals_recompute(sync, tp, vp):
    g = dense()
    sync, *opts = sync.split("@")
    wire = dict(sync_dtype="int8", sync_block=8) if "int8" in opts else {}
    model = ParallelGPT.from_dense(g, tp=tp, sync=sync, vocab_parallel=vp,
                                   ladder="ladder" in opts, **wire).eval()
    tokens, logits = greedy(model, prompt(), kv_cache=True)
    ref_tokens, ref_logits = greedy(model, prompt(), kv_cache=False)
    assert torch.equal(tokens, ref_tokens)
    assert_close(logits, ref_logits, f"tp={tp} {sync} decode logits, cache vs recompute")
    if model.is_dense:  # the dense GPT's tokens
        assert torch.equal(tokens, greedy(g, prompt(), kv_cache=True)[0])


@pytest.mark.parametrize("tp", [1, 2])
def test_float32_cache_is_as_close_to_the_exact_function_as_recompute(tp):
    """float32 decode steps: the cached logits' error against float64 is that of recomputing
    the whole context, to the factor of analysis/numerics.py. The steps are fed one fixed
    sequence (not their own draws), so a near-tie flipped by rounding cannot change the context."""
    m32 = ParallelGPT.from_dense(dense(torch.float32), tp=tp, sync="spd").eval()
    m64 = ParallelGPT.from_dense(dense(), tp=tp, sync="spd").eval()
    seq = torch.randint(0, CONFIG.vocab_size, (3, CONFIG.block_size),
                        generator=torch.Generator().manual_seed(3))
    cache = m32.new_kv_cache(3)
    with torch.no_grad():
        cached, _ = m32(seq[:, :PROMPT_LEN], cache=cache)  # prefill
        for n in range(PROMPT_LEN, CONFIG.block_size + 1):
            ctx = seq[:, :n]
            exact, recomputed = m64(ctx)[0], m32(ctx)[0]
            assert rel_err(cached, exact) <= float32_bound(recomputed, exact), f"position {n}"
            if n < CONFIG.block_size:
                cached, _ = m32(seq[:, n:n + 1], cache=cache)  # one decode step
    assert cache.length == CONFIG.block_size


def test_cache_shape_is_per_rank_heads():
    model = ParallelGPT.from_dense(dense(), tp=4)
    cache = model.new_kv_cache(batch=3)
    assert cache.shape == (4, 3, 1, CONFIG.block_size, 8)
    assert dense().new_kv_cache(batch=2).shape == (1, 2, 4, CONFIG.block_size, 8)
    assert cache.nbytes() == 2 * CONFIG.n_layer * 4 * 3 * 1 * CONFIG.block_size * 8 * 8


@pytest.mark.parametrize("tp", [1, 2])
def test_prefill_in_pieces_equals_one_prefill(tp):
    """Positions after a cached prefix, several at once (the masked branch)."""
    model = ParallelGPT.from_dense(dense(), tp=tp, sync="parallel").eval()
    idx = torch.randint(0, CONFIG.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        one = model.new_kv_cache(2)
        whole, _ = model(idx, cache=one)
        pieces = model.new_kv_cache(2)
        model(idx[:, :4], cache=pieces)
        model(idx[:, 4:7], cache=pieces)
        last, _ = model(idx[:, 7:], cache=pieces)
        plain, _ = model(idx)
    assert one.length == pieces.length == 10
    assert_close(last, whole, "prefill in pieces")
    assert_close(whole, plain, "prefill vs no cache")
    assert_close(pieces.k, one.k, "cached keys")


def test_a_cache_refuses_what_does_not_fit():
    g = dense()
    cache = g.new_kv_cache(batch=2)
    with torch.no_grad():
        g(torch.zeros(2, 10, dtype=torch.long), cache=cache)
        with pytest.raises(ConfigError, match="KV cache holds 12 positions .* 10 are filled"):
            g(torch.zeros(2, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ConfigError, match="made for batch 2, not 1"):
            g(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert cache.length == 10  # nothing written by a refused call


def test_window_slides_by_half_a_block():
    assert [window_start(n, 0, 12) for n in (5, 12)] == [0, 0]
    assert window_start(13, 0, 12) == 7  # the latest 6 tokens
    assert window_start(18, 7, 12) == 7 and window_start(20, 7, 12) == 14
    assert window_start(3, 2, 1) == 2  # block_size 1: one token of context


def test_generate_keeps_going_past_block_size():
    g = dense()
    out = g.generate(prompt(1), 3 * CONFIG.block_size, temperature=0)
    assert out.shape == (1, PROMPT_LEN + 3 * CONFIG.block_size)
    assert torch.equal(out, g.generate(prompt(1), 3 * CONFIG.block_size, temperature=0,
                                       kv_cache=False))
