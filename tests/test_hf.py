"""Export to HF GPT-2 and import back: transformers gives tpgpt's logits; the round trip is
exact."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close, make_gpt
from tpgpt.checkpoint import save_checkpoint
from tpgpt.cli import main
from tpgpt.checkpoint.hf import load_hf
from tpgpt.checkpoint.load import load_dense
from tpgpt.checkpoint.sharded_state import ShardedState
from tpgpt.model import ParallelGPT


def write_ckpt(gpt, path):
    c = gpt.config
    state = {"iter": 0, "best_val_loss": None, "train_loss": None, "val_loss": None,
             "config": {}, "layout": {"world": 1},
             "model": {k: getattr(c, k) for k in ("block_size", "vocab_size", "n_layer",
                                                   "n_head", "n_embd", "dropout", "bias")}}
    save_checkpoint(str(path), rank=0, barrier=lambda: None, sharded=ShardedState(gpt),
                    state=state, meta={"tokenizer": "byte", "vocab_size": 256}, rank_state=None)


@pytest.mark.numerics
@pytest.mark.parametrize("bias", [True, False])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, bias, batch):
    transformers = pytest.importorskip("transformers", reason="transformers (test extra) missing")
    gpt = make_gpt(bias=bias).eval()
    write_ckpt(gpt, tmp_path / "ckpt")
    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx, _ = batch
    with torch.no_grad():  # in float64: the same function up to reordered sums
        ours, _ = gpt.double()(idx, idx)
        theirs = hf.double()(idx).logits
    assert_close(theirs, ours, "transformers' logits")


@pytest.mark.parametrize("bias", [True, False])
def test_import_hf_round_trips_exactly(tmp_path, bias):
    gpt = make_gpt(bias=bias)
    write_ckpt(gpt, tmp_path / "ckpt")
    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "hf").iterdir()}
    assert len(set(modes.values())) == 1, f"the exported files' modes differ: {modes}"
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, meta, _ = load_dense(str(tmp_path / "back"))
    assert meta["tokenizer"] == "byte"
    for k, v in gpt.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert load_hf(str(tmp_path / "hf"))[0].config == back.config


def test_import_and_export_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "config.json cannot be read" in capsys.readouterr().err
    (tmp_path / "empty" / "config.json").write_text(
        '{"model_type": "gpt2", "n_positions": 8, "vocab_size": 50257, "n_layer": 1, '
        '"n_head": 1, "n_embd": 8}')
    assert main(["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no model.safetensors nor model.safetensors.index.json" in \
        capsys.readouterr().err
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    assert main(["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "only pytorch_model.bin: tpgpt reads safetensors, never pickles" in \
        capsys.readouterr().err
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "bert"}')
    assert main(["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "is a 'bert' model: tpgpt imports LlamaForCausalLM" in capsys.readouterr().err
    gpt = make_gpt()
    write_ckpt(gpt, tmp_path / "ckpt")
    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 2
    assert "already holds an exported model (model.safetensors): pass --force" in \
        capsys.readouterr().err


@pytest.mark.numerics
def test_a_gpt2_saved_by_transformers_imports_with_its_logits(tmp_path, batch):
    """OpenAI's GPT-2 layout as transformers writes it (tanh GELU, 'gelu_new', biases): tpgpt
    computes its logits, dense and sharded, and exports it back as 'gelu_new'."""
    transformers = pytest.importorskip("transformers", reason="transformers (test extra) missing")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=96, n_positions=16,
        activation_function="gelu_new")).eval()
    hf.save_pretrained(str(tmp_path / "hf"))  # config.json + model.safetensors
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ck")]) == 0
    gpt, meta, _ = load_dense(str(tmp_path / "ck"))
    assert gpt.config.activation == "gelu_tanh" and meta["tokenizer"] == "tiktoken:gpt2"
    idx, _ = batch
    with torch.no_grad():
        theirs = hf.double()(idx).logits
        ours = gpt.double()(idx, idx)[0]
        sharded = ParallelGPT.from_dense(gpt, tp=2)(idx, idx)[0]
    assert_close(ours, theirs, "tpgpt's logits of the imported GPT-2")
    assert_close(sharded, theirs, "tp=2's logits of the imported GPT-2")
    assert main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "re")]) == 0
    again = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "re")).eval()
    assert again.config.activation_function == "gelu_new"


def test_an_import_given_its_data_evaluates_as_the_original(text_data, tmp_path, capsys):
    """import-hf --data-dir records the data: eval then needs no --data-dir and scores the
    round-tripped model exactly as the checkpoint it was exported from."""
    import json

    from conftest import tiny_train_overrides
    data, _ = text_data
    args = tiny_train_overrides(data, tmp_path / "out", max_iters=10)
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in args.items()]]) == 0
    assert main(["export", "--ckpt", str(tmp_path / "out"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back"),
                 "--data-dir", data]) == 0
    capsys.readouterr()
    losses = []
    for ckpt in ("out", "back"):
        assert main(["eval", "--ckpt", str(tmp_path / ckpt), "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert losses[0] == losses[1]
