"""Datasets: tokenizers, `tpgpt prepare`, and batches read from prepared token files."""
from .prepare import (SHAKESPEARE_ENV, prepare_openwebtext, prepare_shakespeare_char,
                      prepare_text)
from .tokenizers import ByteTokenizer, CharTokenizer, TiktokenTokenizer, tokenizer_from_meta
from .tokens import TokenFile, check_tokens_in_vocab, load_meta, resolve_vocab_size

__all__ = ["SHAKESPEARE_ENV", "prepare_openwebtext", "prepare_shakespeare_char", "prepare_text",
           "ByteTokenizer", "CharTokenizer", "TiktokenTokenizer", "tokenizer_from_meta",
           "TokenFile", "check_tokens_in_vocab", "load_meta", "resolve_vocab_size"]
