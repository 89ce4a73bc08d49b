"""Tokenizers: characters (nanoGPT's Shakespeare), UTF-8 bytes, or a tiktoken BPE (GPT-2).

A prepared dataset names its tokenizer in meta.json; `tokenizer_from_meta` rebuilds it.
"""
from __future__ import annotations

from ..errors import ConfigError


class Tokenizer:
    name = "?"
    vocab_size = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def meta(self) -> dict:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size}


class CharTokenizer(Tokenizer):
    """One token per distinct character of the corpus, in sorted order (nanoGPT's)."""

    name = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self.stoi})
        if bad:
            raise ConfigError(f"text has characters outside the vocabulary: "
                              f"{''.join(bad)[:20]!r}; the vocabulary is {self.chars[:80]!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def meta(self) -> dict:
        return {**super().meta(), "chars": self.chars}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: 256 tokens, any text."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding (GPT-2 BPE for OpenWebText); `encoding` may be given directly."""

    def __init__(self, encoding_name: str = "gpt2", encoding=None):
        import tiktoken

        self.enc = encoding if encoding is not None else tiktoken.get_encoding(encoding_name)
        self.name = f"tiktoken:{self.enc.name}"
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if isinstance(kind, str) and kind.startswith("tiktoken:"):
        return TiktokenTokenizer(kind.split(":", 1)[1])
    raise ConfigError(f"meta.json names an unknown tokenizer {kind!r}: expected char, byte or "
                      f"tiktoken:<name>")
