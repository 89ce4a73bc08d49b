"""Training configs: presets, overrides and bad input (one line, exit 2)."""
from __future__ import annotations

import os

import pytest

from conftest import tiny_train_overrides
from dist_common import HERE
from tpgpt.cli import main
from tpgpt.train.config import load_config, parse_overrides
from tpgpt.errors import ConfigError
from tpgpt.comm.plan import SyncPlan

CONFIGS = os.path.join(HERE, "..", "configs")


def test_cpu_preset_is_nanogpts_cpu_recipe():
    c = load_config("shakespeare_char_cpu")
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size, c.max_iters, c.dropout) == \
        (4, 4, 128, 64, 12, 2000, 0.0)
    assert (c.learning_rate, c.min_lr, c.beta2, c.warmup_iters, c.lr_decay_iters) == \
        (1e-3, 1e-4, 0.99, 100, 2000)


@pytest.mark.parametrize("n", [24, 18, 16, 12, 8, 6])
def test_gpt2_presets_have_the_sync_count_their_comment_says(n):
    path = os.path.join(CONFIGS, f"gpt2_owt_sync{n}.toml")
    c = load_config(path)
    assert SyncPlan.parse(c.sync, c.n_layer).num_syncs == n
    assert f"with {n} forward syncs" in open(path).read()
    assert (c.n_layer, c.n_head, c.n_embd, c.tp) == (12, 12, 768, 2)


def test_every_preset_loads():
    for f in os.listdir(CONFIGS):
        load_config(os.path.join(CONFIGS, f))


def test_overrides_are_typed():
    c = load_config("shakespeare_char_cpu", parse_overrides(
        ["--tp=2", "--sync", "tp,spd", "--learning-rate=3e-4", "--bias=true"]))
    assert (c.tp, c.sync, c.learning_rate, c.bias) == (2, "tp,spd", 3e-4, True)


BAD = [
    (["--batch_size=0"], "batch_size=0 is invalid: it must be >= 1"),
    (["--batch_size=-3"], "batch_size=-3 is invalid"),
    (["--batch_size=abc"], "batch_size='abc' in --batch_size is not an integer"),
    (["--learning_rate=nan"], "learning_rate=nan is invalid: it must be a finite number"),
    (["--learning_rate=-1e-3"], "learning_rate=-0.001 is invalid: it must be >= 0"),
    (["--min_lr=1"], "min_lr=1.0 is larger than learning_rate"),
    (["--dropout=1"], "dropout=1.0 is invalid"),
    (["--beta2=1.5"], "beta2=1.5 is invalid"),
    (["--lerning_rate=1"], "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
    (["--tp=3"], "tp=3 does not divide n_head=4"),
    (["--tp=2", "--sync=spd,foo"], "unknown layer kind 'foo'"),
    (["--sync=bits:01"], "n_layer=4 needs exactly 8"),
    (["--device=tpu"], "device='tpu' is invalid: choose one of auto, cpu, cuda"),
    (["--dtype=fp8"], "dtype='fp8' is invalid"),
    (["--bias=maybe"], "bias='maybe' in --bias is not true or false"),
    (["--tp=2", "--tp_procs=3"], "tp_procs=3 does not divide tp=2"),
    (["--eval_iters"], "--eval_iters needs a value"),
    (["stray"], "unexpected argument 'stray'"),
]


@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_overrides_one_line_exit_2(capsys, args, fragment, tmp_path):
    assert main(["train", "shakespeare_char_cpu", f"--out_dir={tmp_path}/o", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not os.path.exists(tmp_path / "o")  # nothing written


def test_toml_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = 4\nn_head = = 2\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "TOML syntax error" in err and "line 2" in err and len(err.splitlines()) == 1
    unknown = tmp_path / "u.toml"
    unknown.write_text("[model]\nn_layers = 4\n")
    assert main(["train", str(unknown)]) == 2
    assert "unknown config key 'n_layers' (did you mean 'n_layer'?)" in capsys.readouterr().err
    typed = tmp_path / "t.toml"
    typed.write_text("batch_size = 1.5\n")
    assert main(["train", str(typed)]) == 2
    assert "batch_size=1.5" in capsys.readouterr().err
    assert main(["train", "no_such_preset"]) == 2
    assert "config 'no_such_preset' not found" in capsys.readouterr().err


def test_data_errors(tmp_path, capsys, text_data):
    data, _ = text_data
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(str(tmp_path / "none"),
                                                        str(tmp_path / "o")).items()]
    assert main(["train", "shakespeare_char_cpu", *args]) == 2
    assert "does not exist: run 'tpgpt prepare' first" in capsys.readouterr().err
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, str(tmp_path / "o"),
                                                        block_size=10 ** 6).items()]
    assert main(["train", "shakespeare_char_cpu", *args]) == 2
    assert "too few for block_size=1000000" in capsys.readouterr().err
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, str(tmp_path / "o"),
                                                        vocab_size=5).items()]
    assert main(["train", "shakespeare_char_cpu", *args]) == 2
    assert "vocab_size=5 is smaller than the data's vocabulary" in capsys.readouterr().err


def test_resume_errors(tmp_path, capsys, text_data):
    data, _ = text_data
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, str(tmp_path / "o"),
                                                        max_iters=10).items()]
    assert main(["train", "shakespeare_char_cpu", *args, "--resume"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert main(["train", "shakespeare_char_cpu", *args]) == 0
    capsys.readouterr()
    assert main(["train", "shakespeare_char_cpu", *args, "--batch_size=8", "--resume"]) == 2
    assert "config differs from the checkpoint's in batch_size (4 -> 8)" in \
        capsys.readouterr().err
    assert main(["train", "shakespeare_char_cpu", *args, "--tp=2", "--sync=spd", "--resume"]) == 2
    assert "--resume: the config differs from the checkpoint's in sync ('tp' -> 'spd')" in \
        capsys.readouterr().err


def test_missing_shakespeare_input(tmp_path, capsys):
    assert main(["prepare", "shakespeare_char", "--out", str(tmp_path / "x"), "--input",
                 str(tmp_path / "none.txt")]) == 2
    assert "input file" in capsys.readouterr().err


def test_override_parser():
    assert parse_overrides(["--a=1", "--b-c", "2"]) == {"a": "1", "b_c": "2"}
    with pytest.raises(ConfigError):
        parse_overrides(["--a"])
