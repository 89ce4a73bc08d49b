"""Data preparation and loading."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE, needs_shakespeare
from tpgpt.cli import main
from tpgpt.data import (ByteTokenizer, CharTokenizer, TokenFile, load_meta, prepare_openwebtext,
                        prepare_shakespeare_char, prepare_text)
from tpgpt.errors import ConfigError


@needs_shakespeare
def test_shakespeare_char_as_nanogpt_prepares_it(tmp_path):
    meta = prepare_shakespeare_char(str(tmp_path / "sc"), SHAKESPEARE)
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == \
        (65, 1_003_854, 111_540)
    train = np.fromfile(tmp_path / "sc" / "train.bin", dtype=np.uint16)
    tok = CharTokenizer(meta["chars"])
    assert tok.decode(train[:14].tolist()) == "First Citizen:"
    assert json.loads((tmp_path / "sc" / "meta.json").read_text())["chars"][:3] == "\n !"


@needs_shakespeare
def test_shakespeare_from_the_environment_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TPGPT_SHAKESPEARE", SHAKESPEARE)
    assert main(["prepare", "shakespeare_char", "--out", str(tmp_path / "sc")]) == 0
    assert "1,003,854 train and 111,540 val tokens" in capsys.readouterr().out


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TPGPT_SHAKESPEARE", raising=False)
    monkeypatch.setattr("tpgpt.data.prepare.SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    assert main(["prepare", "shakespeare_char", "--out", str(tmp_path / "sc")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot download Tiny Shakespeare" in err and "--input FILE" in err
    assert not (tmp_path / "sc" / "train.bin").exists()


def test_wrong_corpus_is_refused(tmp_path):
    f = tmp_path / "other.txt"
    f.write_text("not shakespeare")
    with pytest.raises(ConfigError, match="is not Tiny Shakespeare .* use 'tpgpt prepare text'"):
        prepare_shakespeare_char(str(tmp_path / "sc"), str(f))


@pytest.mark.parametrize("tokenizer,vocab", [("char", None), ("byte", 256)])
def test_prepare_text(tmp_path, tokenizer, vocab):
    f = tmp_path / "t.txt"
    text = "héllo wörld\n" * 100
    f.write_text(text, encoding="utf-8")
    meta = prepare_text(str(tmp_path / "d"), str(f), tokenizer, 0.2)
    assert meta["vocab_size"] == (vocab or len(set(text)))
    train = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "d" / "val.bin", dtype=np.uint16)
    tok = CharTokenizer(meta["chars"]) if tokenizer == "char" else ByteTokenizer()
    assert tok.decode(train.tolist() + val.tolist()) == text
    assert load_meta(str(tmp_path / "d"))["tokenizer"] == tokenizer


def test_prepared_data_is_never_overwritten_silently(tmp_path, text_data):
    _, src = text_data
    prepare_text(str(tmp_path / "d"), src)
    with pytest.raises(ConfigError, match="already holds a prepared dataset: pass --force"):
        prepare_text(str(tmp_path / "d"), src)
    prepare_text(str(tmp_path / "d"), src, force=True)


def test_openwebtext_pipeline_on_a_local_dataset(tmp_path):
    """The OpenWebText code path with a tiny local dataset and a byte-level BPE that needs no
    download (the real run loads the hub's openwebtext and GPT-2's BPE)."""
    datasets = pytest.importorskip("datasets", reason="the openwebtext extra is not installed")
    tiktoken = pytest.importorskip("tiktoken", reason="the openwebtext extra is not installed")
    docs = [f"document {i}: " + "words " * (i % 7 + 1) for i in range(200)]
    enc = tiktoken.Encoding(name="bytes", pat_str=r"\S+|\s+",
                            mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={"<|endoftext|>": 256})
    meta = prepare_openwebtext(str(tmp_path / "owt"), dataset=datasets.Dataset.from_dict(
        {"text": docs}), encoding=enc, val_fraction=0.05)
    train = np.fromfile(tmp_path / "owt" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "owt" / "val.bin", dtype=np.uint16)
    assert meta["tokenizer"] == "tiktoken:bytes" and meta["vocab_size"] == 257
    assert (train == 256).sum() == 190 and (val == 256).sum() == 10  # one EOT per document
    assert train.size + val.size == sum(len(d.encode()) + 1 for d in docs)


def test_batches_are_reproducible_and_shifted(text_data):
    data, _ = text_data
    f = TokenFile(os.path.join(data, "train.bin"), 16, 100)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    o1, o2 = f.random_offsets((3, 4), g1), f.random_offsets((3, 4), g2)
    assert torch.equal(o1, o2)
    x, y = f.batch(o1[0])
    assert x.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    raw = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16)
    i = int(o1[0, 0])
    assert x[0].tolist() == raw[i:i + 16].tolist()


def test_token_file_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match="truncated: 3 bytes"):
        TokenFile(str(tmp_path / "odd.bin"), 4, 10)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds 0 tokens, too few for block_size=4"):
        TokenFile(str(tmp_path / "empty.bin"), 4, 10)
    with pytest.raises(ConfigError, match="is missing"):
        TokenFile(str(tmp_path / "nope.bin"), 4, 10)


def test_char_tokenizer_rejects_unknown_characters():
    with pytest.raises(ConfigError, match="outside the vocabulary: 'z'"):
        CharTokenizer("abc").encode("abz")


def test_a_vocabulary_past_uint16_writes_uint32_token_files(tmp_path):
    """Llama 3's 128,256 or Qwen's 151,936 tokens do not fit nanoGPT's uint16 files."""
    from tpgpt.data.prepare import write_dataset
    from tpgpt.data.tokenizers import Tokenizer
    from tpgpt.data.tokens import check_tokens_in_vocab, token_dtype

    class Wide(Tokenizer):
        name, vocab_size = "byte", 128_256  # the meta's kind is irrelevant here
    ids = np.arange(65_530, 65_530 + 200) % 128_256
    meta = write_dataset(str(tmp_path), Wide(), ids, ids[:50], "test")
    assert meta["token_dtype"] == "uint32" and token_dtype(meta) is np.uint32
    f = TokenFile(str(tmp_path / "train.bin"), 8, 128_256, token_dtype(meta))
    x, y = f.batch(torch.tensor([0, 100]))
    assert x[0].tolist() == ids[:8].tolist() and y[1].tolist() == ids[101:109].tolist()
    check_tokens_in_vocab(f.path, 128_256, dtype=f.dtype)
    with pytest.raises(ConfigError, match="holds token id 65729, outside the vocabulary"):
        check_tokens_in_vocab(f.path, 65_600, dtype=f.dtype)
    assert token_dtype({}) is np.uint16  # data prepared before the field existed


def test_an_hf_tokenizer_travels_in_the_meta(tmp_path):
    """tokenizer.json whole in meta.json: rebuilt, it encodes and decodes as the library does;
    the same tokenizer is recognised by its sha256."""
    pytest.importorskip("transformers")
    from hf_dirs import train_tokenizer
    from tpgpt.data import HFTokenizer, tokenizer_from_meta
    from tpgpt.data.tokens import check_same_tokenizer

    lib = train_tokenizer()
    tok = HFTokenizer(lib.to_str())
    meta = json.loads(json.dumps(tok.meta()))
    again = tokenizer_from_meta(meta)
    text = "the king shall speak"
    assert again.encode(text) == lib.encode(text).ids and again.encode(text)[0] == \
        lib.token_to_id("<s>")
    assert again.encode_stream(text) == lib.encode(text, add_special_tokens=False).ids
    assert again.decode(again.encode_stream(text)) == text
    check_same_tokenizer("d", meta, tok.meta(), "m")
    other = HFTokenizer(train_tokenizer(vocab_size=280).to_str()).meta()
    with pytest.raises(ConfigError, match="tokenized differently .* hf tokenizer [0-9a-f]{12}"):
        check_same_tokenizer("d", other, meta, "m")
