"""Training: modes agree, resume is exact (SIGKILL included), sampling works from any layout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import assert_close, eval_losses, tiny_train_overrides, train_losses
from dist_common import HERE, torchrun
from tpgpt.analysis.numerics import TRAIN_LOSS_TOL64
from tpgpt.train.config import load_config
from tpgpt.checkpoint.load import load_dense
from tpgpt.inference.sample import sample
from tpgpt.train import Trainer


def train(data_dir, out_dir, resume=False, **kw) -> dict:
    cfg = load_config(None, tiny_train_overrides(data_dir, out_dir, **kw))
    trainer = Trainer(cfg, resume=resume, quiet=True)
    summary = trainer.run()
    trainer.close()
    return summary


def assert_losses_close(a: dict, b: dict, what: str, tol: float = TRAIN_LOSS_TOL64) -> None:
    """Two float64 runs' losses, iteration by iteration (tpgpt.analysis.numerics)."""
    assert a.keys() == b.keys(), f"{what}: iterations differ"
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, f"{what}: largest loss difference {worst:.3e} > {tol:.0e}"


@pytest.mark.numerics
def test_simulated_tp2_tracks_dense(text_data, tmp_path):
    data, _ = text_data
    train(data, tmp_path / "dense", dtype="float64")
    train(data, tmp_path / "tp2", tp=2, dtype="float64")
    assert_losses_close(train_losses(tmp_path / "tp2"), train_losses(tmp_path / "dense"),
                        "simulated tp=2 vs dense")


def test_loss_goes_down_and_summary(text_data, tmp_path):
    data, _ = text_data
    s = train(data, tmp_path / "run", tp=2, sync="spd", max_iters=60, lr_decay_iters=60)
    ev = eval_losses(tmp_path / "run")
    assert ev[60][1] < ev[0][1] - 0.5  # synthetic text is learnable
    assert s["forward_syncs"] == 2 and s["final_val_loss"] == ev[60][1]
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    step = next(r for r in recs if r["kind"] == "train")
    # spd, 2 layers: 2 fwd + 2 bwd syncs, the replicated-grad bucket and the grad-norm all-reduce
    assert step["collectives"] == s["collectives_per_step"] == 6
    assert {"lr", "tokens_per_s", "ms_per_iter", "comm_bytes"} <= step.keys()
    for name in ("best", "last"):
        assert os.path.isfile(tmp_path / "run" / name / "state.json")
        files = os.listdir(tmp_path / "run" / name / "model")
        assert any(f.endswith(".safetensors") for f in files)


@pytest.mark.parametrize("tp", [1, 2])
def test_summary_reports_step_times_and_memory_against_the_plan(text_data, tmp_path, tp):
    data, _ = text_data
    cfg = load_config(None, tiny_train_overrides(data, tmp_path / "run", tp=tp, sync="spd",
                                                 max_iters=12))
    trainer = Trainer(cfg, quiet=True)
    s = trainer.run()
    # the planned parameter + gradient + AdamW bytes of this process are what it holds
    live = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    moments = sum(t.numel() * t.element_size() for st in trainer.optimizer.state.values()
                  for k, t in st.items() if k != "step")
    trainer.close()
    assert moments == 2 * live
    assert s["memory"]["planned_state_mib_per_process"] * 2 ** 20 == 4 * live
    rank = s["memory"]["per_rank"][0]
    assert rank["peak_rss_mib"] >= rank["rss_before_model_mib"] > 0
    t = s["step_ms"]
    assert t["n"] == 12 and t["min"] <= t["p5"] <= t["median"] <= t["p95"] <= t["max"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["memory"] == s["memory"]


def test_compiled_training_equals_eager(text_data, tmp_path):
    """compile=true (torch.compile in place) trains to eager's losses and counts the same
    collectives; checkpoints keep their names (sampling loads one)."""
    data, _ = text_data
    kw = dict(tp=2, sync="tp,spd", max_iters=6, lr_decay_iters=6, eval_interval=6, dtype="float64")
    import torch._dynamo.utils as dynamo_utils

    train(data, tmp_path / "eager", **kw)
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    train(data, tmp_path / "compiled", compile=True, **kw)
    assert dynamo_utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert_losses_close(train_losses(tmp_path / "compiled"), train_losses(tmp_path / "eager"),
                        "compiled vs eager")
    counts = [[(r["collectives"], r["comm_bytes"])
               for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))
               if r["kind"] == "train"] for d in ("eager", "compiled")]
    assert counts[0] == counts[1] and counts[0][0][0] > 0
    model, _, _ = load_dense(str(tmp_path / "compiled"))
    assert model.get_num_params() > 0


