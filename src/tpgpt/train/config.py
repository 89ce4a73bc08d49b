"""Training configuration: a TOML preset plus `--key=value` overrides, checked field by field.

A TOML file may group keys under tables ([model], [parallel], [train], ...) for readability;
every key must still be a field of `TrainConfig`. Nothing is executed: values are parsed by
tomllib and converted by the field's type, and every bad key or value is a one-line ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import ConfigError
from ..model import GPTConfig
from ..model.config import ACTIVATIONS, FAMILIES, ROPE_SCALINGS
from ..model.parallel_gpt import check_sequence_parallel
from ..comm.plan import SyncPlan, validate_tp
from ..comm.wire import DEFAULT_BLOCK, SYNC_DTYPES, SyncWire

PRESET_DIRS = ("configs", os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs"))


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = "data/shakespeare_char"
    out_dir: str = "out/shakespeare_char"
    # model (vocab_size 0: the data's, from meta.json; padded to a multiple of tp if vocab_parallel)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    vocab_size: int = 0
    dropout: float = 0.2
    bias: bool = False
    activation: str = "gelu"  # gelu (exact), gelu_tanh (GPT-2's), silu (llama: SwiGLU)
    # the family and its fields (model/config.py says what each means; GPT-2 leaves them)
    family: str = "gpt2"
    n_kv_head: int = 0
    head_dim: int = 0
    intermediate_size: int = 0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: str = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    # tensor parallelism: tp ranks, sync plan; tp_procs = processes per TP group under torchrun
    # (0: tp; fewer than tp is the hybrid mode, tp / tp_procs ranks in each process)
    tp: int = 1
    sync: str = "tp"
    # what the residual stream's syncs send: float32 (as computed), bfloat16, or int8 with a
    # float32 scale per sync_block channels; bfloat16/int8 change the function (comm/wire.py)
    sync_dtype: str = "float32"
    sync_block: int = DEFAULT_BLOCK
    # Ladder Residual: each sync's result lands one region later, its all-reduce overlapped with
    # that region's compute (model/blocks.py); another function, so a training-time choice
    ladder: bool = False
    # Megatron-LM's sequence parallelism: between syncs each rank keeps a tp-th of the sequence
    # (less activation memory, the same function; model/blocks.py); block_size divisible by tp
    sequence_parallel: bool = False
    vocab_parallel: bool = False
    tp_procs: int = 0
    # pipeline parallelism under torchrun: pp stages (x pp_virtual_stages for 'interleaved'),
    # scheduled as gpipe, 1f1b or interleaved; micro-batches = gradient accumulation per dp rank
    pp: int = 1
    pp_schedule: str = "1f1b"
    pp_virtual_stages: int = 1
    # optimisation (nanoGPT's recipe): gradient_accumulation_steps is global, split over dp
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_iters: int = 5000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    tensorboard: bool = True
    progress: bool = True
    # system
    seed: int = 1337
    device: str = "auto"
    # float32; bfloat16 / float16: autocast over float32 weights; float64: weights and
    # arithmetic in float64, for checks that layouts agree to rounding (analysis/numerics.py)
    dtype: str = "float32"
    compile: bool = False  # torch.compile the model (in place; not with pp > 1)
    comm_timeout_s: float = 120.0  # per collective; NCCL's own default is 10 minutes

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        shape = {f.name: getattr(self, f.name) for f in fields(GPTConfig)}
        return GPTConfig(**{**shape, "vocab_size": vocab_size or self.vocab_size})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


POSITIVE = {"n_layer", "n_head", "n_embd", "block_size", "tp", "batch_size", "pp", "sync_block",
            "pp_virtual_stages",
            "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"}
NON_NEGATIVE = {"vocab_size", "tp_procs", "max_iters", "warmup_iters", "lr_decay_iters",
                "learning_rate", "min_lr", "weight_decay", "grad_clip", "seed"}
CHOICES = {"device": ("auto", "cpu", "cuda"), "activation": tuple(ACTIVATIONS),
           "family": FAMILIES, "rope_scaling": ROPE_SCALINGS,
           "dtype": ("float32", "bfloat16", "float16", "float64"),
           "sync_dtype": SYNC_DTYPES,
           "pp_schedule": ("gpipe", "1f1b", "interleaved")}


def activation_bytes(dtype: str) -> int:
    """Bytes of an activation element under `dtype` (autocast's bfloat16/float16: 2)."""
    return {"float64": 8, "float32": 4}.get(dtype, 2)


def config_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def overrides_help() -> str:
    """The help epilog of the commands that take a preset: every field, with its default."""
    listed = ", ".join(f"{f.name}={f.default}" for f in fields(TrainConfig))
    return ("Any config field can be given as --key=value (true/false for switches), "
            "overriding the preset, which overrides these defaults (full descriptions: "
            f"src/tpgpt/train/config.py): {listed}.")


def _field_type(name: str) -> str:
    return str(next(f.type for f in fields(TrainConfig) if f.name == name))


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, config_keys(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def convert(key: str, value, source: str):
    """Convert `value` (TOML value or command-line text) to the type of field `key`."""
    kind = _field_type(key)
    text = isinstance(value, str)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text and value.lower() in ("true", "1", "yes", "on"):
                return True
            if text and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not text:
            raise ValueError
        return value
    except ValueError:
        want = {"bool": "true or false", "int": "an integer", "float": "a number",
                "str": "a string"}[kind]
        raise ConfigError(f"{key}={value!r} in {source} is not {want}") from None


def load_config(path: str | None, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Read a TOML preset (a path, or a name in configs/) and apply overrides; then validate."""
    values: dict = {}
    if path:
        file = resolve_preset(path)
        try:
            with open(file, "rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: TOML syntax error: {e}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config {file}: {e.strerror}") from None
        for key, value in raw.items():
            items = value.items() if isinstance(value, dict) else [(key, value)]
            for k, v in items:
                if k not in config_keys():
                    raise _unknown(k)
                values[k] = convert(k, v, file)
    for k, v in (overrides or {}).items():
        if k not in config_keys():
            raise _unknown(k)
        values[k] = convert(k, v, "--" + k)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def resolve_preset(name: str) -> str:
    if os.path.exists(name):
        return name
    for d in PRESET_DIRS:
        for candidate in (os.path.join(d, name), os.path.join(d, name + ".toml")):
            if os.path.exists(candidate):
                return os.path.normpath(candidate)
    presets = sorted({f[:-5] for d in PRESET_DIRS if os.path.isdir(d) for f in os.listdir(d)
                      if f.endswith(".toml")})
    raise ConfigError(f"config {name!r} not found: give a TOML path or a preset "
                      f"({', '.join(presets) or 'none found'})")


def validate(cfg: TrainConfig) -> None:
    for k in POSITIVE:
        if getattr(cfg, k) < 1:
            raise ConfigError(f"{k}={getattr(cfg, k)!r} is invalid: it must be >= 1")
    for k in NON_NEGATIVE:
        v = getattr(cfg, k)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{k}={v!r} is invalid: it must be a finite number")
        if v < 0:
            raise ConfigError(f"{k}={v!r} is invalid: it must be >= 0")
    for k, options in CHOICES.items():
        if getattr(cfg, k) not in options:
            raise ConfigError(f"{k}={getattr(cfg, k)!r} is invalid: choose one of "
                              f"{', '.join(options)}")
    for k in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, k) < 1.0:
            raise ConfigError(f"{k}={getattr(cfg, k)!r} is invalid: it must be in [0, 1)")
    if cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr={cfg.min_lr} is larger than learning_rate="
                          f"{cfg.learning_rate}")
    if cfg.comm_timeout_s <= 0:
        raise ConfigError(f"comm_timeout_s={cfg.comm_timeout_s} is invalid: it must be > 0")
    if cfg.tp_procs and cfg.tp % cfg.tp_procs:
        raise ConfigError(f"tp_procs={cfg.tp_procs} does not divide tp={cfg.tp}")
    for switch, at_tp1, with_pp in (
            ("ladder", "with one rank there is no all-reduce to overlap",
             "a ladder sync's result would have to cross the stage boundary"),
            ("sequence_parallel", "one rank holds the whole sequence",
             "the stages pass the whole stream to each other")):
        if getattr(cfg, switch) and cfg.tp < 2:
            raise ConfigError(f"{switch}=true needs tp >= 2: {at_tp1}")
        if getattr(cfg, switch) and cfg.pp > 1:
            raise ConfigError(f"{switch}=true with pp>1 is not supported: {with_pp}")
    if cfg.compile and cfg.pp > 1:
        raise ConfigError("compile=true with pp>1 is not supported: the pipeline schedule "
                          "runs the stages itself; use compile=false")
    model = cfg.model_config(vocab_size=cfg.vocab_size or 1)  # shape checks
    validate_tp(cfg.tp, model, cfg.vocab_parallel, vocab_size=cfg.vocab_size or cfg.tp)
    SyncPlan.parse(cfg.sync, cfg.n_layer)
    wire = SyncWire(cfg.sync_dtype, cfg.sync_block)
    wire.check(cfg.n_embd)
    check_sequence_parallel(cfg.sequence_parallel, cfg.tp, wire, cfg.block_size)


def replace(cfg: TrainConfig, **changes) -> TrainConfig:
    out = dataclasses.replace(cfg, **changes)
    validate(out)
    return out


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--a=1', '--b', '2'] -> {'a': '1', 'b': '2'}; dashes in keys read as underscores."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or a == "--":
            raise ConfigError(f"unexpected argument {a!r}: overrides are --key=value")
        key, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out
