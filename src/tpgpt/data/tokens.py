"""Reading a prepared dataset: meta.json, and batches from the token files by memory map.

A prepared dataset is a directory with `train.bin` and `val.bin` (uint16 tokens) and
`meta.json` (see prepare.py).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import ConfigError
from .tokenizers import describe_tokenizer, tokenizer_from_meta

# what must agree for a model and a dataset to share one tokenizer
TOKENIZER_KEYS = ("tokenizer", "vocab_size", "chars", "tokenizer_sha256")
# token files hold uint16 ids (nanoGPT's) unless the vocabulary needs more (meta "token_dtype")
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_dtype(meta: dict):
    """The numpy dtype of a dataset's token files (meta.json's token_dtype; uint16 before it
    existed)."""
    name = meta.get("token_dtype", "uint16")
    if name not in TOKEN_DTYPES:
        raise ConfigError(f"meta.json's token_dtype={name!r} is invalid: choose uint16 or uint32")
    return TOKEN_DTYPES[name]


def check_same_tokenizer(data_dir: str, data_meta: dict, model_meta: dict, model: str) -> None:
    """Refuse `data_dir` (its meta.json `data_meta`) unless it is tokenized as `model` (words
    naming it: "the checkpoint out/x") is, by its tokenizer entry `model_meta`."""
    if {k: data_meta.get(k) for k in TOKENIZER_KEYS} != \
            {k: model_meta.get(k) for k in TOKENIZER_KEYS}:
        raise ConfigError(f"{data_dir} is tokenized differently from {model} "
                          f"({describe_tokenizer(data_meta)}, vocab "
                          f"{data_meta.get('vocab_size')} vs {describe_tokenizer(model_meta)}, "
                          f"vocab {model_meta.get('vocab_size')}): use data tokenized as the "
                          f"model is ('tpgpt prepare text --tokenizer' tokenizes with a "
                          f"model's own)")


def load_meta(data_dir: str) -> dict:
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isdir(data_dir):
        raise ConfigError(f"data_dir {data_dir} does not exist: run 'tpgpt prepare' first")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: run 'tpgpt prepare' for this data_dir") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) \
            or meta["vocab_size"] < 1:
        raise ConfigError(f"{path} has no positive integer vocab_size")
    tokenizer_from_meta(meta)  # checks the tokenizer entry
    token_dtype(meta)
    if meta["tokenizer"] == "char" and len(meta["chars"]) != meta["vocab_size"]:
        raise ConfigError(f"{path}: {len(meta['chars'])} chars but vocab_size={meta['vocab_size']}")
    return meta


class TokenFile:
    """One split of tokens (uint16, or uint32 for a vocabulary past 65536), read by memory
    map; opened anew per batch as nanoGPT does (a long-lived np.memmap keeps every page it
    touched in memory)."""

    def __init__(self, path: str, block_size: int, vocab_size: int, dtype=np.uint16):
        if not os.path.exists(path):
            raise ConfigError(f"{path} is missing: run 'tpgpt prepare' for this data_dir")
        size, width = os.path.getsize(path), np.dtype(dtype).itemsize
        if size % width:
            raise ConfigError(f"{path} is truncated: {size} bytes is not a whole number of "
                              f"{np.dtype(dtype).name} tokens")
        self.path, self.n, self.dtype = path, size // width, dtype
        if self.n <= block_size + 1:
            raise ConfigError(f"{path} holds {self.n} tokens, too few for block_size="
                              f"{block_size}: it needs more than {block_size + 1}")
        self.block_size = block_size
        self.vocab_size = vocab_size

    def batch(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        T = self.block_size
        rows = np.stack([data[i:i + T + 1] for i in offsets.tolist()]).astype(np.int64)
        xy = torch.from_numpy(rows)
        return xy[:, :-1], xy[:, 1:]

    def random_offsets(self, shape, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.n - self.block_size, shape, generator=generator)


def check_tokens_in_vocab(path: str, vocab_size: int, limit: int = 50_000_000,
                          dtype=np.uint16) -> None:
    """Every token id < vocab_size (checked in full up to `limit` tokens, else the first ones)."""
    data = np.memmap(path, dtype=dtype, mode="r")
    top = int(data[:limit].max()) if data.size else 0
    if top >= vocab_size:
        raise ConfigError(f"{path} holds token id {top}, outside the vocabulary of "
                          f"meta.json (vocab_size={vocab_size}): the files do not match")


def resolve_vocab_size(cfg, default: int) -> int:
    """The vocabulary a config trains with: its own vocab_size, else its data's (padded to a
    multiple of tp when vocab-parallel, as training does), else `default`."""
    vocab = cfg.vocab_size
    if not vocab and os.path.isfile(os.path.join(cfg.data_dir, "meta.json")):
        vocab = load_meta(cfg.data_dir)["vocab_size"]
        if cfg.vocab_parallel:
            vocab = -(-vocab // cfg.tp) * cfg.tp
    return vocab or default
