"""Datasets: tokenizers, `tpgpt prepare`, and batches read from prepared token files."""
from .prepare import (SHAKESPEARE_ENV, prepare_openwebtext, prepare_shakespeare_char,
                      prepare_text)
from .tokenizers import (ByteTokenizer, CharTokenizer, HFTokenizer, TiktokenTokenizer,
                         describe_tokenizer, hf_tokenizer_from_dir, tokenizer_from_meta)
from .tokens import (TokenFile, check_tokens_in_vocab, load_meta, resolve_vocab_size,
                     token_dtype)

__all__ = ["SHAKESPEARE_ENV", "prepare_openwebtext", "prepare_shakespeare_char", "prepare_text",
           "ByteTokenizer", "CharTokenizer", "HFTokenizer", "TiktokenTokenizer",
           "describe_tokenizer", "hf_tokenizer_from_dir", "tokenizer_from_meta", "TokenFile",
           "check_tokens_in_vocab", "load_meta", "resolve_vocab_size", "token_dtype"]
