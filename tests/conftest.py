from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py

from tpgpt import GPT, GPTConfig  # noqa: E402
from tpgpt.analysis.numerics import FLOAT64_RTOL, float32_bound, rel_err  # noqa: E402


def assert_close(a: torch.Tensor, b: torch.Tensor, name: str, tol: float = FLOAT64_RTOL) -> None:
    """a equals b up to reordered sums: float64 tensors within FLOAT64_RTOL of b's largest
    magnitude (tpgpt.analysis.numerics says why that bound holds on any CPU); the message
    reports the largest difference."""
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if tol == FLOAT64_RTOL:
        assert a.dtype == b.dtype == torch.float64, \
            f"{name}: compare in float64 ({a.dtype}, {b.dtype}); float32 has assert_float32_close"
    err = rel_err(a, b)
    diff = (a.detach().double() - b.detach().double()).abs().max().item()
    assert err <= tol, f"{name}: max |diff| {diff:.3e}, relative {err:.3e} > {tol:.0e}"


def assert_float32_close(a32: torch.Tensor, dense32: torch.Tensor, exact: torch.Tensor,
                         name: str) -> None:
    """A float32 result is as close to the exact (float64) function as the dense float32 model's
    own result is, on this CPU (tpgpt.analysis.numerics.float32_bound)."""
    assert a32.dtype == dense32.dtype == torch.float32 and exact.dtype == torch.float64, name
    err, bound = rel_err(a32, exact), float32_bound(dense32, exact)
    assert err <= bound, (f"{name}: relative error {err:.3e} (dense float32: "
                          f"{rel_err(dense32, exact):.3e}) > {bound:.3e}")


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


def make_gpt(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> GPT:
    """The tiny GPT from a seed, initialised in float32 (so a float64 copy holds the same
    weights)."""
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw)).to(dtype)


# --- data for training tests ---------------------------------------------------------------------
WORDS = ("the king queen lord shall not thou art my good sir love death night day come go "
         "speak hear heart hand eyes blood crown war peace fair foul sweet").split()


def synthetic_text(n_words: int = 40_000, seed: int = 0) -> str:
    """Pseudo-verse with a learnable structure: a seeded Markov chain over a few words."""
    import random
    rng = random.Random(seed)
    out, w = [], "the"
    for i in range(n_words):
        w = WORDS[(WORDS.index(w) * 7 + rng.randint(0, 3)) % len(WORDS)]
        out.append(w + ("\n" if i % 9 == 8 else " "))
    return "".join(out)


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """A prepared char-level dataset of synthetic text: (data_dir, text file)."""
    from tpgpt.data import prepare_text
    root = tmp_path_factory.mktemp("data")
    src = root / "input.txt"
    src.write_text(synthetic_text())
    prepare_text(str(root / "synth"), str(src), "char")
    return str(root / "synth"), str(src)


SHAKESPEARE = os.environ.get("TPGPT_SHAKESPEARE")
needs_shakespeare = pytest.mark.skipif(
    not (SHAKESPEARE and os.path.exists(SHAKESPEARE)),
    reason="TPGPT_SHAKESPEARE does not point at a local Tiny Shakespeare (CI sets it)")


def tiny_train_overrides(data_dir: str, out_dir: str, **kw) -> dict:
    """A small, fast training config (as --key=value strings) for tests."""
    base = dict(data_dir=data_dir, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=16,
                dropout=0.0, bias=True, batch_size=4, max_iters=30, lr_decay_iters=30,
                warmup_iters=5, eval_interval=10, eval_iters=2, log_interval=1, progress=False,
                tensorboard=False, learning_rate=3e-3, min_lr=3e-4)
    base.update(kw)
    return {k: str(v) for k, v in base.items()}


def train_losses(out_dir: str) -> dict[int, float]:
    import json
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["iter"]: r["loss"] for r in recs if r["kind"] == "train"}


def eval_losses(out_dir: str) -> dict[int, tuple[float, float]]:
    import json
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["iter"]: (r["train_loss"], r["val_loss"]) for r in recs if r["kind"] == "eval"}


# --- the `slow` marker: tests that start processes (torchrun, the CLI in a subprocess) ---------
# `make test-fast` deselects them (-m "not slow"). Marked by what a test runs rather than by
# hand, so a new multi-process test cannot be forgotten: its source, that of a fixture it uses,
# or that of a test-suite function either calls (followed by name), calls torchrun or subprocess.
PROCESS_CALLS = ("torchrun(", "subprocess.")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _starts_processes(fn, seen: set) -> bool:
    import inspect
    fn = inspect.unwrap(fn)
    if fn in seen or not callable(fn):
        return False
    seen.add(fn)
    try:
        src, file = inspect.getsource(fn), inspect.getsourcefile(fn)
    except (OSError, TypeError):
        return False
    if not file or os.path.dirname(os.path.abspath(file)) != TESTS_DIR:
        return False  # only the suite's own helpers are followed
    if any(call in src for call in PROCESS_CALLS):
        return True
    code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    return code is not None and any(
        inspect.isfunction(names.get(n)) and _starts_processes(names[n], seen)
        for n in code.co_names)


def pytest_collection_modifyitems(config, items):
    for item in items:
        fns = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        if info is not None:
            fns += [d.func for defs in info.name2fixturedefs.values() for d in defs]
        seen: set = set()
        if any(fn is not None and _starts_processes(fn, seen) for fn in fns):
            item.add_marker(pytest.mark.slow)
