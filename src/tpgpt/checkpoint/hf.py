"""Hugging Face interchange: `tpgpt import-hf` and `tpgpt export`, for GPT2LMHeadModel and the
Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM).

The families' adapters (config fields and tensor names) are hf_gpt2.py and hf_llama.py; the
files of a directory (config.json, single or sharded safetensors, the tokenizer) hf_files.py.
A local directory is read directly (no transformers needed, except to convert a sentencepiece
tokenizer.model); a Hub id (`gpt2`, `Qwen/Qwen2.5-0.5B`) is fetched by huggingface_hub into its
cache (config, safetensors and tokenizer files only) when the Hub is reachable, else looked up
in that cache, and then read as a directory.

The tokenizer an import carries: the directory's tpgpt_meta.json when tpgpt wrote it (an
export), else for GPT-2's own 50257-token vocabulary tiktoken's GPT-2 BPE (the same ids as its
tokenizer.json; `prepare openwebtext` tokenizes with it), else the directory's tokenizer.json
or tokenizer.model. A Llama-family directory without one is refused: nothing could encode a
prompt or check that data matches it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket

import torch

from ..errors import ConfigError
from ..model import GPT, GPTConfig
from . import hf_files
from .hf_gpt2 import from_hf_state, gpt2_config_from_hf, hf_gpt2_config, to_hf_state
from .hf_llama import from_hf_llama_state, hf_llama_config, llama_config_from_hf, \
    to_hf_llama_state
from .sharded_state import ShardedState
from .store import save_checkpoint

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
GPT2_META = {"tokenizer": "tiktoken:gpt2", "vocab_size": 50257}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model"]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hf_model_config(path: str) -> tuple[GPTConfig, dict]:
    """(the GPTConfig, the raw config.json) of a config.json or of a directory holding one,
    for its shapes only (`tpgpt plan --hf-config`: a sliding window is not refused)."""
    if os.path.isfile(path):
        where, hf = path, hf_files.read_json(path)
    elif os.path.isdir(path):
        where, hf = path, hf_files.read_config(path)
    else:
        raise ConfigError(f"--hf-config {path} is neither a config.json nor a directory")
    config = gpt2_config_from_hf(hf, where) if hf.get("model_type") == "gpt2" else \
        llama_config_from_hf(hf, where, window=False)
    return config, hf


def load_hf(path: str, dtype: str = "float32", block_size: int | None = None
            ) -> tuple[GPT, dict, dict]:
    """(the dense model, its tokenizer meta, what the source was: {"architecture",
    "sliding_window", "dtype"}) of an HF directory or Hub id. `dtype`: the weights' dtype
    here ("keep": the file's); `block_size`: a shorter context than the config's, on purpose."""
    if dtype != "keep" and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is invalid: choose keep, {', '.join(DTYPES)}")
    if block_size is not None and block_size < 1:
        raise ConfigError(f"--block-size {block_size} is invalid: it must be >= 1")
    where = path
    if not os.path.isdir(path):
        if not HUB_ID.match(path):
            raise ConfigError(f"{path} is neither a directory nor a Hugging Face Hub model id")
        path = _from_hub(path)
    hf = hf_files.read_config(path)
    gpt2 = hf.get("model_type") == "gpt2"
    config = gpt2_config_from_hf(hf, where, block_size) if gpt2 else \
        llama_config_from_hf(hf, where, block_size)
    meta = _tokenizer_meta(path, where, hf, config)
    sd = hf_files.read_weights(path)
    target = hf_files.weights_dtype(sd) if dtype == "keep" else DTYPES[dtype]
    source = {"architecture": (hf.get("architectures") or ["GPT2LMHeadModel"])[0],
              "sliding_window": hf.get("sliding_window"),
              "dtype": dtype_name(hf_files.weights_dtype(sd))}
    if gpt2:
        if "transformer.wpe.weight" in sd:  # a shorter context keeps the first positions
            sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:config.block_size]
        ours = from_hf_state(sd, config.bias)
    else:
        try:
            ours = from_hf_llama_state(sd, config)
        except KeyError as e:
            raise ConfigError(f"{where}'s weights hold {e.args[0]}, not a tensor of a "
                              f"{source['architecture']}") from None
    return _load_weights(config, ours, target, where), meta, source


def _tokenizer_meta(path: str, where: str, hf: dict, config: GPTConfig) -> dict:
    from ..data import hf_tokenizer_from_dir

    meta_file = os.path.join(path, "tpgpt_meta.json")
    if os.path.exists(meta_file):
        return hf_files.read_json(meta_file)
    gpt2 = hf.get("model_type") == "gpt2"
    if gpt2 and hf.get("vocab_size") == 50257:
        return dict(GPT2_META)
    tok = hf_tokenizer_from_dir(path)
    if tok is None:
        if gpt2:
            return dict(GPT2_META)
        raise ConfigError(f"{where} has no tokenizer.json or tokenizer.model beside its weights: "
                          f"save the model's tokenizer there (tokenizer.save_pretrained)")
    if tok.vocab_size > config.vocab_size:
        raise ConfigError(f"{where}'s tokenizer has {tok.vocab_size} tokens, more than the "
                          f"model's vocab_size={config.vocab_size}")
    tok.eos_token_ids = eos_token_ids(path, where, hf, config.vocab_size)
    return tok.meta()


def eos_token_ids(path: str, where: str, hf: dict, vocab_size: int) -> tuple[int, ...] | None:
    """The token ids that end generation, as transformers' `generate` reads them:
    generation_config.json's eos_token_id, else config.json's (one id or a list, e.g. Llama 3
    Instruct's <|end_of_text|> and <|eot_id|>); None when neither names any."""
    file = os.path.join(path, "generation_config.json")
    gen = hf_files.read_json(file) if os.path.exists(file) else {}
    for source, name in ((gen, "generation_config.json"), (hf, "config.json")):
        ids = source.get("eos_token_id")
        if ids is None:
            continue
        ids = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else ids
        if not (isinstance(ids, list) and ids and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
                for i in ids)):
            raise ConfigError(f"{where}/{name}: eos_token_id={source['eos_token_id']!r} is "
                              f"not a token id (or a list of them) below vocab_size={vocab_size}")
        return tuple(ids)
    return None


def _load_weights(config: GPTConfig, sd: dict, dtype: torch.dtype, where: str) -> GPT:
    """The dense model holding `sd` in `dtype`; a missing, extra or misshapen tensor is one
    line naming it."""
    model = GPT(config).to(dtype)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    shape = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or extra or shape:
        k = (missing or extra or shape)[0]
        if missing:
            many = len(missing) > 1
            what = (f"lack {len(missing)} tensor{'s' if many else ''} of the model its config "
                    f"describes ({k}{', ...' if many else ''})")
        elif extra:
            what = f"hold {k}, which its config has no place for"
        else:
            what = (f"hold {k} as {list(sd[k].shape)}, where its config needs "
                    f"{list(expected[k].shape)}")
        raise ConfigError(f"{where}'s weights {what}: not imported")
    model.load_state_dict(sd)
    return model


def _hub_reachable() -> bool:
    """Whether the Hub's endpoint resolves (else only the cache is tried, at once, instead of
    retrying a network that is not there)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1", "true", "yes", "on"):  # the constant is read once, when the hub is imported
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def _from_hub(name: str) -> str:
    """A Hub id's files in huggingface_hub's cache (downloaded when reachable): a directory."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"{name!r} is not a directory, and loading a Hub id needs "
                          f"huggingface_hub (pip install transformers): pass a local directory"
                          ) from None
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break the one-line rule
    try:
        return snapshot_download(name, allow_patterns=HUB_FILES,
                                 local_files_only=not _hub_reachable())
    except Exception as e:  # the hub's errors have many types (offline, missing, gated)
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(f"cannot load {name!r} from the Hugging Face Hub (offline and not in "
                          f"its cache, or not there: {first[:160]}): pass a local directory "
                          f"with config.json and model.safetensors") from None
    finally:
        hub_logger.setLevel(level)


