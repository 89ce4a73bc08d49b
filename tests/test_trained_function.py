"""A checkpoint is the function it was trained to be: sample, eval and export build its tp and
sync plan from state.json (or another plan, only when asked), never the dense GPT by default."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import assert_close, tiny_train_overrides
from dist_common import torchrun
from tpgpt import ParallelGPT
from tpgpt.analysis.evaluate import evaluate_checkpoint, full_split_loss
from tpgpt.analysis.numerics import rel_err
from tpgpt.checkpoint.load import load_dense, load_trained
from tpgpt.cli import main
from tpgpt.data import TokenFile
from tpgpt.inference.sample import sample
from tpgpt.train import Trainer
from tpgpt.train.config import load_config

PLANS = ["parallel", "tp,spd"]


@pytest.fixture(scope="module")
def ckpts(text_data, tmp_path_factory):
    """Tiny runs trained at tp=2 under each plan (and 'tp', and one in float64 with 4 heads)."""
    data, _ = text_data
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, kw in [(p, dict(sync=p)) for p in PLANS + ["tp"]] + [
            ("spd64", dict(sync="spd", dtype="float64", n_head=4))]:
        cfg = load_config(None, tiny_train_overrides(data, root / name.replace(",", "+"), tp=2,
                                                     max_iters=20, **kw))
        t = Trainer(cfg, quiet=True)
        t.run()
        t.close()
        out[name] = str(root / name.replace(",", "+"))
    return data, out


def the_trained_function(ckpt: str, sync: str) -> ParallelGPT:
    """Built by hand: the dense weights sharded at tp=2 under `sync`."""
    dense, _, _ = load_dense(ckpt)
    return ParallelGPT.from_dense(dense, tp=2, sync=sync).eval()


@pytest.mark.parametrize("sync", PLANS)
def test_load_builds_the_trained_plan_not_the_dense_gpt(ckpts, sync):
    _, runs = ckpts
    loaded = load_trained(runs[sync])
    assert isinstance(loaded.model, ParallelGPT) and loaded.mode == "simulated"
    assert (loaded.tp, loaded.sync, loaded.converted) == (2, sync, False)
    idx = torch.randint(0, loaded.model.config.vocab_size, (3, 16),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = loaded.model(idx, idx)[0]
        assert torch.equal(ours, the_trained_function(runs[sync], sync)(idx, idx)[0])
        dense = load_dense(runs[sync])[0](idx, idx)[0]
    assert rel_err(ours, dense) > 1e-4  # the dense GPT is another function
    assert f"tp=2, sync={sync!r}" in loaded.describe()


def test_an_all_sync_checkpoint_is_the_dense_gpt(ckpts):
    _, runs = ckpts
    loaded = load_trained(runs["tp"])
    assert loaded.mode == "dense" and not isinstance(loaded.model, ParallelGPT)
    assert "the dense GPT (every sync on)" in loaded.describe()


@pytest.mark.parametrize("sync", PLANS)
def test_sample_generates_with_the_trained_function(ckpts, sync):
    _, runs = ckpts
    texts = sample(runs[sync], prompt="the ", num_samples=2, max_new_tokens=20, seed=3)
    loaded = load_trained(runs[sync])
    from tpgpt.data import tokenizer_from_meta
    tok = tokenizer_from_meta(loaded.meta)
    gen = torch.Generator().manual_seed(3)
    by_hand = the_trained_function(runs[sync], sync)
    x = torch.tensor([tok.encode("the ")])
    want = [tok.decode(by_hand.generate(x, 20, temperature=0.8, top_k=200, generator=gen)[0]
                       .tolist()) for _ in range(2)]
    assert texts == want


def test_sample_cli_names_the_plan_in_its_header(ckpts, capsys):
    _, runs = ckpts
    assert main(["sample", "--ckpt", runs["tp,spd"], "--num-samples", "1",
                 "--max-new-tokens", "5"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("tpgpt sample: ")
    assert "tp=2, sync='tp,spd' (3 of 4 forward syncs), simulated TP in one process" in header


@pytest.mark.parametrize("sync", PLANS)
def test_eval_is_the_full_split_loss_of_the_trained_function(ckpts, sync):
    data, runs = ckpts
    r = evaluate_checkpoint(runs[sync])
    model = the_trained_function(runs[sync], sync)
    file = TokenFile(os.path.join(data, "val.bin"), model.config.block_size,
                     model.config.vocab_size)
    assert r["loss"] == full_split_loss(model, file)
    assert (r["tp"], r["sync"], r["converted"]) == (2, sync, False)
    dense = full_split_loss(load_dense(runs[sync])[0], file)
    assert abs(r["loss"] - dense) > 1e-4
    # the all-sync plan on purpose: a conversion, and the dense GPT's loss
    conv = evaluate_checkpoint(runs[sync], sync="tp")
    assert conv["converted"] and conv["loss"] == pytest.approx(dense, rel=1e-6)
    assert r["tokens"] == (file.n - 1) // 16 * 16


def test_eval_cli_prints_the_plan_and_json(ckpts, capsys):
    _, runs = ckpts
    assert main(["eval", "--ckpt", runs["parallel"]]) == 0
    out = capsys.readouterr().out
    assert "tp=2, sync='parallel' (1 of 4 forward syncs)" in out and "val loss " in out
    assert main(["eval", "--ckpt", runs["parallel"], "--sync", "spd", "--tp", "2",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sync"] == "spd" and r["converted"] and r["trained_sync"] == "parallel"
    assert r["forward_syncs"] == 2 and "converted zero-shot" in r["description"]
    assert main(["eval", "--ckpt", runs["parallel"], "--tp", "1"]) == 0
    assert ("tp=1 (no syncs), the dense GPT; converted zero-shot from the trained tp=2, "
            "sync='parallel'") in capsys.readouterr().out


@pytest.mark.numerics
def test_distributed_eval_equals_simulated(ckpts, tmp_path):
    """Under torchrun the model runs with its ranks in two processes: the same loss (float64)."""
    _, runs = ckpts
    proc = torchrun(2, "-m", ["tpgpt", "eval", "--ckpt", runs["spd64"], "--json"])
    r = json.loads(proc.stdout)
    assert r["mode"] == "distributed"
    sim = evaluate_checkpoint(runs["spd64"])
    assert sim["mode"] == "simulated"
    assert_close(torch.tensor(r["loss"], dtype=torch.float64),
                 torch.tensor(sim["loss"], dtype=torch.float64), "distributed vs simulated")


def test_export_refuses_a_dropped_sync_checkpoint_unless_as_dense(ckpts, tmp_path, capsys):
    _, runs = ckpts
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", runs["tp,spd"], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sync='tp,spd'" in err[0] and "--as-dense" in err[0], err
    assert not out.exists()
    assert main(["export", "--ckpt", runs["tp,spd"], "--out", str(out), "--as-dense"]) == 0
    assert "as the dense model (--as-dense" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["tpgpt_trained_sync"] == "tp,spd"
    assert main(["export", "--ckpt", runs["tp"], "--out", str(tmp_path / "hf2")]) == 0


@pytest.mark.parametrize("extra", [[], ["--tp", "4"]], ids=["trained_tp2", "hybrid_tp4"])
def test_distributed_sampling_gives_the_simulated_text(ckpts, extra):
    """torchrun shards the checkpoint over 2 processes (tp=4: 2 ranks each); with the same seed
    the text is the one-process run's (float64: the logits agree to ~1e-15)."""
    _, runs = ckpts
    args = ["--ckpt", runs["spd64"], "--num-samples", "2", "--max-new-tokens", "40",
            "--seed", "5", *extra]
    proc = torchrun(2, "-m", ["tpgpt", "sample", *args])
    header, _, text = proc.stdout.partition("\n")
    assert "distributed TP over this torchrun job" in header
    tp = int(extra[1]) if extra else None
    want = sample(runs["spd64"], num_samples=2, max_new_tokens=40, seed=5, tp=tp)
    assert text.rstrip("\n") == "\n---------------\n".join(want)
    assert len(want[0]) > 40  # past block_size=16: the window slid