def test_resume_is_bit_exact(text_data, tmp_path):
    data, _ = text_data
    full = tmp_path / "full"
    train(data, full, tp=2, sync="tp,spd", dropout=0.1)
    part = tmp_path / "part"
    first = train(data, part, tp=2, sync="tp,spd", dropout=0.1, max_iters=20)  # a checkpoint
    s = train(data, part, resume=True, tp=2, sync="tp,spd", dropout=0.1)
    assert s["resumed_at"] == 20
    # the run's training time counts both segments, the segment's only its own steps
    assert s["train_s"] == pytest.approx(first["train_s"] + s["segment_train_s"])
    assert s["train_s"] > s["segment_train_s"] > 0
    assert train_losses(part) == train_losses(full)  # bit for bit, dropout included
    assert eval_losses(part) == eval_losses(full)


def test_sigkill_mid_run_then_resume_gives_the_same_losses(text_data, tmp_path):
    data, _ = text_data
    kw = dict(tp=2, sync="spd", max_iters=400, lr_decay_iters=400, eval_interval=50,
              log_interval=1, n_embd=64)
    full = tmp_path / "full"
    train(data, full, **kw)
    run = tmp_path / "killed"
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(data, run, **kw).items()]
    preset = os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml")
    cmd = [sys.executable, "-m", "tpgpt", "train", preset, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(x).get("iter", 0) >= 130
                                    for x in metrics.read_text().splitlines() if x.strip()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    subprocess.run(cmd + ["--resume"], check=True, capture_output=True)
    assert train_losses(run) == train_losses(full)
    assert json.loads((run / "summary.json").read_text())["resumed_at"] in (100, 150, 200, 250)


def test_sample_from_a_tp_checkpoint_is_reproducible(text_data, tmp_path):
    data, _ = text_data
    train(data, tmp_path / "tp2", tp=2, sync="spd", vocab_parallel=True)
    run = str(tmp_path / "tp2")
    a = sample(run, prompt="the ", num_samples=2, max_new_tokens=40, seed=3)
    assert a == sample(run, prompt="the ", num_samples=2, max_new_tokens=40, seed=3)
    assert a != sample(run, prompt="the ", num_samples=2, max_new_tokens=40, seed=4)
    assert len(a) == 2 and all(t.startswith("the ") and len(t) == 44 for t in a)
    assert a[0] != a[1]
    assert sample(str(tmp_path / "tp2" / "last"), prompt="a", max_new_tokens=5, num_samples=1)
    # the compiled decode step draws the same tokens (its logits equal up to rounding; greedy
    # and a sampled draw from these small models agree)
    greedy = dict(prompt="the ", num_samples=1, max_new_tokens=40, temperature=0)
    assert sample(run, compile=True, **greedy) == sample(run, **greedy)


LLAMA = dict(family="llama", n_head=4, n_kv_head=1, qk_norm=True, bias=False, activation="silu",
             intermediate_size=48)


@pytest.mark.parametrize("procs,single,dist", [
    # torchrun tp=2 (2 processes) against simulated tp=2 in one process
    (2, dict(tp=2, sync="spd"), dict(tp=2, sync="spd")),
    # torchrun tp=1 x dp=2 against one process with gradient accumulation 2
    (2, dict(gradient_accumulation_steps=2), dict(gradient_accumulation_steps=2)),
    # torchrun tp=2 x dp=2 (4 processes) against simulated tp=2 with accumulation 2
    (4, dict(tp=2, sync="tp,spd", gradient_accumulation_steps=2),
     dict(tp=2, sync="tp,spd", gradient_accumulation_steps=2)),
    # torchrun tp=2 under torch.compile (collectives and the replicated-grad stash inside
    # compiled regions) against simulated tp=2, eager
    (2, dict(tp=2, sync="tp,spd"), dict(tp=2, sync="tp,spd", compile=True)),
    # the Llama family, multi-query with q/k norms: the one KV head on both processes, its
    # gradient summed across them, the q/k norms' per-rank gradients too
    (2, dict(tp=2, sync="spd", **LLAMA), dict(tp=2, sync="spd", **LLAMA)),
], ids=["tp2", "dp2", "tp2xdp2", "tp2-compiled", "llama-tp2"])
def test_torchrun_reproduces_single_process(text_data, tmp_path, procs, single, dist):
    data, _ = text_data
    common = dict(max_iters=50, lr_decay_iters=50, eval_interval=25, dtype="float64")
    train(data, tmp_path / "single", **common, **single)
    args = [f"--{k}={v}" for k, v in
            tiny_train_overrides(data, tmp_path / "dist", **common, **dist).items()]
    torchrun(procs, "-m", ["tpgpt", "train",
                           os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml"),
                           *args], extra=None)
    assert_losses_close(train_losses(tmp_path / "dist"), train_losses(tmp_path / "single"),
                        f"torchrun x{procs} vs one process")
    ev_d, ev_s = eval_losses(tmp_path / "dist"), eval_losses(tmp_path / "single")
    assert_losses_close({k: v[1] for k, v in ev_d.items()}, {k: v[1] for k, v in ev_s.items()},
                        "val loss")


def test_sample_cli_and_its_errors(text_data, tmp_path, capsys):
    from tpgpt.cli import main
    data, _ = text_data
    train(data, tmp_path / "run", max_iters=10)
    assert main(["sample", "--ckpt", str(tmp_path / "run"), "--prompt", "the", "--num-samples",
                 "2", "--max-new-tokens", "5", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("the") >= 2 and "---------------" in out
    for args, fragment in [
        (["--prompt", "THE"], "text has characters outside the vocabulary: 'EHT'"),
        (["--num-samples", "0"], "num_samples=0 must be >= 1"),
        (["--top-k", "0"], "top_k=0 >= 1"),
        (["--prompt", ""], "the prompt is empty"),
    ]:
        assert main(["sample", "--ckpt", str(tmp_path / "run"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert main(["sample", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sample", "--ckpt", str(tmp_path / "empty")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in tiny_train_overrides(
        data, tmp_path / "run", max_iters=10).items()]]) == 2
    assert "holds a checkpoint: pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize("saved_at,model", [
    pytest.param(dict(tp=2), {}, id="tp2xdp2"),
    pytest.param(dict(tp=2, pp=2), {}, id="tp2xpp2", marks=pytest.mark.numerics),
    # the KV head replicated over the 2 ranks when saved, over 4 at tp=4, whole at tp=1
    pytest.param(dict(tp=2), LLAMA, id="llama-tp2xdp2", marks=pytest.mark.numerics)])
def test_resume_at_another_layout_continues_the_same_run(text_data, tmp_path, saved_at, model):
    """A checkpoint of torchrun tp=2 x dp=2, or tp=2 x pp=2, resumes at simulated tp=4 and at
    tp=1 (dense) with identical logits and the uninterrupted run's losses: the all-sync model is
    the same function at any layout."""
    import shutil

    import torch
    from tpgpt import ParallelGPT
    from tpgpt.checkpoint import load_sharded
    from tpgpt.checkpoint.sharded_state import ShardedState

    data, _ = text_data
    common = dict(max_iters=40, lr_decay_iters=40, eval_interval=20, gradient_accumulation_steps=2,
                  n_head=4, n_layer=4, dtype="float64")
    common.update(model)
    train(data, tmp_path / "full", tp=2, **common)
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(
        data, tmp_path / "part", **{**common, "max_iters": 20, **saved_at}).items()]
    torchrun(4, "-m", ["tpgpt", "train",
                       os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml"), *args])
    dense, _, _ = load_dense(str(tmp_path / "part" / "last"))
    assert dense.transformer.wte.weight.dtype == torch.float64
    tp4 = ParallelGPT.from_dense(dense, tp=4)
    load_sharded(str(tmp_path / "part" / "last"), ShardedState(tp4))
    idx = torch.randint(0, dense.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert_close(tp4(idx, idx)[0], dense(idx, idx)[0], "tp=4 vs dense logits")
    shutil.copytree(tmp_path / "part", tmp_path / "part1")
    train(data, tmp_path / "part", resume=True, tp=4, **common)
    train(data, tmp_path / "part1", resume=True, tp=1, **common)
    full = train_losses(tmp_path / "full")
    for run in ("part", "part1"):
        assert_losses_close(train_losses(tmp_path / run), full, f"resumed {run}")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(text_data, tmp_path, capsys):
    from tpgpt.cli import main
    data, _ = text_data
    args = [f"--{k}={v}" for k, v in tiny_train_overrides(
        data, tmp_path / "run", max_iters=40, eval_interval=5, warmup_iters=0, grad_clip=0,
        learning_rate=1e38, min_lr=0.0).items()]
    # a first run at a sane learning rate writes checkpoints up to iteration 10 ...
    sane = [a if not a.startswith(("--learning_rate", "--max_iters")) else
            ("--learning_rate=1e-3" if a.startswith("--learning_rate") else "--max_iters=10")
            for a in args]
    assert main(["train", "shakespeare_char_cpu", *sane]) == 0
    capsys.readouterr()
    # ... then it resumes at an absurd one: the weights overflow and the loss turns inf/NaN
    assert main(["train", "shakespeare_char_cpu", *args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at iteration" in err[0] and "stopped" in err[0], err
    assert "last good checkpoint is" in err[0] and "(iteration 10)" in err[0]
    from tpgpt.checkpoint import load_state
    assert load_state(str(tmp_path / "run" / "last"))["iter"] == 10  # nothing poisoned saved


def test_progress_into_a_log_is_plain_lines(text_data, tmp_path, capsys):
    """Output that is not a terminal gets no carriage-return frames (tqdm's disable=None),
    but a plain line per tenth of the run."""
    from tpgpt.cli import main
    data, _ = text_data
    args = tiny_train_overrides(data, tmp_path / "run", max_iters=20, progress="true")
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in args.items()]]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert "iter 2/20" in out and "iter 20/20: loss " in out and "iter 20: train loss" in out