def import_hf(path: str, out: str, data_dir: str | None = None, dtype: str = "float32",
              block_size: int | None = None) -> GPT:
    """Write an HF directory (or Hub id) as a tpgpt checkpoint (sampling, evaluation, the SPD
    tools, fine-tuning at any tp). `data_dir`, a prepared dataset with the model's tokenizer, is
    recorded as its data (what eval, sensitivity, convert and distill read unless told
    otherwise)."""
    from ..data.tokens import check_same_tokenizer, load_meta
    if os.path.exists(os.path.join(out, "state.json")):
        raise ConfigError(f"{out} already holds a checkpoint: choose another --out")
    data_meta = load_meta(data_dir) if data_dir is not None else None
    model, meta, source = load_hf(path, dtype, block_size)
    if data_dir is not None:
        check_same_tokenizer(data_dir, data_meta, meta, f"the model {path}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    held = dtype_name(model.transformer.wte.weight.dtype)
    state = {"iter": 0, "best_val_loss": None, "train_loss": None, "val_loss": None,
             "config": {"data_dir": os.path.abspath(data_dir)} if data_dir else {},
             "layout": {"world": 1, "tp": 1, "tp_procs": 1, "dp": 1},
             "model": dataclasses.asdict(model.config), "weights_dtype": held, "hf": source,
             "source": os.path.abspath(path) if os.path.isdir(path) else path}
    save_checkpoint(out, rank=0, barrier=lambda: None, sharded=ShardedState(model),
                    state=state, meta=meta, rank_state=None)
    return model


def export_hf(ckpt: str, out: str, force: bool = False, as_dense: bool = False) -> tuple[str, bool]:
    """Write a checkpoint as an HF directory of its family (GPT2LMHeadModel; Llama, Mistral,
    Qwen2, Qwen3); returns (the checkpoint directory read, whether the export computes another
    function than the trained one).

    An HF model computes the dense model: a checkpoint trained under a plan that drops syncs (at
    tp > 1) is another function, and is refused unless `as_dense` asks for its weights as the
    dense model on purpose."""
    from ..comm.plan import SyncPlan
    from .load import (is_dense_function, load_dense, model_config, read_checkpoint,
                       trained_ladder, trained_plan, trained_wire)

    state = read_checkpoint(ckpt)
    found = state["path"]
    tp, sync = trained_plan(state)
    config = model_config(state)
    n_layer = config.n_layer
    plan = SyncPlan.parse(sync, n_layer)
    dense = is_dense_function(state)
    arch = "GPT-2" if config.family == "gpt2" else \
        hf_llama_config(config, state.get("hf"))["architectures"][0].removesuffix("ForCausalLM")
    if not dense and not as_dense:
        wire, ladder = trained_wire(state), trained_ladder(state)
        what = ([f"drops {2 * n_layer - plan.num_syncs} of its {2 * n_layer} syncs"]
                if plan.num_syncs < 2 * n_layer else []) + \
            ([f"sends its syncs in {wire.describe()}"] if wire.compressed else []) + \
            (["ladders its syncs"] if ladder else [])
        raise ConfigError(f"{found} was trained at tp={tp} with sync={sync!r}, which "
                          f"{' and '.join(what)}: a Hugging Face {arch} computes the dense "
                          f"model, another function; pass --as-dense to export its weights as "
                          f"the dense model anyway")
    held = [f for f in ("model.safetensors", hf_files.INDEX) if os.path.exists(
        os.path.join(out, f))]
    if held and not force:
        raise ConfigError(f"{out} already holds an exported model ({held[0]}): pass --force to "
                          f"replace it")
    model, meta, _ = load_dense(found, state=state)
    sd = model.state_dict()
    if config.family == "gpt2":
        hf, tensors = hf_gpt2_config(config), to_hf_state(sd, config)
    else:
        hf, tensors = hf_llama_config(config, state.get("hf")), to_hf_llama_state(sd, config)
    hf["torch_dtype"] = dtype_name(model.transformer.wte.weight.dtype)
    if meta.get("tokenizer") == "hf":  # where generation stops, as the import found it
        from ..data import tokenizer_from_meta
        eos = tokenizer_from_meta(meta).eos_ids
        if eos:
            hf["eos_token_id"] = eos[0] if len(eos) == 1 else list(eos)
    hf.update(tpgpt_trained_tp=tp, tpgpt_trained_sync=sync)
    os.makedirs(out, exist_ok=True)
    hf_files.write_weights(out, tensors)
    if os.path.exists(os.path.join(out, hf_files.INDEX)):  # --force: it names another's shards
        os.remove(os.path.join(out, hf_files.INDEX))
    hf_files.write_tokenizer(out, meta)
    hf_files.write_json(out, "config.json", hf)
    hf_files.write_json(out, "tpgpt_meta.json", meta)
    return found, not dense
