"""One table of bad inputs, everywhere a user can give them: each is one line on stderr that
names the problem, exit code 2, no traceback, and nothing written."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import tiny_train_overrides
from tpgpt.cli import main

CASES = []  # (id, setup(root) -> argv, env changes, fragment of the one-line message)


def case(name, fragment, env=None):
    def register(setup):
        CASES.append((name, setup, env or {}, fragment))
        return setup
    return register


def train_args(root, **kw):
    return ["train", "shakespeare_char_cpu",
            *[f"--{k}={v}" for k, v in tiny_train_overrides(root / "data", root / "out",
                                                            **kw).items()]]


def broken_data(root, edit):
    """A copy of the good dataset with `edit(dir)` applied; training args pointing at it."""
    d = root / "bad"
    shutil.copytree(root / "data", d)
    edit(d)
    return ["train", "shakespeare_char_cpu",
            *[f"--{k}={v}" for k, v in tiny_train_overrides(d, root / "out").items()]]


# --- flags and config values -------------------------------------------------------------------
for key, value, fragment in [
    ("batch_size", "0", "batch_size=0 is invalid: it must be >= 1"),
    ("batch_size", "-4", "batch_size=-4 is invalid"),
    ("learning_rate", "nan", "learning_rate=nan is invalid: it must be a finite number"),
    ("learning_rate", "-0.1", "learning_rate=-0.1 is invalid: it must be >= 0"),
    ("learning_rate", "inf", "learning_rate=inf is invalid: it must be a finite number"),
    ("max_iters", "ten", "max_iters='ten' in --max_iters is not an integer"),
    ("dropout", "1.0", "dropout=1.0 is invalid: it must be in [0, 1)"),
    ("beta1", "-0.5", "beta1=-0.5 is invalid: it must be in [0, 1)"),
    ("tp", "5", "tp=5 does not divide n_head=2"),
    ("n_embd", "33", "n_embd=33 is not divisible by n_head=2"),
    ("sync", "spd,warp", "unknown layer kind 'warp'"),
    ("sync", "bits:0101x1", "contain 'x': only 0 and 1"),
    ("sync", "bits:0110", "the last layer must sync after its MLP"),
    ("pp_schedule", "zigzag", "pp_schedule='zigzag' is invalid: choose one of gpipe, 1f1b, "
                              "interleaved"),
    ("device", "tpu", "device='tpu' is invalid"),
    ("grad_clip", "-1", "grad_clip=-1.0 is invalid: it must be >= 0"),
    ("eval_iters", "0", "eval_iters=0 is invalid: it must be >= 1"),
    ("tp_procs", "3", "tp_procs=3 does not divide tp=2"),
    ("comm_timeout_s", "0", "comm_timeout_s=0.0 is invalid: it must be > 0"),
    ("learnign_rate", "1", "unknown config key 'learnign_rate' (did you mean 'learning_rate'?)"),
]:
    extra = {"tp": "2"} if key == "tp_procs" else {}
    case(f"--{key}={value}", fragment)(
        lambda root, k=key, v=value, e=extra: train_args(root, **{**e, k: v}))


@case("compile with a pipeline", "compile=true with pp>1 is not supported")
def _(root):
    return train_args(root, pp=2, compile="true")


@case("pp without torchrun", "pp=2 needs processes: launch with torchrun")
def _(root):
    return train_args(root, pp=2)


@case("vocab_size below the data's", "vocab_size=3 is smaller than the data's vocabulary")
def _(root):
    return train_args(root, vocab_size=3)


@case("block_size larger than the data", "too few for block_size=100000")
def _(root):
    return train_args(root, block_size=100000)


# --- TOML files --------------------------------------------------------------------------------
@case("TOML syntax error", "TOML syntax error")
def _(root):
    (root / "x.toml").write_text("n_layer = 2\nbatch_size = [1,\n")
    return ["train", str(root / "x.toml")]


@case("TOML wrong type", "n_layer='two'")
def _(root):
    (root / "x.toml").write_text('n_layer = "two"\n')
    return ["train", str(root / "x.toml")]


@case("TOML unknown key", "unknown config key 'n_layers'")
def _(root):
    (root / "x.toml").write_text("[model]\nn_layers = 2\n")
    return ["train", str(root / "x.toml")]


@case("config that does not exist", "config 'no/such.toml' not found")
def _(root):
    return ["train", "no/such.toml"]


# --- data directories --------------------------------------------------------------------------
@case("data_dir that does not exist", "does not exist: run 'tpgpt prepare' first")
def _(root):
    return train_args(root) + [f"--data_dir={root / 'nothing'}"]


@case("empty train.bin", "holds 0 tokens, too few for block_size=16")
def _(root):
    return broken_data(root, lambda d: (d / "train.bin").write_bytes(b""))


@case("truncated train.bin", "is truncated: ")
def _(root):
    return broken_data(root, lambda d: (d / "train.bin").write_bytes(
        (d / "train.bin").read_bytes()[:-1]))


@case("missing val.bin", "val.bin is missing")
def _(root):
    return broken_data(root, lambda d: os.remove(d / "val.bin"))


@case("missing meta.json", "meta.json is missing: run 'tpgpt prepare'")
def _(root):
    return broken_data(root, lambda d: os.remove(d / "meta.json"))


@case("meta.json not JSON", "meta.json is not valid JSON")
def _(root):
    return broken_data(root, lambda d: (d / "meta.json").write_text("{vocab"))


@case("vocab file that does not match the data", "outside the vocabulary of meta.json")
def _(root):
    def shrink(d):  # a vocabulary of 5 characters for data that uses more
        meta = json.loads((d / "meta.json").read_text())
        meta.update(vocab_size=5, chars=meta["chars"][:5])
        (d / "meta.json").write_text(json.dumps(meta))
    return broken_data(root, shrink)


@case("meta.json with an unknown tokenizer", "names an unknown tokenizer 'sentencepiece'")
def _(root):
    def edit(d):
        meta = json.loads((d / "meta.json").read_text())
        meta["tokenizer"] = "sentencepiece"
        (d / "meta.json").write_text(json.dumps(meta))
    return broken_data(root, edit)


@case("meta.json chars and vocab_size disagree", "chars but vocab_size=")
def _(root):
    def edit(d):
        meta = json.loads((d / "meta.json").read_text())
        meta["vocab_size"] += 1
        (d / "meta.json").write_text(json.dumps(meta))
    return broken_data(root, edit)


@case("token id past uint16 vocabulary", "outside the vocabulary of meta.json")
def _(root):
    return broken_data(root, lambda d: np.full(100, 60000, dtype=np.uint16).tofile(
        d / "val.bin"))


# --- checkpoints -------------------------------------------------------------------------------
@case("resume without a checkpoint", "--resume: no checkpoint in")
def _(root):
    return train_args(root) + ["--resume"]


@case("checkpoint of another model shape", "the config differs from the checkpoint's in n_embd")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    return train_args(root, max_iters=10, n_embd=64) + ["--resume"]


@case("empty checkpoint directory", "no checkpoint in")
def _(root):
    (root / "empty").mkdir()
    return ["sample", "--ckpt", str(root / "empty")]


@case("partial checkpoint (no manifest)", "has no manifest.json: the checkpoint is incomplete")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    os.remove(root / "out" / "last" / "manifest.json")
    return ["sample", "--ckpt", str(root / "out" / "last")]


@case("checkpoint file corrupted", "fails its checksum: the checkpoint is corrupt")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    (root / "out" / "last" / "meta.json").write_text("{}")
    return ["sample", "--ckpt", str(root / "out" / "last")]


@case("fresh run into an out_dir with a checkpoint", "holds a checkpoint: pass --resume")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    return train_args(root, max_iters=10)


# --- prompts and sampling ----------------------------------------------------------------------
@case("prompt outside the vocabulary", "outside the vocabulary: 'Z'")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    return ["sample", "--ckpt", str(root / "out"), "--prompt", "Zebra"]


@case("negative temperature", "temperature=-1.0 must be >= 0")
def _(root):
    assert main(train_args(root, max_iters=10)) == 0
    return ["sample", "--ckpt", str(root / "out"), "--temperature", "-1"]


# --- environment variables tpgpt reads ---------------------------------------------------------
@case("TPGPT_SHAKESPEARE names a missing file", "input file /no/such/input.txt does not exist",
      env={"TPGPT_SHAKESPEARE": "/no/such/input.txt"})
def _(root):
    return ["prepare", "shakespeare_char", "--out", str(root / "sc")]


@case("RANK without the rest of torchrun's environment", "is not set: launch distributed runs "
                                                        "with torchrun", env={"RANK": "0"})
def _(root):
    return train_args(root)


@case("TORCHELASTIC_RESTART_COUNT not a number", "TORCHELASTIC_RESTART_COUNT='x' is not",
      env={"TORCHELASTIC_RESTART_COUNT": "x"})
def _(root):
    return train_args(root)


# --- plan, prepare, export ---------------------------------------------------------------------
@case("plan: unknown interconnect", "neither a built-in profile")
def _(root):
    return ["plan", "--interconnect", "carrier-pigeon"]


@case("prepare text: missing input", "input file")
def _(root):
    return ["prepare", "text", "--input", str(root / "none.txt"), "--out", str(root / "t")]


@case("prepare text: bad val fraction", "val_fraction=1.5 is invalid")
def _(root):
    return ["prepare", "text", "--input", str(root / "in.txt"), "--out", str(root / "t"),
            "--val-fraction", "1.5"]


@case("prepare over an existing dataset", "already holds a prepared dataset: pass --force")
def _(root):
    return ["prepare", "text", "--input", str(root / "in.txt"), "--out", str(root / "data")]


@case("import-hf of a directory without a model", "config.json cannot be read")
def _(root):
    (root / "hf").mkdir()
    return ["import-hf", str(root / "hf"), "--out", str(root / "ck")]


@case("import-hf of a Hub id it cannot load", "cannot load 'tpgpt-tests/no-such-model' from the "
                                              "Hugging Face Hub", env={"HF_HUB_OFFLINE": "1"})
def _(root):  # offline, or online and not there: the same one line (no download either way)
    return ["import-hf", "tpgpt-tests/no-such-model", "--out", str(root / "ck")]


@case("import-hf of a path that is not there", "is neither a directory nor a Hugging Face Hub")
def _(root):
    return ["import-hf", str(root / "no" / "such"), "--out", str(root / "ck")]


# --- Hugging Face directories of the Llama family (tests/hf_dirs.py) ------------------------
def hf_dir(root, arch="llama", **config):
    """A directory saved by transformers (random weights, a tokenizer beside), config.json
    then edited."""
    from hf_dirs import edit_config, make_hf_dir
    path = str(root / "hf")
    make_hf_dir(path, arch, **({"tokenizer": config.pop("tokenizer")} if "tokenizer" in config
                               else {}))
    if config:
        edit_config(path, **config)
    return path


def imp(root, *extra, **config):
    return ["import-hf", hf_dir(root, **config), "--out", str(root / "ck"), *extra]


@case("import-hf of a mixture of experts", "is a 'MixtralForCausalLM' model: tpgpt imports")
def _(root):
    return imp(root, model_type="mixtral", architectures=["MixtralForCausalLM"])


@case("import-hf of another rope type", "uses rope type 'yarn': tpgpt computes the default")
def _(root):
    return imp(root, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})


@case("import-hf of a window shorter than the context",
      "attends within a sliding window of 8 tokens, shorter than the context of 32")
def _(root):
    return imp(root, model_type="mistral", architectures=["MistralForCausalLM"],
               sliding_window=8)


@case("import-hf of a bias tpgpt's Llama has not", "has attention_bias=true (a bias on q, k, v")
def _(root):
    return imp(root, attention_bias=True)


@case("import-hf of quantized weights", "holds quantized weights (bitsandbytes)")
def _(root):
    return imp(root, quantization_config={"quant_method": "bitsandbytes"})


@case("import-hf of weights its config does not describe",
      "transformer.wte.weight as [300, 64], where its config needs [300, 32]")
def _(root):
    return imp(root, hidden_size=32, head_dim=8)


@case("import-hf of weights lacking a layer",
      "lack 9 tensors of the model its config describes (transformer.h.2.")
def _(root):
    return imp(root, num_hidden_layers=3)


@case("import-hf of a shard that is missing", "a shard model.safetensors.index.json names, is "
                                              "missing")
def _(root):
    path = hf_dir(root)
    os.remove(os.path.join(path, "model-00002-of-00005.safetensors"))
    return ["import-hf", path, "--out", str(root / "ck")]


@case("import-hf of a Llama without its tokenizer", "has no tokenizer.json or tokenizer.model")
def _(root):
    return imp(root, tokenizer=False)


@case("import-hf of an end-of-sequence id past the vocabulary",
      "generation_config.json: eos_token_id=[1, 300] is not a token id (or a list of them) "
      "below vocab_size=300")
def _(root):
    path = hf_dir(root)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        f.write('{"eos_token_id": [1, 300]}')
    return ["import-hf", path, "--out", str(root / "ck")]


@case("import-hf: unknown dtype", "invalid choice: 'int8'")
def _(root):
    return imp(root, "--dtype", "int8")


@case("import-hf: a zero context", "--block-size 0 is invalid: it must be >= 1")
def _(root):
    return imp(root, "--block-size", "0")


@case("prepare text: a tokenizer that is not there", "is neither char, byte nor a directory")
def _(root):
    return ["prepare", "text", "--input", str(root / "in.txt"), "--out", str(root / "t"),
            "--tokenizer", str(root / "nowhere")]


@case("prepare text: a directory without a tokenizer", "holds no tpgpt checkpoint, "
                                                       "tokenizer.json nor tokenizer.model")
def _(root):
    (root / "empty").mkdir()
    return ["prepare", "text", "--input", str(root / "in.txt"), "--out", str(root / "t"),
            "--tokenizer", str(root / "empty")]


@case("eval: data made with another model's tokenizer", "is tokenized differently from the "
                                                        "checkpoint")
def _(root):
    from hf_dirs import make_hf_dir
    first = hf_dir(root)
    make_hf_dir(str(root / "other"), "qwen2")
    edit = json.loads((root / "other" / "tokenizer.json").read_text())
    edit["added_tokens"][1]["content"] = "<|end|>"  # another tokenizer, of the same size
    (root / "other" / "tokenizer.json").write_text(json.dumps(edit))
    assert main(["prepare", "text", "--input", str(root / "in.txt"), "--out",
                 str(root / "odata"), "--tokenizer", str(root / "other")]) == 0
    assert main(["import-hf", first, "--out", str(root / "ck")]) == 0
    return ["eval", "--ckpt", str(root / "ck"), "--data-dir", str(root / "odata")]


@case("plan: an HF config that is not there", "is neither a config.json nor a directory")
def _(root):
    return ["plan", "--hf-config", str(root / "nowhere.json")]


@case("plan: an HF config of another architecture", "is a 'BertModel' model: tpgpt imports")
def _(root):
    (root / "bert.json").write_text(json.dumps({"model_type": "bert",
                                                "architectures": ["BertModel"]}))
    return ["plan", "--hf-config", str(root / "bert.json")]


@case("plan: unknown activation", "activation='relu' is invalid: choose one of gelu, gelu_tanh")
def _(root):
    return ["plan", "--activation", "relu"]


# --- eval, and loading a checkpoint under another plan ----------------------------------------
def trained(root, **kw):
    assert main(train_args(root, max_iters=10, **kw)) == 0
    return str(root / "out")


@case("eval: unknown sync plan", "unknown layer kind 'warp'")
def _(root):
    return ["eval", "--ckpt", trained(root), "--sync", "warp"]


@case("eval: tp that does not divide the heads", "tp=3 does not divide n_head=2")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tp", "3"]


@case("eval: bits for another depth", "n_layer=2 needs exactly 4")
def _(root):
    return ["eval", "--ckpt", trained(root), "--sync", "bits:11"]


@case("eval --tasks: a task lm-eval does not know", "--tasks no_such_task: not a task lm-eval")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", "no_such_task"]


@case("eval --tasks: an --include-path that is no folder", "is not a directory")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", "x", "--include-path",
            str(root / "nowhere")]


@case("eval --tasks: naming no task", "names no task")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", ","]


@case("eval --tasks: a zero --limit", "'0' is not a positive number")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", "x", "--limit", "0"]


@case("eval --tasks: a negative --num-fewshot", "'-1' is not a non-negative integer")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", "x", "--num-fewshot=-1"]


@case("eval --tasks: a --split (even val, the loss's default)", "not a split: drop")
def _(root):
    return ["eval", "--ckpt", trained(root), "--tasks", "x", "--split", "val"]


@case("eval: --limit without --tasks", "--limit is an option of --tasks")
def _(root):
    return ["eval", "--ckpt", trained(root), "--limit", "3"]


@case("eval: zero batch size", "batch_size=0 is invalid")
def _(root):
    return ["eval", "--ckpt", trained(root), "--batch-size", "0"]


@case("eval: unknown split", "invalid choice: 'test'")
def _(root):
    return ["eval", "--ckpt", trained(root), "--split", "test"]


@case("eval: data tokenized differently", "is tokenized differently from the checkpoint")
def _(root):
    ckpt = trained(root)
    assert main(["prepare", "text", "--input", str(root / "in.txt"), "--tokenizer", "byte",
                 "--out", str(root / "bytes")]) == 0
    return ["eval", "--ckpt", ckpt, "--data-dir", str(root / "bytes")]


@case("eval: checkpoint that names no data", "does not name the data it was trained on")
def _(root):
    ckpt = trained(root)
    assert main(["export", "--ckpt", ckpt, "--out", str(root / "hf")]) == 0
    assert main(["import-hf", str(root / "hf"), "--out", str(root / "imported")]) == 0
    return ["eval", "--ckpt", str(root / "imported")]


@case("import-hf: data tokenized differently", "is tokenized differently from the model")
def _(root):
    ckpt = trained(root)
    assert main(["export", "--ckpt", ckpt, "--out", str(root / "hf")]) == 0
    assert main(["prepare", "text", "--input", str(root / "in.txt"), "--tokenizer", "byte",
                 "--out", str(root / "bytes")]) == 0
    return ["import-hf", str(root / "hf"), "--out", str(root / "imported"),
            "--data-dir", str(root / "bytes")]


@case("eval: a plan that drops syncs at tp=1", "--sync 'spd' at tp=1 is the dense GPT")
def _(root):
    return ["eval", "--ckpt", trained(root), "--sync", "spd"]


@case("eval: unknown device", "device='tpu' is invalid: choose cpu or cuda")
def _(root):
    return ["eval", "--ckpt", trained(root), "--device", "tpu"]


@case("eval: the training data moved", "which is not there (a path relative to where")
def _(root):
    ckpt = trained(root)
    shutil.move(root / "data", root / "moved")
    return ["eval", "--ckpt", ckpt]


@case("sample: another plan for another depth", "lists 3 layer kinds, which does not divide")
def _(root):
    return ["sample", "--ckpt", trained(root), "--sync", "tp,spd,spd"]


@case("sample: a prompt longer than the model reads", "the prompt is 17 tokens and this model "
                                                     "reads at most block_size=16")
def _(root):
    return ["sample", "--ckpt", trained(root), "--prompt", "e" * 17]


@case("sample: --compile without the KV cache", "--compile needs the KV cache")
def _(root):
    return ["sample", "--ckpt", trained(root), "--compile", "--no-kv-cache"]


@case("sample: an unknown compile mode", "compile='fastest' is invalid")
def _(root):
    return ["sample", "--ckpt", trained(root), "--compile", "fastest"]


@case("sample: tp that does not divide the heads", "tp=3 does not divide n_head=2")
def _(root):
    return ["sample", "--ckpt", trained(root), "--tp", "3"]


@case("sample: no checkpoint there", "nothing does not exist")
def _(root):
    return ["sample", "--ckpt", str(root / "nothing")]


@case("plan --inference: a cache past block_size", "prompt_len + new_tokens = 70 exceeds "
                                                   "block_size=64")
def _(root):
    return ["plan", "--inference", "--block_size", "64", "--prompt_len", "60", "--new_tokens",
            "10"]


@case("bench decode: a cache past block_size", "= 74 exceeds the KV cache's block_size=64")
def _(root):
    return ["bench", "decode", "--shapes", "cpu-preset", "--prompt-len", "60", "--new-tokens",
            "14"]


@case("bench decode: a shape it does not have", "bench decode shapes are cpu-preset, 12-layer")
def _(root):
    return ["bench", "decode", "--shapes", "gpt2-small"]


@case("plan --inference: an unknown device", "'tpu' is neither a built-in device")
def _(root):
    return ["plan", "--inference", "--interconnect", "pcie4", "--device", "tpu"]


@case("sensitivity: no checkpoint there", "nothing does not exist")
def _(root):
    return ["sensitivity", "--ckpt", str(root / "nothing")]


@case("sensitivity: tp that does not divide the heads", "tp=3 does not divide n_head=2")
def _(root):
    return ["sensitivity", "--ckpt", trained(root), "--tp", "3"]


@case("sensitivity: a budget out of range", "--budget 5 is out of range: the trained plan "
                                            "has 4 forward syncs")
def _(root):
    return ["sensitivity", "--ckpt", trained(root), "--budget", "5", "--out", str(root / "s")]


@case("sensitivity: tp 1", "--tp 1 has no syncs to drop")
def _(root):
    return ["sensitivity", "--ckpt", trained(root), "--tp", "1"]


@case("convert: no checkpoint there", "nothing does not exist")
def _(root):
    return ["convert", "--ckpt", str(root / "nothing"), "--sync", "spd", "--tp", "2", "--out",
            str(root / "c")]


@case("convert: a plan of another length", "n_layer=2 needs exactly 4")
def _(root):
    return ["convert", "--ckpt", trained(root), "--sync", "bits:111111", "--tp", "2", "--out",
            str(root / "c")]


@case("convert: tp that does not divide the heads", "tp=3 does not divide n_head=2")
def _(root):
    return ["convert", "--ckpt", trained(root), "--sync", "spd", "--tp", "3", "--out",
            str(root / "c")]


@case("convert: a dropping plan at tp 1", "at tp=1 is the dense GPT")
def _(root):
    return ["convert", "--ckpt", trained(root), "--sync", "spd", "--tp", "1", "--out",
            str(root / "c")]


@case("convert: onto an existing directory", "exists: choose another --out")
def _(root):
    return ["convert", "--ckpt", trained(root), "--sync", "spd", "--tp", "2", "--out",
            str(root / "data")]


def converted(root, **kw) -> tuple[str, str]:
    """(teacher, student): a trained dense model and its conversion to spd at tp=2."""
    teacher = trained(root, **kw)
    assert main(["convert", "--ckpt", teacher, "--sync", "spd", "--tp", "2", "--out",
                 str(root / "c")]) == 0
    return teacher, str(root / "c")


def distill_args(teacher, student, out, *extra):
    return ["distill", "--ckpt", student, "--teacher", teacher, "--out", str(out), "--steps",
            "2", "--progress", "false", *extra]


@case("distill: no checkpoint there", "nothing does not exist")
def _(root):
    return distill_args(trained(root), str(root / "nothing"), root / "d")


@case("distill: a teacher of another shape", "has another shape than the student (n_embd 16 "
                                             "vs 32)")
def _(root):
    teacher, student = converted(root)
    kw = tiny_train_overrides(root / "data", root / "small", n_embd=16, max_iters=10)
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in kw.items()]]) == 0
    return distill_args(str(root / "small"), student, root / "d")


@case("distill: a student with every sync on", "computes the dense GPT (tp=1, sync='tp'): "
                                               "nothing to distil")
def _(root):
    teacher = trained(root)
    return distill_args(teacher, teacher, root / "d")


@case("distill: a teacher that drops syncs", "not the dense GPT: distil from the all-sync")
def _(root):
    teacher, student = converted(root)
    return distill_args(student, student, root / "d")


@case("distill: --teacher-sharded given a value", "ignored explicit argument 'yes'")
def _(root):
    teacher, student = converted(root)
    return distill_args(teacher, student, root / "d", "--teacher-sharded=yes")


@case("distill: --out holding the teacher", "holds the input checkpoint")
def _(root):
    teacher, student = converted(root)
    return distill_args(teacher, student, teacher)


@case("distill: --out holding a run", "holds a distill run: pass --resume")
def _(root):
    teacher, student = converted(root)
    assert main(distill_args(teacher, student, root / "d")) == 0
    return distill_args(teacher, student, root / "d")


@case("distill: --resume with other options", "the options differ from the run's in lr")
def _(root):
    teacher, student = converted(root)
    assert main(distill_args(teacher, student, root / "d")) == 0
    return distill_args(teacher, student, root / "d", "--resume", "--lr", "1e-2")


@case("distill: --out holding a training run", "is a checkpoint but not of a tpgpt distill run")
def _(root):
    teacher, student = converted(root)
    kw = tiny_train_overrides(root / "data", root / "run2", max_iters=10)
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in kw.items()]]) == 0
    return distill_args(teacher, student, root / "run2", "--overwrite")


@case("distill: --stop-after a step the run has passed", "--stop-after 1: the run is at step 2")
def _(root):
    teacher, student = converted(root)
    assert main(distill_args(teacher, student, root / "d")) == 0
    return distill_args(teacher, student, root / "d", "--resume", "--stop-after", "1")


@case("distill: negative steps", "--steps -1 is invalid: it must be >= 0")
def _(root):
    teacher, student = converted(root)
    return distill_args(teacher, student, root / "d", "--steps", "-1")


@case("distill: zero learning rate", "--lr 0.0 is invalid: it must be a positive number")
def _(root):
    teacher, student = converted(root)
    return distill_args(teacher, student, root / "d", "--lr", "0")


@case("export of a checkpoint that drops syncs", "which drops 2 of its 4 syncs: a Hugging")
def _(root):
    return ["export", "--ckpt", trained(root, tp=2, sync="spd"), "--out", str(root / "hf")]


# --- what a sync sends (sync_dtype) -------------------------------------------------------------
@case("--sync_dtype unknown", "sync_dtype='int4' is invalid: choose one of float32, bfloat16, int8")
def _(root):
    return train_args(root, tp=2, sync_dtype="int4")


@case("--sync_block not dividing n_embd", "sync_block=24 does not divide n_embd=32")
def _(root):
    return train_args(root, tp=2, sync_dtype="int8", sync_block=24)


@case("--sync_block zero", "sync_block=0 is invalid: it must be >= 1")
def _(root):
    return train_args(root, tp=2, sync_dtype="int8", sync_block=0)


@case("resume with another sync_dtype", "sync_dtype ('int8' -> 'bfloat16')")
def _(root):
    trained(root, tp=2, sync_dtype="int8")
    return train_args(root, max_iters=10, tp=2, sync_dtype="bfloat16") + ["--resume"]


@case("plan: unknown --sync-dtype", "sync_dtype='fp8' is invalid")
def _(root):
    return ["plan", "--sync-dtype", "float32", "fp8"]


@case("plan: an int8 block that does not divide n_embd", "sync_block=100 does not divide "
                                                         "n_embd=768")
def _(root):
    return ["plan", "--sync-dtype", "int8", "--sync-block", "100"]


@case("eval: a compressed sync at tp=1", "--sync-dtype int8 at tp=1 sends nothing")
def _(root):
    return ["eval", "--ckpt", trained(root), "--sync-dtype", "int8"]


@case("sample: unknown --sync-dtype", "sync_dtype='int3' is invalid")
def _(root):
    return ["sample", "--ckpt", trained(root, tp=2), "--sync-dtype", "int3"]


@case("convert: a checkpoint trained with int8 syncs", "trained with syncs sent in int8 (block "
                                                       "32): convert works on checkpoints whose")
def _(root):
    return ["convert", "--ckpt", trained(root, tp=2, sync_dtype="int8"), "--sync", "spd",
            "--tp", "2", "--out", str(root / "c")]


@case("sweep: a finished run of another sync_dtype", "holds a finished run with sync_dtype="
                                                    "float32, ladder=False, not int8, False: give")
def _(root):
    run = tiny_train_overrides(root / "data", root / "sw" / "tp", max_iters=10, tp=2)
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in run.items()]]) == 0
    return ["sweep", "shakespeare_char_cpu", "--plans", "tp", "--out", str(root / "sw"),
            *train_args(root, max_iters=10, tp=2, sync_dtype="int8")[2:]]


@case("eval: an int8 block that does not divide n_embd", "sync_block=24 does not divide "
                                                         "n_embd=32")
def _(root):
    return ["eval", "--ckpt", trained(root, tp=2), "--sync-dtype", "int8", "--sync-block", "24"]


@case("--ladder at tp=1", "ladder=true needs tp >= 2")
def _(root):
    return train_args(root, ladder="true")


@case("--ladder with a pipeline", "ladder=true with pp>1 is not supported")
def _(root):
    return train_args(root, tp=2, pp=2, ladder="true")


@case("--ladder not a boolean", "ladder='maybe' in --ladder is not true or false")
def _(root):
    return train_args(root, tp=2, ladder="maybe")


@case("resume with the ladder switched off", "ladder (True -> False)")
def _(root):
    trained(root, tp=2, ladder="true")
    return train_args(root, max_iters=10, tp=2) + ["--resume"]


@case("sensitivity of a checkpoint trained with ladder syncs", "was trained with ladder syncs: "
                                                               "sensitivity works on")
def _(root):
    return ["sensitivity", "--ckpt", trained(root, tp=2, ladder="true"), "--tp", "2"]


@case("sweep: a plan with two sync dtypes", "names 2 sync dtypes: give at most one")
def _(root):
    return ["sweep", "shakespeare_char_cpu", "--plans", "tp@int8@bfloat16", "--out",
            str(root / "sw"), *train_args(root, tp=2)[2:]]


@case("export of a checkpoint with compressed syncs", "which sends its syncs in bfloat16: a")
def _(root):
    return ["export", "--ckpt", trained(root, tp=2, sync_dtype="bfloat16"), "--out",
            str(root / "hf")]


@case("--sequence_parallel at tp=1", "sequence_parallel=true needs tp >= 2")
def _(root):
    return train_args(root, sequence_parallel="true")


@case("--sequence_parallel with a sequence length tp does not divide",
      "sequence_parallel needs block_size divisible by tp: block_size=15 is not a multiple "
      "of tp=2")
def _(root):
    return train_args(root, tp=2, block_size=15, sequence_parallel="true")


@case("--sequence_parallel with int8 syncs", "sequence_parallel with sync_dtype=int8 is not "
                                             "supported")
def _(root):
    return train_args(root, tp=2, sync_dtype="int8", sequence_parallel="true")


@case("--sequence_parallel with a pipeline", "sequence_parallel=true with pp>1 is not supported")
def _(root):
    return train_args(root, tp=2, pp=2, sequence_parallel="true")


@case("--sequence_parallel not a boolean", "sequence_parallel='half' in --sequence_parallel is "
                                           "not true or false")
def _(root):
    return train_args(root, tp=2, sequence_parallel="half")


@case("plan: --sequence-parallel with a seq_len tp does not divide",
      "sequence_parallel needs seq_len divisible by tp: seq_len=63 is not a multiple of tp=2")
def _(root):
    return ["plan", "--sequence-parallel", "--seq_len", "63"]


@case("plan: a sequence-parallel plan with bfloat16 syncs",
      "sequence_parallel with sync_dtype=bfloat16 is not supported")
def _(root):
    return ["plan", "--sync", "tp@bfloat16@sp"]


@case("sweep: a sequence-parallel variant at a block size tp does not divide",
      "block_size=15 is not a multiple of tp=2")
def _(root):
    return ["sweep", "shakespeare_char_cpu", "--plans", "spd@sp", "--out", str(root / "sw"),
            *train_args(root, tp=2, block_size=15)[2:]]


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name,setup,env,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, setup, env, fragment, text_data, tmp_path, monkeypatch, capsys):
    data, src = text_data
    shutil.copytree(data, tmp_path / "data")
    shutil.copy(src, tmp_path / "in.txt")
    argv = setup(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tpgpt: error: ") and fragment in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "a failed command wrote files"


def test_the_table_has_forty_distinct_bad_inputs():
    assert len({c[0] for c in CASES}) >= 40
