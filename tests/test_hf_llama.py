"""Hugging Face directories of the Llama family in and out, against transformers itself: a
Llama (sharded safetensors, Llama 3 rope scaling), Mistral, Qwen2 and Qwen3 saved here by
transformers with random weights and grouped-query attention, a tokenizer trained here beside
each. Imported, tpgpt's greedy sample is transformers' greedy `generate` text (dense, and at
simulated tp 2 and 4 with every sync on: KV heads replicated at 4), its eval loss is
transformers' loss on the same tokens (float64), and its export loads back in transformers as
the same architecture with equal logits and the same tokenizer."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import assert_close, synthetic_text
from hf_dirs import ARCHS, BLOCK, make_hf_dir
from test_llama import rmsnorm_in_the_input_dtype  # noqa: F401 (an autouse fixture)
from tpgpt.checkpoint.load import load_trained
from tpgpt.cli import main
from tpgpt.inference.sample import sample
from tpgpt.model import ParallelGPT

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.numerics
PROMPT, NEW = "the king shall", 14


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """arch -> (directory, transformers' model in float64, its tokenizer); Qwen2's vocabulary
    padded past its tokenizer's, as Qwen's is."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, arch in enumerate(ARCHS):
        model, tok = make_hf_dir(str(root / arch), arch, seed=i,
                                 vocab_pad=8 if arch == "qwen2" else 0)
        out[arch] = (str(root / arch), model.double(), tok)
    return out


def imported(hf_dirs, arch, tmp_path, *extra):
    path = hf_dirs[arch][0]
    assert main(["import-hf", path, "--out", str(tmp_path / "ck"), "--dtype", "float64",
                 *extra]) == 0
    return str(tmp_path / "ck")


def transformers_greedy(hf, tok) -> list[int]:
    ids = tok(PROMPT, return_tensors="pt").input_ids
    config = transformers.GenerationConfig(max_new_tokens=NEW, do_sample=False,
                                           eos_token_id=None, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        out = hf.generate(ids, generation_config=config)
    assert out.shape[1] == ids.shape[1] + NEW, "transformers stopped early"
    return out[0].tolist()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_sample_is_transformers_generate(hf_dirs, arch, tmp_path, capsys):
    ck = imported(hf_dirs, arch, tmp_path)
    _, hf, tok = hf_dirs[arch]
    want = transformers_greedy(hf, tok)
    capsys.readouterr()
    assert main(["sample", "--ckpt", ck, "--temperature", "0", "--prompt", PROMPT,
                 "--max-new-tokens", str(NEW)]) == 0
    printed = capsys.readouterr().out.split("\n", 1)[1]
    assert printed == tok.decode(want) + "\n"
    loaded = load_trained(ck)
    assert loaded.mode == "dense" and loaded.model.transformer.wte.weight.dtype == torch.float64
    for tp in (2, 4):  # every sync on: the same function, run sharded
        sharded = dataclasses.replace(loaded, mode="simulated",
                                      model=ParallelGPT.from_dense(loaded.model, tp=tp).eval())
        ids = tok(PROMPT, return_tensors="pt").input_ids
        got = sharded.model.generate(ids, NEW, temperature=0.0)[0].tolist()
        assert got == want, f"tp={tp}"
        assert sample(ck, PROMPT, 1, NEW, 0.0, loaded=sharded) == [tok.decode(want)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eval_is_transformers_loss_on_the_same_tokens(hf_dirs, arch, tmp_path, capsys):
    path, hf, tok = hf_dirs[arch]
    (tmp_path / "text.txt").write_text(synthetic_text(1500, seed=5))
    assert main(["prepare", "text", "--input", str(tmp_path / "text.txt"), "--tokenizer", path,
                 "--out", str(tmp_path / "data")]) == 0
    ck = imported(hf_dirs, arch, tmp_path, "--data-dir", str(tmp_path / "data"))
    capsys.readouterr()
    assert main(["eval", "--ckpt", ck, "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    val = np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16).astype(np.int64)
    text = synthetic_text(1500, seed=5)  # the last tenth, tokenized as a stream (no BOS)
    assert val.tolist() == tok(text[int(len(text) * 0.9):], add_special_tokens=False).input_ids
    n = (len(val) - 1) // BLOCK
    x = torch.from_numpy(val[:n * BLOCK]).view(n, BLOCK)
    y = torch.from_numpy(val[1:n * BLOCK + 1]).view(n, BLOCK)
    with torch.no_grad():
        logits = hf(x).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    assert ours["tokens"] == n * BLOCK
    assert_close(torch.tensor(ours["loss"], dtype=torch.float64), want, f"{arch} eval loss")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_loads_back_in_transformers(hf_dirs, arch, tmp_path):
    path, hf, tok = hf_dirs[arch]
    ck = imported(hf_dirs, arch, tmp_path)
    assert main(["export", "--ckpt", ck, "--out", str(tmp_path / "back")]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"))
    assert type(again) is type(hf)
    assert again.config.num_key_value_heads == hf.config.num_key_value_heads
    idx = torch.randint(0, hf.config.vocab_size, (2, BLOCK),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(again.double()(idx).logits, hf(idx).logits, f"{arch} exported logits")
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert back_tok(PROMPT).input_ids == tok(PROMPT).input_ids
    assert back_tok.bos_token == "<s>" and back_tok.eos_token == "</s>"
