"""Bad input: a ConfigError (a ValueError) from the API, one line and exit 2 from the CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import make_gpt, tiny_config
from tpgpt import GPTConfig, ParallelGPT, SyncPlan
from tpgpt.cli import main
from tpgpt.errors import ConfigError

# (CLI args, a fragment the one-line message must contain)
CLI_CASES = [
    (["plan", "--tp", "5"],
     "tp=5 does not divide n_head=12: valid tp values are 1, 2, 3, 4, 6, 12"),
    (["plan", "--tp", "0"], "tp=0 is invalid"),
    (["plan", "--tp", "-2"], "tp=-2 is invalid"),
    (["plan", "--n_embd=100"], "n_embd=100 is not divisible by n_head=12"),
    (["plan", "--sync", "tp,foo"], "unknown layer kind 'foo'"),
    (["plan", "--sync", "tp,spd,spd,spd,spd"],
     "lists 5 layer kinds, which does not divide n_layer=12"),
    (["plan", "--n_layer=2", "--sync", "bits:011"], "have 3 bits: n_layer=2 needs exactly 4"),
    (["plan", "--n_layer=2", "--sync", "bits:01x1"], "contain 'x': only 0 and 1"),
    (["plan", "--n_layer=2", "--sync", "bits:0110"], "the last layer must sync after its MLP"),
    (["plan", "--sync", ""], "sync='' is invalid"),
    (["plan", "--tp", "4", "--vocab_size=50257", "--vocab_parallel"],
     "vocab_size=50257 is not a multiple of tp=4 (pad it, e.g. to 50260)"),
    (["plan", "--n_layer=0"], "n_layer=0 is invalid: it must be a positive integer"),
    (["plan", "--n_layer=x"], "--n_layer/--n-layer: invalid int value: 'x'"),
    (["plan", "--dropout=1.5"], "dropout=1.5 is invalid"),
    (["plan", "--bias=maybe"], "'maybe' is not a boolean"),
    (["plan", "--batch_size", "0"], "batch_size=0 is invalid"),
    (["plan", "--seq_len", "2048"], "seq_len=2048 is invalid: it must be in [1, block_size=1024]"),
    (["plan", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["verify", "--tp", "1,x"], "'1,x' is not a comma list of integers"),
    (["verify", "--tp", "3"], "tp=3 does not divide n_head=4"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["plan", "--json=maybe"], "--json is a switch: --json, or --json=true / --json=false"),
    # the Llama family's own fields and rules
    (["plan", "--family=llama", "--n_head=8", "--n_kv_head=3", "--n_embd=64", "--bias=false",
      "--activation=silu"], "n_kv_head=3"),
    (["plan", "--family=llama", "--n_head=12", "--n_kv_head=6", "--n_embd=96", "--bias=false",
      "--activation=silu", "--tp", "4"], "tp=4 and n_kv_head=6 must divide one another"),
    (["plan", "--n_kv_head=2"], "n_kv_head=2 is a llama-family field: family=gpt2 needs it at 0"),
    (["plan", "--family=opt"], "family='opt'"),
]


def test_switches_take_the_config_form(capsys):
    """--json=true is --json, --json=false leaves it off (the form config keys take)."""
    assert main(["plan", "--json=true"]) == 0 and capsys.readouterr().out.startswith("{")
    assert main(["plan", "--json=false"]) == 0 and capsys.readouterr().out.startswith("model:")


@pytest.mark.parametrize("args,fragment", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2(capsys, args, fragment):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tpgpt: error: ")
    assert fragment in lines[0]


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "tpgpt", "plan", "--tp", "7"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("tpgpt: error: tp=7 does not divide n_head=12: valid tp values "
                                   "are 1, 2, 3, 4, 6, 12")


API_CASES = [
    (lambda: GPTConfig(n_embd=10, n_head=4), "n_embd=10 is not divisible by n_head=4"),
    (lambda: GPTConfig(n_head=0), "n_head=0 is invalid"),
    (lambda: GPTConfig(block_size=2.5), "block_size=2.5 is invalid"),
    (lambda: GPTConfig(bias="yes"), "bias='yes' is invalid"),
    (lambda: SyncPlan.parse("tp,spd,tp", 4), "lists 3 layer kinds"),
    (lambda: SyncPlan.parse("bits:1111", 4), "n_layer=4 needs exactly 8"),
    (lambda: SyncPlan.parse("bits:11112111", 4), "contain '2'"),
    (lambda: SyncPlan.parse(None, 4), "sync=None is invalid"),
    (lambda: ParallelGPT(tiny_config(), tp=3), "tp=3 does not divide n_head=4"),
    (lambda: ParallelGPT(tiny_config(), tp=0), "tp=0 is invalid"),
    (lambda: ParallelGPT(tiny_config(vocab_size=98), tp=4, vocab_parallel=True),
     "vocab_size=98 is not a multiple of tp=4"),
    (lambda: ParallelGPT(tiny_config(), tp=2, sync="spd,tp,spd"), "lists 3 layer kinds"),
    (lambda: ParallelGPT.from_dense(make_gpt(), tp=2, sync="bits:1"), "needs exactly 8"),
]


@pytest.mark.parametrize("make,fragment", API_CASES, ids=[f for _, f in API_CASES])
def test_api_bad_input_raises_value_error(make, fragment):
    with pytest.raises(ValueError) as err:
        make()
    assert isinstance(err.value, ConfigError)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_sequence_longer_than_block_size():
    import torch
    model = ParallelGPT.from_dense(make_gpt(), tp=2)
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_mismatched_dense_state_dict():
    model = ParallelGPT(tiny_config(), tp=2)
    sd = make_gpt(n_layer=2).state_dict()
    with pytest.raises(ValueError, match="dense state dict does not match the model: missing"):
        model.load_dense_state_dict(sd)
