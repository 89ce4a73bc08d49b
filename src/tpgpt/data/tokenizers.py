"""Tokenizers: characters (nanoGPT's Shakespeare), UTF-8 bytes, a tiktoken BPE (GPT-2), or a
Hugging Face tokenizer (a model directory's tokenizer.json, through the `tokenizers` library).

A prepared dataset names its tokenizer in meta.json; `tokenizer_from_meta` rebuilds it. An HF
tokenizer travels whole inside the meta (its tokenizer.json text, and tokenizer_config.json for
the export back), so a checkpoint, its data and its export carry the same one; two are the same
tokenizer when the sha256 of that text agrees.
"""
from __future__ import annotations

import hashlib

from ..errors import ConfigError


class Tokenizer:
    name = "?"
    vocab_size = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_stream(self, text: str) -> list[int]:
        """`text` without the special tokens a tokenizer adds around a whole text (a
        continuation, a part of a prompt); the same as encode for those that add none."""
        return self.encode(text)

    def decode(self, ids) -> str:
        raise NotImplementedError

    def meta(self) -> dict:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size}

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The tokens that end a text (sampling stops at one); none for characters or bytes."""
        return ()

    @property
    def bos_id(self) -> int | None:
        """The token that begins a text (lm-eval conditions an empty context on it), if any."""
        return None


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

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eot = getattr(self.enc, "eot_token", None)  # GPT-2's <|endoftext|>, 50256
        return () if eot is None else (eot,)


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer from its tokenizer.json text. `encode` tokenizes a prompt as
    transformers' `tokenizer(text)` does (the post-processor's special tokens, e.g. Llama's
    BOS, included); `encode_stream` tokenizes a corpus without them. `decode` keeps special
    tokens, as transformers' `decode` does by default."""

    name = "hf"

    def __init__(self, tokenizer_json: str, tokenizer_config: dict | None = None,
                 eos_ids: list[int] | None = None):
        from tokenizers import Tokenizer as _Tokenizer

        try:
            self.tok = _Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library raises its own Exception subclass
            raise ConfigError(f"the tokenizer.json cannot be read by the tokenizers library: "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
                              ) from None
        self.json, self.config = tokenizer_json, tokenizer_config or {}
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = None if eos_ids is None else tuple(eos_ids)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The model's eos_token_id(s) (generation_config.json, else config.json), recorded at
        import; else the tokenizer_config's eos_token."""
        if self.eos_token_ids is not None:
            return self.eos_token_ids
        token = self._config_token("eos_token")
        return () if token is None else (token,)

    @property
    def bos_id(self) -> int | None:
        """The tokenizer_config's bos_token (Llama's <s>), if it names one."""
        return self._config_token("bos_token")

    def _config_token(self, name: str) -> int | None:
        """The id of the token tokenizer_config.json names under `name` (a string or an
        AddedToken dict), None when it names none or one the vocabulary lacks."""
        token = self.config.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        return self.tok.token_to_id(token) if isinstance(token, str) else None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json.encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_stream(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def meta(self) -> dict:
        return {**super().meta(), "tokenizer_sha256": self.sha256,
                "hf_tokenizer_json": self.json, "hf_tokenizer_config": self.config,
                **({} if self.eos_token_ids is None
                   else {"eos_token_ids": list(self.eos_token_ids)})}


def hf_tokenizer_from_dir(path: str) -> HFTokenizer | None:
    """The tokenizer saved beside a Hugging Face model: its tokenizer.json, or a sentencepiece
    tokenizer.model converted by transformers' fast tokenizer; None when it has neither."""
    import json
    import os

    config = {}
    cfg_file = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfg_file):
        try:
            with open(cfg_file) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{cfg_file} cannot be read: {e}") from None
        # the parts an export writes back; a tokenizer's added-token table is in its json
        config = {k: v for k, v in config.items() if k != "added_tokens_decoder"}
    file = os.path.join(path, "tokenizer.json")
    if os.path.exists(file):
        try:
            with open(file, encoding="utf-8") as f:
                return HFTokenizer(f.read(), config)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file} cannot be read: {e}") from None
    if not os.path.exists(os.path.join(path, "tokenizer.model")):
        return None
    try:  # sentencepiece's model, converted to the tokenizers library's form by transformers
        from transformers import AutoTokenizer
        fast = AutoTokenizer.from_pretrained(path, use_fast=True)
        text = fast.backend_tokenizer.to_str()
    except Exception as e:  # ImportError (sentencepiece, protobuf) or the conversion's own
        raise ConfigError(f"{path}/tokenizer.model (sentencepiece) cannot be converted to a "
                          f"tokenizer.json by transformers ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}): install "
                          f"sentencepiece and protobuf, or save the tokenizer's tokenizer.json"
                          ) from None
    return HFTokenizer(text, config)


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if isinstance(kind, str) and kind.startswith("tiktoken:"):
        return TiktokenTokenizer(kind.split(":", 1)[1])
    if kind == "hf":
        if not isinstance(meta.get("hf_tokenizer_json"), str):
            raise ConfigError("meta.json names an hf tokenizer but holds no hf_tokenizer_json")
        return HFTokenizer(meta["hf_tokenizer_json"], meta.get("hf_tokenizer_config"),
                           meta.get("eos_token_ids"))
    raise ConfigError(f"meta.json names an unknown tokenizer {kind!r}: expected char, byte, "
                      f"tiktoken:<name> or hf")


def describe_tokenizer(meta: dict) -> str:
    """A tokenizer in a few words (never its whole vocabulary)."""
    kind = meta.get("tokenizer")
    if kind == "hf":
        return f"hf tokenizer {str(meta.get('tokenizer_sha256'))[:12]}"
    return str(kind)
