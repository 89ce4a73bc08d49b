"""`tpgpt prepare`: tokenize a corpus into train.bin, val.bin (uint16 tokens, as nanoGPT writes
them) and meta.json (the tokenizer and vocabulary: JSON, never a pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request

import numpy as np

from ..errors import ConfigError
from .tokenizers import ByteTokenizer, CharTokenizer, TiktokenTokenizer, Tokenizer

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_ENV = "TPGPT_SHAKESPEARE"  # a local copy of the corpus, used when --input is not given


def _check_out_dir(out: str, force: bool) -> None:
    """Refuse to replace a prepared dataset; the directory is created only when writing."""
    if os.path.exists(os.path.join(out, "train.bin")) and not force:
        raise ConfigError(f"{out} already holds a prepared dataset: pass --force to replace it")


def _write_split(out: str, name: str, ids, dtype) -> int:
    arr = np.asarray(ids, dtype=dtype)
    tmp = os.path.join(out, f".{name}.bin.tmp")
    arr.tofile(tmp)
    os.replace(tmp, os.path.join(out, f"{name}.bin"))  # never a half-written file
    return int(arr.size)


def _write_meta(out: str, meta: dict) -> None:
    tmp = os.path.join(out, ".meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(out, "meta.json"))


def write_dataset(out: str, tok: Tokenizer, train_ids, val_ids, source: str) -> dict:
    """uint16 token files (nanoGPT's), uint32 when the vocabulary is larger (Llama 3, Qwen)."""
    wide = tok.vocab_size > 65536
    os.makedirs(out, exist_ok=True)
    n_train = _write_split(out, "train", train_ids, np.uint32 if wide else np.uint16)
    n_val = _write_split(out, "val", val_ids, np.uint32 if wide else np.uint16)
    meta = {**tok.meta(), "train_tokens": n_train, "val_tokens": n_val, "source": source,
            **({"token_dtype": "uint32"} if wide else {})}
    _write_meta(out, meta)
    return meta


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def fetch_shakespeare(input_path: str | None) -> str:
    """The corpus from --input, $TPGPT_SHAKESPEARE, or a download; its sha256 is checked."""
    path = input_path or os.environ.get(SHAKESPEARE_ENV)
    if path:
        if not os.path.exists(path):
            _missing(path)
        with open(path, "rb") as f:
            data = f.read()
        where = path
    else:
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
                data = r.read()
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(f"cannot download Tiny Shakespeare ({getattr(e, 'reason', e)}): "
                              f"pass a local copy with --input FILE or set {SHAKESPEARE_ENV}") \
                from None
        where = SHAKESPEARE_URL
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ConfigError(f"{where} is not Tiny Shakespeare (sha256 {digest[:12]}..., expected "
                          f"{SHAKESPEARE_SHA256[:12]}...): use 'tpgpt prepare text' for other text")
    return data.decode("utf-8")


def _missing(path: str):
    raise ConfigError(f"input file {path} does not exist")


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    n = int(len(text) * (1 - val_fraction))
    return text[:n], text[n:]


def prepare_shakespeare_char(out: str, input_path: str | None = None, force: bool = False) -> dict:
    """nanoGPT's character-level Tiny Shakespeare: 65 characters, first 90 % train."""
    _check_out_dir(out, force)
    text = fetch_shakespeare(input_path)
    tok = CharTokenizer.fit(text)
    train, val = split_text(text, 0.1)
    return write_dataset(out, tok, tok.encode(train), tok.encode(val), "tinyshakespeare")


def prepare_text(out: str, input_path: str, tokenizer: str | Tokenizer = "char",
                 val_fraction: float = 0.1, force: bool = False) -> dict:
    """A text file's first (1 - val_fraction) as train, the rest as val, tokenized by
    characters, bytes, or a given tokenizer (a model's own: cli/prepare.py finds it), whose
    stream has no special tokens added."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} is invalid: it must be in (0, 1)")
    if isinstance(tokenizer, str) and tokenizer not in ("char", "byte"):
        raise ConfigError(f"tokenizer {tokenizer!r} is invalid: choose char, byte, a "
                          f"checkpoint or a Hugging Face model directory")
    if not os.path.exists(input_path):
        _missing(input_path)
    _check_out_dir(out, force)
    text = read_text(input_path)
    if len(text) < 2:
        raise ConfigError(f"{input_path} is too short to split into train and val")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else \
        CharTokenizer.fit(text) if tokenizer == "char" else ByteTokenizer()
    train, val = split_text(text, val_fraction)
    encode = getattr(tok, "encode_stream", tok.encode)
    return write_dataset(out, tok, encode(train), encode(val), os.path.basename(input_path))


def prepare_openwebtext(out: str, num_proc: int = 8, force: bool = False, dataset=None,
                        encoding=None, val_fraction: float = 0.0005, seed: int = 2357) -> dict:
    """GPT-2 BPE tokens of OpenWebText (HF `datasets` + `tiktoken`), nanoGPT's split.

    `dataset` (anything with a "text" column, e.g. a `datasets.Dataset`) and `encoding` (a
    tiktoken Encoding) default to the hub's openwebtext and GPT-2's BPE, which need the network.
    Each document ends with the end-of-text token.
    """
    _check_out_dir(out, force)
    try:
        tok = TiktokenTokenizer(encoding=encoding)
        if dataset is None:
            import datasets

            dataset = datasets.load_dataset("openwebtext", num_proc=num_proc, split="train")
    except ImportError as e:
        raise ConfigError(f"prepare openwebtext needs the 'owt' extra ({e.name} is missing): "
                          f"pip install 'tpgpt[owt]'") from None
    except Exception as e:  # the hub's and tiktoken's download errors have many types
        raise ConfigError(f"cannot load OpenWebText or GPT-2's BPE ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}): this needs the "
                          f"network") from None
    eot = tok.enc.eot_token
    splits = dataset.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)

    def encode(batch):
        return {"ids": [tok.encode(t) + [eot] for t in batch["text"]]}

    ids = {name: np.concatenate([np.asarray(x, dtype=np.uint16) for x in
                                 d.map(encode, batched=True, remove_columns=["text"])["ids"]])
           for name, d in (("train", splits["train"]), ("val", splits["test"]))}
    return write_dataset(out, tok, ids["train"], ids["val"], "openwebtext")
