"""Small Hugging Face model directories made here, as a user's would be: transformers'
save_pretrained of a Llama, Mistral, Qwen2 or Qwen3 with random weights (grouped-query
attention), and a byte-level BPE tokenizer trained here with the `tokenizers` library, saved
beside it by transformers' fast tokenizer (BOS added to a prompt, as Llama's does); or a
sentencepiece model trained here, saved as tokenizer.model alone, as Llama 2's directories are."""
from __future__ import annotations

import json
import os

import torch

from conftest import synthetic_text

BLOCK = 32
ARCHS = {  # name: (transformers prefix, its config fields)
    # untied, Llama 3's rope scaling; saved in shards (model.safetensors.index.json)
    "llama": ("Llama", dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "mistral": ("Mistral", dict(tie_word_embeddings=False, sliding_window=BLOCK)),
    "qwen2": ("Qwen2", dict(tie_word_embeddings=True)),  # q/k/v biases
    "qwen3": ("Qwen3", dict(tie_word_embeddings=True, head_dim=16)),  # q/k norms, wider heads
}


def train_tokenizer(vocab_size: int = 300):
    """A byte-level BPE like Llama 3's and Qwen's, with <s> and </s>, BOS before a prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([synthetic_text(4000, seed=3)], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def train_sentencepiece(path: str, vocab_size: int = 400):
    """A sentencepiece BPE like Llama 2's (byte fallback, digits split, a dummy prefix, no
    normalization: spaces kept as written), trained
    here and saved as the directory's only tokenizer: tokenizer.model, and a tokenizer_config.json
    naming LlamaTokenizer (BOS before a prompt). Returns sentencepiece's own processor."""
    import io

    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_text(4000, seed=3).splitlines()), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1,
        minloglevel=2)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, f)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def make_hf_dir(path: str, arch: str, seed: int = 0, tokenizer: bool = True,
                vocab_pad: int = 0, **overrides):
    """Write the directory; returns transformers' model (float32, eval) and fast tokenizer.
    `overrides`: config fields (vocab_size and the BOS/EOS ids of a tokenizer the caller saves
    beside it, with tokenizer=False)."""
    import transformers
    prefix, fields = ARCHS[arch]
    tok = train_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>")
    config = getattr(transformers, prefix + "Config")(**{
        **dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
               intermediate_size=96, num_hidden_layers=2, vocab_size=len(fast) + vocab_pad,
               max_position_embeddings=BLOCK, rms_norm_eps=1e-6, bos_token_id=fast.bos_token_id,
               eos_token_id=fast.eos_token_id),
        **fields, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + "ForCausalLM")(config).eval()
    with torch.no_grad():  # norms and biases start at 1 and 0: move them, so they count
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, max_shard_size="100KB" if arch == "llama" else "50GB")
    if tokenizer:
        fast.save_pretrained(path)
    return model, fast


def edit_config(path: str, **changes) -> None:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
