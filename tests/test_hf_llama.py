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
import shutil

import numpy as np
import pytest
import torch

from conftest import assert_close, synthetic_text
from hf_dirs import ARCHS, BLOCK, make_hf_dir, train_sentencepiece
from test_llama import rmsnorm_in_the_input_dtype  # noqa: F401 (an autouse fixture)
from tpgpt.checkpoint.load import load_trained
from tpgpt.cli import main
from tpgpt.data import tokenizer_from_meta
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
                 "--max-new-tokens", str(NEW), "--no-stop-at-eos"]) == 0
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
        assert sample(ck, PROMPT, 1, NEW, 0.0, loaded=sharded, stop_at_eos=False) == \
            [tok.decode(want)]


def test_sample_stops_where_transformers_generate_stops(hf_dirs, tmp_path, capsys):
    """The eos_token_id of generation_config.json (over config.json's) ends a sample where
    transformers' `generate` ends it, the EOS itself not printed; --no-stop-at-eos goes on to
    --max-new-tokens. The EOS is made a token the greedy model draws (the 6th new one), so the
    stop is certain; the export writes it back."""
    path, hf, tok = hf_dirs["llama"]
    want = transformers_greedy(hf, tok)
    n_prompt = len(tok(PROMPT).input_ids)
    new = want[n_prompt:]
    k = next(i for i in range(5, NEW) if new[i] not in new[:i])  # its first time drawn
    local = tmp_path / "hf"
    shutil.copytree(path, local)
    (local / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, new[k]]}))
    config = transformers.GenerationConfig(max_new_tokens=NEW, do_sample=False,
                                           eos_token_id=[0, new[k]], pad_token_id=0)
    with torch.no_grad():
        stopped = hf.generate(tok(PROMPT, return_tensors="pt").input_ids,
                              generation_config=config)[0].tolist()
    assert stopped == want[:n_prompt + k + 1]  # transformers ends with the EOS
    ck = str(tmp_path / "ck")
    assert main(["import-hf", str(local), "--out", ck, "--dtype", "float64"]) == 0
    capsys.readouterr()
    for extra, text in (([], tok.decode(stopped[:-1])), (["--no-stop-at-eos"], tok.decode(want))):
        assert main(["sample", "--ckpt", ck, "--temperature", "0", "--prompt", PROMPT,
                     "--max-new-tokens", str(NEW), *extra]) == 0
        assert capsys.readouterr().out.split("\n", 1)[1] == text + "\n", extra
    assert main(["export", "--ckpt", ck, "--out", str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["eos_token_id"] == \
        [0, new[k]]



def test_a_sentencepiece_tokenizer_model_is_carried(tmp_path, capsys):
    """A Llama directory whose only tokenizer is a sentencepiece tokenizer.model (Llama 2's):
    the import carries it (converted by transformers to the tokenizers library's form); it
    encodes as sentencepiece itself does (BOS first; bytes for characters it never saw) and
    decodes back; greedy `tpgpt sample` prints transformers' generate text with transformers'
    own tokenizer of the directory; `prepare text` tokenizes with it; the export's tokenizer
    gives transformers the same ids."""
    pytest.importorskip("sentencepiece")
    path = tmp_path / "hf"
    path.mkdir()
    sp = train_sentencepiece(str(path))
    hf, _ = make_hf_dir(str(path), "llama", tokenizer=False, vocab_size=sp.vocab_size(),
                        bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    assert sorted(p.name for p in path.iterdir() if "token" in p.name) == \
        ["tokenizer.model", "tokenizer_config.json"]
    ck = str(tmp_path / "ck")
    assert main(["import-hf", str(path), "--out", ck, "--dtype", "float64"]) == 0
    loaded = load_trained(ck)
    tok = tokenizer_from_meta(loaded.meta)
    texts = [PROMPT, "Hello, 1234 wörld: ünseen ✓ 漢字", "two  spaces\nand a newline"]
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode(texts[1])), \
        "no byte fallback exercised"
    for text in texts:
        ids = sp.encode(text)
        assert tok.encode(text) == [sp.bos_id(), *ids], text
        assert tok.encode_stream(text) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok.eos_ids == (sp.eos_id(),)
    fast = transformers.AutoTokenizer.from_pretrained(str(path))
    # leading spaces: transformers' conversion prepends one '▁' fewer than sentencepiece does
    # (its Metaspace 'first' scheme); tpgpt tokenizes as transformers does
    assert tok.encode("  x") == fast("  x").input_ids
    want = transformers_greedy(hf.double(), fast)
    capsys.readouterr()
    assert main(["sample", "--ckpt", ck, "--temperature", "0", "--prompt", PROMPT,
                 "--max-new-tokens", str(NEW), "--no-stop-at-eos"]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == fast.decode(want) + "\n"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts * 40))
    assert main(["prepare", "text", "--input", str(corpus), "--tokenizer", ck,
                 "--out", str(tmp_path / "data")]) == 0
    assert main(["eval", "--ckpt", ck, "--data-dir", str(tmp_path / "data")]) == 0
    assert main(["export", "--ckpt", ck, "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert [back(t).input_ids for t in texts] == [fast(t).input_ids for t in texts]


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


def test_the_spd_tools_run_on_an_imported_llama(hf_dirs, tmp_path, capsys):
    """sensitivity's greedy plan at tp=4 (each of the 2 KV heads on 2 ranks), convert to it with
    head grouping (query heads regrouped among their KV head's replicas; the dense function
    kept), distill the student against the import, and eval each: the dropped-sync path on a
    model that came from transformers."""
    path = hf_dirs["qwen3"][0]
    (tmp_path / "text.txt").write_text(synthetic_text(3000, seed=6))
    assert main(["prepare", "text", "--input", str(tmp_path / "text.txt"), "--tokenizer", path,
                 "--out", str(tmp_path / "data")]) == 0
    ck = imported(hf_dirs, "qwen3", tmp_path, "--data-dir", str(tmp_path / "data"))
    capsys.readouterr()
    assert main(["sensitivity", "--ckpt", ck, "--tp", "4", "--tokens", "512", "--budget", "2",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan.startswith("bits:") and plan.count("1") == 2
    assert main(["convert", "--ckpt", ck, "--sync", plan, "--tp", "4", "--tokens", str(10 ** 9),
                 "--head-grouping", "--json", "--out", str(tmp_path / "student")]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["dense_logits_max_diff"] < 1e-12  # float64
    for d in c["head_grouping"]:  # rank r's query heads all use KV head r // 2
        assert [{h // 4 for h in g} for g in d["groups"]] == [{0}, {0}, {1}, {1}]
    assert main(["eval", "--ckpt", str(tmp_path / "student"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(c["loss_grouped"],
                                                                      rel=1e-12)
    assert main(["distill", "--ckpt", str(tmp_path / "student"), "--teacher", ck, "--steps", "4",
                 "--kl-steps", "2", "--batch-size", "2", "--tokens", "512", "--out",
                 str(tmp_path / "distilled"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps_done"] == 6
    assert main(["eval", "--ckpt", str(tmp_path / "distilled"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["tp"], r["bits"]) == (4, plan.removeprefix("bits:"))


def test_bench_decode_runs_an_imported_checkpoint(hf_dirs, tmp_path):
    """bench decode --ckpt: the checkpoint's own shape and weights, at tp=2 under torchrun, its
    tokens checked against transformers' generate of the same weights."""
    from dist_common import torchrun
    assert main(["import-hf", hf_dirs["mistral"][0], "--out", str(tmp_path / "ck")]) == 0
    torchrun(2, "-m", ["tpgpt", "bench", "decode", "--ckpt", str(tmp_path / "ck"), "--plans",
                       "tp", "spd", "--batches", "1", "--rounds", "1", "--prompt-len", "8",
                       "--new-tokens", "4", "--no-cache-tokens", "2", "--repeats", "2",
                       "--out", str(tmp_path / "decode")], timeout=240)
    r = json.loads((tmp_path / "decode.json").read_text())
    (run,) = r["shapes"]["ck"]["runs"]
    assert r["shapes"]["ck"]["config"]["n_kv_head"] == 2 and run["tokens_checked"] is True
    assert "transformers Llama generate, KV cache" in run["references"]
