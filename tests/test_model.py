"""The dense reference GPT and the communication grammar."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, make_gpt
from tpgpt import GPT, GPTConfig, TPComm

pytestmark = pytest.mark.numerics  # rerun under every CPU kernel set (Makefile)


def test_gpt2_small_defaults_and_parameter_count():
    cfg = GPTConfig()
    assert (cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.bias) == \
        (1024, 50304, 12, 12, 768, True)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.get_num_params() == 123_689_472  # nanoGPT prints 123.69M
    assert model.get_num_params(non_embedding=False) == 123_689_472 + 1024 * 768


def test_nanogpt_state_dict_names_and_shapes():
    model = make_gpt(n_layer=1)
    sd = model.state_dict()
    C, V, T = 32, 96, 16
    want = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C),
            "transformer.h.0.ln_1.weight": (C,), "transformer.h.0.ln_1.bias": (C,),
            "transformer.h.0.attn.c_attn.weight": (3 * C, C),
            "transformer.h.0.attn.c_attn.bias": (3 * C,),
            "transformer.h.0.attn.c_proj.weight": (C, C), "transformer.h.0.attn.c_proj.bias": (C,),
            "transformer.h.0.ln_2.weight": (C,), "transformer.h.0.ln_2.bias": (C,),
            "transformer.h.0.mlp.c_fc.weight": (4 * C, C),
            "transformer.h.0.mlp.c_fc.bias": (4 * C,),
            "transformer.h.0.mlp.c_proj.weight": (C, 4 * C),
            "transformer.h.0.mlp.c_proj.bias": (C,),
            "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,),
            "lm_head.weight": (V, C)}
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    fresh = make_gpt(seed=1, n_layer=1)
    fresh.load_state_dict(sd)  # strict: a nanoGPT-named state dict loads as is


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=512, block_size=64))
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.001
    assert abs(proj - 0.02 / math.sqrt(16)) < 0.0005
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_without_bias_has_no_bias_parameters():
    model = make_gpt(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_forward_shapes_and_loss_matches_cross_entropy(batch):
    idx, targets = batch
    model = make_gpt(dtype=torch.float64)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 96)
    want = F.cross_entropy(logits.view(-1, 96), targets.view(-1), ignore_index=-1)
    assert_close(loss, want, "loss")
    last, none = model(idx)
    assert none is None and last.shape == (3, 1, 96)
    assert_close(last[:, 0], logits[:, -1], "last-position logits")
    # untrained: loss near ln(vocab)
    assert abs(loss.item() - math.log(96)) < 0.2


def test_dropout_is_active_only_in_training(batch):
    idx, targets = batch
    model = make_gpt(dropout=0.5)
    model.train()
    a, b = model(idx, targets)[1], model(idx, targets)[1]
    assert a != b
    model.eval()
    assert model(idx, targets)[1] == model(idx, targets)[1]


def test_generate_temperature_top_k_and_seed(batch):
    idx, _ = batch
    model = make_gpt().eval()
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    a = model.generate(idx[:, :2], 10, temperature=0.8, top_k=5, generator=g())
    b = model.generate(idx[:, :2], 10, temperature=0.8, top_k=5, generator=g())
    assert torch.equal(a, b) and a.shape == (3, 12)
    greedy = model.generate(idx[:, :2], 3, temperature=0)
    step = model(idx[:, :2])[0][:, -1].argmax(-1)
    assert torch.equal(greedy[:, 2], step)
    # top_k=1 is greedy whatever the temperature
    assert torch.equal(model.generate(idx[:, :2], 3, top_k=1, generator=g()), greedy)


@pytest.mark.parametrize("tp", [2, 3, 4])
def test_gather_and_scatter_are_inverse_with_correct_gradients(tp):
    comm = TPComm(tp)
    x = torch.randn(1, 2, 3, 4 * tp, requires_grad=True)
    parts = comm.scatter_to_tp(x, dim=-1)
    assert parts.shape == (tp, 2, 3, 4)
    assert torch.equal(parts[1], x[0, :, :, 4:8])
    back = comm.gather_from_tp(parts, dim=-1)
    assert torch.equal(back, x)
    w = torch.randn_like(x)
    (back * w).sum().backward()
    assert torch.equal(x.grad, w)
    events = [(e.phase, e.op, e.tag) for e in comm.counter.events]
    assert events == [("fwd", "all_gather", "gather"), ("bwd", "all_gather", "scatter")]


def test_copy_and_reduce_are_f_and_g():
    comm = TPComm(3)
    x = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    y = comm.copy_to_tp(x)  # f: identity forward
    assert y.shape == (3, 5) and torch.equal(y[2], x[0])
    w = torch.randn(3, 5, dtype=torch.float64)
    (y * w).sum().backward()  # f: all-reduce backward
    assert_close(x.grad, w.sum(0, keepdim=True), "f backward")
    p = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z = comm.reduce_from_tp(p)  # g: all-reduce forward
    assert_close(z, p.sum(0, keepdim=True), "g forward")
    z.sum().backward()  # g: identity backward
    assert torch.equal(p.grad, torch.ones(3, 5, dtype=torch.float64))
    assert [(e.phase, e.op) for e in comm.counter.events] == \
        [("bwd", "all_reduce"), ("fwd", "all_reduce")]
    assert comm.counter.events[0].nbytes == 5 * 8  # bytes of one rank's float64 buffer


def test_tp1_counts_nothing():
    comm = TPComm(1)
    comm.reduce_from_tp(torch.ones(1, 4))
    assert comm.counter.events == []


def test_model_code_never_imports_torch_distributed():
    """The model is the same code in every mode: a comm object decides where the ranks live."""
    import ast
    from pathlib import Path

    import tpgpt.model
    for f in Path(tpgpt.model.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}"] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                assert not name.startswith("torch.distributed") and "distributed" not in \
                    name.split(".")[-1:], f"{f.name} imports {name}"
